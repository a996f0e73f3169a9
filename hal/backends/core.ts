/**
 * What every backend implements, and the guards every backend gets from the registry.
 *
 * INVARIANTS (checked here once, not in each backend):
 * - calls on one BootControl are serialized (a promise chain): two writers never interleave;
 * - `markBad` of the booted slot (or of any slot when the booted one cannot be told) is refused while
 *   the other slot is not good: the device must always keep a slot it can fall back to;
 * - `armTrial` needs the other slot good (it is the fallback) and a whole number of tries ≥ 1;
 *   backends that can count fewer tries (`maxTries`) get the number clamped, never raised.
 */
import { SlotflipError, isCoded } from '../errors.js';
import { otherSlot, type BootControl, type SlotBootState, type SlotName } from '../boot-control.js';

/** What a backend file implements: BootControl's methods with the same contract (see boot-control.ts),
 * minus the checks `withGuards` adds. */
export interface BackendCore {
  readonly backend: string;
  /** most trial boots this backend can count (1 for one-shot mechanisms). */
  readonly maxTries: number;
  bootedSlot(): Promise<SlotName>;
  slotState(slot: SlotName): Promise<SlotBootState>;
  markBad(slot: SlotName): Promise<void>;
  armTrial(slot: SlotName, tries: number): Promise<void>;
  commit(slot: SlotName): Promise<void>;
  /** see BootControlExtras.rebootArgument; absent means a plain reboot starts a trial. */
  rebootArgument?(): Promise<string | undefined>;
}

/** Extra surface some backends offer beyond BootControl. */
export interface BootControlExtras {
  /** most trial boots the backend can count; `armTrial` clamps to it. */
  readonly maxTries: number;
  /** The argument the daemon must pass to reboot(2) / `systemctl reboot ARG` to start an armed trial
   * (`0 tryboot` for Raspberry Pi tryboot); undefined when a plain reboot does. Read-only. */
  rebootArgument(): Promise<string | undefined>;
}

export type GuardedBootControl = BootControl & BootControlExtras;

export function withGuards(core: BackendCore): GuardedBootControl {
  let chain: Promise<unknown> = Promise.resolve();
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const next = chain.then(fn, fn);
    chain = next.catch(() => undefined);
    return next;
  };
  const booted = async (): Promise<SlotName | undefined> => {
    try {
      return await core.bootedSlot();
    } catch (e) {
      if (isCoded(e, 'HAL_BOOTED_SLOT_UNKNOWN')) return undefined;
      throw e;
    }
  };
  return {
    backend: core.backend,
    maxTries: core.maxTries,
    bootedSlot: () => serial(() => core.bootedSlot()),
    slotState: (slot) => serial(() => core.slotState(checkSlot(slot))),
    markBad: (slot) =>
      serial(async () => {
        checkSlot(slot);
        const b = await booted();
        if (b === slot || b === undefined) {
          const other = await core.slotState(otherSlot(slot));
          if (other.state !== 'good') {
            throw new SlotflipError('HAL_MARK_BOOTED_BAD', `${core.backend}: refusing to mark slot ${slot} bad: ${b === slot ? 'it is the booted slot' : 'the booted slot is unknown'} and slot ${otherSlot(slot)} is ${other.state}; commit a good slot first`, { details: { slot, booted: b, other: other.state } });
          }
        }
        await core.markBad(slot);
      }),
    armTrial: (slot, tries) =>
      serial(async () => {
        checkSlot(slot);
        if (!Number.isSafeInteger(tries) || tries < 1) throw new SlotflipError('HAL_BAD_ARGUMENT', `armTrial: tries must be a whole number \u2265 1, got ${tries}`, { details: { tries } });
        const other = await core.slotState(otherSlot(slot));
        if (other.state !== 'good') {
          throw new SlotflipError('HAL_NO_FALLBACK', `${core.backend}: refusing to arm slot ${slot}: its fallback, slot ${otherSlot(slot)}, is ${other.state}; commit a good slot first`, { details: { slot, other: other.state } });
        }
        await core.armTrial(slot, Math.min(tries, core.maxTries));
      }),
    commit: (slot) => serial(() => core.commit(checkSlot(slot))),
    rebootArgument: () => serial(async () => (core.rebootArgument ? core.rebootArgument() : undefined)),
  };
}

function checkSlot(slot: SlotName): SlotName {
  if (slot !== 'A' && slot !== 'B') throw new SlotflipError('HAL_BAD_ARGUMENT', `unknown slot ${JSON.stringify(slot)}; slots are A and B`, { details: { slot } });
  return slot;
}

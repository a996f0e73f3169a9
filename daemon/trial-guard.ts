/**
 * The trial guard: a marker in the state directory that lets systemd — with no slotflip code
 * running — reboot a trial boot the daemon cannot judge (it never starts, crash-loops, or its
 * watchdog stops). `slotflip-trial-failed.service` (OnFailure= of slotflip.service, and started by
 * slotflip-trial-deadline.timer) runs the shell script `systemd/slotflip-trial-reboot`, which reads
 * this marker; each reboot moves the bootloader's own counter (BOOT_x_LEFT, bootcount, boot_counter,
 * systemd-boot's +N-M, tryboot's one shot) towards the fallback to the committed slot.
 *
 * The marker (`<stateDir>/trial/armed`, key=value lines):
 *   slot=B               the slot armed for a trial
 *   limit=3              reboots the guard may issue for this trial (the armed tries: enough for any
 *                        bootloader to exhaust its counter and fall back, and no more)
 *   armedBootId=<uuid>   the boot that armed it: in that same boot the trial has not started yet
 *                        (a reboot deferred by policy), so the guard leaves the device alone
 * and `<stateDir>/trial/reboots` counts the reboots the guard issued (`rebooted-in`: the boot that
 * counted the last one).
 *
 * Lifecycle, by wrapping the boot backend (so every path through the state machine is covered):
 * - written (count reset) just BEFORE `armTrial`: a power cut between the two leaves a marker and no
 *   trial, which costs at most `limit` needless reboots if the daemon then also crash-loops; the
 *   other order could leave an armed trial unguarded;
 * - removed after a successful `commit` (the trial is now the committed slot);
 * - removed when `bootedSlot()` shows the device running the OTHER slot in a later boot than the
 *   one that armed it (rolled back, or the bootloader fell back): the trial is over.
 * `markBad` leaves it: after a rollback's markBad the device still runs the bad slot until the reboot
 * happens, and if that reboot fails and the daemon dies, the guard is what gets it off.
 * Marker I/O failures are logged, never thrown: the guard is a second line, the update goes on.
 */
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { writeFileAtomic } from '../hal/atomic-file.js';
import type { BootControl, SlotName } from '../hal/boot-control.js';

export interface TrialMarker {
  slot: SlotName;
  limit: number;
  armedBootId?: string;
}

/** The kernel's id of this boot (a new one at every boot). */
export async function kernelBootId(): Promise<string | undefined> {
  try {
    const id = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
    return /^[0-9a-f-]{36}$/.test(id) ? id : undefined;
  } catch {
    return undefined;
  }
}

export function trialGuardDir(stateDir: string): string {
  return join(stateDir, 'trial');
}

/** Parses the marker; undefined when absent or unreadable. */
export async function readTrialMarker(dir: string): Promise<TrialMarker | undefined> {
  let text: string;
  try {
    text = await readFile(join(dir, 'armed'), 'utf8');
  } catch {
    return undefined;
  }
  const kv = new Map(text.split('\n').filter((l) => !l.startsWith('#')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as const));
  const slot = kv.get('slot');
  const limit = Number(kv.get('limit'));
  if ((slot !== 'A' && slot !== 'B') || !Number.isInteger(limit)) return undefined;
  const armedBootId = kv.get('armedBootId');
  return { slot, limit, ...(armedBootId ? { armedBootId } : {}) };
}

export interface TrialGuardOptions {
  /** `<stateDir>/trial`. */
  dir: string;
  /** the kernel's boot id (undefined when unknown). */
  bootId: () => Promise<string | undefined>;
  log: Logger;
}

/** Wraps a boot backend so the trial marker follows the trial. Extra backend methods (e.g.
 * `rebootArgument`) are kept. */
export function guardTrials<B extends BootControl>(bc: B, o: TrialGuardOptions): B {
  const write = async (slot: SlotName, tries: number): Promise<void> => {
    const bootId = await o.bootId().catch(() => undefined);
    const text = `# slotflip trial guard, read by slotflip-trial-reboot (see systemd/README.md)\nslot=${slot}\nlimit=${tries}\n${bootId ? `armedBootId=${bootId}\n` : ''}`;
    try {
      await mkdir(o.dir, { recursive: true, mode: 0o700 });
      await rm(join(o.dir, 'reboots'), { force: true });
      await rm(join(o.dir, 'rebooted-in'), { force: true });
      await writeFileAtomic(join(o.dir, 'armed'), text);
    } catch (err) {
      o.log.warn({ err: { code: (err as NodeJS.ErrnoException).code, message: (err as Error).message }, dir: o.dir }, 'trial guard: cannot write the marker; this trial is guarded by the bootloader only');
    }
  };
  const clear = async (why: string): Promise<void> => {
    try {
      await rm(join(o.dir, 'armed'), { force: true });
      await rm(join(o.dir, 'reboots'), { force: true });
      await rm(join(o.dir, 'rebooted-in'), { force: true });
      o.log.debug({ why }, 'trial guard cleared');
    } catch (err) {
      o.log.warn({ err: { code: (err as NodeJS.ErrnoException).code, message: (err as Error).message }, dir: o.dir }, 'trial guard: cannot remove the marker');
    }
  };
  const wrapped: BootControl = {
    backend: bc.backend,
    async bootedSlot() {
      const booted = await bc.bootedSlot();
      const m = await readTrialMarker(o.dir);
      if (m && m.slot !== booted) {
        const now = await o.bootId().catch(() => undefined);
        // a later boot, on the other slot: the trial is over (rolled back or fell back)
        if (now !== undefined && m.armedBootId !== undefined && now !== m.armedBootId) await clear(`booted ${booted}, trial slot was ${m.slot}`);
      }
      return booted;
    },
    slotState: (slot) => bc.slotState(slot),
    markBad: (slot) => bc.markBad(slot),
    async armTrial(slot, tries) {
      // marker first: an armed trial must never be unguarded
      await write(slot, tries);
      await bc.armTrial(slot, tries);
    },
    async commit(slot) {
      await bc.commit(slot);
      await clear(`committed ${slot}`);
    },
  };
  return new Proxy(bc, {
    get(target, prop, receiver) {
      if (typeof prop === 'string' && prop in wrapped) return (wrapped as unknown as Record<string, unknown>)[prop];
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

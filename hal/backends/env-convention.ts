/**
 * Key/value bootloader environments (U-Boot env, grubenv) share one shape: read the whole
 * environment, compute the changes a convention needs (pure), write them in ONE tool call, read back
 * and verify. Conventions are pure and know nothing about tools; stores know nothing about slots.
 */
import { SlotflipError } from '../errors.js';
import type { SlotBootState, SlotName } from '../boot-control.js';
import type { BackendCore } from './core.js';

export type Env = ReadonlyMap<string, string>;
/** name → new value; '' deletes (U-Boot) or empties (GRUB) — both read as unset. */
export type EnvChanges = Record<string, string>;

/** A bootloader's variable convention. All methods are pure; the returned changes are applied in ONE
 * write, so each must be complete on its own (a crash applies all of it or none). */
export interface EnvConvention {
  readonly name: string;
  /** most trial boots the convention can count. */
  readonly maxTries: number;
  /** the slot's state as the bootloader script will see it on the next power-on. */
  state(env: Env, slot: SlotName): SlotBootState;
  /** changes that make the script never choose `slot`; may throw HAL_BOOTENV_UNSUPPORTED. */
  markBad(env: Env, slot: SlotName): EnvChanges;
  /** changes that make the script try `slot` first, `tries` times, then fall back. */
  armTrial(env: Env, slot: SlotName, tries: number): EnvChanges;
  /** changes that make `slot` good and first; applying them twice changes nothing. */
  commit(env: Env, slot: SlotName): EnvChanges;
}

export interface EnvStore {
  /** the whole environment as the bootloader will read it. */
  read(): Promise<Map<string, string>>;
  /** writes every change in one atomic tool call. */
  write(changes: EnvChanges): Promise<void>;
}

export function envGet(env: Env, name: string): string {
  return env.get(name) ?? '';
}

/** Only the changes that differ from `env` ('' equals unset). Pure. */
export function effectiveChanges(env: Env, changes: EnvChanges): EnvChanges {
  const out: EnvChanges = {};
  for (const [k, v] of Object.entries(changes)) if (envGet(env, k) !== v) out[k] = v;
  return out;
}

export function createEnvBackend(backend: string, store: EnvStore, conv: EnvConvention, bootedSlot: () => Promise<SlotName>): BackendCore {
  const apply = async (plan: (env: Env) => EnvChanges): Promise<void> => {
    const env = await store.read();
    const changes = effectiveChanges(env, plan(env));
    if (Object.keys(changes).length === 0) return; // idempotent: nothing to write
    await store.write(changes);
    const after = await store.read();
    const wrong = Object.entries(changes).filter(([k, v]) => envGet(after, k) !== v);
    if (wrong.length > 0) {
      throw new SlotflipError('HAL_BOOTENV_VERIFY', `${backend}: environment did not read back as written (${wrong.map(([k]) => k).join(', ')}); check the tool config and that the environment is writable`, {
        details: { mismatched: Object.fromEntries(wrong.map(([k, v]) => [k, { wrote: v, read: envGet(after, k) }])) },
      });
    }
  };
  return {
    backend,
    maxTries: conv.maxTries,
    bootedSlot,
    slotState: async (slot) => conv.state(await store.read(), slot),
    markBad: (slot) => apply((env) => conv.markBad(env, slot)),
    armTrial: (slot, tries) => apply((env) => conv.armTrial(env, slot, tries)),
    commit: (slot) => apply((env) => conv.commit(env, slot)),
  };
}

/** Strict non-negative integer parse for counters ('' → fallback). Throws HAL_BOOTENV_PARSE. */
export function envInt(env: Env, name: string, fallback: number): number {
  const v = envGet(env, name);
  if (v === '') return fallback;
  if (!/^-?\d{1,9}$/.test(v)) throw new SlotflipError('HAL_BOOTENV_PARSE', `environment variable ${name}=${JSON.stringify(v.slice(0, 20))} is not a number`, { details: { name } });
  return Number(v);
}

/**
 * Emulated boot control: the whole boot state in one JSON file, replaced atomically (temp, fsync,
 * rename, fsync dir). Used by tests, the demo and emulated boards; the board's "bootloader"
 * (`emulatedSelect`) reads the same file.
 *
 * File: `{ "schema": 1, "primary": "A", "slots": { "A": { "state": "good" },
 *          "B": { "state": "trial", "triesLeft": 2 } } }`
 */
import { readFile } from 'node:fs/promises';
import { SlotflipError } from '../errors.js';
import { writeFileAtomic } from '../atomic-file.js';
import { otherSlot, type SlotBootState, type SlotName } from '../boot-control.js';
import { readBootedSlot, type CmdlineConfig } from '../cmdline.js';
import type { BackendCore } from './core.js';

export interface EmulatedBackendConfig {
  type: 'emulated';
  /** JSON state file. */
  stateFile: string;
  cmdline?: CmdlineConfig;
}

export interface EmulatedSlot {
  state: 'good' | 'trial' | 'bad';
  triesLeft?: number;
}

export interface EmulatedState {
  schema: 1;
  primary: SlotName;
  slots: Record<SlotName, EmulatedSlot>;
}

export function initialEmulatedState(): EmulatedState {
  return { schema: 1, primary: 'A', slots: { A: { state: 'good' }, B: { state: 'bad' } } };
}

/** Strict parse of the state file. Throws HAL_BOOTENV_PARSE. */
export function parseEmulatedState(text: string): EmulatedState {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (cause) {
    throw new SlotflipError('HAL_BOOTENV_PARSE', 'emulated boot state is not JSON', { cause });
  }
  const bad = (why: string) => new SlotflipError('HAL_BOOTENV_PARSE', `emulated boot state: ${why}`);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad('not an object');
  const o = v as Record<string, unknown>;
  if (Object.keys(o).sort().join(',') !== 'primary,schema,slots') throw bad('keys must be schema, primary, slots');
  if (o.schema !== 1) throw bad('schema must be 1');
  if (o.primary !== 'A' && o.primary !== 'B') throw bad('primary must be A or B');
  const slots = o.slots as Record<string, unknown>;
  if (typeof slots !== 'object' || slots === null || Object.keys(slots).sort().join(',') !== 'A,B') throw bad('slots must have exactly A and B');
  const out: Record<SlotName, EmulatedSlot> = { A: { state: 'bad' }, B: { state: 'bad' } };
  for (const s of ['A', 'B'] as const) {
    const e = slots[s] as Record<string, unknown>;
    if (typeof e !== 'object' || e === null) throw bad(`slot ${s} is not an object`);
    if (e.state === 'good' || e.state === 'bad') {
      if (Object.keys(e).length !== 1) throw bad(`slot ${s}: only trial slots carry triesLeft`);
      out[s] = { state: e.state };
    } else if (e.state === 'trial') {
      if (Object.keys(e).length !== 2 || !Number.isSafeInteger(e.triesLeft) || (e.triesLeft as number) < 0) throw bad(`slot ${s}: trial needs a whole triesLeft \u2265 0`);
      out[s] = { state: 'trial', triesLeft: e.triesLeft as number };
    } else throw bad(`slot ${s}: unknown state`);
  }
  return { schema: 1, primary: o.primary, slots: out };
}

export function formatEmulatedState(s: EmulatedState): string {
  return JSON.stringify(s, null, 1) + '\n';
}

const selectable = (e: EmulatedSlot) => e.state === 'good' || (e.state === 'trial' && (e.triesLeft ?? 0) > 0);

/** The emulated bootloader's pick for the next power-on, and the state it saves. Pure. */
export function emulatedSelect(state: EmulatedState): { slot: SlotName | null; next: EmulatedState } {
  const next: EmulatedState = structuredClone(state);
  for (const s of [state.primary, otherSlot(state.primary)]) {
    const e = next.slots[s];
    if (e.state === 'trial' && (e.triesLeft ?? 0) <= 0) {
      next.slots[s] = { state: 'bad' };
      continue;
    }
    if (!selectable(e)) continue;
    if (e.state === 'trial') e.triesLeft = (e.triesLeft ?? 1) - 1;
    return { slot: s, next };
  }
  return { slot: null, next };
}

export function emulatedSlotState(state: EmulatedState, slot: SlotName): SlotBootState {
  const e = state.slots[slot];
  const first = [state.primary, otherSlot(state.primary)].find((s) => selectable(state.slots[s]));
  return e.state === 'trial' ? { state: 'trial', triesLeft: e.triesLeft ?? 0, primary: first === slot } : { state: e.state, primary: first === slot };
}

export function emulatedMarkBad(s: EmulatedState, slot: SlotName): EmulatedState {
  return { ...s, slots: { ...s.slots, [slot]: { state: 'bad' } } };
}
export function emulatedArmTrial(s: EmulatedState, slot: SlotName, tries: number): EmulatedState {
  return { ...s, primary: slot, slots: { ...s.slots, [slot]: { state: 'trial', triesLeft: tries } } };
}
export function emulatedCommit(s: EmulatedState, slot: SlotName): EmulatedState {
  return { ...s, primary: slot, slots: { ...s.slots, [slot]: { state: 'good' } } };
}

export async function readEmulatedState(path: string): Promise<EmulatedState> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (cause) {
    throw new SlotflipError('HAL_BOOTENV_READ', `cannot read emulated boot state ${path}; create the board first`, { cause, details: { path } });
  }
  return parseEmulatedState(text);
}

export function createEmulatedBackend(cfg: EmulatedBackendConfig): BackendCore {
  const update = async (fn: (s: EmulatedState) => EmulatedState) => {
    const before = await readEmulatedState(cfg.stateFile);
    const after = fn(before);
    const text = formatEmulatedState(after);
    if (text === formatEmulatedState(before)) return; // idempotent: no write
    await writeFileAtomic(cfg.stateFile, text);
    if ((await readFile(cfg.stateFile, 'utf8')) !== text) throw new SlotflipError('HAL_BOOTENV_VERIFY', `emulated boot state ${cfg.stateFile} did not read back as written`, { details: { path: cfg.stateFile } });
  };
  return {
    backend: 'emulated',
    maxTries: 99,
    bootedSlot: () => readBootedSlot(cfg.cmdline ?? {}),
    slotState: async (slot) => emulatedSlotState(await readEmulatedState(cfg.stateFile), slot),
    markBad: (slot) => update((s) => emulatedMarkBad(s, slot)),
    armTrial: (slot, tries) => update((s) => emulatedArmTrial(s, slot, tries)),
    commit: (slot) => update((s) => emulatedCommit(s, slot)),
  };
}

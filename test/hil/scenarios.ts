/**
 * The hardware-in-the-loop scenarios, written once against `HilBoard` and run on every emulated board
 * that runs a real bootloader (U-Boot under QEMU, GRUB under grub-emu, ...).
 *
 * Each scenario plays both halves of the device: the daemon's HAL (the real `createBootControl`
 * backend writing the real bootloader environment with the real tool) and the "operating system" that
 * comes up in whichever slot the bootloader chose. The OS's behaviour per slot is scripted
 * (healthy → commit; unhealthy → health check fails, markBad, reboot; hang → nothing, the next
 * power-on is the watchdog reset). The bootloader's choice is read from its console, never inferred.
 *
 * Install order is the daemon's: markBad(target) → write image → verify → armTrial(target, tries).
 */
import type { SlotName, SlotBootState } from '../../hal/boot-control.js';
import type { GuardedBootControl } from '../../hal/registry.js';

export interface BootReport {
  outcome: 'booted' | 'bad-image' | 'no-slot' | 'failed';
  slot?: SlotName;
  /** what the bootloader identified the loaded kernel as (image name / version), when it says. */
  image?: string;
  durationMs: number;
  console: string;
}

export interface HilBoard {
  readonly label: string;
  /** the HAL's boot control for this board (reads the cmdline file the board writes at boot). */
  readonly control: GuardedBootControl;
  /** Most trial boots the convention can count (RAUC's GRUB script: 1). */
  readonly maxTries: number;
  /** One power-on of the real bootloader. When a slot booted, the board has written its kernel
   * command line where `control.bootedSlot()` reads it. */
  powerOn(): Promise<BootReport>;
  /** Writes a complete, valid image named `version` into `slot`. */
  writeImage(slot: SlotName, version: string): Promise<void>;
  /** Writes bytes that fail the bootloader's own image check (CRC / hash) into `slot`. */
  writeCorruptImage(slot: SlotName): Promise<void>;
  /** Writes the first part of a new image over `slot` and stops (power cut while streaming). */
  writePartialImage(slot: SlotName, version: string): Promise<void>;
  /** Opaque snapshot of the bootloader environment storage. */
  snapshotEnv(): Promise<Buffer>;
  /** Simulates a power cut during the last environment write made since `before`: the written
   * region ends up half new, half old, as when the write reached storage only partly. */
  tearEnvWriteSince(before: Buffer): Promise<void>;
}

export type OsBehaviour = 'healthy' | 'unhealthy' | 'hang';

export interface TraceEntry {
  outcome: BootReport['outcome'];
  slot?: SlotName;
  image?: string;
}

export interface ScenarioResult {
  trace: TraceEntry[];
  /** compact form for assertions: `A`, `B`, `!B` (bad image), `-` (no slot), `?` (failed). */
  boots: string[];
  states: Record<SlotName, SlotBootState>;
  powerOnMs: number[];
}

export interface RunOptions {
  /** OS behaviour per slot; default healthy. */
  os?: Partial<Record<SlotName, OsBehaviour>>;
  /** power-ons to perform. */
  powerOns: number;
}

function compact(r: BootReport): string {
  if (r.outcome === 'booted') return r.slot ?? '?';
  if (r.outcome === 'bad-image') return `!${r.slot ?? '?'}`;
  if (r.outcome === 'no-slot') return '-';
  return '?';
}

/** Powers the board on `powerOns` times, playing the OS after each boot. */
export async function runBoots(board: HilBoard, opts: RunOptions): Promise<ScenarioResult> {
  const trace: TraceEntry[] = [];
  const boots: string[] = [];
  const powerOnMs: number[] = [];
  for (let i = 0; i < opts.powerOns; i++) {
    const r = await board.powerOn();
    powerOnMs.push(r.durationMs);
    trace.push({ outcome: r.outcome, slot: r.slot, image: r.image });
    boots.push(compact(r));
    if (r.outcome === 'failed') throw new Error(`${board.label}: power-on ${i + 1} failed; console:\n${r.console.slice(-3000)}`);
    if (r.outcome !== 'booted' || !r.slot) continue;
    const behaviour = opts.os?.[r.slot] ?? 'healthy';
    if (behaviour === 'hang') continue;
    // the daemon comes up: it must agree with the bootloader about which slot booted
    const booted = await board.control.bootedSlot();
    if (booted !== r.slot) throw new Error(`${board.label}: bootloader booted ${r.slot} but the HAL reports ${booted}`);
    if (behaviour === 'healthy') await board.control.commit(booted);
    else await board.control.markBad(booted);
  }
  return { trace, boots, powerOnMs, states: await states(board) };
}

export async function states(board: HilBoard): Promise<Record<SlotName, SlotBootState>> {
  return { A: await board.control.slotState('A'), B: await board.control.slotState('B') };
}

/** The daemon's install of a good image: mark bad → write → arm. */
export async function installGood(board: HilBoard, slot: SlotName, version: string, tries: number): Promise<void> {
  await board.control.markBad(slot); // a half-written slot must never be bootable
  await board.writeImage(slot, version);
  await board.control.armTrial(slot, tries);
}

export interface ScenarioOutcome {
  name: string;
  result: ScenarioResult;
  /** what the scenario expects of `result.boots`. */
  expectedBoots: string[];
  /** extra checks; each returns an error message or undefined. */
  problems: string[];
}

export interface ScenarioDef {
  name: string;
  run(board: HilBoard): Promise<ScenarioOutcome>;
}

const outcome = (name: string, result: ScenarioResult, expectedBoots: string[], problems: Array<string | undefined>): ScenarioOutcome => ({
  name,
  result,
  expectedBoots,
  problems: problems.filter((p): p is string => p !== undefined),
});

const expectState = (result: ScenarioResult, slot: SlotName, want: SlotBootState['state'], primary?: boolean): string | undefined => {
  const s = result.states[slot];
  if (s.state !== want) return `slot ${slot} is ${s.state}, expected ${want}`;
  if (primary !== undefined && s.primary !== primary) return `slot ${slot} primary=${s.primary}, expected ${primary}`;
  return undefined;
};

/** Every scenario starts from a board that boots A, committed (one power-on to establish it). */
export const SCENARIOS: readonly ScenarioDef[] = [
  {
    name: 'good update committed',
    async run(board) {
      await runBoots(board, { powerOns: 1 });
      await installGood(board, 'B', 'v2', 3);
      const r = await runBoots(board, { powerOns: 4 });
      const images = r.trace.map((t) => t.image ?? '');
      return outcome(this.name, r, ['B', 'B', 'B', 'B'], [
        expectState(r, 'B', 'good', true),
        images.every((i) => i.includes('v2')) ? undefined : `booted images ${images.join(',')} are not all v2`,
      ]);
    },
  },
  {
    name: 'corrupt image never booted',
    async run(board) {
      await runBoots(board, { powerOns: 1 });
      // the daemon marks B bad, streams, and verification fails: it never arms B
      await board.control.markBad('B');
      await board.writeCorruptImage('B');
      const r = await runBoots(board, { powerOns: 3 });
      return outcome(this.name, r, ['A', 'A', 'A'], [expectState(r, 'B', 'bad', false), expectState(r, 'A', 'good', true)]);
    },
  },
  {
    name: 'armed image that fails the bootloader check falls back',
    async run(board) {
      await runBoots(board, { powerOns: 1 });
      const tries = Math.min(2, board.maxTries);
      await installGood(board, 'B', 'v2', tries);
      await board.writeCorruptImage('B'); // bit rot after arming: only the bootloader can catch it
      const r = await runBoots(board, { powerOns: tries + 2 });
      return outcome(this.name, r, [...Array<string>(tries).fill('!B'), 'A', 'A'], [expectState(r, 'A', 'good', true)]);
    },
  },
  {
    name: 'kernel that never comes up falls back after its tries',
    async run(board) {
      await runBoots(board, { powerOns: 1 });
      const tries = Math.min(3, board.maxTries);
      await installGood(board, 'B', 'v2', tries);
      const r = await runBoots(board, { powerOns: tries + 2, os: { B: 'hang' } });
      return outcome(this.name, r, [...Array<string>(tries).fill('B'), 'A', 'A'], [expectState(r, 'A', 'good', true), r.states.B.primary ? 'slot B is still primary' : undefined]);
    },
  },
  {
    name: 'health check fails then rollback',
    async run(board) {
      await runBoots(board, { powerOns: 1 });
      await installGood(board, 'B', 'v2', Math.min(3, board.maxTries));
      const r = await runBoots(board, { powerOns: 3, os: { B: 'unhealthy' } });
      return outcome(this.name, r, ['B', 'A', 'A'], [expectState(r, 'B', 'bad', false), expectState(r, 'A', 'good', true)]);
    },
  },
  {
    name: 'torn environment write keeps the old state',
    async run(board) {
      await runBoots(board, { powerOns: 1 });
      await board.control.markBad('B');
      await board.writeImage('B', 'v2');
      const before = await board.snapshotEnv();
      await board.control.armTrial('B', Math.min(3, board.maxTries));
      await board.tearEnvWriteSince(before); // power cut while the arm reached storage
      const r = await runBoots(board, { powerOns: 2 });
      return outcome(this.name, r, ['A', 'A'], [expectState(r, 'A', 'good', true), r.states.B.primary ? 'slot B is primary after a torn arm' : undefined]);
    },
  },
  {
    name: 'power cut while writing the image, then resume',
    async run(board) {
      await runBoots(board, { powerOns: 1 });
      await board.control.markBad('B');
      await board.writePartialImage('B', 'v2'); // power cut here: B was never armed
      const cut = await runBoots(board, { powerOns: 1 });
      // after the reboot the daemon resumes: rewrites, verifies, arms
      await board.writeImage('B', 'v2');
      await board.control.armTrial('B', Math.min(3, board.maxTries));
      const resumed = await runBoots(board, { powerOns: 2 });
      const r: ScenarioResult = {
        trace: [...cut.trace, ...resumed.trace],
        boots: [...cut.boots, ...resumed.boots],
        powerOnMs: [...cut.powerOnMs, ...resumed.powerOnMs],
        states: resumed.states,
      };
      return outcome(this.name, r, ['A', 'B', 'B'], [expectState(r, 'B', 'good', true)]);
    },
  },
];

/**
 * Registers the HIL scenarios as tap subtests, so the same code serves `npm test`
 * (test/integration/hil-*.test.ts: every scenario of every bootloader-level lane, the OVMF lanes split
 * into SCENARIO_GROUPS so each file stays short) and the lanes of `npm run test:hil` (test/hil/*.hil.ts,
 * one file per lane). The scenarios of one file run HIL_JOBS at a time.
 *
 * Every subtest builds a fresh board in `t.testdir()`, and kills the emulators it started by pid in
 * `t.teardown`. Power-on times are printed as a TAP comment per scenario.
 */
import type { Test } from 'tap';
import { EmulatorTracker } from './emulator.js';
import { SCENARIOS, type HilBoard, type ScenarioDef } from './scenarios.js';

export type BoardFactory = (dir: string, tracker: EmulatorTracker) => Promise<HilBoard>;

export interface LaneOptions {
  label: string;
  makeBoard: BoardFactory;
  /** scenario names to run; default all. */
  only?: readonly string[];
  /** per-scenario expectations that differ from the scenario's default (name → boots). */
  expectedBoots?: Record<string, string[]>;
  /** scenarios run this many at a time, each on its own board with its own emulator; default
   * HIL_JOBS. (`npm test` also runs two test FILES at a time: package.json sets tap's `jobs` to 2,
   * where tap's default on a 2-CPU machine would be 1, leaving one CPU free.) */
  jobs?: number;
}

/** Scenarios of one lane run in parallel by default: an emulator is one busy thread, the CI machine has 2 CPUs. */
export const HIL_JOBS = 2;

/**
 * Every scenario in exactly one group (checked by test/integration/hil-grub.test.ts). A lane whose
 * power-ons take seconds (OVMF) registers one group per test file: 9–11 power-ons, well under a minute.
 */
export const SCENARIO_GROUPS = {
  /** 9 power-ons per lane. */
  install: ['good update committed', 'corrupt image never booted'],
  /** 8–11 power-ons (depends on the tries the convention counts). */
  fallback: ['armed image that fails the bootloader check falls back', 'kernel that never comes up falls back after its tries'],
  /** 11 power-ons. */
  faults: ['health check fails then rollback', 'torn environment write keeps the old state', 'power cut while writing the image, then resume'],
} as const satisfies Record<string, readonly string[]>;

export function selectScenarios(only?: readonly string[]): ScenarioDef[] {
  if (!only) return [...SCENARIOS];
  const picked = SCENARIOS.filter((s) => only.includes(s.name));
  if (picked.length !== only.length) throw new Error(`unknown scenario in ${only.join(', ')}`);
  return picked;
}

export function registerLane(t: Test, opts: LaneOptions): void {
  // subtests created while t.jobs > 1 are buffered and run in parallel (tap's pool)
  t.jobs = Math.max(t.jobs, opts.jobs ?? HIL_JOBS);
  for (const sc of selectScenarios(opts.only)) {
    t.test(`${opts.label}: ${sc.name}`, async (t) => {
      const tracker = new EmulatorTracker();
      t.teardown(() => tracker.killAll());
      const board = await opts.makeBoard(t.testdir(), tracker);
      const out = await sc.run(board);
      const ms = out.result.powerOnMs;
      t.comment(`${opts.label}: ${ms.length} power-ons, ${ms.join('/')} ms`);
      const expected = opts.expectedBoots?.[sc.name] ?? out.expectedBoots;
      t.same(out.result.boots, expected, `${opts.label}: the real bootloader booted ${out.result.boots.join(' ')}`);
      t.same(out.problems, [], 'slot states after the scenario');
      t.equal(tracker.running, 0, 'no emulator left running');
    });
  }
}

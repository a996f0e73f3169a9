/**
 * Registers the HIL scenarios as tap subtests, so the same code serves the fast subset inside
 * `npm test` (test/integration/hil-*.test.ts) and the full lanes (`npm run test:hil`, test/hil/*.hil.ts).
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
}

export function selectScenarios(only?: readonly string[]): ScenarioDef[] {
  if (!only) return [...SCENARIOS];
  const picked = SCENARIOS.filter((s) => only.includes(s.name));
  if (picked.length !== only.length) throw new Error(`unknown scenario in ${only.join(', ')}`);
  return picked;
}

export function registerLane(t: Test, opts: LaneOptions): void {
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

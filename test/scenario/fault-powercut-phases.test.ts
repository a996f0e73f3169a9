/**
 * Named power cuts, one per phase of an update, through the power-cut harness (test/powercut/): the
 * driver process is SIGKILLed at a chosen operation (found in the journal of an uncut run on the same
 * kind of board), unsynced slot writes are dropped or torn, the board is power-cycled, and the same
 * invariants as the random harness are checked: the board boots a fully verified image, the record
 * and outbox parse, securityVersion never decreases, the attempt ends consistently with what runs,
 * the next update completes, and the outbox tells the truth.
 */
import t from 'tap';
import { buildFixtures, calibrate, namedPlan, runPlan, type BoardKind, type IterationResult, type JournalEntry, type Scenario } from '../powercut/harness.js';
import type { CutMode } from '../powercut/driver.js';

type Pick = (j: JournalEntry[]) => JournalEntry | undefined;
const nth = (pred: (e: JournalEntry) => boolean, k = 0): Pick => (j) => { const xs = j.filter(pred); return xs.at(k); };
const after = (first: Pick, pred: (e: JournalEntry) => boolean): Pick => (j) => { const f = first(j); return f ? j.find((e) => e.n > f.n && pred(e)) : undefined; };
const op = (name: string) => (e: JournalEntry) => e.op === name;
const envWrite = (e: JournalEntry) => e.op === 'tool' && e.write === true;

const EMU: BoardKind = { backend: 'emulated' };
const MENDER: BoardKind = { backend: 'uboot', convention: 'mender' };
const GREENBOOT: BoardKind = { backend: 'grub', convention: 'greenboot' };
const GRUB_RAUC: BoardKind = { backend: 'grub', convention: 'rauc' };

interface Case { name: string; kind: BoardKind; scenario: Scenario; pick: Pick; cut: CutMode }
const CASES: Case[] = [
  { name: 'prepare: cut before the target is marked bad', kind: EMU, scenario: 'good', pick: nth(op('boot-markBad')), cut: 'before' },
  { name: 'prepare: torn environment write marking the target bad', kind: { backend: 'uboot', convention: 'rauc' }, scenario: 'good', pick: after(nth(op('boot-markBad')), envWrite), cut: 'torn' },
  { name: 'mid-chunk: a chunk write torn half-way', kind: GREENBOOT, scenario: 'good', pick: (j) => { const w = j.filter(op('slot-write')); return w[Math.floor(w.length / 2)]; }, cut: 'torn' },
  { name: 'flush: cut before the slot flush (every write lost or torn)', kind: EMU, scenario: 'good', pick: nth(op('slot-flush')), cut: 'before' },
  { name: 'read-back: cut after the flush, during the read-back', kind: GRUB_RAUC, scenario: 'good', pick: nth(op('slot-flush')), cut: 'after' },
  { name: 'arm: torn environment write arming the trial', kind: MENDER, scenario: 'good', pick: after(nth(op('boot-armTrial')), envWrite), cut: 'torn' },
  { name: 'first boot: cut right after the trial booted', kind: EMU, scenario: 'good', pick: nth(op('reboot')), cut: 'after' },
  { name: 'health check: cut while validating the trial', kind: MENDER, scenario: 'unhealthy', pick: after(nth(op('reboot')), op('state-save')), cut: 'after' },
  { name: 'commit: torn environment write committing the trial', kind: MENDER, scenario: 'good', pick: after(nth(op('boot-commit')), envWrite), cut: 'torn' },
  { name: 'commit: cut after the commit, before the record says so', kind: GREENBOOT, scenario: 'good', pick: nth(op('boot-commit')), cut: 'after' },
  { name: 'rollback: cut after marking the trial bad', kind: EMU, scenario: 'unhealthy', pick: nth(op('boot-markBad'), 1), cut: 'after' },
  { name: 'rollback: cut before the reboot back', kind: GREENBOOT, scenario: 'unhealthy', pick: nth(op('reboot'), 1), cut: 'before' },
  { name: 'report: cut between the final record and its report (outbox)', kind: EMU, scenario: 'good', pick: nth(op('outbox-append'), -1), cut: 'before' },
];

t.test('a power cut in each phase', async (t) => {
  const work = t.testdir();
  const fx = await buildFixtures(`${work}/fixtures`);
  t.teardown(() => fx.stop());
  const journals = new Map<string, JournalEntry[]>();
  const journal = async (kind: BoardKind, scenario: Scenario): Promise<JournalEntry[]> => {
    const key = `${kind.backend}/${kind.convention}/${scenario}`;
    if (!journals.has(key)) journals.set(key, await calibrate(kind, scenario, 2, fx, work));
    return journals.get(key)!;
  };
  const planned: Array<{ c: Case; n?: number }> = [];
  for (const c of CASES) planned.push({ c, ...(c.pick(await journal(c.kind, c.scenario)) ? { n: c.pick(await journal(c.kind, c.scenario))!.n } : {}) });
  const results = new Map<string, IterationResult>();
  let next = 0;
  const worker = async () => {
    while (next < planned.length) {
      const p = planned[next++]!;
      if (p.n === undefined) continue;
      results.set(p.c.name, await runPlan(namedPlan(1000 + next, p.c.kind, p.c.scenario, 2, [{ mode: 'op', killAt: p.n, cut: p.c.cut }]), { workDir: work, fixtures: fx }));
    }
  };
  await Promise.all([worker(), worker(), worker()]);
  for (const p of planned) {
    t.test(p.c.name, async (t) => {
      t.ok(p.n !== undefined, 'the operation exists in an uncut run');
      const r = results.get(p.c.name);
      t.ok(r, 'ran');
      if (!r) return;
      t.equal(r.cutsApplied, 1, `the driver was cut (${r.plan})`);
      t.same(r.violations, [], r.plan);
    });
  }
});

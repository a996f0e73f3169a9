/**
 * Power cuts during a DELTA install (issue 25), through the power-cut harness (test/powercut/): the
 * fixtures' releases carry delta files and share part of the factory image's bytes, so the device
 * copies a chunk from the booted slot and fetches the rest from the pack (multi-range). The driver
 * is SIGKILLed at every slot write of that install in turn (the copied chunk's write included),
 * before, torn half-way or after it; the unsynced writes are dropped or torn (a delta install
 * flushes only at the end, so a cut loses every copy it made), the board is power-cycled, and the
 * harness's invariants are checked: a fully verified image boots, the record and outbox parse, the
 * attempt then ends as the scenario says, the next (delta) update completes, the outbox tells the
 * truth.
 */
import t from 'tap';
import { buildFixtures, calibrate, namedPlan, readOutbox, runPlan, type BoardKind, type IterationResult } from '../powercut/harness.js';
import type { CutMode } from '../powercut/driver.js';

const KINDS: BoardKind[] = [{ backend: 'emulated' }, { backend: 'uboot', convention: 'rauc' }];
const MODES: CutMode[] = ['before', 'torn', 'after'];

t.test('a power cut at each slot write of a delta install', async (t) => {
  const work = t.testdir();
  const fx = await buildFixtures(`${work}/fixtures`, { delta: true });
  t.teardown(() => fx.stop());
  const planned: Array<{ name: string; kind: BoardKind; n: number; cut: CutMode }> = [];
  for (const kind of KINDS) {
    let transfer: Record<string, unknown> | undefined;
    const j = await calibrate(kind, 'good', 2, fx, work, true, async (stateDir) => {
      transfer = (await readOutbox(stateDir)).find((e) => e.event.type === 'UpdateInstalled')?.event['transfer'] as Record<string, unknown> | undefined;
    });
    const writes = j.filter((e) => e.op === 'slot-write');
    t.equal(transfer?.method, 'delta', `${kind.backend}: the uncut install went by delta`);
    t.ok(Number(transfer?.reusedBytes) > 0, `${kind.backend}: it copied ${transfer?.reusedBytes} bytes from a slot (writes: ${writes.map((w) => `${w.len}@${w.offset}`).join(', ')})`);
    writes.forEach((w, i) => planned.push({ name: `${kind.backend}${kind.convention ? '/' + kind.convention : ''}: write ${i + 1}/${writes.length} (${w.len} bytes at ${w.offset}) ${MODES[i % 3]}`, kind, n: w.n, cut: MODES[i % 3]! }));
  }
  const results = new Map<string, IterationResult>();
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < planned.length) {
      const p = planned[next++]!;
      results.set(p.name, await runPlan(namedPlan(2000 + next, p.kind, 'good', 2, [{ mode: 'op', killAt: p.n, cut: p.cut }], true), { workDir: work, fixtures: fx }));
    }
  };
  await Promise.all([worker(), worker()]);
  for (const p of planned) {
    const r = results.get(p.name);
    t.ok(r, `${p.name}: ran`);
    if (!r) continue;
    t.equal(r.cutsApplied, 1, `${p.name}: the driver was cut (${r.plan})`);
    t.same(r.violations, [], `${p.name}: no violation`);
  }
});

/**
 * Bounded fuzzing (fast-check) of every parser of untrusted input: each returns a result or throws a
 * coded error, never crashes otherwise (see test/powercut/fuzz-targets.ts). A fixed seed keeps
 * `npm test` reproducible; the long run with fresh seeds is
 * `npm run build && node dist/test/powercut/fuzz-long.js --runs 20000`.
 */
import t from 'tap';
import fc from 'fast-check';
import { fuzzTargets, makeCorpus } from '../powercut/fuzz-targets.js';

const SEED = 424242;
const RUNS = 60;

t.test('parsers of untrusted input are total (result or coded error)', async (t) => {
  const corpus = await makeCorpus(t.testdir());
  const targets = fuzzTargets(corpus);
  t.ok(targets.length >= 18, `${targets.length} targets`);
  for (const target of targets) {
    const started = Date.now();
    const r = await fc.check(target.property as never, { seed: SEED, numRuns: /refresh|resolveConfig|Outbox/.test(target.name) ? RUNS / 2 : RUNS * 3 });
    t.notOk(r.failed, `${target.name}${r.failed ? `: counterexample ${fc.stringify(r.counterexample)} — ${String(r.errorInstance)}` : ''} (${Date.now() - started} ms)`);
  }
});

/**
 * A fixed-seed sample of the power-cut harness (test/powercut/harness.ts): 8 iterations, each a
 * seeded plan of 1–3 SIGKILLs of a real driver process (dist/test/powercut/driver.js, built by
 * `npm run build`, which `npm test` runs first) with lost unsynced writes modelled, power cycles, and
 * the invariants checked. The long run: `npm run test:powercut -- --iterations 1000 --seed S`.
 */
import t from 'tap';
import { existsSync } from 'node:fs';
import { defaultDriverPath, runPowercut } from '../powercut/harness.js';

const SEED = 20261127;
const ITERATIONS = 8;

t.test('power cuts at seeded random points never break the invariants', async (t) => {
  t.ok(existsSync(defaultDriverPath()), `driver built at ${defaultDriverPath()} (npm run build)`);
  const s = await runPowercut({ iterations: ITERATIONS, seed: SEED, parallel: 2, workDir: t.testdir() });
  t.equal(s.iterations, ITERATIONS);
  t.ok(s.cuts >= ITERATIONS / 2, `real cuts happened (${s.cuts}; a delayed kill may land after the driver ended)`);
  for (const r of s.results) t.same(r.violations, [], r.plan);
  t.equal(s.violations, 0, `seed ${SEED}: no violations`);
});

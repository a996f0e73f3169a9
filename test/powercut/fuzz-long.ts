/**
 * Long fuzzing run of every parser of untrusted input (fuzz-targets.ts), fresh seed unless given:
 *
 *   npm run build && node dist/test/powercut/fuzz-long.js [--runs 20000] [--seed S] [--only NAME-SUBSTRING]
 *
 * Prints each target's runs, time and result; on a failure the seed, path and counterexample to
 * replay it (fast-check `seed` + `path`). Exits 1 when any target fails.
 */
import fc from 'fast-check';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fuzzTargets, makeCorpus } from './fuzz-targets.js';

async function main(): Promise<number> {
  const { values } = parseArgs({ args: process.argv.slice(2), strict: true, options: { runs: { type: 'string', default: '20000' }, seed: { type: 'string' }, only: { type: 'string' } } });
  const runs = Number(values.runs);
  const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31);
  const dir = await mkdtemp(join(tmpdir(), 'slotflip-fuzz-'));
  let failed = 0;
  const started = Date.now();
  try {
    const targets = fuzzTargets(await makeCorpus(dir)).filter((t) => !values.only || t.name.includes(values.only));
    process.stdout.write(`fuzz: ${targets.length} targets, ${runs} runs each (slow async targets: runs/20), seed ${seed}\n`);
    for (const t of targets) {
      const n = /refresh|resolveConfig|Outbox/.test(t.name) ? Math.max(1, Math.floor(runs / 20)) : runs;
      const t0 = Date.now();
      const r = await fc.check(t.property as never, { seed, numRuns: n });
      if (r.failed) {
        failed++;
        process.stdout.write(`FAIL ${t.name}: seed ${r.seed} path ${r.counterexamplePath} counterexample ${fc.stringify(r.counterexample)}\n  ${String(r.errorInstance)}\n`);
      } else process.stdout.write(`ok   ${t.name}: ${r.numRuns} runs, ${Date.now() - t0} ms\n`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  process.stdout.write(`fuzz summary: seed ${seed}, ${failed} failing targets, ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  return failed ? 1 : 0;
}

main().then((c) => { process.exitCode = c; }, (e: unknown) => { process.stderr.write(`fuzz: ${(e as Error).stack ?? String(e)}\n`); process.exitCode = 1; });

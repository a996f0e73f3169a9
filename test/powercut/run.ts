/**
 * `npm run test:powercut -- --iterations N --seed S [--parallel P] [--kinds K,K] [--keep] [--work DIR]`
 * (= `npm run build && node dist/test/powercut/run.js ...`): the power-cut harness (harness.ts).
 * Prints every failing iteration with its seed and plan, then a summary; exits 1 on any violation.
 * Re-run one failing iteration with `--only-seed SEED --keep` and inspect its directory.
 */
import { parseArgs } from 'node:util';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rm } from 'node:fs/promises';
import { BOARD_KINDS, buildFixtures, kindLabel, parseKind, runIteration, runPowercut } from './harness.js';

const USAGE = `usage: node dist/test/powercut/run.js [options]
  --iterations N   iterations (default 100), each a fresh board, update and 1-3 power cuts
  --seed S         base seed (default: random, printed); iteration seeds derive from it
  --parallel P     iterations at a time (default 2)
  --kinds K,K      only these board kinds (default all: ${BOARD_KINDS.map(kindLabel).join(', ')});
                   restricting kinds changes which plan a seed draws
  --only-seed S    re-run one iteration seed (as printed on failure) and keep its directory
                   (with the same --kinds as the run that printed it)
  --keep           keep iteration directories
  --work DIR       work directory (default: a new one under the system temp dir)
  --quiet          no progress lines
Prints every failing iteration (seed, plan, violations) and a summary; exits 1 on any violation.
`;

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    strict: true,
    options: {
      iterations: { type: 'string', default: '100' },
      seed: { type: 'string' },
      parallel: { type: 'string', default: '2' },
      work: { type: 'string' },
      keep: { type: 'boolean', default: false },
      'only-seed': { type: 'string' },
      quiet: { type: 'boolean', default: false },
      kinds: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const kinds = values.kinds ? values.kinds.split(',').map((k) => parseKind(k.trim())) : undefined;
  const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31);
  const work = values.work ?? join(tmpdir(), `slotflip-powercut-${process.pid}`);
  if (values['only-seed'] !== undefined) {
    const fx = await buildFixtures(join(work, 'fixtures'), { delta: true });
    try {
      const r = await runIteration(Number(values['only-seed']), { workDir: work, fixtures: fx, keep: true }, kinds);
      process.stdout.write(`${r.plan}\n${r.violations.length ? r.violations.map((v) => '  VIOLATION ' + v).join('\n') : '  ok'}\n  kept in ${join(work, `it-${r.seed}`)}\n`);
      return r.violations.length ? 1 : 0;
    } finally {
      await fx.stop();
    }
  }
  const iterations = Number(values.iterations);
  process.stdout.write(`powercut: ${iterations} iterations, seed ${seed}, parallel ${values.parallel}${values.kinds ? `, kinds ${values.kinds}` : ''}, work ${work}\n`);
  const s = await runPowercut({
    iterations, seed, parallel: Number(values.parallel), workDir: work, keep: values.keep, ...(kinds ? { kinds } : {}),
    onResult: (r, i) => {
      if (r.violations.length) process.stdout.write(`FAIL #${i} ${r.plan}\n${r.violations.map((v) => '  ' + v).join('\n')}\n`);
      else if (!values.quiet && (i + 1) % 50 === 0) process.stdout.write(`  ${i + 1} done\n`);
    },
  });
  if (!values.keep && s.violations === 0) await rm(work, { recursive: true, force: true });
  process.stdout.write(`powercut summary: seed ${seed}, ${s.iterations} iterations, ${s.cuts} power cuts (${s.deltaIterations} iterations installed by delta: ${s.deltaCuts} cuts, ${s.deltaSlotWriteCuts} of them at a slot write), ${s.violations} violations in ${s.failedSeeds.length} iterations, ${(s.ms / 1000).toFixed(1)} s${s.failedSeeds.length ? `; failing seeds: ${s.failedSeeds.join(' ')}` : ''}\n`);
  return s.violations === 0 ? 0 : 1;
}

main().then((c) => { process.exitCode = c; }, (e: unknown) => { process.stderr.write(`powercut: ${(e as Error).stack ?? String(e)}\n`); process.exitCode = 1; });

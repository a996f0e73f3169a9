/**
 * `npm run bench:delta-chunking`: how the chunking parameters trade index size against missing
 * bytes, on the `bench:delta` image pairs (built and cached by `npm run bench:delta` under
 * ~/.cache/slotflip-delta). For each parameter set and pair: the NEW image's delta is built (frames
 * at --level, frame cache shared with bench:delta), OLD is cut with the same parameters, and the
 * download a device holding OLD makes is index + the frames of NEW's chunks OLD lacks — what
 * `installDelta` fetches, without running it (bench:delta measures the real install).
 *
 *   npm run build && node dist/test/bench/delta-chunking-bench.js [--pairs config-repro,config]
 *        [--cdc 4/16/64,4/16/64/dir] [--level 12] [--format 1,2]
 *
 * --format: delta index formats to build NEW's delta in (default the one `release add` writes; 2 has
 * x86-filtered frames where they are smaller): A/B of the formats in one run, OLD cut once for both.
 * --cdc: min/avg/max in KiB, `/dir` for ext4 directory blocks as chunks of their own (cdc.ts dirBlock).
 */
import { readFile, rm, mkdir } from 'node:fs/promises';
import { homedir, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { chunkFile, type CdcParams } from '../../manifests/cdc.js';
import { buildDelta, cdcForImage, DELTA_FORMAT, DELTA_FORMAT_1, DELTA_FORMAT_2, parseDeltaIndex } from '../../manifests/delta.js';
import { PAIR_IMAGES } from './delta-pairs.js';

const PAIRS = PAIR_IMAGES;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { pairs: { type: 'string' }, cdc: { type: 'string' }, level: { type: 'string' }, format: { type: 'string' } } });
  const formats = (values.format ?? DELTA_FORMAT.slice(-1)).split(',').map((f) => {
    if (f !== '1' && f !== '2') throw new Error(`--format: 1 or 2, got ${f}`);
    return f === '1' ? DELTA_FORMAT_1 : DELTA_FORMAT_2;
  });
  const cache = process.env.SLOTFLIP_DELTA_CACHE ?? join(homedir(), '.cache', 'slotflip-delta');
  const level = Number(values.level ?? 12);
  const pairs = (values.pairs ?? 'config-repro').split(',');
  const sets = (values.cdc ?? '4/16/64,4/16/64/dir').split(',');
  const work = join(tmpdir(), `slotflip-delta-chunking-${process.pid}`);
  await mkdir(work, { recursive: true });
  const load0 = loadavg();
  const rows: string[] = [];
  try {
    for (const set of sets) {
      const [mi, av, ma, dir] = set.split('/');
      const base: CdcParams = { min: Number(mi) << 10, avg: Number(av) << 10, max: Number(ma) << 10 };
      for (const pair of pairs) {
        const names = PAIRS[pair];
        if (!names) throw new Error(`unknown pair ${pair}: ${Object.keys(PAIRS).join(', ')}`);
        const [oldImg, newImg] = names.map((n) => join(cache, 'images', `${n}.img`)) as [string, string];
        const cdc = dir === 'dir' ? await cdcForImage(newImg, base) : base;
        const t0 = performance.now();
        const have = new Set<string>();
        await chunkFile(oldImg, cdc, { keep: false, onChunk: (c) => void have.add(c.sha256) });
        const cutS = (performance.now() - t0) / 1000;
        for (const format of formats) {
          const t1 = performance.now();
          const built = await buildDelta(newImg, join(work, 'i'), join(work, 'p'), { cdc, level, format, frameCache: join(cache, 'frames') });
          const idx = parseDeltaIndex(await readFile(join(work, 'i')));
          const wallS = cutS + (performance.now() - t1) / 1000;
          let missRaw = 0;
          let frames = 0;
          for (let u = 0; u < idx.header.uniqueCount; u++) {
            if (have.has(idx.shas.toString('hex', u * 32, u * 32 + 32))) continue;
            missRaw += idx.rawLen[u]!;
            frames += idx.packLen[u]!;
          }
          const z = await readFile(join(cache, 'artifacts', names[1], 'zstd19.json'), 'utf8').then(Number, async () => Number(await readFile(join(cache, 'artifacts', names[0], 'zstd19.json'), 'utf8')) * -1);
          const expected = built.index.length + frames;
          const pct = `${z < 0 ? '≈' : ''}${((100 * expected) / Math.abs(z)).toFixed(2)} %`;
          const row = `| ${set} f${format.slice(-1)} | ${pair} | ${idx.header.chunkCount} | ${idx.header.uniqueCount} | ${(built.index.length / 1e3).toFixed(0)} | ${(missRaw / 2 ** 20).toFixed(2)} | ${(frames / 1e6).toFixed(3)} | ${(expected / 1e6).toFixed(3)} | ${pct} | ${wallS.toFixed(0)} |`;
          process.stderr.write(`[bench:delta-chunking] ${row} load ${loadavg()[0]!.toFixed(2)}\n`);
          rows.push(row);
        }
      }
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  process.stdout.write(
    [
      `frames at zstd level ${level}; % of NEW's \`zstd -19\` (≈: OLD's, NEW's not cached); load average before ${load0.map((x) => x.toFixed(2)).join(' ')}, after ${loadavg().map((x) => x.toFixed(2)).join(' ')}`,
      '',
      '| cdc KiB, format | pair | chunks | distinct | index KB | missing MiB | frames MB | download MB | % of zstd -19 | build+cut s |',
      '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
      ...rows,
    ].join('\n') + '\n',
  );
}

main().catch((e: unknown) => {
  process.stderr.write(`bench:delta-chunking failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});

/**
 * `npm run bench:delta-level`: what publishing a delta costs the manufacturer, per zstd level of the
 * pack's frames, on one image (default: the 1 GiB reproducible Debian image that `bench:delta`
 * builds, ~/.cache/slotflip-delta/images/old-repro.img). For each level, in a fresh Node process
 * (no frame cache): wall and CPU seconds of `buildDelta`, pack and index bytes, the pack as % of
 * the plain payload (`release add`'s 4 MiB-frame zstd -3 payload, built once and timed too), and
 * peak RSS. This is how `release add`'s default level was chosen (manifests/delta.ts
 * DEFAULT_DELTA_LEVEL); the README quotes the figures with the load average.
 *
 *   npm run build && node dist/test/bench/delta-level-bench.js [--image F] [--levels 3,9,12,19]
 *        [--concurrency N]
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { homedir, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { buildDelta } from '../../manifests/delta.js';
import { buildPayload, DEFAULT_CHUNK_SIZE } from '../../manifests/payload.js';

interface Row {
  what: string;
  wallS: number;
  cpuS: number;
  bytes: number;
  indexBytes?: number;
  rssMiB: number;
}

async function child(kind: string, image: string, out: string, level: number, concurrency: number): Promise<void> {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let row: Row;
  if (kind === 'payload') {
    const r = await buildPayload(image, join(out, 'image.zst'), { compression: 'zstd', chunkSize: DEFAULT_CHUNK_SIZE });
    row = { what: 'plain payload (zstd -3, 4 MiB frames)', wallS: 0, cpuS: 0, bytes: r.length, rssMiB: 0 };
  } else {
    const r = await buildDelta(image, join(out, `l${level}.delta-index`), join(out, `l${level}.delta-pack`), { level, concurrency });
    row = { what: `delta pack, level ${level}`, wallS: 0, cpuS: 0, bytes: r.pack.length, indexBytes: r.index.length, rssMiB: 0 };
  }
  row.wallS = (performance.now() - t0) / 1000;
  const c = process.cpuUsage(cpu0);
  row.cpuS = (c.user + c.system) / 1e6;
  row.rssMiB = process.resourceUsage().maxRSS / 1024;
  process.stdout.write(`${JSON.stringify(row)}\n`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { image: { type: 'string' }, levels: { type: 'string' }, concurrency: { type: 'string' }, child: { type: 'string' }, out: { type: 'string' }, level: { type: 'string' } } });
  const image = values.image ?? join(process.env.SLOTFLIP_DELTA_CACHE ?? join(homedir(), '.cache', 'slotflip-delta'), 'images', 'old-repro.img');
  const concurrency = Number(values.concurrency ?? 4);
  if (values.child) return child(values.child, image, values.out!, Number(values.level ?? 0), concurrency);
  const levels = (values.levels ?? '3,9,12,19').split(',').map(Number);
  const out = mkdtempSync(join(tmpdir(), 'slotflip-delta-level-'));
  const self = fileURLToPath(import.meta.url);
  const rows: Row[] = [];
  const load0 = loadavg();
  try {
    const run = (kind: string, level = 0): Row => {
      const s = execFileSync(process.execPath, [self, '--child', kind, '--image', image, '--out', out, '--level', String(level), '--concurrency', String(concurrency)], { encoding: 'utf8', maxBuffer: 1 << 20 });
      const r = JSON.parse(s.trim().split('\n').at(-1)!) as Row;
      process.stderr.write(`[bench:delta-level] ${JSON.stringify(r)} load ${loadavg().map((x) => x.toFixed(2)).join(' ')}\n`);
      return r;
    };
    rows.push(run('payload'));
    for (const l of levels) rows.push(run('delta', l));
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
  const payload = rows[0]!.bytes;
  const size = statSync(image).size;
  const lines = [
    `image ${image} (${(size / 2 ** 20).toFixed(0)} MiB); load average before ${load0.map((x) => x.toFixed(2)).join(' ')}, after ${loadavg().map((x) => x.toFixed(2)).join(' ')}; ${concurrency} frames in flight`,
    '(payload CPU counts only the Node process: its zstd CLI children are not included)',
    '',
    '| build | wall s | CPU s | MB | % of payload | index KB | peak RSS MiB |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...rows.map((r) => `| ${r.what} | ${r.wallS.toFixed(1)} | ${r.cpuS.toFixed(1)} | ${(r.bytes / 1e6).toFixed(1)} | ${((100 * r.bytes) / payload).toFixed(1)} | ${r.indexBytes !== undefined ? (r.indexBytes / 1e3).toFixed(0) : '-'} | ${r.rssMiB.toFixed(0)} |`),
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

main().catch((e: unknown) => {
  process.stderr.write(`bench:delta-level failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});

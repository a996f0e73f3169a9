/**
 * Speed of the delta install's slot cutting (daemon/install/delta.ts `lookupOf`: FastCDC in JS plus
 * SHA-256 per chunk, the maps the planner needs) on one file, in a fresh Node process per V8 mode:
 * default (TurboFan + Maglev) and `--no-turbofan --no-maglev` (interpreter and Sparkplug only, what a
 * daemon started with those flags to save idle memory would run). This is the work a kept seed index
 * (daemon/install/seed-index.ts) takes off the install's critical path.
 *
 *   npm run build && node dist/test/bench/cdc-speed-bench.js [--mib 256] [--runs 2]
 *
 * Prints per mode: wall, CPU (user+sys of the child), MiB/s, chunks, peak RSS (best wall of --runs).
 * The input (image-like bytes from test/harness/delta-images.ts makeImage) is cached in
 * /tmp/slotflip-bench/cdc-<mib>.img; it is read through the page cache after the first run.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { lookupOf } from '../../daemon/install/delta.js';
import { DEFAULT_CDC } from '../../manifests/cdc.js';
import type { DeltaIndex } from '../../manifests/delta.js';
import { makeImage } from '../harness/delta-images.js';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
}

async function child(path: string, size: number): Promise<void> {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const r = await lookupOf(path, size, { header: { cdc: DEFAULT_CDC } } as DeltaIndex);
  const wallS = (performance.now() - t0) / 1000;
  const c = process.cpuUsage(cpu0);
  process.stdout.write(`${JSON.stringify({ wallS, cpuS: (c.user + c.system) / 1e6, chunks: r.count, rssMiB: process.resourceUsage().maxRSS / 1024 })}\n`);
}

async function main(): Promise<void> {
  if (process.argv[2] === '--child') return child(process.argv[3]!, Number(process.argv[4]));
  const mib = arg('mib', 256);
  const runs = arg('runs', 2);
  const dir = '/tmp/slotflip-bench';
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `cdc-${mib}.img`);
  if (!existsSync(path)) writeFileSync(path, makeImage(11, mib << 20));
  const self = fileURLToPath(import.meta.url);
  const modes: [string, string[]][] = [['default', []], ['--no-turbofan --no-maglev', ['--no-turbofan', '--no-maglev']]];
  console.log(`cutting a ${mib} MiB file (${DEFAULT_CDC.min}/${DEFAULT_CDC.avg}/${DEFAULT_CDC.max} CDC), best of ${runs}, node ${process.version}, load ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  for (const [name, flags] of modes) {
    let best: { wallS: number; cpuS: number; chunks: number; rssMiB: number } | undefined;
    for (let i = 0; i < runs; i++) {
      const f = JSON.parse(execFileSync(process.execPath, [...flags, self, '--child', path, String(mib << 20)], { encoding: 'utf8' })) as NonNullable<typeof best>;
      if (!best || f.wallS < best.wallS) best = f;
    }
    console.log(`${name.padEnd(26)} wall ${best!.wallS.toFixed(2)} s  cpu ${best!.cpuS.toFixed(2)} s  ${(mib / best!.wallS).toFixed(0)} MiB/s  ${best!.chunks} chunks  peak RSS ${best!.rssMiB.toFixed(0)} MiB`);
  }
  console.log(`load after: ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
}

await main();

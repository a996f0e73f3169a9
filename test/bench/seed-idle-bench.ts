/**
 * `npm run bench:seed-idle`: what the idle daemon's seed indexing (daemon/install/idle-index.ts)
 * costs on one slot image: wall and CPU time, the peak RSS while it runs, and the RSS once it is
 * done and the daemon reclaimed its heap (as `slotflip daemon` does after idle work) next to the RSS
 * before it, in a process that idles like the daemon (V8's optimizing compilers off:
 * daemon/footprint.ts interpretOnly). Two runs: the build with the optimizing compilers on
 * (`optimize: true`) and interpreted (the daemon's default). Unpaced (busyFraction 1): the daemon's
 * default pacing (0.5) doubles the wall time, not the CPU.
 *
 *   npm run bench:seed-idle [-- --image PATH] [--mib N]
 *
 * Default image: bench:delta's 1 GiB `old` image when it was built (~/.cache/slotflip-delta), else a
 * generated N MiB file (default 256) under /tmp/slotflip-bench.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeImage } from '../harness/delta-images.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const rssMiB = (): number => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) / 1024;
const hwmMiB = (): number => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) / 1024;

async function child(image: string, optimize: boolean): Promise<void> {
  const { interpretOnly, exposedGc, reclaimHeap } = await import('../../daemon/footprint.js');
  interpretOnly();
  const { indexSlotsWhileIdle } = await import('../../daemon/install/idle-index.js');
  const gc = exposedGc();
  if (!gc) throw new Error('run with --expose-gc');
  const state = mkdtempSync(join(tmpdir(), 'seed-idle-'));
  try {
    reclaimHeap(gc);
    await new Promise((r) => setTimeout(r, 500));
    const before = rssMiB();
    // the peak of the build alone: reset the high-water mark (Linux: writing 5 to clear_refs)
    writeFileSync('/proc/self/clear_refs', '5');
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const r = await indexSlotsWhileIdle({ stateDir: state, resumeStatePath: join(state, 'install-resume.json'), slots: { A: { path: image }, B: { path: image } }, signal: new AbortController().signal, busyFraction: 1, optimize });
    const wallS = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(cpu0);
    const peak = hwmMiB();
    if (r.built.length !== 2) throw new Error(`built ${r.built.join(',')}`);
    reclaimHeap(gc);
    await new Promise((r) => setTimeout(r, 2000));
    const after = rssMiB();
    process.stdout.write(`${JSON.stringify({ optimize, slots: 2, perSlotWallS: wallS / 2, perSlotCpuS: (c.user + c.system) / 2e6, rssBefore: before, peak, rssAfter: after })}\n`);
  } finally {
    rmSync(state, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  if (process.argv[2] === '--child') return child(process.argv[3]!, process.argv[4] === 'jit');
  let image = arg('image');
  if (!image) {
    const cached = join(process.env.SLOTFLIP_DELTA_CACHE ?? join(homedir(), '.cache', 'slotflip-delta'), 'images', 'old.img');
    if (existsSync(cached)) image = cached;
    else {
      const mib = Number(arg('mib') ?? 256);
      mkdirSync('/tmp/slotflip-bench', { recursive: true });
      image = `/tmp/slotflip-bench/seed-${mib}.img`;
      if (!existsSync(image)) writeFileSync(image, makeImage(11, mib << 20));
    }
  }
  const mib = statSync(image).size / 2 ** 20;
  const self = fileURLToPath(import.meta.url);
  console.log(`idle seed indexing of ${image} (${mib.toFixed(0)} MiB) per slot, two slots, node ${process.version}, load ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  for (const mode of ['jit', 'interpreted']) {
    const f = JSON.parse(execFileSync(process.execPath, ['--expose-gc', self, '--child', image, mode], { encoding: 'utf8' }).trim().split('\n').at(-1)!) as Record<string, number>;
    console.log(`${mode === 'jit' ? 'optimizing JIT on          ' : 'interpreted (daemon)       '}  per slot: wall ${f.perSlotWallS!.toFixed(2)} s, cpu ${f.perSlotCpuS!.toFixed(2)} s (${(mib / f.perSlotCpuS!).toFixed(0)} MiB/s of CPU)  RSS: idle before ${f.rssBefore!.toFixed(0)} MiB, peak ${f.peak!.toFixed(0)} MiB, idle after ${f.rssAfter!.toFixed(0)} MiB`);
  }
  console.log(`load after: ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
}

await main();

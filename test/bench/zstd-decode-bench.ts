/**
 * zstd decompression through daemon/install/decode.ts: the `zstd` CLI child process (reading the
 * payload file as its stdin, output into reused 4 MiB buffers through a FIFO) against node:zlib's
 * built-in zstd (fed by a file stream), on the installer's workload: a payload
 * of independent 4 MiB frames, every output byte SHA-256-hashed in Node (the installer hashes every
 * chunk). Prints wall time, CPU (Node + child) and peak RSS of Node and of the child (the tree's
 * peak is at most their sum), best of --runs.
 *
 *   npm run build && node dist/test/bench/zstd-decode-bench.js [--mib 256] [--runs 3]
 *
 * Here (2 shared cores, load ~11, Node 24.22, zstd 1.5.4; 256 MiB image, 98 MiB payload, best of 3):
 *   zstd CLI child   wall 0.82 s  cpu 0.64 s  313 MiB/s  peak RSS node 55 MiB + child 6 MiB = 61 MiB
 *   node:zlib zstd   wall 0.89 s  cpu 0.61 s  289 MiB/s  peak RSS node 129 MiB
 * so the CLI stays the default and the built-in decoder is the fallback when the CLI is missing.
 *
 * Inputs are cached in /tmp/slotflip-bench/zstd-<mib>. Each run is a fresh Node process (peak RSS
 * is per process); the child's figures come from GNU time (`/usr/bin/time`).
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, createReadStream, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startDecoder } from '../../daemon/install/decode.js';

const FRAME = 4 << 20;
const BUF = 1 << 20;

interface Figures {
  mode: string;
  wallS: number;
  cpuS: number;
  nodeRssMiB: number;
  childRssMiB: number;
  bytes: number;
  sha256: string;
}

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
}

/** A semi-compressible image (random 8 KiB blocks, partly zeroed, each twice; some 16 KiB zero runs) cut
 * into 4 MiB chunks, each compressed as its own frame and concatenated: the payload format. */
function makeInput(dir: string, mib: number): string {
  const payload = join(dir, 'payload.zst');
  if (existsSync(payload)) return payload;
  mkdirSync(dir, { recursive: true });
  const tmp = join(dir, 'payload.zst.tmp');
  const fd = openSync(tmp, 'w');
  for (let c = 0; c < (mib << 20) / FRAME; c++) {
    const chunk = Buffer.alloc(FRAME);
    for (let off = 0; off < FRAME; off += 16384) {
      const block = randomBytes(8192);
      if (block[0]! < 40) continue; // zero run
      for (let i = 0; i < 8192; i += 2) if (block[i]! < 96) block[i + 1] = 0;
      block.copy(chunk, off);
      block.copy(chunk, off + 8192);
    }
    writeSync(fd, execFileSync('zstd', ['-q', '-c', '-3'], { input: chunk, maxBuffer: 2 * FRAME }));
  }
  closeSync(fd);
  execFileSync('mv', [tmp, payload]);
  return payload;
}

async function runOne(mode: 'cli' | 'zlib', payload: string): Promise<Figures> {
  const hash = createHash('sha256');
  let bytes = 0;
  const dir = mkdtempSync(join(tmpdir(), 'zstd-bench-'));
  // the CLI is started by decode.ts; a wrapper runs it under GNU time for its CPU and peak RSS
  const timeOut = join(dir, 'time');
  const wrapper = join(dir, 'zstd');
  writeFileSync(wrapper, `#!/bin/sh\nexec /usr/bin/time -o ${timeOut} -f '%M %U %S' zstd "$@"\n`, { mode: 0o755 });
  const t0 = process.hrtime.bigint();
  const cpu0 = process.cpuUsage();
  const fd = openSync(payload, 'r');
  const dec = await startDecoder('zstd', { zstdDecoder: mode, zstdPath: wrapper, fifoDir: dir, stdinFd: mode === 'cli' ? fd : undefined });
  // the installer's read buffers: 4 MiB chunk buffers reused (zero copy from the CLI's FIFO)
  const bufs = [Buffer.allocUnsafe(FRAME), Buffer.allocUnsafe(FRAME)];
  let next = 0;
  dec.start(
    (piece) => {
      bytes += piece.length;
      hash.update(piece);
      return true;
    },
    () => bufs[next++ % 2]!,
  );
  if (mode === 'cli') closeSync(fd);
  else createReadStream('', { fd, highWaterMark: BUF }).pipe(dec.input!);
  await dec.done;
  const wallS = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  let childRssMiB = 0;
  let childCpuS = 0;
  if (mode === 'cli') {
    const [rssKiB, u, s] = readFileSync(timeOut, 'utf8').trim().split('\n').pop()!.split(' ').map(Number);
    childRssMiB = rssKiB! / 1024;
    childCpuS = u! + s!;
  }
  rmSync(dir, { recursive: true, force: true });
  return {
    mode,
    wallS,
    cpuS: (cpu.user + cpu.system) / 1e6 + childCpuS,
    nodeRssMiB: process.resourceUsage().maxRSS / 1024,
    childRssMiB,
    bytes,
    sha256: hash.digest('hex'),
  };
}

async function main(): Promise<void> {
  const child = process.argv.indexOf('--child');
  if (child > 0) {
    const r = await runOne(process.argv[child + 1] as 'cli' | 'zlib', process.argv[child + 2]!);
    process.stdout.write(JSON.stringify(r));
    return;
  }
  const mib = arg('mib', 256);
  const runs = arg('runs', 3);
  const payload = makeInput(`/tmp/slotflip-bench/zstd-${mib}`, mib);
  const self = fileURLToPath(import.meta.url);
  console.log(`node ${process.version}, zstd ${execFileSync('zstd', ['-V']).toString().trim()}; ${mib} MiB image in 4 MiB frames, payload ${(readFileSync(payload).length / 2 ** 20).toFixed(1)} MiB; best of ${runs}`);
  const sums = new Set<string>();
  for (const mode of ['cli', 'zlib'] as const) {
    let best: Figures | undefined;
    for (let i = 0; i < runs; i++) {
      const r = JSON.parse(execFileSync(process.execPath, [self, '--child', mode, payload]).toString()) as Figures;
      sums.add(r.sha256);
      if (!best || r.wallS < best.wallS) best = r;
    }
    const b = best!;
    console.log(
      `${mode === 'cli' ? 'zstd CLI child ' : 'node:zlib zstd '}  wall ${b.wallS.toFixed(2)} s  cpu ${b.cpuS.toFixed(2)} s  ` +
        `${(b.bytes / 2 ** 20 / b.wallS).toFixed(0)} MiB/s  peak RSS node ${b.nodeRssMiB.toFixed(0)} MiB + child ${b.childRssMiB.toFixed(0)} MiB = ${(b.nodeRssMiB + b.childRssMiB).toFixed(0)} MiB`,
    );
  }
  if (sums.size !== 1) throw new Error('the two decoders disagree');
}

await main();

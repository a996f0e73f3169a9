/**
 * `npm run bench`: the streaming installer against a C-style floor, alternating in the same run.
 *
 * Builds its inputs (a semi-compressible image per size, payloads with zstd and gzip, 4 MiB chunks),
 * compiles a small C reference with gcc (2 threads: decompress + SHA-256 | 1 MiB pwrite + fdatasync
 * every 64 MiB; zstd through the `zstd` CLI on a pipe, gzip through zlib in-process), then for every
 * case runs reference and installer alternately (each as its own process) into a file slot and a
 * loop-device slot. Prints wall time, MB/s, CPU seconds (process + reaped children), peak RSS, and the
 * installer's ratio to the reference (medians). The installer also reads the slot back and hashes it
 * again; a second reference column ("+rb") does the same read-back so the extra pass is visible.
 *
 *   node dist/test/bench/install-bench.js [--sizes 1,4] [--rounds 3] [--dir DIR] [--read-back path|handle]
 *
 * `--read-back path` (default here) is what a daemon using hal's file/device slots should pass; the
 * installer's own default, `handle`, reads back through SlotHandle.readAt (allocates per read).
 *
 * Sizes after the first run zstd into the file slot only: they show whether peak RSS grows.
 * Loop devices: `losetup -f --show`, and only the one attached here is detached (also on errors).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { buildPayload, DEFAULT_CHUNK_SIZE, type BuiltPayload } from '../../manifests/payload.js';
import { writeImage } from './install-fixtures.js';

const GIB = 1 << 30;
const HERE = dirname(fileURLToPath(import.meta.url));

const REF_C = String.raw`
#define _GNU_SOURCE
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>
#define BS (1 << 20)
#define NB 8
static unsigned char *bufs[NB]; static size_t lens[NB]; static int head, tail, count, done;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int outfd;
static void *writer(void *arg) {
  (void)arg; off_t off = 0, synced = 0;
  for (;;) {
    pthread_mutex_lock(&mu);
    while (count == 0 && !done) pthread_cond_wait(&cv, &mu);
    if (count == 0 && done) { pthread_mutex_unlock(&mu); break; }
    int i = tail; pthread_mutex_unlock(&mu);
    size_t w = 0; while (w < lens[i]) { ssize_t n = pwrite(outfd, bufs[i] + w, lens[i] - w, off + w); if (n <= 0) { perror("pwrite"); exit(2); } w += n; }
    off += lens[i];
    if (off - synced >= (64 << 20)) { fdatasync(outfd); synced = off; }
    pthread_mutex_lock(&mu); tail = (tail + 1) % NB; count--; pthread_cond_signal(&cv); pthread_mutex_unlock(&mu);
  }
  fdatasync(outfd);
  return NULL;
}
static size_t readfull(int fd, unsigned char *b, size_t n) { size_t g = 0; while (g < n) { ssize_t r = read(fd, b + g, n - g); if (r <= 0) break; g += r; } return g; }
int main(int argc, char **argv) {
  if (argc < 4) { fprintf(stderr, "usage: ref zstd|gzip PAYLOAD OUT [readback]\n"); return 1; }
  int gz = strcmp(argv[1], "gzip") == 0, rb = argc > 4;
  int in; pid_t pid = 0;
  if (gz) in = open(argv[2], O_RDONLY);
  else { int p[2]; if (pipe(p)) return 1; pid = fork(); if (pid == 0) { dup2(p[1], 1); close(p[0]); close(p[1]); execlp("zstd", "zstd", "-d", "-c", "-q", argv[2], (char *)NULL); _exit(127); } close(p[1]); in = p[0]; }
  outfd = open(argv[3], O_WRONLY);
  if (in < 0 || outfd < 0) { perror("open"); return 1; }
  for (int i = 0; i < NB; i++) bufs[i] = malloc(BS);
  pthread_t th; pthread_create(&th, NULL, writer, NULL);
  EVP_MD_CTX *h = EVP_MD_CTX_new(); EVP_DigestInit_ex(h, EVP_sha256(), NULL);
  z_stream zs; unsigned char *zin = malloc(BS); int zeof = 0; memset(&zs, 0, sizeof zs);
  if (gz) inflateInit2(&zs, 16 + MAX_WBITS);
  unsigned long long total = 0;
  for (;;) {
    pthread_mutex_lock(&mu); while (count == NB) pthread_cond_wait(&cv, &mu); int i = head; pthread_mutex_unlock(&mu);
    size_t n;
    if (!gz) n = readfull(in, bufs[i], BS);
    else {
      zs.next_out = bufs[i]; zs.avail_out = BS;
      while (zs.avail_out > 0) {
        if (zs.avail_in == 0) { if (zeof) break; ssize_t r = read(in, zin, BS); if (r <= 0) { zeof = 1; break; } zs.next_in = zin; zs.avail_in = r; }
        int rc = inflate(&zs, Z_NO_FLUSH);
        if (rc == Z_STREAM_END) inflateReset(&zs); else if (rc != Z_OK && rc != Z_BUF_ERROR) { fprintf(stderr, "inflate %d\n", rc); return 3; }
      }
      n = BS - zs.avail_out;
    }
    if (n == 0) break;
    EVP_DigestUpdate(h, bufs[i], n); total += n; lens[i] = n;
    pthread_mutex_lock(&mu); head = (head + 1) % NB; count++; pthread_cond_signal(&cv); pthread_mutex_unlock(&mu);
  }
  pthread_mutex_lock(&mu); done = 1; pthread_cond_signal(&cv); pthread_mutex_unlock(&mu);
  pthread_join(th, NULL);
  if (pid) waitpid(pid, NULL, 0);
  unsigned char md[32]; unsigned int ml; EVP_DigestFinal_ex(h, md, &ml);
  char hex[65]; for (int k = 0; k < 32; k++) sprintf(hex + 2 * k, "%02x", md[k]);
  if (rb) { /* read the output back and hash it again */
    int fd = open(argv[3], O_RDONLY); EVP_DigestInit_ex(h, EVP_sha256(), NULL); unsigned long long left = total;
    while (left > 0) { size_t want = left < BS ? left : BS; size_t g = readfull(fd, bufs[0], want); if (g == 0) break; EVP_DigestUpdate(h, bufs[0], g); left -= g; }
    EVP_DigestFinal_ex(h, md, &ml); close(fd);
  }
  struct rusage s, c; getrusage(RUSAGE_SELF, &s); getrusage(RUSAGE_CHILDREN, &c);
  long hwm = s.ru_maxrss; FILE *st = fopen("/proc/self/status", "r"); char line[256];
  while (st && fgets(line, sizeof line, st)) if (sscanf(line, "VmHWM: %ld kB", &hwm) == 1) break;
  if (st) fclose(st);
  double cpu = s.ru_utime.tv_sec + s.ru_stime.tv_sec + c.ru_utime.tv_sec + c.ru_stime.tv_sec + (s.ru_utime.tv_usec + s.ru_stime.tv_usec + c.ru_utime.tv_usec + c.ru_stime.tv_usec) / 1e6;
  printf("{\"sha256\":\"%s\",\"bytes\":%llu,\"cpuS\":%.3f,\"maxRssKiB\":%ld}\n", hex, total, cpu, hwm);
  return 0;
}
`;

interface Sample {
  wallS: number;
  cpuS: number;
  rssMiB: number;
}

function run(cmd: string, args: string[]): Promise<{ out: string; wallS: number }> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      const wallS = Number(process.hrtime.bigint() - t0) / 1e9;
      if (code === 0) resolve({ out, wallS });
      else reject(new Error(`${cmd} exited ${code}: ${out.slice(0, 500)}`));
    });
  });
}

async function runRef(ref: string, comp: string, payload: string, slot: string, sha: string, readBack: boolean): Promise<Sample> {
  const { out, wallS } = await run(ref, [comp, payload, slot, ...(readBack ? ['rb'] : [])]);
  const r = JSON.parse(out) as { sha256: string; cpuS: number; maxRssKiB: number };
  if (r.sha256 !== sha) throw new Error(`reference produced ${r.sha256}, expected ${sha}`);
  return { wallS, cpuS: r.cpuS, rssMiB: r.maxRssKiB / 1024 };
}

async function runInstaller(built: string, payload: string, slot: string, state: string, sha: string, extra: string[] = []): Promise<Sample> {
  await rm(state, { force: true });
  const { out, wallS } = await run(process.execPath, [join(HERE, 'install-child.js'), '--payload', built, '--source', payload, '--slot', slot, '--state', state, ...extra]);
  const r = JSON.parse(out.trim().split('\n').at(-1)!) as { result?: { readBackSha256: string }; usage: { userMs: number; systemMs: number; childCpuMs: number; maxRssKiB: number }; error?: unknown };
  if (!r.result || r.result.readBackSha256 !== sha) throw new Error(`installer failed: ${out.slice(0, 500)}`);
  return { wallS, cpuS: (r.usage.userMs + r.usage.systemMs + r.usage.childCpuMs) / 1000, rssMiB: r.usage.maxRssKiB / 1024 };
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function ensureInputs(dir: string, gib: number, comps: string[]): Promise<{ image: string; built: Record<string, { json: string; file: string; b: BuiltPayload }> }> {
  const image = join(dir, `image-${gib}g.img`);
  if (!existsSync(image)) {
    process.stderr.write(`writing ${gib} GiB image…\n`);
    await writeImage(image, gib * GIB, 42);
  }
  const built: Record<string, { json: string; file: string; b: BuiltPayload }> = {};
  for (const c of comps) {
    const file = join(dir, `payload-${gib}g.${c}`);
    const json = `${file}.json`;
    if (!existsSync(json) || !existsSync(file)) {
      process.stderr.write(`building ${gib} GiB ${c} payload…\n`);
      const t0 = Date.now();
      const b = await buildPayload(image, file, { compression: c as 'zstd' | 'gzip', chunkSize: DEFAULT_CHUNK_SIZE });
      await writeFile(json, JSON.stringify(b));
      process.stderr.write(`  ${((Date.now() - t0) / 1000).toFixed(1)} s, ${(b.length / 2 ** 20).toFixed(0)} MiB\n`);
    }
    built[c] = { json, file, b: JSON.parse(await readFile(json, 'utf8')) as BuiltPayload };
  }
  return { image, built };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      sizes: { type: 'string', default: '1,4' },
      rounds: { type: 'string', default: '3' },
      dir: { type: 'string', default: join(tmpdir(), 'slotflip-bench') },
      'no-loop': { type: 'boolean', default: false },
      'read-back': { type: 'string', default: 'path' },
    },
  });
  const sizes = values.sizes.split(',').map(Number).filter((n) => n > 0);
  const rounds = Math.max(1, Number(values.rounds));
  const dir = values.dir;
  await mkdir(dir, { recursive: true });

  const ref = join(dir, 'ref');
  await writeFile(join(dir, 'ref.c'), REF_C);
  execFileSync('gcc', ['-O2', '-pthread', '-o', ref, join(dir, 'ref.c'), '-lcrypto', '-lz']);

  const loops: string[] = [];
  const detach = (): void => {
    for (const l of loops.splice(0)) {
      try {
        execFileSync('losetup', ['-d', l]);
      } catch {
        process.stderr.write(`could not detach ${l}; run: losetup -d ${l}\n`);
      }
    }
  };
  const onSignal = (): void => {
    detach();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const lines: string[] = [];
  const print = (s: string): void => {
    lines.push(s);
    process.stdout.write(`${s}\n`);
  };
  print(`# slotflip install bench  node ${process.version}  loadavg at start ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  const readBackMode = values['read-back'] === 'handle' ? 'handle' : 'path';
  print(`# chunk ${DEFAULT_CHUNK_SIZE >> 20} MiB, ${rounds} alternating round(s) per case, medians; MB/s = image bytes / wall; installer read-back via ${readBackMode}`);
  print('case                         | ref s  | ref+rb s | inst s | inst MB/s | inst CPU s | ref CPU s | inst RSS MiB | ref RSS MiB | ratio inst/ref | ratio inst/(ref+rb)');
  const rssBySize: Record<number, number> = {};
  try {
    for (const [si, gib] of sizes.entries()) {
      const comps = si === 0 ? ['zstd', 'gzip'] : ['zstd'];
      const { built } = await ensureInputs(dir, gib, comps);
      // gzip is decoded by the zstd CLI by default; the first size also shows node:zlib into the file slot
      const cases: Array<[string, string]> = si === 0 ? [['zstd', ''], ['gzip', ''], ['gzip', 'zlib']] : [['zstd', '']];
      const size = gib * GIB;
      const slotFile = join(dir, `slot-${gib}g.img`);
      await writeFile(slotFile, '');
      await truncate(slotFile, size);
      const slots: Array<[string, string]> = [['file', slotFile]];
      if (si === 0 && !values['no-loop']) {
        const backing = join(dir, `loop-${gib}g.img`);
        await writeFile(backing, '');
        await truncate(backing, size);
        const dev = execFileSync('losetup', ['-f', '--show', backing], { encoding: 'utf8' }).trim();
        loops.push(dev);
        slots.push(['loop', dev]);
      }
      for (const [comp, gzipDecoder] of cases) {
        const { json, file, b } = built[comp]!;
        for (const [slotKind, slot] of gzipDecoder ? slots.slice(0, 1) : slots) {
          // warm-up (not measured): first writes into a sparse file allocate blocks
          await runRef(ref, comp, file, slot, b.payload.sha256, false);
          const refS: Sample[] = [];
          const refRb: Sample[] = [];
          const inst: Sample[] = [];
          for (let r = 0; r < rounds; r++) {
            refS.push(await runRef(ref, comp, file, slot, b.payload.sha256, false));
            inst.push(await runInstaller(json, file, slot, join(dir, 'state.json'), b.payload.sha256, ['--read-back', readBackMode, ...(gzipDecoder ? ['--gzip-decoder', gzipDecoder] : [])]));
            refRb.push(await runRef(ref, comp, file, slot, b.payload.sha256, true));
          }
          const m = (xs: Sample[], k: keyof Sample): number => median(xs.map((x) => x[k]));
          const instWall = m(inst, 'wallS');
          const name = `${gib} GiB ${comp}${gzipDecoder ? ` (${gzipDecoder})` : ''} → ${slotKind}`.padEnd(28);
          if (comp === 'zstd' && slotKind === 'file') rssBySize[gib] = Math.max(...inst.map((x) => x.rssMiB));
          print(
            `${name} | ${m(refS, 'wallS').toFixed(2).padStart(6)} | ${m(refRb, 'wallS').toFixed(2).padStart(8)} | ${instWall.toFixed(2).padStart(6)} | ${((size / instWall) / 1e6).toFixed(0).padStart(9)} | ${m(inst, 'cpuS').toFixed(2).padStart(10)} | ${m(refS, 'cpuS').toFixed(2).padStart(9)} | ${Math.max(...inst.map((x) => x.rssMiB)).toFixed(1).padStart(12)} | ${m(refS, 'rssMiB').toFixed(1).padStart(11)} | ${(instWall / m(refS, 'wallS')).toFixed(2).padStart(14)} | ${(instWall / m(refRb, 'wallS')).toFixed(2).padStart(19)}`,
          );
          print(`#   runs: inst ${inst.map((x) => x.wallS.toFixed(2)).join(' ')}  ref ${refS.map((x) => x.wallS.toFixed(2)).join(' ')}  ref+rb ${refRb.map((x) => x.wallS.toFixed(2)).join(' ')}`);
        }
      }
      detach();
      await rm(slotFile, { force: true });
      await rm(join(dir, `loop-${gib}g.img`), { force: true });
    }
  } finally {
    detach();
  }
  const peaks = Object.entries(rssBySize).map(([g, r]) => `${g} GiB: ${r.toFixed(1)} MiB`);
  print(`# installer peak RSS, zstd → file slot, by image size: ${peaks.join(', ')}`);
  print(`# loadavg at end ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  await writeFile(join(dir, 'results.txt'), `${lines.join('\n')}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`${String((e as Error).stack ?? e)}\n`);
  process.exitCode = 1;
});

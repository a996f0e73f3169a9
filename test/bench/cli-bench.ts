/**
 * `npm run bench`: what a device runs, timed. The BUILT CLI (`node dist/daemon/cli.js install
 * http://127.0.0.1:PORT/ --config F`) pulls a signed release from `slotflip repo serve` into a
 * loop-device slot B, beside a C floor (test/bench/floor.c: libzstd → OpenSSL SHA-256 → 1 MiB pwrite,
 * fdatasync; two threads) writing the same loop device, alternating CLI / floor / floor+read-back
 * in one run.
 *
 * Needs: root (losetup), gcc, libzstd-dev, libssl-dev, e2fsprogs (mke2fs -d), /usr/bin/time (Debian
 * package `time`), ~3× the image size free in --dir.
 *
 *   node dist/test/bench/cli-bench.js [--sizes 1,4] [--rounds 3] [--tree /usr/share] [--dir DIR]
 *                                     [--profile] [--module] [--base ROOT] [--cli-only]
 *                                     [--node-args ARGS] [--env K=V,..] [--base-env K=V,..]
 *
 * Per run: wall (spawn → exit → a final `sync`), CPU seconds of the process tree (user+sys from
 * /usr/bin/time: wait4's rusage includes reaped descendants), peak tree RSS (sum of VmRSS over the
 * tree, sampled every 50 ms), and for the CLI the phase split from its JSON log (runner `effect done`
 * ms: check = TUF refresh, writeSlot = download+decompress+hash+write (+ the pipelined read-back
 * behind the fsync frontier), verifySlot = whole-slot read-back, armTrial, reboot (`true` here),
 * plus start = spawn → first log line). Medians and the ratios CLI / floor.
 * The image: an ext4 of --size GiB made with `mke2fs -d TREE`, compressed by `slotflip release add`
 * (zstd, default chunk size); inputs are cached in --dir.
 * --profile: one more CLI run under `node --cpu-prof`; prints the top self-time functions per thread
 *   and the GC / SHA-256 shares. --module: afterwards also runs the older module-level bench
 *   (install-bench.js: the installer module in a child process, file slot, no HTTP) as a second table.
 * --base ROOT: also runs ROOT/dist/daemon/cli.js (another build, e.g. a copy of main's) as "CLI base",
 *   in the same rotation, and prints the pairwise ratios CLI / base (an A/B in one run, for a change
 *   measured on a busy machine). --cli-only: no floor runs (with --base: only the two CLIs).
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readdirSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { launcherFlags } from './launcher-flags.js';

const GIB = 1 << 30;
const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '..', '..', '..');
const CLI = join(ROOT, 'dist', 'daemon', 'cli.js');
const HARDWARE = 'bench,slotflip';
/** the Node flags /usr/bin/slotflip (systemd/packaging/slotflip.sh) runs the CLI with: the bench runs
 * the CLI the same way (checked against that file at start). */
const WRAPPER = join(ROOT, 'systemd', 'packaging', 'slotflip.sh');
/** The Node flags a build's launcher gives `slotflip install` (the `case` line naming install, else
 * its generic last line); a build without a launcher (--base of a bare dist/) takes this one's. */
function wrapperNodeFlags(root = ROOT): string[] {
  const wrapper = existsSync(join(root, 'systemd', 'packaging', 'slotflip.sh')) ? join(root, 'systemd', 'packaging', 'slotflip.sh') : WRAPPER;
  const flags = launcherFlags(wrapper, 'install', true);
  if (!flags) throw new Error(`${wrapper}: no exec line to take the Node flags from`);
  return flags;
}

/** Whether a build's launcher gives the CLI Node's compile cache (`export NODE_COMPILE_CACHE=` in
 * its slotflip.sh; a build without the file: no). The bench then gives each build its own cache under
 * --dir (not the device's /var/cache/slotflip), warmed by one untimed `install --help` first, as a
 * device's cache is warm from its previous runs. */
function launcherCompileCache(root: string): boolean {
  const wrapper = join(root, 'systemd', 'packaging', 'slotflip.sh');
  return existsSync(wrapper) && /^export NODE_COMPILE_CACHE=/m.test(readFileSync(wrapper, 'utf8'));
}

interface Sample {
  wallS: number;
  cpuS: number;
  rssMiB: number;
  /** peak tree RSS before the streaming install started (its 'install started' log line) */
  rssPreMiB?: number;
  phases?: Record<string, number>;
  gc?: { full: number; young: number };
  /** per process of the tree (by command name): CPU s as last sampled, peak VmRSS / RssAnon / RssFile MiB */
  procs?: Record<string, { cpuS: number; rssMiB: number; anonMiB: number; fileMiB: number }>;
  /** CPU s per thread name of the tree's processes ("process/thread"), as last sampled */
  threads?: Record<string, number>;
}

/** PIDs of the tree under `root` (root excluded: it is /usr/bin/time). */
function descendants(root: number): number[] {
  const parent = new Map<number, number>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = readFileSync(`/proc/${d}/stat`, 'utf8');
      const after = s.slice(s.lastIndexOf(')') + 2).split(' ');
      parent.set(Number(d), Number(after[1]));
    } catch {
      /* gone */
    }
  }
  const out: number[] = [];
  const want = new Set([root]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, pp] of parent) {
      if (want.has(pp) && !want.has(pid)) {
        want.add(pid);
        out.push(pid);
        grew = true;
      }
    }
  }
  return out;
}

const TICK = 100; // USER_HZ: /proc/PID/stat's utime/stime unit on Linux

interface ProcPeak { name: string; cpuS: number; rssKiB: number; anonKiB: number; fileKiB: number; threads?: Map<string, number> }

/** Sum of VmRSS over the tree under `root`; also keeps, per PID, the last CPU and the peak RSS split. */
function treeRssKiB(root: number, peaks?: Map<number, ProcPeak>): number {
  let sum = 0;
  for (const pid of descendants(root)) {
    try {
      const st = readFileSync(`/proc/${pid}/status`, 'utf8');
      const kib = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(st)?.[1] ?? 0);
      const rss = kib('VmRSS');
      sum += rss;
      if (!peaks) continue;
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const name = /^Name:\s+(\S+)/m.exec(st)?.[1] ?? String(pid);
      const p = peaks.get(pid) ?? { name, cpuS: 0, rssKiB: 0, anonKiB: 0, fileKiB: 0 };
      p.name = name;
      p.cpuS = (Number(f[11]) + Number(f[12])) / TICK;
      // per thread (by its name: the main thread, the read-back worker, libuv's pool, V8's helpers)
      const threads = new Map<string, number>();
      for (const tid of readdirSync(`/proc/${pid}/task`)) {
        try {
          const ts = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
          const comm = ts.slice(ts.indexOf('(') + 1, ts.lastIndexOf(')'));
          const tf = ts.slice(ts.lastIndexOf(')') + 2).split(' ');
          threads.set(comm, (threads.get(comm) ?? 0) + (Number(tf[11]) + Number(tf[12])) / TICK);
        } catch {
          /* gone */
        }
      }
      // a thread that ended keeps its last figure
      for (const [k, v] of threads) if (v >= (p.threads?.get(k) ?? 0)) (p.threads ??= new Map()).set(k, v);
      if (rss > p.rssKiB) Object.assign(p, { rssKiB: rss, anonKiB: kib('RssAnon'), fileKiB: kib('RssFile') + kib('RssShmem') });
      peaks.set(pid, p);
    } catch {
      /* gone */
    }
  }
  return sum;
}

/** Per command name: the summed CPU and the largest process's peak RSS split. */
function byName(peaks: Map<number, ProcPeak>): NonNullable<Sample['procs']> {
  const out: NonNullable<Sample['procs']> = {};
  for (const p of peaks.values()) {
    const o = (out[p.name] ??= { cpuS: 0, rssMiB: 0, anonMiB: 0, fileMiB: 0 });
    o.cpuS += p.cpuS;
    if (p.rssKiB / 1024 > o.rssMiB) Object.assign(o, { rssMiB: p.rssKiB / 1024, anonMiB: p.anonKiB / 1024, fileMiB: p.fileKiB / 1024 });
  }
  return out;
}

/** Runs argv under /usr/bin/time, samples tree RSS every 50 ms, then `sync`; wall includes the sync. */
function measured(argv: string[], timeFile: string, env?: NodeJS.ProcessEnv): Promise<{ out: string; err: string; code: number; t0: number; sample: Sample }> {
  return new Promise((resolve, reject) => {
    const t0Ms = Date.now();
    const t0 = process.hrtime.bigint();
    const child = spawn('/usr/bin/time', ['-f', '%U %S', '-o', timeFile, ...argv], { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
    let out = '';
    let err = '';
    let peak = 0;
    const peaks = new Map<number, ProcPeak>();
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    // the peak before the streaming install began (start-up, TUF refresh, config) and from then on
    let peakPre = 0;
    let streaming = false;
    const timer = setInterval(() => {
      if (!child.pid) return;
      const kib = treeRssKiB(child.pid, peaks);
      peak = Math.max(peak, kib);
      streaming ||= err.includes('"install started"');
      if (!streaming) peakPre = Math.max(peakPre, kib);
    }, 50);
    child.on('error', reject);
    child.on('close', (code) => {
      clearInterval(timer);
      execFileSync('sync');
      const wallS = Number(process.hrtime.bigint() - t0) / 1e9;
      const [u, s] = readFileSync(timeFile, 'utf8').trim().split('\n').at(-1)!.split(' ').map(Number);
      const threads: Record<string, number> = {};
      for (const p of peaks.values()) for (const [k, v] of p.threads ?? []) threads[`${p.name}/${k}`] = (threads[`${p.name}/${k}`] ?? 0) + v;
      resolve({ out, err, code: code ?? -1, t0: t0Ms, sample: { wallS, cpuS: u! + s!, rssMiB: peak / 1024, rssPreMiB: peakPre / 1024, procs: byName(peaks), threads } });
    });
  });
}

/** SHA-256 of the first `bytes` bytes of `path`. */
async function sha256Prefix(path: string, bytes: number): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path, { start: 0, end: bytes - 1, highWaterMark: 1 << 20 })) h.update(c as Buffer);
  return h.digest('hex');
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

interface Inputs {
  repo: string;
  sha256: string;
  payload: string;
  imageBytes: number;
}

async function ensureInputs(dir: string, gib: number, tree: string): Promise<Inputs> {
  const image = join(dir, `rootfs-${gib}g.ext4`);
  const repo = join(dir, `repo-${gib}g`);
  const done = join(repo, 'bench.json');
  if (existsSync(done)) return JSON.parse(await readFile(done, 'utf8')) as Inputs;
  await rm(repo, { recursive: true, force: true });
  process.stderr.write(`making a ${gib} GiB ext4 image from ${tree}…\n`);
  await rm(image, { force: true });
  sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, '-E', 'root_owner=0:0', image, `${gib * 1024}M`]);
  process.stderr.write('slotflip repo init + release add (zstd, default chunk size)…\n');
  sh('node', [CLI, 'repo', 'init', repo]);
  const t0 = Date.now();
  const r = JSON.parse(sh('node', [CLI, 'release', 'add', repo, '--image', image, '--version', '1.0.0', '--security-version', '1', '--hardware', HARDWARE, '--channel', 'stable', '--json'])) as { path: string; length: number };
  process.stderr.write(`  release add ${((Date.now() - t0) / 1000).toFixed(1)} s, payload ${(r.length / 2 ** 20).toFixed(0)} MiB\n`);
  const sha256 = sh('sha256sum', [image]).split(' ')[0]!;
  const inputs: Inputs = { repo, sha256, payload: r.path.startsWith('/') ? r.path : join(process.cwd(), r.path), imageBytes: gib * GIB };
  await writeFile(done, JSON.stringify(inputs));
  await rm(image, { force: true });
  return inputs;
}

function parsePhases(stderr: string, t0: number): Record<string, number> {
  const ph: Record<string, number> = {};
  let first = 0;
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const j = JSON.parse(line) as { time?: number; msg?: string; effect?: string; ms?: number };
      if (!first && j.time) first = j.time;
      if (j.msg === 'effect done' && j.effect && typeof j.ms === 'number') ph[j.effect] = (ph[j.effect] ?? 0) + j.ms / 1000;
      if (j.msg === 'install verified' && typeof (j as { readBackTailMs?: number }).readBackTailMs === 'number') ph.rbTail = (j as { readBackTailMs: number }).readBackTailMs / 1000;
    } catch {
      /* not JSON */
    }
  }
  if (first) ph.start = (first - t0) / 1000;
  return ph;
}

interface ProfNode { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }
interface Prof { nodes: ProfNode[]; samples: number[]; timeDeltas: number[] }

function summarizeProfile(file: string, top = 12): string[] {
  const p = JSON.parse(readFileSync(file, 'utf8')) as Prof;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const n = byId.get(p.samples[i]!)!;
    const dt = p.timeDeltas[i] ?? 0;
    const url = n.callFrame.url.replace(/^file:\/\/.*?\/(dist|node_modules)\//, '$1/');
    const key = `${n.callFrame.functionName || '(anonymous)'} ${url ? `${url.split('/').slice(-2).join('/')}:${n.callFrame.lineNumber + 1}` : ''}`.trim();
    self.set(key, (self.get(key) ?? 0) + dt);
    total += dt;
  }
  const busy = total - (self.get('(idle)') ?? 0);
  const sorted = [...self.entries()].filter(([k]) => k !== '(idle)').sort((a, b) => b[1] - a[1]);
  const pct = (x: number): string => `${((100 * x) / Math.max(1, busy)).toFixed(1)} %`;
  const gc = self.get('(garbage collector)') ?? 0;
  const hash = sorted.filter(([k]) => /^(update|digest) .*crypto\/hash/.test(k) || /^(update|digest)$/.test(k)).reduce((a, [, v]) => a + v, 0);
  const lines = [`  busy ${(busy / 1e6).toFixed(2)} s of ${(total / 1e6).toFixed(2)} s sampled; GC ${pct(gc)}; Hash.update/digest (SHA-256, native) ${pct(hash)}`];
  for (const [k, v] of sorted.slice(0, top)) lines.push(`    ${pct(v).padStart(7)}  ${(v / 1e6).toFixed(2).padStart(6)} s  ${k}`);
  return lines;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      sizes: { type: 'string', default: '1,4' },
      rounds: { type: 'string', default: '3' },
      tree: { type: 'string', default: '/usr/share' },
      dir: { type: 'string', default: join(tmpdir(), 'slotflip-bench-cli') },
      port: { type: 'string', default: '18431' },
      profile: { type: 'boolean', default: false },
      module: { type: 'boolean', default: false },
      'cli-only': { type: 'boolean', default: false },
      'node-args': { type: 'string', default: '' },
      base: { type: 'string', default: '' },
      env: { type: 'string', default: '' },
      'base-env': { type: 'string', default: '' },
    },
  });
  const sizes = values.sizes.split(',').map(Number).filter((n) => n > 0);
  const rounds = Math.max(1, Number(values.rounds));
  const dir = values.dir;
  const port = Number(values.port);
  // experiments: node flags for the CLI runs (e.g. --trace-gc: full / young collections are counted)
  // and extra environment (K=V,K=V, e.g. MALLOC_ARENA_MAX=2); --cli-only skips the floor runs
  const nodeArgs = values['node-args'].split(' ').filter((a) => a !== '');
  const envOf = (spec: string): NodeJS.ProcessEnv => ({ ...process.env, ...Object.fromEntries(spec.split(',').filter((kv) => kv.includes('=')).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)])) });
  const cliEnv = envOf(values.env);
  // --base-env: extra environment for the base runs only (an A/B of one build under two settings, e.g.
  // a PATH without the zstd CLI: --base . --base-env PATH=DIR)
  const baseEnv = values['base-env'] === '' ? cliEnv : envOf(values['base-env']);
  const cliOnly = values['cli-only'];
  const baseCli = values.base === '' ? undefined : join(values.base, 'dist', 'daemon', 'cli.js');
  if (baseCli !== undefined && !existsSync(baseCli)) throw new Error(`--base: ${baseCli} missing`);
  const wrapperFlags = wrapperNodeFlags();
  const baseWrapperFlags = values.base === '' ? wrapperFlags : wrapperNodeFlags(values.base);
  await mkdir(dir, { recursive: true });
  if (!existsSync(CLI)) throw new Error(`${CLI} missing: run npm run build`);
  if (!existsSync('/usr/bin/time')) throw new Error('/usr/bin/time missing (Debian: apt-get install time)');

  const floor = join(dir, 'floor');
  try {
    sh('gcc', ['-O2', '-pthread', '-o', floor, join(ROOT, 'test', 'bench', 'floor.c'), '-lzstd', '-lcrypto']);
  } catch (e) {
    throw new Error(`cannot build the C floor (needs gcc libzstd-dev libssl-dev): ${String((e as { stderr?: string }).stderr ?? e)}`);
  }

  const loops: string[] = [];
  let server: ReturnType<typeof spawn> | undefined;
  const cleanup = (): void => {
    server?.kill('SIGTERM');
    for (const l of loops.splice(0)) {
      try {
        execFileSync('losetup', ['-d', l]);
      } catch {
        process.stderr.write(`could not detach ${l}; run: losetup -d ${l}\n`);
      }
    }
  };
  process.once('SIGINT', () => (cleanup(), process.exit(130)));
  process.once('SIGTERM', () => (cleanup(), process.exit(143)));

  const lines: string[] = [];
  const print = (s: string): void => {
    lines.push(s);
    process.stdout.write(`${s}\n`);
  };
  print(`# slotflip CLI install bench  node ${process.version}  ${new Date().toISOString()}  loadavg at start ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  print(`# CLI = node ${wrapperFlags.join(' ')} dist/daemon/cli.js install http://127.0.0.1:${port}/ --config F  (repo serve, loop-device slot B, zstd 4 MiB chunks)${values.base ? `; base = node ${baseWrapperFlags.join(' ')} BASE/dist/daemon/cli.js ...` : ''}; floor = test/bench/floor.c; floor+rb also reads the slot back`);
  print(`# Node compile cache (the launcher's NODE_COMPILE_CACHE, warmed first): CLI ${launcherCompileCache(ROOT) ? 'on' : 'off'}${baseCli ? `, base ${launcherCompileCache(join(values.base)) ? 'on' : 'off'}` : ''}`);
  print(`# wall incl. a final sync; CPU = user+sys of the process tree; RSS = peak tree VmRSS (50 ms samples); medians of ${rounds} alternating rounds (order CLI, floor, floor+rb rotated each round)`);
  try {
    for (const gib of sizes) {
      const inp = await ensureInputs(dir, gib, values.tree);
      const backing = join(dir, `slot-b-${gib}g.raw`);
      await writeFile(backing, '');
      await truncate(backing, inp.imageBytes);
      const dev = sh('losetup', ['-f', '--show', backing]).trim();
      loops.push(dev);
      // slot A: a sparse file (booted, never written)
      const slotA = join(dir, 'slot-a.img');
      await writeFile(slotA, '');
      await truncate(slotA, inp.imageBytes);

      // its access log (stdout) and banner (stderr) are read and dropped, so the pipes never fill
      server = spawn('node', [CLI, 'repo', 'serve', inp.repo, '--port', String(port), '--bind', '127.0.0.1'], { stdio: ['ignore', 'pipe', 'pipe'] });
      await new Promise<void>((resolve, reject) => {
        const seen = (d: Buffer): void => void (/serving|listening/.test(d.toString()) && resolve());
        server!.stdout!.on('data', seen);
        server!.stderr!.on('data', seen);
        server!.once('exit', (c) => reject(new Error(`repo serve exited ${c}`)));
      });

      const board = join(dir, 'board');
      const state = join(dir, 'state');
      const config = join(dir, 'device.json');
      // an emulated board (booted slot A) for its boot state and cmdline; its own slot files are unused
      await rm(board, { recursive: true, force: true });
      sh('node', [CLI, 'board', 'create', board, '--backend', 'emulated', '--slot-size', '64K']);
      await copyFile(join(board, 'boot-state.json'), join(board, 'boot-state.json.orig'));
      await copyFile(join(board, 'cmdline'), join(board, 'cmdline.orig'));
      await writeFile(
        config,
        JSON.stringify({
          deviceId: 'bench-0001',
          hardware: HARDWARE,
          stateDir: state,
          trust: { shippedRoot: join(inp.repo, 'repository', 'metadata', '1.root.json'), sources: [{ type: 'http', url: `http://127.0.0.1:${port}/` }] },
          board: {
            slots: { A: { path: slotA, size: inp.imageBytes }, B: { path: dev } },
            boot: { type: 'emulated', stateFile: join(board, 'boot-state.json'), cmdline: { path: join(board, 'cmdline') } },
          },
          reboot: { command: ['true'] },
          // the full streaming install is what this bench times (issue 24): `release add` publishes a
          // delta section by default, and a delta install onto slot B, which holds this very image from
          // the round before, would find every chunk in place and write nothing
          install: { delta: 'off' },
        }),
      );

      let slotChecked = false;
      const cacheOf = (cliPath: string): NodeJS.ProcessEnv => {
        const root = join(dirname(cliPath), '..', '..');
        return launcherCompileCache(root) ? { NODE_COMPILE_CACHE: join(dir, 'compile-cache', cliPath === CLI ? 'cli' : 'base') } : {};
      };
      for (const p of [CLI, ...(baseCli ? [baseCli] : [])]) {
        const env = cacheOf(p);
        if (env.NODE_COMPILE_CACHE) sh('env', [`NODE_COMPILE_CACHE=${env.NODE_COMPILE_CACHE}`, 'node', ...(p === CLI ? wrapperFlags : baseWrapperFlags), p, 'install', '--help']);
      }
      // every run starts from the same page cache for the slot: the floor's buffered writes found
      // whatever the run before left of the device's cache (its wall varied 3.5-5.2 s, its CPU 3.2-6.1 s,
      // and came out above floor+rb's); BLKFLSBUF writes back and drops it, outside the timed run
      const flushSlotCache = (): void => void execFileSync('blockdev', ['--flushbufs', dev]);
      const runCli = async (extraNode: string[] = [], cliPath = CLI, env = cliEnv): Promise<Sample> => {
        flushSlotCache();
        await rm(state, { recursive: true, force: true });
        await copyFile(join(board, 'boot-state.json.orig'), join(board, 'boot-state.json'));
        await copyFile(join(board, 'cmdline.orig'), join(board, 'cmdline'));
        const r = await measured(['node', ...(cliPath === CLI ? wrapperFlags : baseWrapperFlags), ...nodeArgs, ...extraNode, cliPath, 'install', `http://127.0.0.1:${port}/`, '--config', config, '--json'], join(dir, 'time.txt'), { ...env, ...cacheOf(cliPath) });
        if (r.code !== 0) throw new Error(`slotflip install exited ${r.code}: ${r.out.slice(0, 400)}\n${r.err.slice(-2000)}`);
        if (/"method":"delta"/.test(r.err)) throw new Error('slotflip install went by delta: this bench times the full streaming install (install.delta is off in its config)');
        const verified = /"readBackSha256":"([0-9a-f]{64})"/.exec(r.err);
        if (verified?.[1] !== inp.sha256) throw new Error(`install read back ${verified?.[1]}, image is ${inp.sha256}`);
        // once per size, outside the timed run: the slot itself holds the image (not the CLI's word)
        if (!slotChecked) {
          const onSlot = await sha256Prefix(dev, inp.imageBytes);
          if (onSlot !== inp.sha256) throw new Error(`slot ${dev} holds ${onSlot} after the install, image is ${inp.sha256}`);
          slotChecked = true;
        }
        const gc = { full: (r.out.match(/Mark-Compact|Mark-sweep/g) ?? []).length, young: (r.out.match(/Scavenge|Minor Mark/g) ?? []).length };
        if (nodeArgs.includes('--trace-gc')) await writeFile(join(dir, 'trace-gc.txt'), r.out);
        if (nodeArgs.includes('--trace-gc')) process.stderr.write(`CLI run: wall ${r.sample.wallS.toFixed(2)} s, CPU ${r.sample.cpuS.toFixed(2)} s, RSS ${r.sample.rssMiB.toFixed(0)} MiB, GC full ${gc.full} young ${gc.young}\n`);
        return { ...r.sample, phases: parsePhases(r.err, r.t0), gc };
      };
      const runFloor = async (rb: boolean): Promise<Sample> => {
        flushSlotCache();
        const r = await measured([floor, inp.payload, dev, ...(rb ? ['rb'] : [])], join(dir, 'time.txt'));
        const j = JSON.parse(r.out) as { sha256: string; readBackSha256: string };
        if (r.code !== 0 || j.sha256 !== inp.sha256 || (rb && j.readBackSha256 !== inp.sha256)) throw new Error(`floor failed: ${r.out} ${r.err}`);
        return r.sample;
      };

      if (!cliOnly) await runFloor(false); // warm-up (not measured): payload into the page cache
      const cli: Sample[] = [];
      const fl: Sample[] = [];
      const flrb: Sample[] = [];
      const base: Sample[] = [];
      // the order rotates each round (whatever runs right after another writer pays for its leftovers)
      const order: Array<() => Promise<void>> = cliOnly ? [async () => void cli.push(await runCli())] : [async () => void cli.push(await runCli()), async () => void fl.push(await runFloor(false)), async () => void flrb.push(await runFloor(true))];
      if (baseCli !== undefined) order.splice(1, 0, async () => void base.push(await runCli([], baseCli, baseEnv)));
      for (let i = 0; i < rounds; i++) {
        for (let k = 0; k < order.length; k++) await order[(i + k) % order.length]!();
      }
      const m = (xs: Sample[], k: 'wallS' | 'cpuS' | 'rssMiB'): number => median(xs.map((x) => x[k]));
      const mb = inp.imageBytes / 1e6;
      print('');
      print(`## ${gib} GiB ext4 image (${values.tree}), payload ${(Number(sh('stat', ['-c', '%s', inp.payload])) / 2 ** 20).toFixed(0)} MiB zstd, slot ${dev}`);
      print('what       | wall s | MB/s  | CPU s | peak RSS MiB | wall/floor | wall/floor+rb | CPU/floor');
      const row = (name: string, xs: Sample[]): void =>
        print(`${name.padEnd(10)} | ${m(xs, 'wallS').toFixed(2).padStart(6)} | ${(mb / m(xs, 'wallS')).toFixed(0).padStart(5)} | ${m(xs, 'cpuS').toFixed(2).padStart(5)} | ${m(xs, 'rssMiB').toFixed(0).padStart(12)} | ${(m(xs, 'wallS') / m(fl, 'wallS')).toFixed(2).padStart(10)} | ${(m(xs, 'wallS') / m(flrb, 'wallS')).toFixed(2).padStart(13)} | ${(m(xs, 'cpuS') / m(fl, 'cpuS')).toFixed(2).padStart(9)}`);
      row('CLI', cli);
      if (base.length > 0) row('CLI base', base);
      if (fl.length > 0) row('floor', fl);
      if (flrb.length > 0) row('floor+rb', flrb);
      if (base.length > 0) {
        const pair = (k: 'wallS' | 'cpuS' | 'rssMiB'): string => median(cli.map((x, i) => x[k] / base[i]![k])).toFixed(2);
        print(`CLI / CLI base (median of the ${rounds} pairwise ratios; base = ${values.base}): wall ${pair('wallS')}, CPU ${pair('cpuS')}, peak RSS ${pair('rssMiB')}`);
      }
      const keys = ['start', 'check', 'markBad', 'writeSlot', 'rbTail', 'verifySlot', 'armTrial', 'reboot'];
      print(`CLI phases (median s): ${keys.map((k) => `${k} ${median(cli.map((x) => x.phases?.[k] ?? 0)).toFixed(2)}`).join(', ')}`);
      if (base.length > 0) print(`CLI base phases (median s): ${keys.map((k) => `${k} ${median(base.map((x) => x.phases?.[k] ?? 0)).toFixed(2)}`).join(', ')}`);
      print('  (check = TUF refresh; writeSlot = download + compressed-byte check + decompress + chunk SHA-256 + write + fsync, with the O_DIRECT read-back (the whole-image SHA-256; a per-chunk naming pass only on a mismatch) pipelined behind the fsync frontier; rbTail = the part of writeSlot after the last chunk write (final fsync + the read-back not yet done); verifySlot = 0 when it takes that read-back (same process), else a whole-slot read-back; armTrial = arm; start = spawn → first log line)');
      const names = [...new Set(cli.flatMap((x) => Object.keys(x.procs ?? {})))].sort();
      const pm = (n: string, k: 'cpuS' | 'rssMiB' | 'anonMiB' | 'fileMiB'): string => median(cli.map((x) => x.procs?.[n]?.[k] ?? 0)).toFixed(k === 'cpuS' ? 2 : 0);
      print(`CLI tree by process (median; CPU as last sampled, peak RSS of its largest process = anon + file/shmem): ${names.map((n) => `${n} CPU ${pm(n, 'cpuS')} s, RSS ${pm(n, 'rssMiB')} MiB (anon ${pm(n, 'anonMiB')}, file ${pm(n, 'fileMiB')})`).join('; ')}`);
      if (base.length > 0) {
        const bm = (n: string, k: 'cpuS' | 'rssMiB' | 'anonMiB' | 'fileMiB'): string => median(base.map((x) => x.procs?.[n]?.[k] ?? 0)).toFixed(k === 'cpuS' ? 2 : 0);
        print(`CLI base tree by process: ${names.map((n) => `${n} CPU ${bm(n, 'cpuS')} s, RSS ${bm(n, 'rssMiB')} MiB (anon ${bm(n, 'anonMiB')}, file ${bm(n, 'fileMiB')})`).join('; ')}`);
      }
      const tnames = (xs: Sample[]): string[] => [...new Set(xs.flatMap((x) => Object.keys(x.threads ?? {})))].filter((n) => median(xs.map((x) => x.threads?.[n] ?? 0)) >= 0.05).sort();
      const tline = (xs: Sample[]): string => tnames(xs).map((n) => `${n} ${median(xs.map((x) => x.threads?.[n] ?? 0)).toFixed(2)}`).join(', ');
      print(`CLI threads (median CPU s, >= 0.05): ${tline(cli)}`);
      print(`CLI peak tree RSS before the install streamed (start-up, TUF refresh): ${median(cli.map((x) => x.rssPreMiB ?? 0)).toFixed(0)} MiB${base.length > 0 ? `; base ${median(base.map((x) => x.rssPreMiB ?? 0)).toFixed(0)} MiB` : ''} (the table's peak is over the whole run)`);
      if (base.length > 0) print(`CLI base threads: ${tline(base)}`);
      print(`# runs wall s: CLI ${cli.map((x) => x.wallS.toFixed(2)).join(' ')} | base ${base.map((x) => x.wallS.toFixed(2)).join(' ')} | floor ${fl.map((x) => x.wallS.toFixed(2)).join(' ')} | floor+rb ${flrb.map((x) => x.wallS.toFixed(2)).join(' ')}`);
      if (nodeArgs.includes('--trace-gc')) print(`# CLI garbage collections (--trace-gc): full ${cli.map((x) => x.gc?.full ?? 0).join(' ')} | young ${cli.map((x) => x.gc?.young ?? 0).join(' ')}`);
      if (nodeArgs.length > 0 || values.env !== '' || values['base-env'] !== '') print(`# CLI node args: ${nodeArgs.join(' ') || '-'}; extra env: ${values.env || '-'}; base extra env: ${values['base-env'] || '-'}`);
      print(`# runs CPU s:  CLI ${cli.map((x) => x.cpuS.toFixed(2)).join(' ')} | base ${base.map((x) => x.cpuS.toFixed(2)).join(' ')} | floor ${fl.map((x) => x.cpuS.toFixed(2)).join(' ')} | floor+rb ${flrb.map((x) => x.cpuS.toFixed(2)).join(' ')}`);

      if (values.profile && gib === sizes[0]) {
        const pdir = join(dir, 'cpuprof');
        await rm(pdir, { recursive: true, force: true });
        const s = await runCli(['--cpu-prof', '--cpu-prof-dir', pdir]);
        print(`## one CLI run under node --cpu-prof (wall ${s.wallS.toFixed(2)} s, CPU ${s.cpuS.toFixed(2)} s; profiles in ${pdir})`);
        for (const f of readdirSync(pdir).sort()) {
          print(`  ${f}`);
          for (const l of summarizeProfile(join(pdir, f))) print(l);
        }
      }
      server.kill('SIGTERM');
      server = undefined;
      cleanup();
      await rm(backing, { force: true });
      await rm(slotA, { force: true });
      await copyFile(config, join(dir, `device-${gib}g.json`));
    }
  } finally {
    cleanup();
  }
  print(`# loadavg at end ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  await writeFile(join(dir, 'results.txt'), `${lines.join('\n')}\n`);

  if (values.module) {
    print('');
    print('## second table: MODULE-LEVEL figures (older bench: the installer module in a child process, no CLI, no HTTP, no TUF; C reference with zstd CLI)');
    const out = sh('node', [join(HERE, 'install-bench.js'), '--sizes', String(sizes[0]), '--rounds', String(rounds), '--dir', join(dir, 'module')]);
    for (const l of out.trim().split('\n')) print(l);
    await writeFile(join(dir, 'results.txt'), `${lines.join('\n')}\n`);
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${String((e as Error).stack ?? e)}\n`);
  process.exitCode = 1;
});

/**
 * `npm run bench:memory`: the daemon's memory, measured from outside (issue 16). The BUILT
 * `slotflip daemon --config F` runs as a real process against a real Mosquitto (test/harness/mosquitto.ts)
 * with its payloads served over HTTP by `slotflip repo serve`, on an emulated board with file slots
 * (`slotflip board create`), set up through the CLI as a manufacturer and a device owner would
 * (test/e2e/harness.ts). RSS is the sum of VmRSS over the daemon's whole process tree (the zstd child
 * and any health-check or tool child included), sampled from /proc every --sample-ms.
 *
 * Prints (goals from issue 16 in brackets):
 *   idle       RSS 60 s after start, up to date, broker connected, first check done      [<= 48 MiB]
 *   install    peak RSS while installing an N GiB release (start → `install verified`)    [<= 64 MiB]
 *   cycles     growth over --cycles check cycles in ONE process                          [< 5 MiB]
 *              (a cycle: a `check` command on the device's MQTT command topic → TUF refresh
 *              from the retained metadata → selection (nothing new) → state + inventory
 *              published; growth = settled RSS after the last cycle − settled RSS before the first)
 *   checkcpu   the daemon's CPU per check cycle (a `check` command → `cycle done`): --check-cycles
 *              cycles each after an idle pause of --check-gap-ms (the idle heap reclaim has run and
 *              flushed the compiled code, so the cycle compiles it again) against as many back to
 *              back (no reclaim between them: the code is still compiled), in the same process;
 *              CPU from /proc/PID/stat (10 ms ticks, summed over the cycles)
 *   An update cycle (release N+1 → install → trial → commit) ends with a reboot, i.e. a new daemon
 *   process, by design: growth "in one process" is therefore measured over check cycles, which is
 *   what a daemon does between updates for months; the installs below each run in a fresh process.
 *
 *   node dist/test/bench/memory-bench.js [--idle-seconds 60] [--sizes 1,4] [--cycles 100]
 *       [--only idle,install,cycles,checkcpu] [--sample-ms 100] [--dir DIR]
 *       [--check-cycles 20] [--check-gap-ms 4000]
 *       [--metadata mqtt|http] [--node PATH] [--node-options=OPTS] [--daemon-args=FLAGS] [--env K=V]...
 *       [--show-stderr] [--daemon-log] [--json]
 *       [--where [--top N]] [--heap-snapshot DIR]
 *
 * --sizes is in GiB (fractions allowed: 0.25); the image is semi-compressible (test/bench/
 * install-fixtures.ts), written and added once per size and cached in --dir (default a temp dir,
 * removed at the end unless --dir is given). Needs ~2.5x the largest size free in --dir.
 * --metadata http: the idle/cycles device reads its metadata only from the HTTP repository (every
 * check an HTTP refresh) instead of the broker's retained messages (mqtt, the default).
 * --node runs the daemon (and the CLI) with another Node binary (default: this process's).
 * The daemon gets the NODE_OPTIONS of systemd/slotflip.service and the Node flags /usr/bin/slotflip
 * starts `slotflip daemon` with (systemd/packaging/slotflip.sh), i.e. what a device runs, unless
 * --node-options=OPTS or --daemon-args=FLAGS replace them (`=` with nothing for none); --env K=V sets more variables for
 * the daemon only; --show-stderr prints the daemon's stderr (e.g. of an --import'ed probe).
 * After an install the bench prints the daemon's delta-route lines (a release with a delta section is
 * tried by delta first: the lookup, or why it went full); --daemon-log prints every log line of it.
 * --where prints, after the table, where the idle daemon's RSS is (test/bench/resident.ts: the node
 * binary's resident pages by content, anonymous memory; --top N names each part's biggest symbols);
 * --heap-snapshot DIR writes the idle daemon's V8 heap snapshot there (after the idle sample; open it
 * in Chrome DevTools' Memory tab, or `node dist/test/bench/heap-summary.js FILE`).
 * Exit code 0 whatever the figures (this is a bench, not a test); 1 when a run could not complete.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { connect, type MqttClient } from 'mqtt';
import { startMosquitto, type Mosquitto } from '../harness/mosquitto.js';
import { CLI, HARDWARE, ROOT } from '../e2e/harness.js';
import { writeImage } from './install-fixtures.js';
import { deviceTopics } from '../../daemon/topics.js';
import { formatReport, residentReport } from './resident.js';
import { launcherFlags } from './launcher-flags.js';

const MIB = 1 << 20;
const GIB = 1 << 30;

const { values } = parseArgs({
  options: {
    'idle-seconds': { type: 'string', default: '60' },
    sizes: { type: 'string', default: '1,4' },
    cycles: { type: 'string', default: '100' },
    'check-cycles': { type: 'string', default: '20' },
    'check-gap-ms': { type: 'string', default: '4000' },
    only: { type: 'string', default: 'idle,install,cycles' },
    'sample-ms': { type: 'string', default: '100' },
    dir: { type: 'string' },
    node: { type: 'string' },
    'node-options': { type: 'string' },
    'daemon-args': { type: 'string' },
    env: { type: 'string', multiple: true },
    'show-stderr': { type: 'boolean', default: false },
    'daemon-log': { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    metadata: { type: 'string', default: 'mqtt' },
    where: { type: 'boolean', default: false },
    top: { type: 'string', default: '0' },
    'heap-snapshot': { type: 'string' },
  },
});
const idleSeconds = Number(values['idle-seconds']);
const sizes = values.sizes.split(',').filter(Boolean).map(Number);
const cycles = Number(values.cycles);
const checkCycles = Number(values['check-cycles']);
const checkGapMs = Number(values['check-gap-ms']);
const only = new Set(values.only.split(','));
const sampleMs = Number(values['sample-ms']);
const NODE = values.node ?? process.execPath;
if (values.metadata !== 'mqtt' && values.metadata !== 'http') throw new Error(`--metadata mqtt|http, not ${values.metadata}`);
/** where the idle/cycles device reads its TUF metadata: the broker's retained messages (default) or
 * only the HTTP repository (a device without MQTT metadata; every check is an HTTP refresh). */
const METADATA = values.metadata;

// ---------------------------------------------------------------------------------------------
// /proc sampling

/** pid → parent pid for every process now. */
function parents(): Map<number, number> {
  const m = new Map<number, number>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = readFileSync(`/proc/${d}/stat`, 'utf8');
      m.set(Number(d), Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      /* gone */
    }
  }
  return m;
}

/** `root` and all its descendants. */
function tree(root: number): number[] {
  const pp = parents();
  const want = new Set([root]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const [pid, parent] of pp) if (want.has(parent) && !want.has(pid)) { want.add(pid); grew = true; }
  }
  return [...want];
}

function vmRssKiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Sum of VmRSS (KiB) over the tree under `root`, and how many processes it had. */
function treeRss(root: number): { kib: number; procs: number } {
  const pids = tree(root);
  return { kib: pids.reduce((n, p) => n + vmRssKiB(p), 0), procs: pids.length };
}

const mib = (kib: number): number => Math.round(kib / 102.4) / 10;

/** CPU seconds `pid` used so far, its exited children (zstd) included: utime+stime+cutime+cstime
 * from /proc/PID/stat, in clock ticks of 1/100 s (USER_HZ on Linux). Under load the wall time of an
 * install says little; its CPU time is what a flag like --no-opt would change. */
function cpuSeconds(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // fields 14-17 of stat(5); f[0] is field 3
    return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / 100;
  } catch {
    return NaN;
  }
}

// ---------------------------------------------------------------------------------------------
// processes

function run(args: string[], opts: { timeoutMs?: number } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(NODE, [CLI, ...args], { timeout: opts.timeoutMs ?? 600_000, maxBuffer: 16 * MIB }, (err, stdout, stderr) => {
      if (err) reject(new Error(`slotflip ${args.join(' ')}: ${err.message}\n${stderr}`));
      else resolve(String(stdout));
    });
  });
}

type Line = Record<string, unknown>;

interface Proc {
  child: ChildProcess;
  lines: Line[];
  waitFor(pred: (l: Line) => boolean, timeoutMs: number, what: string, from?: number): Promise<Line>;
  stop(): Promise<void>;
  stderr(): string;
}

/** Spawns `slotflip ARGS` reading pino JSON lines from stdout. Only this child is ever signalled. */
function startCli(args: string[], env: NodeJS.ProcessEnv = {}, nodeArgs: string[] = []): Proc {
  const child = spawn(NODE, [...nodeArgs, CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  const lines: Line[] = [];
  const waiters = new Set<() => void>();
  let buf = '';
  let err = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (c: string) => {
    buf += c;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const text = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!text.trim()) continue;
      try {
        lines.push(JSON.parse(text) as Line);
      } catch {
        lines.push({ msg: text, unparsed: true });
      }
      for (const w of [...waiters]) w();
    }
  });
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (c: string) => { if (err.length < 65536) err += c; });
  const exited = new Promise<void>((resolve) => child.once('exit', () => { for (const w of [...waiters]) w(); resolve(); }));
  return {
    child,
    lines,
    stderr: () => err,
    waitFor(pred, timeoutMs, what, from = 0) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const hit = lines.slice(from).find(pred);
          if (hit) { done(); resolve(hit); return; }
          if (child.exitCode !== null || child.signalCode !== null) { done(); reject(new Error(`${args[0]} exited before ${what}: ${err.slice(-2000)} ${JSON.stringify(lines.slice(-5))}`)); }
        };
        const timer = setTimeout(() => { done(); reject(new Error(`${args[0]}: no ${what} within ${timeoutMs} ms: ${err.slice(-2000)} ${JSON.stringify(lines.slice(-5))}`)); }, timeoutMs);
        const done = (): void => { clearTimeout(timer); waiters.delete(check); };
        waiters.add(check);
        check();
      });
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}

/** Samples the tree RSS of `pid` every `sampleMs` until stopped. */
function sampler(pid: number): { samples: Array<{ t: number; kib: number; procs: number }>; stop(): void; now(): number } {
  const t0 = Date.now();
  const samples: Array<{ t: number; kib: number; procs: number }> = [];
  const take = (): void => {
    const r = treeRss(pid);
    if (r.kib > 0) samples.push({ t: Date.now() - t0, ...r });
  };
  take();
  const h = setInterval(take, sampleMs);
  return { samples, stop: () => clearInterval(h), now: () => { take(); return samples.at(-1)?.kib ?? 0; } };
}

/** The NODE_OPTIONS the systemd unit starts the daemon with (its `Environment=NODE_OPTIONS=` line,
 * quoted as systemd needs it when the value has spaces: `Environment="NODE_OPTIONS=a b"`). */
function unitNodeOptions(): string {
  const unit = readFileSync(join(ROOT, 'systemd', 'slotflip.service'), 'utf8');
  const m = /^Environment=(?:"NODE_OPTIONS=([^"]*)"|NODE_OPTIONS=(\S*))\s*$/m.exec(unit);
  return (m?.[1] ?? m?.[2] ?? '').trim();
}

/** The Node flags /usr/bin/slotflip (systemd/packaging/slotflip.sh) starts `slotflip daemon` with
 * (the `case` line naming daemon); --daemon-args=FLAGS replaces them. */
function launcherDaemonArgs(): string[] {
  const launcher = join(ROOT, 'systemd', 'packaging', 'slotflip.sh');
  const flags = launcherFlags(launcher, 'daemon');
  if (!flags) throw new Error(`${launcher}: no \`daemon) exec "$node" ...\` line to take the daemon's Node flags from`);
  return flags;
}
const DAEMON_ARGS = values['daemon-args'] !== undefined ? values['daemon-args'].split(' ').filter(Boolean) : launcherDaemonArgs();

/** The daemon runs with the unit's NODE_OPTIONS (as on a device) unless --node-options says otherwise
 * (`--node-options=` for none); --env K=V adds variables. Both reach the daemon only.
 * --heap-snapshot adds `--heapsnapshot-signal=SIGUSR2` (Node writes a snapshot on that signal; it
 * costs nothing until then). */
const NODE_OPTIONS = [values['node-options'] ?? unitNodeOptions(), ...(values['heap-snapshot'] ? [`--heapsnapshot-signal=SIGUSR2 --diagnostic-dir=${values['heap-snapshot']}`] : [])].filter(Boolean).join(' ');

/** --where: where the idle daemon's RSS is (test/bench/resident.ts), printed after the table. */
let whereReport = '';

/** Signals the daemon to write a heap snapshot into `dir`; resolves with its path once Node has
 * finished writing it (its size stops changing), after the idle RSS was sampled. */
async function heapSnapshot(pid: number, dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  const before = new Set(readdirSync(dir));
  process.kill(pid, 'SIGUSR2');
  for (let last = -1, end = Date.now() + 120_000; Date.now() < end; await sleep(500)) {
    const f = readdirSync(dir).find((n) => !before.has(n) && n.endsWith('.heapsnapshot'));
    if (!f) continue;
    const size = (await stat(join(dir, f))).size;
    if (size > 0 && size === last) return join(dir, f);
    last = size;
  }
  throw new Error(`no heap snapshot in ${dir} within 120 s`);
}
function daemonEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { NODE_OPTIONS };
  for (const kv of values.env ?? []) env[kv.slice(0, kv.indexOf('='))] = kv.slice(kv.indexOf('=') + 1);
  return env;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** RSS settled: the minimum over `ms` of samples (the daemon is idle; GC and timers jitter it). */
async function settled(pid: number, ms = 3000): Promise<number> {
  let min = Infinity;
  for (const end = Date.now() + ms; Date.now() < end; await sleep(100)) min = Math.min(min, treeRss(pid).kib);
  return min;
}

// ---------------------------------------------------------------------------------------------
// set-up through the CLI

interface Env {
  dir: string;
  repo: string;
  serve: Proc;
  url: string;
  configPath: string;
  deviceId: string;
}

async function setupEnv(dir: string, broker: Mosquitto, o: { deviceId: string; slotSize: number; httpBehindBroker?: boolean; httpOnly?: boolean }): Promise<Env> {
  await mkdir(dir, { recursive: true });
  const repo = join(dir, 'repo');
  if (!existsSync(join(repo, 'repository'))) await run(['repo', 'init', repo, '--json']);
  const serve = startCli(['repo', 'serve', repo, '--port', '0']);
  // --oversize skip (here and in publish()): a targets.json with an inline chunk list of a multi-GiB
  // image exceeds one MQTT message; the install devices have the repository behind the broker
  // (trust.sources [mqtt, http]) and read it from there
  const listening = await serve.waitFor((l) => typeof l.url === 'string', 20_000, 'listening');
  const url = String(listening.url).replace(/\/?$/, '/');
  await run(['repo', 'publish', repo, '--broker', broker.url, '--oversize', 'skip']);
  const boardDir = join(dir, 'board');
  await rm(boardDir, { recursive: true, force: true });
  const board = JSON.parse(await run(['board', 'create', boardDir, '--backend', 'emulated', '--slot-size', String(o.slotSize), '--json'])) as { slots: { A: string; B: string }; bootConfig: Record<string, unknown> };
  const stateDir = join(dir, 'state');
  await rm(stateDir, { recursive: true, force: true });
  const configPath = join(dir, 'config.json');
  await writeFile(configPath, JSON.stringify({
    deviceId: o.deviceId,
    hardware: HARDWARE,
    stateDir,
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: o.httpOnly ? [{ type: 'http', url }] : o.httpBehindBroker ? [{ type: 'mqtt' }, { type: 'http', url }] : [{ type: 'mqtt' }], payloadBaseUrls: [`${url}targets/`] },
    board: { slots: { A: { path: board.slots.A, size: o.slotSize }, B: { path: board.slots.B, size: o.slotSize } }, boot: board.bootConfig, tries: 2 },
    broker: { urls: [broker.url], reconnect: { minMs: 100, maxMs: 1000 }, connectTimeoutMs: 2000 },
    health: { deadlineSeconds: 60, checks: [{ type: 'command', name: 'application', argv: ['/bin/true'], timeoutSeconds: 30 }] },
    reboot: { command: ['/bin/true'], graceSeconds: 1 },
    // a daemon on a device logs at info (debug would be the bench measuring its log volume)
    log: { level: 'info' },
  }, null, 2));
  return { dir, repo, serve, url, configPath, deviceId: o.deviceId };
}

async function addRelease(env: Env, image: string, version: string): Promise<{ length: number }> {
  return JSON.parse(await run(['release', 'add', env.repo, '--image', image, '--version', version, '--security-version', '1', '--hardware', HARDWARE, '--channel', 'stable', '--compression', 'zstd', '--json'], { timeoutMs: 3_600_000 })) as { length: number };
}

async function publish(env: Env, broker: Mosquitto): Promise<void> {
  await run(['repo', 'publish', env.repo, '--broker', broker.url, '--oversize', 'skip']);
}

// ---------------------------------------------------------------------------------------------
// the runs

interface Results {
  node: string;
  nodeOptions: string;
  daemonArgs: string[];
  idle?: { at60sMiB: number; at5sMiB: number; maxMiB: number; seconds: number; procs: number };
  install: Array<{ gib: number; peakMiB: number; peakProcs: number; seconds: number; cpuSeconds: number; payloadMiB: number }>;
  installFailures: Array<{ gib: number; error: string }>;
  cycles?: { n: number; beforeMiB: number; afterMiB: number; growthMiB: number; trace: number[]; seconds: number };
  /** CPU ms per check cycle: after an idle pause (heap reclaimed, code flushed) vs back to back */
  checkCpu?: { n: number; gapMs: number; afterPauseMs: number; backToBackMs: number };
}

async function idleAndCycles(root: string, broker: Mosquitto, res: Results): Promise<void> {
  const env = await setupEnv(join(root, 'idle'), broker, { deviceId: 'bench-idle', slotSize: 8 * MIB, httpOnly: METADATA === 'http' });
  const d = startCli(['daemon', '--config', env.configPath], daemonEnv(), DAEMON_ARGS);
  const s = sampler(d.child.pid!);
  try {
    await d.waitFor((l) => l.msg === 'cycle done', 60_000, 'first cycle done');
    if (only.has('idle')) {
      const t0 = Date.now();
      await sleep(Math.max(0, idleSeconds * 1000 - (s.samples.at(-1)?.t ?? 0)));
      const now = s.now();
      const at5 = s.samples.find((x) => x.t >= 5000)?.kib ?? now;
      res.idle = { at60sMiB: mib(now), at5sMiB: mib(at5), maxMiB: mib(Math.max(...s.samples.map((x) => x.kib))), seconds: Math.round((Date.now() - t0) / 1000), procs: treeRss(d.child.pid!).procs };
      say(`idle: ${mib(now)} MiB after ${idleSeconds} s (5 s: ${mib(at5)} MiB, max ${res.idle.maxMiB} MiB)`);
      if (values.where) whereReport = formatReport(await residentReport(d.child.pid!, `idle daemon, ${idleSeconds} s`, { top: Number(values.top) }));
      if (values['heap-snapshot']) say(`heap snapshot of the idle daemon: ${await heapSnapshot(d.child.pid!, values['heap-snapshot'])}`);
    }
    const commandCycles = (only.has('cycles') && cycles > 0) || (only.has('checkcpu') && checkCycles > 0);
    if (commandCycles) {
      const client = await mqttClient(broker.url);
      try {
        const topic = deviceTopics(env.deviceId).cmdCheck;
        const one = async (): Promise<void> => {
          const from = d.lines.length;
          await client.publishAsync(topic, '{}', { qos: 1 });
          await d.waitFor((l) => l.msg === 'cycle done' && (l.reason === 'command' || l.reason === 'queued'), 60_000, 'command cycle done', from);
        };
        // two warm-up cycles: the first command cycle loads what only a cycle loads
        await one();
        await one();
        if (only.has('checkcpu') && checkCycles > 0) {
          res.checkCpu = await checkCpu(d.child.pid!, one);
          say(`checkcpu: ${res.checkCpu.afterPauseMs} ms CPU per check cycle after ${checkGapMs} ms idle (reclaimed, code flushed), ${res.checkCpu.backToBackMs} ms back to back (${checkCycles} each)`);
        }
        if (only.has('cycles') && cycles > 0) await growth(d.child.pid!, s, one, res);
      } finally {
        client.end(true);
      }
    }
  } finally {
    s.stop();
    await d.stop();
    if (values['show-stderr']) process.stderr.write(d.stderr());
    await env.serve.stop();
  }
}

/** CPU ms per check cycle: `checkCycles` after an idle pause each, then as many back to back. */
async function checkCpu(pid: number, one: () => Promise<void>): Promise<NonNullable<Results['checkCpu']>> {
  const measure = async (gapMs: number): Promise<number> => {
    let sum = 0;
    for (let i = 0; i < checkCycles; i++) {
      if (gapMs > 0) await sleep(gapMs);
      const c0 = cpuSeconds(pid);
      await one();
      sum += cpuSeconds(pid) - c0;
    }
    return Math.round((sum * 1000) / checkCycles);
  };
  const afterPauseMs = await measure(checkGapMs);
  const backToBackMs = await measure(0);
  return { n: checkCycles, gapMs: checkGapMs, afterPauseMs, backToBackMs };
}

/** Growth over `cycles` check cycles in one process: settled RSS before and after. */
async function growth(pid: number, s: ReturnType<typeof sampler>, one: () => Promise<void>, res: Results): Promise<void> {
  const t0 = Date.now();
  const before = await settled(pid);
  const trace: number[] = [];
  for (let i = 1; i <= cycles; i++) {
    await one();
    if (i % Math.max(1, Math.floor(cycles / 10)) === 0) trace.push(mib(s.now()));
  }
  const after = await settled(pid);
  res.cycles = { n: cycles, beforeMiB: mib(before), afterMiB: mib(after), growthMiB: mib(after - before), trace, seconds: Math.round((Date.now() - t0) / 1000) };
  say(`cycles: ${cycles} check cycles, ${mib(before)} → ${mib(after)} MiB (${res.cycles.growthMiB >= 0 ? '+' : ''}${res.cycles.growthMiB} MiB); trace ${trace.join(' ')}`);
}

async function mqttClient(url: string): Promise<MqttClient> {
  const c = connect(url, { clientId: `bench-${process.pid}`, reconnectPeriod: 500 });
  await new Promise<void>((resolve, reject) => { c.once('connect', () => resolve()); c.once('error', reject); });
  return c;
}

async function install(root: string, cache: string, broker: Mosquitto, gib: number, res: Results): Promise<void> {
  const size = Math.round(gib * GIB);
  const image = join(cache, `image-${gib}g.img`);
  if (!existsSync(image) || (await stat(image)).size !== size) {
    say(`writing a ${gib} GiB image ...`);
    await writeImage(image, size, 7);
  }
  const env = await setupEnv(join(root, `install-${gib}g`), broker, { deviceId: `bench-install-${String(gib).replace('.', '-')}`, slotSize: size + MIB, httpBehindBroker: true });
  try {
    const added = join(env.dir, 'release.json');
    if (!existsSync(added)) {
      say(`adding the ${gib} GiB release ...`);
      await writeFile(added, JSON.stringify(await addRelease(env, image, '2.0.0')));
    }
    const payload = (JSON.parse(readFileSync(added, 'utf8')) as { length: number }).length;
    await publish(env, broker);
    const d = startCli(['daemon', '--config', env.configPath], daemonEnv(), DAEMON_ARGS);
    const s = sampler(d.child.pid!);
    const t0 = Date.now();
    try {
      // a cycle that ends with its check failed (the release refused, a mirror's bytes wrong) never
      // gets to `install verified`: the daemon waits for its retry; say why at once instead of
      // waiting out the hour
      const end = await d.waitFor((l) => l.msg === 'install verified' || (l.msg === 'cycle done' && l.lastCheck === 'failed'), 3_600_000, 'install verified');
      if (end.msg !== 'install verified') {
        const record = JSON.parse(readFileSync(join(env.dir, 'state', 'update-record.json'), 'utf8')) as { lastCheck?: { detail?: string } };
        throw new Error(`the daemon's check failed: ${record.lastCheck?.detail ?? 'no detail in its update record'}`);
      }
      const cpu = Math.round(cpuSeconds(d.child.pid!) * 10) / 10;
      s.now();
      const peak = s.samples.reduce((a, b) => (b.kib > a.kib ? b : a));
      const r = { gib, peakMiB: mib(peak.kib), peakProcs: Math.max(...s.samples.map((x) => x.procs)), seconds: Math.round((Date.now() - t0) / 1000), cpuSeconds: cpu, payloadMiB: Math.round(payload / MIB) };
      res.install.push(r);
      say(`install ${gib} GiB: peak ${r.peakMiB} MiB (up to ${r.peakProcs} processes), ${r.seconds} s (CPU ${r.cpuSeconds} s), payload ${r.payloadMiB} MiB`);
      // which way the daemon went: a release with a delta section is tried by delta first (route.ts)
      for (const l of d.lines) if (typeof l.msg === "string" && (values['daemon-log'] || /^delta |delta install/.test(l.msg))) say(`  daemon +${typeof l.time === 'number' ? `${((l.time - t0) / 1000).toFixed(1)} s, peak so far ${mib(Math.max(0, ...s.samples.filter((x) => x.t <= (l.time as number) - t0).map((x) => x.kib)))} MiB` : '?'}: ${l.msg} ${JSON.stringify({ ...l, msg: undefined, time: undefined, pid: undefined, hostname: undefined, level: undefined }).slice(0, 600)}`);
    } finally {
      s.stop();
      await d.stop();
      if (values['show-stderr']) process.stderr.write(d.stderr());
    }
  } finally {
    await env.serve.stop();
  }
}

function say(s: string): void {
  process.stderr.write(`[bench:memory] ${s}\n`);
}

async function main(): Promise<number> {
  const nodeVersion = await new Promise<string>((resolve) => execFile(NODE, ['--version'], (_e, out) => resolve(String(out).trim())));
  say(`node ${nodeVersion} (${NODE}); daemon: node ${DAEMON_ARGS.join(' ')} ${CLI} daemon; NODE_OPTIONS="${NODE_OPTIONS}"`);
  const root = values.dir ?? (await mkdtemp(join(tmpdir(), 'slotflip-membench-')));
  const cache = join(root, 'cache');
  await mkdir(cache, { recursive: true });
  const res: Results = { node: nodeVersion, nodeOptions: NODE_OPTIONS, daemonArgs: DAEMON_ARGS, install: [], installFailures: [] };
  const broker = await startMosquitto();
  let failed = false;
  try {
    if (only.has('idle') || only.has('cycles') || only.has('checkcpu')) await idleAndCycles(root, broker, res);
    if (only.has('install')) {
      for (const g of sizes) {
        // one size failing does not take the others' figures with it; the run still exits 1
        try {
          await install(root, cache, broker, g, res);
        } catch (e) {
          failed = true;
          res.installFailures.push({ gib: g, error: (e as Error).message });
          say(`install ${g} GiB FAILED: ${(e as Error).message}`);
        }
      }
    }
  } catch (e) {
    failed = true;
    say(`FAILED: ${(e as Error).stack ?? String(e)}`);
  } finally {
    await broker.stop();
    if (!values.dir) await rm(root, { recursive: true, force: true });
  }
  printTable(res);
  return failed ? 1 : 0;
}

function printTable(res: Results): void {
  if (values.json) {
    console.log(JSON.stringify(res));
    return;
  }
  const rows: string[][] = [];
  if (res.idle) rows.push([`idle RSS ${idleSeconds} s after start`, `${res.idle.at60sMiB} MiB`, '<= 48 MiB', `5 s: ${res.idle.at5sMiB}, max ${res.idle.maxMiB}`]);
  for (const i of res.install) rows.push([`peak RSS installing ${i.gib} GiB`, `${i.peakMiB} MiB`, '<= 64 MiB', `${i.seconds} s (daemon CPU ${i.cpuSeconds} s), payload ${i.payloadMiB} MiB, up to ${i.peakProcs} processes`]);
  for (const f of res.installFailures) rows.push([`peak RSS installing ${f.gib} GiB`, 'FAILED', '<= 64 MiB', f.error.replace(/\|/g, '/').slice(0, 400)]);
  if (res.checkCpu) rows.push([`CPU per check cycle after ${res.checkCpu.gapMs} ms idle`, `${res.checkCpu.afterPauseMs} ms`, '-', `back to back (no reclaim, code kept): ${res.checkCpu.backToBackMs} ms; ${res.checkCpu.n} cycles each`]);
  if (res.cycles) rows.push([`growth over ${res.cycles.n} check cycles (one process)`, `${res.cycles.growthMiB} MiB`, '< 5 MiB', `${res.cycles.beforeMiB} → ${res.cycles.afterMiB} MiB in ${res.cycles.seconds} s`]);
  console.log(`slotflip daemon memory (RSS of the whole process tree), node ${res.node}, node flags "${DAEMON_ARGS.join(' ')}", NODE_OPTIONS="${res.nodeOptions}", metadata over ${METADATA}`);
  console.log('| figure | measured | goal | notes |');
  console.log('| --- | --- | --- | --- |');
  for (const r of rows) console.log(`| ${r.join(' | ')} |`);
  if (whereReport) console.log(whereReport);
}

process.exitCode = await main();

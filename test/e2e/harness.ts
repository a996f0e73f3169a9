/**
 * The black-box end-to-end lane's harness: everything goes through the BUILT `slotflip` CLI
 * (`node dist/daemon/cli.js ...`, what `npm run build` makes and a device or a manufacturer runs),
 * never through the TypeScript sources. A test is a device owner or a manufacturer:
 *
 * - the manufacturer builds an image file, then `slotflip repo init`, `slotflip release add`,
 *   `slotflip repo publish --broker`, and serves `repository/` over a real HTTP server with Range
 *   (test/harness/http-server.ts, which counts the body bytes sent per request: the bill);
 * - the device owner creates an emulated board with `slotflip board create`, writes a config file
 *   the way the README shows, and runs `slotflip daemon --config F` as a real process, which the
 *   test kills (SIGKILL: a power cut of the process) and restarts, while it samples the process's RSS
 *   from /proc and reads the slots and the boot environment from the board's files.
 *
 * Only processes this harness started are ever signalled, by pid. Building the image file uses
 * hal's test-image format (the board's health probe reads it); that is the manufacturer's build
 * step, not the code under test.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { open, readdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeTestImage } from '../../hal/image.js';
import type { HttpServerHandle } from '../harness/http-server.js';

const HERE = fileURLToPath(new URL('.', import.meta.url));
/** the checkout: two levels up from test/e2e/, three from its build in dist/test/e2e/. */
export const ROOT = resolve(HERE, /[/\\]dist[/\\]test[/\\]e2e[/\\]?$/.test(HERE) ? '../../..' : '../..');
/** the built CLI; `npm test` builds it first (`pretest`). SLOTFLIP_E2E_CLI points the lane at
 * another build (e.g. of the main branch, to show a test fails there). */
export const CLI = process.env.SLOTFLIP_E2E_CLI ?? join(ROOT, 'dist/daemon/cli.js');

/** Throws a clear message when the CLI was not built (run `npm run build`). */
export function requireBuilt(): void {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does it in pretest)`);
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `slotflip ARGS...` to completion. Never throws for a non-zero exit. */
export function slotflip(args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<CliResult> {
  requireBuilt();
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, ...opts.env }, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** Like `slotflip` but fails with the output when the exit code is not 0; parses stdout as JSON. */
export async function slotflipJson<T = Record<string, unknown>>(args: string[]): Promise<T> {
  const r = await slotflip(args);
  if (r.code !== 0) throw new Error(`slotflip ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout) as T;
}

export const HARDWARE = 'acme,e2e-board';

export interface Fleet {
  /** the manufacturer's repository directory (keys/ and repository/). */
  repo: string;
  /** served over HTTP: metadata/ and targets/. */
  repository: string;
  shippedRoot: string;
}

export interface PublishedRelease {
  version: string;
  /** image bytes. */
  size: number;
  imageSha256: string;
  /** the payload file on the server's disk and its URL path. */
  payloadPath: string;
  urlPath: string;
  /** payload (compressed) bytes. */
  length: number;
  chunks: number;
}

/** `slotflip repo init DIR`. */
export async function initFleet(dir: string): Promise<Fleet> {
  const repo = join(dir, 'repo');
  await slotflipJson(['repo', 'init', repo, '--json']);
  return { repo, repository: join(repo, 'repository'), shippedRoot: join(repo, 'repository/metadata/1.root.json') };
}

/** Builds a test image (incompressible body) and adds it with `slotflip release add`. The scenarios
 * built on it exercise the full payload (corrupt frames, ranges, resume, what devices without delta
 * support do), so it passes `--no-delta` unless `delta` is set; delta installs from the CLI's
 * default publishing are driven by delta-scenarios.ts. */
export async function addRelease(fleet: Fleet, dir: string, o: { version: string; securityVersion: number; size: number; chunkSize: number; compression?: 'zstd' | 'gzip' | 'none'; inlineIndex?: boolean; delta?: boolean }): Promise<PublishedRelease> {
  const image = join(dir, `image-${o.version}.img`);
  const bytes = makeTestImage({ version: o.version, size: o.size });
  await writeFile(image, bytes);
  const r = await slotflipJson<{ path: string; length: number; chunks: number; targetName: string }>([
    'release', 'add', fleet.repo, '--image', image, '--version', o.version, '--security-version', String(o.securityVersion),
    '--hardware', HARDWARE, '--channel', 'stable', '--chunk-size', String(o.chunkSize), '--compression', o.compression ?? 'zstd', '--json',
    ...(o.inlineIndex ? ['--inline-index'] : o.delta ? [] : ['--no-delta']),
  ]);
  const payloadPath = r.path.startsWith('/') ? r.path : join(process.cwd(), r.path);
  const urlPath = '/' + payloadPath.slice(fleet.repository.length + 1);
  return { version: o.version, size: o.size, imageSha256: sha256(bytes), payloadPath, urlPath, length: r.length, chunks: r.chunks };
}

/** `slotflip repo publish DIR --broker URL`. */
export async function publishToBroker(fleet: Fleet, brokerUrl: string): Promise<void> {
  const r = await slotflip(['repo', 'publish', fleet.repo, '--broker', brokerUrl]);
  if (r.code !== 0) throw new Error(`repo publish exited ${r.code}: ${r.stderr}`);
}

/** Flips one byte of the payload file in the middle (a corrupt mirror): returns the offset. */
export async function corruptPayload(rel: PublishedRelease, at = 0.5): Promise<number> {
  const off = Math.floor(rel.length * at);
  const fh = await open(rel.payloadPath, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, off);
    b[0] = b[0]! ^ 0xff;
    await fh.write(b, 0, 1, off);
  } finally {
    await fh.close();
  }
  return off;
}

export interface Board {
  dir: string;
  slots: { A: string; B: string };
  slotSize: number;
  bootConfig: Record<string, unknown>;
}

/** `slotflip board create DIR --backend emulated --slot-size N --json`. */
export async function createBoard(dir: string, slotSize: number, backend = 'emulated'): Promise<Board> {
  const r = await slotflipJson<{ slots: { A: string; B: string }; bootConfig: Record<string, unknown> }>(['board', 'create', dir, '--backend', backend, '--slot-size', String(slotSize), '--json']);
  return { dir, slots: r.slots, slotSize, bootConfig: r.bootConfig };
}

export interface DeviceOptions {
  deviceId: string;
  board: Board;
  fleet: Fleet;
  stateDir: string;
  brokerUrl?: string;
  /** payload mirrors (base URLs ending in `targets/`). */
  payloadBaseUrls: string[];
  /** metadata source: the broker (default when brokerUrl is set) or HTTP. */
  metadataUrl?: string;
  /** merged over the generated config (e.g. `{ download: {...} }`). */
  extra?: Record<string, unknown>;
}

/** Writes a device config file as the README describes; returns its path. */
export async function writeDeviceConfig(path: string, o: DeviceOptions): Promise<string> {
  const sources = o.metadataUrl ? [{ type: 'http', url: o.metadataUrl }] : [{ type: 'mqtt' }];
  const config: Record<string, unknown> = {
    deviceId: o.deviceId,
    hardware: HARDWARE,
    stateDir: o.stateDir,
    trust: { shippedRoot: o.fleet.shippedRoot, sources, payloadBaseUrls: o.payloadBaseUrls },
    board: { slots: { A: { path: o.board.slots.A, size: o.board.slotSize }, B: { path: o.board.slots.B, size: o.board.slotSize } }, boot: o.board.bootConfig, tries: 2 },
    ...(o.brokerUrl ? { broker: { urls: [o.brokerUrl], reconnect: { minMs: 100, maxMs: 1000 }, connectTimeoutMs: 2000 } } : {}),
    // the board's own health probe (the booted image says whether it is healthy), as a device
    // owner would wire an application check
    health: { deadlineSeconds: 60, checks: [{ type: 'command', name: 'application', argv: [process.execPath, CLI, 'board', 'probe', o.board.dir, '--health'], timeoutSeconds: 30 }] },
    // the test plays the reboot: the daemon's reboot command does nothing, the test power-cycles
    reboot: { command: [process.execPath, '-e', '0'], graceSeconds: 1 },
    log: { level: 'debug' },
    ...o.extra,
  };
  await writeFile(path, JSON.stringify(config, null, 2));
  return path;
}

export type LogLine = Record<string, unknown>;

export interface Daemon {
  child: ChildProcess;
  pid: number;
  lines: LogLine[];
  stderr(): string;
  /** resolves with the first log line (seen or future) matching `pred`. */
  waitFor(pred: (l: LogLine) => boolean, timeoutMs?: number, what?: string): Promise<LogLine>;
  /** resolves with the exit code (null when killed by a signal). */
  exited: Promise<number | null>;
  /** SIGKILL (the process dies: nothing flushed, nothing said) and wait. Idempotent. */
  kill(): Promise<void>;
  /** SIGTERM and wait for the exit code. */
  stop(timeoutMs?: number): Promise<number | null>;
  /** RSS samples (KiB), taken every `rssEveryMs` while it runs. */
  rss: number[];
}

/** Starts `slotflip daemon --config F` (the built CLI) as a child process. */
export function startDaemon(configPath: string, opts: { rssEveryMs?: number; nodeArgs?: string[] } = {}): Daemon {
  return startSlotflip(['daemon', '--config', configPath], opts);
}

/** Starts `slotflip ARGS...` (the built CLI; `nodeArgs`: Node flags before it, e.g. the launcher's) as a child process that can be watched and killed; its
 * stdout lines are parsed as log lines (a command's JSON result is one too), stderr kept as text. */
export function startSlotflip(args: string[], opts: { rssEveryMs?: number; nodeArgs?: string[] } = {}): Daemon {
  requireBuilt();
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: LogLine[] = [];
  const rss: number[] = [];
  const waiters = new Set<{ pred: (l: LogLine) => boolean; resolve: (l: LogLine) => void }>();
  let buf = '';
  let err = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const text = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!text.trim()) continue;
      let line: LogLine;
      try {
        line = JSON.parse(text) as LogLine;
      } catch {
        line = { msg: text, unparsed: true };
      }
      lines.push(line);
      for (const w of [...waiters]) if (w.pred(line)) { waiters.delete(w); w.resolve(line); }
    }
  });
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (c: string) => { if (err.length < 65536) err += c; });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const sampler = setInterval(() => {
    void rssKiB(child.pid!).then((k) => { if (k !== undefined) rss.push(k); });
  }, opts.rssEveryMs ?? 250);
  void exited.then(() => clearInterval(sampler));
  const dead = (): boolean => child.exitCode !== null || child.signalCode !== null;
  return {
    child,
    pid: child.pid!,
    lines,
    rss,
    exited,
    stderr: () => err,
    waitFor(pred, timeoutMs = 30_000, what = 'log line') {
      const seen = lines.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const w = { pred, resolve: (l: LogLine) => { clearTimeout(timer); resolve(l); } };
        const timer = setTimeout(() => {
          waiters.delete(w);
          reject(new Error(`daemon ${child.pid}: no ${what} within ${timeoutMs} ms; stderr: ${err.slice(-2000)}; last lines: ${JSON.stringify(lines.slice(-6))}`));
        }, timeoutMs);
        waiters.add(w);
        void exited.then((code) => {
          if (!waiters.has(w)) return;
          waiters.delete(w);
          clearTimeout(timer);
          reject(new Error(`daemon ${child.pid} exited (${code}) before ${what}; stderr: ${err.slice(-2000)}; last lines: ${JSON.stringify(lines.slice(-6))}`));
        });
      });
    },
    async kill() {
      if (!dead()) child.kill('SIGKILL');
      await exited;
    },
    async stop(timeoutMs = 10_000) {
      if (dead()) return child.exitCode;
      child.kill('SIGTERM');
      const timer = setTimeout(() => { if (!dead()) child.kill('SIGKILL'); }, timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** The resident set of `pid` in KiB (VmRSS from /proc), or undefined when it is gone. */
export async function rssKiB(pid: number): Promise<number | undefined> {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

export function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

/** SHA-256 of the first `size` bytes of a slot file. */
export async function slotSha256(path: string, size: number): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(size);
    await fh.read(b, 0, size, 0);
    return sha256(b);
  } finally {
    await fh.close();
  }
}

/** Body bytes the HTTP server sent for requests of `urlPath` (the payload): what the device paid for. */
export function bytesServed(srv: HttpServerHandle, urlPath: string): number {
  return srv.requests.filter((r) => r.path === urlPath).reduce((n, r) => n + r.bytesSent, 0);
}

/** Requests of `urlPath` so far. */
export function requestsOf(srv: HttpServerHandle, urlPath: string): number {
  return srv.requests.filter((r) => r.path === urlPath).length;
}

/** `slotflip board status DIR --json`. */
export async function boardStatus(dir: string): Promise<Record<string, unknown>> {
  return slotflipJson(['board', 'status', dir, '--json']);
}

/** `slotflip status --config F --json`. */
export async function deviceStatus(configPath: string): Promise<Record<string, unknown>> {
  return slotflipJson(['status', '--config', configPath, '--json']);
}

/** Polls `fn` until it returns a truthy value or `timeoutMs` passes (then throws `what`). */
export async function until<T>(fn: () => T | Promise<T>, timeoutMs: number, what: string, everyMs = 20): Promise<NonNullable<T>> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v as NonNullable<T>;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Lists files under `dir` (one level), for messages. */
export async function ls(dir: string): Promise<string[]> {
  return readdir(dir).catch(() => []);
}

/** Whether `text` is a log line with message `msg`. */
export const msg = (m: string) => (l: LogLine): boolean => l.msg === m;

export interface RepoServe {
  url: string;
  /** access-log lines (`msg: 'request'`: path, range, status, bytes). */
  lines: LogLine[];
  stop(): Promise<void>;
}

/** `slotflip repo serve DIR --port 0` (the built CLI) as a child process; resolves once it listens. */
export async function startRepoServe(repoDir: string): Promise<RepoServe> {
  requireBuilt();
  const proc = spawn(process.execPath, [CLI, 'repo', 'serve', repoDir, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: LogLine[] = [];
  let buf = '';
  let err = '';
  const url = new Promise<string>((ok, fail) => {
    proc.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = JSON.parse(buf.slice(0, i)) as LogLine;
        buf = buf.slice(i + 1);
        lines.push(line);
        if (line.msg === 'listening') ok(line.url as string);
      }
    });
    proc.stderr!.on('data', (d: Buffer) => { if (err.length < 65536) err += d.toString(); });
    proc.once('exit', (code) => fail(new Error(`repo serve exited ${code}: ${err}`)));
  });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  return {
    url: await url,
    lines,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await exited;
    },
  };
}

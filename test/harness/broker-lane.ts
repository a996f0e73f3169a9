/**
 * The broker lane's fixtures, driven from outside: the BUILT CLI (`node dist/daemon/cli.js`, run
 * `npm run build` first) for the manufacturer's commands and the device's daemon, a repository
 * served over HTTP, emulated boards, and a raw MQTT observer. Used by the single-node tests in
 * `npm test` and the cluster scenario (`npm run test:brokers`).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connectAsync, type MqttClient } from 'mqtt';
import { createBoard, makeTestImage, type BoardDescription } from '../../hal/board.js';
import { startHttpServer } from './http-server.js';

export const BUILT_CLI = fileURLToPath(new URL('../../dist/daemon/cli.js', import.meta.url));
export const SLOT_SIZE = 256 * 1024;
export const HARDWARE = 'acme,board';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function cli(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 120_000): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BUILT_CLI, ...args], { env: { ...process.env, ...env }, maxBuffer: 1 << 24, timeout: timeoutMs }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0, stdout, stderr });
    });
  });
}

export interface Repo {
  dir: string;
  url: string;
  /** adds a release of `version` (a small test image) with the built CLI. */
  add(version: string): Promise<void>;
  stop(): Promise<void>;
}

export async function makeRepo(dir: string): Promise<Repo> {
  const repo = join(dir, 'repo');
  const r = await cli(['repo', 'init', repo]);
  if (r.code !== 0) throw new Error(`repo init: ${r.stderr}`);
  const srv = await startHttpServer({ root: join(repo, 'repository') });
  return {
    dir: repo,
    url: srv.url,
    async add(version) {
      const image = join(dir, `image-${version}.img`);
      await writeFile(image, makeTestImage({ version, size: 100 * 1024 }));
      const a = await cli(['release', 'add', repo, '--image', image, '--version', version, '--security-version', '1', '--hardware', HARDWARE, '--channel', 'stable', '--compression', 'gzip', '--chunk-size', String(16 * 1024), '--no-delta']); // the lane tests the brokers, not delta
      if (a.code !== 0) throw new Error(`release add: ${a.stderr}`);
    },
    stop: () => srv.stop(),
  };
}

export interface DeviceSetup {
  id: string;
  dir: string;
  boardDir: string;
  board: BoardDescription;
  configPath: string;
  stateDir: string;
}

/** An emulated board and a config: metadata from the broker, backed by the HTTP repository. */
export async function makeDevice(dir: string, id: string, repo: Repo, brokerUrl: string, opts: { password?: string; extra?: Record<string, unknown> } = {}): Promise<DeviceSetup> {
  const d = join(dir, id);
  const boardDir = join(d, 'board');
  const board = await createBoard(boardDir, { backend: 'emulated', slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
  const stateDir = join(d, 'state');
  let credentialsFile: string | undefined;
  if (opts.password !== undefined) {
    credentialsFile = join(d, 'broker-credentials.json');
    await writeFile(credentialsFile, JSON.stringify({ username: id, password: opts.password }));
  }
  const config = {
    deviceId: id, hardware: HARDWARE, stateDir,
    trust: { shippedRoot: join(repo.dir, 'repository/metadata/1.root.json'), sources: [{ type: 'mqtt' }, { type: 'http', url: repo.url }] },
    board: { slots: { A: { path: board.slots.A, size: SLOT_SIZE }, B: { path: board.slots.B, size: SLOT_SIZE } }, boot: board.bootConfig },
    broker: { urls: [brokerUrl], reconnect: { minMs: 200, maxMs: 2000 }, connectTimeoutMs: 5000, ...(credentialsFile ? { credentialsFile } : {}) },
    health: { deadlineSeconds: 60, checks: [{ type: 'command', name: 'application', argv: [process.execPath, BUILT_CLI, 'board', 'probe', boardDir, '--health'], timeoutSeconds: 30 }] },
    reboot: { command: [process.execPath, '-e', '0'] },
    log: { level: 'info' },
    ...opts.extra,
  };
  const configPath = join(d, 'config.json');
  await writeFile(configPath, JSON.stringify(config));
  return { id, dir: d, boardDir, board, configPath, stateDir };
}

export interface BuiltDaemon {
  child: ChildProcess;
  lines: Record<string, unknown>[];
  waitFor(pred: (l: Record<string, unknown>) => boolean, timeoutMs?: number, what?: string): Promise<Record<string, unknown>>;
  kill(): Promise<void>;
}

/** `node dist/daemon/cli.js daemon --config FILE`, its pino lines parsed. */
export function startBuiltDaemon(configPath: string): BuiltDaemon {
  const child = spawn(process.execPath, [BUILT_CLI, 'daemon', '--config', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Record<string, unknown>[] = [];
  const waiters = new Set<{ pred: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }>();
  let buf = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (c: string) => {
    buf += c;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const text = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      let line: Record<string, unknown>;
      try { line = JSON.parse(text) as Record<string, unknown>; } catch { line = { msg: text }; }
      lines.push(line);
      for (const w of [...waiters]) if (w.pred(line)) { waiters.delete(w); w.resolve(line); }
    }
  });
  child.stderr!.resume();
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    child,
    lines,
    waitFor(pred, timeoutMs = 60_000, what = 'log line') {
      const seen = lines.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const w = { pred, resolve: (l: Record<string, unknown>) => { clearTimeout(timer); resolve(l); } };
        const timer = setTimeout(() => { waiters.delete(w); reject(new Error(`no ${what} within ${timeoutMs} ms; last lines: ${lines.slice(-8).map((l) => JSON.stringify(l)).join('\n')}`)); }, timeoutMs);
        waiters.add(w);
      });
    },
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGKILL');
      await exited;
    },
  };
}

export interface Observer {
  client: MqttClient;
  /** event types per device id, in arrival order (duplicates by seq dropped). */
  events: Map<string, string[]>;
  /** last payload per topic. */
  last: Map<string, { payload: Buffer; retain: boolean }>;
  waitEvent(deviceId: string, type: string, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

/** A raw MQTT 3.1.1 client watching device events and whatever else it subscribes to. */
export async function observe(url: string, filters: string[], opts: { username?: string; password?: string } = {}): Promise<Observer> {
  const client = await connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, clientId: `obs${Math.random().toString(16).slice(2, 8)}`, ...opts });
  const events = new Map<string, string[]>();
  const seqs = new Set<string>();
  const last = new Map<string, { payload: Buffer; retain: boolean }>();
  client.on('message', (topic, payload, packet) => {
    last.set(topic, { payload, retain: packet.retain });
    const m = /^slotflip\/v2\/devices\/([^/]+)\/events$/.exec(topic);
    if (!m) return;
    try {
      const e = JSON.parse(payload.toString()) as { type: string; seq: number; deviceId: string };
      if (seqs.has(`${e.deviceId}:${e.seq}`)) return;
      seqs.add(`${e.deviceId}:${e.seq}`);
      events.set(e.deviceId, [...(events.get(e.deviceId) ?? []), e.type]);
    } catch { /* not ours */ }
  });
  await client.subscribeAsync(filters, { qos: 1 });
  return {
    client,
    events,
    last,
    async waitEvent(deviceId, type, timeoutMs = 60_000) {
      const until = Date.now() + timeoutMs;
      while (!(events.get(deviceId) ?? []).includes(type)) {
        if (Date.now() > until) throw new Error(`${deviceId}: no ${type} event within ${timeoutMs} ms (got ${(events.get(deviceId) ?? []).join(', ')})`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    close: () => client.endAsync(),
  };
}

/**
 * Delta updates end to end, as a manufacturer and a device owner would run them: the manufacturer
 * publishes two releases with `slotflip release add --delta` and serves the repository with
 * `slotflip repo serve` (Range and multi-range answers); the device runs the built
 * `slotflip install URL --config F` against it, through a loopback proxy that counts every request
 * and byte on the wire and lets the test step in (hold a request, stall an answer).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { open, writeFile } from 'node:fs/promises';
import type { Test } from 'tap';
import { join } from 'node:path';
import { bootable, deriveImage, makeImage, type DeriveOptions } from '../harness/delta-images.js';
import { startGateProxy, type GateProxy, type GateProxyOptions } from '../harness/gate-proxy.js';
import {
  CLI, HARDWARE, createBoard, initFleet, requireBuilt, sha256, slotflip, slotflipJson, slotSha256, startRepoServe, writeDeviceConfig,
  type Board, type CliResult, type Fleet, type LogLine, type RepoServe,
} from './harness.js';

export const MIB = 1 << 20;

export interface DeltaEnv {
  dir: string;
  fleet: Fleet;
  board: Board;
  serve: RepoServe;
  proxy: GateProxy;
  configPath: string;
  oldImg: Buffer;
  newImg: Buffer;
  /** the new release's full payload length (compressed) and its delta pack's length (0 until it is published). */
  payloadLength: number;
  packLength: number;
  /** publishes the new release (1.1.0: `newImg`, which the test may replace first) when setup was
   * asked not to (`publishNew: false`). */
  publishNew(): Promise<void>;
  /** `slotflip install PROXY --config F --json`. */
  install(): Promise<CliResult>;
  /** the same, as a child process the test may kill. */
  spawnInstall(): { child: ChildProcess; stderr: () => string; exited: Promise<number | null> };
  /** slot B's image hash (the target: the board boots A). */
  slotB(): Promise<string>;
  stop(): Promise<void>;
}

export interface DeltaSetup {
  deviceId: string;
  /** where the old image is on the device: the booted slot A, the target slot B, or nowhere. */
  seed: 'active' | 'inactive' | 'none';
  size?: number;
  derive?: DeriveOptions;
  /** extra device config keys (e.g. `{ install: { delta: 'off' } }`). */
  extra?: Record<string, unknown>;
  proxy?: Omit<GateProxyOptions, 'upstream'>;
  /** the images bootable on the emulated board (a test image header, healthy: hal/image.ts), so the
   * test can power-cycle into the trial and commit. */
  bootable?: boolean;
  /** the board's slot size (default the image size + 1 MiB). */
  slotSize?: number;
  /** publish the new release at setup (default); false: the test calls `publishNew()` later. */
  publishNew?: boolean;
  /** extra `release add` flags for both releases (e.g. `['--delta-format', '1']`). */
  releaseFlags?: string[];
}

/** `release add` of an image buffer (version V, securityVersion N): with no flags, as a manufacturer
 * runs it, which publishes the delta index and pack by default. */
export async function addImageRelease(fleet: Fleet, dir: string, image: Buffer, version: string, securityVersion: number, flags: string[] = []): Promise<{ length: number; delta?: { pack: { length: number } } }> {
  const path = join(dir, `image-${version}.img`);
  await writeFile(path, image);
  return slotflipJson(['release', 'add', fleet.repo, '--image', path, '--version', version, '--security-version', String(securityVersion), '--hardware', HARDWARE, '--channel', 'stable', '--json', ...flags]);
}

/** Writes `bytes` at the start of a slot file (its size unchanged). */
export async function writeSlot(path: string, bytes: Buffer, at = 0): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(bytes, 0, bytes.length, at);
  } finally {
    await fh.close();
  }
}

export async function setupDelta(dir: string, o: DeltaSetup): Promise<DeltaEnv> {
  const size = o.size ?? 8 * MIB;
  const fleet = await initFleet(dir);
  const raw = makeImage(7, size);
  const oldImg = o.bootable ? bootable(raw, '1.0.0') : raw;
  const newImg = o.bootable ? bootable(deriveImage(raw, o.derive), '1.1.0') : deriveImage(raw, o.derive);
  await addImageRelease(fleet, dir, oldImg, '1.0.0', 1, o.releaseFlags);
  const publish = async (): Promise<void> => {
    const rel = await addImageRelease(fleet, dir, env.newImg, '1.1.0', 1, o.releaseFlags);
    env.payloadLength = rel.length;
    env.packLength = rel.delta!.pack.length;
  };
  const serve = await startRepoServe(fleet.repo);
  const proxy = await startGateProxy({ upstream: serve.url, ...o.proxy });
  const board = await createBoard(join(dir, 'board'), o.slotSize ?? size + MIB);
  const other = makeImage(99, size); // unrelated bytes: no seed there
  await writeSlot(board.slots.A, o.seed === 'active' ? oldImg : other);
  await writeSlot(board.slots.B, o.seed === 'inactive' ? oldImg : other);
  const configPath = await writeDeviceConfig(join(dir, 'config.json'), {
    deviceId: o.deviceId, board, fleet, stateDir: join(dir, 'state'), payloadBaseUrls: [`${proxy.url}targets/`], metadataUrl: proxy.url,
    extra: { log: { level: 'info' }, ...o.extra },
  });
  const args = ['install', proxy.url, '--config', configPath, '--json'];
  const env: DeltaEnv = {
    dir, fleet, board, serve, proxy, configPath, oldImg, newImg,
    payloadLength: 0,
    packLength: 0,
    publishNew: publish,
    install: () => slotflip(args, { timeoutMs: 120_000 }),
    spawnInstall() {
      requireBuilt();
      const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      child.stderr!.on('data', (d: Buffer) => { if (err.length < 1 << 20) err += d.toString(); });
      child.stdout!.resume();
      const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
      return { child, stderr: () => err, exited };
    },
    slotB: () => slotSha256(board.slots.B, size),
    async stop() {
      await proxy.stop();
      await serve.stop();
    },
  };
  if (o.publishNew !== false) await publish();
  return env;
}

/** The JSON log lines of a one-shot command's stderr. */
export function logLines(stderr: string): LogLine[] {
  const out: LogLine[] = [];
  for (const l of stderr.split('\n')) {
    if (!l.startsWith('{')) continue;
    try {
      out.push(JSON.parse(l) as LogLine);
    } catch {
      // a line cut by a kill
    }
  }
  return out;
}

export const imageSha = sha256;

export const isPack = (p: string): boolean => p.endsWith('.delta-pack');
export const isDeltaIndex = (p: string): boolean => p.endsWith('.delta-index');
/** the thin index (written against the release before: manifests/delta-thin.ts). */
export const isDeltaThin = (p: string): boolean => p.endsWith('.delta-thin');
export const isPayload = (p: string): boolean => p.endsWith('.zst');

export function wire(env: DeltaEnv): { requests: number; pack: number; packBytes: number; payloadBytes: number; indexRequests: number; total: number } {
  const r = env.proxy.requests;
  return {
    requests: r.length,
    pack: r.filter((q) => isPack(q.path)).length,
    packBytes: r.filter((q) => isPack(q.path)).reduce((n, q) => n + q.bytes, 0),
    payloadBytes: r.filter((q) => isPayload(q.path)).reduce((n, q) => n + q.bytes, 0),
    indexRequests: r.filter((q) => isDeltaIndex(q.path)).length,
    total: r.reduce((n, q) => n + q.bytes, 0),
  };
}

/** The `UpdateInstalled` report's transfer, from the install's log. */
export function transferOf(stderr: string): Record<string, unknown> | undefined {
  const rep = logLines(stderr).find((l) => l.msg === 'report' && l.report === 'UpdateInstalled');
  return rep?.transfer as Record<string, unknown> | undefined;
}

export const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** What every delta scenario checks first: the install exited 0 and slot B holds the new image. */
export async function installedNew(t: Test, env: DeltaEnv, r: CliResult): Promise<void> {
  t.equal(r.code, 0, 'install exits 0', { stderr: r.stderr.slice(-2000) });
  t.equal(await env.slotB(), imageSha(env.newImg), 'slot B holds the new image');
}

/**
 * End-to-end scenarios shared by the tap tests (test/e2e/*.test.ts) and the longer randomized
 * runner (`npm run test:e2e -- --iterations N`, test/e2e/run.ts), which also prints the figures.
 * Each scenario is a manufacturer publishing through the CLI and a device running the built
 * `slotflip daemon`; each returns what an owner would measure (bytes served, RSS, slot hashes).
 */
import { join } from 'node:path';
import { startHttpServer, type HttpServerHandle } from '../harness/http-server.js';
import {
  addRelease, bytesServed, createBoard, deviceStatus, initFleet, publishToBroker, requestsOf, slotSha256, startDaemon, until, writeDeviceConfig,
  type Board, type Daemon, type Fleet, type PublishedRelease,
} from './harness.js';

export const MIB = 1 << 20;

export interface DownloadEnv {
  dir: string;
  fleet: Fleet;
  rel: PublishedRelease;
  board: Board;
  srv: HttpServerHandle;
  configPath: string;
  stateDir: string;
  chunkSize: number;
}

export interface SetupOptions {
  brokerUrl: string;
  deviceId: string;
  /** image size (default 8 MiB) and chunk size (default 128 KiB). */
  size?: number;
  chunkSize?: number;
  /** server throttle, bytes/s per request (default 4 MiB/s: a download takes ~2 s); 0: none. */
  bytesPerSecond?: number;
  /** extra config keys for the device. */
  extra?: Record<string, unknown>;
  /** a second (or more) mirror serving the same repository. */
  mirrors?: number;
  /** the device's state directory (default DIR/state). */
  stateDir?: string;
  /** the board's bootloader backend (`slotflip board create --backend`, default emulated). */
  backend?: string;
}

/** Manufacturer: repo init, release add, HTTP server, repo publish. Device: board create, config. */
export async function setupDownload(dir: string, o: SetupOptions): Promise<DownloadEnv & { mirrorsSrv: HttpServerHandle[] }> {
  const size = o.size ?? 8 * MIB;
  const chunkSize = o.chunkSize ?? 128 * 1024;
  const fleet = await initFleet(dir);
  const rel = await addRelease(fleet, dir, { version: '1.1.0', securityVersion: 1, size, chunkSize });
  // 0: unthrottled
  const bps = o.bytesPerSecond ?? 4 * MIB;
  const faults = () => (bps > 0 ? { bytesPerSecond: bps } : {});
  const srv = await startHttpServer({ root: fleet.repository, faults: faults() });
  const mirrorsSrv: HttpServerHandle[] = [];
  for (let i = 1; i < (o.mirrors ?? 1); i++) mirrorsSrv.push(await startHttpServer({ root: fleet.repository, faults: faults() }));
  await publishToBroker(fleet, o.brokerUrl);
  const board = await createBoard(join(dir, 'board'), size + MIB, o.backend);
  const stateDir = o.stateDir ?? join(dir, 'state');
  const configPath = await writeDeviceConfig(join(dir, 'config.json'), {
    deviceId: o.deviceId, board, fleet, stateDir, brokerUrl: o.brokerUrl,
    payloadBaseUrls: [srv, ...mirrorsSrv].map((s) => `${s.url}targets/`),
    ...(o.extra ? { extra: o.extra } : {}),
  });
  return { dir, fleet, rel, board, srv, configPath, stateDir, chunkSize, mirrorsSrv };
}

export interface ResumeFigures {
  payload: number;
  served: number;
  /** served / payload. */
  ratio: number;
  /** (1 + 0.05 k) × payload + k chunks for k kills. */
  bound: number;
  requests: number;
  maxRssKiB: number;
}

/**
 * Runs the daemon, SIGKILLs it when the server has sent `points[i]` × the payload (cumulative), once
 * per point, then lets a last daemon finish the download. Returns the figures and the slot's hash.
 */
export async function resumeAfterKill(env: DownloadEnv, points: number[], timeoutMs = 30_000): Promise<{ figures: ResumeFigures; slotSha256: string; resumedFromChunk: number }> {
  const { srv, rel } = env;
  let maxRss = 0;
  for (const p of points) {
    const d = startDaemon(env.configPath);
    try {
      await until(() => bytesServed(srv, rel.urlPath) >= p * rel.length || d.child.exitCode !== null, timeoutMs, `${Math.round(p * 100)} % of the payload served`, 5);
    } finally {
      await d.kill();
      maxRss = Math.max(maxRss, ...d.rss);
    }
  }
  const d = startDaemon(env.configPath);
  let verified;
  try {
    verified = await d.waitFor((l) => l.msg === 'install verified', timeoutMs, 'install verified');
    await d.waitFor((l) => l.msg === 'cycle done', timeoutMs, 'cycle done');
  } finally {
    await d.stop();
    maxRss = Math.max(maxRss, ...d.rss);
  }
  const served = bytesServed(srv, rel.urlPath);
  const figures: ResumeFigures = {
    payload: rel.length,
    served,
    ratio: Math.round((served / rel.length) * 1000) / 1000,
    // per kill: 5 % of the payload and one chunk (what was in flight when the process died)
    bound: Math.ceil((1 + 0.05 * points.length) * rel.length + points.length * env.chunkSize),
    requests: requestsOf(srv, rel.urlPath),
    maxRssKiB: maxRss,
  };
  return { figures, slotSha256: await slotSha256(env.board.slots.B, rel.size), resumedFromChunk: Number(verified.resumedFromChunk) };
}

export type { Daemon };

export interface CorruptFigures {
  payload: number;
  /** payload bytes sent by all mirrors together. */
  served: number;
  ratio: number;
  requests: number;
  mirrorsUsed: number;
  /** bytes served in `quietMs` after the attempt ended (or after the timeout). */
  servedAfterEnd: number;
  transferFailures: number;
  durationMs: number;
  maxRssKiB: number;
  rssAtFirstFailureKiB: number;
  rssGrowthKiB: number;
}

/**
 * Runs the daemon against a corrupt payload until a cycle ends an attempt (or `timeoutMs`), then
 * watches `quietMs` more for further downloads. Never throws for a daemon that does not give up:
 * the figures say what it cost. `finished` is the device's last result (`slotflip status`).
 */
export async function corruptRun(env: DownloadEnv & { mirrorsSrv: HttpServerHandle[] }, o: { timeoutMs?: number; quietMs?: number } = {}): Promise<{ figures: CorruptFigures; finished: unknown; status: Record<string, unknown> }> {
  const servers = [env.srv, ...env.mirrorsSrv];
  const served = (): number => servers.reduce((n, s) => n + bytesServed(s, env.rel.urlPath), 0);
  const started = Date.now();
  const d = startDaemon(env.configPath, { rssEveryMs: 100 });
  let rssAtFirstFailure = 0;
  void d.waitFor((l) => l.msg === 'transfer failed', o.timeoutMs ?? 30_000).then(() => { rssAtFirstFailure = d.rss.at(-1) ?? 0; }, () => undefined);
  let status: Record<string, unknown> = {};
  try {
    await d.waitFor((l) => l.msg === 'cycle done' && Array.isArray(l.finished) && l.finished.length > 0, o.timeoutMs ?? 30_000, 'an attempt that ends').catch(() => undefined);
    const durationMs = Date.now() - started;
    const atEnd = served();
    await new Promise((r) => setTimeout(r, o.quietMs ?? 3000));
    const after = served() - atEnd;
    status = await deviceStatus(env.configPath);
    const total = served();
    const rssAfter = d.rss.filter((_, i) => i >= d.rss.findIndex((k) => k === rssAtFirstFailure));
    const maxRss = Math.max(0, ...d.rss);
    const figures: CorruptFigures = {
      payload: env.rel.length,
      served: total,
      ratio: Math.round((total / env.rel.length) * 1000) / 1000,
      requests: servers.reduce((n, s) => n + requestsOf(s, env.rel.urlPath), 0),
      mirrorsUsed: servers.filter((s) => requestsOf(s, env.rel.urlPath) > 0).length,
      servedAfterEnd: after,
      transferFailures: d.lines.filter((l) => l.msg === 'transfer failed').length,
      durationMs,
      maxRssKiB: maxRss,
      rssAtFirstFailureKiB: rssAtFirstFailure,
      rssGrowthKiB: rssAtFirstFailure > 0 ? Math.max(0, ...rssAfter) - rssAtFirstFailure : maxRss,
    };
    return { figures, finished: status.lastResult, status };
  } finally {
    await d.stop();
  }
}

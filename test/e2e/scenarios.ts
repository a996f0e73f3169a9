/**
 * End-to-end scenarios shared by the tap tests (test/e2e/*.test.ts) and the longer randomized
 * runner (`npm run test:e2e -- --iterations N`, test/e2e/run.ts), which also prints the figures.
 * Each scenario is a manufacturer publishing through the CLI and a device running the built
 * `slotflip daemon`; each returns what an owner would measure (bytes served, RSS, slot hashes).
 */
import { join } from 'node:path';
import { startHttpServer, type HttpServerHandle } from '../harness/http-server.js';
import {
  addRelease, bytesServed, createBoard, initFleet, publishToBroker, requestsOf, slotSha256, startDaemon, until, writeDeviceConfig,
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
  /** server throttle, bytes/s per request (default 4 MiB/s: a download takes ~2 s). */
  bytesPerSecond?: number;
  /** extra config keys for the device. */
  extra?: Record<string, unknown>;
  /** a second (or more) mirror serving the same repository. */
  mirrors?: number;
}

/** Manufacturer: repo init, release add, HTTP server, repo publish. Device: board create, config. */
export async function setupDownload(dir: string, o: SetupOptions): Promise<DownloadEnv & { mirrorsSrv: HttpServerHandle[] }> {
  const size = o.size ?? 8 * MIB;
  const chunkSize = o.chunkSize ?? 128 * 1024;
  const fleet = await initFleet(dir);
  const rel = await addRelease(fleet, dir, { version: '1.1.0', securityVersion: 1, size, chunkSize });
  const srv = await startHttpServer({ root: fleet.repository, faults: { bytesPerSecond: o.bytesPerSecond ?? 4 * MIB } });
  const mirrorsSrv: HttpServerHandle[] = [];
  for (let i = 1; i < (o.mirrors ?? 1); i++) mirrorsSrv.push(await startHttpServer({ root: fleet.repository, faults: { bytesPerSecond: o.bytesPerSecond ?? 4 * MIB } }));
  await publishToBroker(fleet, o.brokerUrl);
  const board = await createBoard(join(dir, 'board'), size + MIB);
  const stateDir = join(dir, 'state');
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
    bound: Math.ceil(1.05 * rel.length + env.chunkSize),
    requests: requestsOf(srv, rel.urlPath),
    maxRssKiB: maxRss,
  };
  return { figures, slotSha256: await slotSha256(env.board.slots.B, rel.size), resumedFromChunk: Number(verified.resumedFromChunk) };
}

export type { Daemon };

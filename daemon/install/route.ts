/**
 * How a release reaches the inactive slot: by delta (delta.ts: chunks copied from either slot, the
 * rest fetched from the release's delta pack in a few multi-range requests) or as the full payload
 * (installer.ts). The daemon's update and `slotflip install` both come through here (compose.ts).
 *
 * Delta is tried when all of these hold, else the full payload is installed without a word of
 * complaint (a device that cannot use delta is not broken):
 * - config `install.delta` is "auto" (the default);
 * - the release's verified chunk index file (format 2) has a `delta` section this daemon understands
 *   (manifests/delta.ts parseDeltaSection; format 1 releases have no index file, hence no delta);
 * - the runtime has zstd in node:zlib (Node >= 22.15);
 * - the payload comes from HTTP mirrors (a directory or an offline bundle is read whole: a local
 *   copy costs no bandwidth, which is all delta saves).
 *
 * Falling back: a delta-specific failure BEFORE the first byte is written (the delta index cannot
 * be fetched, does not match its signed length and SHA-256, does not parse, does not describe the
 * signed image) installs the full payload in the same run. After writing began, a retryable failure
 * (network) ends the run as a full install's would (the next cycle resumes by delta: the slot is
 * probed and what is in place is verified and kept); a pack whose frames do not match the signed
 * delta index (a publishing fault no retry cures) also falls back to the full payload. Both are safe
 * at any point: the target slot was marked bad before this runs, and the full installer verifies
 * every chunk it keeps or writes.
 *
 * Not worth it: when the slots hold so little of the new image that the pack ranges to fetch come
 * to more than 7/8 of the full payload and 4 MiB (delta.ts MIN_SAVED_FRACTION, SMALL_DELTA_BYTES;
 * judged from the seed indexes, samples of the slots without one, or the cut slots, and the new delta
 * index, before a byte of the pack is fetched), delta.ts says INSTALL_DELTA_NOT_WORTH and the full
 * payload is installed in the same run (the report's `fallback` names it): such an update costs the
 * full payload plus the delta index (~0.4 % of an 8 MiB random image; less for a compressible one).
 *
 * Trust: the delta section's file lengths and SHA-256s come from the chunk index file, which matched
 * its signed TUF target hash, so they are as authentic as targets.json; the index read is capped at
 * its signed length (and at MAX_DELTA_INDEX_FILE_BYTES), pack answers at the ranges asked for, and
 * every chunk, copied or fetched, matches the signed index before it is written.
 *
 * The booted slot's release: when the running slot has no usable kept or built seed index and the
 * device's state says which release it holds (committed there; compose.ts finds it in the current
 * signed targets by name and image hash), that release's own signed delta index is fetched (capped
 * at its signed length and MAX_KEPT_INDEX_BYTES, checked against its signed SHA-256, describing that
 * release's signed image) and used instead of cutting the slot, then kept for it. A pruned or
 * unreachable one costs nothing but the cut it would have saved. Copying by it is as safe as by a
 * kept index: every chunk is verified against the NEW signed index before it is written.
 *
 * Seed indexes (seed-index.ts): with `seedDir` set, the slots' kept delta indexes are loaded and
 * passed to installDelta (a slot with a usable one is not read to cut it), the target's is dropped
 * before anything can write the slot (whichever way the install then goes), and the new release's
 * index is kept for the target once the slot was read back right. After a FULL install of a release
 * that offers a delta, compose.ts calls keepIndexAfterFull: the delta index is fetched (signed length
 * and hash) and kept the same way, so a fallback does not leave the slot to be cut next time.
 *
 * Budget and resume record: a delta run spends the attempt's download budget like a full run (bytes
 * as a multiple of the FULL payload's length plus one chunk, and time; summed over runs in the resume
 * record install-resume.json), so a device that keeps failing by delta still ends the attempt.
 */
import zlib from 'node:zlib';
import type { Logger } from 'pino';
import { codeOf, isCoded } from '../../hal/errors.js';
import type { SlotWriter } from '../../hal/slot-writer.js';
import { parseDeltaIndex, parseDeltaSection, type DeltaIndex, type DeltaSection } from '../../manifests/delta.js';
import type { PayloadInfo, Release } from '../../manifests/types.js';
import type { InstallTransfer } from '../machine.js';
import { fetchVerified, installDelta, request, type DeltaInstallResult, type SeedInput } from './delta.js';
import type { BudgetOptions, InstallProgress } from './installer.js';
import { readResumeRecord, writeResumeHint } from './resume-state.js';
import { dropSeedIndex, keepSeedIndex, loadSeedIndex, MAX_KEPT_INDEX_BYTES } from './seed-index.js';

/** What an install cost, for the log, the progress and the `UpdateInstalled` report. */
export type TransferStats = InstallTransfer;

export type DeltaMode = 'auto' | 'off';

/** node:zlib decodes zstd (Node >= 22.15). */
export function zstdBuiltIn(): boolean {
  return typeof (zlib as unknown as { zstdDecompressSync?: unknown }).zstdDecompressSync === 'function';
}

/** Where a target file is: mirrors' URLs or a local path (compose.ts sourceFor). */
export type Locate = (target: Pick<Release, 'targetName' | 'hashes'>) => { urls: string[] } | { path: string };

export interface DeltaRouteOptions {
  release: Release;
  payload: PayloadInfo;
  /** the chunk index file's `delta` section as found (unjudged), if any. */
  delta: unknown;
  mode: DeltaMode;
  locate: Locate;
  slot: SlotWriter;
  /** the booted slot: only ever read. */
  running?: SlotWriter;
  resumeStatePath: string;
  /** the state dir that holds the slots' kept seed indexes (seed-index.ts); absent: none kept or used. */
  seedDir?: string;
  /** the release the running slot holds by the device's state (its committed release), as found in
   * the current signed targets metadata, with its chunk index file's payload and `delta` section
   * (unjudged); undefined when unknown or no longer published. Asked only when the running slot has
   * no usable kept or built seed index: its published delta index then stands in for one. */
  runningRelease?: () => Promise<{ payload: PayloadInfo; delta?: unknown } | undefined>;
  budget: BudgetOptions;
  headers?: Record<string, string>;
  /** read-back through the slot handle or by path (installer.ts `readBack`). */
  readBack?: 'handle' | 'path';
  onProgress?: (p: InstallProgress) => void;
  log?: Logger;
  now?: () => number;
}

export type DeltaRouteResult =
  | { installed: true; stats: TransferStats; readBackSha256: string }
  /** install the full payload; `fallback` set when a delta was offered but could not be used. */
  | { installed: false; fallback?: { code: string; message: string } };

/** Failures that say the delta files as served do not match what was signed: no retry cures them. */
const PACK_FAULTS = new Set(['INSTALL_CHUNK_HASH_MISMATCH', 'INSTALL_PAYLOAD_OVERSIZED', 'MANIFEST_DELTA_INVALID', 'INSTALL_BAD_INDEX']);

type Plan = { section: DeltaSection; index: string[]; pack: string[]; thin?: string[] };

/** The delta to use, or why not (`undefined`: quietly not, e.g. mode off or a local source). */
function plan(o: Pick<DeltaRouteOptions, 'mode' | 'delta' | 'locate'>): Plan | { code: string; message: string } | undefined {
  if (o.mode === 'off' || o.delta === undefined) return undefined;
  const parsed = parseDeltaSection(o.delta);
  if (!parsed.ok) return { code: 'MANIFEST_DELTA_INVALID', message: parsed.why };
  if (!zstdBuiltIn()) return { code: 'INSTALL_DECOMPRESS', message: `node ${process.version} has no built-in zstd (delta needs Node 22.15 or later)` };
  const section = parsed.section;
  let index, pack;
  try {
    index = o.locate({ targetName: section.index.target, hashes: { sha256: section.index.sha256 } });
    pack = o.locate({ targetName: section.pack.target, hashes: { sha256: section.pack.sha256 } });
  } catch (e) {
    return { code: codeOf(e, 'DAEMON_NO_PAYLOAD_URL'), message: (e as Error).message };
  }
  // a directory or offline bundle: reading the whole payload costs no bandwidth
  if (!('urls' in index) || !('urls' in pack)) return undefined;
  // the thin index is optional: a device that cannot locate it fetches the full one
  let thin: ReturnType<Locate> | undefined;
  try {
    thin = section.thin ? o.locate({ targetName: section.thin.target, hashes: { sha256: section.thin.sha256 } }) : undefined;
  } catch {
    thin = undefined;
  }
  return { section, index: index.urls, pack: pack.urls, ...(thin && 'urls' in thin ? { thin: thin.urls } : {}) };
}

/**
 * The preflight of a delta install (before the target is marked bad): some mirror serves the delta
 * index and the pack with their signed lengths (one 1-byte Range request each). True: the install
 * will go by delta and needs no payload preflight; false: check the full payload as usual (the
 * install falls back to it). Never throws, never writes.
 */
export async function probeDelta(o: Pick<DeltaRouteOptions, 'mode' | 'delta' | 'locate' | 'headers'> & { timeoutMs?: number }): Promise<boolean> {
  const p = plan(o);
  if (p === undefined || !('section' in p)) return false;
  const served = async (urls: string[], length: number): Promise<boolean> => {
    for (const url of urls) {
      try {
        const a = await request(url, { ...o.headers, range: 'bytes=0-0' }, o.timeoutMs ?? 30_000);
        a.close();
        const total = /\/(\d+)$/.exec(String(a.headers['content-range'] ?? ''))?.[1];
        if ((a.status === 206 && Number(total) === length) || (a.status === 200 && Number(a.headers['content-length']) === length)) return true;
      } catch {
        // the next mirror
      }
    }
    return false;
  };
  return (await served(p.index, p.section.index.length)) && (await served(p.pack, p.section.pack.length));
}

/**
 * Installs `release` by delta when it can (see the module header). Resolves `installed: true` once
 * the slot holds the verified image (read back); `installed: false` when the caller must install the
 * full payload. Throws what a full install would throw for a failure after writing began (retryable
 * network errors, INSTALL_BUDGET_EXHAUSTED, slot I/O).
 */
export async function installByDelta(o: DeltaRouteOptions): Promise<DeltaRouteResult> {
  const log = o.log;
  const p = plan(o);
  // the slots' kept indexes (loaded before the target's is dropped: the slot still holds what it
  // describes until the first write, and every chunk taken on its word is verified anyway)
  const seeds: { target?: SeedInput; running?: SeedInput } = {};
  // the signed indexes held for the slots: what a thin index may be written against
  const bases: DeltaIndex[] = [];
  // what fetching the running slot's published index cost (counted with the install's download)
  let extra = { bytes: 0, requests: 0 };
  if (o.seedDir !== undefined) {
    if (p !== undefined && 'section' in p) {
      const target = await loadSeedIndex(o.seedDir, o.slot, o.resumeStatePath);
      if (target.ok) seeds.target = { ...target.seed, origin: target.kind };
      if (target.ok && target.kind === 'kept') bases.push(target.index);
      const running = o.running ? await loadSeedIndex(o.seedDir, o.running, o.resumeStatePath) : undefined;
      if (running?.ok) seeds.running = { ...running.seed, origin: running.kind };
      if (running?.ok && running.kind === 'kept') bases.push(running.index);
      let published: string | undefined;
      if (o.running && running?.ok !== true && o.runningRelease) {
        const got = await publishedSeed(o, o.running, o.seedDir);
        if (got.ok) {
          seeds.running = got.index;
          bases.push(got.index);
          extra = got.fetched;
        }
        published = got.ok ? 'used' : got.why;
      }
      log?.info({ target: target.ok ? target.kind : target.why, running: running === undefined ? 'no running slot' : running.ok ? running.kind : running.why, ...(published !== undefined ? { published } : {}) }, 'seed indexes');
    }
    // the slot is about to be written (by delta or in full): what it holds stops being what the index says
    await dropSeedIndex(o.seedDir, o.slot.slot);
  }
  if (p === undefined) return { installed: false };
  if (!('section' in p)) {
    log?.warn({ code: p.code, reason: p.message }, 'delta install not possible: installing the full payload');
    return { installed: false, fallback: p };
  }
  const section = p.section;
  const where = { index: { urls: p.index }, pack: { urls: p.pack } };

  const now = o.now ?? Date.now;
  const started = now();
  const record = await readResumeRecord(o.resumeStatePath, o.payload, o.slot.path);
  const spent = record.spent;
  const maxBytes = (o.budget.maxBytesFactor ?? 3) * o.release.length + o.payload.chunkSize - extra.bytes;
  const maxMs = o.budget.maxMs ?? 24 * 3600_000;
  let wrote = false;
  let received = 0;
  let last = { at: started, bytes: 0, rate: 0 };
  log?.info({ method: 'delta', slot: o.slot.slot, size: o.payload.size, deltaIndex: section.index.target, pack: section.pack.target, packLength: section.pack.length, spentBytes: spent.bytes }, 'install started');
  let r: DeltaInstallResult;
  try {
    r = await installDelta({
      index: { urls: where.index.urls, length: section.index.length, sha256: section.index.sha256 },
      ...(section.thin && p.thin ? { thin: { urls: p.thin, length: section.thin.length, sha256: section.thin.sha256, base: section.thin.base, rawSha256: section.thin.rawSha256 }, bases } : {}),
      pack: { urls: where.pack.urls, length: section.pack.length, sha256: section.pack.sha256 },
      slot: o.slot,
      expect: { size: o.payload.size, sha256: o.payload.sha256 },
      ...(o.readBack ? { readBack: o.readBack } : {}),
      ...(o.running ? { running: { path: o.running.path, size: await o.running.capacity() } } : {}),
      ...(o.headers ? { headers: o.headers } : {}),
      seeds,
      // an image the slots share little with goes in full (issue 25: never more than 1.05x a full update)
      fullBytes: o.release.length,
      budget: { bytes: Math.max(0, maxBytes - spent.bytes), ms: Math.max(0, maxMs - spent.ms) },
      onWriteStart: () => {
        wrote = true;
      },
      onReceived: (b) => {
        received = b;
      },
      onProgress: (p) => {
        const t = now();
        const dt = t - last.at;
        if (dt > 0) {
          const inst = ((p.bytes - last.bytes) * 1000) / dt;
          last = { at: t, bytes: p.bytes, rate: last.rate === 0 ? inst : 0.7 * last.rate + 0.3 * inst };
        }
        const left = p.total - p.bytes;
        o.onProgress?.({ bytes: p.bytes, total: p.total, rate: Math.round(last.rate), etaSeconds: last.rate > 0 ? left / last.rate : left === 0 ? 0 : null, method: 'delta', reused: p.reused, downloaded: p.downloaded });
      },
    });
  } catch (e) {
    const code = codeOf(e, 'INSTALL_NETWORK');
    const ended = isCoded(e, 'INSTALL_BUDGET_EXHAUSTED');
    // the spent budget rides in the resume record, summed over runs (cleared when the budget ended the attempt)
    if (record.found || received > 0 || extra.bytes > 0 || wrote) await writeResumeHint(o.resumeStatePath, o.payload, o.slot.path, record.nextChunk, false, ended ? {} : { spent: { ...spent, bytes: spent.bytes + received + extra.bytes, ms: spent.ms + (now() - started) } }).catch((err: unknown) => log?.warn({ err }, 'could not record install progress'));
    if (ended || codeOf(e) === 'INSTALL_ABORTED') throw e;
    if (code === 'INSTALL_DELTA_NOT_WORTH') {
      log?.info({ code, reason: (e as Error).message, ...(e as { details?: object }).details }, 'delta not worth it: installing the full payload');
      return { installed: false, fallback: { code, message: (e as Error).message } };
    }
    if (!wrote || PACK_FAULTS.has(code)) {
      log?.warn({ code, reason: (e as Error).message, wrote }, 'delta install failed: installing the full payload');
      return { installed: false, fallback: { code, message: (e as Error).message } };
    }
    throw e;
  }
  await writeResumeHint(o.resumeStatePath, o.payload, o.slot.path, o.payload.chunks.length, true);
  // the slot holds the image the new index describes (read back): keep it for the next delta install
  if (o.seedDir !== undefined) {
    const kept = await keepSeedIndex(o.seedDir, o.slot, { size: r.imageSize, sha256: r.readBackSha256 }, r.indexFile).catch((err: unknown) => {
      log?.warn({ err }, 'could not keep the seed index (the next delta install cuts the slot)');
      return false;
    });
    if (!kept) log?.info({ slot: o.slot.slot, indexLength: r.indexFile.length }, 'seed index not kept');
  }
  const stats: TransferStats = {
    method: 'delta',
    imageBytes: r.imageSize,
    reusedBytes: r.inPlace + r.copied,
    downloadedBytes: r.downloaded + extra.bytes,
    requests: r.requests + extra.requests,
    seedMismatches: r.seedMismatches,
    seedLookup: r.lookup,
  };
  log?.info({ ...stats, indexVia: r.indexVia, inPlace: r.inPlace, copied: r.copied, fetchedRaw: r.fetchedRaw, readBackSha256: r.readBackSha256, durationMs: r.durationMs }, 'install verified');
  return { installed: true, stats, readBackSha256: r.readBackSha256 };
}

/**
 * The running slot's seed from the signed delta index its committed release still publishes: the
 * release (from `runningRelease`) must offer a delta this daemon understands, cut like the new one
 * would need is judged later (delta.ts seedFits); the file is fetched capped at its signed length
 * (and MAX_KEPT_INDEX_BYTES), checked against its signed SHA-256, parsed, and must describe that
 * release's signed image. Then it is kept as the slot's seed index (the slot holds that image by
 * the device's state), so a resumed or later install need not fetch it again. Never throws: any
 * failure (pruned, unreachable, damaged) says why, and the running slot is cut as before.
 */
async function publishedSeed(o: DeltaRouteOptions, running: SlotWriter, seedDir: string): Promise<{ ok: true; index: DeltaIndex & { origin: 'published' }; fetched: { bytes: number; requests: number } } | { ok: false; why: string }> {
  try {
    const held = await o.runningRelease!();
    if (held === undefined) return { ok: false, why: 'the running slot\'s release is unknown or no longer published' };
    const p = plan({ mode: o.mode, delta: held.delta, locate: o.locate });
    if (p === undefined || !('section' in p)) return { ok: false, why: 'the running slot\'s release offers no usable delta index' };
    if (p.section.index.length > MAX_KEPT_INDEX_BYTES) return { ok: false, why: `its delta index is ${p.section.index.length} bytes, over the ${MAX_KEPT_INDEX_BYTES} cap` };
    const f = await fetchVerified({ urls: p.index, length: p.section.index.length, sha256: p.section.index.sha256 }, o.headers ?? {}, 30_000);
    const index = parseDeltaIndex(f.bytes);
    if (index.header.imageSize !== held.payload.size || index.header.imageSha256 !== held.payload.sha256) return { ok: false, why: 'its delta index describes another image than the release signs' };
    const kept = await keepSeedIndex(seedDir, running, { size: index.header.imageSize, sha256: index.header.imageSha256 }, f.bytes).catch(() => false);
    o.log?.info({ slot: running.slot, target: p.section.index.target, indexLength: f.bytes.length, kept }, 'running slot: its release\'s published delta index used as its seed');
    return { ok: true, index: Object.assign(index, { origin: 'published' as const }), fetched: { bytes: f.bytes.length, requests: f.requests } };
  } catch (e) {
    return { ok: false, why: `its delta index could not be used (${codeOf(e, 'error')})` };
  }
}

/**
 * After a FULL install of a release that offers a delta (a fallback, or delta unused this time):
 * fetches its delta index (capped at and checked against its signed length and SHA-256; a few
 * hundred KiB per GiB of image) and keeps it for the slot, so the next delta install does not have
 * to cut that slot. `slotSha256` is the image hash the slot was read back with. Best effort: never
 * throws, returns whether an index was kept (false: no usable delta, local source, a fetch or check
 * that failed, over the cap).
 */
export async function keepIndexAfterFull(o: Pick<DeltaRouteOptions, 'mode' | 'delta' | 'locate' | 'headers' | 'slot' | 'payload' | 'log'> & { seedDir: string; slotSha256: string }): Promise<boolean> {
  const p = plan(o);
  if (p === undefined || !('section' in p) || o.slotSha256 !== o.payload.sha256) return false;
  try {
    const f = await fetchVerified({ urls: p.index, length: p.section.index.length, sha256: p.section.index.sha256 }, o.headers ?? {}, 30_000);
    const h = parseDeltaIndex(f.bytes).header;
    if (h.imageSize !== o.payload.size || h.imageSha256 !== o.payload.sha256) return false;
    return await keepSeedIndex(o.seedDir, o.slot, { size: h.imageSize, sha256: h.imageSha256 }, f.bytes);
  } catch (err) {
    o.log?.warn({ err }, 'could not keep the delta index after a full install (the next delta install cuts the slot)');
    return false;
  }
}

/**
 * Delta install: writes a release's image into the inactive slot from chunks the device already
 * holds plus a few coalesced multi-range fetches of the release's delta pack (manifests/delta.ts).
 *
 * 1. The delta index is fetched (capped at its signed length) and checked against its signed
 *    SHA-256, then parsed.
 * 2. Both slots are cut into content-defined chunks with the index's parameters: the running slot
 *    (only ever read) and the target slot (what is on it now: the release before, or a half-written
 *    copy of this one after a power cut).
 * 3. Every chunk of the new image, in image order, gets a source: already in place in the target
 *    slot (same offset: nothing to write), written earlier in this run, in the running slot, further
 *    ahead in the target slot (a region not yet overwritten: source offset >= the write position),
 *    or the pack. The pack frames to fetch are coalesced into at most `maxRequests` requests of up
 *    to `maxRangesPerRequest` ranges each (gaps between frames are read and dropped when that is
 *    what keeps the request count bounded).
 * 4. Every chunk, copied or fetched, is hashed and compared with the signed index before it is
 *    written; a local copy that does not match (a stale seed, a flipped bit) is fetched instead.
 *    The whole image is then read back and compared with the signed image hash.
 *
 * Resume needs no record: a restarted install re-cuts the target slot, and the part written before
 * the cut comes out as the same chunks at the same offsets (chunk boundaries depend only on
 * content), so it is found in place, verified, and skipped.
 *
 * Power-cut safety: the target slot is marked bad by the caller before this runs (as for a full
 * install); nothing here touches the running slot but reads.
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import zlib from 'node:zlib';
import { SlotflipError } from '../../hal/errors.js';
import type { SlotWriter } from '../../hal/slot-writer.js';
import { chunkFile } from '../../manifests/cdc.js';
import { parseDeltaIndex, type DeltaIndex } from '../../manifests/delta.js';
import { verifySlotImage } from './read-back.js';

export interface DeltaFile {
  /** URLs of the file (mirrors, tried in order). */
  urls: string[];
  /** signed length and SHA-256 of the file. */
  length: number;
  sha256: string;
}

export interface DeltaProgress {
  /** image bytes verified and in place so far. */
  bytes: number;
  total: number;
  /** of those, bytes found in a slot (copied or already in place). */
  reused: number;
  /** pack bytes received so far (index file included). */
  downloaded: number;
}

export interface DeltaInstallOptions {
  index: DeltaFile;
  pack: DeltaFile;
  /** the target slot, already marked bad by the caller. */
  slot: SlotWriter;
  /** the running slot, read-only: its path and how many bytes of it to index. */
  running?: { path: string; size: number };
  /** extra request headers (authorization). */
  headers?: Record<string, string>;
  /** at most this many HTTP requests for the pack (default 50). */
  maxRequests?: number;
  /** ranges per request (default 200: the Range header stays under nginx's 8 KiB header buffer). */
  maxRangesPerRequest?: number;
  onProgress?: (p: DeltaProgress) => void;
  signal?: AbortSignal;
  /** ms without response headers or body bytes before a request fails (default 30 000). */
  timeoutMs?: number;
  /** the attempt's download budget left for this run: bytes received (index and pack together) and
   * ms; past either: INSTALL_BUDGET_EXHAUSTED (not retryable), as for a full install. */
  budget?: { bytes: number; ms: number };
  /** called once, right before the first byte is written to the slot: until then a failure has
   * changed nothing on the slot (the caller may install the full payload instead). */
  onWriteStart?: () => void;
  /** called once when the run ends, success or failure, with the bytes it received (for the
   * attempt's spent budget). */
  onReceived?: (bytes: number) => void;
  /** the signed image (the release's payload): a delta index describing another image is refused
   * before anything is written (INSTALL_BAD_INDEX). */
  expect?: { size: number; sha256: string };
  /** how the slot is read back at the end: through the slot handle (default; any SlotWriter) or by
   * `slot.path` with O_DIRECT into one reused buffer (the medium, not the page cache; no allocation
   * per read: lower peak memory) for hal's own file and device slots (installer.ts `readBack`). */
  readBack?: 'handle' | 'path';
}

export interface DeltaInstallResult {
  imageSize: number;
  /** bytes already in place in the target slot (resumed or unchanged). */
  inPlace: number;
  /** bytes copied from a slot (running, target ahead, or earlier in this image). */
  copied: number;
  /** image bytes that came from the pack. */
  fetchedRaw: number;
  /** bytes received: index file + pack responses (gaps and multipart framing included). */
  downloaded: number;
  /** HTTP requests made (index included). */
  requests: number;
  /** local copies that did not match the index and were fetched instead. */
  seedMismatches: number;
  readBackSha256: string;
  durationMs: number;
}

type Src = { kind: 'inplace' } | { kind: 'written' | 'target'; offset: number } | { kind: 'running'; offset: number } | { kind: 'fetch' };

const KEY = (hex: string): string => hex.slice(0, 16);
/** largest run of chunks read (and written) at once. */
const RUN_BYTES = 1 << 20;

/** Plan of where each pack frame range comes from: merged ranges and the frames in them. */
interface FetchRange {
  start: number;
  end: number; // exclusive
}

/** Coalesces frame ranges until at most `budget` remain (merging the smallest gaps first). Pure. */
export function coalesce(frames: FetchRange[], budget: number): FetchRange[] {
  const merged: FetchRange[] = [];
  for (const f of frames) {
    const last = merged[merged.length - 1];
    if (last && f.start <= last.end) last.end = Math.max(last.end, f.end);
    else merged.push({ ...f });
  }
  if (merged.length <= budget) return merged;
  // smallest gap threshold that brings the count within budget
  const gaps = merged.slice(1).map((r, i) => r.start - merged[i]!.end).sort((a, b) => a - b);
  const threshold = gaps[merged.length - budget - 1]!;
  const out: FetchRange[] = [];
  for (const r of merged) {
    const last = out[out.length - 1];
    if (last && r.start - last.end <= threshold) last.end = r.end;
    else out.push({ ...r });
  }
  return out;
}

export interface HttpAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: AsyncIterable<Buffer>;
  close(): void;
}

/** One GET (no keep-alive, identity encoding); rejects with INSTALL_NETWORK / INSTALL_STALLED. */
export function request(url: string, headers: Record<string, string>, timeoutMs: number, signal?: AbortSignal): Promise<HttpAnswer> {
  const u = new URL(url);
  const mod = u.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(u, { method: 'GET', headers: { ...headers, 'accept-encoding': 'identity' }, agent: false, signal });
    const timer = setTimeout(() => req.destroy(new SlotflipError('INSTALL_STALLED', `${url}: no response within ${timeoutMs} ms`, { retryable: true, details: { url } })), timeoutMs);
    req.on('error', (cause) => {
      clearTimeout(timer);
      reject(cause instanceof SlotflipError ? cause : new SlotflipError('INSTALL_NETWORK', `${url}: request failed (${(cause as NodeJS.ErrnoException).code ?? cause.message}); check the network and the URL`, { cause, retryable: true, details: { url } }));
    });
    req.on('response', (res) => {
      clearTimeout(timer);
      res.setTimeout(timeoutMs, () => res.destroy(new SlotflipError('INSTALL_STALLED', `${url}: no bytes for ${timeoutMs} ms`, { retryable: true, details: { url } })));
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body: res, close: () => res.destroy() });
    });
    req.end();
  });
}

/** Fetches a whole small file (the delta index), refusing more than `length` bytes and a hash other than `sha256`. */
async function fetchVerified(file: DeltaFile, headers: Record<string, string>, timeoutMs: number, signal?: AbortSignal): Promise<{ bytes: Buffer; requests: number }> {
  let last: unknown;
  let requests = 0;
  for (const url of file.urls) {
    requests++;
    try {
      const a = await request(url, headers, timeoutMs, signal);
      if (a.status !== 200) {
        a.close();
        throw new SlotflipError('INSTALL_HTTP_STATUS', `${url}: HTTP ${a.status}; check the URL and the server`, { retryable: true, details: { url, status: a.status } });
      }
      const parts: Buffer[] = [];
      let n = 0;
      for await (const d of a.body) {
        n += d.length;
        if (n > file.length) {
          a.close();
          throw new SlotflipError('INSTALL_PAYLOAD_OVERSIZED', `${url}: more than the signed ${file.length} bytes; the mirror holds a different file`, { retryable: true, details: { url } });
        }
        parts.push(d);
      }
      const bytes = Buffer.concat(parts);
      const sha = createHash('sha256').update(bytes).digest('hex');
      if (bytes.length !== file.length || sha !== file.sha256) {
        throw new SlotflipError('INSTALL_PAYLOAD_CORRUPT', `${url}: delta index is ${bytes.length} bytes with SHA-256 ${sha}, signed ${file.length} / ${file.sha256}; the mirror holds a different file`, { retryable: true, details: { url } });
      }
      return { bytes, requests };
    } catch (e) {
      last = e;
      if (signal?.aborted) throw e;
    }
  }
  throw last;
}

/**
 * Reads the frames `[start,end)` of `frames` (sorted, inside `ranges`) from one multi-range answer,
 * yielding each frame's bytes complete and in order. Handles 206 multipart/byteranges, a single-part
 * 206, and a 200 whole-file answer (bytes outside the frames are dropped).
 */
async function* readFrames(a: HttpAnswer, url: string, frames: { off: number; len: number }[], packLength: number, count: { bytes: number }): AsyncGenerator<Buffer> {
  let k = 0;
  let cur: Buffer | undefined;
  let got = 0;
  // feed a body slice at absolute pack offset `at`; returns the frames completed by it
  function* feed(at: number, d: Buffer): Generator<Buffer> {
    let pos = at;
    const end = at + d.length;
    while (k < frames.length && pos < end) {
      const f = frames[k]!;
      const want = f.off + got; // absolute offset of the next byte of frame k
      if (want < pos) throw new SlotflipError('INSTALL_HTTP_STATUS', `${url}: the answer skipped pack bytes ${want}..${pos - 1}`, { retryable: true, details: { url } });
      if (want >= end) return;
      const from = want - at;
      const take = Math.min(f.len - got, end - want);
      cur ??= Buffer.allocUnsafe(f.len);
      d.copy(cur, got, from, from + take);
      got += take;
      pos = want + take;
      if (got === f.len) {
        const done = cur;
        cur = undefined;
        got = 0;
        k++;
        yield done;
      }
    }
  }
  const ctype = String(a.headers['content-type'] ?? '');
  const mb = /^multipart\/byteranges;\s*boundary="?([^";]+)"?/i.exec(ctype);
  if (a.status === 200 || (a.status === 206 && !mb)) {
    let at = 0;
    if (a.status === 206) {
      const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(a.headers['content-range'] ?? ''));
      if (!m) throw new SlotflipError('INSTALL_HTTP_STATUS', `${url}: 206 without a usable Content-Range`, { retryable: true, details: { url } });
      at = Number(m[1]);
    }
    for await (const d of a.body) {
      count.bytes += d.length;
      yield* feed(at, d);
      at += d.length;
      if (k === frames.length) break;
    }
  } else if (a.status === 206) {
    const delim = Buffer.from(`--${mb![1]}`);
    let pending: Buffer = Buffer.alloc(0);
    let partLeft = 0;
    let partAt = 0;
    outer: for await (const d0 of a.body) {
      count.bytes += d0.length;
      let d: Buffer = d0;
      while (d.length > 0) {
        if (partLeft > 0) {
          const take = Math.min(partLeft, d.length);
          yield* feed(partAt, d.subarray(0, take));
          partAt += take;
          partLeft -= take;
          d = d.subarray(take);
          if (k === frames.length) break outer;
          continue;
        }
        pending = pending.length === 0 ? d : Buffer.concat([pending, d]);
        d = Buffer.alloc(0);
        const b = pending.indexOf(delim);
        const hEnd = b < 0 ? -1 : pending.indexOf('\r\n\r\n', b);
        if (hEnd < 0) {
          if (pending.length > 64 << 10) throw new SlotflipError('INSTALL_HTTP_STATUS', `${url}: no multipart part header within 64 KiB`, { retryable: true, details: { url } });
          continue;
        }
        const head = pending.subarray(b + delim.length, hEnd).toString('latin1');
        if (head.startsWith('--')) break outer;
        const m = /content-range:\s*bytes (\d+)-(\d+)\/(\d+|\*)/i.exec(head);
        if (!m) throw new SlotflipError('INSTALL_HTTP_STATUS', `${url}: multipart part without Content-Range`, { retryable: true, details: { url } });
        if (m[3] !== '*' && Number(m[3]) !== packLength) throw new SlotflipError('INSTALL_PAYLOAD_OVERSIZED', `${url}: pack is ${m[3]} bytes, signed ${packLength}; the mirror holds a different file`, { retryable: true, details: { url } });
        partAt = Number(m[1]);
        partLeft = Number(m[2]) - partAt + 1;
        d = pending.subarray(hEnd + 4);
        pending = Buffer.alloc(0);
      }
    }
  } else {
    throw new SlotflipError('INSTALL_HTTP_STATUS', `${url}: HTTP ${a.status}; check the URL and the server`, { retryable: a.status >= 500 || a.status === 404 || a.status === 429, details: { url, status: a.status } });
  }
  if (k < frames.length) throw new SlotflipError('INSTALL_PAYLOAD_TRUNCATED', `${url}: answer ended before pack byte ${frames[k]!.off + got}`, { retryable: true, details: { url } });
}

function zstdDecode(frame: Buffer, rawLen: number): Buffer {
  const sync = (zlib as unknown as { zstdDecompressSync?: (b: Buffer, o?: object) => Buffer }).zstdDecompressSync;
  if (!sync) throw new SlotflipError('INSTALL_DECOMPRESS', `node ${process.version} has no built-in zstd; delta installs need Node 22.15 or later (install the full payload instead)`);
  return sync(frame, { maxOutputLength: rawLen });
}

/** Cuts a slot (or part of it) into chunks with the index's parameters: short key of SHA-256 → offsets,
 * and offset → key. */
async function lookupOf(path: string, size: number, idx: DeltaIndex, signal?: AbortSignal): Promise<{ byKey: Map<string, number[]>; at: Map<number, string> }> {
  const byKey = new Map<string, number[]>();
  const at = new Map<number, string>();
  if (size <= 0) return { byKey, at };
  await chunkFile(path, idx.header.cdc, {
    size,
    keep: false,
    ...(signal ? { signal } : {}),
    onChunk: (c) => {
      const k = KEY(c.sha256);
      at.set(c.offset, k);
      const l = byKey.get(k);
      if (l) l.push(c.offset);
      else byKey.set(k, [c.offset]);
    },
  });
  return { byKey, at };
}

export async function installDelta(opts: DeltaInstallOptions): Promise<DeltaInstallResult> {
  const started = performance.now();
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const headers = opts.headers ?? {};
  const maxRequests = opts.maxRequests ?? 50;
  const perRequest = opts.maxRangesPerRequest ?? 200;

  const fetched = await fetchVerified(opts.index, headers, timeoutMs, opts.signal);
  let requests = fetched.requests;
  let downloaded = fetched.bytes.length;
  const idx = parseDeltaIndex(fetched.bytes);
  const h = idx.header;
  if (opts.expect && (h.imageSize !== opts.expect.size || h.imageSha256 !== opts.expect.sha256)) {
    throw new SlotflipError('INSTALL_BAD_INDEX', `delta index describes an image of ${h.imageSize} bytes with SHA-256 ${h.imageSha256}, the release signs ${opts.expect.size} / ${opts.expect.sha256}; the release was published wrong`, { details: { imageSize: h.imageSize, imageSha256: h.imageSha256 } });
  }
  if (h.packLength !== opts.pack.length) throw new SlotflipError('INSTALL_BAD_INDEX', `delta index says the pack is ${h.packLength} bytes, signed ${opts.pack.length}; the release metadata is wrong`, { details: {} });
  const capacity = await opts.slot.capacity();
  if (capacity < h.imageSize) {
    throw new SlotflipError('INSTALL_SLOT_TOO_SMALL', `slot ${opts.slot.slot} (${opts.slot.path}) holds ${capacity} bytes but the image needs ${h.imageSize}; repartition or pick a smaller image`, { details: { capacity, size: h.imageSize } });
  }

  // 2. what both slots hold now
  const target = await lookupOf(opts.slot.path, capacity, idx, opts.signal);
  const running = opts.running ? await lookupOf(opts.running.path, opts.running.size, idx, opts.signal) : { byKey: new Map<string, number[]>(), at: new Map<number, string>() };

  // 3. plan
  const n = h.chunkCount;
  const sources: Src[] = new Array(n);
  const firstAt = new Float64Array(h.uniqueCount).fill(-1);
  const toFetch: { u: number; off: number; len: number }[] = [];
  let pos = 0;
  for (let i = 0; i < n; i++) {
    const u = idx.refs[i]!;
    const key = idx.shas.toString('hex', u * 32, u * 32 + 8);
    const len = idx.rawLen[u]!;
    const inTarget = target.byKey.get(key);
    const ahead = inTarget?.find((o) => o >= pos);
    let s: Src;
    if (target.at.get(pos) === key) s = { kind: 'inplace' };
    else if (firstAt[u]! >= 0) s = { kind: 'written', offset: firstAt[u]! };
    else if (running.byKey.has(key)) s = { kind: 'running', offset: running.byKey.get(key)![0]! };
    else if (ahead !== undefined) s = { kind: 'target', offset: ahead };
    else {
      s = { kind: 'fetch' };
      toFetch.push({ u, off: idx.packOff[u]!, len: idx.packLen[u]! });
    }
    if (firstAt[u]! < 0) firstAt[u] = pos;
    sources[i] = s;
    pos += len;
  }
  target.byKey.clear();
  target.at.clear();
  running.byKey.clear();
  running.at.clear();

  // 4. fetch requests: ranges bounded by maxRequests × perRequest, frames in pack order
  const ranges = coalesce(
    toFetch.map((f) => ({ start: f.off, end: f.off + f.len })),
    maxRequests * perRequest,
  );
  const batches: FetchRange[][] = [];
  for (let i = 0; i < ranges.length; i += perRequest) batches.push(ranges.slice(i, i + perRequest));
  let fi = 0; // next frame of toFetch
  const wire = { bytes: 0 }; // pack response body bytes received (gaps and multipart framing included)
  async function* frameStream(): AsyncGenerator<Buffer> {
    for (const batch of batches) {
      const last = batch[batch.length - 1]!;
      const frames: { off: number; len: number }[] = [];
      for (let j = fi; j < toFetch.length && toFetch[j]!.off < last.end; j++) frames.push(toFetch[j]!);
      let attempt = 0;
      let delivered = 0;
      for (;;) {
        const url = opts.pack.urls[attempt % opts.pack.urls.length]!;
        const want = frames.slice(delivered);
        const rs = coalesce(want.map((f) => ({ start: f.off, end: f.off + f.len })), perRequest);
        requests++;
        try {
          const a = await request(url, { ...headers, range: `bytes=${rs.map((r) => `${r.start}-${r.end - 1}`).join(',')}` }, timeoutMs, opts.signal);
          try {
            for await (const fr of readFrames(a, url, want, h.packLength, wire)) {
              delivered++;
              yield fr;
            }
          } finally {
            a.close();
          }
          break;
        } catch (e) {
          if (opts.signal?.aborted || !(e instanceof SlotflipError) || !e.retryable || ++attempt >= 4 * opts.pack.urls.length) throw e;
          await new Promise((r) => setTimeout(r, 200 * attempt));
        }
      }
      fi += frames.length;
    }
  }
  const stream = frameStream();

  const fetchOne = async (u: number): Promise<Buffer> => {
    // a local copy that failed verification: this one frame, on its own request
    const url = opts.pack.urls[0]!;
    requests++;
    const a = await request(url, { ...headers, range: `bytes=${idx.packOff[u]}-${idx.packOff[u]! + idx.packLen[u]! - 1}` }, timeoutMs, opts.signal);
    try {
      for await (const fr of readFrames(a, url, [{ off: idx.packOff[u]!, len: idx.packLen[u]! }], h.packLength, wire)) return fr;
    } finally {
      a.close();
    }
    throw new SlotflipError('INSTALL_PAYLOAD_TRUNCATED', `${url}: no frame`, { retryable: true });
  };

  const expect = (u: number): Buffer => idx.shas.subarray(u * 32, u * 32 + 32);
  const okBytes = (u: number, b: Buffer): boolean => b.length === idx.rawLen[u] && createHash('sha256').update(b).digest().equals(expect(u));
  const decodeChecked = (u: number, frame: Buffer, url = 'pack'): Buffer => {
    let raw: Buffer;
    try {
      raw = zstdDecode(frame, idx.rawLen[u]!);
    } catch (cause) {
      if (cause instanceof SlotflipError) throw cause;
      throw new SlotflipError('INSTALL_CHUNK_HASH_MISMATCH', `${url}: pack frame ${u} does not decompress; the mirror holds a different file`, { cause, retryable: true, details: { frame: u } });
    }
    if (!okBytes(u, raw)) throw new SlotflipError('INSTALL_CHUNK_HASH_MISMATCH', `${url}: pack frame ${u} does not match the signed index; the mirror holds a different file`, { retryable: true, details: { frame: u } });
    return raw;
  };

  const out = await opts.slot.open();
  const runningFh = opts.running ? await open(opts.running.path, 'r') : undefined;
  let inPlace = 0;
  let copied = 0;
  let fetchedRaw = 0;
  let seedMismatches = 0;
  let done = 0;
  let lastReport = 0;
  let lastBytes = 0;
  let writing = false;
  const runBuf = Buffer.allocUnsafeSlow(RUN_BYTES);
  let lastWritten: { u: number; data: Buffer } | undefined;
  const overBudget = (): void => {
    const b = opts.budget;
    if (!b) return;
    const got = downloaded + wire.bytes;
    const ms = performance.now() - started;
    if (got > b.bytes || ms > b.ms) {
      throw new SlotflipError('INSTALL_BUDGET_EXHAUSTED', `delta install: ${got > b.bytes ? `${got} bytes received, over the ${b.bytes} left in this attempt's download budget` : `${Math.round(ms / 1000)} s spent, over the ${Math.round(b.ms / 1000)} s left in this attempt's download budget`}; the attempt ends (config download.maxBytesFactor / maxMinutes)`, { details: { received: got, budgetBytes: b.bytes, ms: Math.round(ms), budgetMs: Math.round(b.ms) } });
    }
  };
  const report = (force = false): void => {
    if (!opts.onProgress) return;
    // every 250 ms or every 1/64 of the image, whichever comes first
    const now = performance.now();
    if (!force && now - lastReport < 250 && done - lastBytes < h.imageSize / 64) return;
    lastReport = now;
    lastBytes = done;
    opts.onProgress({ bytes: done, total: h.imageSize, reused: inPlace + copied, downloaded: downloaded + wire.bytes });
  };
  try {
    pos = 0;
    for (let i = 0; i < n; i++) {
      opts.signal?.throwIfAborted();
      const u = idx.refs[i]!;
      const len = idx.rawLen[u]!;
      const s = sources[i]!;
      let data: Buffer | undefined;
      // Runs: consecutive chunks in place, or contiguous in the running slot (an unchanged region),
      // take one read of up to RUN_BYTES (and, for copies, one write) instead of one per chunk; each
      // chunk of the run is still verified. A run stops before the first chunk that does not match,
      // which then takes the single-chunk path below (counted, fetched instead).
      if (s.kind === 'inplace' || s.kind === 'running') {
        let j = i + 1;
        let runLen = len;
        for (; j < n; j++) {
          const sj = sources[j]!;
          const lj = idx.rawLen[idx.refs[j]!]!;
          if (sj.kind !== s.kind || (s.kind === 'running' && (sj as { offset: number }).offset !== s.offset + runLen) || runLen + lj > RUN_BYTES) break;
          runLen += lj;
        }
        if (j - i > 1) {
          let buf: Buffer;
          if (s.kind === 'inplace') {
            const b = await out.readAt(runLen, pos);
            buf = Buffer.from(b.buffer, b.byteOffset, b.length);
          } else {
            const { bytesRead } = await runningFh!.read(runBuf, 0, runLen, s.offset);
            buf = runBuf.subarray(0, bytesRead);
          }
          let ok = 0;
          let k = i;
          for (; k < j; k++) {
            const uk = idx.refs[k]!;
            const lk = idx.rawLen[uk]!;
            if (ok + lk > buf.length || !okBytes(uk, buf.subarray(ok, ok + lk))) break;
            ok += lk;
          }
          if (k > i) {
            if (s.kind === 'running') {
              if (!writing) {
                writing = true;
                opts.onWriteStart?.();
              }
              await out.writeAt(buf.subarray(0, ok), pos);
              copied += ok;
            } else inPlace += ok;
            done += ok;
            pos += ok;
            report();
            i = k - 1; // the loop's i++ continues at k
            continue;
          }
        }
      }
      // the same chunk as the one written last (runs of zeros, repeated blocks): its verified bytes
      // are still in memory
      if (s.kind === 'written' && lastWritten?.u === u) {
        await out.writeAt(lastWritten.data, pos);
        copied += len;
        done += len;
        pos += len;
        report();
        continue;
      }
      if (s.kind === 'inplace') {
        const b = await out.readAt(len, pos);
        if (okBytes(u, Buffer.from(b.buffer, b.byteOffset, b.length))) {
          inPlace += len;
          done += len;
          pos += len;
          report();
          continue;
        }
        seedMismatches++;
      } else if (s.kind === 'written' || s.kind === 'target') {
        const b = await out.readAt(len, s.offset);
        const buf = Buffer.from(b.buffer, b.byteOffset, b.length);
        if (okBytes(u, buf)) data = buf;
        else seedMismatches++;
      } else if (s.kind === 'running') {
        const buf = Buffer.allocUnsafe(len);
        const { bytesRead } = await runningFh!.read(buf, 0, len, s.offset);
        if (bytesRead === len && okBytes(u, buf)) data = buf;
        else seedMismatches++;
      }
      if (data) copied += len;
      else if (s.kind === 'fetch') {
        overBudget();
        const r = await stream.next();
        if (r.done) throw new SlotflipError('INSTALL_PAYLOAD_TRUNCATED', 'pack answers ended early', { retryable: true });
        data = decodeChecked(u, r.value);
        fetchedRaw += len;
      } else {
        overBudget();
        const fr = await fetchOne(u);
        data = decodeChecked(u, fr);
        fetchedRaw += len;
      }
      if (!writing) {
        writing = true;
        opts.onWriteStart?.();
      }
      await out.writeAt(data, pos);
      // (every `data` here is a buffer of its own, never a view of the reused run buffer)
      lastWritten = { u, data };
      done += len;
      pos += len;
      report();
    }
    await out.flush();
  } finally {
    opts.onReceived?.(downloaded + wire.bytes);
    await stream.return(undefined).catch(() => undefined);
    await out.close().catch(() => undefined);
    await runningFh?.close().catch(() => undefined);
  }
  report(true);
  downloaded += wire.bytes;
  await verifySlotImage(opts.slot, { compression: 'zstd', size: h.imageSize, sha256: h.imageSha256, chunkSize: 0, chunks: [] }, { source: opts.readBack ?? 'handle' });
  return { imageSize: h.imageSize, inPlace, copied, fetchedRaw, downloaded, requests, seedMismatches, readBackSha256: h.imageSha256, durationMs: Math.round(performance.now() - started) };
}

/**
 * Delta install: writes a release's image into the inactive slot from chunks the device already
 * holds plus a few coalesced multi-range fetches of the release's delta pack (manifests/delta.ts).
 *
 * 1. The delta index is fetched (capped at its signed length) and checked against its signed
 *    SHA-256, then parsed. When the release also publishes its index written against an earlier
 *    release's (`thin`, manifests/delta-thin.ts) and a slot's kept index is that one (`bases`), the
 *    thin file is fetched instead (signed length and SHA-256 as well), the full index rebuilt from it
 *    and the kept one and checked against the signed SHA-256 of its bytes; anything that does not fit
 *    and the full index is fetched after all.
 * 2. What the slots hold: the running slot (only ever read) from its seed index (below) or cut into
 *    content-defined chunks with the index's parameters; the target slot (what is on it now: the
 *    release before, or a half-written copy of this one after a power cut) from its seed index, else
 *    PROBED: read once in order, each chunk of the new image hashed at the offset it goes to (native
 *    SHA-256, no JS chunker: what an earlier run wrote and what did not move are found in place).
 *    The target is also cut (to find chunks that moved within it) only when more than
 *    `cutTargetAboveBytes` (default 4 MiB per GiB of slot) of pack bytes are still to fetch after the
 *    running slot and the probe: the cut reads and chunks the whole slot again and can save no more
 *    than that (bandwidth is what a fleet pays for: a byte saved is worth 256 read).
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
 * Kept seed indexes (seed-index.ts): a slot this daemon last wrote has the signed delta index of the
 * image it wrote kept in the state dir, a slot it never wrote the index the idle daemon built of it
 * (idle-index.ts), and the booted slot's committed release may still publish its own signed delta
 * index (route.ts fetches it when nothing is kept). When the caller passes it (`seeds`), step 2 reads the
 * slot's chunks from that index instead of cutting the slot (no slot byte read, no JS chunker on the
 * critical path). Safety does not rest on the kept index: it only says where a chunk probably is;
 * step 4 verifies every copied chunk against the NEW signed index before it is written, so a stale
 * kept index (the slot changed behind the daemon's back) costs a mismatch and a fetch, never a wrong
 * byte on the slot. A kept index cut with other CDC parameters than the new one is not used (its
 * chunks would not line up): the slot is cut as before.
 *
 * Not worth it: once both slots are looked up (before a byte of the pack is fetched or the slot
 * written), the pack ranges to fetch are known; when they come to more than 7/8 of `fullBytes` (the
 * full payload; `minSavedFraction`) and more than 4 MiB (SMALL_DELTA_BYTES: below that only more than
 * the full payload counts, the work is small either way), installDelta stops with INSTALL_DELTA_NOT_WORTH and the caller
 * installs the full payload: an image the slots share little with costs the full payload plus the
 * delta index, never more. Judged early too, so that such an install costs little more than the
 * full one (bench:memory's 1 GiB install onto empty slots: 26 s before, both slots read and cut,
 * where the full install takes ~5 s): what the slots looked up by their seed indexes do not hold
 * bounds the fetch from below; a slot with no usable seed is SAMPLED first (SAMPLE_EVERY: 1/16 of it,
 * in 64 or more windows spread over it, each cut into chunks; images under ~256 MiB-1 GiB, whose
 * windows would be too short, are not sampled) and its estimate counted SAMPLE_MARGIN (2) times; the
 * install stops when even that leaves the delta not worth it, and again after the running slot is
 * cut, with the target's estimate, before the target is read whole. An estimate can be wrong only
 * towards a full install (bandwidth, never safety): reusable bytes would have to sit between the
 * windows, which are never more than 1/64 of the image apart.
 * Why not up to the full payload itself: a byte fetched by delta costs far
 * more work than a streamed one (a frame at a time, each chunk decoded, verified and written on its
 * own, interpreted), and what it reuses is copied from the slots; bench:memory's 1 GiB install of a
 * semi-random image went by delta for a 0.7 % saving in 39 s, 27 s of CPU and 130 MiB, where the
 * full payload takes about 5 s and 90 MiB.
 *
 * Memory: the chunk lookups are typed arrays (SlotLookup, 20 bytes a chunk), the plan one byte and
 * one offset a chunk; every slot read goes into one of three reused buffers (a 1 MiB run, one chunk,
 * the chunk written last), so the install allocates per chunk only what it fetches and decodes. A slot
 * cut runs as WebAssembly (manifests/cdc-wasm.ts) over a 1 MiB buffer, with V8's optimizing compilers
 * left off (they cost ~13 MiB of RSS that stayed).
 *
 * Resume needs no record: a restarted install probes (or re-cuts) the target slot, and the part
 * written before the cut is the new image's chunks at their own offsets, so it is found in place,
 * verified, and skipped.
 *
 * Power-cut safety: the target slot is marked bad by the caller before this runs (as for a full
 * install); nothing here touches the running slot but reads.
 */
import { createHash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import https from 'node:https';
import zlib from 'node:zlib';
import { SlotflipError } from '../../hal/errors.js';
import { readFull } from '../../hal/read-full.js';
import type { SlotWriter } from '../../hal/slot-writer.js';
import { parseDeltaIndex, parseRawDeltaIndex, unfilterChunk, type DeltaIndex } from '../../manifests/delta.js';
import { applyThinIndex } from '../../manifests/delta-thin.js';
import type { SeedLookupKind } from '../machine.js';
import { verifySlotImage } from './read-back.js';
import { cutBuffer } from '../../manifests/cdc.js';
import { cutSlot, seedOfIndex, type SlotSeed } from './seed-index.js';
import type { IncomingHttpHeaders } from 'node:http';
import { nodeHttp } from '../../hal/builtins.js';
const http = nodeHttp();

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
  /** the index written against an earlier one (section `thin`): used when `bases` holds that one. */
  thin?: DeltaFile & { base: string; rawSha256: string };
  /** signed delta indexes the device holds (its slots' kept indexes): a thin index's possible bases. */
  bases?: DeltaIndex[];
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
  /** kept or built seed indexes (seed-index.ts) of what the slots hold, used instead of cutting
   * them (a signed delta index is taken as is). A hint only: every chunk copied on its word is
   * verified against the new signed index first. */
  seeds?: { target?: SeedInput; running?: SeedInput };
  /** the bytes a full install would download (the release's payload length): when the pack ranges
   * this install would fetch come to more, it stops before fetching or writing anything with
   * INSTALL_DELTA_NOT_WORTH (the caller installs the full payload: an image the slots share little
   * with never costs more than the full update plus the delta index). */
  fullBytes?: number;
  /** the share of `fullBytes` a delta must save to go ahead (default 1/8, MIN_SAVED_FRACTION). */
  minSavedFraction?: number;
  /** a target slot without a usable seed index is probed (each new chunk hashed at the offset it
   * goes to: what is in place is found, no JS chunker) and also cut (to find chunks that moved) only
   * when more than this many pack bytes are still to fetch after that (default the slot's capacity /
   * CUT_TARGET_READ_RATIO: 4 MiB per GiB; 0: always cut as well). */
  cutTargetAboveBytes?: number;
}

/** A seed as the caller has it: a slot's seed (`origin` says kept or built), or a signed delta index. */
export type SeedInput = (SlotSeed & { origin?: SeedOrigin }) | (DeltaIndex & { origin?: SeedOrigin });

/** Where a seed came from: the slot's kept (signed) index, one the idle daemon built, or the signed
 * index its release still publishes (route.ts: the booted slot's committed release). */
export type SeedOrigin = 'kept' | 'built' | 'published';

/** How a slot's chunks were found (the report's vocabulary, machine.ts SeedLookupKind): from a kept
 * (signed) index, an index the idle daemon built, the signed index its release publishes, by probing
 * (the target: each new chunk hashed where it goes), by cutting the slot, or not at all. */
export type SeedLookup = SeedLookupKind;

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
  /** how each slot's chunks were found, and the slot bytes read to cut slots into chunks, to probe
   * the target, and to sample slots without a seed index (the early "not worth it"). */
  lookup: { target: SeedLookup; running: SeedLookup; cutBytes: number; probedBytes: number; sampledBytes: number; lookupMs: number };
  /** the delta index file as fetched and verified against its signed hash, or rebuilt from the thin
   * index and checked (to keep as a seed). */
  indexFile: Buffer;
  /** how the index came: whole, or its thin form against a held base (`thin`). */
  indexVia: 'full' | 'thin';
  readBackSha256: string;
  durationMs: number;
}

/** Where a chunk of the new image comes from (installDelta's plan: one byte a chunk). */
const INPLACE = 0;
const WRITTEN = 1;
const TARGET = 2;
const RUNNING = 3;
const FETCH = 4;
/** in place, found so by the target's probe (already verified). */
const PROBED = 5;
/** A target slot without a usable seed index is cut (besides probed) only when the pack bytes still
 * to fetch after the running slot and the probe exceed 1/CUT_TARGET_READ_RATIO of the slot bytes the
 * cut reads (4 MiB per GiB): a byte not downloaded is worth that many read and chunked locally. */
export const CUT_TARGET_READ_RATIO = 256;
/** the share of the full payload a delta install must save to go ahead (see "Not worth it" above)... */
export const MIN_SAVED_FRACTION = 1 / 8;
/** ...unless it fetches at most this many pack bytes: then it only must fetch less than the full payload. */
export const SMALL_DELTA_BYTES = 4 * 1024 * 1024;
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
  headers: IncomingHttpHeaders;
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
export async function fetchVerified(file: DeltaFile, headers: Record<string, string>, timeoutMs: number, signal?: AbortSignal): Promise<{ bytes: Buffer; requests: number }> {
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
 * 206, and a 200 whole-file answer (bytes outside the frames are dropped). Every frame is yielded in
 * one buffer reused for the next (memory: no buffer per frame to collect): a frame is valid until
 * the next one is asked for.
 */
async function* readFrames(a: HttpAnswer, url: string, frames: { off: number; len: number }[], packLength: number, count: { bytes: number }): AsyncGenerator<Buffer> {
  let k = 0;
  let cur: Buffer | undefined;
  let got = 0;
  const hold = Buffer.allocUnsafeSlow(frames.reduce((m, f) => Math.max(m, f.len), 0));
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
      cur ??= hold.subarray(0, f.len);
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

/**
 * The release's delta index: rebuilt from its thin form and a held base when it has one and the
 * device holds that base (verified against the signed SHA-256 of the index's bytes), else fetched
 * whole. `file`: the index as a compressed file, to keep as the slot's seed afterwards.
 */
async function fetchIndex(opts: Pick<DeltaInstallOptions, 'index' | 'thin' | 'bases' | 'signal'>, headers: Record<string, string>, timeoutMs: number): Promise<{ idx: DeltaIndex; file: Buffer; requests: number; downloaded: number; thin: boolean }> {
  let requests = 0;
  let downloaded = 0;
  const base = opts.thin ? opts.bases?.find((b) => b.rawSha256 === opts.thin!.base) : undefined;
  if (opts.thin && base) {
    try {
      const t = await fetchVerified(opts.thin, headers, timeoutMs, opts.signal);
      requests += t.requests;
      downloaded += t.bytes.length;
      const raw = applyThinIndex(t.bytes, base, opts.thin.rawSha256);
      const idx = parseRawDeltaIndex(raw);
      // kept as the slot's seed: any brotli stream of these bytes parses to the same index
      const file = zlib.brotliCompressSync(raw, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 5, [zlib.constants.BROTLI_PARAM_SIZE_HINT]: raw.length } });
      return { idx, file, requests, downloaded, thin: true };
    } catch (e) {
      if (opts.signal?.aborted) throw e;
      // a mirror without the thin file, or one that does not fit: the full index, as without it
    }
  }
  const f = await fetchVerified(opts.index, headers, timeoutMs, opts.signal);
  return { idx: parseDeltaIndex(f.bytes), file: f.bytes, requests: requests + f.requests, downloaded: downloaded + f.bytes.length, thin: false };
}

function zstdDecode(frame: Buffer, rawLen: number): Buffer {
  const sync = (zlib as unknown as { zstdDecompressSync?: (b: Buffer, o?: object) => Buffer }).zstdDecompressSync;
  if (!sync) throw new SlotflipError('INSTALL_DECOMPRESS', `node ${process.version} has no built-in zstd; delta installs need Node 22.15 or later (install the full payload instead)`);
  // one output buffer of the chunk's size (the default 16 KiB pieces, concatenated, left 2-4x the
  // chunk's size of garbage per frame: ~24 MB in a 1 GiB install fetching ~1000 small chunks)
  return sync(frame, { maxOutputLength: rawLen, chunkSize: Math.max(64, rawLen) });
}

/**
 * A slot's chunks, by offset and by key (the first 8 bytes of their SHA-256), in typed arrays: 20
 * bytes a chunk (a Map of hex strings to offset arrays took ~10x that, per slot, at the peak).
 */
export class SlotLookup {
  readonly count: number;
  private readonly hi: Uint32Array;
  private readonly lo: Uint32Array;
  private readonly off: Float64Array;
  /** chunk numbers sorted by key, then offset. */
  private readonly order: Uint32Array;

  constructor(seed: SlotSeed) {
    const n = seed.count;
    this.count = n;
    this.hi = new Uint32Array(n);
    this.lo = new Uint32Array(n);
    this.off = new Float64Array(n);
    this.order = new Uint32Array(n);
    let o = 0;
    for (let i = 0; i < n; i++) {
      this.hi[i] = seed.keys.readUInt32BE(i * 8);
      this.lo[i] = seed.keys.readUInt32BE(i * 8 + 4);
      this.off[i] = o;
      o += seed.lens[i]!;
      this.order[i] = i;
    }
    const { hi, lo } = this;
    this.order.sort((a, b) => hi[a]! - hi[b]! || lo[a]! - lo[b]! || a - b);
  }

  static empty(): SlotLookup {
    return new SlotLookup({ cdc: { min: 64, avg: 128, max: 256 }, size: 0, count: 0, keys: Buffer.alloc(0), lens: new Uint32Array(0) });
  }

  /** Whether a chunk with key (h, l) starts at `pos`. */
  startsAt(pos: number, h: number, l: number): boolean {
    let a = 0;
    let b = this.count;
    while (a < b) {
      const m = (a + b) >>> 1;
      if (this.off[m]! < pos) a = m + 1;
      else b = m;
    }
    return a < this.count && this.off[a] === pos && this.hi[a] === h && this.lo[a] === l;
  }

  /** Offset of the first chunk with key (h, l) at or after `from`, or -1. */
  find(h: number, l: number, from = 0): number {
    const { hi, lo, off, order } = this;
    let a = 0;
    let b = this.count;
    while (a < b) {
      const m = (a + b) >>> 1;
      const c = order[m]!;
      if (hi[c]! < h || (hi[c] === h && (lo[c]! < l || (lo[c] === l && off[c]! < from)))) a = m + 1;
      else b = m;
    }
    if (a === this.count) return -1;
    const c = order[a]!;
    return hi[c] === h && lo[c] === l ? off[c]! : -1;
  }
}

/** Cuts a slot (or part of it) into chunks with the index's parameters (exported for
 * test/bench/cdc-speed-bench.ts). */
export async function lookupOf(path: string, size: number, idx: Pick<DeltaIndex, 'header'>, signal?: AbortSignal, cutter?: ReturnType<typeof cutBuffer>): Promise<SlotLookup> {
  return new SlotLookup((await cutSlot(path, size, idx.header.cdc, { bufferBytes: RUN_BYTES, ...(cutter ? { cutter } : {}), ...(signal ? { signal } : {}) })).seed);
}

/** The new index's distinct chunks by key (the first 8 bytes of their SHA-256): an open-addressing
 * table (8-16 bytes a chunk) built in one pass, no sort (interpreted JS sorts slowly). */
class UniqueKeys {
  private readonly slots: Int32Array;
  private readonly mask: number;

  constructor(private readonly shas: Buffer, count: number) {
    let size = 2;
    while (size < 2 * count) size *= 2;
    this.slots = new Int32Array(size);
    this.mask = size - 1;
    for (let u = 0; u < count; u++) {
      const h = shas.readUInt32BE(u * 32);
      const l = shas.readUInt32BE(u * 32 + 4);
      let i = l & this.mask;
      // a key seen before keeps its first chunk (two distinct chunks sharing 8 bytes of SHA-256: never, in practice)
      while (this.slots[i] !== 0 && !this.is(this.slots[i]! - 1, h, l)) i = (i + 1) & this.mask;
      if (this.slots[i] === 0) this.slots[i] = u + 1;
    }
  }

  private is(u: number, h: number, l: number): boolean {
    return this.shas.readUInt32BE(u * 32) === h && this.shas.readUInt32BE(u * 32 + 4) === l;
  }

  /** The distinct chunk with key (h, l), or -1. */
  find(h: number, l: number): number {
    for (let i = l & this.mask; this.slots[i] !== 0; i = (i + 1) & this.mask) if (this.is(this.slots[i]! - 1, h, l)) return this.slots[i]! - 1;
    return -1;
  }
}

/** A slot is sampled (see "Not worth it") in windows this far apart per window byte... */
export const SAMPLE_EVERY = 16;
/** ...at least this many windows over the new image's length (a region of the slot the image could
 * reuse, 1/64 of it or more, holds a few windows)... */
const SAMPLE_WINDOWS = 64;
/** ...each at least this many of the largest chunks long (the first chunk of a window is cut where
 * no whole-slot cut would, and is not counted). */
const SAMPLE_WINDOW_CHUNKS = 4;
/** A sampled estimate may be this many times too small before it misleads the judgement. */
export const SAMPLE_MARGIN = 2;

/**
 * Pack bytes of the new image's distinct chunks that a slot holds (`taken` excepted), ESTIMATED from
 * a sample of it: windows of 1/SAMPLE_EVERY of the spacing, SAMPLE_WINDOWS or more spread evenly over
 * the slot, each cut into chunks as a whole-slot cut would (first and last chunk of each window left
 * out); the new chunks found, weighted by their frames' length, scaled up by the slot bytes per byte
 * read. Undefined when the image is too small for windows of SAMPLE_WINDOW_CHUNKS × cdc.max (the
 * slot is then judged whole, as before). Read-only.
 */
async function sampleSlot(path: string, size: number, idx: DeltaIndex, keys: UniqueKeys, taken: Uint8Array, cutter: ReturnType<typeof cutBuffer>, signal?: AbortSignal): Promise<{ packBytes: number; readBytes: number } | undefined> {
  const spacing = Math.floor(idx.header.imageSize / SAMPLE_WINDOWS);
  const window = Math.floor(spacing / SAMPLE_EVERY);
  if (window < SAMPLE_WINDOW_CHUNKS * idx.header.cdc.max) return undefined;
  const seen = new Uint8Array(idx.header.uniqueCount);
  let found = 0;
  let readBytes = 0;
  for (let at = 0; at + window <= size; at += spacing) {
    const { seed } = await cutSlot(path, window, idx.header.cdc, { offset: at, cutter, ...(signal ? { signal } : {}) });
    readBytes += window;
    for (let i = 1; i < seed.count - 1; i++) {
      const u = keys.find(seed.keys.readUInt32BE(i * 8), seed.keys.readUInt32BE(i * 8 + 4));
      if (u >= 0 && taken[u] === 0 && seen[u] === 0) {
        seen[u] = 1;
        found += idx.packLen[u]!;
      }
    }
  }
  return readBytes === 0 ? undefined : { packBytes: Math.round((found * size) / readBytes), readBytes };
}

function asSeed(s: SeedInput | undefined): (SlotSeed & { origin?: SeedOrigin }) | undefined {
  return s === undefined ? undefined : 'refs' in s ? { ...seedOfIndex(s), ...(s.origin ? { origin: s.origin } : {}) } : s;
}

/**
 * The target probed: for each chunk of the new image, whether the target slot already holds it at
 * the offset it goes to (SHA-256 against the signed index), reading the slot once in order (runs of
 * up to RUN_BYTES into one reused buffer). What it finds: an earlier run's writes (resume), and the
 * release before's bytes that did not move. One byte a chunk (1: in place). Read-only. `buf`: at
 * least max(RUN_BYTES, cdc.max) bytes.
 */
async function probeInPlace(path: string, idx: DeltaIndex, buf: Buffer, signal?: AbortSignal): Promise<Uint8Array> {
  const n = idx.header.chunkCount;
  const hit = new Uint8Array(n);
  const fh = await open(path, 'r');
  try {
    let pos = 0;
    for (let i = 0; i < n; ) {
      signal?.throwIfAborted();
      let j = i;
      let len = 0;
      while (j < n && (j === i || len + idx.rawLen[idx.refs[j]!]! <= buf.length)) len += idx.rawLen[idx.refs[j++]!]!;
      const got = await readView(fh, buf, len, pos);
      let at = 0;
      for (let k = i; k < j; k++) {
        const u = idx.refs[k]!;
        const l = idx.rawLen[u]!;
        if (isChunk(idx, u, got.subarray(at, at + l))) hit[k] = 1;
        at += l;
      }
      pos += len;
      i = j;
    }
  } finally {
    await fh.close();
  }
  return hit;
}

/** `len` bytes of `fh` at `at` read into `into` (fewer only at the end of the file): a view of `into`. */
async function readView(fh: FileHandle, into: Buffer, len: number, at: number): Promise<Buffer> {
  return into.subarray(0, await readFull(fh, into, 0, len, at));
}

/** Whether `b` is chunk `u` of the signed index: its length and its SHA-256. */
function isChunk(idx: Pick<DeltaIndex, 'rawLen' | 'shas'>, u: number, b: Buffer): boolean {
  return b.length === idx.rawLen[u] && createHash('sha256').update(b).digest().equals(idx.shas.subarray(u * 32, u * 32 + 32));
}

/** A seed is usable for a slot of `size` bytes when it was cut like the new index and fits. */
function seedFits(seed: SlotSeed | undefined, idx: DeltaIndex, size: number): seed is SlotSeed {
  const a = seed?.cdc;
  const b = idx.header.cdc;
  return seed !== undefined && a!.min === b.min && a!.avg === b.avg && a!.max === b.max && (a!.dirBlock ?? 0) === (b.dirBlock ?? 0) && seed.size <= size;
}

/** Image bytes of the distinct chunks in `fetch` (each counted once). */
function fetchedImageBytes(idx: DeltaIndex, fetch: Uint32Array): number {
  let sum = 0;
  for (const u of fetch) sum += idx.rawLen[u]!;
  return sum;
}

export async function installDelta(opts: DeltaInstallOptions): Promise<DeltaInstallResult> {
  const started = performance.now();
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const headers = opts.headers ?? {};
  const maxRequests = opts.maxRequests ?? 50;
  const perRequest = opts.maxRangesPerRequest ?? 200;

  const fetched = await fetchIndex(opts, headers, timeoutMs);
  let requests = fetched.requests;
  let downloaded = fetched.downloaded;
  const idx = fetched.idx;
  const h = idx.header;
  if (opts.expect && (h.imageSize !== opts.expect.size || h.imageSha256 !== opts.expect.sha256)) {
    throw new SlotflipError('INSTALL_BAD_INDEX', `delta index describes an image of ${h.imageSize} bytes with SHA-256 ${h.imageSha256}, the release signs ${opts.expect.size} / ${opts.expect.sha256}; the release was published wrong`, { details: { imageSize: h.imageSize, imageSha256: h.imageSha256 } });
  }
  if (h.packLength !== opts.pack.length) throw new SlotflipError('INSTALL_BAD_INDEX', `delta index says the pack is ${h.packLength} bytes, signed ${opts.pack.length}; the release metadata is wrong`, { details: {} });
  const capacity = await opts.slot.capacity();
  if (capacity < h.imageSize) {
    throw new SlotflipError('INSTALL_SLOT_TOO_SMALL', `slot ${opts.slot.slot} (${opts.slot.path}) holds ${capacity} bytes but the image needs ${h.imageSize}; repartition or pick a smaller image`, { details: { capacity, size: h.imageSize } });
  }

  // 2. what both slots hold now. The running slot: from a kept, built or published index where there
  // is a usable one, else cut. The target slot: from a kept or built index where there is one; else
  // probed (see the module header: each chunk of the new image hashed where it would be written, no
  // JS chunker) and cut as well only when what is still missing after that is worth a cut.
  const lookupStarted = performance.now();
  let cutBytes = 0;
  let probedBytes = 0;
  const lookup = { target: 'probed' as SeedLookup, running: 'none' as SeedLookup };
  const seedT = asSeed(opts.seeds?.target);
  const seedR = asSeed(opts.seeds?.running);
  // one read buffer for every sample and cut of this install (wasm memory: cdc.ts cutBuffer)
  let cutter: ReturnType<typeof cutBuffer> | undefined;
  const cutterOnce = (): ReturnType<typeof cutBuffer> => (cutter ??= cutBuffer(Math.max(RUN_BYTES, 2 * h.cdc.max)));
  const cut = (path: string, size: number): Promise<SlotLookup> => lookupOf(path, size, idx, opts.signal, cutterOnce());
  let target = SlotLookup.empty();
  const targetSeeded = seedFits(seedT, idx, capacity);
  if (targetSeeded) {
    target = new SlotLookup(seedT);
    lookup.target = seedT.origin ?? 'kept';
  }
  let running = SlotLookup.empty();
  const runningSeeded = opts.running !== undefined && seedFits(seedR, idx, opts.running.size);
  if (runningSeeded) {
    running = new SlotLookup(seedR!);
    lookup.running = seedR!.origin ?? 'kept';
  }

  // Not worth it (module header): judged as soon as it can be, so that an image the slots share
  // little with costs little more than its full install. The pack bytes of the distinct chunks that
  // no slot looked up so far holds bound what the delta fetches from below; a slot not looked up yet
  // is first SAMPLED (1/SAMPLE_EVERY of it read and cut), and only when even SAMPLE_MARGIN times the
  // estimate would leave the delta worth it is it read whole (cut, or probed).
  const minSaved = opts.minSavedFraction ?? MIN_SAVED_FRACTION;
  const worthBytes = opts.fullBytes === undefined ? Infinity : Math.floor(opts.fullBytes * (1 - minSaved));
  // (a small fetch costs little work either way: there only "more than the full payload" counts)
  const hopeless = (packBytes: number): boolean => packBytes > worthBytes && (packBytes > SMALL_DELTA_BYTES || packBytes > opts.fullBytes!);
  let sampledBytes = 0;
  const notWorth = (packBytes: number, why: string, extra: object = {}): SlotflipError => {
    opts.onReceived?.(downloaded);
    return new SlotflipError('INSTALL_DELTA_NOT_WORTH', `delta install would fetch ${packBytes} bytes of the delta pack, more than ${worthBytes} (${Math.round(100 * (1 - minSaved))} % of the ${opts.fullBytes}-byte full payload): ${why}; installing the full payload`, { details: { packBytes, fullBytes: opts.fullBytes, worthBytes, ...extra, lookup: { ...lookup, cutBytes, probedBytes, sampledBytes, lookupMs: Math.round(performance.now() - lookupStarted) } } });
  };
  /** Pack bytes of the distinct chunks none of `lookups` holds (anywhere), and which those are. */
  const missingFrom = (lookups: SlotLookup[]): { bytes: number; taken: Uint8Array } => {
    const taken = new Uint8Array(h.uniqueCount);
    let bytes = 0;
    for (let u = 0; u < h.uniqueCount; u++) {
      const kh = idx.shas.readUInt32BE(u * 32);
      const kl = idx.shas.readUInt32BE(u * 32 + 4);
      if (lookups.some((l) => l.find(kh, kl) >= 0)) taken[u] = 1;
      else bytes += idx.packLen[u]!;
    }
    return { bytes, taken };
  };
  let targetEstimate: number | undefined;
  const unseeded = !targetSeeded || (opts.running !== undefined && !runningSeeded);
  if (opts.fullBytes !== undefined && unseeded) {
    const known = missingFrom([target, running]);
    if (hopeless(known.bytes)) {
      const keys = new UniqueKeys(idx.shas, h.uniqueCount);
      const t = targetSeeded ? { packBytes: 0, readBytes: 0 } : await sampleSlot(opts.slot.path, capacity, idx, keys, known.taken, cutterOnce(), opts.signal);
      const r = !opts.running || runningSeeded ? { packBytes: 0, readBytes: 0 } : await sampleSlot(opts.running.path, opts.running.size, idx, keys, known.taken, cutterOnce(), opts.signal);
      if (t && r) {
        sampledBytes = t.readBytes + r.readBytes;
        if (!targetSeeded) targetEstimate = t.packBytes;
        const best = Math.max(0, known.bytes - SAMPLE_MARGIN * (t.packBytes + r.packBytes));
        if (hopeless(best)) throw notWorth(best, `the slots hold little of the new image (estimated from ${sampledBytes} bytes of them read: at most ~${t.packBytes + r.packBytes} pack bytes' worth; counted ${SAMPLE_MARGIN}x)`, { estimated: true });
      }
    }
  }
  if (opts.running && !runningSeeded) {
    running = await cut(opts.running.path, opts.running.size);
    cutBytes += opts.running.size;
    lookup.running = 'cut';
    // the running slot known: the target's estimate alone may now say it (before it is read whole)
    if (targetEstimate !== undefined) {
      const best = Math.max(0, missingFrom([target, running]).bytes - SAMPLE_MARGIN * targetEstimate);
      if (hopeless(best)) throw notWorth(best, `the slots hold little of the new image (the running slot cut; the target estimated from a sample: ~${targetEstimate} pack bytes' worth, counted ${SAMPLE_MARGIN}x)`, { estimated: true });
    }
  }

  // 3. plan: one byte (where from) and one offset a chunk; the distinct chunks to fetch, in pack order
  const n = h.chunkCount;
  const kind = new Uint8Array(n);
  const from = new Float64Array(n);
  const firstAt = new Float64Array(h.uniqueCount).fill(-1);
  const fetchU = new Uint32Array(n);
  let fetchCount = 0;
  // the target probed: which chunks are already in place (verified here, not read again below)
  const inPlace0 = targetSeeded ? undefined : await probeInPlace(opts.slot.path, idx, cutterOnce().buf, opts.signal);
  if (inPlace0) probedBytes = h.imageSize;
  const planAll = (): number => {
    let fetchPack = 0;
    fetchCount = 0;
    firstAt.fill(-1);
    let pos = 0;
    for (let i = 0; i < n; i++) {
      const u = idx.refs[i]!;
      const kh = idx.shas.readUInt32BE(u * 32);
      const kl = idx.shas.readUInt32BE(u * 32 + 4);
      const len = idx.rawLen[u]!;
      let r: number;
      if (inPlace0 ? inPlace0[i] === 1 : target.startsAt(pos, kh, kl)) kind[i] = inPlace0 ? PROBED : INPLACE;
      else if (firstAt[u]! >= 0) (kind[i] = WRITTEN), (from[i] = firstAt[u]!);
      else if ((r = running.find(kh, kl)) >= 0) (kind[i] = RUNNING), (from[i] = r);
      else if ((r = target.find(kh, kl, pos)) >= 0) (kind[i] = TARGET), (from[i] = r);
      else {
        kind[i] = FETCH;
        fetchU[fetchCount++] = u;
        fetchPack += idx.packLen[u]!;
      }
      if (firstAt[u]! < 0) firstAt[u] = pos;
      pos += len;
    }
    return fetchPack;
  };
  const missing = planAll();
  // the cut's rule: reading and chunking the whole target costs local work (~3-8 s a GiB here) and
  // can save no more than what is still to fetch; bandwidth is what a fleet pays for, so a byte
  // saved is worth CUT_TARGET_READ_RATIO bytes read (`cutTargetAboveBytes` overrides)
  if (inPlace0 && missing > (opts.cutTargetAboveBytes ?? capacity / CUT_TARGET_READ_RATIO)) {
    target = await cut(opts.slot.path, capacity);
    cutBytes += capacity;
    lookup.target = 'cut';
    planAll();
  }
  const lookupMs = Math.round(performance.now() - lookupStarted);
  const toFetch = fetchU.subarray(0, fetchCount);

  // 4. fetch requests: ranges bounded by maxRequests × perRequest, frames in pack order
  const frameRanges: FetchRange[] = new Array(fetchCount);
  for (let j = 0; j < fetchCount; j++) frameRanges[j] = { start: idx.packOff[toFetch[j]!]!, end: idx.packOff[toFetch[j]!]! + idx.packLen[toFetch[j]!]! };
  const ranges = coalesce(frameRanges, maxRequests * perRequest);
  frameRanges.length = 0;
  // what the delta would download, known before a byte of the pack is fetched or the slot written
  const packBytes = ranges.reduce((sum, r) => sum + (r.end - r.start), 0);
  if (hopeless(packBytes)) throw notWorth(packBytes, `the slots hold little of the new image (${fetchedImageBytes(idx, toFetch)} of its ${h.imageSize} bytes are in neither slot)`);
  const batches: FetchRange[][] = [];
  for (let i = 0; i < ranges.length; i += perRequest) batches.push(ranges.slice(i, i + perRequest));
  const wire = { bytes: 0 }; // pack response body bytes received (gaps and multipart framing included)
  /** The frames of `list` (pack order), fetched by `batches` (their coalesced ranges, one request
   * each); each valid until the next is asked for (readFrames). */
  async function* frameStream(list: ArrayLike<number>, batches: FetchRange[][]): AsyncGenerator<Buffer> {
    let fi = 0; // next frame of list
    for (const batch of batches) {
      const last = batch[batch.length - 1]!;
      const frames: { off: number; len: number }[] = [];
      for (let j = fi; j < list.length && idx.packOff[list[j]!]! < last.end; j++) frames.push({ off: idx.packOff[list[j]!]!, len: idx.packLen[list[j]!]! });
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
  const stream = frameStream(toFetch, batches);
  /** Batches for `list` (pack order) within `requestsLeft` requests. */
  const batchesOf = (list: ArrayLike<number>, requestsLeft: number): FetchRange[][] => {
    const fr: FetchRange[] = [];
    for (let j = 0; j < list.length; j++) fr.push({ start: idx.packOff[list[j]!]!, end: idx.packOff[list[j]!]! + idx.packLen[list[j]!]! });
    const rs = coalesce(fr, Math.max(1, requestsLeft) * perRequest);
    const out: FetchRange[][] = [];
    for (let i = 0; i < rs.length; i += perRequest) out.push(rs.slice(i, i + perRequest));
    return out;
  };

  const okBytes = (u: number, b: Buffer): boolean => isChunk(idx, u, b);
  const decodeChecked = (u: number, frame: Buffer, url = 'pack'): Buffer => {
    let raw: Buffer;
    try {
      // format 2: a frame the signed index marks as x86-filtered is unfiltered before it is hashed
      raw = unfilterChunk(idx, u, zstdDecode(frame, idx.rawLen[u]!));
    } catch (cause) {
      if (cause instanceof SlotflipError) throw cause;
      throw new SlotflipError('INSTALL_CHUNK_HASH_MISMATCH', `${url}: pack frame ${u} does not decompress; the mirror holds a different file`, { cause, retryable: true, details: { frame: u } });
    }
    if (!okBytes(u, raw)) throw new SlotflipError('INSTALL_CHUNK_HASH_MISMATCH', `${url}: pack frame ${u} does not match the signed index; the mirror holds a different file`, { retryable: true, details: { frame: u } });
    return raw;
  };

  const out = await opts.slot.open();
  const runningFh = opts.running ? await open(opts.running.path, 'r') : undefined;
  // hal's own slots (read back by path) are read through a descriptor of their own into reused
  // buffers; an injected slot through its handle (a buffer per read)
  const targetFh = opts.readBack === 'path' ? await open(opts.slot.path, 'r') : undefined;
  let inPlace = 0;
  let copied = 0;
  let fetchedRaw = 0;
  let seedMismatches = 0;
  let done = 0;
  let lastReport = 0;
  let lastBytes = 0;
  let writing = false;
  // Memory: every read goes into one of these (no buffer per chunk, whose garbage V8 collects only
  // once tens of MiB of it piled up); the chunk written last is copied into `lastBuf` for repeats
  const runBuf = Buffer.allocUnsafeSlow(RUN_BYTES);
  const chunkBuf = Buffer.allocUnsafeSlow(h.cdc.max);
  const lastBuf = Buffer.allocUnsafeSlow(h.cdc.max);
  let lastWritten: { u: number; data: Buffer } | undefined;
  // Seed chunks that failed verification (a slot that changed behind the daemon's back, a rw root
  // filesystem's metadata): left as holes in the pass, then fetched together in coalesced requests
  // and written at their offsets, so a few dozen of them cost one request, not one each (the
  // request bound). Holes are written before the flush and the read-back; a cut meanwhile is resumed
  // like any other (the target is probed or cut again, its kept index having been dropped).
  const deferred: { u: number; pos: number }[] = [];
  /** `len` bytes of the target slot at `at`: a view of `into` (by path) or a buffer of its own. */
  const readTarget = async (into: Buffer, len: number, at: number): Promise<Buffer> => {
    if (!targetFh) {
      const b = await out.readAt(len, at);
      return Buffer.from(b.buffer, b.byteOffset, b.length);
    }
    return readView(targetFh, into, len, at);
  };
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
  let pos = 0;
  try {
    for (let i = 0; i < n; i++) {
      opts.signal?.throwIfAborted();
      const u = idx.refs[i]!;
      const len = idx.rawLen[u]!;
      const k0 = kind[i]!;
      const off0 = from[i]!;
      // found in place by the probe (hashed against the signed index a moment ago; nothing has
      // written this region since: every write lands at its own chunk's offset, in order)
      if (k0 === PROBED) {
        inPlace += len;
        done += len;
        pos += len;
        report();
        continue;
      }
      let data: Buffer | undefined;
      // Runs: consecutive chunks in place, or contiguous in the running slot (an unchanged region),
      // take one read of up to RUN_BYTES (and, for copies, one write) instead of one per chunk; each
      // chunk of the run is still verified. A run stops before the first chunk that does not match,
      // which then takes the single-chunk path below (counted, fetched instead).
      if (k0 === INPLACE || k0 === RUNNING) {
        let j = i + 1;
        let runLen = len;
        for (; j < n; j++) {
          const lj = idx.rawLen[idx.refs[j]!]!;
          if (kind[j] !== k0 || (k0 === RUNNING && from[j] !== off0 + runLen) || runLen + lj > RUN_BYTES) break;
          runLen += lj;
        }
        if (j - i > 1) {
          let buf: Buffer;
          if (k0 === INPLACE) buf = await readTarget(runBuf, runLen, pos);
          else buf = await readView(runningFh!, runBuf, runLen, off0);
          let ok = 0;
          let k = i;
          for (; k < j; k++) {
            const uk = idx.refs[k]!;
            const lk = idx.rawLen[uk]!;
            if (ok + lk > buf.length || !okBytes(uk, buf.subarray(ok, ok + lk))) break;
            ok += lk;
          }
          if (k > i) {
            if (k0 === RUNNING) {
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
      if (k0 === WRITTEN && lastWritten?.u === u) {
        await out.writeAt(lastWritten.data, pos);
        copied += len;
        done += len;
        pos += len;
        report();
        continue;
      }
      if (k0 === INPLACE) {
        if (okBytes(u, await readTarget(chunkBuf, len, pos))) {
          inPlace += len;
          done += len;
          pos += len;
          report();
          continue;
        }
        seedMismatches++;
      } else if (k0 === WRITTEN || k0 === TARGET) {
        const buf = await readTarget(chunkBuf, len, off0);
        if (okBytes(u, buf)) data = buf;
        else seedMismatches++;
      } else if (k0 === RUNNING) {
        const buf = await readView(runningFh!, chunkBuf, len, off0);
        if (okBytes(u, buf)) data = buf;
        else seedMismatches++;
      }
      if (data) copied += len;
      else if (k0 === FETCH) {
        overBudget();
        const r = await stream.next();
        if (r.done) throw new SlotflipError('INSTALL_PAYLOAD_TRUNCATED', 'pack answers ended early', { retryable: true });
        data = decodeChecked(u, r.value);
        fetchedRaw += len;
      } else {
        deferred.push({ u, pos });
        pos += len;
        continue;
      }
      if (!writing) {
        writing = true;
        opts.onWriteStart?.();
      }
      await out.writeAt(data, pos);
      // (`data` may be a view of chunkBuf, which the next read reuses: keep a copy)
      data.copy(lastBuf, 0, 0, len);
      lastWritten = { u, data: lastBuf.subarray(0, len) };
      done += len;
      pos += len;
      report();
    }
    if (deferred.length > 0) {
      overBudget();
      const at = new Map<number, number[]>();
      for (const d of deferred) {
        const list = at.get(d.u);
        if (list) list.push(d.pos);
        else at.set(d.u, [d.pos]);
      }
      const list = [...at.keys()].sort((a, b) => idx.packOff[a]! - idx.packOff[b]!);
      let j = 0;
      for await (const fr of frameStream(list, batchesOf(list, maxRequests - batches.length))) {
        const u = list[j++]!;
        const data = decodeChecked(u, fr);
        for (const p of at.get(u)!) {
          if (!writing) {
            writing = true;
            opts.onWriteStart?.();
          }
          await out.writeAt(data, p);
          fetchedRaw += data.length;
          done += data.length;
        }
        overBudget();
        report();
      }
      if (j < list.length) throw new SlotflipError('INSTALL_PAYLOAD_TRUNCATED', 'pack answers ended early', { retryable: true });
    }
    await out.flush();
  } finally {
    opts.onReceived?.(downloaded + wire.bytes);
    await stream.return(undefined).catch(() => undefined);
    await out.close().catch(() => undefined);
    await runningFh?.close().catch(() => undefined);
    await targetFh?.close().catch(() => undefined);
  }
  report(true);
  downloaded += wire.bytes;
  await verifySlotImage(opts.slot, { compression: 'zstd', size: h.imageSize, sha256: h.imageSha256, chunkSize: 0, chunks: [] }, { source: opts.readBack ?? 'handle' });
  return { imageSize: h.imageSize, inPlace, copied, fetchedRaw, downloaded, requests, seedMismatches, lookup: { ...lookup, cutBytes, probedBytes, sampledBytes, lookupMs }, indexFile: fetched.file, indexVia: fetched.thin ? 'thin' : 'full', readBackSha256: h.imageSha256, durationMs: Math.round(performance.now() - started) };
}

/**
 * The streaming installer: payload source → decompress → cut into chunks → SHA-256 each chunk and
 * compare with the signed index → positional write at the chunk's offset → periodic fsync → read the
 * slot back from the medium behind the fsync frontier and hash the whole image over what it returns,
 * against the signed image hash; only on a mismatch, a second read names the chunk(s) that changed by
 * their signed chunk hashes (hasher.ts).
 *
 * INVARIANTS
 * - No byte reaches the slot unless its chunk's SHA-256 matched the signed index first.
 * - The slot's capacity is checked before it is opened; a too-small slot is never written.
 * - The resume hint only ever claims chunks that were written and flushed; resuming re-hashes the
 *   slot from chunk 0 (past the hint too: a killed process's writes outlive it in the page cache),
 *   reading it as the read-back does (the medium), and restarts at the first chunk that does not
 *   match (the hint is never trusted alone).
 * - The image is the signed one because every chunk of the signed, contiguous index was SHA-256
 *   verified (in this run before its write, or on resume as read from the slot); the read-back then
 *   proves the medium kept those bytes: one SHA-256 of the whole image over the bytes read back from
 *   the medium, against the signed image hash (see hasher.ts for the trade-off).
 * - Memory is bounded by a fixed pool of chunk pieces plus stream buffers, whatever the image size.
 * - Compressed bytes read are capped by the signed payload length; image bytes by the signed size.
 * - One attempt spends a bounded download budget (bytes and time, summed over runs and restarts in
 *   the resume record): a chunk that fails verification or decompression is fetched again ALONE
 *   (one chunk's range, with backoff and jitter) up to `maxChunkFailures` times per mirror, then
 *   from the next mirror; when every mirror failed it, the attempt ends (INSTALL_PAYLOAD_CORRUPT,
 *   not retryable). Past the byte or time budget it ends with INSTALL_BUDGET_EXHAUSTED (not
 *   retryable). Either way the spent budget is cleared, so a later attempt starts afresh.
 *
 * - The compressed bytes are checked too, as they stream (no extra pass), before their chunk is
 *   written: with a v2 index every frame's SHA-256 (`packedSha256`) is compared when its last byte
 *   arrives, and a chunk is handed to the writer only once its frame matched (a frame that does not
 *   is never passed on to the decoder: INSTALL_PACKED_HASH_MISMATCH, counted as a corrupt chunk).
 *   With a v1 index (no `packedSha256`) the payload file's own signed SHA-256 (`targetSha256`, the
 *   TUF target hash) is computed over the whole compressed stream, and the LAST chunk is written only
 *   once it matched (INSTALL_PAYLOAD_HASH_MISMATCH: that mirror is spent at once, then
 *   INSTALL_PAYLOAD_CORRUPT). A transfer that resumes mid-file continues the hash from the state saved
 *   at that frame's boundary in this process; a resumed install (new process) or a new mirror re-reads
 *   bytes [0, resume offset) to hash them without decoding or writing them, and an install found
 *   complete on the slot at resume still streams the file once to hash it: the check is never skipped.
 *
 * Memory: nothing on the byte path is allocated per read (V8 collects buffers outside the JS heap only
 * with full mark-compacts, which cost CPU and keep tens of MiB resident): plain-HTTP bodies and local
 * files are read into one reused buffer each (source.ts), compressed bytes wait for the decoder in a
 * fixed ring (InputRing), the zstd CLI's output lands in the chunk pieces, and the read-back reuses
 * two page-aligned 1 MiB buffers (one hashed, one read ahead). Only https and chunked responses still
 * come through node:http. A chunk is assembled, verified and written in pieces of 1 MiB (PIECE) from
 * a pool of one chunk's pieces plus two: each piece returns to the pool when its own write completed,
 * so the next chunk fills behind the last one's writes; 6 MiB for 4 MiB chunks, where three whole
 * chunk buffers took 12 MiB. With the in-process zstd frame decoder the pool holds two chunks' pieces
 * instead (8 MiB), as two regions of contiguous pieces a frame decodes into whole: that replaced the
 * decoder's own 4 MiB buffer and the copy from it (issue 16/24).
 *
 * Writes: the chunk pieces are cut from one page-aligned block (hal/aligned.ts), so hal's file and
 * device slots write them with O_DIRECT (hal/file-slot.ts): the verified buffer goes to the medium
 * without the kernel's copy into the page cache and the dirty writeback behind it, which took about a
 * third of the install's CPU (issue 24: tree CPU 8.75 -> 5.81 s, wall 0.76x, same run). Slots that
 * refuse O_DIRECT, and writers that are not hal's, get the same buffers through the page cache. The
 * flush points, the resume hint and the read-back are unchanged: a direct write is not durable before
 * the fsync either (the device's write cache), and the hint claims only flushed chunks.
 *
 * Concurrency: zstd decompresses frame by frame on libuv's thread pool (decode.ts: each frame into
 * the chunk's region of contiguous pieces, see `#readTarget`), or in its own process (the CLI, where
 * Node has no built-in zstd or the frames are unknown); the main thread hashes chunks (SHA-256) and
 * the read-back's whole-image SHA-256; writes (two in flight), fsyncs and the read-back's O_DIRECT
 * reads (one read ahead) run on libuv's thread pool. The read-back (hasher.ts) runs on this thread: a
 * worker thread of its own
 * (read-back-thread.ts, `readBackThread`) took its SHA-256 off the main thread but is one more V8
 * isolate, +13-14 MiB of peak RSS (issue 16). Issue 24/16, cli-bench A/B against main in one run
 * (1 GiB, 3 rounds, load 5-9): peak tree RSS 113 -> 99 MiB, wall 0.96x, tree CPU 0.96x; the main
 * thread's CPU 2.31 -> 3.02 s (the worker's 0.90 s moved here), the read-back tail after the last
 * write 0.37 -> 0.11 s. Trade-off: where zstd is not the bottleneck the main thread is: the 4 GiB
 * bench image (mostly empty, zstd decodes it fast) took wall 16.3 -> 21.3 s (1.31x; still 0.77x the
 * C floor in that run), main thread CPU 6.4 + 3.4 (worker) -> 10.0 s, load 6-7, 2 rounds; 1 GiB in
 * the same run 1.06x. A device that has the memory and wants that wall back sets `readBackThread`.
 * Tried and refused (issue 24): the chunk SHA-256 on libuv's pool through WebCrypto
 * (`crypto.subtle.digest` of a chunk's region, decoded in place in order; the chunk held unwritten
 * until its digest matched). subtle.digest copies its input on this thread before queueing the job
 * (checked: changing the buffer after the call does not change the digest), a 4 MiB malloc + memcpy
 * per chunk (~2 ms of this thread, load 6; createHash ~5 ms), freed when the job ends but kept
 * resident by malloc. cli-bench 1 GiB, 3 rounds, --cli-only, A/B vs main ca70c13 (load 6.6-6.5):
 * wall 1.20x, tree CPU 1.10x, peak RSS 79 -> 87 MiB (two copies in flight); main thread 2.49 -> 2.25
 * s, pool 1.26 -> 1.93 s (a region now waits for its digest too, so the decoder waits for regions).
 * Against the session's start (load 6.2-8.6): wall 1.05x, CPU 1.20x. The patch is not kept.
 *
 * Error codes (stable): INSTALL_BAD_INDEX, INSTALL_SLOT_TOO_SMALL, INSTALL_CHUNK_HASH_MISMATCH,
 * INSTALL_PAYLOAD_TRUNCATED, INSTALL_PAYLOAD_OVERSIZED, INSTALL_DECOMPRESS, INSTALL_HTTP_STATUS,
 * INSTALL_NETWORK, INSTALL_STALLED, INSTALL_SOURCE_OPEN, INSTALL_SLOT_IO, INSTALL_READBACK_MISMATCH,
 * INSTALL_ABORTED, INSTALL_PAYLOAD_CORRUPT, INSTALL_BUDGET_EXHAUSTED, INSTALL_PACKED_HASH_MISMATCH,
 * INSTALL_PAYLOAD_HASH_MISMATCH.
 */
import { createHash, type Hash } from 'node:crypto';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { alignedBuffer, DIRECT_ALIGN } from '../../hal/aligned.js';
import { SlotflipError, isCoded } from '../../hal/errors.js';
import type { SlotHandle, SlotWriter } from '../../hal/slot-writer.js';
import type { PayloadInfo } from '../../manifests/types.js';
import { decodesFrames, decodesInChild, prepareDecoder, type Decoder, type PreparedDecoder } from './decode.js';
import { ReadBackChecker, type ReadBack } from './hasher.js';
import { ThreadedReadBack } from './read-back-thread.js';
import { readResumeRecord, writeResumeHint, type ResumeExtra, type SpentBudget } from './resume-state.js';
import { fileSource, httpSource, ReusedBufferStream, type ByteStream, type OpenedStream, type PayloadSource, type TlsOptions } from './source.js';

export interface InstallProgress {
  /** image bytes verified and written so far (chunks already on the slot at resume included). */
  bytes: number;
  /** image size. */
  total: number;
  /** bytes per second written in this run (smoothed). */
  rate: number;
  /** seconds left at the current rate; null until a rate is known. */
  etaSeconds: number | null;
  /** how the image arrives: 'delta' (route.ts) or the full payload (absent). */
  method?: 'delta';
  /** delta: image bytes taken from a slot so far, and bytes downloaded so far. */
  reused?: number;
  downloaded?: number;
}

export type InstallSourceSpec =
  | { urls: string[]; tls?: TlsOptions; headers?: Record<string, string>; connectTimeoutMs?: number }
  | { path: string }
  | PayloadSource;

export interface RetryOptions {
  /** consecutive failed transfers without progress before giving up (default 6). */
  maxAttempts?: number;
  /** first backoff delay, ms (default 500); doubles each failure, full jitter. */
  baseDelayMs?: number;
  /** backoff cap, ms (default 30 000). */
  maxDelayMs?: number;
}

/** The download budget of one attempt (config `download`). */
export interface BudgetOptions {
  /** verification or decompression failures of one chunk from one mirror before the next mirror
   * (default 3); all mirrors spent: INSTALL_PAYLOAD_CORRUPT. */
  maxChunkFailures?: number;
  /** payload bytes one attempt may receive, as a multiple of the payload length, plus one chunk
   * (default 3); past it: INSTALL_BUDGET_EXHAUSTED. */
  maxBytesFactor?: number;
  /** time one attempt may spend in transfers, ms (default 24 h); past it: INSTALL_BUDGET_EXHAUSTED. */
  maxMs?: number;
}

export interface WatchdogOptions {
  /** fail the transfer (INSTALL_STALLED, retried) after this long without a byte, ms (default 30 000). */
  stallTimeoutMs?: number;
  /** minimum average throughput over `windowMs`, bytes/s (default 0: off). Guards slow-retrieval. */
  minBytesPerSecond?: number;
  /** window for `minBytesPerSecond`, ms (default 60 000). */
  windowMs?: number;
}

export interface InstallOptions {
  /** the signed payload description (chunk index included). */
  payload: PayloadInfo;
  /** where the payload file comes from: mirrors, a local file, or a custom source. */
  source: InstallSourceSpec;
  /** the target slot; it must already be marked bad by the caller. */
  slot: SlotWriter;
  /** resume hint file (see resume-state.ts); its directory must exist. */
  resumeStatePath: string;
  /** signed payload file length (Release.length); checked against the chunk index when given. */
  length?: number;
  /** signed SHA-256 (hex) of the payload FILE (Release.hashes.sha256, the TUF target hash): checked
   * over the compressed stream when the index has no per-frame `packedSha256` (v1). */
  targetSha256?: string;
  onProgress?: (p: InstallProgress) => void;
  signal?: AbortSignal;
  logger?: Logger;
  retry?: RetryOptions;
  watchdog?: WatchdogOptions;
  budget?: BudgetOptions;
  /** fsync (and persist the resume hint) every this many image bytes (default 64 MiB). */
  flushEveryBytes?: number;
  /** pieces in the buffer pool (see PIECE): a chunk is assembled in pieces of up to 1 MiB and each
   * piece goes back to the pool as soon as its own write completed. Default: one chunk's pieces plus
   * SLACK_PIECES (4 MiB chunks: 4 + 2 pieces, 6 MiB), or two chunks' pieces with the in-process zstd
   * frame decoder and chunks of several pieces (two regions, 8 MiB); at least one chunk's pieces. Memory ≈ pool ×
   * piece, plus 0.75 MiB of carry and scratch buffers, the 1 MiB ring of compressed input queued for
   * the decoder and the read-back's 2 MiB (read-back.ts's read-ahead). */
  buffers?: number;
  zstdPath?: string;
  /** gzip decoder: the `zstd` CLI (default: another core, flat memory) or node:zlib. */
  gzipDecoder?: 'zstd-cli' | 'zlib';
  /** zstd decoder (decode.ts): 'auto' (default: frame by frame in-process where Node has a built-in
   * zstd, else the CLI), or one forced. */
  zstdDecoder?: 'auto' | 'cli' | 'zlib' | 'frames';
  /** how the slot is read back: through the SlotHandle's `readAt` (default; any SlotWriter, fault
   * injection included) or by `slot.path` on a descriptor of its own, O_DIRECT (no allocation per read:
   * lower peak memory; only for slots whose path is the slot itself, as with hal's file and device slots). */
  readBack?: 'handle' | 'path';
  /** by path: hash the read-back on a worker thread (read-back-thread.ts) instead of this one: the
   * SHA-256 leaves the main thread for another core, at +13-14 MiB of RSS (the worker's isolate).
   * Default false (see Concurrency above). */
  readBackThread?: boolean;
  /** injectable clock, sleep and randomness (tests). */
  now?: () => number;
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  random?: () => number;
}

export interface InstallResult {
  /** chunk index the run started writing at (0 unless resumed). */
  resumedFromChunk: number;
  /** image bytes written in this run. */
  bytesWritten: number;
  /** compressed bytes received in this run. */
  bytesReceived: number;
  /** transfers started (1 when nothing failed). */
  transfers: number;
  /** SHA-256 of the image as read back from the slot (equals payload.sha256). */
  readBackSha256: string;
  durationMs: number;
}

const MIB = 1 << 20;
/** a chunk is held (until verified) and written in pieces of at most this size: a piece returns to
 * the pool once its own write completed, so the next chunk fills behind the writes of the last one
 * instead of waiting for a whole chunk buffer (issue 16: 3 whole 4 MiB chunk buffers were 12 MiB of
 * the install's peak RSS). A multiple of DIRECT_ALIGN: pieces stay O_DIRECT-aligned. */
const PIECE = MIB;
/** slot writes running at once. Two: the next piece's write is already queued at the device when one
 * completes, instead of waiting for this thread to come back from hashing to issue it (with one, the
 * chunker waited for a free piece ~2 s of a 1 GiB install, issue 24). Writes before a flush all
 * complete before it (`#writeTail`), so what a flush and the resume hint claim is unchanged. */
const WRITES_IN_FLIGHT = 2;
/** pieces in the pool beyond one chunk's (see `buffers`). */
const SLACK_PIECES = 2;
/** bytes after each region of contiguous pieces (see `#readTarget`) that belong to no piece: the frame
 * decoder lends zstd the chunk plus one byte of it, so a frame that fills its chunk leaves output room
 * and node:zlib does not ask the thread pool once more per frame (measured: a mostly empty 4 GiB image,
 * 1,024 tiny frames, took 1.6x the wall with the extra round trip queued behind the slot's I/O); a
 * frame that decodes to more than its chunk writes at most that byte here and fails. One page, so
 * the next region's pieces stay O_DIRECT-aligned. */
const REGION_GUARD = DIRECT_ALIGN;
/** compressed bytes queued at the decoder's input before the source is paused. */
const PRODUCER_QUEUE = 512 << 10;
/** scratch and carry buffer size: a decoder read that found no free chunk piece lands in the scratch
 * (so it is at most this long: the zstd FIFO delivers what the pipe holds, 64 KiB by default); a
 * carry grows on demand to a larger piece (the in-process zlib decoders deliver 1 MiB). */
const BUF_CARRY = 256 << 10;

/** compressed bytes queued for the decoder live in a ring of this size (see InputRing). */
const INPUT_RING = MIB;
/** the source is paused when the ring has less room than this (the largest piece a source here
 * delivers: ReusedBufferStream reads 256 KiB, a socket 64 KiB). */
const RING_PIECE = 256 << 10;

/**
 * A fixed buffer for bytes on their way to the decoder: `put` copies a piece in (contiguously) and
 * returns its view; `release` frees the oldest piece still held (decoder write callbacks come in
 * write order). Nothing is allocated per piece, so the transfer makes no garbage outside the JS heap.
 */
class InputRing {
  readonly #buf: Buffer;
  /** [start, end) of every piece held, oldest first. */
  readonly #held: number[] = [];
  #head = 0;

  constructor(size: number) {
    this.#buf = Buffer.allocUnsafeSlow(size);
  }

  /** Contiguous bytes a `put` can take now (at the head or, wrapping, before the oldest piece). */
  free(): number {
    if (this.#held.length === 0) return this.#buf.length;
    const tail = this.#held[0]!;
    if (this.#head > tail) return Math.max(this.#buf.length - this.#head, tail - 1);
    return Math.max(0, tail - this.#head - 1);
  }

  put(d: Buffer): Buffer | undefined {
    const n = d.length;
    let at: number;
    if (this.#held.length === 0) at = 0;
    else {
      const tail = this.#held[0]!;
      // one byte always stays free between the head and the oldest piece: head === tail means empty
      if (this.#head > tail) at = this.#buf.length - this.#head >= n ? this.#head : tail > n ? 0 : -1;
      else at = tail - this.#head > n ? this.#head : -1;
    }
    if (at < 0 || n === 0 || n > this.#buf.length) return undefined;
    d.copy(this.#buf, at);
    this.#held.push(at, at + n);
    this.#head = at + n;
    return this.#buf.subarray(at, at + n);
  }

  release(): void {
    this.#held.splice(0, 2);
    if (this.#held.length === 0) this.#head = 0;
  }
}

/**
 * Installs `payload` into `slot`, resuming from the hint in `resumeStatePath` when it matches.
 * Resolves only after every chunk was verified, written, flushed, read back and the whole image hash
 * matched; then the hint is marked complete. Idempotent: running it again re-verifies and finishes.
 * On failure throws a SlotflipError with an INSTALL_* code (or HAL_* from the slot); what was written
 * and flushed stays usable for the next resume. The slot is never armed here.
 */
export async function installPayload(opts: InstallOptions): Promise<InstallResult> {
  const payload = opts.payload;
  const payloadLength = validateIndex(payload, opts.length);
  if (opts.targetSha256 !== undefined && !/^[0-9a-f]{64}$/.test(opts.targetSha256)) {
    throw new SlotflipError('INSTALL_BAD_INDEX', 'the payload target\'s signed sha256 is not 64 hex digits; the release metadata is wrong', { details: { targetSha256: opts.targetSha256 } });
  }
  const now = opts.now ?? Date.now;
  const startedAt = now();
  const log = opts.logger;
  const signal = opts.signal ?? new AbortController().signal;
  const source = toSource(opts.source, opts.watchdog?.stallTimeoutMs);

  // capacity first: a slot that cannot hold the image is never opened for writing
  const capacity = await opts.slot.capacity();
  if (capacity < payload.size) {
    throw new SlotflipError('INSTALL_SLOT_TOO_SMALL', `slot ${opts.slot.slot} (${opts.slot.path}) holds ${capacity} bytes but the image needs ${payload.size}; repartition or pick a smaller image`, {
      details: { slot: opts.slot.slot, path: opts.slot.path, capacity, size: payload.size },
    });
  }
  throwIfAborted(signal);

  const handle = await opts.slot.open();
  // by path the read-back reads the medium on a descriptor of its own (O_DIRECT) and hashes on this
  // thread, or on a worker thread when asked (readBackThread); through the handle it reads with readAt
  const rbOpts = { path: opts.slot.path, chunkSize: payload.chunkSize, size: payload.size, imageSha256: payload.sha256, chunkSha256: (k: number) => payload.chunks[k]!.sha256, signal, ...(log ? { log } : {}) };
  let readBack: ReadBack;
  if (opts.readBack === 'path' && opts.readBackThread === true) {
    try {
      readBack = new ThreadedReadBack(rbOpts);
    } catch (e) {
      // a worker that cannot even be created (resource limits, flags): the same read-back on this thread
      log?.warn({ err: e }, 'read-back thread unavailable; reading back on the main thread');
      readBack = new ReadBackChecker(rbOpts);
    }
  } else if (opts.readBack === 'path') readBack = new ReadBackChecker(rbOpts);
  else readBack = new ReadBackChecker({ ...rbOpts, readAt: (l: number, o: number) => handle.readAt(l, o) });
  try {
    const record = await readResumeRecord(opts.resumeStatePath, payload, opts.slot.path);
    const run = new InstallRun(opts, payload, payloadLength, source, handle, readBack, now, signal, record.spent, record.corruptChunk);
    // no record for this payload on this slot: a fresh install, nothing of it can be on the slot yet;
    // record that it started, so a run killed before its first flush is resumed by re-hashing
    if (!record.found) await writeResumeHint(opts.resumeStatePath, payload, opts.slot.path, 0, false, { spent: record.spent });
    const resumedFrom = record.found ? await run.verifyExisting(record.nextChunk) : 0;
    log?.info({ slot: opts.slot.slot, resumedFrom, chunks: payload.chunks.length, size: payload.size, spentBytes: record.spent.bytes, ...(record.corruptChunk !== undefined ? { corruptChunk: record.corruptChunk } : {}) }, 'install started');
    try {
      await run.transferAll(resumedFrom);
    } catch (e) {
      // keep what was verified: finish queued writes, flush, and record them for the next resume;
      // an attempt the budget ended leaves no spent budget behind (the next attempt starts afresh)
      await run.keepProgress(isCoded(e, 'INSTALL_PAYLOAD_CORRUPT') || isCoded(e, 'INSTALL_BUDGET_EXHAUSTED'));
      throw e;
    }
    const readBackSha256 = await run.finish();
    await writeResumeHint(opts.resumeStatePath, payload, opts.slot.path, payload.chunks.length, true);
    const result: InstallResult = {
      resumedFromChunk: resumedFrom,
      bytesWritten: run.bytesWritten,
      bytesReceived: run.bytesReceived,
      transfers: run.transfers,
      readBackSha256,
      durationMs: now() - startedAt,
    };
    // readBackTailMs: how long the read-back ran after the last chunk's write completed (the wall an
    // overlapping read-back did not hide; issue 24)
    log?.info({ ...result, readBackTailMs: run.readBackTailMs }, 'install verified');
    return result;
  } finally {
    await readBack.close().catch(() => undefined);
    await handle.close().catch(() => undefined);
  }
}

/** Checks the chunk index's shape; returns the payload file length it implies. Throws INSTALL_BAD_INDEX. */
export function validateIndex(payload: PayloadInfo, length?: number): number {
  const bad = (why: string, details: Record<string, unknown> = {}): SlotflipError =>
    new SlotflipError('INSTALL_BAD_INDEX', `payload chunk index is inconsistent: ${why}; the release metadata is wrong`, { details });
  const { size, chunkSize, chunks } = payload;
  if (!Number.isSafeInteger(size) || size < 0) throw bad('size is not a non-negative integer', { size });
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0 || chunkSize > 256 * MIB) throw bad('chunkSize out of range', { chunkSize });
  if (!['zstd', 'gzip', 'none'].includes(payload.compression)) throw bad('unknown compression', { compression: payload.compression });
  if (!/^[0-9a-f]{64}$/.test(payload.sha256)) throw bad('image sha256 is not 64 hex digits');
  if (chunks.length !== Math.ceil(size / chunkSize)) throw bad(`${chunks.length} chunks for ${size} bytes in ${chunkSize}-byte chunks`, { chunks: chunks.length });
  let off = 0;
  chunks.forEach((c, i) => {
    if (c.offset !== off || !Number.isSafeInteger(c.length) || c.length <= 0 || !/^[0-9a-f]{64}$/.test(c.sha256)) throw bad(`chunk ${i} is not contiguous or malformed`, { chunk: i });
    // v2 carries a compressed-frame hash on every chunk, v1 on none: a mix is a broken index
    if ((c.packedSha256 !== undefined) !== (chunks[0]!.packedSha256 !== undefined) || (c.packedSha256 !== undefined && !/^[0-9a-f]{64}$/.test(c.packedSha256))) throw bad(`chunk ${i}'s packedSha256 is missing or malformed`, { chunk: i });
    off += c.length;
  });
  if (length !== undefined && length !== off) throw bad(`chunks add up to ${off} bytes but the signed length is ${length}`, { length, sum: off });
  return off;
}

/** The payload source an install (or its preflight) reads: a file, HTTP mirrors, or one given. */
export function toSource(spec: InstallSourceSpec, stallTimeoutMs: number | undefined): PayloadSource {
  if ('open' in spec) return spec;
  if ('path' in spec) return fileSource(spec.path);
  return httpSource({ mirrors: spec.urls, tls: spec.tls, headers: spec.headers, connectTimeoutMs: spec.connectTimeoutMs ?? stallTimeoutMs });
}

/** A SlotflipError-shaped error with one of slotflip's code prefixes (Node's own errors carry `code` too). */
function isOurs(e: unknown): e is SlotflipError {
  return isCoded(e) && /^(INSTALL|HAL|MANIFEST|DAEMON)_/.test(e.code);
}

function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw new SlotflipError('INSTALL_ABORTED', 'install aborted', {});
}

function defaultSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

class InstallRun {
  bytesWritten = 0;
  bytesReceived = 0;
  transfers = 0;
  /** ms from the last chunk's write to the end of the read-back (undefined: no chunk written here). */
  readBackTailMs: number | undefined;
  #lastWriteAt: number | undefined;
  /** next chunk to verify and hand to the writer. */
  next = 0;
  readonly #chunkCount: number;
  readonly #pool: Buffer[] = [];
  readonly #poolWaiters: Array<(b: Buffer) => void> = [];
  #writeTail: Promise<void> = Promise.resolve();
  #writesRunning = 0;
  readonly #writeWaiters: Array<() => void> = [];
  #flushTail: Promise<void> = Promise.resolve();
  #ioError: unknown;
  #sinceFlush = 0;
  /** chunks [0, durable) are written and flushed. */
  #durable = 0;
  // the attempt's download budget (see BudgetOptions): what earlier runs spent, and the caps
  readonly #spent: SpentBudget;
  readonly #spentBytesBase: number;
  readonly #spentMsBase: number;
  readonly #runStartedAt: number;
  readonly #maxBytes: number;
  readonly #maxMs: number;
  /** a chunk an earlier attempt found corrupt on every mirror (until it verifies). */
  #corruptChunk: number | undefined;
  #rate = 0;
  #lastProgressAt = 0;
  #lastProgressBytes = 0;
  // chunker state (per transfer)
  /** the piece being filled, and its bytes so far */
  #buf: Buffer | undefined;
  #fill = 0;
  /** the current chunk's full pieces (each `#piece` bytes but the chunk's last), in order */
  #parts: Buffer[] = [];
  /** bytes of the current chunk in `#parts` */
  #done = 0;
  /** piece size: PIECE, or one chunk's stride when chunks are smaller */
  readonly #piece: number;
  /** the pool's one block, and how many whole-chunk regions it holds (chunks of several pieces, frame
   * decoder only: see `#readTarget`) */
  readonly #block: Buffer;
  readonly #perChunk: number;
  readonly #regions: number;
  /** bytes from one region's start to the next's: its pieces plus REGION_GUARD */
  readonly #regionStride: number;
  /** the rest of the claimed region's pieces, in order: the current chunk's next pieces */
  #reserved: Buffer[] = [];
  /** the decoder waits for a free region (`#readTarget` said "not now"): resumed from `#release` */
  #wantRegion = false;
  #hash = createHash('sha256');
  #carry: [Buffer, Buffer] = [Buffer.alloc(0), Buffer.alloc(0)];
  #carrySide = 0;
  #blocked = false;
  #where = '';
  // checks of the compressed bytes (see INVARIANTS): v2 per frame, v1 the whole payload file
  readonly #packed: boolean;
  readonly #targetSha: string | undefined;
  /** v2: frames [first, #packedOk) of this transfer matched their packedSha256. */
  #packedOk = 0;
  /** v2: the frame being hashed, and its hash so far. */
  #frameIdx = 0;
  #frameHash: Hash = createHash('sha256');
  /** v1: SHA-256 of payload bytes [0, #wholeAt) (undefined: not contiguous, cannot complete). */
  #whole: Hash | undefined;
  #wholeAt = 0;
  /** v1: the next frame boundary at which to save the hash's state. */
  #wholeFrame = 0;
  /** v1: the hash's state at the start of frame k (frames a later transfer may restart at). */
  readonly #snapshots = new Map<number, Hash>();
  /** v1: the whole payload file hashed to its signed SHA-256 in this transfer. */
  #targetOk = false;
  /** chunks whose SHA-256 matched but whose compressed bytes are not yet proven (in order). */
  readonly #held: Array<{ parts: Buffer[]; index: number }> = [];
  /** set per transfer: stop the transfer with this error. */
  #failTransfer: (e: unknown) => void = () => undefined;
  /** set per transfer: the decoder may deliver again. */
  #unblocked: () => void = () => undefined;

  constructor(
    private readonly opts: InstallOptions,
    private readonly payload: PayloadInfo,
    private readonly payloadLength: number,
    private readonly source: PayloadSource,
    private readonly handle: SlotHandle,
    private readonly readBack: ReadBack,
    private readonly now: () => number,
    private readonly signal: AbortSignal,
    spent: SpentBudget,
    corruptChunk: number | undefined,
  ) {
    this.#corruptChunk = corruptChunk;
    this.#chunkCount = payload.chunks.length;
    this.#packed = payload.chunks[0]?.packedSha256 !== undefined;
    this.#targetSha = this.#packed ? undefined : opts.targetSha256;
    this.#spent = spent;
    this.#spentBytesBase = spent.bytes;
    this.#spentMsBase = spent.ms;
    this.#runStartedAt = now();
    const b = opts.budget ?? {};
    const maxChunk = payload.chunks.reduce((m, c) => Math.max(m, c.length), 0);
    this.#maxBytes = Math.ceil((b.maxBytesFactor ?? 3) * payloadLength + maxChunk);
    this.#maxMs = b.maxMs ?? 24 * 3_600_000;
    // one page-aligned block cut at page boundaries: a slot writer that can (hal's file and device
    // slots) writes these pieces with O_DIRECT, past the page cache (hal/file-slot.ts)
    const stride = Math.min(PIECE, Math.ceil(payload.chunkSize / DIRECT_ALIGN) * DIRECT_ALIGN);
    this.#piece = Math.min(stride, payload.chunkSize);
    const perChunk = Math.ceil(payload.chunkSize / this.#piece);
    // the in-process zstd frame decoder decodes a frame into one buffer: a chunk of several pieces
    // then takes a region of contiguous pieces (two regions: one fills while the other's pieces are
    // written), where otherwise the decoder's own chunk-sized buffer took the frame and the pieces a
    // copy of it (4 MiB chunks: 8 MiB of pieces instead of 6 plus 4)
    const regions = perChunk > 1 && decodesFrames(payload.compression, { ...opts, frames: { lengths: payload.chunks.map((c) => c.length), outLength: (i) => this.#chunkLen(i) } });
    const n = Math.max(perChunk, opts.buffers ?? (regions ? 2 * perChunk : perChunk + SLACK_PIECES));
    // regions first (each followed by its guard), then any pieces left over
    const groups = regions ? Math.floor(n / perChunk) : 0;
    const regionStride = perChunk * stride + REGION_GUARD;
    const block = alignedBuffer(groups * regionStride + (n - groups * perChunk) * stride);
    for (let g = 0; g < groups; g++) for (let j = 0; j < perChunk; j++) this.#pool.push(block.subarray(g * regionStride + j * stride, g * regionStride + j * stride + this.#piece));
    for (let i = 0; i < n - groups * perChunk; i++) this.#pool.push(block.subarray(groups * regionStride + i * stride, groups * regionStride + i * stride + this.#piece));
    this.#block = block;
    this.#perChunk = perChunk;
    this.#regions = groups;
    this.#regionStride = regionStride;
    this.#lastProgressAt = now();
  }

  #chunkLen(i: number): number {
    return Math.min(this.payload.chunkSize, this.payload.size - i * this.payload.chunkSize);
  }

  /**
   * Re-hashes the chunks already on the slot, from chunk 0 up to the first that does not match the
   * signed index, and returns that index: the download resumes there. The chunks are read the way the
   * read-back reads (by path: O_DIRECT, the medium, whose direct read first writes back what a killed
   * process left dirty in the page cache; else through the slot handle), so this scan IS their
   * read-back: a chunk the medium lost or changed while no daemon ran is fetched and written again,
   * not passed on the strength of the page cache. The scan does not stop at the hint: the hint is
   * persisted only at a flush (every `flushEveryBytes`), but a process that died (SIGKILL, OOM, a
   * crash) left every chunk it wrote in the page cache, and a power cut leaves whatever the kernel
   * had written back; a chunk that hashes right IS the signed chunk, wherever it came from. Chunks
   * found past the hint are flushed and recorded before the download goes on, so the hint still only
   * claims flushed chunks. Only called when a record says this payload's install started on this
   * slot (a fresh install reads nothing back before writing).
   */
  async verifyExisting(hint: number): Promise<number> {
    const i = await this.readBack.verifyPrefix(undefined, this.signal);
    if (i < hint) this.opts.logger?.warn({ hint, chunk: i, offset: i * this.payload.chunkSize }, 'resume: a chunk recorded as written no longer matches the signed index on the slot; writing again from it');
    if (i > hint) {
      await this.handle.flush();
      await writeResumeHint(this.opts.resumeStatePath, this.payload, this.opts.slot.path, i, false, this.#extra());
    }
    this.opts.logger?.debug({ hint, verified: i }, 'resume hint checked');
    this.#durable = i;
    this.#lastProgressBytes = Math.min(this.payload.size, i * this.payload.chunkSize);
    return i;
  }

  #release(b: Buffer): void {
    const w = this.#poolWaiters.shift();
    if (w) w(b);
    else {
      this.#pool.push(b);
      if (this.#wantRegion && this.#freeRegion() !== undefined) {
        this.#wantRegion = false;
        this.#unblocked();
      }
    }
  }

  /** A region (`#perChunk` contiguous pieces of the block) whose pieces are all in the pool. */
  #freeRegion(): number | undefined {
    const free = new Set(this.#pool.map((b) => b.byteOffset - this.#block.byteOffset));
    for (let g = 0; g < this.#regions; g++) {
      let all = true;
      for (let j = 0; j < this.#perChunk && all; j++) all = free.has(g * this.#regionStride + j * this.#piece);
      if (all) return g;
    }
    return undefined;
  }

  #checkIo(): void {
    if (this.#ioError !== undefined) throw this.#ioError;
  }

  #setIoError(e: unknown): void {
    if (this.#ioError !== undefined) return;
    this.#ioError = isOurs(e) ? e : new SlotflipError('INSTALL_SLOT_IO', `writing slot ${this.opts.slot.path} failed; check the device`, { cause: e, details: { path: this.opts.slot.path } });
    this.#failTransfer(this.#ioError);
  }

  /** Runs `write` once fewer than WRITES_IN_FLIGHT slot writes are running (in queue order). */
  async #queueWrite(write: () => Promise<void>): Promise<void> {
    if (this.#writesRunning < WRITES_IN_FLIGHT) this.#writesRunning++;
    else await new Promise<void>((resolve) => this.#writeWaiters.push(resolve));
    try {
      await write();
    } finally {
      // hand the slot straight to the next queued write, if any
      const next = this.#writeWaiters.shift();
      if (next) next();
      else this.#writesRunning--;
    }
  }

  /** Queues a verified chunk for writing, piece by piece (up to WRITES_IN_FLIGHT pieces at once); each
   * piece returns to the pool once its own write completed. `#writeTail` settles once every write
   * queued so far has, whatever order they complete in: a flush waits for it. */
  #write(parts: Buffer[], index: number): void {
    const len = this.#chunkLen(index);
    const offset = index * this.payload.chunkSize;
    parts.forEach((buf, j) => {
      const at = j * this.#piece;
      const n = Math.min(this.#piece, len - at);
      const written = this.#queueWrite(async () => {
        if (this.#ioError === undefined) await this.handle.writeAt(buf.subarray(0, n), offset + at);
      })
        .catch((e: unknown) => this.#setIoError(e))
        .finally(() => this.#release(buf));
      this.#writeTail = Promise.all([this.#writeTail, written]).then(() => undefined);
    });
    if (index === this.#chunkCount - 1) {
      void this.#writeTail.then(() => {
        this.#lastWriteAt = this.now();
      });
    }
    this.bytesWritten += len;
    this.#sinceFlush += len;
    if (this.#sinceFlush >= (this.opts.flushEveryBytes ?? 64 * MIB) || index === this.#chunkCount - 1) {
      this.#sinceFlush = 0;
      this.#flush(index + 1);
    }
    this.#progress(Math.min(this.payload.size, (index + 1) * this.payload.chunkSize));
  }

  /** fsync once every write queued before it completed, then persist the hint and let the read-back
   * advance; later writes keep going meanwhile (they are not claimed by this flush). */
  #flush(upto: number): void {
    const writes = this.#writeTail;
    this.#flushTail = Promise.all([this.#flushTail, writes])
      .then(async () => {
        if (this.#ioError !== undefined) return;
        await this.handle.flush();
        await writeResumeHint(this.opts.resumeStatePath, this.payload, this.opts.slot.path, upto, false, this.#extra());
        this.#durable = upto;
        this.readBack.advance(Math.min(this.payload.size, upto * this.payload.chunkSize));
      })
      .catch((e: unknown) => this.#setIoError(e));
  }

  #progress(bytes: number, force = false): void {
    const t = this.now();
    const dt = t - this.#lastProgressAt;
    if (!force && dt < 200) return;
    if (dt > 0) {
      const inst = ((bytes - this.#lastProgressBytes) * 1000) / dt;
      this.#rate = this.#rate === 0 ? inst : 0.7 * this.#rate + 0.3 * inst;
    }
    this.#lastProgressAt = t;
    this.#lastProgressBytes = bytes;
    const left = this.payload.size - bytes;
    this.opts.onProgress?.({ bytes, total: this.payload.size, rate: Math.round(this.#rate), etaSeconds: this.#rate > 0 ? left / this.#rate : left === 0 ? 0 : null });
  }

  // ---- chunker: image bytes → chunks → verify → write ----

  /** Takes image bytes (consumed before returning). False: blocked until a buffer frees up; the
   * rest was kept in a carry buffer and `#unblocked` is called when delivery may resume. Throws on a
   * hash mismatch or excess data. */
  #push(piece: Buffer): boolean {
    if (this.#blocked) {
      this.#stash(piece, 0);
      return false;
    }
    this.#eat(piece, 0);
    return !this.#blocked;
  }

  #stash(piece: Buffer, from: number): void {
    const n = piece.length - from;
    let c = this.#carry[this.#carrySide]!;
    if (c.length < n) c = this.#carry[this.#carrySide] = Buffer.allocUnsafeSlow(Math.max(n, BUF_CARRY));
    piece.copy(c, 0, from);
    this.#carryLen = n;
  }

  #carryLen = 0;

  readonly #scratch = Buffer.allocUnsafeSlow(BUF_CARRY);

  /** Where the decoder's next read should land: straight into the current chunk piece when there is
   * one (no copy), else a scratch buffer that `#eat` copies from. Asked for a `whole` chunk (the frame
   * decoder, at a chunk's start) with chunks of several pieces: a free region of contiguous pieces
   * for the whole chunk, or undefined when none is free yet (the decoder waits: `#release` resumes
   * it once one is). */
  #readTarget(whole?: number): Buffer | undefined {
    if (!this.#blocked && this.next < this.#chunkCount) {
      if (whole !== undefined && this.#regions > 0 && this.#buf === undefined && this.#reserved.length === 0 && this.#done === 0) {
        const len = this.#chunkLen(this.next);
        const g = this.#freeRegion();
        if (g === undefined) {
          this.#wantRegion = true;
          return undefined;
        }
        const start = g * this.#regionStride;
        const pieces = Math.ceil(len / this.#piece);
        for (let j = 0; j < pieces; j++) {
          const at = this.#pool.findIndex((b) => b.byteOffset - this.#block.byteOffset === start + j * this.#piece);
          this.#reserved.push(this.#pool.splice(at, 1)[0]!);
        }
        this.#buf = this.#reserved.shift();
        // with the guard: the decoder lends zstd one byte more than the chunk (see REGION_GUARD)
        return this.#block.subarray(start, start + len + 1);
      }
      if (this.#buf === undefined) this.#buf = this.#reserved.shift() ?? this.#pool.pop();
      if (this.#buf !== undefined) return this.#buf.subarray(this.#fill, this.#pieceLen());
    }
    return this.#scratch;
  }

  #eat(piece: Buffer, from: number): void {
    const { payload } = this;
    let p = from;
    // a read that landed in place (see #readTarget): hash it where it is, in the current piece and,
    // in a claimed region, on into its next pieces (contiguous)
    if (from === 0 && this.#buf !== undefined && piece.buffer === this.#buf.buffer && piece.byteOffset === this.#buf.byteOffset + this.#fill && this.next < this.#chunkCount) {
      if (this.#fill + piece.length <= this.#pieceLen() + this.#reserved.length * this.#piece && piece.length <= this.#chunkLen(this.next) - this.#done - this.#fill) {
        while (p < piece.length) {
          this.#buf ??= this.#reserved.shift()!;
          const n = Math.min(this.#pieceLen() - this.#fill, piece.length - p);
          this.#hash.update(piece.subarray(p, p + n));
          this.#fill += n;
          p += n;
          if (this.#fill === this.#pieceLen()) this.#pieceFull();
        }
      }
    }
    while (p < piece.length) {
      if (this.#buf === undefined) {
        const b = this.#reserved.shift() ?? this.#pool.pop();
        if (b === undefined) {
          this.#stash(piece, p);
          this.#blocked = true;
          this.#poolWaiters.push((buf) => this.#onBuffer(buf));
          return;
        }
        this.#buf = b;
      }
      if (this.next >= this.#chunkCount) {
        throw new SlotflipError('INSTALL_PAYLOAD_OVERSIZED', `${this.#where}: image data runs past the signed size ${payload.size}`, { retryable: true, details: { url: this.#where, size: payload.size } });
      }
      const len = this.#pieceLen();
      const n = Math.min(len - this.#fill, piece.length - p);
      const part = piece.subarray(p, p + n);
      part.copy(this.#buf, this.#fill);
      this.#hash.update(part);
      this.#fill += n;
      p += n;
      if (this.#fill === len) this.#pieceFull();
    }
  }

  /** Bytes the current piece takes of the current chunk. */
  #pieceLen(): number {
    return Math.min(this.#piece, this.#chunkLen(this.next) - this.#done);
  }

  /** The current piece is full: keep it with its chunk; the chunk complete, verify it. */
  #pieceFull(): void {
    this.#parts.push(this.#buf!);
    this.#done += this.#fill;
    this.#buf = undefined;
    this.#fill = 0;
    if (this.#done === this.#chunkLen(this.next)) this.#completeChunk();
  }

  /** The current chunk is complete (all its pieces): verify it against the signed index, then queue
   * the write. */
  #completeChunk(): void {
    const { payload } = this;
    const i = this.next;
    const got = this.#hash.digest('hex');
    this.#hash = createHash('sha256');
    const want = payload.chunks[i]!.sha256;
    if (got !== want) {
      throw new SlotflipError('INSTALL_CHUNK_HASH_MISMATCH', `chunk ${i} (image offset ${i * payload.chunkSize}) from ${this.#where} has SHA-256 ${got} but the signed index says ${want}; nothing from it was written`, {
        retryable: true,
        details: { chunk: i, offset: i * payload.chunkSize, payloadOffset: payload.chunks[i]!.offset, url: this.#where },
      });
    }
    const parts = this.#parts;
    this.#parts = [];
    this.#done = 0;
    this.next = i + 1;
    // verify before write covers the compressed bytes too: a chunk whose frame (v2) or, for the last
    // chunk, whose payload file (v1) is not proven yet waits for the producer's verdict
    if (this.#held.length > 0 || !this.#frameOk(i)) this.#held.push({ parts, index: i });
    else this.#write(parts, i);
  }

  // ---- checks of the compressed bytes ----

  /** Whether chunk `i`'s compressed bytes passed their check (always, without one). */
  #frameOk(i: number): boolean {
    if (this.#packed) return i < this.#packedOk;
    if (this.#targetSha !== undefined) return i < this.#chunkCount - 1 || this.#targetOk;
    return true;
  }

  /** Hands held chunks whose compressed bytes are now proven to the writer, in order. */
  #releaseHeld(): void {
    while (this.#held.length > 0 && this.#frameOk(this.#held[0]!.index)) {
      const h = this.#held.shift()!;
      this.#write(h.parts, h.index);
    }
  }

  /** Sets up the checks for a transfer starting at chunk `first` (payload offset `offset`); returns
   * where to open the payload: `offset`, or 0 when the v1 file hash must (re-)read the bytes before
   * it (a new process or another mirror: the hash state at that frame is not known here). */
  #startChecks(first: number, offset: number): number {
    this.#packedOk = first;
    this.#frameIdx = first;
    this.#frameHash = createHash('sha256');
    if (this.#targetSha === undefined) return offset;
    this.#targetOk = false;
    const saved = this.#snapshots.get(first);
    if (offset > 0 && saved !== undefined) {
      this.#whole = saved.copy();
      this.#wholeAt = offset;
      this.#wholeFrame = first;
      return offset;
    }
    this.#whole = createHash('sha256');
    this.#wholeAt = 0;
    this.#wholeFrame = 0;
    this.#snapshots.clear();
    return 0;
  }

  /** v2: hashes payload bytes [at, at + d.length) frame by frame; returns how many leading bytes may go
   * on to the decoder: all, or those before the first frame that does not match (with the error). */
  #checkPacked(d: Buffer, at: number): { pass: number; error?: SlotflipError } {
    const { chunks } = this.payload;
    let p = 0;
    while (p < d.length && this.#frameIdx < this.#chunkCount) {
      const k = this.#frameIdx;
      const c = chunks[k]!;
      const end = c.offset + c.length;
      const take = Math.min(d.length - p, end - (at + p));
      this.#frameHash.update(d.subarray(p, p + take));
      p += take;
      if (at + p < end) break;
      const got = this.#frameHash.digest('hex');
      this.#frameHash = createHash('sha256');
      this.#frameIdx = k + 1;
      if (got !== c.packedSha256) {
        return {
          pass: Math.max(0, c.offset - at),
          error: new SlotflipError('INSTALL_PACKED_HASH_MISMATCH', `chunk ${k} (payload bytes ${c.offset}..${end - 1}) from ${this.#where}: its compressed frame has SHA-256 ${got} but the signed index says ${c.packedSha256}; the mirror serves bytes that were not signed, nothing from it was written`, {
            retryable: true,
            details: { chunk: k, payloadOffset: c.offset, length: c.length, expected: c.packedSha256, actual: got, url: this.#where },
          }),
        };
      }
      this.#packedOk = k + 1;
    }
    return { pass: d.length };
  }

  /** v1: adds payload bytes [at, at + piece.length) to the file hash, saving its state at each frame
   * boundary (a retry of that frame continues from there instead of re-reading the file). */
  #hashWhole(piece: Buffer, at: number): void {
    if (this.#whole === undefined || at + piece.length <= this.#wholeAt) return; // (bytes hashed already: a server that ignored the Range)
    if (at < this.#wholeAt) {
      piece = piece.subarray(this.#wholeAt - at);
      at = this.#wholeAt;
    }
    if (at !== this.#wholeAt) {
      this.#whole = undefined; // a gap: this transfer cannot prove the file
      return;
    }
    const { chunks } = this.payload;
    let p = 0;
    for (;;) {
      const k = this.#wholeFrame;
      if (k < this.#chunkCount && this.#wholeAt === chunks[k]!.offset) {
        this.#snapshots.set(k, this.#whole.copy());
        // keep the states a retry may need: from the first chunk not yet handed to the writer
        const keep = this.#held[0]?.index ?? this.next;
        for (const j of this.#snapshots.keys()) if (j < keep) this.#snapshots.delete(j);
        this.#wholeFrame = k + 1;
      }
      if (p >= piece.length) break;
      const b = this.#wholeFrame < this.#chunkCount ? chunks[this.#wholeFrame]!.offset : this.payloadLength;
      const take = Math.min(piece.length - p, b - this.#wholeAt);
      if (take <= 0) break; // past the signed length: the caller trims it
      this.#whole.update(piece.subarray(p, p + take));
      this.#wholeAt += take;
      p += take;
    }
  }

  /** v1, at the payload's last byte: compares the file hash with the signed target's. */
  #checkTarget(): SlotflipError | undefined {
    if (this.#targetSha === undefined || this.#targetOk) return undefined;
    const complete = this.#whole !== undefined && this.#wholeAt === this.payloadLength;
    const got = complete ? this.#whole!.digest('hex') : undefined;
    this.#whole = undefined;
    if (got === this.#targetSha) {
      this.#targetOk = true;
      return undefined;
    }
    return new SlotflipError('INSTALL_PAYLOAD_HASH_MISMATCH', `${this.#where}: the payload file ${got !== undefined ? `has SHA-256 ${got}` : 'could not be hashed whole'} but its signed target says ${this.#targetSha} (same length): the mirror serves a file that was not signed; its last chunk was not written`, {
      retryable: true,
      details: { expected: this.#targetSha, actual: got, url: this.#where, length: this.payloadLength },
    });
  }

  /** A pool buffer came back while blocked: continue with the carried bytes, then unblock. */
  #onBuffer(buf: Buffer): void {
    if (this.#ioError !== undefined) {
      this.#pool.push(buf);
      return;
    }
    if (!this.#blocked) {
      this.#release(buf);
      return;
    }
    this.#buf = buf;
    this.#blocked = false;
    const carried = this.#carry[this.#carrySide]!.subarray(0, this.#carryLen);
    this.#carryLen = 0;
    this.#carrySide ^= 1; // a re-block stashes into the other side while we read this one
    try {
      this.#eat(carried, 0);
    } catch (e) {
      this.#failTransfer(e);
      return;
    }
    if (!this.#blocked) {
      this.#unblocked();
      for (const w of this.#idleWaiters.splice(0)) w();
    }
  }

  readonly #idleWaiters: Array<() => void> = [];

  /** Resolves once the chunker holds no carried bytes. */
  #whenUnblocked(): Promise<void> {
    if (!this.#blocked) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /** Drops a partial chunk and the carry at the end of a transfer. */
  #resetChunker(): void {
    for (const w of this.#idleWaiters.splice(0)) w();
    if (this.#buf !== undefined) this.#release(this.#buf);
    this.#buf = undefined;
    for (const b of this.#reserved.splice(0)) this.#release(b);
    this.#wantRegion = false;
    this.#fill = 0;
    for (const b of this.#parts.splice(0)) this.#release(b);
    this.#done = 0;
    this.#hash = createHash('sha256');
    this.#carryLen = 0;
    if (this.#blocked) {
      this.#blocked = false;
      const i = this.#poolWaiters.findIndex(() => true);
      if (i >= 0) this.#poolWaiters.splice(i, 1);
    }
    // chunks whose compressed bytes were never proven are dropped, unwritten: fetched again
    if (this.#held.length > 0) {
      this.next = Math.min(this.next, this.#held[0]!.index);
      for (const h of this.#held.splice(0)) for (const b of h.parts) this.#release(b);
    }
  }

  // ---- budget ----

  /** The record's extra fields: the spent budget (unless the attempt ended) and a known-corrupt chunk. */
  #extra(withSpent = true): ResumeExtra {
    return {
      ...(withSpent ? { spent: this.#spentNow() } : {}),
      ...(this.#corruptChunk !== undefined && this.next <= this.#corruptChunk ? { corruptChunk: this.#corruptChunk } : {}),
    };
  }

  /** What this attempt has spent so far (earlier runs included). */
  #spentNow(): SpentBudget {
    return { bytes: this.#spentBytesBase + this.bytesReceived, ms: this.#spentMsBase + (this.now() - this.#runStartedAt), chunkFailures: this.#spent.chunkFailures };
  }

  /** INSTALL_BUDGET_EXHAUSTED when the attempt spent more bytes or time than allowed, else undefined. */
  #overBudget(): SlotflipError | undefined {
    const spent = this.#spentNow();
    if (spent.bytes <= this.#maxBytes && spent.ms <= this.#maxMs) return undefined;
    const what = spent.bytes > this.#maxBytes ? `${spent.bytes} bytes (the budget is ${this.#maxBytes} for a ${this.payloadLength}-byte payload)` : `${Math.round(spent.ms / 1000)} s downloading (the budget is ${Math.round(this.#maxMs / 1000)} s)`;
    return new SlotflipError('INSTALL_BUDGET_EXHAUSTED', `this update attempt received ${what} without finishing; giving up on it: check the payload server and the link, raise config download.maxBytesFactor / maxMinutes if the link is just poor, or retry with \`slotflip check\``, {
      retryable: false,
      details: { bytes: spent.bytes, maxBytes: this.#maxBytes, ms: spent.ms, maxMs: this.#maxMs, url: this.#where },
    });
  }

  /** Counts a verification/decompression failure of `chunk` from mirror `m`; returns the count. */
  #countChunkFailure(chunk: number, m: number): number {
    const key = `${chunk}@${m}`;
    const n = (this.#spent.chunkFailures[key] ?? 0) + 1;
    this.#spent.chunkFailures[key] = n;
    return n;
  }

  #chunkFailures(chunk: number, m: number): number {
    return this.#spent.chunkFailures[`${chunk}@${m}`] ?? 0;
  }

  /** Persists the spent budget now (best effort): a process killed between retries keeps the count. */
  async #persistSpent(): Promise<void> {
    try {
      await this.#writeTail;
      await this.#flushTail;
      await writeResumeHint(this.opts.resumeStatePath, this.payload, this.opts.slot.path, this.#durable, false, this.#extra());
    } catch (e) {
      this.opts.logger?.warn({ err: e }, 'could not record the download budget');
    }
  }

  // ---- transfers ----

  /** Runs transfers (retries, backoff with jitter, mirror rotation) until every chunk is written. */
  async transferAll(first: number): Promise<void> {
    this.next = first;
    // v1: a resumed install found every chunk on the slot, but the payload file's own hash is proven
    // only by streaming it: fetch the last chunk again (the file is re-read from 0 and hashed on the
    // way, the chunk is verified and rewritten with the same bytes) instead of skipping the check
    if (this.#targetSha !== undefined && first >= this.#chunkCount && this.#chunkCount > 0) this.next = this.#chunkCount - 1;
    const retry = this.opts.retry ?? {};
    const maxAttempts = retry.maxAttempts ?? 6;
    const base = retry.baseDelayMs ?? 500;
    const cap = retry.maxDelayMs ?? 30_000;
    const random = this.opts.random ?? Math.random;
    const sleep = this.opts.sleep ?? defaultSleep;
    const maxChunkFailures = Math.max(1, this.opts.budget?.maxChunkFailures ?? 3);
    const count = this.source.count;
    const deadMirrors = new Set<number>();
    let failures = 0;
    let mirror = 0;
    // a chunk that failed verification or decompression: the next transfer fetches it alone, so a
    // payload corrupt at the source costs one chunk per retry, not the rest of the file
    let suspect: number | undefined;
    const known = this.#corruptChunk;
    if (known !== undefined && this.next <= known) {
      // every mirror served this chunk corrupt when the last attempt ended: ask each once more (the
      // payload may have been republished), alone, instead of a full budget of retries per mirror
      for (let j = 0; j < count; j++) this.#spent.chunkFailures[`${known}@${j}`] = Math.max(this.#chunkFailures(known, j), maxChunkFailures - 1);
      if (this.next === known) suspect = known;
    }
    while (this.next < this.#chunkCount) {
      throwIfAborted(this.signal);
      this.#checkIo();
      const over = this.#overBudget();
      if (over) throw over;
      const before = this.next;
      try {
        this.transfers++;
        await this.#transfer(mirror % count, this.next, suspect === this.next ? this.next + 1 : this.#chunkCount);
        if (suspect !== undefined && this.next > suspect) suspect = undefined;
      } catch (e) {
        if (this.signal.aborted) throw new SlotflipError('INSTALL_ABORTED', 'install aborted', { cause: e });
        this.#checkIo();
        const err = isOurs(e) ? e : new SlotflipError('INSTALL_NETWORK', `transfer from ${this.#where} failed; resuming`, { cause: e, retryable: true, details: { url: this.#where } });
        if (err.code === 'INSTALL_BUDGET_EXHAUSTED') throw err;
        const retryable = err.retryable === true && this.source.kind !== 'file';
        this.opts.logger?.warn({ err, mirror: mirror % count, chunk: this.next, failures }, 'transfer failed');
        if (retryable && (err.code === 'INSTALL_CHUNK_HASH_MISMATCH' || err.code === 'INSTALL_DECOMPRESS' || err.code === 'INSTALL_PACKED_HASH_MISMATCH' || err.code === 'INSTALL_PAYLOAD_HASH_MISMATCH')) {
          // the bytes arrived but are wrong: retrying the same mirror helps only against a transient
          // fault (a bad cache node, a flaky proxy); a few tries, then the next mirror, then give up
          const chunk = this.next;
          const m = mirror % count;
          if (err.code === 'INSTALL_PAYLOAD_HASH_MISMATCH') {
            // v1: the file differs from the signed one and no frame says where: another try costs the
            // whole file, so this mirror is spent at once, and the next one is hashed from byte 0
            this.#snapshots.clear();
            this.#spent.chunkFailures[`${chunk}@${m}`] = Math.max(this.#chunkFailures(chunk, m), maxChunkFailures - 1);
          }
          const n = this.#countChunkFailure(chunk, m);
          suspect = chunk;
          failures = 0;
          if (n >= maxChunkFailures) {
            let next: number | undefined;
            for (let k = 1; k <= count; k++) {
              const j = (m + k) % count;
              if (!deadMirrors.has(j) && this.#chunkFailures(chunk, j) < maxChunkFailures) {
                next = j;
                break;
              }
            }
            if (next === undefined) {
              this.#corruptChunk = chunk;
              const tried = Array.from({ length: count }, (_, j) => this.#chunkFailures(chunk, j));
              const what = err.code === 'INSTALL_PAYLOAD_HASH_MISMATCH' ? 'the payload file (its signed SHA-256)' : `chunk ${chunk} (image offset ${chunk * this.payload.chunkSize})`;
              throw new SlotflipError('INSTALL_PAYLOAD_CORRUPT', `${what} failed verification ${tried.reduce((a, b) => a + b, 0)} times from ${count} mirror${count === 1 ? '' : 's'} (last: ${this.#where}); the payload on the server does not match the signed release: republish it, then retry with \`slotflip check\``, {
                cause: err,
                retryable: false,
                details: { chunk, offset: chunk * this.payload.chunkSize, mirrors: count, failures: tried, url: this.#where, last: err.code },
              });
            }
            mirror = next;
          }
          await this.#persistSpent();
          await sleep(Math.min(cap, base * 2 ** (n - 1)) * (0.5 + 0.5 * random()), this.signal);
          continue;
        }
        if (!retryable) {
          if (this.source.kind === 'file') throw err;
          deadMirrors.add(mirror % this.source.count);
          if (deadMirrors.size >= this.source.count) throw err;
        }
        failures = this.next > before ? 1 : failures + 1;
        if (failures >= maxAttempts) throw err;
        do mirror++;
        while (deadMirrors.has(mirror % count));
        await sleep(Math.min(cap, base * 2 ** (failures - 1)) * random(), this.signal);
      }
    }
  }

  /** One transfer of chunks [first, last), or up to the first failure. */
  async #transfer(mirrorIndex: number, first: number, last: number): Promise<void> {
    const { payload } = this;
    const offset = payload.chunks[first]!.offset;
    const end = last < this.#chunkCount ? payload.chunks[last]!.offset : this.payloadLength;
    const openAt = this.#startChecks(first, offset);
    const checking = this.#packed || this.#targetSha !== undefined;
    const ctl = new AbortController();
    const onAbort = (): void => ctl.abort();
    this.signal.addEventListener('abort', onAbort, { once: true });
    let prepared: PreparedDecoder | undefined;
    let opened: OpenedStream | undefined;
    let decoder: Decoder | undefined;
    let timer: NodeJS.Timeout | undefined;
    let producerError: unknown;
    let consumerError: unknown;
    try {
      // The decoder's asynchronous setup comes BEFORE the source is opened: from the moment an HTTP
      // response is handed over until its listeners are attached below, nothing may await. A reset in
      // such a gap destroys the response together with the bytes it buffered, and its 'error' and
      // 'close' reach no listener: the cut would surface only through the stall watchdog, and the
      // next transfer would restart from the first chunk instead of resuming.
      // the transfer's frames (one per chunk): zstd decodes them one by one in-process (decode.ts)
      const decodeOpts = {
        zstdPath: this.opts.zstdPath,
        gzipDecoder: this.opts.gzipDecoder,
        ...(this.opts.zstdDecoder ? { zstdDecoder: this.opts.zstdDecoder } : {}),
        fifoDir: dirname(this.opts.resumeStatePath),
        frames: { lengths: payload.chunks.slice(first, last).map((c) => c.length), outLength: (i: number) => this.#chunkLen(first + i) },
      };
      prepared = await prepareDecoder(payload.compression, decodeOpts);
      throwIfAborted(this.signal);
      opened = await this.source.open(mirrorIndex, openAt, this.payloadLength, ctl.signal, end);
      const src = opened;
      this.#where = src.where;
      // zstd reads a local file itself only when no compressed byte needs checking in here
      const direct = src.fd !== undefined && !checking && decodesInChild(payload.compression, decodeOpts);
      decoder = prepared.start(direct ? src.fd : undefined);
      const dec = decoder;
      if (direct) {
        src.close(); // zstd holds its own copy of the descriptor
        this.bytesReceived += this.payloadLength - offset;
      }
      const stream: ByteStream | undefined = direct ? undefined : (src.stream ?? new ReusedBufferStream(src.fd!));
      // compressed bytes wait for the decoder in a ring that is reused (no allocation per piece): the
      // source's piece may be a view of a buffer it reuses, and the decoder holds on to what it was
      // given until the write's callback
      const ring = new InputRing(INPUT_RING);

      await new Promise<void>((resolve, reject) => {
        let settled = false;
        const settle = (e?: unknown): void => {
          if (settled) return;
          settled = true;
          if (e === undefined) resolve();
          else reject(e);
        };
        this.#failTransfer = (e) => {
          consumerError ??= e;
          stopProducer();
          dec.kill();
          settle(e);
        };
        this.#unblocked = () => dec.resume();
        const stopProducer = (e?: unknown): void => {
          if (e !== undefined) producerError ??= e;
          if (timer) clearInterval(timer);
          timer = undefined;
          if (stream) {
            stream.removeAllListeners('data');
            stream.destroy();
          }
          src.close();
          // let the decoder drain what it has: complete chunks before a cut still get written
          dec.finishInput();
        };
        ctl.signal.addEventListener('abort', () => this.#failTransfer(new SlotflipError('INSTALL_ABORTED', 'install aborted', {})), { once: true });

        dec.start(
          (piece) => {
            if (settled) return false;
            try {
              return this.#push(piece);
            } catch (e) {
              this.#failTransfer(e);
              return false;
            }
          },
          (whole) => this.#readTarget(whole),
        );
        dec.done.then(
          // the decoder may end while the last bytes still wait in the carry for a free buffer
          () => this.#whenUnblocked().then(() => settle(producerError)),
          (e: unknown) => this.#whenUnblocked().then(() => settle(producerError ?? e)),
        );
        if (!stream) return;

        // producer: source stream → decoder, capped at the signed length, with a throughput watchdog
        const where = src.where;
        let skip = offset - src.start;
        let remaining = end - offset;
        /** payload offset of the next byte the stream delivers. */
        let pos = src.start;
        const wd = this.opts.watchdog ?? {};
        const stallMs = wd.stallTimeoutMs ?? 30_000;
        const minBps = wd.minBytesPerSecond ?? 0;
        const windowMs = wd.windowMs ?? 60_000;
        let paused = false;
        let lastByteAt = this.now();
        let windowStart = lastByteAt;
        let windowBytes = 0;
        let windowPaused = false;
        timer = setInterval(() => {
          const t = this.now();
          if (paused) {
            lastByteAt = t;
            windowPaused = true;
          }
          const over = this.#overBudget();
          if (over) {
            stopProducer(over);
            return;
          }
          if (t - lastByteAt > stallMs) {
            stopProducer(new SlotflipError('INSTALL_STALLED', `${where}: no data for ${stallMs} ms; trying again`, { retryable: true, details: { url: where, stallTimeoutMs: stallMs } }));
            return;
          }
          if (t - windowStart >= windowMs) {
            const bps = (windowBytes * 1000) / (t - windowStart);
            if (minBps > 0 && !windowPaused && bps < minBps) {
              stopProducer(new SlotflipError('INSTALL_STALLED', `${where}: ${Math.round(bps)} B/s is below the minimum ${minBps} B/s; trying again`, { retryable: true, details: { url: where, bytesPerSecond: Math.round(bps), minBytesPerSecond: minBps } }));
              return;
            }
            windowStart = t;
            windowBytes = 0;
            windowPaused = paused;
          }
        }, Math.max(10, Math.min(1000, Math.floor(Math.min(stallMs, windowMs) / 4))));
        const input = dec.input!;
        // the source is paused while the decoder lags (PRODUCER_QUEUE bytes queued at its input) or the
        // ring is short of room, and resumed from the write callbacks once both are clear again: a
        // 'drain' would come only if a write had returned false, i.e. past the input's own high-water
        // mark, which for the pass-through decoder (1 MiB) lies beyond the ring
        const mayResume = (): void => {
          if (paused && input.writableLength < PRODUCER_QUEUE && ring.free() >= RING_PIECE) {
            paused = false;
            stream.resume();
          }
        };
        const release = (): void => {
          ring.release();
          mayResume();
        };
        /** hands `d` (valid only now) to the decoder: a copy in the ring, freed by the write's callback
         * (in order); a piece that does not fit (never with the sources here) is copied on its own */
        const feed = (d: Buffer): void => {
          const v = ring.put(d);
          if (v) input.write(v, release);
          else input.write(Buffer.from(d), mayResume);
        };
        stream.on('data', (d: Buffer) => {
          lastByteAt = this.now();
          windowBytes += d.length;
          let at = pos;
          pos += d.length;
          if (skip > 0) {
            // bytes before the first frame wanted: a server that ignored the Range, or (v1) the part
            // of the file re-read only to hash it; neither is decoded nor written
            const n = Math.min(skip, d.length);
            this.#hashWhole(d.subarray(0, n), at);
            if (openAt < offset) this.bytesReceived += n;
            skip -= n;
            at += n;
            if (n === d.length) return;
            d = d.subarray(n);
          }
          let last = false;
          if (d.length >= remaining) {
            if (d.length > remaining && end === this.payloadLength) this.opts.logger?.warn({ url: where }, 'source sent more than the signed length; ignoring the excess');
            d = d.subarray(0, remaining);
            last = true;
          }
          remaining -= d.length;
          this.bytesReceived += d.length;
          if (this.#spentBytesBase + this.bytesReceived > this.#maxBytes) {
            stopProducer(this.#overBudget());
            return;
          }
          // the compressed bytes are checked as they pass, before the decoder gets them
          let refused: SlotflipError | undefined;
          if (this.#packed) {
            const r = this.#checkPacked(d, at);
            if (r.error) {
              refused = r.error;
              d = d.subarray(0, r.pass);
            }
          } else if (this.#targetSha !== undefined) {
            this.#hashWhole(d, at);
            if (last && end === this.payloadLength) refused = this.#checkTarget();
            if (refused) d = d.subarray(0, 0);
          }
          if (refused) {
            if (d.length > 0) feed(d);
            stopProducer(refused);
            return;
          }
          // pause the response only when the decoder really lags (a queue of PRODUCER_QUEUE bytes), not
          // at every write over the stream's small high-water mark: a reset while the response is
          // paused discards what it buffered, which a resume would then fetch again
          feed(d);
          if (this.#held.length > 0) this.#releaseHeld();
          if ((input.writableLength >= PRODUCER_QUEUE || ring.free() < RING_PIECE) && !last) {
            paused = true;
            stream.pause();
          }
          if (last) stopProducer();
        });
        stream.once('end', () => {
          if (remaining > 0) stopProducer(new SlotflipError('INSTALL_PAYLOAD_TRUNCATED', `${where}: payload ended ${remaining} bytes short of the signed length ${this.payloadLength}`, { retryable: true, details: { url: where, missing: remaining, length: this.payloadLength } }));
        });
        stream.on('error', (cause: unknown) => {
          if (remaining > 0) stopProducer(isOurs(cause) ? cause : new SlotflipError('INSTALL_NETWORK', `${where}: transfer broke off (${(cause as NodeJS.ErrnoException).code ?? 'error'}); resuming`, { cause, retryable: true, details: { url: where } }));
        });
        stream.once('close', () => {
          if (remaining > 0) stopProducer(new SlotflipError('INSTALL_NETWORK', `${where}: connection closed ${remaining} bytes early; resuming`, { retryable: true, details: { url: where, missing: remaining } }));
        });
        // a stream handed over already destroyed (a custom source) never sends more: fail now, not
        // after the stall timeout (a second report through 'close' is ignored by stopProducer)
        if (stream.destroyed) {
          stopProducer(new SlotflipError('INSTALL_NETWORK', `${where}: connection closed ${remaining} bytes early; resuming`, { retryable: true, details: { url: where, missing: remaining } }));
        }
      });
      if (this.#held.length > 0) {
        throw new SlotflipError('INSTALL_PAYLOAD_TRUNCATED', `${this.#where}: the compressed bytes of chunk ${this.#held[0]!.index} did not all arrive`, { retryable: true, details: { chunk: this.#held[0]!.index, url: this.#where } });
      }
      if (this.next < last) {
        throw new SlotflipError('INSTALL_PAYLOAD_TRUNCATED', `${this.#where}: image data ended inside chunk ${this.next} although all ${end - offset} requested payload bytes arrived`, { retryable: true, details: { chunk: this.next, url: this.#where } });
      }
    } catch (e) {
      // the most telling error first: a bad chunk, then what broke the transfer, then the decoder
      const first = consumerError ?? producerError ?? e;
      if (isCoded(first, 'INSTALL_DECOMPRESS')) {
        throw new SlotflipError('INSTALL_DECOMPRESS', `${this.#where}: ${payload.compression} data for chunk ${this.next} (payload offset ${payload.chunks[Math.min(this.next, this.#chunkCount - 1)]!.offset}) is corrupt`, {
          cause: first,
          retryable: true,
          details: { chunk: this.next, payloadOffset: payload.chunks[Math.min(this.next, this.#chunkCount - 1)]!.offset, url: this.#where },
        });
      }
      throw first;
    } finally {
      if (timer) clearInterval(timer);
      this.signal.removeEventListener('abort', onAbort);
      this.#failTransfer = () => undefined;
      this.#unblocked = () => undefined;
      opened?.close();
      if (decoder) {
        decoder.kill();
        // a frame still decoding on the thread pool writes into a buffer the decoder was offered:
        // reuse none before
        await decoder.idle();
      } else prepared?.dispose();
      this.#resetChunker();
    }
  }

  /** After a failure: waits for queued writes, flushes and persists the hint and the spent budget
   * (best effort); `endAttempt`: the attempt is over, record no spent budget. */
  async keepProgress(endAttempt = false): Promise<void> {
    await this.#writeTail;
    await this.#flushTail;
    if (this.#ioError !== undefined) return;
    try {
      if (this.next > this.#durable) await this.handle.flush();
      const upto = Math.max(this.next, this.#durable);
      await writeResumeHint(this.opts.resumeStatePath, this.payload, this.opts.slot.path, upto, false, endAttempt ? this.#extra(false) : this.#extra());
    } catch (e) {
      this.opts.logger?.warn({ err: e }, 'could not record install progress');
    }
  }

  /** Waits for writes, the last flush and the read-back of the whole image (its SHA-256 over what the
   * medium returned, against the signed one); returns the signed image SHA-256 the slot now holds.
   * Throws INSTALL_READBACK_MISMATCH naming the chunk(s) the medium did not keep. */
  async finish(): Promise<string> {
    await this.#writeTail;
    await this.#flushTail;
    this.#checkIo();
    if (this.#durable < this.#chunkCount) await this.handle.flush();
    await this.readBack.finish(this.payload.size);
    if (this.#lastWriteAt !== undefined) this.readBackTailMs = this.now() - this.#lastWriteAt;
    // the read-back compared it already (and named the chunks on a mismatch); checked here again so
    // that no path through the checker can return without the slot holding the signed image
    const whole = this.readBack.imageSha256();
    if (whole !== this.payload.sha256) {
      throw new SlotflipError('INSTALL_READBACK_MISMATCH', `slot ${this.opts.slot.path} read back with image SHA-256 ${whole ?? '(incomplete)'}, the release signs ${this.payload.sha256}: the image will be written again on the next attempt`, {
        details: { path: this.opts.slot.path, expected: this.payload.sha256, actual: whole ?? null },
      });
    }
    this.#progress(this.payload.size, true);
    return this.payload.sha256;
  }
}

/**
 * The streaming installer: payload source → decompress → cut into chunks → SHA-256 each chunk and
 * compare with the signed index → positional write at the chunk's offset → periodic fsync → read the
 * slot back behind the fsync frontier and hash the whole image.
 *
 * INVARIANTS
 * - No byte reaches the slot unless its chunk's SHA-256 matched the signed index first.
 * - The slot's capacity is checked before it is opened; a too-small slot is never written.
 * - The resume hint only ever claims chunks that were written and flushed; resuming re-hashes them
 *   on the slot and restarts at the first that does not match (the hint is never trusted alone).
 * - Memory is bounded by a fixed pool of chunk buffers plus stream buffers, whatever the image size.
 * - Compressed bytes read are capped by the signed payload length; image bytes by the signed size.
 *
 * Concurrency: zstd decompresses in its own process, the main thread copies and hashes chunks, writes
 * and fsyncs run on libuv's thread pool, and the read-back is hashed on a worker thread. The
 * whole-image SHA-256 is computed over the bytes READ BACK from the slot after they were flushed, which
 * checks the in-flight data (already covered chunk by chunk) and the slot in one pass instead of two.
 *
 * Error codes (stable): INSTALL_BAD_INDEX, INSTALL_SLOT_TOO_SMALL, INSTALL_CHUNK_HASH_MISMATCH,
 * INSTALL_PAYLOAD_TRUNCATED, INSTALL_PAYLOAD_OVERSIZED, INSTALL_DECOMPRESS, INSTALL_HTTP_STATUS,
 * INSTALL_NETWORK, INSTALL_STALLED, INSTALL_SOURCE_OPEN, INSTALL_SLOT_IO, INSTALL_READBACK_MISMATCH,
 * INSTALL_ABORTED.
 */
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { SlotflipError, isCoded } from '../../hal/errors.js';
import type { SlotHandle, SlotWriter } from '../../hal/slot-writer.js';
import type { PayloadInfo } from '../../manifests/types.js';
import { startDecoder } from './decode.js';
import { WorkerHasher } from './hasher.js';
import { readResumeHint, writeResumeHint } from './resume-state.js';
import { fileSource, httpSource, type OpenedStream, type PayloadSource, type TlsOptions } from './source.js';

export interface InstallProgress {
  /** image bytes verified and written so far (chunks already on the slot at resume included). */
  bytes: number;
  /** image size. */
  total: number;
  /** bytes per second written in this run (smoothed). */
  rate: number;
  /** seconds left at the current rate; null until a rate is known. */
  etaSeconds: number | null;
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
  onProgress?: (p: InstallProgress) => void;
  signal?: AbortSignal;
  logger?: Logger;
  retry?: RetryOptions;
  watchdog?: WatchdogOptions;
  /** fsync (and persist the resume hint) every this many image bytes (default 64 MiB). */
  flushEveryBytes?: number;
  /** chunk buffers in the pool (default 4); memory ≈ (pool + 3) × chunkSize. */
  buffers?: number;
  zstdPath?: string;
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
  const hasher = new WorkerHasher();
  try {
    const run = new InstallRun(opts, payload, payloadLength, source, handle, hasher, now, signal);
    const resumedFrom = await run.verifyExisting(await readResumeHint(opts.resumeStatePath, payload, opts.slot.path));
    log?.info({ slot: opts.slot.slot, resumedFrom, chunks: payload.chunks.length, size: payload.size }, 'install started');
    await run.transferAll(resumedFrom);
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
    log?.info({ ...result }, 'install verified');
    return result;
  } finally {
    await hasher.close().catch(() => undefined);
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
    off += c.length;
  });
  if (length !== undefined && length !== off) throw bad(`chunks add up to ${off} bytes but the signed length is ${length}`, { length, sum: off });
  return off;
}

function toSource(spec: InstallSourceSpec, stallTimeoutMs: number | undefined): PayloadSource {
  if ('open' in spec) return spec;
  if ('path' in spec) return fileSource(spec.path);
  return httpSource({ mirrors: spec.urls, tls: spec.tls, headers: spec.headers, connectTimeoutMs: spec.connectTimeoutMs ?? stallTimeoutMs });
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
  /** next chunk to hand to the writer. */
  next = 0;
  readonly #chunkCount: number;
  readonly #pool: Buffer[] = [];
  readonly #poolWaiters: Array<(b: Buffer) => void> = [];
  #writeTail: Promise<void> = Promise.resolve();
  #flushTail: Promise<void> = Promise.resolve();
  #ioError: unknown;
  #sinceFlush = 0;
  /** chunks [0, durable) are written and flushed. */
  #durable = 0;
  #readCursor = 0;
  #readLoop: Promise<void> | undefined;
  #rate = 0;
  #lastProgressAt = 0;
  #lastProgressBytes = 0;

  constructor(
    private readonly opts: InstallOptions,
    private readonly payload: PayloadInfo,
    private readonly payloadLength: number,
    private readonly source: PayloadSource,
    private readonly handle: SlotHandle,
    private readonly hasher: WorkerHasher,
    private readonly now: () => number,
    private readonly signal: AbortSignal,
  ) {
    this.#chunkCount = payload.chunks.length;
    const n = Math.max(2, opts.buffers ?? 4);
    for (let i = 0; i < n; i++) this.#pool.push(Buffer.allocUnsafeSlow(payload.chunkSize));
    this.#lastProgressAt = now();
  }

  #chunkLen(i: number): number {
    return Math.min(this.payload.chunkSize, this.payload.size - i * this.payload.chunkSize);
  }

  /** Re-hashes chunks [0, hint) on the slot; returns the first index that does not match. */
  async verifyExisting(hint: number): Promise<number> {
    let i = 0;
    for (; i < hint; i++) {
      throwIfAborted(this.signal);
      const len = this.#chunkLen(i);
      const data = await this.handle.readAt(len, i * this.payload.chunkSize);
      if (data.length !== len || createHash('sha256').update(data).digest('hex') !== this.payload.chunks[i]!.sha256) break;
    }
    this.opts.logger?.debug({ hint, verified: i }, 'resume hint checked');
    this.#durable = i;
    this.#lastProgressBytes = Math.min(this.payload.size, i * this.payload.chunkSize);
    this.#kickReadBack();
    return i;
  }

  async #acquire(): Promise<Buffer> {
    const b = this.#pool.pop();
    if (b) return b;
    return new Promise((resolve) => this.#poolWaiters.push(resolve));
  }

  #release(b: Buffer): void {
    const w = this.#poolWaiters.shift();
    if (w) w(b);
    else this.#pool.push(b);
  }

  #checkIo(): void {
    if (this.#ioError !== undefined) throw this.#ioError;
  }

  #setIoError(e: unknown): void {
    if (this.#ioError !== undefined) return;
    this.#ioError = isCoded(e) ? e : new SlotflipError('INSTALL_SLOT_IO', `writing slot ${this.opts.slot.path} failed; check the device`, { cause: e, details: { path: this.opts.slot.path } });
    // wake anyone waiting for a buffer so the error surfaces
    for (const w of this.#poolWaiters.splice(0)) w(Buffer.allocUnsafe(0));
  }

  /** Queues a verified chunk for writing; buffers return to the pool when written. */
  #write(buf: Buffer, index: number): void {
    const len = this.#chunkLen(index);
    const offset = index * this.payload.chunkSize;
    this.#writeTail = this.#writeTail
      .then(async () => {
        if (this.#ioError === undefined) await this.handle.writeAt(buf.subarray(0, len), offset);
      })
      .catch((e: unknown) => this.#setIoError(e))
      .finally(() => this.#release(buf));
    this.bytesWritten += len;
    this.#sinceFlush += len;
    const flushEvery = this.opts.flushEveryBytes ?? 64 * MIB;
    if (this.#sinceFlush >= flushEvery || index === this.#chunkCount - 1) {
      this.#sinceFlush = 0;
      this.#flush(index + 1);
    }
    this.#progress(Math.min(this.payload.size, (index + 1) * this.payload.chunkSize));
  }

  /** fsync once every write before it completed, then persist the hint; later writes keep going. */
  #flush(upto: number): void {
    const writes = this.#writeTail;
    this.#flushTail = Promise.all([this.#flushTail, writes])
      .then(async () => {
        if (this.#ioError !== undefined) return;
        await this.handle.flush();
        await writeResumeHint(this.opts.resumeStatePath, this.payload, this.opts.slot.path, upto);
        this.#durable = upto;
        this.#kickReadBack();
      })
      .catch((e: unknown) => this.#setIoError(e));
  }

  /** Reads back flushed chunks in order and feeds the whole-image hash (on the worker). */
  #kickReadBack(): void {
    if (this.#readLoop !== undefined) return;
    this.#readLoop = (async () => {
      let pending: Promise<void> = Promise.resolve();
      while (this.#readCursor < this.#durable && this.#ioError === undefined) {
        const i = this.#readCursor++;
        const len = this.#chunkLen(i);
        const data = await this.handle.readAt(len, i * this.payload.chunkSize);
        if (data.length !== len) {
          throw new SlotflipError('INSTALL_READBACK_MISMATCH', `slot ${this.opts.slot.path} returned ${data.length} bytes for chunk ${i} instead of ${len}; the device is too small or failing`, { details: { chunk: i, offset: i * this.payload.chunkSize } });
        }
        const p = this.hasher.update(data);
        await pending; // at most two chunks with the worker
        pending = p;
      }
      await pending;
    })()
      .catch((e: unknown) => this.#setIoError(e))
      .finally(() => {
        this.#readLoop = undefined;
        if (this.#readCursor < this.#durable && this.#ioError === undefined) this.#kickReadBack();
      });
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

  /** Runs transfers (with retries, backoff and mirror rotation) until every chunk is handed to the writer. */
  async transferAll(first: number): Promise<void> {
    this.next = first;
    const retry = this.opts.retry ?? {};
    const maxAttempts = retry.maxAttempts ?? 6;
    const base = retry.baseDelayMs ?? 500;
    const cap = retry.maxDelayMs ?? 30_000;
    const random = this.opts.random ?? Math.random;
    const sleep = this.opts.sleep ?? defaultSleep;
    const deadMirrors = new Set<number>();
    let failures = 0;
    let mirror = 0;
    while (this.next < this.#chunkCount) {
      throwIfAborted(this.signal);
      this.#checkIo();
      const before = this.next;
      try {
        this.transfers++;
        await this.#transfer(mirror % this.source.count, this.next);
      } catch (e) {
        if (this.signal.aborted) throw new SlotflipError('INSTALL_ABORTED', 'install aborted', { cause: e });
        this.#checkIo();
        const err = isCoded(e) ? e : new SlotflipError('INSTALL_NETWORK', 'transfer failed', { cause: e, retryable: true });
        const retryable = err.retryable === true && this.source.kind !== 'file';
        this.opts.logger?.warn({ err, mirror: mirror % this.source.count, chunk: this.next, failures }, 'transfer failed');
        if (!retryable) {
          if (this.source.kind === 'file') throw err;
          deadMirrors.add(mirror % this.source.count);
          if (deadMirrors.size >= this.source.count) throw err;
        }
        failures = this.next > before ? 1 : failures + 1;
        if (failures >= maxAttempts) throw err;
        do mirror++;
        while (deadMirrors.has(mirror % this.source.count));
        const delay = Math.min(cap, base * 2 ** (failures - 1)) * random();
        await sleep(delay, this.signal);
        continue;
      }
    }
  }

  /** One transfer from chunk `first` to the end (or the first failure). */
  async #transfer(mirrorIndex: number, first: number): Promise<void> {
    const { payload } = this;
    const offset = payload.chunks[first]!.offset;
    const ctl = new AbortController();
    const onAbort = (): void => ctl.abort();
    this.signal.addEventListener('abort', onAbort, { once: true });
    let opened: OpenedStream | undefined;
    const decoder = startDecoder(payload.compression, this.opts.zstdPath);
    let producerError: SlotflipError | undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      opened = await this.source.open(mirrorIndex, offset, this.payloadLength, ctl.signal);
      const src = opened;
      const where = src.where;
      let skip = offset - src.start;
      let remaining = this.payloadLength - offset;

      // producer: source → decoder, capped at the signed length, with a throughput watchdog
      const wd = this.opts.watchdog ?? {};
      const stallMs = wd.stallTimeoutMs ?? 30_000;
      const minBps = wd.minBytesPerSecond ?? 0;
      const windowMs = wd.windowMs ?? 60_000;
      let paused = false;
      let lastByteAt = this.now();
      let windowStart = lastByteAt;
      let windowBytes = 0;
      let windowPaused = false;
      const stopProducer = (e?: SlotflipError): void => {
        if (e && !producerError) producerError = e;
        if (timer) clearInterval(timer);
        timer = undefined;
        src.stream.removeAllListeners('data');
        src.close();
        // let the decoder drain what it has: complete chunks before a cut still get written
        decoder.input.end();
      };
      timer = setInterval(() => {
        const t = this.now();
        if (paused) {
          lastByteAt = t;
          windowPaused = true;
        }
        if (t - lastByteAt > stallMs) {
          stopProducer(new SlotflipError('INSTALL_STALLED', `${where}: no data for ${stallMs} ms; trying again`, { retryable: true, details: { url: where, stallTimeoutMs: stallMs } }));
          return;
        }
        if (t - windowStart >= windowMs) {
          const bps = (windowBytes * 1000) / (t - windowStart);
          if (minBps > 0 && !windowPaused && bps < minBps) {
            stopProducer(new SlotflipError('INSTALL_STALLED', `${where}: ${Math.round(bps)} B/s is below the minimum ${minBps} B/s; trying again`, { retryable: true, details: { url: where, bytesPerSecond: bps, minBytesPerSecond: minBps } }));
            return;
          }
          windowStart = t;
          windowBytes = 0;
          windowPaused = paused;
        }
      }, Math.max(10, Math.min(1000, Math.floor(Math.min(stallMs, windowMs) / 4))));
      src.stream.on('data', (d: Buffer) => {
        lastByteAt = this.now();
        windowBytes += d.length;
        if (skip > 0) {
          if (d.length <= skip) {
            skip -= d.length;
            return;
          }
          d = d.subarray(skip);
          skip = 0;
        }
        let last = false;
        if (d.length >= remaining) {
          if (d.length > remaining) this.opts.logger?.warn({ url: where }, 'source sent more than the signed length; ignoring the excess');
          d = d.subarray(0, remaining);
          last = true;
        }
        remaining -= d.length;
        this.bytesReceived += d.length;
        if (!decoder.input.write(d)) {
          paused = true;
          src.stream.pause();
          decoder.input.once('drain', () => {
            paused = false;
            src.stream.resume();
          });
        }
        if (last) stopProducer();
      });
      src.stream.once('end', () => {
        if (remaining > 0) stopProducer(new SlotflipError('INSTALL_PAYLOAD_TRUNCATED', `${where}: payload ended ${remaining} bytes short of the signed length ${this.payloadLength}`, { retryable: true, details: { url: where, missing: remaining, length: this.payloadLength } }));
      });
      src.stream.on('error', (cause) => {
        if (remaining > 0) stopProducer(isCoded(cause) ? (cause as SlotflipError) : new SlotflipError('INSTALL_NETWORK', `${where}: transfer broke off (${(cause as NodeJS.ErrnoException).code ?? 'error'}); resuming`, { cause, retryable: true, details: { url: where } }));
      });
      src.stream.once('close', () => {
        if (remaining > 0) stopProducer(new SlotflipError('INSTALL_NETWORK', `${where}: connection closed ${remaining} bytes early; resuming`, { retryable: true, details: { url: where, missing: remaining } }));
      });
      ctl.signal.addEventListener('abort', () => {
        stopProducer(new SlotflipError('INSTALL_ABORTED', 'install aborted', {}));
        decoder.kill();
      });

      // consumer: decoder → chunks → verify → write
      await this.#consume(decoder.output, where);
      if (producerError) throw producerError;
      try {
        await decoder.done;
      } catch (e) {
        throw new SlotflipError('INSTALL_DECOMPRESS', `${where}: ${payload.compression} data for chunk ${this.next} is corrupt`, { cause: e, retryable: true, details: { chunk: this.next, offset: payload.chunks[Math.min(this.next, payload.chunks.length - 1)]!.offset } });
      }
      if (this.next < this.#chunkCount) {
        throw new SlotflipError('INSTALL_PAYLOAD_TRUNCATED', `${where}: image data ended inside chunk ${this.next} although all ${this.payloadLength} payload bytes arrived`, { retryable: true, details: { chunk: this.next, url: where } });
      }
    } catch (e) {
      if (producerError && !isCoded(e, 'INSTALL_CHUNK_HASH_MISMATCH') && !isCoded(e, 'INSTALL_PAYLOAD_OVERSIZED')) throw producerError;
      throw e;
    } finally {
      if (timer) clearInterval(timer);
      this.signal.removeEventListener('abort', onAbort);
      opened?.close();
      decoder.kill();
      decoder.output.destroy();
    }
  }

  async #consume(output: AsyncIterable<Buffer>, where: string): Promise<void> {
    const { payload } = this;
    let buf = await this.#acquire();
    this.#checkIo();
    let fill = 0;
    let hash = createHash('sha256');
    try {
      for await (const piece of output) {
        let p = 0;
        while (p < piece.length) {
          if (this.next >= this.#chunkCount) {
            throw new SlotflipError('INSTALL_PAYLOAD_OVERSIZED', `${where}: image data runs past the signed size ${payload.size}`, { retryable: true, details: { url: where, size: payload.size } });
          }
          const len = this.#chunkLen(this.next);
          const n = Math.min(len - fill, piece.length - p);
          const part = piece.subarray(p, p + n);
          part.copy(buf, fill);
          hash.update(part);
          fill += n;
          p += n;
          if (fill === len) {
            const i = this.next;
            const got = hash.digest('hex');
            const want = payload.chunks[i]!.sha256;
            if (got !== want) {
              throw new SlotflipError('INSTALL_CHUNK_HASH_MISMATCH', `chunk ${i} (image offset ${i * payload.chunkSize}) from ${where} has SHA-256 ${got}, the signed index says ${want}; nothing from it was written`, {
                retryable: true,
                details: { chunk: i, offset: i * payload.chunkSize, payloadOffset: payload.chunks[i]!.offset, url: where },
              });
            }
            this.#write(buf, i);
            this.next = i + 1;
            hash = createHash('sha256');
            fill = 0;
            buf = await this.#acquire();
            this.#checkIo();
          }
        }
      }
    } finally {
      this.#release(buf);
    }
  }

  /** Waits for writes, the last flush and the read-back; compares the read-back hash. */
  async finish(): Promise<string> {
    await this.#writeTail;
    await this.#flushTail;
    this.#checkIo();
    if (this.#durable < this.#chunkCount) {
      // nothing was written in this run (everything verified at resume): still flush once
      await this.handle.flush();
      this.#durable = this.#chunkCount;
    }
    this.#kickReadBack();
    while (this.#readLoop !== undefined) await this.#readLoop;
    this.#checkIo();
    const got = await this.hasher.digest();
    if (this.#readCursor * this.payload.chunkSize < this.payload.size || got !== this.payload.sha256) {
      throw new SlotflipError('INSTALL_READBACK_MISMATCH', `slot ${this.opts.slot.path} reads back with SHA-256 ${got}, the signed image is ${this.payload.sha256}; the device may be failing`, {
        details: { path: this.opts.slot.path, got, want: this.payload.sha256 },
      });
    }
    this.#progress(this.payload.size, true);
    return got;
  }
}

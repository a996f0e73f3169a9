/**
 * The read-back: behind the fsync frontier, read the slot back FROM THE MEDIUM and hash the whole
 * image, in order, over the bytes the medium returns; `finish` compares that SHA-256 with the signed
 * image hash. Every chunk's SHA-256 had already matched the signed index before it was written (or, on
 * resume, as read from the slot), so the read-back proves the MEDIUM kept those bytes: any change at
 * all, an offset bug, a lost write, fails the whole-image hash.
 *
 * Naming the chunk: only when the whole-image hash does not match, a second read-back pass SHA-256s
 * each chunk from the medium against the signed chunk hashes of the index (the same hashes each chunk
 * was verified against before its write) and the error names the chunk(s) that changed. The normal
 * path therefore makes ONE hash pass over the medium and nothing per chunk at write time (issue 24: it
 * replaced a CRC-32 recorded at write time and compared per chunk, two passes that only named the
 * chunk the whole-image hash already caught). A failing medium costs one more read of the slot.
 *
 * By path the descriptor is O_DIRECT (read-back.ts, `pathReader`): a buffered read right after the
 * write would check the page cache (the bytes just written), not what the medium kept. Where O_DIRECT
 * is refused (tmpfs, some FUSE/overlay filesystems: EINVAL) it falls back to buffered reads and
 * reports that (`direct`, and a debug log when given a logger). Through a SlotHandle's `readAt`
 * (injected slots, fault tests) reads are whatever that writer does. Reads go to libuv's pool and
 * SHA-256 is native; it runs on the thread that owns the checker: the installer's main thread (by
 * path and through a SlotHandle), or a worker thread when the installer is asked for one
 * (`readBackThread`; read-back-thread.ts hosts this class there, at the cost of one more V8 isolate).
 *
 * Error code (stable): INSTALL_READBACK_MISMATCH (details: path; when chunks differ: chunk, offset,
 * length, expected (signed) and actual SHA-256 of the first, `chunks` (up to 16 changed chunk numbers)
 * and `changed` (how many); when no chunk differs on the second pass: expected and actual image
 * SHA-256; errno and offset when a read failed).
 */
import { createHash, type Hash } from 'node:crypto';
import type { Logger } from 'pino';
import { SlotflipError } from '../../hal/errors.js';
import { DIRECT_ALIGN, pathReader, type Reader } from './read-back.js';

export interface ReadBackOptions {
  /** the slot's path (named in errors; opened O_DIRECT unless `readAt` is given). */
  path: string;
  /** bytes per chunk and image size (the payload's). */
  chunkSize: number;
  size: number;
  /** read through this instead of the path (a SlotHandle's readAt). */
  readAt?: (length: number, offset: number) => Promise<Buffer>;
  log?: Logger;
  /** the signed SHA-256 (hex) of the whole image: what the read-back must find on the medium. */
  imageSha256: string;
  /** the signed SHA-256 (hex) of chunk `k` (the index's): what a mismatch is located against. */
  chunkSha256: (chunk: number) => string;
  /** ends the naming pass (a second read of the slot) early: INSTALL_ABORTED. */
  signal?: AbortSignal;
}

/** What the installer needs of a read-back (ReadBackChecker here; ThreadedReadBack in
 * read-back-thread.ts runs the same checker on a worker thread). */
export interface ReadBack {
  readonly direct: boolean | undefined;
  verifyPrefix(sha256Of?: (chunk: number) => string, signal?: AbortSignal): Promise<number>;
  advance(upto: number): void;
  finish(upto: number): Promise<{ bytes: number }>;
  imageSha256(): string | undefined;
  close(): Promise<void>;
}

const PIECE = 1 << 20;
/** changed chunks listed by number in a mismatch's details (all are counted). */
const NAMED_MAX = 16;

export class ReadBackChecker implements ReadBack {
  readonly #o: ReadBackOptions;
  readonly #chunks: number;
  #reader: Promise<Reader> | undefined;
  /** bytes [0, #cursor) were read back and checked. */
  #cursor = 0;
  #target = 0;
  #loop: Promise<void> | undefined;
  #error: SlotflipError | undefined;
  #direct: boolean | undefined;
  /** SHA-256 of bytes [0, #cursor) as read back (the prefix re-hash and the read-back both read in
   * order from 0, so at the end it is the whole image's hash, of what the medium holds). */
  #whole: Hash = createHash('sha256');
  #wholeDigest: string | undefined;

  constructor(o: ReadBackOptions) {
    this.#o = o;
    this.#chunks = o.chunkSize > 0 ? Math.ceil(o.size / o.chunkSize) : 0;
  }

  /** By path: true once the slot is read with O_DIRECT (the medium, not the page cache), false after a
   * fallback to buffered reads; undefined before the first read, and in readAt mode. */
  get direct(): boolean | undefined {
    return this.#direct;
  }

  /**
   * Resume: reads the chunks from 0 the way the read-back does and SHA-256s each against the signed
   * one (`sha256Of(k)`, by default the options' `chunkSha256`), up to the first that differs or
   * cannot be read; returns how many matched.
   * Those are checked (the read-back goes on after them). Call before `advance`.
   */
  async verifyPrefix(sha256Of: (chunk: number) => string = this.#o.chunkSha256, signal?: AbortSignal): Promise<number> {
    if (this.#cursor !== 0 || this.#loop) throw new Error('verifyPrefix: the read-back already started');
    const reader = await this.#open();
    const { chunkSize, size } = this.#o;
    let k = 0;
    for (; k < this.#chunks; k++) {
      if (signal?.aborted) throw new SlotflipError('INSTALL_ABORTED', 'install aborted', {});
      const end = Math.min(size, (k + 1) * chunkSize);
      const h = createHash('sha256');
      // the whole-image hash takes this chunk only if it matches (a copy to fall back to)
      const before = this.#whole.copy();
      let at = k * chunkSize;
      try {
        while (at < end) {
          const len = Math.min(PIECE - (at % DIRECT_ALIGN), end - at);
          const buf = await reader.read(len, at);
          if (buf.length !== len) break;
          h.update(buf);
          this.#whole.update(buf);
          at += len;
        }
      } catch {
        this.#whole = before;
        break; // unreadable: fetched and written again (the read-back judges the slot)
      }
      if (this.#o.readAt === undefined) this.#direct = reader.direct;
      if (at < end || h.digest('hex') !== sha256Of(k)) {
        this.#whole = before;
        break;
      }
      this.#cursor = end;
    }
    this.#target = Math.max(this.#target, this.#cursor);
    return k;
  }

  /** Reads and hashes up to byte `upto` in the background (it must be flushed already). A failed read
   * stops the read-back; `finish` throws it. */
  advance(upto: number): void {
    this.#target = Math.max(this.#target, Math.min(upto, this.#o.size));
    this.#pump();
  }

  /** Reads and hashes everything up to `upto`; once that is the whole image, compares its SHA-256 with
   * the signed one and, when it differs, reads the slot again to name the chunk(s) that changed. Throws
   * INSTALL_READBACK_MISMATCH (or the read that failed). Resolves with the bytes read back. */
  async finish(upto: number): Promise<{ bytes: number }> {
    this.advance(upto);
    while (this.#loop) await this.#loop;
    if (this.#error) throw this.#error;
    if (this.#cursor >= this.#o.size) {
      this.#wholeDigest ??= this.#whole.digest('hex');
      if (this.#wholeDigest !== this.#o.imageSha256) {
        this.#error = await this.#locate(this.#wholeDigest);
        throw this.#error;
      }
    }
    return { bytes: this.#cursor };
  }

  /** SHA-256 (hex) of the whole image as read back; only once every byte was read back and it matched
   * (after `finish(size)`), else undefined. */
  imageSha256(): string | undefined {
    if (this.#cursor < this.#o.size || this.#error) return undefined;
    this.#wholeDigest ??= this.#whole.digest('hex');
    return this.#wholeDigest;
  }

  /** Closes the descriptor; idempotent. */
  async close(): Promise<void> {
    this.#error ??= new SlotflipError('INSTALL_ABORTED', 'read-back closed', {});
    while (this.#loop) await this.#loop.catch(() => undefined);
    const r = this.#reader;
    this.#reader = undefined;
    if (r) await (await r.catch(() => undefined))?.close().catch(() => undefined);
  }

  #open(): Promise<Reader> {
    if (this.#reader) return this.#reader;
    const { readAt, path, log } = this.#o;
    this.#reader = readAt ? Promise.resolve({ direct: false, read: readAt, close: async () => undefined }) : pathReader(path, log);
    return this.#reader;
  }

  #pump(): void {
    if (this.#loop || this.#error || this.#cursor >= this.#target) return;
    this.#loop = (async () => {
      const reader = await this.#open();
      this.#direct = this.#o.readAt ? undefined : reader.direct;
      while (this.#cursor < this.#target && !this.#error) {
        const at = this.#cursor;
        // the O_DIRECT window around a piece is 4096-aligned and must fit the 1 MiB buffer
        const len = Math.min(PIECE - (at % DIRECT_ALIGN), this.#target - at);
        let buf: Buffer;
        try {
          buf = await reader.read(len, at);
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code ?? 'error';
          this.#error ??= new SlotflipError('INSTALL_READBACK_MISMATCH', `reading slot ${this.#o.path} back at byte ${at} failed (${code}); the device may be failing: the image will be written again on the next attempt`, { cause: e, details: { path: this.#o.path, offset: at, errno: code } });
          return;
        }
        if (this.#o.readAt === undefined) this.#direct = reader.direct;
        if (buf.length !== len) {
          this.#error ??= new SlotflipError('INSTALL_READBACK_MISMATCH', `slot ${this.#o.path} ended at byte ${at + buf.length} while reading it back (the image is ${this.#o.size} bytes)`, { details: { path: this.#o.path, offset: at + buf.length } });
          return;
        }
        // the next piece is read while this one is hashed (read-back.ts's read-ahead), when it lies
        // behind the fsync frontier whole: the piece the next turn asks for, so the read is not wasted
        const next = at + len;
        const nextLen = Math.min(PIECE - (next % DIRECT_ALIGN), this.#target - next);
        if (nextLen > 0 && (nextLen === PIECE - (next % DIRECT_ALIGN) || this.#target === this.#o.size)) reader.prefetch?.(nextLen, next);
        this.#whole.update(buf);
        this.#cursor = at + len;
      }
    })()
      .catch((e: unknown) => {
        this.#error ??= new SlotflipError('INSTALL_READBACK_MISMATCH', `reading slot ${this.#o.path} back failed; the device may be failing`, { cause: e, details: { path: this.#o.path } });
      })
      .finally(() => {
        this.#loop = undefined;
        this.#pump();
      });
  }

  /** The second pass, only after the whole image read back with another SHA-256 than the signed one:
   * reads every chunk from the slot again, SHA-256s it against the signed chunk hash and returns the
   * error naming those that differ (the first in full, up to NAMED_MAX by number, all counted). */
  async #locate(actualImage: string): Promise<SlotflipError> {
    const { chunkSize, size, path } = this.#o;
    const reader = await this.#open();
    const changed: number[] = [];
    let count = 0;
    let first: { chunk: number; offset: number; length: number; expected: string; actual: string } | undefined;
    for (let k = 0; k < this.#chunks; k++) {
      if (this.#o.signal?.aborted) return new SlotflipError('INSTALL_ABORTED', 'install aborted', {});
      const offset = k * chunkSize;
      const end = Math.min(size, offset + chunkSize);
      const h = createHash('sha256');
      let at = offset;
      try {
        while (at < end) {
          const len = Math.min(PIECE - (at % DIRECT_ALIGN), end - at);
          const buf = await reader.read(len, at);
          if (buf.length !== len) {
            return new SlotflipError('INSTALL_READBACK_MISMATCH', `slot ${path} ended at byte ${at + buf.length} while reading it back a second time to find the changed chunk (the image is ${size} bytes)`, { details: { path, offset: at + buf.length } });
          }
          h.update(buf);
          at += len;
        }
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code ?? 'error';
        return new SlotflipError('INSTALL_READBACK_MISMATCH', `slot ${path} read back with image SHA-256 ${actualImage}, the release signs ${this.#o.imageSha256}; reading it again at byte ${at} to find the changed chunk failed (${code}); the device may be failing: the image will be written again on the next attempt`, { cause: e, details: { path, offset: at, errno: code, expected: this.#o.imageSha256, actual: actualImage } });
      }
      const actual = h.digest('hex');
      const expected = this.#o.chunkSha256(k);
      if (actual === expected) continue;
      count++;
      if (changed.length < NAMED_MAX) changed.push(k);
      first ??= { chunk: k, offset, length: end - offset, expected, actual };
    }
    const direct = this.#o.readAt === undefined ? reader.direct : undefined;
    const how = this.#o.readAt ? 'through the slot handle' : direct ? 'from the medium (O_DIRECT)' : 'through the page cache (no O_DIRECT here)';
    if (first === undefined) {
      // every chunk matched on the second read: the first read returned other bytes (a transient read
      // fault), or the image and its index disagree; either way the slot is not trusted
      return new SlotflipError('INSTALL_READBACK_MISMATCH', `slot ${path} read back ${how} with image SHA-256 ${actualImage}, the release signs ${this.#o.imageSha256}, although every chunk matched its signed hash when read again (unstable reads?): the image will be written again on the next attempt`, {
        details: { path, expected: this.#o.imageSha256, actual: actualImage, changed: 0, ...(direct !== undefined ? { direct } : {}) },
      });
    }
    const { chunk, offset, length, expected, actual } = first;
    const others = count > 1 ? `; ${count} chunks differ in all (${changed.join(', ')}${count > changed.length ? ', ...' : ''})` : '';
    return new SlotflipError('INSTALL_READBACK_MISMATCH', `slot ${path} read back ${how} differs in chunk ${chunk} (bytes ${offset}..${offset + length - 1}): SHA-256 ${actual}, signed ${expected} (the chunk had matched it before it was written)${others}; the write did not land (failing flash?): the image will be written again from chunk ${chunk} on the next attempt`, {
      details: { path, chunk, offset, length, expected, actual, chunks: changed, changed: count, ...(direct !== undefined ? { direct } : {}) },
    });
  }
}

/**
 * The read-back: behind the fsync frontier, read the slot back FROM THE MEDIUM and compare every
 * chunk with what was written, by a CRC-32 recorded at write time over the same buffer whose SHA-256
 * had just matched the signed index (or, on resume, over the bytes whose SHA-256 was re-checked).
 *
 * Trade-off: each chunk is compared by CRC-32 (cheap, native, names the chunk), and the bytes read
 * back are also fed, in order, into one SHA-256 of the whole image that the installer compares with
 * the signed image hash at the end (`imageSha256`). The chunk SHA-256s already proved the bytes
 * handed to the slot; the read-back proves the MEDIUM kept them: CRC-32 catches every burst of up to
 * 32 flipped bits in a chunk and names it, and the whole-image SHA-256 closes the rest (any change at
 * all, an offset bug, a collision) for one more hash pass. It replaced a second per-chunk SHA-256 on
 * a worker thread (a second V8 isolate, ~13 MiB RSS). It runs on the main thread: its reads go to
 * libuv's pool, and crc32 and SHA-256 are native.
 *
 * By path the descriptor is O_DIRECT (read-back.ts, `pathReader`): a buffered read right after the
 * write would check the page cache (the bytes just written), not what the medium kept. Where O_DIRECT
 * is refused (tmpfs, some FUSE/overlay filesystems: EINVAL) it falls back to buffered reads and
 * reports that (`direct`, and a debug log when given a logger). Through a SlotHandle's `readAt`
 * (injected slots, fault tests) reads are whatever that writer does.
 *
 * Error code (stable): INSTALL_READBACK_MISMATCH (details: path, and chunk, offset, expected and
 * actual CRC-32 when a chunk differs; errno when a read failed).
 */
import { createHash, type Hash } from 'node:crypto';
import zlib from 'node:zlib';
import type { Logger } from 'pino';
import { SlotflipError } from '../../hal/errors.js';
import { DIRECT_ALIGN, pathReader, type Reader } from './read-back.js';

/** node:zlib's crc32 (Node >= 22.2; the project's @types/node predates it). */
const crc32 = (zlib as unknown as { crc32: (data: Uint8Array, value?: number) => number }).crc32;

/** CRC-32 of `data` (continuing from `value`), as zlib computes it. */
export function chunkCrc(data: Uint8Array, value = 0): number {
  return crc32(data, value);
}

export interface ReadBackOptions {
  /** the slot's path (named in errors; opened O_DIRECT unless `readAt` is given). */
  path: string;
  /** bytes per chunk and image size (the payload's). */
  chunkSize: number;
  size: number;
  /** read through this instead of the path (a SlotHandle's readAt). */
  readAt?: (length: number, offset: number) => Promise<Buffer>;
  log?: Logger;
}

const PIECE = 1 << 20;

const hex = (n: number): string => n.toString(16).padStart(8, '0');

export class ReadBackChecker {
  readonly #o: ReadBackOptions;
  readonly #chunks: number;
  /** CRC-32 of each chunk as written; `#known[i]` says whether it was recorded. */
  readonly #expected: Uint32Array;
  readonly #known: Uint8Array;
  #reader: Promise<Reader> | undefined;
  /** bytes [0, #cursor) were read back and checked. */
  #cursor = 0;
  #target = 0;
  #crc = 0;
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
    this.#expected = new Uint32Array(this.#chunks);
    this.#known = new Uint8Array(this.#chunks);
  }

  /** By path: true once the slot is read with O_DIRECT (the medium, not the page cache), false after a
   * fallback to buffered reads; undefined before the first read, and in readAt mode. */
  get direct(): boolean | undefined {
    return this.#direct;
  }

  /** Records the CRC-32 of chunk `index` as handed to the slot (its SHA-256 verified). A chunk written
   * again (a retry) is recorded again: the same verified bytes, the same CRC. */
  expect(index: number, crc: number): void {
    this.#expected[index] = crc >>> 0;
    this.#known[index] = 1;
  }

  /**
   * Resume: reads the chunks from 0 the way the read-back does and SHA-256s each against the signed
   * one (`sha256Of(k)`), up to the first that differs or cannot be read; returns how many matched.
   * Those are checked (the read-back goes on after them). Call before `advance`.
   */
  async verifyPrefix(sha256Of: (chunk: number) => string, signal?: AbortSignal): Promise<number> {
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

  /** Reads and checks up to byte `upto` in the background (it must be flushed already); a chunk is
   * checked when its last byte was read. The first mismatch stops the read-back; `finish` throws it. */
  advance(upto: number): void {
    this.#target = Math.max(this.#target, Math.min(upto, this.#o.size));
    this.#pump();
  }

  /** Reads and checks everything up to `upto`; throws INSTALL_READBACK_MISMATCH naming the first chunk
   * that differs (or the read that failed). Resolves with the bytes checked. */
  async finish(upto: number): Promise<{ bytes: number }> {
    this.advance(upto);
    while (this.#loop) await this.#loop;
    if (this.#error) throw this.#error;
    return { bytes: this.#cursor };
  }

  /** SHA-256 (hex) of the whole image as read back; only once every byte was read back and checked
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
        this.#check(buf, at);
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

  /** Folds bytes [at, at + buf.length) into the running chunk CRC; compares each chunk it completes. */
  #check(buf: Buffer, at: number): void {
    const { chunkSize, size } = this.#o;
    let p = 0;
    while (p < buf.length) {
      const k = Math.floor((at + p) / chunkSize);
      const end = Math.min(size, (k + 1) * chunkSize);
      const take = Math.min(buf.length - p, end - (at + p));
      this.#crc = crc32(buf.subarray(p, p + take), this.#crc);
      p += take;
      if (at + p < end) continue;
      const actual = this.#crc >>> 0;
      this.#crc = 0;
      if (this.#known[k] !== 1) {
        // never the case when the installer drives it (a chunk is recorded before its write); fail
        // closed rather than pass a chunk nobody vouched for
        this.#error ??= new SlotflipError('INSTALL_READBACK_MISMATCH', `slot ${this.#o.path}: chunk ${k} was read back but no CRC was recorded when it was written`, { details: { path: this.#o.path, chunk: k } });
        return;
      }
      const expected = this.#expected[k]!;
      if (actual !== expected) {
        const offset = k * chunkSize;
        const how = this.#o.readAt ? 'through the slot handle' : this.#direct ? 'from the medium (O_DIRECT)' : 'through the page cache (no O_DIRECT here)';
        this.#error ??= new SlotflipError('INSTALL_READBACK_MISMATCH', `slot ${this.#o.path} read back ${how} differs in chunk ${k} (bytes ${offset}..${end - 1}): CRC-32 ${hex(actual)}, written ${hex(expected)} (the chunk's SHA-256 had matched the signed index); the write did not land (failing flash?): the image will be written again from chunk ${k} on the next attempt`, {
          details: { path: this.#o.path, chunk: k, offset, length: end - offset, expected: hex(expected), actual: hex(actual), ...(this.#direct !== undefined ? { direct: this.#direct } : {}) },
        });
        return;
      }
    }
  }
}

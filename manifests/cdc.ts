/**
 * Content-defined chunking (FastCDC with normalized chunking, Xia et al. 2016/2020): a rolling gear
 * hash over the bytes decides where chunks end, so an insertion or a moved file shifts boundaries
 * only locally and the rest of an image still cuts into the same chunks — the property a delta
 * between two independently built filesystem images needs (fixed-size chunks lose every chunk after
 * the first shift).
 *
 * The gear table is derived from SHA-256 (`slotflip-gear-v1`), never random at run time: manufacturer
 * and device must cut identically, and the parameters travel in the signed delta index.
 *
 * Sizes were chosen by measurement on the `bench:delta` pairs (1 GiB Debian ext4 images): see
 * DEFAULT_CDC. Long runs of one byte value (unused filesystem space) never match the mask, so they
 * become max-size chunks that are all identical and stored once.
 *
 * Cost: one table lookup, a shift and an add per byte, plus SHA-256 per chunk. chunkFile runs that
 * loop as WebAssembly (cdc-wasm.ts: ~0.5 s of CPU per GiB whether or not V8's optimizing compilers
 * are on; the interpreted JS loop took ~70 s), `cutPoint` below is the same loop in JS: the
 * reference the wasm loop is tested against, and the fallback where there is no WebAssembly.
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { gearCutter, type GearCutter } from './cdc-wasm.js';

export interface CdcParams {
  /** smallest chunk in bytes (except the last one). */
  min: number;
  /** target average chunk size; a power of two. */
  avg: number;
  /** largest chunk. */
  max: number;
  /**
   * ext4 block size (1024-65536), or absent. When set, every block at a multiple of it that looks
   * like an ext4 directory block (a chain of valid directory entries filling it: looksLikeDirBlock)
   * is a chunk of its own, and no chunk runs into one. mke2fs -d places each directory's block just
   * before its files' data, and an added or removed file renumbers the inodes after it, so directory
   * blocks change where file data does not: cut in with the data, each changed 4 KiB block cost a
   * whole chunk of it (~24 KiB on the bench images). Still content-defined (the same bytes at the same
   * alignment cut the same way), so a device cutting its slot finds what the publisher cut; a daemon
   * that predates the field cuts without it and only finds fewer chunks (every chunk is verified).
   */
  dirBlock?: number;
}

/** min 4 KiB / avg 16 KiB / max 64 KiB: the smallest average whose index stays under 0.5 % of the
 * compressed image on the bench pairs (an ext4 block is 4 KiB: smaller chunks only grow the index). */
export const DEFAULT_CDC: Readonly<CdcParams> = Object.freeze({ min: 4 << 10, avg: 16 << 10, max: 64 << 10 });

/** min 16 KiB / avg 64 KiB / max 256 KiB, with ext4 directory blocks as chunks of their own
 * (`dirBlock`, set to the filesystem's block size): what `release add` uses for an ext4 image.
 * Chosen by `npm run bench:delta-chunking` on the bench:delta pairs (README "Delta updates"): once
 * directory blocks no longer drag file data with them, a larger average mostly shrinks the index
 * (7.8k instead of 14k chunks per GiB: 180 instead of 300 KB, each distinct chunk a 32-byte hash)
 * and larger frames compress better. At pack level 16, against 8/32/128 (used before): one package
 * 3.25 % instead of 3.40 % of `zstd -19` (reproducible) and 3.39 % (from scratch), config and rebuild
 * ~20-30 % less, the 28-package rollup 13.3 % and the kernel 37.3 % (both less, unlike at level 12,
 * where 64 KiB cost the rollup 5 %). */
export const EXT4_CDC: Readonly<CdcParams> = Object.freeze({ min: 16 << 10, avg: 64 << 10, max: 256 << 10 });

/** Gear table: 256 pseudo-random 32-bit words from SHA-256 over a fixed label. */
const GEAR: Uint32Array = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) t[i] = createHash('sha256').update(`slotflip-gear-v1:${i}`).digest().readUInt32LE(0);
  return t;
})();

/** A mask with `bits` one-bits at the top of a 32-bit word: the gear hash's top bits depend on the
 * last 32 bytes, its low bits on only the last few. */
function topMask(bits: number): number {
  return bits <= 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
}

/** Throws a RangeError naming what is wrong with `p`. */
export function checkCdcParams(p: CdcParams): void {
  const ok = Number.isInteger(p.min) && Number.isInteger(p.avg) && Number.isInteger(p.max) && p.min >= 64 && p.min < p.avg && p.avg < p.max && p.max <= 16 << 20 && (p.avg & (p.avg - 1)) === 0;
  if (!ok) throw new RangeError(`CDC sizes min ${p.min} / avg ${p.avg} / max ${p.max}: need 64 <= min < avg < max <= 16 MiB and avg a power of two`);
  const b = p.dirBlock;
  if (b !== undefined && !(Number.isInteger(b) && b >= 1024 && b <= 65536 && (b & (b - 1)) === 0 && b <= p.max)) throw new RangeError(`CDC dirBlock ${String(b)}: need a power of two, 1024..65536 and <= max`);
}

/**
 * Whether the `len` bytes at `buf[off]` look like an ext4 directory block: a chain of entries
 * (rec_len a multiple of 4, at least 8, the name fitting) that fills it exactly. Covers leaf blocks
 * (with or without the metadata_csum tail entry) and htree root and node blocks. Pure.
 */
export function looksLikeDirBlock(buf: Uint8Array, off: number, len: number): boolean {
  let o = 0;
  while (o < len) {
    if (o + 8 > len) return false;
    const recLen = buf[off + o + 4]! | (buf[off + o + 5]! << 8);
    const nameLen = buf[off + o + 6]!;
    if (recLen < 8 || (recLen & 3) !== 0 || o + recLen > len || (nameLen > 0 && 8 + nameLen > recLen)) return false;
    o += recLen;
  }
  return o === len && len > 0;
}

/**
 * Length of the chunk at `buf[start]` (image offset `at`) when `p.dirBlock` is set: the directory
 * block there, or the content-defined chunk that stops short of the next one. Looks at no byte past
 * min(end, start + p.max), so the cut is the same whatever the read buffer holds beyond.
 */
function cutAroundDirs(buf: Uint8Array, start: number, end: number, at: number, p: CdcParams, c: Cutter = JS_CUTTER): number {
  const bs = p.dirBlock!;
  const avail = Math.min(end - start, p.max);
  const first = (bs - (at % bs)) % bs; // offset of the first block boundary at or after start
  const d = c.dir(buf, start + first, start + avail, bs);
  if (d === start) return bs;
  return d >= 0 ? c.cut(buf, start, d, p) : c.cut(buf, start, end, p);
}

/** The two loops chunking needs, over one buffer: cutPoint, and the scan for a directory block. */
interface Cutter {
  cut: CutFn;
  /** the first of the blocks at `b`, `b + bs`, ... ending by `limit` that looksLikeDirBlock, or -1. */
  dir(buf: Uint8Array, b: number, limit: number, bs: number): number;
}

const JS_CUTTER: Cutter = {
  cut: cutPoint,
  dir: (buf, b, limit, bs) => {
    for (; b + bs <= limit; b += bs) if (looksLikeDirBlock(buf, b, bs)) return b;
    return -1;
  },
};

/** cutPoint's signature: the length of the chunk at `buf[start]`, looking at no byte at or past `end`. */
export type CutFn = (buf: Uint8Array, start: number, end: number, p: CdcParams) => number;

/** cutPoint run by the wasm gear loop over `c.buf` (the only buffer it may be given). */
function wasmCutPoint(c: GearCutter): CutFn {
  return (_buf, start, end, p) => {
    const n = end - start;
    if (n <= p.min) return n;
    const bits = Math.round(Math.log2(p.avg));
    return c.cut(start + Math.max(0, p.min - 32), start + p.min, start + Math.min(n, p.avg), start + Math.min(n, p.max), topMask(bits + 2), topMask(bits - 2)) - start;
  };
}

/**
 * A read buffer of `size` bytes and the loops over it (`cut(buf, ...)`, `dir(buf, ...)` with that
 * same buffer): the wasm ones (cdc-wasm.ts) where the runtime has WebAssembly (`wasm: true`), else
 * cutPoint and looksLikeDirBlock over a plain Buffer. Both find the same cuts.
 */
export function cutBuffer(size: number): { buf: Buffer; cut: CutFn; dir: Cutter['dir']; wasm: boolean } {
  const c = gearCutter(size, GEAR);
  return c ? { buf: c.buf, cut: wasmCutPoint(c), dir: (_buf, b, limit, bs) => c.dir(b, limit, bs), wasm: true } : { buf: Buffer.allocUnsafe(size), ...JS_CUTTER, wasm: false };
}

/**
 * Length of the chunk starting at `buf[start]`, looking at no byte at or past `end`. `end - start`
 * must be >= p.max unless the data ends at `end` (then the rest is at most one chunk). Pure.
 */
export function cutPoint(buf: Uint8Array, start: number, end: number, p: CdcParams): number {
  const n = end - start;
  if (n <= p.min) return n;
  const bits = Math.round(Math.log2(p.avg));
  const maskS = topMask(bits + 2); // harder before the average: fewer tiny chunks
  const maskL = topMask(bits - 2); // easier after it: fewer max-size ones
  const normal = Math.min(n, p.avg);
  const limit = Math.min(n, p.max);
  let h = 0;
  let i = p.min;
  // the hash needs 32 bytes of history to be position-independent: warm it up before min
  for (let j = Math.max(0, p.min - 32); j < p.min; j++) h = ((h << 1) + GEAR[buf[start + j]!]!) >>> 0;
  for (; i < normal; i++) {
    h = ((h << 1) + GEAR[buf[start + i]!]!) >>> 0;
    if ((h & maskS) === 0) return i + 1;
  }
  for (; i < limit; i++) {
    h = ((h << 1) + GEAR[buf[start + i]!]!) >>> 0;
    if ((h & maskL) === 0) return i + 1;
  }
  return limit;
}

/** Where a window of `p.max` zero bytes cuts (as cutPoint and cutAroundDirs would: a zero block is
 * no directory block) and that chunk's SHA-256; remembered per parameters (cutPoint in JS over
 * `max` bytes: milliseconds interpreted, and a sampled slot is cut in many short runs). */
function zeroWindow(p: CdcParams): { block: Buffer; cut: number; sha256: string } {
  const key = `${p.min}/${p.avg}/${p.max}`;
  const known = zeroWindows.get(key);
  if (known) return known;
  const block = Buffer.alloc(p.max);
  const cut = cutPoint(block, 0, p.max, p);
  const z = { block, cut, sha256: createHash('sha256').update(block.subarray(0, cut)).digest('hex') };
  if (zeroWindows.size >= 4) zeroWindows.clear();
  zeroWindows.set(key, z);
  return z;
}
const zeroWindows = new Map<string, ReturnType<typeof zeroWindow>>();

export interface CdcChunk {
  /** byte offset in the file or device. */
  offset: number;
  length: number;
  /** SHA-256 (hex) of the chunk's bytes. */
  sha256: string;
}

export interface ChunkFileOptions {
  /** where to start (default 0): chunks are cut from there as if the data began there, but aligned
   * to directory blocks (`dirBlock`) by their file offset. */
  offset?: number;
  /** bytes to chunk from `offset` (default: the file's size; a block device needs it). */
  size?: number;
  /** read buffer (default 8 MiB; at least 2 × max). */
  bufferBytes?: number;
  /** the read buffer and loops to use (cutBuffer), so repeated calls share one; its buffer must hold
   * at least 2 × max (`bufferBytes` is then ignored). */
  cutter?: ReturnType<typeof cutBuffer>;
  /** called for each chunk in order with its bytes (valid only during the call). */
  onChunk?: (c: CdcChunk, bytes: Buffer) => void | Promise<void>;
  signal?: AbortSignal;
  /** false: do not collect the chunk list (returned empty; use onChunk). Default true. */
  keep?: boolean;
}

/**
 * Cuts `size` bytes of `path` into content-defined chunks, hashing each. Reads sequentially with a
 * bounded buffer; returns the chunk list (offset, length, sha256).
 */
export async function chunkFile(path: string, p: CdcParams, opts: ChunkFileOptions = {}): Promise<CdcChunk[]> {
  checkCdcParams(p);
  const fh = await open(path, 'r');
  try {
    const offset = opts.offset ?? 0;
    const size = offset + (opts.size ?? (await fh.stat()).size - offset);
    // the read buffer lives in the wasm gear loop's memory (cdc-wasm.ts), which cuts in place
    const cutter = opts.cutter ?? cutBuffer(Math.max(opts.bufferBytes ?? 8 << 20, 2 * p.max));
    const cap = cutter.buf.length;
    if (cap < 2 * p.max) throw new RangeError(`chunkFile: a ${cap}-byte buffer for chunks of up to ${p.max}`);
    const { buf, cut } = cutter;
    const zeros = zeroWindow(p);
    const out: CdcChunk[] = [];
    let filled = 0; // bytes valid in buf
    let bufStart = offset; // file offset of buf[0]
    let pos = 0; // next chunk start within buf
    let readOff = offset; // next file offset to read
    for (;;) {
      opts.signal?.throwIfAborted();
      // refill: keep the unconsumed tail, read up to the buffer's end
      if (pos > 0) {
        buf.copy(buf, 0, pos, filled);
        filled -= pos;
        bufStart += pos;
        pos = 0;
      }
      while (filled < cap && readOff < size) {
        const { bytesRead } = await fh.read(buf, filled, Math.min(cap - filled, size - readOff), readOff);
        if (bytesRead === 0) throw new Error(`${path} ended at ${readOff} of ${size} bytes`);
        filled += bytesRead;
        readOff += bytesRead;
      }
      const eof = readOff >= size;
      if (filled === 0) break;
      while (pos < filled && (eof || filled - pos >= p.max)) {
        // a window of zeros (unused filesystem space, sparse images) cuts like any other, found by a
        // memcmp instead of the per-byte hash, and its SHA-256 is known
        const zero = filled - pos >= p.max && buf.compare(zeros.block, 0, p.max, pos, pos + p.max) === 0;
        const len = zero ? zeros.cut : p.dirBlock ? cutAroundDirs(buf, pos, filled, bufStart + pos, p, cutter) : cut(buf, pos, filled, p);
        const bytes = buf.subarray(pos, pos + len);
        const c: CdcChunk = { offset: bufStart + pos, length: len, sha256: zero ? zeros.sha256 : createHash('sha256').update(bytes).digest('hex') };
        if (opts.keep !== false) out.push(c);
        if (opts.onChunk) await opts.onChunk(c, bytes);
        pos += len;
      }
      if (eof && pos >= filled) break;
    }
    return out;
  } finally {
    await fh.close();
  }
}

/**
 * The chunking parameters `buildDelta` uses for an image: for an ext4 image EXT4_CDC (or `base`)
 * with its block size as `dirBlock` (directory blocks are chunks of their own: cdc.ts); for
 * anything else DEFAULT_CDC (or `base`).
 */
export async function cdcForImage(imagePath: string, base?: CdcParams): Promise<CdcParams> {
  const fh = await open(imagePath, 'r');
  try {
    const sb = Buffer.alloc(1024);
    const { bytesRead } = await fh.read(sb, 0, 1024, 1024);
    if (bytesRead < 1024 || sb.readUInt16LE(56) !== 0xef53) return { ...(base ?? DEFAULT_CDC) };
    const p = base ?? EXT4_CDC;
    const log = sb.readUInt32LE(24);
    const bs = log <= 6 ? 1024 << log : 0;
    return bs >= 1024 && bs <= Math.min(65536, p.max) ? { ...p, dirBlock: bs } : { ...p };
  } finally {
    await fh.close();
  }
}

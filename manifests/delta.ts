/**
 * The delta format: an image cut into content-defined chunks (cdc.ts), each distinct chunk
 * compressed on its own (one zstd frame) into a pack file, plus a delta index that lists, for every
 * chunk of the image in order, which distinct chunk it is; for every distinct chunk its SHA-256, its
 * size and where its frame lies in the pack. Pack and index are TUF target files of their own
 * (`<payload>.delta-pack`, `<payload>.delta-index`), referenced with length and SHA-256 from the
 * release's index file (`delta` section), so a device verifies the index before trusting a byte of
 * it, and every chunk — copied from a slot or fetched — against the index before writing it.
 *
 * No per-pair work: one pack and one index per release serve devices holding any earlier image.
 *
 * Index file (brotli-compressed; all integers little-endian):
 *   "SFDI" | u32 header length | header JSON (DeltaHeader)
 *   | unique × { sha256[32], u32 raw length, u32 frame length }
 *   | chunkCount × u32 unique id
 * Format `slotflip-delta-2` (written by default since issue 25's x86 pass) is format 1 plus one bit:
 * bit 31 of a raw length (X86_FLAG) says the chunk was x86-filtered (x86-filter.ts) before it was
 * compressed, so its frame decompresses to the filtered bytes and the device undoes the filter before
 * it hashes the chunk. A device that knows only format 1 refuses the section's format and installs the
 * full payload (manifests/README "Delta index and pack"); this one reads both.
 * A frame's pack offset is the sum of the frame lengths before it; a chunk's image offset is the sum
 * of the raw lengths of the chunks before it. Frames lie in the pack in order of first use in the
 * image, so a device that fetches misses in image order reads the pack front to back.
 */
import { createHash } from 'node:crypto';
import { mkdir, open, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import zlib from 'node:zlib';
import { SlotflipError } from '../hal/errors.js';
import { fsyncDir } from '../hal/atomic-file.js';
import { cdcForImage, checkCdcParams, chunkFile, type CdcParams } from './cdc.js';
import { X86_CANDIDATE_EVERY, x86Decode, x86Encode } from './x86-filter.js';

export const DELTA_FORMAT_1 = 'slotflip-delta-1';
export const DELTA_FORMAT_2 = 'slotflip-delta-2';
export type DeltaFormat = typeof DELTA_FORMAT_1 | typeof DELTA_FORMAT_2;
/** What `release add` writes unless told `--delta-format 1`. */
export const DELTA_FORMAT: DeltaFormat = DELTA_FORMAT_2;
const FORMATS: readonly string[] = [DELTA_FORMAT_1, DELTA_FORMAT_2];
/** Format 2: bit 31 of an entry's raw length, set when the chunk's frame holds it x86-filtered. */
const X86_FLAG = 0x80000000;
const MAGIC = Buffer.from('SFDI');
const ENTRY = 40;
/** Largest decompressed index accepted (a 64 GiB image at 16 KiB average is ~170 MiB of refs: cap
 * is for images up to ~16 GiB at the default sizes). */
export const MAX_DELTA_INDEX_BYTES = 64 << 20;

export interface DeltaHeader {
  format: DeltaFormat;
  imageSize: number;
  imageSha256: string;
  cdc: CdcParams;
  compression: 'zstd';
  uniqueCount: number;
  chunkCount: number;
  packLength: number;
}

/** What a release's index file carries in its optional `delta` section. */
export interface DeltaSection {
  format: DeltaFormat;
  index: { target: string; length: number; sha256: string };
  pack: { target: string; length: number; sha256: string };
  /** the index written against the earlier release's (delta-thin.ts), for a device that holds that
   * one: `base` is the SHA-256 of the earlier index's uncompressed bytes, `rawSha256` that of this
   * release's (what the device rebuilds and checks). Optional; a device without the base fetches `index`. */
  thin?: { target: string; length: number; sha256: string; base: string; rawSha256: string };
}

/** Largest delta index FILE (compressed) a device fetches: the read is capped at its signed length,
 * and a section that signs a longer one is refused before any request. */
export const MAX_DELTA_INDEX_FILE_BYTES = 32 << 20;

/**
 * Judges a chunk index file's `delta` section (already authenticated: the index file matched its
 * signed hash). Pure. Returns the section, or why it is unusable (the device then installs the full
 * payload: an unknown format is not an error, a newer publisher may add one).
 */
export function parseDeltaSection(v: unknown): { ok: true; section: DeltaSection } | { ok: false; why: string } {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return { ok: false, why: 'the delta section is not an object' };
  const o = v as Record<string, unknown>;
  const format = o['format'];
  if (typeof format !== 'string' || !FORMATS.includes(format)) return { ok: false, why: `delta format ${JSON.stringify(String(format).slice(0, 40))} is not ${FORMATS.join(' or ')}` };
  const file = (k: 'index' | 'pack' | 'thin', cap: number): DeltaSection['index'] | string => {
    const f = o[k] as Record<string, unknown> | null | undefined;
    if (typeof f !== 'object' || f === null) return `delta.${k} is missing`;
    const { target, length, sha256 } = f;
    if (typeof target !== 'string' || target.length === 0 || target.length > 512 || target.split('/').some((p) => p === '' || p === '.' || p === '..')) return `delta.${k}.target is not a target name`;
    if (!Number.isSafeInteger(length) || (length as number) <= 0 || (length as number) > cap) return `delta.${k}.length ${JSON.stringify(length)} is not 1..${cap}`;
    if (typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(sha256)) return `delta.${k}.sha256 is not 64 hex digits`;
    return { target, length: length as number, sha256 };
  };
  const index = file('index', MAX_DELTA_INDEX_FILE_BYTES);
  if (typeof index === 'string') return { ok: false, why: index };
  const pack = file('pack', Number.MAX_SAFE_INTEGER);
  if (typeof pack === 'string') return { ok: false, why: pack };
  let thin: DeltaSection['thin'];
  if (o['thin'] !== undefined) {
    const f = file('thin', MAX_DELTA_INDEX_FILE_BYTES);
    if (typeof f === 'string') return { ok: false, why: f };
    const { base, rawSha256 } = o['thin'] as Record<string, unknown>;
    if (typeof base !== 'string' || !/^[0-9a-f]{64}$/.test(base) || typeof rawSha256 !== 'string' || !/^[0-9a-f]{64}$/.test(rawSha256)) return { ok: false, why: 'delta.thin.base and .rawSha256 must be 64 hex digits' };
    thin = { ...f, base, rawSha256 };
  }
  return { ok: true, section: { format: format as DeltaFormat, index, pack, ...(thin ? { thin } : {}) } };
}

export interface DeltaIndex {
  header: DeltaHeader;
  /** unique × 32 bytes. */
  shas: Buffer;
  rawLen: Uint32Array;
  packLen: Uint32Array;
  /** pack offset of each unique frame. */
  packOff: Float64Array;
  /** unique id of each chunk of the image, in image order. */
  refs: Uint32Array;
  /** format 2: 1 for each unique chunk whose frame holds it x86-filtered (undo with unfilterChunk);
   * undefined when no chunk is. */
  x86: Uint8Array | undefined;
  /** SHA-256 of the index's uncompressed bytes (what a thin index names as its base: delta-thin.ts). */
  rawSha256: string;
}

/** Undoes the filter the index says chunk `u`'s frame was made with (in place), before it is hashed. */
export function unfilterChunk(idx: Pick<DeltaIndex, 'x86'>, u: number, raw: Buffer): Buffer {
  return idx.x86 !== undefined && idx.x86[u] === 1 ? x86Decode(raw) : raw;
}

function invalid(msg: string, details: Record<string, unknown> = {}): SlotflipError {
  return new SlotflipError('MANIFEST_DELTA_INVALID', `delta index: ${msg}; the release's delta files are damaged or not slotflip's (the device falls back to the full payload)`, { details });
}

/** Parses and checks a delta index file (compressed bytes, already verified against its signed hash). */
export function parseDeltaIndex(file: Buffer): DeltaIndex {
  let raw: Buffer;
  try {
    raw = zlib.brotliDecompressSync(file, { maxOutputLength: MAX_DELTA_INDEX_BYTES });
  } catch (cause) {
    throw invalid(`cannot decompress (${(cause as Error).message})`);
  }
  return parseRawDeltaIndex(raw);
}

/** The same for an index's uncompressed bytes (rebuilt from a thin index and checked: delta-thin.ts). */
export function parseRawDeltaIndex(raw: Buffer): DeltaIndex {
  if (raw.length < 8 || !raw.subarray(0, 4).equals(MAGIC)) throw invalid('bad magic');
  const hl = raw.readUInt32LE(4);
  if (8 + hl > raw.length) throw invalid('header runs past the end');
  let h: DeltaHeader;
  try {
    h = JSON.parse(raw.subarray(8, 8 + hl).toString('utf8')) as DeltaHeader;
  } catch {
    throw invalid('header is not JSON');
  }
  const int = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0;
  if (!FORMATS.includes(h.format) || h.compression !== 'zstd' || !int(h.imageSize) || !int(h.uniqueCount) || !int(h.chunkCount) || !int(h.packLength) || typeof h.imageSha256 !== 'string' || !/^[0-9a-f]{64}$/.test(h.imageSha256) || typeof h.cdc !== 'object' || h.cdc === null) throw invalid('header fields are missing or wrong');
  try {
    checkCdcParams(h.cdc);
  } catch (e) {
    throw invalid((e as Error).message);
  }
  const body = 8 + hl;
  if (raw.length !== body + h.uniqueCount * ENTRY + h.chunkCount * 4) throw invalid('length does not match the counts', { length: raw.length });
  const shas = Buffer.allocUnsafe(h.uniqueCount * 32);
  const rawLen = new Uint32Array(h.uniqueCount);
  const packLen = new Uint32Array(h.uniqueCount);
  const packOff = new Float64Array(h.uniqueCount);
  let x86: Uint8Array | undefined;
  let off = 0;
  for (let u = 0; u < h.uniqueCount; u++) {
    const e = body + u * ENTRY;
    raw.copy(shas, u * 32, e, e + 32);
    let len = raw.readUInt32LE(e + 32);
    // the flag only in format 2: a format 1 length this large is refused below, as it always was
    if (h.format === DELTA_FORMAT_2 && len >= X86_FLAG) {
      len -= X86_FLAG;
      (x86 ??= new Uint8Array(h.uniqueCount))[u] = 1;
    }
    rawLen[u] = len;
    packLen[u] = raw.readUInt32LE(e + 36);
    if (rawLen[u] === 0 || rawLen[u]! > h.cdc.max || packLen[u] === 0) throw invalid(`chunk ${u} has length ${rawLen[u]} / frame ${packLen[u]}`);
    packOff[u] = off;
    off += packLen[u]!;
  }
  if (off !== h.packLength) throw invalid(`frames add up to ${off} bytes, header says ${h.packLength}`);
  const refs = new Uint32Array(h.chunkCount);
  const rb = body + h.uniqueCount * ENTRY;
  let size = 0;
  let nextNew = 0;
  for (let i = 0; i < h.chunkCount; i++) {
    const u = raw.readUInt32LE(rb + i * 4);
    // frames are in order of first use: a reference is either to a seen chunk or the next new one
    if (u > nextNew || u >= h.uniqueCount) throw invalid(`chunk ${i} refers to ${u}, out of order`);
    if (u === nextNew) nextNew++;
    refs[i] = u;
    size += rawLen[u]!;
  }
  if (nextNew !== h.uniqueCount) throw invalid('some distinct chunks are never used');
  if (size !== h.imageSize) throw invalid(`chunks add up to ${size} bytes, header says ${h.imageSize}`);
  return { header: h, shas, rawLen, packLen, packOff, refs, x86, rawSha256: createHash('sha256').update(raw).digest('hex') };
}

/**
 * zstd level of the pack's frames when none is given. Chosen by `npm run bench:delta-level` and
 * `npm run bench:delta-chunking` on the 1 GiB Debian images (README "Delta updates"): with each
 * frame's length pledged, the frames of the chunks a one-package upgrade adds are 2.69 MB at 12,
 * 2.56 at 14, 2.52 at 16, 2.51 at 19, for 1 / 2.1 / 3.1 / 6.7 times the CPU of level 12 (zstd's
 * optimal parsers start at 16); what a device downloads is what counts, the manufacturer pays once.
 */
export const DEFAULT_DELTA_LEVEL = 16;

// cdcForImage lives in cdc.ts (the device's idle indexer uses it without loading the publisher)
export { cdcForImage };

export interface BuildDeltaOptions {
  /** chunking (default: cdcForImage). */
  cdc?: CdcParams;
  /** zstd level of each frame (default DEFAULT_DELTA_LEVEL). */
  level?: number;
  /** frames compressed in parallel (default 4, node:zlib's thread pool). */
  concurrency?: number;
  /** directory of already compressed frames by SHA-256 and level (benches and repeated builds). */
  frameCache?: string;
  /** index format (default DELTA_FORMAT, i.e. 2: x86-filtered frames where that is smaller; 1 for
   * fleets whose daemons predate format 2 and should still get deltas). */
  format?: DeltaFormat;
}

export interface BuiltDelta {
  header: DeltaHeader;
  index: { length: number; sha256: string };
  pack: { length: number; sha256: string };
}

type ZstdZlib = { zstdCompress?: (b: Buffer, o: object, cb: (e: Error | null, r: Buffer) => void) => void; constants: Record<string, number> };

/** What a frame cache must key on besides the chunk and level: how zstdFrame encodes (frames made
 * before the length was pledged are valid but larger). */
export const FRAME_ENCODING = 'p1';
/** The same for a frame of the x86-filtered chunk. */
const FRAME_ENCODING_X86 = `${FRAME_ENCODING}x86`;

/** One zstd frame of `raw` at `level` (node:zlib, Node >= 22.15). */
export function zstdFrame(raw: Buffer, level: number): Promise<Buffer> {
  const z = zlib as unknown as ZstdZlib;
  if (!z.zstdCompress) return Promise.reject(new SlotflipError('MANIFEST_PAYLOAD_BUILD', `node ${process.version} has no built-in zstd; delta packs need Node 22.15 or later`));
  return new Promise((ok, fail) => {
    // the window need not exceed the chunk: smaller tables (faster to set up per frame, less memory to decode)
    const windowLog = Math.max(10, Math.ceil(Math.log2(Math.max(raw.length, 1024))));
    const c = z.constants;
    // pledgedSrcSize: without it node:zlib compresses as a stream of unknown length, and the frames
    // come out ~3 % larger (the level's parameters are not fitted to the chunk; Node 26 pledges itself)
    z.zstdCompress!(raw, { pledgedSrcSize: raw.length, params: { [c.ZSTD_c_compressionLevel!]: level, [c.ZSTD_c_windowLog!]: windowLog, [c.ZSTD_c_hashLog!]: windowLog - 1, [c.ZSTD_c_chainLog!]: windowLog, [c.ZSTD_c_checksumFlag!]: 0, [c.ZSTD_c_contentSizeFlag!]: 1 } }, (e, r) => (e ? fail(e) : ok(r)));
  });
}

/**
 * Cuts `imagePath` into chunks, writes the pack (distinct chunks' frames in first-use order) and the
 * index, each atomically. Memory: the distinct-chunk table (~60 B per chunk) plus `concurrency`
 * chunks in flight.
 */
export async function buildDelta(imagePath: string, indexPath: string, packPath: string, opts: BuildDeltaOptions = {}): Promise<BuiltDelta> {
  const cdc = opts.cdc ?? (await cdcForImage(imagePath));
  checkCdcParams(cdc);
  const level = opts.level ?? DEFAULT_DELTA_LEVEL;
  const format = opts.format ?? DELTA_FORMAT;
  if (!FORMATS.includes(format)) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', `delta format ${JSON.stringify(format)} is not ${FORMATS.join(' or ')}`);
  const concurrency = Math.max(1, opts.concurrency ?? 4);
  const tmpPack = join(dirname(packPath), `.${basename(packPath)}.${process.pid}.tmp`);
  const tmpIndex = join(dirname(indexPath), `.${basename(indexPath)}.${process.pid}.tmp`);
  if (opts.frameCache) await mkdir(opts.frameCache, { recursive: true });
  const pack = await open(tmpPack, 'w', 0o644);
  try {
    const ids = new Map<string, number>();
    const entries: Buffer[] = [];
    const refs: number[] = [];
    const packHash = createHash('sha256');
    const imageHash = createHash('sha256');
    let packLength = 0;
    let imageSize = 0;
    const queue: { sha: string; raw: Buffer; frame: Promise<{ frame: Buffer; x86: boolean }> }[] = [];
    const compressed = async (sha: string, raw: Buffer, encoding: string): Promise<Buffer> => {
      const cached = opts.frameCache ? join(opts.frameCache, `${sha}.${level}.${encoding}.zst`) : undefined;
      if (cached) {
        const hit = await readFile(cached).catch(() => undefined);
        if (hit && hit.length > 0) return hit;
      }
      const f = await zstdFrame(raw, level);
      if (cached) {
        // whole or not at all: a build killed while writing must not leave a cut frame to be reused
        const tmp = `${cached}.${process.pid}.tmp`;
        await writeFile(tmp, f)
          .then(() => rename(tmp, cached))
          .catch(() => unlink(tmp).catch(() => undefined));
      }
      return f;
    };
    // format 2: a chunk that looks like x86 code is compressed filtered too, and the smaller frame kept
    const frameFor = async (sha: string, raw: Buffer): Promise<{ frame: Buffer; x86: boolean }> => {
      const plain = compressed(sha, raw, FRAME_ENCODING);
      if (format !== DELTA_FORMAT_2) return { frame: await plain, x86: false };
      const filtered = Buffer.from(raw);
      if (x86Encode(filtered) * X86_CANDIDATE_EVERY <= raw.length) return { frame: await plain, x86: false };
      const [p, f] = await Promise.all([plain, compressed(sha, filtered, FRAME_ENCODING_X86)]);
      return f.length < p.length ? { frame: f, x86: true } : { frame: p, x86: false };
    };
    const drain = async (): Promise<void> => {
      const q = queue.shift()!;
      const { frame, x86 } = await q.frame;
      const e = Buffer.alloc(ENTRY);
      Buffer.from(q.sha, 'hex').copy(e, 0);
      e.writeUInt32LE(q.raw.length + (x86 ? X86_FLAG : 0), 32);
      e.writeUInt32LE(frame.length, 36);
      entries.push(e);
      packHash.update(frame);
      await pack.write(frame, 0, frame.length, packLength);
      packLength += frame.length;
    };
    await chunkFile(imagePath, cdc, {
      onChunk: async (c, bytes) => {
        imageHash.update(bytes);
        imageSize += c.length;
        let id = ids.get(c.sha256);
        if (id === undefined) {
          id = ids.size;
          ids.set(c.sha256, id);
          const raw = Buffer.from(bytes);
          const frame = frameFor(c.sha256, raw);
          frame.catch(() => undefined);
          queue.push({ sha: c.sha256, raw, frame });
          if (queue.length >= concurrency) await drain();
        }
        refs.push(id);
      },
    });
    while (queue.length > 0) await drain();
    await pack.sync();
    await pack.close();
    const header: DeltaHeader = { format, imageSize, imageSha256: imageHash.digest('hex'), cdc: { ...cdc }, compression: 'zstd', uniqueCount: ids.size, chunkCount: refs.length, packLength };
    const hj = Buffer.from(JSON.stringify(header));
    const pre = Buffer.alloc(8);
    MAGIC.copy(pre, 0);
    pre.writeUInt32LE(hj.length, 4);
    const r = Buffer.from(Uint32Array.from(refs).buffer);
    const rawIndex = Buffer.concat([pre, hj, ...entries, r]);
    const file = zlib.brotliCompressSync(rawIndex, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 9, [zlib.constants.BROTLI_PARAM_SIZE_HINT]: rawIndex.length } });
    await writeFile(tmpIndex, file, { mode: 0o644, flush: true });
    await rename(tmpPack, packPath);
    await rename(tmpIndex, indexPath);
    await fsyncDir(dirname(packPath));
    return {
      header,
      index: { length: file.length, sha256: createHash('sha256').update(file).digest('hex') },
      pack: { length: packLength, sha256: packHash.digest('hex') },
    };
  } catch (cause) {
    await pack.close().catch(() => undefined);
    await unlink(tmpPack).catch(() => undefined);
    await unlink(tmpIndex).catch(() => undefined);
    if (cause instanceof SlotflipError) throw cause;
    throw new SlotflipError('MANIFEST_PAYLOAD_BUILD', `building the delta pack for ${imagePath} failed: ${(cause as Error).message}; check disk space and the image`, { cause, details: { imagePath } });
  }
}

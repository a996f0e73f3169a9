/**
 * A release's delta index written against the index of the release before it (issue 25): the SHA-256
 * of every distinct chunk the earlier release also had is replaced by that chunk's number in the
 * earlier index, which a device that installed (or kept the index of) the earlier release holds,
 * verified. The hashes are most of an index and do not compress (onepkg-repro: 0.151 of 0.179 MB);
 * against old-repro's index the thin one is ~0.04 MB.
 *
 * Not per-pair work: one thin index per release, against one earlier index — the one `release add`
 * already estimates against (the best earlier release of the same hardware, as devices rank it).
 * A device holding another one fetches the full index, as before.
 *
 * Trust: the thin file is a signed target (length, SHA-256), and what the device rebuilds from it is
 * the full index's uncompressed bytes, whose SHA-256 (`rawSha256`) the release signs too; a base
 * that is not what the publisher used cannot pass that check (the rebuilt bytes then differ).
 *
 * Thin file (brotli-compressed; integers little-endian):
 *   "SFDT" | base raw SHA-256[32] | u32 base distinct count | u32 raw length | u32 prefix length
 *   | prefix (the full index's "SFDI" | u32 | header JSON, verbatim)
 *   | unique × u32 base reference: 0 = a chunk the base lacks (its hash follows below), else
 *     zigzag(base id − (previous base id + 1)) + 1 — runs of chunks in the base's order are all 1s
 *   | (chunks the base lacks) × sha256[32]
 *   | unique × u32 raw length field | unique × u32 frame length | chunkCount × u32 unique id
 * Pure.
 */
import { createHash } from 'node:crypto';
import zlib from 'node:zlib';
import { SlotflipError } from '../hal/errors.js';
import { MAX_DELTA_INDEX_BYTES, type DeltaIndex } from './delta.js';

const MAGIC = Buffer.from('SFDT');
const ENTRY = 40;
const FIXED = 4 + 32 + 12;

function invalid(msg: string): SlotflipError {
  return new SlotflipError('MANIFEST_DELTA_INVALID', `thin delta index: ${msg}; the device fetches the full index instead`);
}

/** The full index's uncompressed bytes (what `rawSha256` is of). */
export function rawOfIndexFile(file: Buffer): Buffer {
  return zlib.brotliDecompressSync(file, { maxOutputLength: MAX_DELTA_INDEX_BYTES });
}

/** Writes the thin form of `nuRaw` (a full index's uncompressed bytes, parsed as `nu`) against `base`. */
export function encodeThinIndex(nuRaw: Buffer, nu: DeltaIndex, base: DeltaIndex): Buffer {
  const n = nu.header.uniqueCount;
  const entries = nuRaw.length - n * ENTRY - nu.header.chunkCount * 4;
  const idOf = new Map<string, number>();
  for (let u = base.header.uniqueCount - 1; u >= 0; u--) idOf.set(base.shas.toString('latin1', u * 32, u * 32 + 32), u);
  const refs = Buffer.alloc(n * 4);
  const missing: Buffer[] = [];
  const lens = Buffer.alloc(n * 4);
  const frames = Buffer.alloc(n * 4);
  let prev = -1;
  for (let u = 0; u < n; u++) {
    const e = entries + u * ENTRY;
    const id = idOf.get(nuRaw.toString('latin1', e, e + 32));
    if (id === undefined) missing.push(nuRaw.subarray(e, e + 32));
    else {
      const d = id - (prev + 1);
      refs.writeUInt32LE((d >= 0 ? 2 * d : -2 * d - 1) + 1, u * 4);
      prev = id;
    }
    nuRaw.copy(lens, u * 4, e + 32, e + 36);
    nuRaw.copy(frames, u * 4, e + 36, e + 40);
  }
  const fixed = Buffer.alloc(FIXED);
  MAGIC.copy(fixed, 0);
  Buffer.from(base.rawSha256, 'hex').copy(fixed, 4);
  fixed.writeUInt32LE(base.header.uniqueCount, 36);
  fixed.writeUInt32LE(nuRaw.length, 40);
  fixed.writeUInt32LE(entries, 44);
  const raw = Buffer.concat([fixed, nuRaw.subarray(0, entries), refs, ...missing, lens, frames, nuRaw.subarray(entries + n * ENTRY)]);
  return zlib.brotliCompressSync(raw, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 9, [zlib.constants.BROTLI_PARAM_SIZE_HINT]: raw.length } });
}

/**
 * Rebuilds the full index's uncompressed bytes from a thin file (already verified against its signed
 * hash) and the base it names, and checks them against the signed `rawSha256`. Throws
 * MANIFEST_DELTA_INVALID when anything does not fit (the caller fetches the full index).
 */
export function applyThinIndex(thin: Buffer, base: DeltaIndex, rawSha256: string): Buffer {
  let t: Buffer;
  try {
    t = zlib.brotliDecompressSync(thin, { maxOutputLength: MAX_DELTA_INDEX_BYTES });
  } catch {
    throw invalid('cannot decompress');
  }
  if (t.length < FIXED || !t.subarray(0, 4).equals(MAGIC)) throw invalid('bad magic');
  if (t.toString('hex', 4, 36) !== base.rawSha256 || t.readUInt32LE(36) !== base.header.uniqueCount) throw invalid('written against another base index');
  const rawLength = t.readUInt32LE(40);
  const prefix = t.readUInt32LE(44);
  if (rawLength > MAX_DELTA_INDEX_BYTES || prefix < 8 || FIXED + prefix > t.length) throw invalid('sizes out of range');
  const hl = t.readUInt32LE(FIXED + 4);
  if (8 + hl !== prefix) throw invalid('header length does not match');
  let h: { uniqueCount?: unknown; chunkCount?: unknown };
  try {
    h = JSON.parse(t.toString('utf8', FIXED + 8, FIXED + prefix)) as typeof h;
  } catch {
    throw invalid('header is not JSON');
  }
  const n = h.uniqueCount;
  const c = h.chunkCount;
  if (!Number.isSafeInteger(n) || !Number.isSafeInteger(c) || (n as number) < 0 || (c as number) < 0) throw invalid('counts are missing');
  const un = n as number;
  if (rawLength !== prefix + un * ENTRY + (c as number) * 4) throw invalid('raw length does not match the counts');
  let at = FIXED + prefix;
  const refsAt = at;
  at += un * 4;
  if (at > t.length) throw invalid('runs past the end');
  let missing = 0;
  for (let u = 0; u < un; u++) if (t.readUInt32LE(refsAt + u * 4) === 0) missing++;
  const shasAt = at;
  at += missing * 32;
  const lensAt = at;
  at += un * 4;
  const framesAt = at;
  at += un * 4;
  if (at + (c as number) * 4 !== t.length) throw invalid('length does not match the counts');
  const raw = Buffer.allocUnsafe(rawLength);
  t.copy(raw, 0, FIXED, FIXED + prefix);
  let prev = -1;
  let m = 0;
  for (let u = 0; u < un; u++) {
    const e = prefix + u * ENTRY;
    const r = t.readUInt32LE(refsAt + u * 4);
    if (r === 0) t.copy(raw, e, shasAt + m * 32, shasAt + ++m * 32);
    else {
      const z = r - 1;
      const id = prev + 1 + (z % 2 === 0 ? z / 2 : -(z + 1) / 2);
      if (id < 0 || id >= base.header.uniqueCount) throw invalid(`chunk ${u} refers to base chunk ${id}, out of range`);
      base.shas.copy(raw, e, id * 32, id * 32 + 32);
      prev = id;
    }
    t.copy(raw, e + 32, lensAt + u * 4, lensAt + u * 4 + 4);
    t.copy(raw, e + 36, framesAt + u * 4, framesAt + u * 4 + 4);
  }
  t.copy(raw, prefix + un * ENTRY, at);
  if (createHash('sha256').update(raw).digest('hex') !== rawSha256) throw invalid('the rebuilt index does not match its signed SHA-256');
  return raw;
}

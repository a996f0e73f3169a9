/**
 * Kept seed indexes (issue 25): for each slot, the signed delta index of the image this daemon last
 * wrote there by delta, so the next delta install looks that slot's chunks up in the index instead of
 * reading the whole slot and cutting it into chunks in JS (most of a delta install's time before).
 *
 * `<stateDir>/seed-index/<slot>.seed`: one JSON line binding the index to the slot (name and path)
 * and to the slot's content (the image's size and SHA-256, as verified by read-back after the
 * install), then the delta index file's bytes as fetched (they matched their signed SHA-256, which the
 * binding repeats so a torn or flipped file is refused on load) — or, when the install rebuilt the
 * index from the release's thin index (manifests/delta-thin.ts; checked against the signed SHA-256 of
 * its uncompressed bytes), those bytes brotli-compressed by the device, the binding holding their own
 * SHA-256 (the next release's thin index names its base by the uncompressed bytes, which are the
 * same either way). Written atomically; capped
 * (MAX_KEPT_INDEX_BYTES) on write and on read.
 *
 * Lifetime: kept after a delta install verified the slot (read back); dropped before the slot is
 * written again (any install into it, delta or full: route.ts drops it first); refused on load when
 * the install record (install-resume.json) says an install into that slot is unfinished or was of
 * another image. A binding can still go stale without the daemon knowing (the slot written by
 * other hands): that is safe, because a kept index is only a hint of where a chunk may be; every
 * chunk copied on its word is hashed and compared with the NEW release's signed index before it is
 * written (delta.ts), so a stale one costs a mismatch and a fetch, never a wrong byte on the slot.
 *
 * Built seed indexes: a slot slotflip never wrote (the factory image in both slots, or one written
 * before delta was enabled) has no signed index to keep. The idle daemon builds one (idle-index.ts,
 * `buildSeedIndex`): it reads the slot (read-only) and cuts it into chunks as a delta install would,
 * and keeps only what it read — the chunks' short keys and lengths (12 bytes a chunk: ~0.8 MiB per
 * GiB), bound to the slot (name, path, bytes read) and to the SHA-256 of every byte it read, plus the
 * install record's word on that slot at the time (an install into the slot that begins later changes
 * it, and drops the seed first anyway). Nothing is kept unless the whole slot was read: an aborted
 * build leaves nothing (it is redone from the start: ~1-2 s of CPU per GiB, the cut running as WebAssembly).
 * `<slot>.seed` again, schema 2 (a daemon that knows only schema 1 refuses it and cuts the slot).
 *
 * In memory every seed, kept or built, is a `SlotSeed`: one 8-byte key (the start of the chunk's
 * SHA-256) and one length per chunk, in slot order — what a delta install looks chunks up in.
 */
import { createHash } from 'node:crypto';
import { mkdir, open, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir, readFileCapped, writeFileAtomic } from '../../hal/atomic-file.js';
import type { SlotName } from '../../hal/boot-control.js';
import { checkCdcParams, chunkFile, type cutBuffer, type CdcParams } from '../../manifests/cdc.js';
import { parseDeltaIndex, type DeltaIndex } from '../../manifests/delta.js';

/** Largest seed index file kept per slot (a 1 GiB image at the default chunk sizes needs ~2-3 MiB
 * as a signed delta index, ~0.8 MiB built; a larger one is not kept and that slot is cut instead). */
export const MAX_KEPT_INDEX_BYTES = 16 << 20;
const MAX_HEADER_BYTES = 4 << 10;
/** bytes per chunk of a built seed's body: 8-byte key, u32 length (LE). */
const BUILT_ENTRY = 12;

/** What a slot holds, chunk by chunk: what a delta install looks chunks up in. */
export interface SlotSeed {
  /** the CDC parameters the slot was cut with (a seed cut otherwise does not line up: not used). */
  cdc: CdcParams;
  /** bytes described, from the slot's offset 0. */
  size: number;
  count: number;
  /** `count` × 8 bytes: the start of each chunk's SHA-256, in slot order. */
  keys: Buffer;
  /** `count` chunk lengths, in slot order. */
  lens: Uint32Array;
}

/** A signed delta index as a seed (the image it describes, chunk by chunk). */
export function seedOfIndex(idx: DeltaIndex): SlotSeed {
  const n = idx.refs.length;
  const keys = Buffer.allocUnsafe(n * 8);
  const lens = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const u = idx.refs[i]!;
    idx.shas.copy(keys, i * 8, u * 32, u * 32 + 8);
    lens[i] = idx.rawLen[u]!;
  }
  return { cdc: { ...idx.header.cdc }, size: idx.header.imageSize, count: n, keys, lens };
}

export interface CutOptions {
  signal?: AbortSignal;
  /** awaited after every `bufferBytes` cut (the idle build yields and paces itself here). */
  pause?: () => Promise<void>;
  /** read buffer (default 8 MiB; at least 2 × cdc.max). */
  bufferBytes?: number;
  /** also hash every byte read (the built seed's binding). */
  hashAll?: boolean;
  /** cut from this slot offset (default 0; `size` bytes from there). */
  offset?: number;
  /** the read buffer and loops to reuse (cdc.ts cutBuffer). */
  cutter?: ReturnType<typeof cutBuffer>;
}

/**
 * Reads `size` bytes of `path` (manifests/cdc.ts chunkFile: opened read-only, the booted slot is
 * never written) and cuts them into content-defined chunks with `cdc`, keeping 12 bytes a chunk.
 * Throws the signal's reason when aborted, an error naming the path when it ends early.
 */
export async function cutSlot(path: string, size: number, cdc: CdcParams, o: CutOptions = {}): Promise<{ seed: SlotSeed; sha256?: string }> {
  checkCdcParams(cdc);
  let cap = Math.max(16, Math.ceil(size / cdc.avg) + 16);
  let keys = Buffer.allocUnsafe(cap * 8);
  let lens = new Uint32Array(cap);
  let count = 0;
  const all = o.hashAll ? createHash('sha256') : undefined;
  const every = Math.max(o.bufferBytes ?? 8 << 20, 2 * cdc.max);
  let sincePause = 0;
  if (size > 0) {
    await chunkFile(path, cdc, {
      ...(o.offset ? { offset: o.offset } : {}),
      ...(o.cutter ? { cutter: o.cutter } : {}),
      size,
      keep: false,
      bufferBytes: every,
      ...(o.signal ? { signal: o.signal } : {}),
      onChunk: async (c, bytes) => {
        if (count === cap) {
          cap *= 2;
          const k = Buffer.allocUnsafe(cap * 8);
          keys.copy(k, 0, 0, count * 8);
          keys = k;
          const l = new Uint32Array(cap);
          l.set(lens.subarray(0, count));
          lens = l;
        }
        keys.write(c.sha256.slice(0, 16), count * 8, 'hex');
        lens[count++] = c.length;
        all?.update(bytes);
        sincePause += c.length;
        if (o.pause && sincePause >= every) {
          sincePause = 0;
          await o.pause();
        }
      },
    });
  }
  return { seed: { cdc: { ...cdc }, size: Math.max(0, size), count, keys: keys.subarray(0, count * 8), lens: lens.subarray(0, count) }, ...(all ? { sha256: all.digest('hex') } : {}) };
}

/** The install record's word on a slot path when a built seed was made (null: it names another slot or there is none). */
export type RecordMark = { imageSha256: unknown; complete: unknown; nextChunk: unknown } | null;

export interface SeedBinding {
  schema: 1;
  slot: SlotName;
  slotPath: string;
  /** the image the slot holds (verified by read-back when it was kept). */
  imageSize: number;
  imageSha256: string;
  /** the delta index file's signed length and SHA-256. */
  indexLength: number;
  indexSha256: string;
}

export interface BuiltBinding {
  schema: 2;
  kind: 'built';
  slot: SlotName;
  slotPath: string;
  /** bytes read from the slot's start, and the SHA-256 of all of them. */
  imageSize: number;
  imageSha256: string;
  cdc: CdcParams;
  chunkCount: number;
  /** the body's length and SHA-256 (a torn or flipped file is refused). */
  indexLength: number;
  indexSha256: string;
  /** the install record's word on this slot when the slot was read. */
  record: RecordMark;
}

export function seedIndexDir(stateDir: string): string {
  return join(stateDir, 'seed-index');
}

function seedPath(stateDir: string, slot: SlotName): string {
  return join(seedIndexDir(stateDir), `${slot}.seed`);
}

/** Keeps `indexFile` (verified against its signed hash, describing the image now on the slot,
 * read back) as the slot's seed index. Atomic. Returns false (nothing written) when it is over the cap. */
export async function keepSeedIndex(stateDir: string, slot: { slot: SlotName; path: string }, image: { size: number; sha256: string }, indexFile: Buffer): Promise<boolean> {
  if (indexFile.length > MAX_KEPT_INDEX_BYTES) return false;
  const b: SeedBinding = {
    schema: 1, slot: slot.slot, slotPath: slot.path, imageSize: image.size, imageSha256: image.sha256,
    indexLength: indexFile.length, indexSha256: createHash('sha256').update(indexFile).digest('hex'),
  };
  await mkdir(seedIndexDir(stateDir), { recursive: true });
  await writeFileAtomic(seedPath(stateDir, slot.slot), Buffer.concat([Buffer.from(`${JSON.stringify(b)}\n`), indexFile]));
  return true;
}

/** Drops the slot's seed index (before the slot is written). Idempotent; durable when it returns. */
export async function dropSeedIndex(stateDir: string, slot: SlotName): Promise<void> {
  try {
    await unlink(seedPath(stateDir, slot));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  await fsyncDir(seedIndexDir(stateDir));
}

export type LoadedSeed =
  | { ok: true; kind: 'kept'; seed: SlotSeed; index: DeltaIndex; binding: SeedBinding }
  | { ok: true; kind: 'built'; seed: SlotSeed; binding: BuiltBinding }
  | { ok: false; why: string };

type Header = { ok: true; binding: SeedBinding | BuiltBinding; body: Buffer } | { ok: false; why: string };

/** Reads the seed file and judges its binding line (slot, path, body length and hash, the record). */
async function readSeedFile(stateDir: string, slot: { slot: SlotName; path: string }, resumeStatePath: string | undefined, checkBody: boolean): Promise<Header> {
  let file: Buffer;
  try {
    if (checkBody) file = await readFileCapped(seedPath(stateDir, slot.slot), MAX_KEPT_INDEX_BYTES + MAX_HEADER_BYTES);
    else {
      const fh = await open(seedPath(stateDir, slot.slot), 'r');
      try {
        const b = Buffer.alloc(MAX_HEADER_BYTES);
        file = b.subarray(0, (await fh.read(b, 0, b.length, 0)).bytesRead);
      } finally {
        await fh.close();
      }
    }
  } catch (e) {
    return { ok: false, why: (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'none kept' : `unreadable (${(e as { code?: string }).code ?? 'error'})` };
  }
  const nl = file.subarray(0, MAX_HEADER_BYTES).indexOf(0x0a);
  if (nl < 0) return { ok: false, why: 'no binding line' };
  let b: Partial<SeedBinding> | Partial<BuiltBinding>;
  try {
    b = JSON.parse(file.subarray(0, nl).toString('utf8')) as typeof b;
  } catch {
    return { ok: false, why: 'binding is not JSON' };
  }
  const built = b.schema === 2 && (b as Partial<BuiltBinding>).kind === 'built';
  if ((b.schema !== 1 && !built) || b.slot !== slot.slot || b.slotPath !== slot.path) return { ok: false, why: `kept for ${String(b.slot)} at ${String(b.slotPath)}, not ${slot.slot} at ${slot.path}` };
  const body = file.subarray(nl + 1);
  if (checkBody) {
    if (body.length !== b.indexLength || createHash('sha256').update(body).digest('hex') !== b.indexSha256) return { ok: false, why: 'index bytes do not match the binding (torn or damaged)' };
  } else {
    const st = await stat(seedPath(stateDir, slot.slot)).catch(() => undefined);
    if (st?.size !== nl + 1 + Number(b.indexLength)) return { ok: false, why: 'index bytes do not match the binding (torn or damaged)' };
  }
  if (resumeStatePath !== undefined) {
    const why = built ? await recordMoved(resumeStatePath, slot.path, (b as BuiltBinding).record) : await resumeConflict(resumeStatePath, slot.path, b.imageSha256);
    if (why) return { ok: false, why };
  }
  return { ok: true, binding: b as SeedBinding | BuiltBinding, body };
}

/**
 * The slot's kept or built seed index, or why there is none usable (missing, torn, over the cap, for
 * another slot path, an install into the slot unfinished or of another image per `resumeStatePath`,
 * for a built one: the install record's word on the slot changed since it was read). Never throws:
 * a seed is an optimisation, its absence means the slot is cut.
 */
export async function loadSeedIndex(stateDir: string, slot: { slot: SlotName; path: string }, resumeStatePath?: string): Promise<LoadedSeed> {
  const f = await readSeedFile(stateDir, slot, resumeStatePath, true);
  if (!f.ok) return f;
  const b = f.binding;
  if (b.schema === 2) {
    const n = b.chunkCount;
    if (!Number.isSafeInteger(n) || n < 0 || f.body.length !== n * BUILT_ENTRY || !Number.isSafeInteger(b.imageSize)) return { ok: false, why: 'built index length does not match its chunk count' };
    try {
      checkCdcParams(b.cdc);
    } catch {
      return { ok: false, why: 'built index has unusable CDC parameters' };
    }
    const keys = Buffer.allocUnsafe(n * 8);
    const lens = new Uint32Array(n);
    let size = 0;
    for (let i = 0; i < n; i++) {
      f.body.copy(keys, i * 8, i * BUILT_ENTRY, i * BUILT_ENTRY + 8);
      lens[i] = f.body.readUInt32LE(i * BUILT_ENTRY + 8);
      size += lens[i]!;
    }
    if (size !== b.imageSize) return { ok: false, why: 'built index chunks do not add up to the bytes it read' };
    return { ok: true, kind: 'built', seed: { cdc: { ...b.cdc }, size, count: n, keys, lens }, binding: b };
  }
  let index: DeltaIndex;
  try {
    index = parseDeltaIndex(f.body);
  } catch (e) {
    return { ok: false, why: `index does not parse (${(e as { code?: string }).code ?? 'error'})` };
  }
  if (index.header.imageSize !== b.imageSize || index.header.imageSha256 !== b.imageSha256) return { ok: false, why: 'index describes another image than the binding' };
  return { ok: true, kind: 'kept', seed: seedOfIndex(index), index, binding: b };
}

/**
 * Whether the slot has a seed index that `loadSeedIndex` would likely use, judged from its binding
 * line and file size only (the idle check: no body read, hashed or parsed), with the CDC parameters
 * it was cut with when the binding says (built ones do).
 */
export async function seedPresent(stateDir: string, slot: { slot: SlotName; path: string }, resumeStatePath?: string): Promise<{ ok: true; cdc?: CdcParams } | { ok: false; why: string }> {
  const f = await readSeedFile(stateDir, slot, resumeStatePath, false);
  if (!f.ok) return f;
  return f.binding.schema === 2 ? { ok: true, cdc: f.binding.cdc } : { ok: true };
}

/** The install record's word on `slotPath` now (null when the record names another slot, or there is none). */
export async function recordMark(resumeStatePath: string, slotPath: string): Promise<RecordMark> {
  let rec: { slotPath?: unknown; imageSha256?: unknown; complete?: unknown; nextChunk?: unknown };
  try {
    rec = JSON.parse((await readFileCapped(resumeStatePath, 64 << 10)).toString('utf8')) as typeof rec;
  } catch {
    return null;
  }
  if (rec.slotPath !== slotPath) return null;
  return { imageSha256: rec.imageSha256 ?? null, complete: rec.complete ?? null, nextChunk: rec.nextChunk ?? null };
}

async function recordMoved(resumeStatePath: string, slotPath: string, then: RecordMark): Promise<string | undefined> {
  const now = await recordMark(resumeStatePath, slotPath);
  return JSON.stringify(now) === JSON.stringify(then ?? null) ? undefined : 'the install record says the slot was written since it was read';
}

export interface BuildSeedOptions extends Omit<CutOptions, 'hashAll'> {
  stateDir: string;
  slot: { slot: SlotName; path: string };
  /** bytes to read from the slot's start (its capacity: what a delta install would cut). */
  size: number;
  cdc: CdcParams;
  resumeStatePath: string;
}

/**
 * Reads the whole slot (read-only), cuts it into chunks and keeps the result as the slot's built seed
 * index (atomic), bound to what it read. Nothing is kept (`kept: false` and why) when the install
 * record's word on the slot changed while it was read or the index is over the cap; throws, keeping
 * nothing, when aborted (the signal's reason) or the slot cannot be read.
 */
export async function buildSeedIndex(o: BuildSeedOptions): Promise<{ kept: boolean; chunks: number; why?: string }> {
  const before = await recordMark(o.resumeStatePath, o.slot.path);
  const { seed, sha256 } = await cutSlot(o.slot.path, o.size, o.cdc, { ...(o.signal ? { signal: o.signal } : {}), ...(o.pause ? { pause: o.pause } : {}), ...(o.bufferBytes ? { bufferBytes: o.bufferBytes } : {}), hashAll: true });
  o.signal?.throwIfAborted();
  if (JSON.stringify(await recordMark(o.resumeStatePath, o.slot.path)) !== JSON.stringify(before)) return { kept: false, chunks: seed.count, why: 'the install record changed while the slot was read' };
  const body = Buffer.allocUnsafe(seed.count * BUILT_ENTRY);
  for (let i = 0; i < seed.count; i++) {
    seed.keys.copy(body, i * BUILT_ENTRY, i * 8, i * 8 + 8);
    body.writeUInt32LE(seed.lens[i]!, i * BUILT_ENTRY + 8);
  }
  if (body.length > MAX_KEPT_INDEX_BYTES) return { kept: false, chunks: seed.count, why: `${body.length} bytes, over the ${MAX_KEPT_INDEX_BYTES} cap` };
  const b: BuiltBinding = {
    schema: 2, kind: 'built', slot: o.slot.slot, slotPath: o.slot.path, imageSize: seed.size, imageSha256: sha256!, cdc: { ...o.cdc }, chunkCount: seed.count,
    indexLength: body.length, indexSha256: createHash('sha256').update(body).digest('hex'), record: before,
  };
  await mkdir(seedIndexDir(o.stateDir), { recursive: true });
  await writeFileAtomic(seedPath(o.stateDir, o.slot.slot), Buffer.concat([Buffer.from(`${JSON.stringify(b)}\n`), body]));
  return { kept: true, chunks: seed.count };
}

/** The install record names this slot with an unfinished install or another image: the kept index is stale. */
async function resumeConflict(path: string, slotPath: string, imageSha256: unknown): Promise<string | undefined> {
  const rec = await recordMark(path, slotPath);
  if (rec === null) return undefined; // no record (or a torn one, or another slot's): nothing says the slot changed
  if (rec.imageSha256 !== imageSha256) return 'the install record names another image on this slot';
  if (rec.complete !== true) return 'the install record says an install into this slot is unfinished';
  return undefined;
}

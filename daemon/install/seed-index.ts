/**
 * Kept seed indexes (issue 25): for each slot, the signed delta index of the image this daemon last
 * wrote there by delta, so the next delta install looks that slot's chunks up in the index instead of
 * reading the whole slot and cutting it into chunks in JS (most of a delta install's time before).
 *
 * `<stateDir>/seed-index/<slot>.seed`: one JSON line binding the index to the slot (name and path)
 * and to the slot's content (the image's size and SHA-256, as verified by read-back after the
 * install), then the delta index file's bytes as fetched (they matched their signed SHA-256, which the
 * binding repeats so a torn or flipped file is refused on load). Written atomically; capped
 * (MAX_KEPT_INDEX_BYTES) on write and on read.
 *
 * Lifetime: kept after a delta install verified the slot (read back); dropped before the slot is
 * written again (any install into it, delta or full: route.ts drops it first); refused on load when
 * the install record (install-resume.json) says an install into that slot is unfinished or was of
 * another image. A binding can still go stale without the daemon knowing (the slot written by
 * other hands): that is safe, because a kept index is only a hint of where a chunk may be; every
 * chunk copied on its word is hashed and compared with the NEW release's signed index before it is
 * written (delta.ts), so a stale one costs a mismatch and a fetch, never a wrong byte on the slot.
 */
import { createHash } from 'node:crypto';
import { mkdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir, readFileCapped, writeFileAtomic } from '../../hal/atomic-file.js';
import type { SlotName } from '../../hal/boot-control.js';
import { parseDeltaIndex, type DeltaIndex } from '../../manifests/delta.js';

/** Largest delta index file kept per slot (a 1 GiB image at the default chunk sizes needs ~2-3 MiB;
 * a larger one is not kept and that slot is cut instead). */
export const MAX_KEPT_INDEX_BYTES = 16 << 20;
const MAX_HEADER_BYTES = 4 << 10;

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

export type LoadedSeed = { ok: true; index: DeltaIndex; binding: SeedBinding } | { ok: false; why: string };

/**
 * The slot's kept seed index, or why there is none usable (missing, torn, over the cap, for another
 * slot path, an install into the slot unfinished or of another image per `resumeStatePath`). Never
 * throws: a seed is an optimisation, its absence means the slot is cut.
 */
export async function loadSeedIndex(stateDir: string, slot: { slot: SlotName; path: string }, resumeStatePath?: string): Promise<LoadedSeed> {
  let file: Buffer;
  try {
    file = await readFileCapped(seedPath(stateDir, slot.slot), MAX_KEPT_INDEX_BYTES + MAX_HEADER_BYTES);
  } catch (e) {
    return { ok: false, why: (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'none kept' : `unreadable (${(e as { code?: string }).code ?? 'error'})` };
  }
  const nl = file.subarray(0, MAX_HEADER_BYTES).indexOf(0x0a);
  if (nl < 0) return { ok: false, why: 'no binding line' };
  let b: Partial<SeedBinding>;
  try {
    b = JSON.parse(file.subarray(0, nl).toString('utf8')) as Partial<SeedBinding>;
  } catch {
    return { ok: false, why: 'binding is not JSON' };
  }
  const body = file.subarray(nl + 1);
  if (b.schema !== 1 || b.slot !== slot.slot || b.slotPath !== slot.path) return { ok: false, why: `kept for ${String(b.slot)} at ${String(b.slotPath)}, not ${slot.slot} at ${slot.path}` };
  if (body.length !== b.indexLength || createHash('sha256').update(body).digest('hex') !== b.indexSha256) return { ok: false, why: 'index bytes do not match the binding (torn or damaged)' };
  if (resumeStatePath !== undefined) {
    const why = await resumeConflict(resumeStatePath, slot.path, b.imageSha256);
    if (why) return { ok: false, why };
  }
  let index: DeltaIndex;
  try {
    index = parseDeltaIndex(body);
  } catch (e) {
    return { ok: false, why: `index does not parse (${(e as { code?: string }).code ?? 'error'})` };
  }
  if (index.header.imageSize !== b.imageSize || index.header.imageSha256 !== b.imageSha256) return { ok: false, why: 'index describes another image than the binding' };
  return { ok: true, index, binding: b as SeedBinding };
}

/** The install record names this slot with an unfinished install or another image: the kept index is stale. */
async function resumeConflict(path: string, slotPath: string, imageSha256: unknown): Promise<string | undefined> {
  let rec: { slotPath?: unknown; imageSha256?: unknown; complete?: unknown };
  try {
    rec = JSON.parse((await readFileCapped(path, 64 << 10)).toString('utf8')) as typeof rec;
  } catch {
    return undefined; // no record (or a torn one): nothing says the slot changed
  }
  if (rec.slotPath !== slotPath) return undefined;
  if (rec.imageSha256 !== imageSha256) return 'the install record names another image on this slot';
  if (rec.complete !== true) return 'the install record says an install into this slot is unfinished';
  return undefined;
}

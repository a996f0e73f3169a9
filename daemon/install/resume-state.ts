/**
 * The resume hint: how many leading chunks were written AND flushed, for one payload on one slot.
 *
 * It is only a hint. On resume the installer re-hashes every chunk below it on the slot and restarts
 * at the first that does not match, so a stale, torn or foreign hint can cost time but never
 * correctness. Written atomically (temp file, fsync, rename) only after a flush of the slot.
 */
import { readFileCapped, writeFileAtomic } from '../../hal/atomic-file.js';
import type { PayloadInfo } from '../../manifests/types.js';

export interface ResumeRecord {
  schema: 1;
  /** whole-image SHA-256 of the payload being installed: a different release never matches. */
  imageSha256: string;
  size: number;
  chunkSize: number;
  slotPath: string;
  /** chunks [0, nextChunk) were written and flushed. */
  nextChunk: number;
  /** true once the install finished and verified. */
  complete: boolean;
}

/** Reads the hint; returns 0 when the file is missing, unreadable or for another payload/slot. */
export async function readResumeHint(path: string, payload: PayloadInfo, slotPath: string): Promise<number> {
  let rec: Partial<ResumeRecord>;
  try {
    rec = JSON.parse((await readFileCapped(path, 64 << 10)).toString('utf8')) as Partial<ResumeRecord>;
  } catch {
    return 0;
  }
  if (rec.schema !== 1 || rec.imageSha256 !== payload.sha256 || rec.size !== payload.size || rec.chunkSize !== payload.chunkSize || rec.slotPath !== slotPath) return 0;
  const n = rec.nextChunk;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) return 0;
  return Math.min(n, payload.chunks.length);
}

/** Atomically records that chunks [0, nextChunk) are on the slot and flushed. */
export async function writeResumeHint(path: string, payload: PayloadInfo, slotPath: string, nextChunk: number, complete = false): Promise<void> {
  const rec: ResumeRecord = { schema: 1, imageSha256: payload.sha256, size: payload.size, chunkSize: payload.chunkSize, slotPath, nextChunk, complete };
  await writeFileAtomic(path, `${JSON.stringify(rec)}\n`);
}

/**
 * The resume hint: how many leading chunks were written AND flushed, for one payload on one slot,
 * plus what the current attempt has spent on this payload so far (its download budget).
 *
 * It is only a hint. On resume the installer re-hashes the chunks on the slot and restarts at the
 * first that does not match, so a stale, torn or foreign hint can cost time but never correctness.
 * Written atomically (temp file, fsync, rename) only after a flush of the slot. A torn or lost record
 * also loses the spent budget: it then restarts from zero, which bounds the cost of a corrupt
 * payload per restart rather than per attempt (a restart is a power cut, rare by comparison).
 *
 * Compatibility: fields a record does not name here are ignored, never refused: a record left by an
 * older daemon (e.g. `rewriteFrom`, written while the read-back compared per-chunk CRC-32s) resumes,
 * and the re-hash of the slot decides where. The record never held per-chunk digests: the read-back's
 * CRC-32s lived in memory only, and the read-back no longer computes them (hasher.ts).
 */
import { readFileCapped, writeFileAtomic } from '../../hal/atomic-file.js';
import type { PayloadInfo } from '../../manifests/types.js';

/** What one update attempt has spent downloading one payload, summed over runs and restarts. */
export interface SpentBudget {
  /** payload bytes received. */
  bytes: number;
  /** time spent in transfers (backoff waits included), ms. */
  ms: number;
  /** chunks that failed verification or decompression: failures by `"<chunk>@<mirror index>"`. */
  chunkFailures: Record<string, number>;
}

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
  /** absent: nothing spent (a new attempt, or one the installer ended itself). */
  spent?: SpentBudget;
  /** a chunk that every mirror served corrupt when an earlier attempt ended (INSTALL_PAYLOAD_CORRUPT):
   * the next attempt asks each mirror for it once, alone, before anything else is fetched again. */
  corruptChunk?: number;
}

/** What a record carries besides the watermark. */
export interface ResumeExtra {
  spent?: SpentBudget;
  corruptChunk?: number;
}

/** Reads the hint; returns 0 when the file is missing, unreadable or for another payload/slot. */
export async function readResumeHint(path: string, payload: PayloadInfo, slotPath: string): Promise<number> {
  return (await readResumeRecord(path, payload, slotPath)).nextChunk;
}

/** Reads the hint and the spent budget (zero when missing, unreadable or for another payload/slot);
 * `found`: a record for this payload on this slot exists (an install of it was started before). */
export async function readResumeRecord(path: string, payload: PayloadInfo, slotPath: string): Promise<{ found: boolean; nextChunk: number; spent: SpentBudget; corruptChunk?: number }> {
  const none = { found: false, nextChunk: 0, spent: emptyBudget() };
  let rec: Partial<ResumeRecord>;
  try {
    rec = JSON.parse((await readFileCapped(path, 64 << 10)).toString('utf8')) as Partial<ResumeRecord>;
  } catch {
    return none;
  }
  if (rec.schema !== 1 || rec.imageSha256 !== payload.sha256 || rec.size !== payload.size || rec.chunkSize !== payload.chunkSize || rec.slotPath !== slotPath) return none;
  const n = rec.nextChunk;
  const nextChunk = typeof n === 'number' && Number.isInteger(n) && n >= 0 ? Math.min(n, payload.chunks.length) : 0;
  const c = rec.corruptChunk;
  const corruptChunk = typeof c === 'number' && Number.isInteger(c) && c >= 0 && c < payload.chunks.length ? c : undefined;
  return { found: true, nextChunk, spent: parseSpent(rec.spent), ...(corruptChunk !== undefined ? { corruptChunk } : {}) };
}

/** Atomically records that chunks [0, nextChunk) are on the slot and flushed, and the spent budget. */
export async function writeResumeHint(path: string, payload: PayloadInfo, slotPath: string, nextChunk: number, complete = false, extra: ResumeExtra = {}): Promise<void> {
  const rec: ResumeRecord = {
    schema: 1, imageSha256: payload.sha256, size: payload.size, chunkSize: payload.chunkSize, slotPath, nextChunk, complete,
    ...(extra.spent ? { spent: extra.spent } : {}), ...(extra.corruptChunk !== undefined ? { corruptChunk: extra.corruptChunk } : {}),
  };
  await writeFileAtomic(path, `${JSON.stringify(rec)}\n`);
}

export function emptyBudget(): SpentBudget {
  return { bytes: 0, ms: 0, chunkFailures: {} };
}

/** Strict: anything malformed counts as nothing spent (a hint never blocks an install). */
function parseSpent(v: unknown): SpentBudget {
  if (typeof v !== 'object' || v === null) return emptyBudget();
  const o = v as Partial<SpentBudget>;
  const num = (x: unknown): number => (typeof x === 'number' && Number.isFinite(x) && x >= 0 ? x : 0);
  const chunkFailures: Record<string, number> = {};
  if (typeof o.chunkFailures === 'object' && o.chunkFailures !== null) {
    for (const [k, n] of Object.entries(o.chunkFailures).slice(0, 256)) if (/^\d+@\d+$/.test(k) && Number.isSafeInteger(n) && n > 0) chunkFailures[k] = n;
  }
  return { bytes: num(o.bytes), ms: num(o.ms), chunkFailures };
}

/**
 * Format v2's chunk index as a TUF target file of its own (`<payload target>.index`): how the
 * publisher encodes it and how a device judges the bytes it fetched. One module for the format, so
 * an extension (the optional `delta` section) is added here and nowhere else.
 *
 * The file is canonical JSON (sorted keys, no whitespace: the same bytes for the same index, so a
 * rebuild of the same image publishes the same target):
 *
 *   { "slotflip": 2, "payloadTarget": "releases/1.1.0/image.zst", "compression": "zstd",
 *     "size": N, "sha256": "<image>", "chunkSize": N,
 *     "chunks": [{ "sha256": "<raw chunk>", "offset": N, "length": N, "packedSha256": "<frame>" }, ...],
 *     "delta": { ... optional, owned by the delta format } }
 *
 * Trust: the device only parses bytes whose length and SHA-256 matched the signed targets metadata
 * (the TUF target hash), so the file is as authentic as targets.json itself; the checks here catch a
 * signer's mistakes (or a compromised signer's tricks) before any device state changes.
 *
 * Trade-off: unknown top-level fields are refused (a typo must not pass silently) except `delta`,
 * which is accepted as any object: its owner validates what it defines.
 *
 * Pure: no I/O.
 */
import { canonicalJson } from './keys.js';
import type { ManifestCode } from './codes.js';
import type { ChunkIndexFile, PayloadInfo, Release } from './types.js';
import { checkChunkList, type Check } from './validate.js';

/** The index target of a payload target is this suffix appended to its name. */
export const INDEX_SUFFIX = '.index';

/** `releases/1.1.0/image.zst` → `releases/1.1.0/image.zst.index`. */
export function indexTargetName(payloadTarget: string): string {
  return payloadTarget + INDEX_SUFFIX;
}

/** The index file's bytes for a built payload (every chunk must carry packedSha256). */
export function encodeIndexFile(payloadTarget: string, payload: PayloadInfo, delta?: Record<string, unknown>): Buffer {
  const file: ChunkIndexFile = {
    slotflip: 2,
    payloadTarget,
    compression: payload.compression,
    size: payload.size,
    sha256: payload.sha256,
    chunkSize: payload.chunkSize,
    chunks: payload.chunks.map((c) => ({ sha256: c.sha256, offset: c.offset, length: c.length, packedSha256: c.packedSha256! })),
    ...(delta ? { delta } : {}),
  };
  return Buffer.from(canonicalJson(file), 'utf8');
}

export type IndexParse = { ok: true; payload: PayloadInfo; file: ChunkIndexFile } | { ok: false; code: ManifestCode; message: string };

const KNOWN = new Set(['slotflip', 'payloadTarget', 'compression', 'size', 'sha256', 'chunkSize', 'chunks', 'delta']);
const CHUNK_KEYS = new Set(['sha256', 'offset', 'length', 'packedSha256']);
const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Judges index bytes that already matched the signed length and hash, against the format 2 release
 * that names them: UTF-8 JSON object; `slotflip` 2; no unknown field (but `delta`, any object);
 * the chunk list well-formed (validate.ts checkChunkList: count, contiguity, lengths adding up to
 * the signed payload length, sha256 and packedSha256 hex on every chunk); and payloadTarget, size,
 * sha256, compression and chunkSize equal to the payload target's custom block
 * (MANIFEST_INDEX_PAYLOAD_MISMATCH). Returns the PayloadInfo the installer takes.
 */
export function parseIndexFile(bytes: Uint8Array, release: Release): IndexParse {
  const where = release.index?.targetName ?? `${release.targetName}${INDEX_SUFFIX}`;
  const invalid = (why: string): IndexParse => ({ ok: false, code: 'MANIFEST_INDEX_INVALID', message: `chunk index ${where}: ${why}; the release was published wrong (republish it), nothing was changed` });
  if (release.custom.slotflip !== 2) return invalid('the release is not format 2');
  let raw: unknown;
  try {
    raw = JSON.parse(utf8.decode(bytes));
  } catch {
    return invalid('not UTF-8 JSON');
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return invalid('not a JSON object');
  const f = raw as Record<string, unknown>;
  for (const k of Object.keys(f)) if (!KNOWN.has(k)) return invalid(`unknown field ${JSON.stringify(k.slice(0, 40))}`);
  if (f['slotflip'] !== 2) return invalid(`format ${JSON.stringify(f['slotflip'])}, expected 2`);
  if (f['delta'] !== undefined && (typeof f['delta'] !== 'object' || f['delta'] === null || Array.isArray(f['delta']))) return invalid('delta is not an object');
  const chunks = f['chunks'];
  if (Array.isArray(chunks)) {
    for (let i = 0; i < chunks.length; i++) {
      const c = chunks[i] as Record<string, unknown> | null;
      if (typeof c === 'object' && c !== null) {
        for (const k of Object.keys(c)) if (!CHUNK_KEYS.has(k)) return invalid(`chunk ${i} has an unknown field ${JSON.stringify(k.slice(0, 40))}`);
      }
    }
  }
  const want = release.custom.payload;
  const differs: string[] = [];
  if (f['payloadTarget'] !== release.targetName) differs.push(`payloadTarget ${JSON.stringify(f['payloadTarget'])}`);
  for (const k of ['compression', 'size', 'sha256', 'chunkSize'] as const) {
    if (f[k] !== want[k]) differs.push(`${k} ${JSON.stringify(f[k])} (signed: ${JSON.stringify(want[k])})`);
  }
  if (differs.length > 0) {
    return { ok: false, code: 'MANIFEST_INDEX_PAYLOAD_MISMATCH', message: `chunk index ${where} describes another payload than ${release.targetName}: ${differs.join(', ')}; republish the release, nothing was changed` };
  }
  const list: Check = checkChunkList(chunks, want.size, want.chunkSize, release.length, true, (why) => invalid(why) as Check);
  if (!list.ok) return list;
  const file = f as unknown as ChunkIndexFile;
  return {
    ok: true,
    file,
    payload: { compression: want.compression, size: want.size, sha256: want.sha256, chunkSize: want.chunkSize, chunks: file.chunks },
  };
}

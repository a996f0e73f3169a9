/**
 * Pure checks of signed metadata that the TUF signature alone does not make safe: which
 * keytype/scheme pairs a key may declare, which target names a device accepts, and whether a
 * release's payload description is structurally sound. No I/O: each returns a coded result.
 *
 * Trade-off: a validly signed document can still be hostile (a compromised or buggy signer), so
 * everything that can be judged from metadata alone is judged here, before any device state
 * changes, rather than discovered while a slot is being written.
 */
import type { ManifestCode } from './codes.js';
import type { ChunkEntry, Release } from './types.js';

export type Check = { ok: true } | { ok: false; code: ManifestCode; message: string };

const OK: Check = { ok: true };

/**
 * keytype → accepted schemes, exactly the pairs securesystemslib's `KEY_FOR_TYPE_AND_SCHEME`
 * registers for python-tuf's `Key.from_dict` (SSlibKey): a key declaring any other pair makes the
 * whole metadata document invalid there, and here. Whether a pair can also be *verified* is a
 * separate question: a key the crypto layer cannot verify simply never counts toward a threshold.
 */
export const KEY_SCHEMES: Readonly<Record<string, readonly string[]>> = {
  ed25519: ['ed25519'],
  ecdsa: ['ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384'],
  'ecdsa-sha2-nistp256': ['ecdsa-sha2-nistp256'],
  'ecdsa-sha2-nistp384': ['ecdsa-sha2-nistp384'],
  rsa: [
    'rsassa-pss-sha224', 'rsassa-pss-sha256', 'rsassa-pss-sha384', 'rsassa-pss-sha512',
    'rsa-pkcs1v15-sha224', 'rsa-pkcs1v15-sha256', 'rsa-pkcs1v15-sha384', 'rsa-pkcs1v15-sha512',
  ],
};

/** The key's declared keytype/scheme pair is one TUF's reference implementation accepts. */
export function checkKeyScheme(keyid: string, keytype: string, scheme: string): Check {
  if (Object.hasOwn(KEY_SCHEMES, keytype) && KEY_SCHEMES[keytype]!.includes(scheme)) return OK;
  return { ok: false, code: 'MANIFEST_KEY_UNSUPPORTED', message: `key ${keyid.slice(0, 16)} declares keytype ${JSON.stringify(keytype)} with scheme ${JSON.stringify(scheme)}, not a supported pair` };
}

/** Longest target name a device accepts, in UTF-16 code units (a path, not a story). */
export const TARGET_NAME_MAX = 255;

/**
 * Target-name rules: a relative path of "/"-separated segments; no leading "/", no empty, "." or
 * ".." segment, no backslash, no NUL or other control character (C0, DEL, C1), at most
 * TARGET_NAME_MAX characters. The name becomes part of a URL and a file name on the device.
 */
export function checkTargetName(name: string): Check {
  const bad = (why: string): Check => ({ ok: false, code: 'MANIFEST_TARGET_NAME', message: `target name ${JSON.stringify(name.slice(0, 80))} ${why}` });
  if (typeof name !== 'string' || name.length === 0) return bad('is empty');
  if (name.length > TARGET_NAME_MAX) return bad(`is ${name.length} characters long; at most ${TARGET_NAME_MAX} are allowed`);
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(name)) return bad('contains a NUL or control character');
  if (name.includes('\\')) return bad('contains a backslash');
  if (name.startsWith('/')) return bad('is an absolute path');
  for (const seg of name.split('/')) {
    if (seg === '') return bad('has an empty path segment');
    if (seg === '.' || seg === '..') return bad(`has a "${seg}" path segment`);
  }
  return OK;
}

const SHA256 = /^[0-9a-f]{64}$/;
const MAX_CHUNK = 256 * 1024 * 1024;
/** Largest index target a device fetches (format v2): ~190 bytes per chunk, so 64 MiB is ~350,000
 * chunks — a 1.3 TiB image in 4 MiB chunks, or 20 GiB in 64 KiB ones. */
export const MAX_INDEX_BYTES = 64 * 1024 * 1024;

type Bad = (why: string) => Check;

/** compression, size, chunkSize and image hash of a payload description (v1 or v2), and the slot. */
function checkPayloadHeader(p: { compression?: unknown; size?: unknown; chunkSize?: unknown; sha256?: unknown }, bad: Bad, slotSize?: number): Check {
  if (!['zstd', 'gzip', 'none'].includes(p.compression as string)) return bad(`unknown compression ${JSON.stringify(p.compression)}`);
  if (!Number.isSafeInteger(p.size) || (p.size as number) < 0) return bad('payload size is not a non-negative integer');
  if (!Number.isSafeInteger(p.chunkSize) || (p.chunkSize as number) <= 0 || (p.chunkSize as number) > MAX_CHUNK) return bad(`chunkSize ${String(p.chunkSize)} is not an integer in 1..${MAX_CHUNK}`);
  if (typeof p.sha256 !== 'string' || !SHA256.test(p.sha256)) return bad('image sha256 is not 64 lower-case hex digits');
  if (slotSize !== undefined && (p.size as number) > slotSize) return bad(`the image is ${String(p.size)} bytes, the slot holds ${slotSize}`);
  return OK;
}

/**
 * A chunk list against its payload: count = ceil(size / chunkSize); contiguous from offset 0 with
 * non-zero lengths; hashes well-formed (`packedSha256` too, and required when `requirePacked`); the
 * compressed lengths add up to the signed payload length. Pure.
 */
export function checkChunkList(chunks: unknown, size: number, chunkSize: number, payloadLength: number, requirePacked: boolean, bad: Bad): Check {
  if (!Array.isArray(chunks)) return bad('no chunk list');
  const want = Math.ceil(size / chunkSize);
  if (chunks.length !== want) return bad(`${chunks.length} chunks listed, ${size} bytes in ${chunkSize}-byte chunks need ${want}`);
  let off = 0;
  for (let i = 0; i < chunks.length; i++) {
    const c = chunks[i] as Partial<ChunkEntry> | null;
    if (typeof c !== 'object' || c === null) return bad(`chunk ${i} is not an object`);
    if (!Number.isSafeInteger(c.offset) || !Number.isSafeInteger(c.length)) return bad(`chunk ${i} offset/length are not integers`);
    if (c.length! <= 0) return bad(`chunk ${i} has length ${c.length}`);
    if (c.offset !== off) return bad(`chunk ${i} starts at ${c.offset}, expected ${off} (chunks overlap or leave a gap)`);
    if (typeof c.sha256 !== 'string' || !SHA256.test(c.sha256)) return bad(`chunk ${i} sha256 is not 64 lower-case hex digits`);
    if (c.packedSha256 !== undefined || requirePacked) {
      if (typeof c.packedSha256 !== 'string' || !SHA256.test(c.packedSha256)) return bad(`chunk ${i} packedSha256 is ${c.packedSha256 === undefined ? 'missing' : 'not 64 lower-case hex digits'}`);
    }
    off += c.length!;
    if (!Number.isSafeInteger(off)) return bad('chunk lengths overflow');
  }
  if (off !== payloadLength) return bad(`chunks add up to ${off} bytes, the signed payload length is ${payloadLength}`);
  return OK;
}

/**
 * The whole payload description of a release, judged from metadata alone: compression known;
 * size, chunkSize, every offset and length safe integers; the image no larger than the slot (when
 * `slotSize` is known); hashes well-formed. Format v1: the inline chunk list (checkChunkList).
 * Format v2: the index target is named, a safe target name, and was found in the signed metadata
 * with a length within MAX_INDEX_BYTES; its chunk list is judged when it is fetched
 * (chunk-index.ts parseIndexFile), still before any device state changes.
 */
export function checkReleaseStructure(release: Release, slotSize?: number): Check {
  const name = checkTargetName(release.targetName);
  if (!name.ok) return name;
  const bad = (why: string): Check => ({ ok: false, code: 'MANIFEST_INDEX_INVALID', message: `release ${release.targetName}: ${why}; the release metadata is wrong, nothing was changed` });
  const custom = release.custom as Partial<Release['custom']> | undefined;
  const p = custom?.payload as Record<string, unknown> | undefined;
  if (!p || typeof p !== 'object') return bad('no payload description');
  const header = checkPayloadHeader(p, bad, slotSize);
  if (!header.ok) return header;
  if (custom?.slotflip === 2) {
    const idx = p['index'] as { target?: unknown } | undefined;
    if (typeof idx?.target !== 'string') return bad('format 2 names no index target');
    const idxName = checkTargetName(idx.target);
    if (!idxName.ok) return idxName;
    if (!release.index || release.index.targetName !== idx.target) {
      return { ok: false, code: 'MANIFEST_INDEX_NOT_FOUND', message: `release ${release.targetName}: its chunk index ${idx.target} is not a target of the signed metadata; the repository is incomplete (republish the release), nothing was changed` };
    }
    if (!Number.isSafeInteger(release.index.length) || release.index.length <= 0 || release.index.length > MAX_INDEX_BYTES) return bad(`index target ${idx.target} has length ${release.index.length}, outside 1..${MAX_INDEX_BYTES}`);
    if (typeof release.index.hashes?.['sha256'] !== 'string' || !SHA256.test(release.index.hashes['sha256'])) return bad(`index target ${idx.target} has no sha256 in the signed metadata`);
    return OK;
  }
  return checkChunkList(p['chunks'], p['size'] as number, p['chunkSize'] as number, release.length, false, bad);
}

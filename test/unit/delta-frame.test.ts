/**
 * The delta pack's frames (manifests/delta.ts zstdFrame): each chunk one zstd frame that declares
 * its content size — the sign that zstd was told the chunk's length and fitted the level's
 * parameters to it (node:zlib compresses a stream of unknown length otherwise: larger frames) —
 * and decodes to the chunk on every Node line slotflip runs on.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import zlib from 'node:zlib';
import { zstdFrame } from '../../manifests/delta.js';

/** Frame_Content_Size from a zstd frame header (RFC 8878 3.1.1.1), or undefined when absent. */
function declaredSize(f: Buffer): number | undefined {
  if (f.readUInt32LE(0) !== 0xfd2fb528) throw new Error('not a zstd frame');
  const fhd = f[4]!;
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const dictIdBytes = [0, 1, 2, 4][fhd & 3]!;
  const fcsBytes = fcsFlag === 0 ? single : [1, 2, 4, 8][fcsFlag]!;
  if (fcsBytes === 0) return undefined;
  const at = 5 + (single ? 0 : 1) + dictIdBytes;
  if (fcsBytes === 1) return f[at]!;
  if (fcsBytes === 2) return f.readUInt16LE(at) + 256;
  if (fcsBytes === 4) return f.readUInt32LE(at);
  return Number(f.readBigUInt64LE(at));
}

const zstdSync = zlib as unknown as { zstdDecompressSync?: (b: Buffer) => Buffer };

t.test('a frame declares its chunk length and decodes to the chunk', { skip: zstdSync.zstdDecompressSync ? false : `node ${process.version} has no zstd` }, async (t) => {
  // text-like and random chunks, from a directory block's size to a max-size chunk
  const text = Buffer.from('ELF x86-64 libcrypto EVP_DigestInit_ex OPENSSL_3.0.0 '.repeat(3000));
  for (const raw of [text.subarray(0, 4096), text.subarray(0, 33_000), Buffer.concat([randomBytes(20_000), text.subarray(0, 111_072)])]) {
    const f = await zstdFrame(raw, 12);
    t.equal(declaredSize(f), raw.length, `a ${raw.length}-byte chunk's frame says ${raw.length}`);
    t.ok(zstdSync.zstdDecompressSync!(f).equals(raw), `a ${raw.length}-byte chunk decodes to itself`);
  }
});

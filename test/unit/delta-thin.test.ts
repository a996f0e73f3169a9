/**
 * The thin delta index (manifests/delta-thin.ts): written against an earlier release's index, it
 * rebuilds the full index byte for byte from that base; it is much smaller when the releases share
 * most chunks; against any other base, or altered, it is refused (MANIFEST_DELTA_INVALID) and the
 * device fetches the full index.
 */
import t, { type Test } from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import zlib from 'node:zlib';
import { buildDelta, parseDeltaIndex, parseDeltaSection, type DeltaIndex } from '../../manifests/delta.js';
import { applyThinIndex, encodeThinIndex, rawOfIndexFile } from '../../manifests/delta-thin.js';
import { codeOf } from '../../hal/errors.js';
import { deriveImage, makeImage } from '../harness/delta-images.js';

const noZstd = (zlib as unknown as { zstdCompress?: unknown }).zstdCompress ? false : `node ${process.version} has no zstd`;

async function indexOf(t: Test, img: Buffer, name: string): Promise<{ file: Buffer; idx: DeltaIndex }> {
  const dir = t.testdir();
  await writeFile(join(dir, name), img);
  await buildDelta(join(dir, name), join(dir, `${name}.i`), join(dir, `${name}.p`), { level: 1, cdc: { min: 1024, avg: 4096, max: 16384 } });
  const file = await readFile(join(dir, `${name}.i`));
  return { file, idx: parseDeltaIndex(file) };
}

function refusal(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return codeOf(e);
  }
  return undefined;
}

t.test('rebuilds the full index from the base, smaller; refuses another base or altered bytes', { skip: noZstd }, async (t) => {
  const oldImg = makeImage(7, 4 << 20);
  const old = await indexOf(t, oldImg, 'old');
  const nu = await indexOf(t, deriveImage(oldImg, { scattered: 20 }), 'new');
  const other = await indexOf(t, makeImage(8, 4 << 20), 'other');
  const raw = rawOfIndexFile(nu.file);
  const thin = encodeThinIndex(raw, nu.idx, old.idx);
  t.ok(thin.length < nu.file.length / 2, `thin ${thin.length} bytes < half the full index (${nu.file.length})`);
  const rebuilt = applyThinIndex(thin, old.idx, nu.idx.rawSha256);
  t.ok(rebuilt.equals(raw), 'the full index, byte for byte');
  t.equal(refusal(() => applyThinIndex(thin, other.idx, nu.idx.rawSha256)), 'MANIFEST_DELTA_INVALID', 'another base: refused');
  t.equal(refusal(() => applyThinIndex(thin, old.idx, other.idx.rawSha256)), 'MANIFEST_DELTA_INVALID', 'another signed hash: refused');
  // a base reference bent to another chunk of the same base: the rebuilt bytes no longer match
  const bent = zlib.brotliDecompressSync(thin);
  const refsAt = 48 + bent.readUInt32LE(44);
  const r = bent.indexOf(Buffer.from([1, 0, 0, 0]), refsAt);
  bent.writeUInt32LE(3, r);
  t.equal(refusal(() => applyThinIndex(zlib.brotliCompressSync(bent), old.idx, nu.idx.rawSha256)), 'MANIFEST_DELTA_INVALID', 'a bent reference: refused');
  t.equal(refusal(() => applyThinIndex(Buffer.from('not brotli at all'), old.idx, nu.idx.rawSha256)), 'MANIFEST_DELTA_INVALID', 'garbage: refused');
});

t.test('the section\'s thin entry is judged field by field', async (t) => {
  const SHA = 'ab'.repeat(32);
  const f = { target: 'releases/1/image.zst.delta-index', length: 10, sha256: SHA };
  const good = { format: 'slotflip-delta-2', index: f, pack: f, thin: { ...f, target: 'releases/1/image.zst.delta-thin', base: SHA, rawSha256: SHA } };
  const ok = parseDeltaSection(good);
  t.ok(ok.ok && ok.section.thin?.base === SHA, 'taken');
  const bad = parseDeltaSection({ ...good, thin: { ...good.thin, base: 'x' } });
  t.match(bad, { ok: false, why: /delta\.thin\.base/ }, 'a bad base names the field');
  const noThin = parseDeltaSection({ ...good, thin: undefined });
  t.ok(noThin.ok && noThin.section.thin === undefined, 'optional');
});

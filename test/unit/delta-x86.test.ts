/**
 * Delta format 2 (issue 25): the x86 branch filter (manifests/x86-filter.ts) undoes exactly what it
 * did, for any bytes; it turns calls to one function from different places into the same bytes; and
 * a format 2 delta marks the chunks whose frames hold them filtered, every frame decoding (and
 * unfiltering) to its chunk's signed hash — smaller than format 1 on code, the same elsewhere.
 */
import t, { type Test } from 'tap';
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import zlib from 'node:zlib';
import { buildDelta, DELTA_FORMAT, DELTA_FORMAT_1, DELTA_FORMAT_2, parseDeltaIndex, unfilterChunk, type DeltaFormat } from '../../manifests/delta.js';
import { x86Decode, x86Encode } from '../../manifests/x86-filter.js';
import { codeLike, makeImage } from '../harness/delta-images.js';
import { codeOf } from '../../hal/errors.js';

const zstd = zlib as unknown as { zstdDecompressSync?: (b: Buffer, o?: object) => Buffer };
const noZstd = zstd.zstdDecompressSync ? false : `node ${process.version} has no zstd`;

t.test('decode(encode(b)) is b for any bytes, dense in E8/E9/00/FF', async (t) => {
  const byte = fc.oneof(fc.constantFrom(0xe8, 0xe9, 0x00, 0xff), fc.integer({ min: 0, max: 255 }));
  fc.assert(
    fc.property(fc.array(byte, { maxLength: 600 }), (arr) => {
      const orig = Buffer.from(arr);
      const b = Buffer.from(orig);
      x86Encode(b);
      return x86Decode(b).equals(orig);
    }),
    { numRuns: 3000 },
  );
  // and on something shaped like code, where most candidates are rewritten
  const code = codeLike(3, 256 << 10);
  const b = Buffer.from(code);
  t.ok(x86Encode(b) > 10_000, 'thousands of branches rewritten');
  t.notOk(b.equals(code), 'the filtered bytes differ');
  t.ok(x86Decode(b).equals(code), 'and decode back to the code');
});

t.test('calls to one function from two places become the same bytes', async (t) => {
  const b = Buffer.alloc(200, 0x90);
  const target = 150;
  for (const at of [10, 60]) {
    b[at] = 0xe8;
    b.writeInt32LE(target - (at + 5), at + 1);
  }
  t.not(b.readInt32LE(11), b.readInt32LE(61), 'displacements differ before');
  x86Encode(b);
  t.equal(b.readInt32LE(11), target, 'first call: the target');
  t.equal(b.readInt32LE(61), target, 'second call: the same target');
});

async function build(t: Test, img: Buffer, format: DeltaFormat): Promise<{ dir: string; idx: ReturnType<typeof parseDeltaIndex>; pack: Buffer; index: Buffer }> {
  const dir = t.testdir();
  await writeFile(join(dir, 'img'), img);
  await buildDelta(join(dir, 'img'), join(dir, 'i'), join(dir, 'p'), { format, level: 3 });
  const index = await readFile(join(dir, 'i'));
  return { dir, idx: parseDeltaIndex(index), pack: await readFile(join(dir, 'p')), index };
}

t.test('format 2 marks filtered chunks; every frame decodes to its signed chunk', { skip: noZstd }, async (t) => {
  t.equal(DELTA_FORMAT, DELTA_FORMAT_2, 'release add writes format 2 by default');
  const img = makeImage(5, 4 << 20);
  codeLike(9, 1 << 20).copy(img, 1 << 20);
  const f2 = await build(t, img, DELTA_FORMAT_2);
  const f1 = await build(t, img, DELTA_FORMAT_1);
  t.equal(f2.idx.header.format, DELTA_FORMAT_2);
  t.equal(f1.idx.header.format, DELTA_FORMAT_1);
  t.equal(f1.idx.x86, undefined, 'format 1: no chunk filtered');
  const flagged = f2.idx.x86 ? f2.idx.x86.reduce((n, v) => n + v, 0) : 0;
  t.ok(flagged > 0, `format 2: ${flagged} of ${f2.idx.header.uniqueCount} chunks filtered (the code)`);
  t.ok(flagged < f2.idx.header.uniqueCount / 2, 'text and zero chunks are not');
  t.ok(f2.pack.length < f1.pack.length, `pack ${f2.pack.length} < format 1's ${f1.pack.length}`);
  t.same([...f2.idx.rawLen], [...f1.idx.rawLen], 'same chunks, same lengths');
  for (const { idx, pack } of [f1, f2]) {
    let bad = 0;
    for (let u = 0; u < idx.header.uniqueCount; u++) {
      const frame = pack.subarray(idx.packOff[u]!, idx.packOff[u]! + idx.packLen[u]!);
      const raw = unfilterChunk(idx, u, zstd.zstdDecompressSync!(frame, { maxOutputLength: idx.rawLen[u]! }));
      if (!createHash('sha256').update(raw).digest().equals(idx.shas.subarray(u * 32, u * 32 + 32))) bad++;
    }
    t.equal(bad, 0, `${idx.header.format}: every frame decodes to its chunk's hash`);
  }
});

t.test('a format 1 index with a filter bit is refused (a daemon of format 1 refused it too)', { skip: noZstd }, async (t) => {
  const img = makeImage(6, 2 << 20);
  codeLike(4, 1 << 20).copy(img, 512 << 10);
  const f2 = await build(t, img, DELTA_FORMAT_2);
  t.ok(f2.idx.x86, 'some chunk filtered');
  const raw = zlib.brotliDecompressSync(f2.index);
  const at = raw.indexOf(DELTA_FORMAT_2);
  raw.write(DELTA_FORMAT_1, at); // same length: only the format differs
  const forged = zlib.brotliCompressSync(raw);
  let err: unknown;
  try {
    parseDeltaIndex(forged);
  } catch (e) {
    err = e;
  }
  t.equal(codeOf(err), 'MANIFEST_DELTA_INVALID', 'refused with a stable code');
  t.match((err as Error | undefined)?.message, /chunk \d+ has length \d+/, 'naming the chunk and its length');
});

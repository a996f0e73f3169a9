/**
 * Content-defined chunking: sizes within bounds, boundaries that resynchronise after an insertion
 * (the property delta updates rely on), deterministic across runs, zero runs cut at max.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { chunkFile, cutPoint, checkCdcParams, DEFAULT_CDC } from '../../manifests/cdc.js';

const P = DEFAULT_CDC;

t.test('chunks cover the file, sizes within min..max, identical on a second run', async (t) => {
  const dir = t.testdir();
  const data = Buffer.concat([randomBytes(3 << 20), Buffer.alloc(1 << 20), randomBytes(12345)]);
  await writeFile(join(dir, 'a'), data);
  const a = await chunkFile(join(dir, 'a'), P, { bufferBytes: 200_000 });
  let off = 0;
  for (const [i, c] of a.entries()) {
    t.equal(c.offset, off);
    if (i < a.length - 1 && (c.length < P.min || c.length > P.max)) t.fail(`chunk ${i} has ${c.length} bytes`);
    off += c.length;
  }
  t.equal(off, data.length, 'chunks cover every byte');
  const avg = (3 << 20) / a.filter((c) => c.offset < 3 << 20).length;
  t.ok(avg > P.avg / 2 && avg < P.avg * 2, `random data averages ${Math.round(avg)} bytes`);
  t.same(await chunkFile(join(dir, 'a'), P), a, 'same chunks with another buffer size');
  const zeros = a.filter((c) => c.offset >= 3 << 20 && c.offset + c.length <= 4 << 20);
  t.ok(zeros.length >= 14 && zeros.every((c) => c.length === P.max || c === zeros.at(-1)), 'a zero run cuts at max');
});

t.test('an insertion changes only the chunks around it', async (t) => {
  const dir = t.testdir();
  const base = randomBytes(2 << 20);
  const edited = Buffer.concat([base.subarray(0, 1 << 20), Buffer.from('inserted!'), base.subarray(1 << 20)]);
  await writeFile(join(dir, 'a'), base);
  await writeFile(join(dir, 'b'), edited);
  const a = new Set((await chunkFile(join(dir, 'a'), P)).map((c) => c.sha256));
  const b = await chunkFile(join(dir, 'b'), P);
  const fresh = b.filter((c) => !a.has(c.sha256));
  t.ok(fresh.length <= 3, `${fresh.length} of ${b.length} chunks are new`);
});

t.test('cutPoint and parameter checks', async (t) => {
  t.equal(cutPoint(Buffer.alloc(100), 0, 100, P), 100, 'a short tail is one chunk');
  t.equal(cutPoint(Buffer.alloc(P.max * 2), 0, P.max * 2, P), P.max);
  t.throws(() => checkCdcParams({ min: 4096, avg: 10000, max: 65536 }), RangeError, 'avg must be a power of two');
  t.throws(() => checkCdcParams({ min: 65536, avg: 16384, max: 65536 }), RangeError);
});

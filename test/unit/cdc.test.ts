/**
 * Content-defined chunking: sizes within bounds, boundaries that resynchronise after an insertion
 * (the property delta updates rely on), deterministic across runs, zero runs cut at max.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { chunkFile, cutPoint, checkCdcParams, DEFAULT_CDC, looksLikeDirBlock } from '../../manifests/cdc.js';

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

/** A 4 KiB ext4 directory leaf block: entries (inode, rec_len, name_len, type, name) filling it. */
function dirBlock(names: string[], firstInode: number): Buffer {
  const b = Buffer.alloc(4096);
  let off = 0;
  names.forEach((n, i) => {
    const need = (8 + n.length + 3) & ~3;
    const rec = i === names.length - 1 ? 4096 - off : need;
    b.writeUInt32LE(firstInode + i, off);
    b.writeUInt16LE(rec, off + 4);
    b[off + 6] = n.length;
    b[off + 7] = 1;
    b.write(n, off + 8, 'latin1');
    off += rec;
  });
  return b;
}

t.test('dirBlock: directory blocks are chunks of their own, so a renumbered one costs 4 KiB, not the data around it', async (t) => {
  const dir = t.testdir();
  const B = 4096;
  const names = Array.from({ length: 40 }, (_, i) => `file-${i}.conf`);
  t.ok(looksLikeDirBlock(dirBlock(names, 12), 0, B), 'a leaf block is recognised');
  t.notOk(looksLikeDirBlock(randomBytes(B), 0, B), 'random data is not');
  t.notOk(looksLikeDirBlock(Buffer.alloc(B), 0, B), 'zeros are not (rec_len 0)');
  // image: file data (random, block-aligned) with directory blocks between, like mke2fs -d lays it out
  const data = Array.from({ length: 12 }, () => randomBytes(B * (3 + Math.floor(Math.random() * 20))));
  const image = (inodeShift: number): Buffer => Buffer.concat(data.flatMap((d, i) => [dirBlock(names, 100 * i + inodeShift), d]));
  await writeFile(join(dir, 'a'), image(0));
  await writeFile(join(dir, 'b'), image(2)); // every directory entry renumbered, file data unchanged
  const Pd = { ...P, dirBlock: B };
  const a = await chunkFile(join(dir, 'a'), Pd, { bufferBytes: 3 * P.max });
  t.same(await chunkFile(join(dir, 'a'), Pd), a, 'the same cut whatever the read buffer');
  const dirs = a.filter((c) => c.offset % B === 0 && c.length === B);
  t.ok(dirs.length >= 12, `the 12 directory blocks are chunks of their own (${dirs.length} 4 KiB chunks)`);
  const old = new Set(a.map((c) => c.sha256));
  const missing = (await chunkFile(join(dir, 'b'), Pd)).filter((c) => !old.has(c.sha256));
  t.equal(missing.reduce((s, c) => s + c.length, 0), 12 * B, 'only the 12 renumbered directory blocks are new');
  const oldPlain = new Set((await chunkFile(join(dir, 'a'), P)).map((c) => c.sha256));
  const missingPlain = (await chunkFile(join(dir, 'b'), P)).filter((c) => !oldPlain.has(c.sha256));
  t.ok(missingPlain.reduce((s, c) => s + c.length, 0) > 2 * 12 * B, 'without dirBlock each takes data chunks with it');
  t.throws(() => checkCdcParams({ ...P, dirBlock: 3000 }), RangeError, 'dirBlock must be a power of two');
});

t.test('zero windows (found by memcmp) cut exactly as the byte-by-byte hash does', async (t) => {
  const dir = t.testdir();
  // zero runs of many lengths between random and text runs, so windows start inside and across them
  const parts: Buffer[] = [];
  for (let i = 0; i < 40; i++) parts.push(Buffer.alloc(Math.floor(Math.random() * 3 * P.max)), i % 3 ? randomBytes(Math.floor(Math.random() * P.max)) : Buffer.from('x'.repeat(Math.floor(Math.random() * 5000))));
  const data = Buffer.concat(parts);
  await writeFile(join(dir, 'z'), data);
  for (const p of [P, { ...P, dirBlock: 4096 }]) {
    // reference: cutPoint over the whole buffer in memory, every chunk hashed
    const ref: { offset: number; length: number }[] = [];
    for (let pos = 0; pos < data.length; ) {
      const len = cutPoint(data, pos, data.length, p);
      ref.push({ offset: pos, length: len });
      pos += len;
    }
    const got = await chunkFile(join(dir, 'z'), p, { bufferBytes: 2 * P.max + 4096 });
    if (!p.dirBlock) t.same(got.map((c) => ({ offset: c.offset, length: c.length })), ref, 'same cuts as the plain hash');
    const bad = got.filter((c) => c.sha256 !== createHash('sha256').update(data.subarray(c.offset, c.offset + c.length)).digest('hex'));
    t.equal(bad.length, 0, `every chunk's SHA-256 is its bytes' (${got.length} chunks${p.dirBlock ? ', dirBlock' : ''})`);
    t.ok(got.filter((c) => c.length === P.max).length > 5, 'zero windows were cut at max');
  }
});

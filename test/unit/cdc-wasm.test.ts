/**
 * The wasm gear loop (manifests/cdc-wasm.ts) cuts exactly where the JS reference cutPoint does: a
 * device cutting its slot with one and a publisher with the other must find the same chunks. Same for
 * the scan for ext4 directory blocks (`dirBlock`).
 */
import t from 'tap';
import fc from 'fast-check';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { chunkFile, cutBuffer, cutPoint, DEFAULT_CDC, EXT4_CDC, looksLikeDirBlock, type CdcParams } from '../../manifests/cdc.js';

t.test('this runtime cuts with WebAssembly (else the comparisons below would compare cutPoint with itself)', async (t) => {
  t.equal(cutBuffer(1 << 16).wasm, true);
});

/** Data with the structure slot images have: random runs, zero runs, short repeated patterns. */
const data = fc.array(fc.oneof(
  fc.integer({ min: 1, max: 300_000 }).map((n) => randomBytes(n)),
  fc.integer({ min: 1, max: 300_000 }).map((n) => Buffer.alloc(n)),
  fc.tuple(fc.uint8Array({ minLength: 1, maxLength: 64 }), fc.integer({ min: 1, max: 200_000 })).map(([pat, n]) => Buffer.alloc(n, Buffer.from(pat))),
), { minLength: 1, maxLength: 6 }).map((parts) => Buffer.concat(parts));

const params = fc.constantFrom<CdcParams>(DEFAULT_CDC, EXT4_CDC, { min: 64, avg: 128, max: 256 }, { min: 1000, avg: 4096, max: 9000 }, { min: 2048, avg: 8192, max: 1 << 20 });

t.test('wasm and JS cut every buffer at the same points, from any start and to any end', async (t) => {
  let cuts = 0;
  fc.assert(fc.property(data, params, fc.nat(), fc.nat(), (bytes, p, a, b) => {
    const { buf, cut } = cutBuffer(bytes.length);
    bytes.copy(buf);
    const start = a % bytes.length;
    const end = start + 1 + (b % (bytes.length - start));
    // a whole cut sequence from `start`, then one chunk bounded by an arbitrary `end`
    for (let pos = start; pos < bytes.length; cuts++) {
      const len = cut(buf, pos, bytes.length, p);
      if (len !== cutPoint(bytes, pos, bytes.length, p)) return false;
      pos += len;
    }
    return cut(buf, start, end, p) === cutPoint(bytes, start, end, p);
  }), { numRuns: 60 });
  t.ok(cuts > 1000, `${cuts} cuts compared`);
});

/** A 4 KiB ext4 directory leaf block of `n` entries (as mke2fs writes them), or a damaged one. */
function dirBlock(n: number, damage: number): Buffer {
  const b = Buffer.alloc(4096);
  let off = 0;
  for (let i = 0; i < n; i++) {
    const name = `f${i}`;
    const rec = i === n - 1 ? 4096 - off : (8 + name.length + 3) & ~3;
    b.writeUInt32LE(100 + i, off);
    b.writeUInt16LE(rec, off + 4);
    b[off + 6] = name.length;
    b.write(name, off + 8, 'latin1');
    off += rec;
  }
  if (damage > 0) b.writeUInt16LE(damage, 4); // rec_len of the first entry
  return b;
}

const parts = fc.array(fc.oneof(
  fc.tuple(fc.integer({ min: 1, max: 200 }), fc.constantFrom(0, 0, 0, 3, 4, 8, 4096, 5000)).map(([n, d]) => dirBlock(n, d)),
  fc.integer({ min: 1, max: 8 }).map((k) => randomBytes(4096 * k)),
  fc.integer({ min: 1, max: 8 }).map((k) => Buffer.alloc(4096 * k)),
  fc.integer({ min: 1, max: 5000 }).map((n) => randomBytes(n)), // shifts the block alignment
), { minLength: 1, maxLength: 40 });
const blocks = parts.map((p) => Buffer.concat(p));

t.test('wasm and JS find the same directory blocks', async (t) => {
  let found = 0;
  fc.assert(fc.property(parts, fc.nat(), fc.constantFrom(1024, 4096, 4096), (list, a, bs) => {
    const bytes = Buffer.concat(list);
    const { buf, dir } = cutBuffer(bytes.length);
    bytes.copy(buf);
    // scans aligned as each part is (so the directory blocks are met on their own alignment), and one more
    const starts = new Set([a % bs]);
    for (let off = 0, i = 0; i < list.length; off += list[i]!.length, i++) starts.add(off % bs);
    for (const s0 of starts) for (let b = s0; b < bytes.length; b += bs) {
      let ref = -1;
      for (let x = b; x + bs <= bytes.length; x += bs) if (looksLikeDirBlock(bytes, x, bs)) { ref = x; break; }
      if (dir(buf, b, bytes.length, bs) !== ref) return false;
      if (ref >= 0) found++;
    }
    return true;
  }), { numRuns: 100 });
  t.ok(found > 50, `${found} directory blocks found alike`);
});

t.test('chunkFile with dirBlock cuts as the JS reference does', async (t) => {
  const dir = t.testdir();
  const p: CdcParams = { ...DEFAULT_CDC, dirBlock: 4096 };
  await fc.assert(fc.asyncProperty(blocks, fc.integer({ min: 2 * p.max, max: 4 * p.max }), async (bytes, bufferBytes) => {
    // reference: the cut as cdc.ts made it before the wasm loops (cutPoint, looksLikeDirBlock)
    const ref: number[] = [];
    for (let pos = 0; pos < bytes.length; ) {
      const avail = Math.min(bytes.length - pos, p.max);
      const first = (4096 - (pos % 4096)) % 4096;
      let len = -1;
      if (first === 0 && 4096 <= avail && looksLikeDirBlock(bytes, pos, 4096)) len = 4096;
      for (let o = first === 0 ? 4096 : first; len < 0 && o + 4096 <= avail; o += 4096) if (looksLikeDirBlock(bytes, pos + o, 4096)) len = cutPoint(bytes, pos, pos + o, p);
      if (len < 0) len = cutPoint(bytes, pos, bytes.length, p);
      ref.push(len);
      pos += len;
    }
    const file = join(dir, 'img');
    await writeFile(file, bytes);
    const got = (await chunkFile(file, p, { bufferBytes })).map((c) => c.length);
    return got.length === ref.length && got.every((l, i) => l === ref[i]);
  }), { numRuns: 30 });
  t.pass('30 images cut alike');
});

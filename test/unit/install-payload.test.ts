/**
 * buildPayload: independent frames per chunk, a contiguous index, correct hashes, atomic output.
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { gunzipSync } from 'node:zlib';
import { buildPayload, DEFAULT_CHUNK_SIZE } from '../../manifests/payload.js';
import { validateIndex } from '../../daemon/install/index.js';
import { codeOf } from '../../hal/errors.js';
import { writeImage } from '../bench/install-fixtures.js';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const CHUNK = 16 << 10;

t.equal(DEFAULT_CHUNK_SIZE, 4 << 20);

for (const compression of ['zstd', 'gzip', 'none'] as const) {
  t.test(`${compression}: every chunk decodes on its own to the image's chunk`, async (t) => {
    const dir = t.testdir();
    const size = 10 * CHUNK + 100;
    await writeImage(join(dir, 'img'), size, 3);
    const img = await readFile(join(dir, 'img'));
    const out = join(dir, 'payload');
    const r = await buildPayload(join(dir, 'img'), out, { compression, chunkSize: CHUNK, concurrency: 3 });
    const file = await readFile(out);
    t.equal(r.length, file.length);
    t.equal(r.sha256, sha(file));
    t.same({ size: r.payload.size, chunkSize: r.payload.chunkSize, compression: r.payload.compression }, { size, chunkSize: CHUNK, compression });
    t.equal(r.payload.sha256, sha(img));
    t.equal(r.payload.chunks.length, 11);
    t.equal(validateIndex(r.payload, r.length), r.length, 'index is contiguous and matches the file length');
    r.payload.chunks.forEach((c, i) => {
      const frame = file.subarray(c.offset, c.offset + c.length);
      const raw = compression === 'none' ? frame : compression === 'gzip' ? gunzipSync(frame) : execFileSync('zstd', ['-d', '-c', '-q'], { input: frame });
      const want = img.subarray(i * CHUNK, Math.min(size, (i + 1) * CHUNK));
      t.ok(Buffer.from(raw).equals(want) && c.sha256 === sha(want), `chunk ${i}`);
      t.equal(c.packedSha256, sha(frame), `chunk ${i}: packedSha256 is the hash of its compressed frame`);
    });
    t.same((await readdir(dir)).sort(), ['img', 'payload'], 'no temp files left');
  });
}

t.test('all-zero chunks (free space, sparse images) share one frame per length and decode like any other', async (t) => {
  const dir = t.testdir();
  const size = 6 * CHUNK + 500; // chunks 1, 2, 4 and the short last one are zeros
  const img = Buffer.alloc(size);
  for (const i of [0, 3, 5]) img.fill(i + 1, i * CHUNK, i * CHUNK + 100);
  await writeFile(join(dir, 'img'), img);
  for (const compression of ['zstd', 'gzip', 'none'] as const) {
    const out = join(dir, `payload-${compression}`);
    const r = await buildPayload(join(dir, 'img'), out, { compression, chunkSize: CHUNK, concurrency: 3 });
    const file = await readFile(out);
    t.equal(r.payload.sha256, sha(img), `${compression}: image hash`);
    const [z1, z2, z4, last] = [1, 2, 4, 6].map((i) => r.payload.chunks[i]!);
    t.equal(z1.packedSha256, z2.packedSha256, `${compression}: equal zero chunks, equal frames`);
    t.equal(z1.sha256, z4.sha256);
    t.equal(last.sha256, sha(Buffer.alloc(500)), `${compression}: the short zero tail has its own frame`);
    r.payload.chunks.forEach((c, i) => {
      const frame = file.subarray(c.offset, c.offset + c.length);
      const raw = compression === 'none' ? frame : compression === 'gzip' ? gunzipSync(frame) : execFileSync('zstd', ['-d', '-c', '-q'], { input: frame });
      t.ok(Buffer.from(raw).equals(img.subarray(i * CHUNK, Math.min(size, (i + 1) * CHUNK))) && c.packedSha256 === sha(frame), `${compression}: chunk ${i}`);
    });
  }
});

t.test('an empty image gives an empty payload', async (t) => {
  const dir = t.testdir();
  await writeFile(join(dir, 'img'), '');
  const r = await buildPayload(join(dir, 'img'), join(dir, 'p'), { compression: 'zstd', chunkSize: CHUNK });
  t.same(r.payload.chunks, []);
  t.equal(r.length, 0);
});

t.test('bad inputs fail with MANIFEST_PAYLOAD_BUILD and leave no output', async (t) => {
  const dir = t.testdir();
  await writeImage(join(dir, 'img'), CHUNK, 1);
  for (const opts of [{ compression: 'zstd' as const, chunkSize: 100 }, { compression: 'lz4' as never, chunkSize: CHUNK }]) {
    const err = await buildPayload(join(dir, 'img'), join(dir, 'p'), opts).catch((e: unknown) => e);
    t.equal(codeOf(err), 'MANIFEST_PAYLOAD_BUILD');
  }
  t.equal(codeOf(await buildPayload(join(dir, 'missing'), join(dir, 'p'), { compression: 'none', chunkSize: CHUNK }).catch((e: unknown) => e)), 'MANIFEST_PAYLOAD_BUILD');
  t.equal(codeOf(await buildPayload(join(dir, 'img'), join(dir, 'p'), { compression: 'zstd', chunkSize: CHUNK, zstdPath: join(dir, 'no-zstd') }).catch((e: unknown) => e)), 'MANIFEST_PAYLOAD_BUILD');
  t.same((await readdir(dir)).sort(), ['img']);
});

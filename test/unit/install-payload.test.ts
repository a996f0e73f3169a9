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
    });
    t.same((await readdir(dir)).sort(), ['img', 'payload'], 'no temp files left');
  });
}

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

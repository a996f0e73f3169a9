/**
 * Issue 24: the daemon's verify step now takes the installer's own read-back (same process) instead
 * of reading the slot a second time, so the INSTALLER's read-back must catch what the verify step
 * caught: bytes that changed on the medium after they were written and flushed, with the chunk named.
 * - through the slot handle (any SlotWriter; no root needed): a slot whose reads return something
 *   else than was written for one chunk (flash that acknowledged the write and kept other bytes);
 * - by path with O_DIRECT on a loop device (root): one byte of the backing file is changed right after
 *   the final flush, underneath the block device's page cache, which still holds the written bytes.
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { installPayload } from '../../daemon/install/index.js';
import { codeOf } from '../../hal/errors.js';
import { createSlotWriter } from '../../hal/file-slot.js';
import type { SlotHandle, SlotWriter } from '../../hal/slot-writer.js';
import { makePayload, makeSlotFile } from '../bench/install-fixtures.js';
import { flipUnderneath, loopAvailable, withLoop } from '../harness/loop-device.js';

const CHUNK = 64 << 10;
const SIZE = 6 * CHUNK + 777; // 7 chunks, the last one short
const BAD = 3 * CHUNK + 1234; // inside chunk 3

/** SHA-256 (hex) of chunk `k` of the image file (the signed chunk hash), and of the same chunk after
 * `BAD` is XORed with `flip` (what the medium holds). */
async function shas(image: string, k: number, flip: number): Promise<{ expected: string; actual: string }> {
  const img = await readFile(image);
  const c = Buffer.from(img.subarray(k * CHUNK, (k + 1) * CHUNK));
  const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
  const expected = sha(c);
  c[BAD - k * CHUNK] ^= flip;
  return { expected, actual: sha(c) };
}

/** Wraps a slot writer: `onHandle` may replace methods of the handle it opens. */
function wrapped(inner: SlotWriter, onHandle: (h: SlotHandle) => SlotHandle): SlotWriter {
  return { slot: inner.slot, path: inner.path, capacity: () => inner.capacity(), open: async () => onHandle(await inner.open()) };
}

/** Slot B in the file `path`, whose reads pass through `alter(bytes read, their offset)`: flash that
 * returns other bytes than it acknowledged. */
function alteredReads(path: string, alter: (b: Buffer, offset: number) => void): SlotWriter {
  return wrapped(createSlotWriter('B', { path }), (h) => ({
    writeAt: (d, o) => h.writeAt(d, o),
    flush: () => h.flush(),
    close: () => h.close(),
    async readAt(length, offset) {
      const b = await h.readAt(length, offset);
      alter(b, offset);
      return b;
    },
  }));
}

t.test('through the handle: a chunk that reads back different from what was written is caught and named', async (t) => {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'zstd' });
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE);
  const slot = alteredReads(slotPath, (b, offset) => {
    if (offset <= BAD && BAD < offset + b.length) b[BAD - offset] ^= 0x10; // the medium kept another bit
  });
  const err = await installPayload({ payload: p.payload, length: p.length, source: { path: p.file }, slot, resumeStatePath: join(dir, 'resume.json'), readBack: 'handle' }).catch((e: unknown) => e);
  t.equal(codeOf(err), 'INSTALL_READBACK_MISMATCH', 'the install does not resolve');
  t.match((err as { details: unknown }).details, { path: slotPath, chunk: 3, offset: 3 * CHUNK, chunks: [3], changed: 1, ...(await shas(p.image, 3, 0x10)) }, 'names the chunk that differs, with its signed SHA-256 and the one read');
  t.match((err as Error).message, /differs in chunk 3 \(bytes 196608\.\.262143\): SHA-256 [0-9a-f]{64}, signed [0-9a-f]{64}/);
});

t.test('by path (O_DIRECT): a byte the medium changed after the last flush is caught and named', { skip: loopAvailable() ? false : 'needs root and a loop device' }, async (t) => {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'zstd' });
  const { dev, backing } = await withLoop(t, dir, 1 << 20, false);
  let flips = 0;
  const slot = wrapped(createSlotWriter('B', { path: dev }), (h) => ({
    writeAt: (d, o) => h.writeAt(d, o),
    readAt: (l, o) => h.readAt(l, o),
    close: () => h.close(),
    async flush() {
      await h.flush();
      if (flips > 0) return;
      // after the flush that covers the whole image, change one byte underneath the page cache
      await flipUnderneath(backing, BAD);
      flips++;
    },
  }));
  // one flush for the whole image (flushEveryBytes above its size): the change lands after it
  const err = await installPayload({ payload: p.payload, length: p.length, source: { path: p.file }, slot, resumeStatePath: join(dir, 'resume.json'), readBack: 'path', flushEveryBytes: 1 << 30 }).catch((e: unknown) => e);
  t.equal(flips, 1, 'the medium changed after the flush');
  t.equal(codeOf(err), 'INSTALL_READBACK_MISMATCH', 'caught by the installer\'s O_DIRECT read-back');
  t.match((err as { details: unknown }).details, { path: dev, chunk: 3, offset: 3 * CHUNK, direct: true, chunks: [3], changed: 1, ...(await shas(p.image, 3, 0x5a)) }, 'names the chunk that differs, with its signed SHA-256 and the one the medium holds');
});

t.test('through the handle: several changed chunks are all counted and named; the slot is read twice, the naming pass only on a mismatch', async (t) => {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'zstd' });
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE);
  const flipped = [1, 6]; // the last, short chunk too
  let bytesRead = 0;
  const slot = alteredReads(slotPath, (b, offset) => {
    bytesRead += b.length;
    for (const k of flipped) {
      const at = k * CHUNK + 5;
      if (offset <= at && at < offset + b.length) b[at - offset] ^= 0x01;
    }
  });
  const err = await installPayload({ payload: p.payload, length: p.length, source: { path: p.file }, slot, resumeStatePath: join(dir, 'resume.json'), readBack: 'handle' }).catch((e: unknown) => e);
  t.equal(codeOf(err), 'INSTALL_READBACK_MISMATCH');
  t.match((err as { details: unknown }).details, { path: slotPath, chunk: 1, offset: CHUNK, expected: p.payload.chunks[1]!.sha256, chunks: [1, 6], changed: 2 }, 'the first in full, both by number');
  t.match((err as Error).message, /differs in chunk 1 \(bytes 65536\.\.131071\).*2 chunks differ in all \(1, 6\)/);
  t.equal(bytesRead, 2 * SIZE, 'one read of the whole image, then one naming pass');

  // the medium keeps what is written now: a fresh install (new resume record) reads it back once,
  // no naming pass on the normal path
  bytesRead = 0;
  flipped.length = 0;
  const ok = await installPayload({ payload: p.payload, length: p.length, source: { path: p.file }, slot, resumeStatePath: join(dir, 'resume2.json'), readBack: 'handle' });
  t.equal(ok.readBackSha256, p.payload.sha256);
  t.equal(bytesRead, SIZE, 'read back once');
});

t.test('through the handle: a read that differs only the first time fails on the whole-image hash, and says no chunk differed when read again', async (t) => {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'zstd' });
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE);
  let flips = 0;
  const slot = alteredReads(slotPath, (b, offset) => {
    if (flips === 0 && offset <= BAD && BAD < offset + b.length) {
      b[BAD - offset] ^= 0x80; // only the first read of it
      flips++;
    }
  });
  const err = await installPayload({ payload: p.payload, length: p.length, source: { path: p.file }, slot, resumeStatePath: join(dir, 'resume.json'), readBack: 'handle' }).catch((e: unknown) => e);
  t.equal(flips, 1);
  t.equal(codeOf(err), 'INSTALL_READBACK_MISMATCH', 'never passed');
  t.match((err as { details: unknown }).details, { path: slotPath, expected: p.payload.sha256, actual: /^[0-9a-f]{64}$/, changed: 0 });
  t.not((err as { details: { actual: string } }).details.actual, p.payload.sha256);
  t.match((err as Error).message, /every chunk matched its signed hash when read again/);
});

t.test('a resume record from an older daemon (rewriteFrom of the CRC read-back, unknown digests) still resumes: its extra fields are ignored, the re-hash decides', async (t) => {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'zstd' });
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE);
  // chunks 0..2 are on the slot, as an older daemon left them
  const img = await readFile(p.image);
  const fh = await open(slotPath, 'r+');
  await fh.write(img, 0, 3 * CHUNK, 0);
  await fh.close();
  const resumeStatePath = join(dir, 'resume.json');
  const old = {
    schema: 1, imageSha256: p.payload.sha256, size: p.payload.size, chunkSize: p.payload.chunkSize, slotPath, nextChunk: 3, complete: false,
    rewriteFrom: 2, chunkCrc32: ['0a0b0c0d', '01020304', 'deadbeef'],
  };
  await writeFile(resumeStatePath, `${JSON.stringify(old)}\n`);
  const r = await installPayload({ payload: p.payload, length: p.length, source: { path: p.file }, slot: createSlotWriter('B', { path: slotPath }), resumeStatePath, readBack: 'handle' });
  t.equal(r.resumedFromChunk, 3, 'resumed after the three chunks whose SHA-256 matched on the slot');
  t.equal(r.bytesWritten, SIZE - 3 * CHUNK, 'only the rest written');
  t.equal(createHash('sha256').update(await readFile(slotPath)).digest('hex'), p.payload.sha256, 'the slot holds the image');
  t.match(JSON.parse(await readFile(resumeStatePath, 'utf8')), { nextChunk: p.payload.chunks.length, complete: true }, 'the record is rewritten in the current form');
});

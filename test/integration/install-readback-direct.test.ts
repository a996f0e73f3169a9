/**
 * Issue 22, sequence 9: the read-back reads the MEDIUM, not the page cache. A loop device stands in
 * for flash that acknowledged the write and kept something else: the image is written and fsynced
 * through /dev/loopN (its page cache now holds the written bytes), then one byte is changed in the
 * backing file underneath, which the block device's page cache never sees. A buffered read still
 * returns the written bytes (shown, so the test cannot pass vacuously); the read-back must not.
 * Needs root and a free loop device; skipped otherwise. Also: on tmpfs (no O_DIRECT) the read-back
 * falls back, says so in a debug log, and still catches a changed byte.
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { constants, existsSync } from 'node:fs';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { verifySlotImage } from '../../daemon/install/read-back.js';
import { ReadBackChecker, type ReadBack } from '../../daemon/install/hasher.js';
import { ThreadedReadBack } from '../../daemon/install/read-back-thread.js';
import { createSlotWriter } from '../../hal/file-slot.js';
import { codeOf } from '../../hal/errors.js';
import type { PayloadInfo } from '../../manifests/types.js';
import { bufferedBytes, flipUnderneath, loopAvailable, withLoop } from '../harness/loop-device.js';

const CHUNK = 64 << 10;
const SIZE = 5 * CHUNK + 777; // 6 chunks, the last one short and unaligned
const DEVICE = 8 << 20;
const BAD = 2 * CHUNK + 4321; // inside chunk 2

function image(): Buffer {
  const b = Buffer.alloc(SIZE);
  for (let i = 0; i < SIZE; i++) b[i] = (i * 31 + (i >> 9)) & 0xff;
  return b;
}

/** The installer's read-back by path runs on a worker thread (ThreadedReadBack hosts a ReadBackChecker
 * there); every checker test below runs on both. */
const KINDS = ['this thread', 'worker thread'] as const;

/** A read-back checker for `img`, given its signed image and chunk hashes as the installer gives them. */
function checkerFor(kind: (typeof KINDS)[number], img: Buffer, path: string, log?: pino.Logger): ReadBack {
  const p = payloadOf(img);
  const o = { path, chunkSize: CHUNK, size: img.length, imageSha256: p.sha256, chunkSha256: (k: number) => p.chunks[k]!.sha256, ...(log ? { log } : {}) };
  return kind === 'worker thread' ? new ThreadedReadBack(o) : new ReadBackChecker(o);
}

function payloadOf(img: Buffer): PayloadInfo {
  const chunks = [];
  for (let off = 0; off < img.length; off += CHUNK) chunks.push({ sha256: createHash('sha256').update(img.subarray(off, off + CHUNK)).digest('hex'), offset: off, length: CHUNK });
  return { compression: 'none', size: img.length, sha256: createHash('sha256').update(img).digest('hex'), chunkSize: CHUNK, chunks };
}

async function writeThrough(path: string, img: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(img, 0, img.length, 0);
    await fh.sync();
    // read it once more through the cache, as any buffered read-back would
    await fh.read(Buffer.alloc(img.length), 0, img.length, 0);
  } finally {
    await fh.close();
  }
}

async function directRefused(path: string): Promise<boolean> {
  try {
    await (await open(path, constants.O_RDONLY | constants.O_DIRECT)).close();
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EINVAL';
  }
}

for (const kind of KINDS) {
  t.test(`${kind}: ` + 'read-back after the write sees a byte the medium changed underneath the page cache', { skip: loopAvailable() ? false : 'needs root and a loop device' }, async (t) => {
    const { dev, backing } = await withLoop(t, t.testdir(), DEVICE);
    const img = image();
    const payload = payloadOf(img);
    await writeThrough(dev, img);
    const changed = await flipUnderneath(backing, BAD);
    t.equal((await bufferedBytes(dev, BAD, 1))[0], img[BAD], 'premise: a buffered read of the slot still returns the written byte (page cache)');

    const slot = createSlotWriter('B', { path: dev });
    // Verify step: by path (what compose uses for hal's slot writers) reads the medium
    const err = await verifySlotImage(slot, payload, { source: 'path' }).then(() => undefined, (e: unknown) => e);
    t.equal(codeOf(err, ''), 'DAEMON_VERIFY_MISMATCH', 'the changed byte is caught');
    t.match((err as { details: unknown }).details, { path: dev, chunk: 2, offset: 2 * CHUNK, expected: payload.chunks[2]!.sha256, direct: true }, 'names the chunk and its offset');
    t.match((err as Error).message, /chunk 2 \(bytes 131072\.\.196607\)/);
    t.equal((await bufferedBytes(dev, BAD, 1))[0], img[BAD], 'while the page cache still says all is well');

    // the installer's read-back (by path, behind the flush frontier): the whole image's SHA-256 against
    // the signed one, then a second read naming the chunk by its signed SHA-256
    await writeThrough(dev, img); // written again: medium and cache agree ...
    t.equal(await flipUnderneath(backing, BAD), changed, '... until the medium changes underneath again');
    const checker = checkerFor(kind, img, dev);
    try {
      checker.advance(3 * CHUNK + 100); // an unaligned flush frontier
      const e2 = await checker.finish(SIZE).then(() => undefined, (e: unknown) => e);
      const medium = Buffer.from(img);
      medium[BAD] = changed;
      t.equal(codeOf(e2, ''), 'INSTALL_READBACK_MISMATCH', 'the installer\'s read-back catches it');
      t.equal(checker.direct, true, 'read with O_DIRECT');
      const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
      t.match((e2 as { details: unknown }).details, { path: dev, chunk: 2, offset: 2 * CHUNK, expected: payload.chunks[2]!.sha256, actual: sha(medium.subarray(2 * CHUNK, 3 * CHUNK)), chunks: [2], changed: 1, direct: true }, 'names the chunk, with its signed SHA-256 and the one the medium holds');
      t.match((e2 as Error).message, /chunk 2 \(bytes 131072\.\.196607\)/);
    } finally {
      await checker.close();
    }
  });

  t.test(`${kind}: ` + 'an intact slot passes the direct read-back (aligned windows, unaligned last chunk)', { skip: loopAvailable() ? false : 'needs root and a loop device' }, async (t) => {
    const { dev } = await withLoop(t, t.testdir(), DEVICE);
    const img = image();
    await writeThrough(dev, img);
    await verifySlotImage(createSlotWriter('A', { path: dev }), payloadOf(img), { source: 'path' });
    const checker = checkerFor(kind, img, dev);
    try {
      for (const upto of [1, 4095, 4097, CHUNK + 3, 4 * CHUNK]) checker.advance(upto);
      t.same(await checker.finish(SIZE), { bytes: SIZE }, 'the whole image read back and matched');
      t.equal(checker.direct, true);
      t.equal(checker.imageSha256(), createHash('sha256').update(img).digest('hex'), 'the whole image hashed over what the medium returned');
    } finally {
      await checker.close();
    }
    // a resume: the prefix re-hash and the read-back after it make one whole-image hash
    const resumed = checkerFor(kind, img, dev);
    try {
      const sha = (k: number): string => createHash('sha256').update(img.subarray(k * CHUNK, (k + 1) * CHUNK)).digest('hex');
      const wrongFrom = 2;
      const matched = await resumed.verifyPrefix((k) => (k >= wrongFrom ? '0'.repeat(64) : sha(k)));
      t.equal(matched, wrongFrom, 'the prefix stops at the first chunk that differs');
      t.equal(resumed.imageSha256(), undefined, 'no whole-image hash before every byte was read back');
      t.same(await resumed.finish(SIZE), { bytes: SIZE });
      t.equal(resumed.imageSha256(), createHash('sha256').update(img).digest('hex'), 'prefix + read-back = the whole image, once each');
    } finally {
      await resumed.close();
    }
  });

  t.test(`${kind}: ` + 'tmpfs: where O_DIRECT is refused, falls back, says so in a debug log, still names a changed chunk', { skip: existsSync('/dev/shm') ? false : 'no /dev/shm' }, async (t) => {
    const dir = await mkdtemp('/dev/shm/slotflip-readback-');
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const path = join(dir, 'slot.img');
    await writeFile(path, 'x');
    // Linux >= 6.6 gives tmpfs O_DIRECT; then the direct path runs here too
    const refused = await directRefused(path);
    t.comment(refused ? 'tmpfs refuses O_DIRECT on this kernel: testing the fallback' : 'tmpfs accepts O_DIRECT on this kernel (>= 6.6): testing the direct path on it');
    const img = image();
    const payload = payloadOf(img);
    const bad = Buffer.from(img);
    bad[SIZE - 5] = bad[SIZE - 5]! ^ 1; // in the last, short chunk
    await writeFile(path, bad);
    const lines: Record<string, unknown>[] = [];
    const log = pino({ level: 'debug' }, new Writable({ write(c, _e, cb) { lines.push(JSON.parse(String(c))); cb(); } }));
    const err = await verifySlotImage(createSlotWriter('A', { path, size: SIZE }), payload, { source: 'path', log }).then(() => undefined, (e: unknown) => e);
    t.equal(codeOf(err, ''), 'DAEMON_VERIFY_MISMATCH');
    t.match((err as { details: unknown }).details, { chunk: 5, offset: 5 * CHUNK, direct: !refused });
    if (refused) t.match(lines, [{ level: 20, path, msg: /O_DIRECT not supported/ }], 'the fallback is logged at debug');
    else t.same(lines, [], 'no fallback, nothing logged');

    await writeFile(path, img);
    const checker = checkerFor(kind, img, path, log);
    try {
      t.same(await checker.finish(SIZE), { bytes: SIZE }, 'checks the file');
      t.equal(checker.direct, !refused);
    } finally {
      await checker.close();
    }
    await writeFile(path, bad);
    const failing = checkerFor(kind, img, path, log);
    try {
      const e3 = await failing.finish(SIZE).then(() => undefined, (e: unknown) => e);
      t.match((e3 as { code?: string; details?: unknown }), { code: 'INSTALL_READBACK_MISMATCH', details: { chunk: 5, offset: 5 * CHUNK, direct: !refused } }, 'names the last, short chunk');
    } finally {
      await failing.close();
    }
  });
}

// Slot writers on regular files and on real loop devices: capacity, size check before the first
// byte, positional writes, flush, read-back hash.
import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { constants, existsSync } from 'node:fs';
import { open, readFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { alignedBuffer } from '../../hal/aligned.js';
import { assertFits, blockDeviceSize, createSlotWriter, hashSlot } from '../../hal/file-slot.js';
import { makeTestImage } from '../../hal/image.js';
import type { SlotHandle, SlotWriter } from '../../hal/slot-writer.js';
import { withLoop } from '../harness/loop-device.js';

const SIZE = 3 * 1024 * 1024;

function attachLoop(t: Test, file: string): string {
  const dev = execFileSync('losetup', ['-f', '--show', file], { encoding: 'utf8' }).trim();
  t.teardown(() => {
    execFileSync('losetup', ['-d', dev]);
  });
  return dev;
}

async function backingFile(t: Test): Promise<string> {
  const f = join(t.testdir(), 'slot.img');
  const fh = await open(f, 'w');
  await fh.truncate(SIZE);
  await fh.close();
  return f;
}

async function exercise(t: Test, w: SlotWriter): Promise<void> {
  t.equal(await w.capacity(), SIZE);
  const image = makeTestImage({ version: '9.9.9', size: 2 * 1024 * 1024 + 12345 });
  await assertFits(w, image.length);
  await t.rejects(assertFits(w, SIZE + 1), { code: 'HAL_SLOT_TOO_SMALL' });
  const h = await w.open();
  try {
    // out of order, odd-sized chunks: positional writes
    const chunk = 700_001;
    const offsets = [];
    for (let off = 0; off < image.length; off += chunk) offsets.push(off);
    for (const off of offsets.reverse()) await h.writeAt(image.subarray(off, off + chunk), off);
    await h.flush();
    t.equal(await hashSlot(h, image.length), createHash('sha256').update(image).digest('hex'), 'read-back hash matches');
    t.same(await h.readAt(16, 0), image.subarray(0, 16));
    t.equal((await h.readAt(100, SIZE - 10)).length, 10, 'reads are short only at the end');
    await t.rejects(h.writeAt(Buffer.alloc(2), SIZE - 1), { code: 'HAL_SLOT_OVERFLOW' });
    await t.rejects(h.writeAt(Buffer.alloc(1), -1), { code: 'HAL_SLOT_OVERFLOW' });
    await t.rejects(hashSlot(h, SIZE + 5), { code: 'HAL_SLOT_SHORT' });
  } finally {
    await h.close();
  }
}

t.test('regular file slot', async (t) => {
  const f = await backingFile(t);
  await exercise(t, createSlotWriter('B', { path: f }));
  const img = await readFile(f);
  t.equal(img.length, SIZE, 'never truncated or grown');
});

t.test('regular file slot with a configured size smaller than the file', async (t) => {
  const f = await backingFile(t);
  const w = createSlotWriter('A', { path: f, size: 4096 });
  t.equal(await w.capacity(), 4096);
  const h = await w.open();
  await t.rejects(h.writeAt(Buffer.alloc(4097), 0), { code: 'HAL_SLOT_OVERFLOW' });
  await h.close();
});

t.test('loop device slot', async (t) => {
  const dev = attachLoop(t, await backingFile(t));
  await exercise(t, createSlotWriter('B', { path: dev }));
});

t.test('block device size from sysfs, else blockdev --getsize64', async (t) => {
  const dev = attachLoop(t, await backingFile(t));
  t.equal(await blockDeviceSize(dev), SIZE, 'sysfs');
  const emptySys = join(t.testdir(), 'sys');
  await mkdir(emptySys);
  t.equal(await blockDeviceSize(dev, { sysfsRoot: emptySys }), SIZE, 'blockdev fallback');
});

t.test('missing and unusable paths are HAL_SLOT_OPEN', async (t) => {
  const dir = t.testdir();
  await t.rejects(createSlotWriter('A', { path: join(dir, 'nope') }).capacity(), { code: 'HAL_SLOT_OPEN' });
  await t.rejects(createSlotWriter('A', { path: dir }).capacity(), { code: 'HAL_SLOT_OPEN' });
  await t.rejects(createSlotWriter('A', { path: join(dir, 'nope') }).open(), { code: 'HAL_SLOT_OPEN' });
});

/** bytes the handle sent with O_DIRECT (hal's file handle counts them). */
const directBytes = (h: SlotHandle): number => (h as unknown as { directBytes: number }).directBytes;

t.test('aligned buffers go to the medium with O_DIRECT, a short tail and other memory through the page cache', { skip: process.getuid?.() === 0 ? false : 'needs root (loop device)' }, async (t) => {
  // the loop device's medium is its backing file: a direct write reaches it before any flush, a
  // buffered one waits in the device's page cache (held open so the cache outlives each handle)
  const { dev, backing } = await withLoop(t, t.testdir(), SIZE);
  const image = makeTestImage({ version: '9.9.9', size: 2 * 1024 * 1024 + 100 });
  const aligned = alignedBuffer(image.length);
  image.copy(aligned);
  const h = await createSlotWriter('B', { path: dev }).open();
  try {
    await h.writeAt(aligned.subarray(0, 1 << 20), 0);
    t.equal(directBytes(h), 1 << 20, 'an aligned MiB at offset 0 went direct');
    const medium = await readFile(backing);
    t.ok(medium.subarray(0, 1 << 20).equals(image.subarray(0, 1 << 20)), 'the medium holds it before any flush');
    // aligned memory, aligned offset, a length of whole pages plus 100 bytes: the pages direct, the tail buffered
    await h.writeAt(aligned.subarray(1 << 20), 1 << 20);
    t.equal(directBytes(h), image.length - 100, 'all but the 100-byte tail went direct');
    // ordinary Buffer memory (not known to be aligned) and an unaligned offset: page cache
    const plain = Buffer.from(image.subarray(0, 8192));
    await h.writeAt(plain, 0);
    await h.writeAt(aligned.subarray(4096, 8192), 4096 + 512);
    t.equal(directBytes(h), image.length - 100, 'unknown memory and an unaligned offset were not sent direct');
    await h.writeAt(aligned.subarray(4096, 12288), 4096); // restore what the unaligned write changed (4608..8703)
    await h.flush();
    t.equal(await hashSlot(h, image.length), createHash('sha256').update(image).digest('hex'), 'the slot holds the image through the handle');
  } finally {
    await h.close();
  }
  const medium = await readFile(backing);
  t.equal(createHash('sha256').update(medium.subarray(0, image.length)).digest('hex'), createHash('sha256').update(image).digest('hex'), 'and on the medium after the flush');
});

t.test('tmpfs: aligned buffers are written direct where the kernel allows it, else through the page cache', { skip: existsSync('/dev/shm') ? false : 'no /dev/shm' }, async (t) => {
  const dir = await mkdtemp('/dev/shm/slotflip-direct-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const f = join(dir, 'slot.img');
  const fh = await open(f, 'w');
  await fh.truncate(SIZE);
  await fh.close();
  // Linux >= 6.6 gives tmpfs O_DIRECT; older kernels refuse it (EINVAL at open): the fallback runs
  let refused = false;
  await open(f, constants.O_RDWR | constants.O_DIRECT).then((d) => d.close(), (e: NodeJS.ErrnoException) => void (refused = e.code === 'EINVAL'));
  t.comment(refused ? 'tmpfs refuses O_DIRECT on this kernel: testing the fallback' : 'tmpfs accepts O_DIRECT on this kernel (>= 6.6): testing the direct path on it');
  const image = makeTestImage({ version: '9.9.9', size: (1 << 20) + 7 });
  const aligned = alignedBuffer(image.length);
  image.copy(aligned);
  const h = await createSlotWriter('B', { path: f }).open();
  try {
    await h.writeAt(aligned, 0);
    await h.flush();
    t.equal(directBytes(h), refused ? 0 : 1 << 20, refused ? 'nothing went direct' : 'the whole pages went direct');
  } finally {
    await h.close();
  }
  t.ok((await readFile(f)).subarray(0, image.length).equals(image), 'the file holds the bytes');
});

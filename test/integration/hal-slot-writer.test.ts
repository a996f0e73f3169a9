// Slot writers on regular files and on real loop devices: capacity, size check before the first
// byte, positional writes, flush, read-back hash.
import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { open, readFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { assertFits, blockDeviceSize, createSlotWriter, hashSlot } from '../../hal/file-slot.js';
import { makeTestImage } from '../../hal/image.js';
import type { SlotWriter } from '../../hal/slot-writer.js';

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

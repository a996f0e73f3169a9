/**
 * Loop devices as a slot that can lose bytes: a block device whose "medium" is a backing file. A byte
 * changed in the backing file underneath is what flash that acknowledged a write and kept something
 * else looks like: the block device's page cache still holds the written bytes (a buffered read says
 * all is well), only a read of the medium (O_DIRECT) sees the change. Needs root.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';

/** True when this process may set up a loop device (root, /dev/loop-control, a free device). */
export function loopAvailable(): boolean {
  try {
    return process.getuid?.() === 0 && existsSync('/dev/loop-control') && execFileSync('losetup', ['-f'], { encoding: 'utf8' }).trim().startsWith('/dev/loop');
  } catch {
    return false;
  }
}

interface Teardown {
  teardown(fn: () => unknown): void;
}

/**
 * A loop device over a fresh backing file `flash.img` of `size` bytes in `dir` (detached at teardown). `hold` keeps it open for the whole test: the kernel drops a block device's page cache at
 * its LAST close, which would hide the page cache / medium difference these tests are about.
 */
export async function withLoop(t: Teardown, dir: string, size: number, hold = true): Promise<{ dev: string; backing: string }> {
  const backing = join(dir, 'flash.img');
  const fh = await open(backing, 'w');
  await fh.truncate(size);
  await fh.close();
  const dev = execFileSync('losetup', ['-f', '--show', backing], { encoding: 'utf8' }).trim();
  const holder = hold ? await open(dev, 'r') : undefined;
  t.teardown(async () => {
    await holder?.close();
    execFileSync('losetup', ['-d', dev]);
  });
  return { dev, backing };
}

/** XORs the byte at `at` of the backing file with `mask` (underneath the device's page cache) and
 * syncs it; returns the new value. */
export async function flipUnderneath(backing: string, at: number, mask = 0x5a): Promise<number> {
  const fh = await open(backing, 'r+');
  try {
    const one = Buffer.alloc(1);
    await fh.read(one, 0, 1, at);
    const changed = one[0]! ^ mask;
    await fh.write(Buffer.from([changed]), 0, 1, at);
    await fh.sync();
    return changed;
  } finally {
    await fh.close();
  }
}

/** Writes back what the device's page cache holds dirty (what a writer left unflushed), so a later
 * change underneath is not overwritten by that writeback. */
export async function writeBack(dev: string): Promise<void> {
  const fh = await open(dev, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** `length` bytes at `at` through the page cache (a buffered read). */
export async function bufferedBytes(path: string, at: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(length);
    const { bytesRead } = await fh.read(b, 0, length, at);
    return b.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** Bytes of [0, length) of `path` resident in the page cache, by mincore(2) on a shared mapping
 * (python3's ctypes: Node has no mincore; `fincore` reports 0 for block devices, whose st_size is 0).
 * For a block device the cache is the one a buffered write fills and O_DIRECT bypasses. */
export function cachedBytes(path: string, length: number): number {
  const py = [
    'import ctypes, mmap, os, sys',
    'n = int(sys.argv[2]); fd = os.open(sys.argv[1], os.O_RDONLY)',
    'libc = ctypes.CDLL(None, use_errno=True)',
    'libc.mmap.restype = ctypes.c_void_p',
    'p = libc.mmap(None, ctypes.c_size_t(n), mmap.PROT_READ, mmap.MAP_SHARED, fd, ctypes.c_long(0))',
    'assert p not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())',
    'pages = (n + mmap.PAGESIZE - 1) // mmap.PAGESIZE; vec = (ctypes.c_ubyte * pages)()',
    'rc = libc.mincore(ctypes.c_void_p(p), ctypes.c_size_t(n), vec)',
    'assert rc == 0, os.strerror(ctypes.get_errno())',
    'print(sum(v & 1 for v in vec) * mmap.PAGESIZE)',
  ].join('\n');
  return Number(execFileSync('python3', ['-c', py, path, String(length)], { encoding: 'utf8' }).trim());
}

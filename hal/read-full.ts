/**
 * Positioned reads that do not stop at a short read: `read(2)` may return fewer bytes than asked
 * (a signal, a device's request limit, a pipe-backed descriptor); only 0 means the end of the file.
 * One loop for every caller that needs `len` bytes at an offset (slots, payload files, chunk indexes).
 */
import type { FileHandle } from 'node:fs/promises';
import { nodeFs, nodeUtil } from './builtins.js';

// through require, not ES imports (hal/builtins.ts)
const { read: readFd } = nodeFs;
const { promisify } = nodeUtil;

const readP = promisify(readFd);

/** Reads up to `len` bytes at file offset `at` into `into[offset..]`, looping over short reads; fewer
 * only at the end of the file. Returns how many bytes were read. */
export async function readFull(from: FileHandle | number, into: Uint8Array, offset: number, len: number, at: number): Promise<number> {
  let got = 0;
  while (got < len) {
    const { bytesRead } = typeof from === 'number' ? await readP(from, into, offset + got, len - got, at + got) : await from.read(into, offset + got, len - got, at + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}

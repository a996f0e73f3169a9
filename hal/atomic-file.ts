/**
 * Atomic file replacement: write a temp file beside the target, fsync it, rename over the target,
 * fsync the directory. A crash at any point leaves either the old or the new content, never a mix.
 *
 * The `FileOps` seam lets the power-cut harness tear or drop writes; production uses `nodeFileOps`.
 */
import { open, rename, unlink, readFile } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';
import { SlotflipError } from './errors.js';

export interface FileOps {
  writeFileAtomic(path: string, data: string | Uint8Array): Promise<void>;
}

let seq = 0;

export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${++seq}.tmp`);
  try {
    const fh = await open(tmp, 'w', 0o644);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (cause) {
    await unlink(tmp).catch(() => undefined);
    const errno = (cause as NodeJS.ErrnoException).code;
    throw new SlotflipError('HAL_ATOMIC_WRITE', `atomic write of ${path} failed (${errno ?? 'error'}); check free space and permissions`, {
      cause,
      retryable: errno === 'ENOSPC' || errno === 'EAGAIN',
      details: { path, errno },
    });
  }
  await fsyncDir(dir);
}

export async function fsyncDir(dir: string): Promise<void> {
  const dh = await open(dir, 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

/** Reads a file, refusing (HAL_FILE_TOO_LARGE) before reading if it is larger than `maxBytes`. */
export async function readFileCapped(path: string, maxBytes: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    if (size > maxBytes) {
      throw new SlotflipError('HAL_FILE_TOO_LARGE', `${path} is ${size} bytes, more than the ${maxBytes} allowed`, { details: { path, size, maxBytes } });
    }
    return await readFile(fh);
  } finally {
    await fh.close();
  }
}

export const nodeFileOps: FileOps = { writeFileAtomic };

/**
 * Inputs for the installer's tests and bench: deterministic semi-compressible images (part random,
 * part text, part zeros) and helpers to build payloads and slots from them.
 */
import { createHash } from 'node:crypto';
import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildPayload, type BuiltPayload } from '../../manifests/payload.js';
import type { Compression } from '../../manifests/types.js';

/** xorshift-based filler: fast, deterministic for a seed. */
function fillPseudoRandom(buf: Buffer, seed: number): void {
  let x = (seed | 0) || 0x9e3779b9;
  for (let i = 0; i + 4 <= buf.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf.writeInt32LE(x | 0, i);
  }
}

const TEXT = Buffer.from('slotflip root filesystem: /usr/lib/os-release VERSION_ID=1.2.3 lorem ipsum dolor sit amet\n'.repeat(12000));

/** Writes a `size`-byte image: per MiB ~3/8 pseudo-random, ~9/16 text, the rest zeros. */
export async function writeImage(path: string, size: number, seed = 1): Promise<void> {
  const fh = await open(path, 'w');
  try {
    const block = Buffer.alloc(1 << 20);
    for (let off = 0, i = 0; off < size; off += block.length, i++) {
      const rnd = block.subarray(0, 384 << 10);
      fillPseudoRandom(rnd, seed * 1_000_003 + i);
      const t0 = (i * 977) % 4096;
      TEXT.copy(block, 384 << 10, t0, t0 + (576 << 10));
      block.fill(0, (960 << 10));
      block.writeUInt32LE(i, 970 << 10);
      const n = Math.min(block.length, size - off);
      await fh.write(block, 0, n, off);
    }
  } finally {
    await fh.close();
  }
}

export async function sha256File(path: string): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const h = createHash('sha256');
    const buf = Buffer.allocUnsafe(1 << 20);
    for (let pos = 0; ; ) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
    return h.digest('hex');
  } finally {
    await fh.close();
  }
}

export interface PayloadFixture extends BuiltPayload {
  image: string;
  file: string;
  /** file name relative to the directory. */
  name: string;
}

/** Writes an image and its payload into `dir`. */
export async function makePayload(dir: string, opts: { size: number; chunkSize: number; compression: Compression; seed?: number; name?: string }): Promise<PayloadFixture> {
  const name = opts.name ?? `payload.${opts.compression}`;
  const image = join(dir, `${name}.img`);
  const file = join(dir, name);
  await writeImage(image, opts.size, opts.seed ?? 1);
  const built = await buildPayload(image, file, { compression: opts.compression, chunkSize: opts.chunkSize });
  return { ...built, image, file, name };
}

/** A slot file of `size` bytes filled with a recognisable pattern (not zeros, not the image). */
export async function makeSlotFile(path: string, size: number): Promise<void> {
  const b = Buffer.alloc(size, 0xa5);
  await writeFile(path, b);
}

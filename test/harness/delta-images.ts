/**
 * Image pairs for delta tests: an OLD "root filesystem" (4 KiB blocks of text-like data, zero runs,
 * some random blocks: compressible like a real one) and a NEW one derived from it the way a release
 * changes an image (a config line, a region shifted by an insertion, a new region, optionally many
 * small scattered edits). Deterministic for a seed, except the new regions' random bytes.
 */
import { createHash, randomBytes } from 'node:crypto';
import { IMAGE_HEADER_BYTES, IMAGE_MAGIC } from '../../hal/image.js';

/** An image of `size` bytes from `seed`. */
export function makeImage(seed: number, size: number): Buffer {
  const img = Buffer.alloc(size);
  let x = seed;
  const rnd = (): number => (x = (Math.imul(x, 1103515245) + 12345) >>> 0);
  const words = ['alpha', 'beta', 'gamma', 'delta', 'slot', 'flip', '\n', ' ', 'ext4', '0x1f'];
  for (let off = 0; off < size * 0.7; off += 4096) {
    const kind = rnd() % 10;
    if (kind < 2) continue; // zeros
    let s = '';
    while (s.length < 4096) s += words[rnd() % words.length];
    img.write(s.slice(0, 4096), off, 'latin1');
    if (kind === 9) randomBytes(512).copy(img, off);
  }
  return img;
}

export interface DeriveOptions {
  /** small edits spread evenly over the image (each changes one content-defined chunk). */
  scattered?: number;
  /** bytes of x86-64-like machine code (codeLike) written at half the image: new chunks whose
   * frames the publisher x86-filters (delta format 2). */
  code?: number;
}

/**
 * `size` bytes that look like x86-64 machine code to a compressor: short instruction patterns and
 * `call rel32` (E8) / `jmp rel32` (E9) to a few hundred functions in the same region, so the same
 * target is reached with a different displacement from every call site — what the x86 filter
 * (manifests/x86-filter.ts) turns into repeated bytes. Deterministic for a seed.
 */
export function codeLike(seed: number, size: number): Buffer {
  const b = Buffer.alloc(size, 0xcc);
  let x = seed >>> 0 || 1;
  const rnd = (): number => (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 8;
  const ops = [[0x55], [0x48, 0x89, 0xe5], [0x48, 0x83, 0xec, 0x20], [0x8b, 0x45, 0xfc], [0x89, 0x7d, 0xec], [0x48, 0x8b, 0x45, 0xf0], [0x31, 0xc0], [0x5d], [0xc3], [0x0f, 0x1f, 0x40, 0x00]];
  const targets = Array.from({ length: 300 }, () => rnd() % size);
  let at = 0;
  while (at + 16 < size) {
    if (rnd() % 4 === 0) {
      b[at] = rnd() % 5 === 0 ? 0xe9 : 0xe8;
      b.writeInt32LE(targets[rnd() % targets.length]! - (at + 5), at + 1);
      at += 5;
    } else {
      const op = ops[rnd() % ops.length]!;
      for (const v of op) b[at++] = v;
      if (rnd() % 3 === 0) b[at++] = rnd() & 0xff; // an immediate: not every byte is an opcode
    }
  }
  return b;
}

/** NEW from OLD (same size): a config line, an insertion that shifts 1 MiB, 200 kB of new bytes. */
export function deriveImage(old: Buffer, o: DeriveOptions = {}): Buffer {
  const n = Buffer.from(old);
  const size = old.length;
  n.write('changed config line\n', 100_000, 'latin1');
  const at = Math.floor(size / 4);
  const shifted = Buffer.concat([Buffer.from('INSERTED'.repeat(300)), old.subarray(at, at + (1 << 20))]);
  shifted.copy(n, at, 0, Math.min(shifted.length, 1 << 20));
  randomBytes(Math.min(200_000, size >> 5)).copy(n, Math.floor(size * 0.75));
  if (o.code) codeLike(11, Math.min(o.code, size >> 2)).copy(n, Math.floor(size / 2));
  const k = o.scattered ?? 0;
  for (let i = 0; i < k; i++) n.write(`edit ${i};`, Math.floor(((i + 0.5) * size) / k), 'latin1');
  return n;
}

/** `img` made bootable on an emulated board (hal/image.ts): its first 4 KiB replaced by a test image
 * header (version, healthy) over the rest of its bytes. A copy; the body is unchanged. */
export function bootable(img: Buffer, version: string): Buffer {
  const out = Buffer.from(img);
  const body = out.subarray(IMAGE_HEADER_BYTES);
  const header = { version, size: out.length, boots: true, healthy: true, bodySha256: createHash('sha256').update(body).digest('hex') };
  out.fill(0, 0, IMAGE_HEADER_BYTES);
  out.write(IMAGE_MAGIC + JSON.stringify(header) + '\n', 'utf8');
  return out;
}

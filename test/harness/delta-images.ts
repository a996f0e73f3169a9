/**
 * Image pairs for delta tests: an OLD "root filesystem" (4 KiB blocks of text-like data, zero runs,
 * some random blocks: compressible like a real one) and a NEW one derived from it the way a release
 * changes an image (a config line, a region shifted by an insertion, a new region, optionally many
 * small scattered edits). Deterministic for a seed, except the new regions' random bytes.
 */
import { randomBytes } from 'node:crypto';

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
  const k = o.scattered ?? 0;
  for (let i = 0; i < k; i++) n.write(`edit ${i};`, Math.floor(((i + 0.5) * size) / k), 'latin1');
  return n;
}

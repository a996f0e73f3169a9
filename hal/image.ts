/**
 * Test images for emulated boards: the emulated "kernel comes up" rule.
 *
 * Layout: a 4096-byte header block — the magic line `SLOTFLIP-TEST-IMAGE\n`, then one JSON line
 * `{"version","size","boots","healthy","bodySha256"}`, zero padded — followed by `size - 4096` body
 * bytes (deterministic per version). A slot boots when its header parses, `boots` is true and the
 * body hashes to `bodySha256`: a torn or half-written image never "comes up".
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { writeFileAtomic } from './atomic-file.js';
import { SlotflipError } from './errors.js';

export const IMAGE_MAGIC = 'SLOTFLIP-TEST-IMAGE\n';
export const IMAGE_HEADER_BYTES = 4096;

export interface TestImageHeader {
  version: string;
  /** whole image size in bytes, header included. */
  size: number;
  /** false: the kernel never comes up (a failed boot attempt). */
  boots: boolean;
  /** false: it boots but the health check fails. */
  healthy: boolean;
  bodySha256: string;
}

export interface TestImageOptions {
  version: string;
  size: number;
  boots?: boolean;
  healthy?: boolean;
}

function body(version: string, length: number): Buffer {
  // xorshift32 seeded from the version: fast, deterministic, different per version
  const out = Buffer.alloc(length);
  let x = createHash('sha256').update(version).digest().readUInt32LE(0) || 1;
  let i = 0;
  for (; i + 4 <= length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeUInt32LE(x >>> 0, i);
  }
  for (; i < length; i++) out[i] = i & 0xff;
  return out;
}

/** Builds a test image of exactly `size` bytes (≥ 4097). */
export function makeTestImage(opts: TestImageOptions): Buffer {
  if (!Number.isSafeInteger(opts.size) || opts.size <= IMAGE_HEADER_BYTES) throw new SlotflipError('HAL_BAD_ARGUMENT', `test image size must be more than ${IMAGE_HEADER_BYTES} bytes`, { details: { size: opts.size } });
  if (!/^[A-Za-z0-9._+-]{1,64}$/.test(opts.version)) throw new SlotflipError('HAL_BAD_ARGUMENT', `test image version ${JSON.stringify(opts.version)} must be 1-64 of [A-Za-z0-9._+-]`);
  const b = body(opts.version, opts.size - IMAGE_HEADER_BYTES);
  const header: TestImageHeader = { version: opts.version, size: opts.size, boots: opts.boots ?? true, healthy: opts.healthy ?? true, bodySha256: createHash('sha256').update(b).digest('hex') };
  const head = Buffer.alloc(IMAGE_HEADER_BYTES);
  head.write(IMAGE_MAGIC + JSON.stringify(header) + '\n', 'utf8');
  return Buffer.concat([head, b]);
}

/** Largest image `writeTestImage` builds (it is built in memory). */
export const MAX_TEST_IMAGE_BYTES = 1024 ** 3;

/**
 * Writes a test image to `path` (`slotflip board image`): atomic (temp file, fsync, rename), so a
 * crash leaves the old file or the whole new one. Images are built in memory: at most 1 GiB.
 */
export async function writeTestImage(path: string, opts: TestImageOptions): Promise<TestImageHeader> {
  if (opts.size > MAX_TEST_IMAGE_BYTES) throw new SlotflipError('HAL_BAD_ARGUMENT', `test image size ${opts.size} is more than ${MAX_TEST_IMAGE_BYTES} bytes`, { details: { size: opts.size } });
  const image = makeTestImage(opts);
  await writeFileAtomic(path, image);
  return readImageHeader(image)!;
}

/** Parses the header at the start of `buf` (strict); undefined when absent or malformed. Pure. */
export function readImageHeader(buf: Uint8Array): TestImageHeader | undefined {
  const b = Buffer.from(buf.buffer, buf.byteOffset, Math.min(buf.byteLength, IMAGE_HEADER_BYTES));
  if (b.subarray(0, IMAGE_MAGIC.length).toString('latin1') !== IMAGE_MAGIC) return undefined;
  const nl = b.indexOf(10, IMAGE_MAGIC.length);
  if (nl < 0) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(b.subarray(IMAGE_MAGIC.length, nl).toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null) return undefined;
  const o = v as Record<string, unknown>;
  if (Object.keys(o).sort().join(',') !== 'bodySha256,boots,healthy,size,version') return undefined;
  if (typeof o.version !== 'string' || typeof o.boots !== 'boolean' || typeof o.healthy !== 'boolean') return undefined;
  if (!Number.isSafeInteger(o.size) || (o.size as number) <= IMAGE_HEADER_BYTES) return undefined;
  if (typeof o.bodySha256 !== 'string' || !/^[0-9a-f]{64}$/.test(o.bodySha256)) return undefined;
  for (let i = nl + 1; i < b.length; i++) if (b[i] !== 0) return undefined;
  return { version: o.version, size: o.size as number, boots: o.boots, healthy: o.healthy, bodySha256: o.bodySha256 };
}

export interface ImageCheck {
  /** true when the emulated kernel comes up from this slot. */
  boots: boolean;
  reason: string;
  header?: TestImageHeader;
}

/** Reads the image in a slot file/device and applies the "kernel comes up" rule (1 MiB reads). */
export async function checkSlotImage(path: string, capacity: number): Promise<ImageCheck> {
  const fh = await open(path, 'r');
  try {
    const head = Buffer.alloc(IMAGE_HEADER_BYTES);
    await fh.read(head, 0, IMAGE_HEADER_BYTES, 0);
    const header = readImageHeader(head);
    if (!header) return { boots: false, reason: 'no valid image header' };
    if (header.size > capacity) return { boots: false, reason: `image claims ${header.size} bytes, slot holds ${capacity}`, header };
    const h = createHash('sha256');
    const chunk = Buffer.alloc(1 << 20);
    for (let off = IMAGE_HEADER_BYTES; off < header.size; ) {
      const n = Math.min(chunk.length, header.size - off);
      const { bytesRead } = await fh.read(chunk, 0, n, off);
      if (bytesRead === 0) return { boots: false, reason: 'image truncated', header };
      h.update(chunk.subarray(0, bytesRead));
      off += bytesRead;
    }
    if (h.digest('hex') !== header.bodySha256) return { boots: false, reason: `image ${header.version} is torn or incomplete (body hash mismatch)`, header };
    if (!header.boots) return { boots: false, reason: `image ${header.version} is built not to boot`, header };
    return { boots: true, reason: `image ${header.version} came up`, header };
  } finally {
    await fh.close();
  }
}

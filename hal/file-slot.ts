/**
 * Slot writers for regular files (emulated boards, tests) and block devices (`/dev/mmcblk0p3`, loop
 * devices). One class: the only difference is how capacity is found.
 *
 * Trade-off: writes become durable at `flush()` (fsync). Syncing per chunk was measured slower with no
 * safety gain: the slot is marked bad before the first write and only armed after a flush and a
 * read-back hash (see boot-control.ts for the install order).
 *
 * O_DIRECT: `open()` also opens the slot with O_DIRECT where the filesystem or device allows it, and
 * `writeAt` sends a write through it when the bytes can go to the medium as they are: a view of
 * `alignedBuffer` memory (hal/aligned.ts) starting on a page, at a 4096-aligned offset; the aligned
 * prefix of the length goes direct, a tail shorter than 4096 bytes through the page cache. That
 * spares the kernel's copy into the page cache (a fifth to two fifths of an install's CPU samples)
 * and the dirty-page writeback behind it. Any other write (unaligned memory: delta copies, test
 * doubles) goes through the page cache, and a descriptor the kernel refuses O_DIRECT for (EINVAL at
 * open or at the first write: tmpfs, some FUSE/overlay filesystems) falls back to buffered writes
 * for good. Durability is unchanged: `flush()` fsyncs the inode (the direct writes included: a block
 * device's fsync flushes its write cache, a file's covers its data and metadata whichever descriptor
 * wrote them). Mixing the two is coherent: a direct write invalidates the cached pages it covers, so
 * `readAt` (buffered) returns what was written.
 */
import { open, stat, readFile, realpath, type FileHandle } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { createHash } from 'node:crypto';
import { SlotflipError } from './errors.js';
import { readFull } from './read-full.js';
import { execTool, runChecked, type ToolRunner } from './exec.js';
import { DIRECT_ALIGN, isAligned } from './aligned.js';
import type { SlotName } from './boot-control.js';
import type { SlotHandle, SlotWriter } from './slot-writer.js';
import { nodeFs } from './builtins.js';
const { constants } = nodeFs;

export interface SlotWriterOptions {
  /** file or block device path. */
  path: string;
  /** capacity of a regular-file slot in bytes; defaults to the file's current size. Ignored for devices. */
  size?: number;
  /** runs `blockdev --getsize64` when sysfs cannot tell a device's size. */
  runner?: ToolRunner;
  /** root of sysfs (default `/sys`); tests point it elsewhere. */
  sysfsRoot?: string;
  /** path of the blockdev tool (default `blockdev`). */
  blockdevTool?: string;
}

export const HASH_BLOCK_BYTES = 1 << 20;

export function createSlotWriter(slot: SlotName, opts: SlotWriterOptions): SlotWriter {
  return new FileSlotWriter(slot, opts);
}

class FileSlotWriter implements SlotWriter {
  readonly slot: SlotName;
  readonly path: string;
  readonly #opts: SlotWriterOptions;

  constructor(slot: SlotName, opts: SlotWriterOptions) {
    this.slot = slot;
    this.path = opts.path;
    this.#opts = opts;
  }

  async capacity(): Promise<number> {
    let st;
    try {
      st = await stat(this.path);
    } catch (cause) {
      throw new SlotflipError('HAL_SLOT_OPEN', `slot ${this.slot}: cannot stat ${this.path}; check the slot path in the config`, { cause, details: { path: this.path } });
    }
    if (st.isFile()) return this.#opts.size ?? st.size;
    if (st.isBlockDevice()) return blockDeviceSize(this.path, this.#opts);
    throw new SlotflipError('HAL_SLOT_OPEN', `slot ${this.slot}: ${this.path} is neither a regular file nor a block device`, { details: { path: this.path } });
  }

  async open(): Promise<SlotHandle> {
    const cap = await this.capacity();
    let fh: FileHandle;
    try {
      fh = await open(this.path, 'r+');
    } catch (cause) {
      throw new SlotflipError('HAL_SLOT_OPEN', `slot ${this.slot}: cannot open ${this.path} for writing (${(cause as NodeJS.ErrnoException).code ?? 'error'})`, { cause, details: { path: this.path } });
    }
    let direct: FileHandle | undefined;
    try {
      direct = await open(this.path, constants.O_RDWR | constants.O_DIRECT);
    } catch {
      // refused (EINVAL on older tmpfs and some FUSE/overlay filesystems): buffered writes only
    }
    return new FileSlotHandle(fh, cap, this.path, direct);
  }
}

/** Size of a block device: sysfs `size` (512-byte sectors), else `blockdev --getsize64`. */
export async function blockDeviceSize(path: string, opts: { runner?: ToolRunner; sysfsRoot?: string; blockdevTool?: string } = {}): Promise<number> {
  const name = basename(await realpath(path));
  try {
    const text = (await readFile(join(opts.sysfsRoot ?? '/sys', 'class', 'block', name, 'size'), 'utf8')).trim();
    if (/^\d+$/.test(text)) return Number(text) * 512;
  } catch {
    // no sysfs entry (container, renamed node): ask the tool instead
  }
  const r = await runChecked(opts.runner ?? execTool, 'HAL_SLOT_SIZE', opts.blockdevTool ?? 'blockdev', ['--getsize64', path]);
  const out = r.stdout.trim();
  if (!/^\d+$/.test(out)) throw new SlotflipError('HAL_SLOT_SIZE', `blockdev --getsize64 ${path}: unexpected output`, { details: { path, stdout: out.slice(0, 100) } });
  return Number(out);
}

class FileSlotHandle implements SlotHandle {
  /** bytes written with O_DIRECT so far (tests and benchmarks read it to see which path ran). */
  directBytes = 0;

  constructor(private readonly fh: FileHandle, private readonly cap: number, private readonly path: string, private direct: FileHandle | undefined) {}

  async writeAt(data: Uint8Array, offset: number): Promise<void> {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + data.byteLength > this.cap) {
      throw new SlotflipError('HAL_SLOT_OVERFLOW', `write of ${data.byteLength} bytes at ${offset} does not fit in ${this.path} (${this.cap} bytes)`, { details: { path: this.path, offset, length: data.byteLength, capacity: this.cap } });
    }
    let done = 0;
    const body = data.byteLength - (data.byteLength % DIRECT_ALIGN);
    if (this.direct !== undefined && body > 0 && offset % DIRECT_ALIGN === 0 && isAligned(data)) {
      try {
        done = await this.#writeAll(this.direct, data, 0, body, offset);
        this.directBytes += body;
      } catch (e) {
        // accepted at open, refused at the write (some filesystems): buffered from now on
        if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
        await this.#dropDirect();
        done = 0; // what went direct before the refusal is written again, the same bytes
      }
    }
    await this.#writeAll(this.fh, data, done, data.byteLength, offset);
  }

  /** Writes data[from, to) at `offset + from`; returns `to`. */
  async #writeAll(fh: FileHandle, data: Uint8Array, from: number, to: number, offset: number): Promise<number> {
    let done = from;
    while (done < to) {
      const { bytesWritten } = await fh.write(data, done, to - done, offset + done);
      if (bytesWritten <= 0) throw new SlotflipError('HAL_SLOT_WRITE', `short write to ${this.path} at ${offset + done}`, { details: { path: this.path } });
      done += bytesWritten;
    }
    return done;
  }

  async #dropDirect(): Promise<void> {
    const d = this.direct;
    this.direct = undefined;
    await d?.close().catch(() => undefined);
  }

  async readAt(length: number, offset: number): Promise<Buffer> {
    const want = Math.max(0, Math.min(length, this.cap - offset));
    const buf = Buffer.alloc(want);
    const done = await readFull(this.fh, buf, 0, want, offset);
    return done === want ? buf : buf.subarray(0, done);
  }

  async flush(): Promise<void> {
    await this.fh.sync();
  }

  async close(): Promise<void> {
    await this.#dropDirect();
    await this.fh.close();
  }
}

/** Throws HAL_SLOT_TOO_SMALL before any byte is written when `length` bytes do not fit. */
export async function assertFits(writer: SlotWriter, length: number): Promise<void> {
  const cap = await writer.capacity();
  if (length > cap) {
    throw new SlotflipError('HAL_SLOT_TOO_SMALL', `image of ${length} bytes does not fit slot ${writer.slot} (${writer.path}, ${cap} bytes); use a smaller image or a larger slot`, { details: { path: writer.path, length, capacity: cap } });
  }
}

/** SHA-256 (hex) of the first `length` bytes, read back in 1 MiB blocks (bounded memory). */
export async function hashSlot(handle: SlotHandle, length: number): Promise<string> {
  const h = createHash('sha256');
  for (let off = 0; off < length; off += HASH_BLOCK_BYTES) {
    const n = Math.min(HASH_BLOCK_BYTES, length - off);
    const buf = await handle.readAt(n, off);
    if (buf.length !== n) throw new SlotflipError('HAL_SLOT_SHORT', `slot ended at ${off + buf.length} while hashing ${length} bytes`, { details: { length, at: off + buf.length } });
    h.update(buf);
  }
  return h.digest('hex');
}

/**
 * Slot writers for regular files (emulated boards, tests) and block devices (`/dev/mmcblk0p3`, loop
 * devices). One class: the only difference is how capacity is found.
 *
 * Trade-off: writes go through a plain FileHandle (page cache) and become durable at `flush()` (fsync).
 * Syncing per chunk was measured slower with no safety gain: the slot is marked bad before the first
 * write and only armed after a flush and a read-back hash (see boot-control.ts for the install order).
 */
import { open, stat, readFile, realpath, type FileHandle } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { createHash } from 'node:crypto';
import { SlotflipError } from './errors.js';
import { execTool, runChecked, type ToolRunner } from './exec.js';
import type { SlotName } from './boot-control.js';
import type { SlotHandle, SlotWriter } from './slot-writer.js';

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
    return new FileSlotHandle(fh, cap, this.path);
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
  constructor(private readonly fh: FileHandle, private readonly cap: number, private readonly path: string) {}

  async writeAt(data: Uint8Array, offset: number): Promise<void> {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + data.byteLength > this.cap) {
      throw new SlotflipError('HAL_SLOT_OVERFLOW', `write of ${data.byteLength} bytes at ${offset} does not fit in ${this.path} (${this.cap} bytes)`, { details: { path: this.path, offset, length: data.byteLength, capacity: this.cap } });
    }
    let done = 0;
    while (done < data.byteLength) {
      const { bytesWritten } = await this.fh.write(data, done, data.byteLength - done, offset + done);
      if (bytesWritten <= 0) throw new SlotflipError('HAL_SLOT_WRITE', `short write to ${this.path} at ${offset + done}`, { details: { path: this.path } });
      done += bytesWritten;
    }
  }

  async readAt(length: number, offset: number): Promise<Buffer> {
    const want = Math.max(0, Math.min(length, this.cap - offset));
    const buf = Buffer.alloc(want);
    let done = 0;
    while (done < want) {
      const { bytesRead } = await this.fh.read(buf, done, want - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done === want ? buf : buf.subarray(0, done);
  }

  async flush(): Promise<void> {
    await this.fh.sync();
  }

  async close(): Promise<void> {
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

/**
 * The slot read-back (step 4, Verify): after the installer wrote and flushed the slot, read the image
 * back FROM THE MEDIUM and check its length and SHA-256 against the signed payload; on a mismatch,
 * name the first chunk that differs (its index, byte offset and both hashes).
 *
 * Trade-off: an ordinary read right after the write returns the page cache — the bytes we just
 * wrote — not what the flash kept, so flash that acknowledged fsync and kept nothing would pass. By
 * path, the slot is therefore opened with O_DIRECT and read in 4096-aligned blocks into a
 * page-aligned buffer. Node has no aligned allocator (a Buffer of 1 MiB comes from malloc, 16-byte
 * aligned); WebAssembly memory is mapped by V8 page-aligned, so the buffer is a view of one. Where
 * O_DIRECT is refused (tmpfs, some FUSE/overlay filesystems: EINVAL) the read-back falls back to
 * ordinary reads and says so in a debug log. Through a SlotWriter handle (`source: 'handle'`, what
 * injected fault-testing slots need) reads are whatever that writer does.
 *
 * Error code (stable): DAEMON_VERIFY_MISMATCH (details: path, and chunk/offset/expected/actual when
 * a chunk differs).
 */
import { createHash, type Hash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import type { Logger } from 'pino';
import { SlotflipError } from '../../hal/errors.js';
import type { SlotWriter } from '../../hal/slot-writer.js';
import { alignedBuffer, DIRECT_ALIGN } from '../../hal/aligned.js';
import type { PayloadInfo } from '../../manifests/types.js';
import { nodeFs } from '../../hal/builtins.js';
const { constants } = nodeFs;

export { alignedBuffer, DIRECT_ALIGN } from '../../hal/aligned.js';
const PIECE = 1 << 20;

export interface VerifyOptions {
  /** 'path' (default for hal's own slot writers, see compose): a fresh O_DIRECT descriptor on the
   * slot's file or block device; 'handle': the SlotWriter's own readAt. Default 'handle'. */
  source?: 'path' | 'handle';
  log?: Logger;
}

/** Reads bytes [offset, offset+length) of the slot; `direct` says whether the page cache was bypassed.
 * The result may be a view of a buffer the next read reuses: consume it before reading again. */
export interface Reader {
  read(length: number, offset: number): Promise<Buffer>;
  /** Optional read-ahead: starts reading [offset, offset+length) now, into a buffer other than the one
   * the last `read` returned, so that the next `read` of exactly that range finds it read (or in
   * flight) while the caller is still hashing the last one. A `read` of any other range first lets it
   * finish and discards it. Only for ranges the caller may read now (the read-back: behind the fsync
   * frontier); a failed read-ahead fails the `read` that asks for its range, as that read would have. */
  prefetch?(length: number, offset: number): void;
  close(): Promise<void>;
  readonly direct: boolean;
}

/** Reads the slot by path: O_DIRECT into two reused page-aligned 1 MiB buffers, one read ahead while
 * the caller hashes the other (buffered where the filesystem refuses O_DIRECT). A piece's aligned
 * window must fit 1 MiB. At most one read is in flight at any time. */
export async function pathReader(path: string, log: Logger | undefined): Promise<Reader> {
  let fh: FileHandle;
  let direct = false;
  const buffered = async (why: string): Promise<FileHandle> => {
    log?.debug({ path, reason: why }, 'read-back: O_DIRECT not supported here, reading through the page cache');
    return open(path, 'r');
  };
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_DIRECT);
    direct = true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
    fh = await buffered('open with O_DIRECT: EINVAL');
  }
  // one aligned block, two halves: the buffer the last read returned, and the read-ahead's
  const block = alignedBuffer(2 * PIECE);
  const bufs = [block.subarray(0, PIECE), block.subarray(PIECE)] as const;
  /** the half the last read returned */
  let current = 0;
  let ahead: { length: number; offset: number; half: number; result: Promise<Buffer> } | undefined;
  const readInto = async (buf: Buffer, length: number, offset: number): Promise<Buffer> => {
    if (!direct) {
      if (length > buf.length) throw new Error(`read-back piece of ${length} bytes exceeds the buffer`);
      const { bytesRead } = await fh.read(buf, 0, length, offset);
      return buf.subarray(0, bytesRead);
    }
    // aligned window around [offset, offset+length); the caller's pieces are aligned except the
    // last, which ends at the image's size
    const base = offset - (offset % DIRECT_ALIGN);
    const span = Math.ceil((offset + length - base) / DIRECT_ALIGN) * DIRECT_ALIGN;
    if (span > buf.length) throw new Error(`read-back piece of ${length} bytes exceeds the aligned buffer`);
    let n: number;
    try {
      ({ bytesRead: n } = await fh.read(buf, 0, span, base));
    } catch (e) {
      // some filesystems accept the flag at open and refuse the read
      if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
      await fh.close();
      fh = await buffered('read with O_DIRECT: EINVAL');
      direct = false;
      return readInto(buf, length, offset);
    }
    const end = Math.min(base + n, offset + length);
    // a view, not a copy: no allocation per read (the caller consumes it before the next read)
    return buf.subarray(offset - base, Math.max(offset - base, end - base));
  };
  const reader: Reader = {
    get direct() {
      return direct;
    },
    async read(length, offset) {
      const a = ahead;
      ahead = undefined;
      if (a !== undefined && a.length === length && a.offset === offset) {
        current = a.half;
        return a.result;
      }
      // another range: the read-ahead (if any) ends first, one read at a time
      if (a !== undefined) await a.result.catch(() => undefined);
      return readInto(bufs[current]!, length, offset);
    },
    prefetch(length, offset) {
      if (ahead !== undefined) return;
      const half = current ^ 1;
      const result = readInto(bufs[half]!, length, offset);
      result.catch(() => undefined); // (its error reaches the read that takes it)
      ahead = { length, offset, half, result };
    },
    async close() {
      const a = ahead;
      ahead = undefined;
      if (a !== undefined) await a.result.catch(() => undefined);
      await fh.close();
    },
  };
  return reader;
}

async function handleReader(slot: SlotWriter): Promise<Reader> {
  const h = await slot.open();
  return { direct: false, read: (l, o) => h.readAt(l, o), close: () => h.close() };
}

/**
 * Reads `payload.size` bytes back from the slot and checks them against the signed payload: each
 * chunk's SHA-256 (the first that differs is named) and the whole image's. Read-only. Throws
 * DAEMON_VERIFY_MISMATCH with the slot path when the slot is too small, reads short, or differs.
 */
export async function verifySlotImage(slot: SlotWriter, payload: PayloadInfo, options: VerifyOptions = {}): Promise<void> {
  const cap = await slot.capacity();
  if (cap < payload.size) {
    throw new SlotflipError('DAEMON_VERIFY_MISMATCH', `slot ${slot.slot} (${slot.path}) holds ${cap} bytes, less than the image's ${payload.size}`, { details: { path: slot.path } });
  }
  const reader = options.source === 'path' ? await pathReader(slot.path, options.log) : await handleReader(slot);
  try {
    const whole = createHash('sha256');
    // each chunk is checked as its last byte arrives (when the index lists chunks), so a mismatch
    // is named where it is and reported without reading the rest
    const chunked = payload.chunks.length > 0 && payload.chunkSize > 0;
    let chunk: Hash | undefined = chunked ? createHash('sha256') : undefined;
    let chunkIndex = 0;
    let chunkFill = 0;
    const chunkLen = (i: number): number => Math.min(payload.chunkSize, payload.size - i * payload.chunkSize);
    const closeChunk = (): void => {
      const actual = chunk!.digest('hex');
      const expected = payload.chunks[chunkIndex]?.sha256;
      if (expected !== undefined && actual !== expected) {
        const offset = chunkIndex * payload.chunkSize;
        throw new SlotflipError('DAEMON_VERIFY_MISMATCH', `slot ${slot.slot} (${slot.path}) read back from the medium${reader.direct ? '' : ' (through the page cache)'} differs in chunk ${chunkIndex} (bytes ${offset}..${offset + chunkLen(chunkIndex) - 1}): SHA-256 ${actual}, signed ${expected}; the write did not land (failing flash?), the image will be written again on the next attempt`, {
          details: { path: slot.path, chunk: chunkIndex, offset, expected, actual, direct: reader.direct },
        });
      }
      chunkIndex++;
      chunkFill = 0;
      chunk = createHash('sha256');
    };
    for (let off = 0; off < payload.size; off += PIECE) {
      const len = Math.min(PIECE, payload.size - off);
      const buf = await reader.read(len, off);
      if (buf.length !== len) throw new SlotflipError('DAEMON_VERIFY_MISMATCH', `slot ${slot.slot} (${slot.path}): short read at ${off + buf.length}`, { details: { path: slot.path, offset: off + buf.length } });
      whole.update(buf);
      let p = 0;
      while (chunked && p < buf.length) {
        const take = Math.min(buf.length - p, chunkLen(chunkIndex) - chunkFill);
        chunk!.update(buf.subarray(p, p + take));
        chunkFill += take;
        p += take;
        if (chunkFill === chunkLen(chunkIndex)) closeChunk();
      }
    }
    const got = whole.digest('hex');
    if (got !== payload.sha256) {
      throw new SlotflipError('DAEMON_VERIFY_MISMATCH', `slot ${slot.slot} (${slot.path}) read back with SHA-256 ${got}, expected ${payload.sha256}; the write did not land, the image will be written again on the next attempt`, {
        details: { path: slot.path, expected: payload.sha256, actual: got, direct: reader.direct },
      });
    }
  } finally {
    await reader.close();
  }
}

/**
 * A minimal SlotWriter over a regular file or a block device, for the installer's tests and bench
 * (hal/file-slot.ts is the production one; this keeps the install lane independent of it).
 * Capacity: the configured size for files, /sys/class/block/<dev>/size for block devices.
 */
import { open, readFile, realpath, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import type { SlotName } from '../../hal/boot-control.js';
import type { SlotHandle, SlotWriter } from '../../hal/slot-writer.js';

export interface PathSlotOptions {
  /** capacity of a file slot; ignored for block devices. Defaults to the file's current size. */
  size?: number;
  /** counts writeAt calls and bytes (tests assert on them). */
  stats?: { writes: number; bytes: number; flushes: number };
}

export function createPathSlot(slot: SlotName, path: string, options: PathSlotOptions = {}): SlotWriter {
  return {
    slot,
    path,
    async capacity() {
      const st = await stat(path);
      if (st.isBlockDevice()) {
        const dev = basename(await realpath(path));
        return Number((await readFile(`/sys/class/block/${dev}/size`, 'utf8')).trim()) * 512;
      }
      return options.size ?? st.size;
    },
    async open(): Promise<SlotHandle> {
      const fh = await open(path, 'r+');
      const stats = options.stats;
      return {
        async writeAt(data, offset) {
          let done = 0;
          while (done < data.byteLength) {
            const { bytesWritten } = await fh.write(data, done, data.byteLength - done, offset + done);
            done += bytesWritten;
          }
          if (stats) {
            stats.writes++;
            stats.bytes += data.byteLength;
          }
        },
        async readAt(length, offset) {
          const buf = Buffer.allocUnsafeSlow(length);
          let got = 0;
          while (got < length) {
            const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
            if (bytesRead === 0) break;
            got += bytesRead;
          }
          return got === length ? buf : buf.subarray(0, got);
        },
        async flush() {
          await fh.datasync();
          if (stats) stats.flushes++;
        },
        async close() {
          await fh.close();
        },
      };
    },
  };
}

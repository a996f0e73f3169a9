/**
 * Slot writers: where image bytes go. Regular files (emulated boards, tests) and block devices
 * (`/dev/mmcblk0p3`, loop devices in tests) behind one interface.
 *
 * Writes are positional and NOT durable until `flush()` resolves; a crash before that may leave any
 * subset of them, torn. That is safe because the slot is marked bad before the first write and only
 * armed after a flush and a read-back hash.
 */
import type { SlotName } from './boot-control.js';

export interface SlotWriter {
  readonly slot: SlotName;
  /** file or device path. */
  readonly path: string;
  /** Capacity in bytes (a block device's size, or a file slot's configured size). Read-only. */
  capacity(): Promise<number>;
  /** Opens for positional read/write without truncating. Throws HAL_SLOT_OPEN with the path. */
  open(): Promise<SlotHandle>;
}

export interface SlotHandle {
  /** Writes all of `data` at `offset`. Not durable until `flush`. */
  writeAt(data: Uint8Array, offset: number): Promise<void>;
  /** Reads exactly `length` bytes at `offset` (short only at the end of the slot). */
  readAt(length: number, offset: number): Promise<Buffer>;
  /** fsync: every write before this call is durable once it resolves. */
  flush(): Promise<void>;
  close(): Promise<void>;
}

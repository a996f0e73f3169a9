/**
 * Boot control: the one small surface between the daemon and any bootloader.
 *
 * Slot state (which slot booted, which is primary) and boot state (good / trial / bad) are kept apart,
 * as RAUC does. Every mutating method is ONE atomic write in the bootloader's own terms (one
 * `fw_setenv -s` call, one `grub-editenv set` call, one rename on the boot partition), is idempotent,
 * and verifies that what it wrote reads back. A crash before the write leaves the old state, after it
 * the new one; there is no in-between a bootloader could see.
 *
 * Install order the daemon follows (and the contract suite checks is safe at every step):
 *   markBad(target) → write image → verify → armTrial(target, n) → reboot → (healthy) commit(target)
 *                                                                          → (unhealthy) markBad(target)
 */
export type SlotName = 'A' | 'B';
export const SLOT_NAMES: readonly SlotName[] = ['A', 'B'];

export function otherSlot(slot: SlotName): SlotName {
  return slot === 'A' ? 'B' : 'A';
}

export function isSlotName(v: unknown): v is SlotName {
  return v === 'A' || v === 'B';
}

export interface SlotBootState {
  /**
   * good: the bootloader may choose it and it is confirmed;
   * trial: armed for a bounded number of trial boots (`triesLeft`), not yet confirmed;
   * bad: the bootloader never chooses it.
   */
  state: 'good' | 'trial' | 'bad';
  /** remaining trial boots when `state` is 'trial'. */
  triesLeft?: number;
  /** true when this slot is the first the bootloader will try on the next power-on. */
  primary: boolean;
}

export interface BootControl {
  /** Backend name as registered (`emulated`, `uboot`, `grub`, ...). */
  readonly backend: string;

  /** The slot the running system was booted from (kernel command line or the bootloader's record).
   * Read-only; throws HAL_BOOTED_SLOT_UNKNOWN when it cannot be told. */
  bootedSlot(): Promise<SlotName>;

  /** Boot state of `slot` as the bootloader will see it on the next power-on. Read-only. */
  slotState(slot: SlotName): Promise<SlotBootState>;

  /** Make `slot` unbootable: the bootloader never chooses it until `armTrial`. One atomic write,
   * idempotent. Called before any byte of the slot changes: a half-written slot must never boot.
   * Refuses (HAL_MARK_BOOTED_BAD) to mark the booted slot bad while the other slot is not good. */
  markBad(slot: SlotName): Promise<void>;

  /** On the next power-on try `slot` first, at most `tries` times; when no boot confirms it, the
   * bootloader falls back to the other slot (which must be good). One atomic write, idempotent. */
  armTrial(slot: SlotName, tries: number): Promise<void>;

  /** Make `slot` the confirmed primary: good, chosen first, no counting. One atomic write,
   * idempotent (committing a committed slot changes nothing). */
  commit(slot: SlotName): Promise<void>;
}

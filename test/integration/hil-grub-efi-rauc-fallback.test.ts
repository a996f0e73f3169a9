/**
 * GRUB under UEFI inside `npm test`, rauc convention, the "fallback" scenarios (SCENARIO_GROUPS in
 * test/hil/tap-lanes.ts): real OVMF + qemu-system-x86_64 (TCG) starting a grub-mkstandalone x86_64-efi
 * GRUB from the ESP, which selects the slot from the grubenv the HAL's `grub` backend wrote with
 * grub-editenv. ~3 s per power-on; the whole lane is test/hil/grub-efi.hil.ts.
 */
import t from 'tap';
import { registerLane, SCENARIO_GROUPS } from '../hil/tap-lanes.js';
import { createGrubHilBoard } from '../hil/grub-board.js';

registerLane(t, {
  label: 'grub-efi/ovmf/rauc',
  makeBoard: (dir, tracker) => createGrubHilBoard({ dir, convention: 'rauc', tracker, platform: 'ovmf' }),
  only: SCENARIO_GROUPS.fallback,
});

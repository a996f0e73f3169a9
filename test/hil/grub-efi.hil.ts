/**
 * GRUB under UEFI (`npm run test:hil`): OVMF + a grub-mkstandalone x86_64-efi image as the ESP's
 * BOOTX64.EFI running the same A/B grub.cfg as the grub-emu lane (RAUC and greenboot conventions),
 * save_env on the FAT ESP. ~3 s per power-on under TCG; `npm test` runs the same scenarios split over
 * test/integration/hil-grub-efi-*.test.ts.
 */
import t from 'tap';
import { registerLane } from './tap-lanes.js';
import { createGrubHilBoard } from './grub-board.js';

for (const convention of ['rauc', 'greenboot'] as const) {
  registerLane(t, {
    label: `grub-efi/ovmf/${convention}`,
    makeBoard: (dir, tracker) => createGrubHilBoard({ dir, convention, tracker, platform: 'ovmf' }),
  });
}

/**
 * Full GRUB lane (`npm run test:hil`): every scenario, RAUC and greenboot conventions, Debian's real
 * GRUB as grub-emu, the HAL's own `grub` backend writing with grub-editenv.
 */
import t from 'tap';
import { registerLane } from './tap-lanes.js';
import { createGrubHilBoard } from './grub-board.js';

for (const convention of ['rauc', 'greenboot'] as const) {
  registerLane(t, {
    label: `grub-emu/${convention}`,
    makeBoard: (dir, tracker) => createGrubHilBoard({ dir, convention, tracker }),
  });
}

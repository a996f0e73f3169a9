/**
 * Fast subset of the GRUB HIL lane inside `npm test`: Debian's real GRUB (grub-emu) selects slots from
 * the grubenv the HAL's `grub` backend wrote with grub-editenv. Full lane: test/hil/grub-emu.hil.ts.
 */
import t from 'tap';
import { registerLane } from '../hil/tap-lanes.js';
import { createGrubHilBoard } from '../hil/grub-board.js';

const only = ['good update committed', 'corrupt image never booted', 'kernel that never comes up falls back after its tries', 'health check fails then rollback'];
for (const convention of ['rauc', 'greenboot'] as const) {
  registerLane(t, { label: `grub-emu/${convention}`, makeBoard: (dir, tracker) => createGrubHilBoard({ dir, convention, tracker }), only });
}

/**
 * Full U-Boot lane (`npm run test:hil`): every scenario, RAUC and Mender conventions, Debian's real
 * U-Boot under qemu-system-aarch64 (TCG), the HAL's own `uboot` backend writing with fw_setenv.
 */
import t from 'tap';
import { registerLane } from './tap-lanes.js';
import { createUbootHilBoard } from './uboot-board.js';

for (const convention of ['rauc', 'mender'] as const) {
  registerLane(t, {
    label: `u-boot/${convention}`,
    makeBoard: (dir, tracker) => createUbootHilBoard({ dir, convention, tracker }),
  });
}

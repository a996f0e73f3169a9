/**
 * Fast subset of the U-Boot HIL lane inside `npm test`, RAUC convention: Debian's real U-Boot
 * (qemu_arm64, TCG) selects slots from the environment the HAL's `uboot` backend wrote with fw_setenv.
 * The full lane is test/hil/uboot.hil.ts.
 */
import t from 'tap';
import { registerLane } from '../hil/tap-lanes.js';
import { createUbootHilBoard } from '../hil/uboot-board.js';

registerLane(t, {
  label: 'u-boot/rauc',
  makeBoard: (dir, tracker) => createUbootHilBoard({ dir, convention: 'rauc', tracker }),
  only: ['good update committed', 'kernel that never comes up falls back after its tries', 'torn environment write keeps the old state'],
});

/**
 * Fast subset of the U-Boot HIL lane inside `npm test`, Mender convention (bootcount/bootlimit/
 * altbootcmd). The full lane is test/hil/uboot.hil.ts.
 */
import t from 'tap';
import { registerLane } from '../hil/tap-lanes.js';
import { createUbootHilBoard } from '../hil/uboot-board.js';

registerLane(t, {
  label: 'u-boot/mender',
  makeBoard: (dir, tracker) => createUbootHilBoard({ dir, convention: 'mender', tracker }),
  only: ['health check fails then rollback', 'armed image that fails the bootloader check falls back', 'power cut while writing the image, then resume'],
});

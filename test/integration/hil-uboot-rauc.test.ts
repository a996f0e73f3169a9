/**
 * The U-Boot HIL lane inside `npm test`, RAUC convention, every scenario: Debian's real U-Boot
 * (qemu_arm64, TCG) selects slots from the environment the HAL's `uboot` backend wrote with fw_setenv.
 * Same scenarios as test/hil/uboot.hil.ts.
 */
import t from 'tap';
import { registerLane } from '../hil/tap-lanes.js';
import { createUbootHilBoard } from '../hil/uboot-board.js';

registerLane(t, { label: 'u-boot/rauc', makeBoard: (dir, tracker) => createUbootHilBoard({ dir, convention: 'rauc', tracker }) });

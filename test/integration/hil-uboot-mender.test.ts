/**
 * The U-Boot HIL lane inside `npm test`, Mender convention (bootcount/bootlimit/altbootcmd), every
 * scenario. Same scenarios as test/hil/uboot.hil.ts.
 */
import t from 'tap';
import { registerLane } from '../hil/tap-lanes.js';
import { createUbootHilBoard } from '../hil/uboot-board.js';

registerLane(t, { label: 'u-boot/mender', makeBoard: (dir, tracker) => createUbootHilBoard({ dir, convention: 'mender', tracker }) });

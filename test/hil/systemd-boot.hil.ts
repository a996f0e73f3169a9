/**
 * systemd-boot lane (`npm run test:hil`): OVMF + Debian's real systemd-bootx64.efi with boot counting
 * in entry file names, the HAL's own `systemd-boot` backend renaming entries. 3–15 s per power-on
 * under TCG, so this lane is not part of `npm test`.
 */
import t from 'tap';
import { registerLane } from './tap-lanes.js';
import { createSdbootHilBoard } from './sdboot-board.js';

registerLane(t, { label: 'systemd-boot/ovmf', makeBoard: (dir, tracker) => createSdbootHilBoard({ dir, tracker }) });

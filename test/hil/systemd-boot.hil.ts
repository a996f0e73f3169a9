/**
 * systemd-boot lane (`npm run test:hil`): OVMF + Debian's real systemd-bootx64.efi with boot counting
 * in entry file names, the HAL's own `systemd-boot` backend renaming entries. ~3 s per power-on under
 * TCG; `npm test` runs the same scenarios split over test/integration/hil-sdboot-*.test.ts.
 */
import t from 'tap';
import { registerLane } from './tap-lanes.js';
import { createSdbootHilBoard } from './sdboot-board.js';

registerLane(t, { label: 'systemd-boot/ovmf', makeBoard: (dir, tracker) => createSdbootHilBoard({ dir, tracker }) });

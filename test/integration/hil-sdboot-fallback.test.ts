/**
 * systemd-boot inside `npm test`, the "fallback" scenarios (SCENARIO_GROUPS in test/hil/tap-lanes.ts):
 * real OVMF + qemu-system-x86_64 (TCG) starting Debian's systemd-bootx64.efi, which counts boots by
 * renaming the entries the HAL's `systemd-boot` backend wrote. ~3 s per power-on; the whole lane is
 * test/hil/systemd-boot.hil.ts.
 */
import t from 'tap';
import { registerLane, SCENARIO_GROUPS } from '../hil/tap-lanes.js';
import { createSdbootHilBoard } from '../hil/sdboot-board.js';

registerLane(t, {
  label: 'systemd-boot/ovmf',
  makeBoard: (dir, tracker) => createSdbootHilBoard({ dir, tracker }),
  only: SCENARIO_GROUPS.fallback,
});

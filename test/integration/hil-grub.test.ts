/**
 * The GRUB HIL lane inside `npm test`, every scenario, RAUC and greenboot conventions: Debian's real
 * GRUB (grub-emu) selects slots from the grubenv the HAL's `grub` backend wrote with grub-editenv.
 * Same scenarios as test/hil/grub-emu.hil.ts. Also checks that SCENARIO_GROUPS (how the OVMF lanes are
 * split over files) covers every scenario exactly once.
 */
import t from 'tap';
import { registerLane, SCENARIO_GROUPS } from '../hil/tap-lanes.js';
import { SCENARIOS } from '../hil/scenarios.js';
import { createGrubHilBoard } from '../hil/grub-board.js';

t.test('SCENARIO_GROUPS hold every scenario exactly once', async (t) => {
  const grouped = Object.values(SCENARIO_GROUPS).flat();
  t.same([...grouped].sort(), SCENARIOS.map((s) => s.name).sort());
});

for (const convention of ['rauc', 'greenboot'] as const) {
  registerLane(t, { label: `grub-emu/${convention}`, makeBoard: (dir, tracker) => createGrubHilBoard({ dir, convention, tracker }) });
}

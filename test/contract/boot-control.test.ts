// Boot-control contract (test/contract/boot-control-suite.ts) for the backends that need no external
// tools; the uboot and grub lanes are boot-control-uboot.test.ts and boot-control-grub.test.ts.
import t from 'tap';
import { stat } from 'node:fs/promises';
import { createBoard, type BoardBackend } from '../../hal/board.js';
import { runBootControlContract } from './boot-control-suite.js';

const SLOT_SIZE = 64 * 1024;

runBootControlContract(t, [
  { name: 'emulated', backend: 'emulated', tearable: false },
  { name: 'custom', backend: 'custom', tearable: false },
  { name: 'rpi-tryboot', backend: 'rpi-tryboot', tearable: false },
  { name: 'systemd-boot', backend: 'systemd-boot', tearable: false },
]);

t.test('boards reject unknown backends and conventions', async (t) => {
  const dir = t.testdir();
  await t.rejects(createBoard(dir, { backend: 'lilo' as BoardBackend, slotSize: SLOT_SIZE }), { code: 'HAL_BAD_ARGUMENT' });
  await t.rejects(createBoard(dir, { backend: 'uboot', convention: 'greenboot', slotSize: SLOT_SIZE }), { code: 'HAL_BAD_ARGUMENT' });
  await t.rejects(createBoard(dir, { backend: 'grub', slotSize: 100 }), { code: 'HAL_BAD_ARGUMENT' });
  t.equal((await stat(dir)).isDirectory(), true);
});

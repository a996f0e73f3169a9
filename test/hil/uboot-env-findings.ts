/**
 * The libubootenv ↔ U-Boot findings as tap subtests (registered by the integration test and the full
 * lane): what real U-Boot does with environments the HAL writes through fw_setenv.
 */
import type { Test } from 'tap';
import { decodeEnvBlock, pickRedundantCopy } from '../../hal/uboot-env.js';
import { createBootControl } from '../../hal/registry.js';
import { EmulatorTracker } from './emulator.js';
import { createFlashEnvBoard } from './uboot-flash-env.js';
import { createUbootBoard, readEnvCopies } from './uboot-board.js';
import { ENV_OFFSETS } from './disk-image.js';
import { writeAt } from './disk-image.js';
import { join } from 'node:path';

export function registerEnvFindings(t: Test): void {
  t.test('flash env, one copy as built: U-Boot loads what the HAL wrote', async (t) => {
    const tracker = new EmulatorTracker();
    t.teardown(() => tracker.killAll());
    const b = await createFlashEnvBoard(t.testdir(), 1);
    await b.control.armTrial('B', 2);
    const r = await b.powerOn(tracker);
    t.notOk(r.usedDefaultEnv, 'U-Boot accepted the environment (CRC ok)');
    t.same(r.seen, { BOOT_ORDER: 'B A', BOOT_A_LEFT: '3', BOOT_B_LEFT: '2', slotflip_trial: 'B' }, 'U-Boot sees the armed trial');
  });

  t.test('flash env, redundant fw_env.config on a non-redundant U-Boot: HAL write verifies, U-Boot silently ignores it', async (t) => {
    const tracker = new EmulatorTracker();
    t.teardown(() => tracker.killAll());
    const b = await createFlashEnvBoard(t.testdir(), 2);
    await b.control.armTrial('B', 2); // read-back through fw_printenv passes: the HAL cannot tell
    t.same(await b.control.slotState('B'), { state: 'trial', triesLeft: 2, primary: true }, 'the HAL believes B is armed');
    const r = await b.powerOn(tracker, 6_000);
    t.ok(r.usedDefaultEnv, 'U-Boot: "bad CRC, using default environment"');
    t.equal(r.seen, undefined, 'the A/B state never reached the bootloader');
  });

  t.test('redundant env on disk: flags fw_setenv writes, and the copy U-Boot picks', async (t) => {
    const tracker = new EmulatorTracker();
    t.teardown(() => tracker.killAll());
    const dir = t.testdir();
    const board = await createUbootBoard({ dir, convention: 'rauc' });
    const control = createBootControl({ type: 'uboot', convention: 'rauc', fwEnvConfig: board.fwEnvConfig, cmdline: { path: join(dir, 'none') } });
    let [c0, c1] = await readEnvCopies(board.disk);
    // 1) HAL writes → libubootenv on a file/block device uses INCREMENTING flags (not U-Boot-flash 1/0)
    await control.markBad('B');
    [c0, c1] = await readEnvCopies(board.disk);
    t.same([decodeEnvBlock(c0, true).flag, decodeEnvBlock(c1, true).flag], [1, 2], 'mkenvimage -r wrote flag 1; the first fw_setenv writes copy 1 with flag 2');
    await control.armTrial('B', 2);
    [c0, c1] = await readEnvCopies(board.disk);
    const d0 = decodeEnvBlock(c0, true);
    const d1 = decodeEnvBlock(c1, true);
    t.ok(d0.crcOk && d1.crcOk, 'both copies valid');
    t.same([d0.flag, d1.flag], [3, 2], 'the next write goes to copy 0 with flag 3: incrementing, not U-Boot-flash 1/0');
    let r = await board.powerOn(tracker);
    t.equal(r.envCopy, String(pickRedundantCopy(d0, d1)), 'boot.scr (env_import_redund rule) loads the copy the HAL model picks');
    t.equal(r.outcome.kind === 'booted' && r.outcome.slot, 'B', 'and boots the armed slot');
    // 2) wrap-around: newest copy has flag 0xff; the next fw_setenv must write 0x00 and win
    [c0, c1] = await readEnvCopies(board.disk);
    const newest = pickRedundantCopy(decodeEnvBlock(c0, true), decodeEnvBlock(c1, true))!;
    const oldest = newest === 0 ? 1 : 0;
    await writeAt(board.disk, ENV_OFFSETS[newest] + 4, Buffer.from([0xff])); // flag byte is outside the CRC
    await writeAt(board.disk, ENV_OFFSETS[oldest] + 4, Buffer.from([0xfe]));
    await control.commit('B');
    [c0, c1] = await readEnvCopies(board.disk);
    const w = [decodeEnvBlock(c0, true), decodeEnvBlock(c1, true)] as const;
    t.equal(w[oldest].flag, 0, 'libubootenv wraps 0xff → 0x00');
    t.equal(pickRedundantCopy(w[0], w[1]), oldest, 'the HAL model treats 0x00 after 0xff as newer');
    r = await board.powerOn(tracker);
    t.equal(r.envCopy, String(oldest), 'U-Boot-side rule agrees across the wrap');
    t.equal(r.outcome.kind === 'booted' && r.outcome.slot, 'B', 'and boots the committed slot');
  });
}

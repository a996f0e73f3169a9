/**
 * Bootloader environment faults on emulated U-Boot (redundant env, real fw_printenv/fw_setenv) and
 * GRUB (grub-editenv) boards:
 * - a torn write of one redundant copy: U-Boot and libubootenv fall back to the other copy; the
 *   device boots its committed slot and the next update completes;
 * - both copies corrupt: U-Boot ignores the stored environment and boots with its built-in DEFAULT
 *   environment ("*** Warning - bad CRC, using default environment"; the board's `defaultEnv`, which
 *   boots slot A, then `saveenv` rewrites a copy). libubootenv refuses to read it (fw_printenv exits
 *   non-zero). slotflip must then refuse to change anything, with a HAL_BOOTENV_* code: no slot
 *   written, no environment written, mark-good refused;
 * - GRUB with a corrupt grubenv: load_env fails and grub.cfg's defaults apply; slotflip refuses the
 *   same way;
 * - RAUC's U-Boot convention counts BOOT_x_LEFT down on every boot: ordinary reboots with the daemon
 *   running must not drain the committed slot (the daemon re-commits it each boot, as
 *   `rauc status mark-good` does), so a later update still has a fallback.
 */
import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { boardStatus, corruptEnv, createBoard, powerCycle } from '../../hal/board.js';
import { isCoded } from '../../hal/errors.js';
import { resolveConfig, type Config } from '../../daemon/config.js';
import { createAgent } from '../../daemon/compose.js';
import { runUpdateCycle } from '../../daemon/agent.js';
import { initRepo } from '../../manifests/repo.js';
import { boardHealth } from '../powercut/driver.js';
import { buildFixtures, HARDWARE, SLOT_SIZE, type Fixtures } from '../powercut/harness.js';

const sha = async (p: string) => createHash('sha256').update(await readFile(p)).digest('hex');

async function setup(t: Test, fx: Fixtures, kind: { backend: 'uboot' | 'grub'; convention: string }, scenario = 'good', tries = 2) {
  const dir = t.testdir();
  const boardDir = join(dir, 'board');
  const board = await createBoard(boardDir, { backend: kind.backend, convention: kind.convention, slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
  const mk = (url: string, root: string): Promise<Config> => resolveConfig({
    deviceId: 'env-1', hardware: HARDWARE, stateDir: join(dir, 'state'),
    trust: { shippedRoot: root, sources: [{ type: 'http', url }] },
    board: { slots: { A: { path: board.slots.A, size: SLOT_SIZE }, B: { path: board.slots.B, size: SLOT_SIZE } }, boot: board.bootConfig, tries },
  });
  const config = await mk(`${fx.server.url}${scenario}/stage1/`, fx.roots[scenario as 'good']);
  const agent = (c: Config = config) => createAgent(c, { reboot: async () => { await powerCycle(boardDir); }, health: boardHealth(boardDir) });
  return { dir, boardDir, board, config, mk, agent };
}


t.test('boot environment faults', async (t) => {
  const fx = await buildFixtures(join(t.testdir(), 'fx'));
  t.teardown(() => fx.stop());

  for (const convention of ['rauc', 'mender']) {
    t.test(`uboot/${convention}: a torn write of one redundant copy`, async (t) => {
      const s = await setup(t, fx, { backend: 'uboot', convention });
      for (const which of ['newest', 'oldest'] as const) {
        await corruptEnv(s.boardDir, which);
        const pc = await powerCycle(s.boardDir);
        t.equal(pc.booted, 'A', `${which} copy torn: the committed slot boots from the other copy`);
        t.equal(pc.version, '1.0.0');
      }
      const r = await runUpdateCycle(() => s.agent());
      t.match(r.finished, [{ outcome: 'succeeded', release: { version: '1.1.0' } }], 'the update completes after a torn copy');
      t.equal((await boardStatus(s.boardDir)).images.B.version, '1.1.0');
    });

    t.test(`uboot/${convention}: both copies corrupt`, async (t) => {
      const s = await setup(t, fx, { backend: 'uboot', convention });
      await corruptEnv(s.boardDir, 'both');
      const env0 = await sha(s.board.uboot!.envFile);
      const b0 = await sha(s.board.slots.B);
      // slotflip refuses at the check (the booted slot's state cannot be read, so it is not a known
      // good source): no attempt starts, nothing is written
      const r = await runUpdateCycle(() => s.agent());
      t.equal(r.phase, 'idle');
      t.equal(r.finished.length, 0, 'no attempt started');
      t.match(r.lastCheck, { result: 'failed', detail: /^HAL_BOOTENV_/ }, 'refused with a clear HAL_BOOTENV_* code');
      t.equal(await sha(s.board.slots.B), b0, 'slot B untouched');
      t.equal(await sha(s.board.uboot!.envFile), env0, 'environment not rewritten by slotflip');
      const a = await s.agent();
      const mark = await a.markGood().then(() => undefined, (e: unknown) => e);
      t.ok(isCoded(mark) && /^HAL_BOOTENV_/.test(mark.code), `mark-good refused with HAL_BOOTENV_* (${String(mark)})`);
      // U-Boot: bad CRC on both copies → built-in default environment → slot A
      const pc = await powerCycle(s.boardDir);
      t.match(pc.attempts[0]?.reason, /bad CRC, using default environment/);
      t.equal(pc.booted, 'A', 'U-Boot boots the default environment\'s slot (A, the committed factory slot)');
      const r2 = await runUpdateCycle(() => s.agent());
      if (convention === 'rauc') {
        // RAUC's boot script counts down and runs saveenv: a valid copy exists again, updates work
        t.match(r2.finished.at(-1), { outcome: 'succeeded', release: { version: '1.1.0' } }, 'after saveenv the update completes');
      } else {
        // Mender's bootcount logic saves nothing without a pending upgrade: the stored environment
        // stays corrupt and slotflip keeps refusing, safely, until it is repaired
        t.equal(r2.finished.length, 0, 'no attempt while the stored environment is corrupt');
        t.match(r2.lastCheck, { result: 'failed', detail: /^HAL_BOOTENV_/ }, 'still refused while the stored environment is corrupt');
        t.equal(await sha(s.board.slots.B), b0, 'slot B still untouched');
      }
    });
  }

  t.test('grub/greenboot: a corrupt grubenv', async (t) => {
    const s = await setup(t, fx, { backend: 'grub', convention: 'greenboot' });
    await corruptEnv(s.boardDir, 'both');
    const b0 = await sha(s.board.slots.B);
    const env0 = await sha(s.board.grub!.envFile);
    const r = await runUpdateCycle(() => s.agent());
    t.equal(r.finished.length, 0, JSON.stringify(r.finished.map((f) => f.reason)));
    t.match(r.lastCheck, { result: 'failed', detail: /^HAL_BOOTENV_/ }, 'refused at the check with a HAL_BOOTENV_* code');
    t.equal(await sha(s.board.slots.B), b0, 'slot B untouched');
    t.equal(await sha(s.board.grub!.envFile), env0, 'grubenv not rewritten by slotflip');
    const pc = await powerCycle(s.boardDir);
    t.match(pc.attempts[0]?.reason, /load_env failed, grub.cfg defaults/);
    t.equal(pc.booted, 'A', 'GRUB boots grub.cfg\'s default (slot A)');
  });

  t.test('uboot/rauc: ordinary reboots do not drain the committed slot', async (t) => {
    const s = await setup(t, fx, { backend: 'uboot', convention: 'rauc' });
    // an empty repository: nothing to install while the device reboots a few times
    const empty = join(s.dir, 'empty');
    await initRepo(empty);
    const idle = await s.mk(`${fx.server.url}none/`, join(empty, 'repository', 'metadata', '1.root.json'));
    const idleAgent = () => createAgent({ ...idle, trust: { ...idle.trust, sources: [{ type: 'dir', path: join(empty, 'repository') }] } }, { reboot: async () => { await powerCycle(s.boardDir); }, health: boardHealth(s.boardDir) });
    // factory power-on left BOOT_A_LEFT=2; two ordinary reboots with the daemon running each time
    for (let i = 0; i < 2; i++) {
      const r = await runUpdateCycle(idleAgent);
      t.equal(r.finished.length, 0, `boot ${i + 1}: nothing to install`);
      const pc = await powerCycle(s.boardDir);
      t.equal(pc.booted, 'A', `reboot ${i + 1} boots A`);
      t.equal(pc.attempts.length, 1, `reboot ${i + 1}: first attempt`);
    }
    await rm(join(s.config.stateDir, 'trusted'), { recursive: true, force: true });
    const r = await runUpdateCycle(() => s.agent());
    t.match(r.finished, [{ outcome: 'succeeded', release: { version: '1.1.0' } }], 'an update still has a fallback (no HAL_NO_FALLBACK)');
  });
});

/**
 * "The bootloader ignored the environment slotflip wrote" (a two-copy fw_env.config against a
 * one-copy U-Boot, a NOR-flash U-Boot behind /dev/mtdblockN, ...), end to end with the real agent,
 * runner and machine on emulated boards whose OS side uses the real backends (fw_setenv/fw_printenv,
 * grub-editenv, files on an ESP).
 *
 * - A real reboot (the boot id changes) into the source slot with the target's trial untouched:
 *   DAEMON_BOOTLOADER_IGNORED_ENV, target marked bad, outcome `failed` (not `rolledBack`).
 * - A real reboot into the source slot after the bootloader drained the trial's tries: still the
 *   existing rollback (DAEMON_TRIAL_NOT_CONFIRMED, `rolledBack`).
 * - A daemon restart without a reboot (same boot id): neither; the reboot is simply issued again.
 * - rpi-tryboot, whose one-shot firmware flag leaves no trace: never claimed.
 */
import t from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { powerCycle, boardStatus, type BoardBackend } from '../../hal/board.js';
import { createBootControl } from '../../hal/registry.js';
import { parseFwPrintenv } from '../../hal/uboot-env.js';
import { execTool, runChecked } from '../../hal/exec.js';
import { runUpdateCycle } from '../../daemon/agent.js';
import { BOOTLOADER_IGNORED_ENV, DEVICE_FAULT_CODES } from '../../daemon/machine.js';
import { runDoctor } from '../../daemon/commands/doctor.js';
import { agentDevice, type AgentDevice } from '../harness/agent-device.js';

type Device = AgentDevice;
const device = (dir: string, backend: BoardBackend, opts: { convention?: string; boots?: boolean } = {}): Promise<Device> => agentDevice(dir, backend, opts);

/** The machine reboots, but its bootloader never reads the environment slotflip wrote: it boots the
 * slot it always boots (the cmdline and every boot file stay as they are). */
const ignoringReboot = (d: Device) => async () => { d.boot.id++; };
/** The machine reboots and the (emulated) bootloader runs its real selection logic. */
const realReboot = (d: Device) => async () => { d.boot.id++; await powerCycle(d.boardDir); };

const BOARDS: { backend: BoardBackend; convention?: string }[] = [
  { backend: 'uboot', convention: 'rauc' },
  { backend: 'uboot', convention: 'mender' },
  { backend: 'grub', convention: 'greenboot' },
  { backend: 'grub', convention: 'rauc' },
  { backend: 'systemd-boot' },
  { backend: 'emulated' },
];

for (const b of BOARDS) {
  const name = `${b.backend}${b.convention ? `/${b.convention}` : ''}`;
  t.test(`${name}: a real reboot the bootloader ignored ends failed with ${BOOTLOADER_IGNORED_ENV}`, async (t) => {
    const d = await device(t.testdir(), b.backend, b);
    const r = await runUpdateCycle(() => d.agent(ignoringReboot(d)));
    t.equal(r.phase, 'idle', 'nothing left pending');
    t.equal(r.finished.length, 1);
    const h = r.finished[0]!;
    t.equal(h.outcome, 'failed', 'a device fault, not a rollback of the release');
    t.equal(h.reason?.code, BOOTLOADER_IGNORED_ENV);
    t.match(h.reason?.message, /did not read the boot environment slotflip wrote.*slotflip doctor/);
    t.ok(r.events.includes('BootedInto') && !r.events.slice(r.events.indexOf('RebootIssued') + 1).includes('Restarted'), 'resumed as a boot into the source, not as "not rebooted yet"');
    t.match(d.events.at(-1), { type: 'UpdateFailed', reason: { code: BOOTLOADER_IGNORED_ENV } }, 'reported as UpdateFailed with the code');
    // the device is safe exactly as after a fallback: target marked bad, source committed and booted
    const bc = createBootControl(d.config.board.boot);
    t.equal(await bc.bootedSlot(), 'A');
    t.match(await bc.slotState('B'), { state: 'bad', primary: false }, 'the ignored trial slot is marked bad');
    t.match(await bc.slotState('A'), { state: 'good', primary: true }, 'the committed slot is untouched');
    const boot = await powerCycle(d.boardDir);
    t.equal(boot.booted, 'A', 'a bootloader that does read the environment now boots the committed slot');
    // not retried: the next check says why, and does not download, arm or reboot again
    const again = await d.agent(ignoringReboot(d)).runOnce();
    t.equal(again.rebooted, false);
    t.match(again.lastCheck?.detail, /bootloader ignored .* trial before/);
    // `slotflip doctor` (which the message points to) says what happened and what to compare
    const report = await runDoctor(d.config, 'config.json', { createBootControl: (c) => createBootControl(c.board.boot), tcpConnect: async () => {}, path: process.env.PATH ?? '' });
    const env = report.checks.find((c) => c.id === 'boot-env');
    t.match(env, { status: 'warn', code: BOOTLOADER_IGNORED_ENV, summary: /was ignored by the bootloader: it rebooted into slot A without consuming a try of slot B/ });
    if (b.backend === 'uboot') t.match(env?.fix, /fw_env\.config.*CONFIG_SYS_REDUNDAND_ENVIRONMENT.*CONFIG_ENV_OFFSET.*\/dev\/mtdN/);
  });
}

t.test('doctor fails boot-env on a two-copy fw_env.config on /dev/mtdblockN, and says to use /dev/mtdN', async (t) => {
  const d = await device(t.testdir(), 'uboot', { convention: 'rauc' });
  const fwEnvConfig = (d.config.board.boot as { fwEnvConfig: string }).fwEnvConfig;
  await writeFile(fwEnvConfig, '/dev/mtdblock1 0x0 0x10000 0x10000\n/dev/mtdblock2 0x0 0x10000 0x10000\n');
  const report = await runDoctor(d.config, 'config.json', { createBootControl: (c) => createBootControl(c.board.boot), tcpConnect: async () => {}, path: process.env.PATH ?? '' });
  t.equal(report.ok, false);
  t.match(report.checks.find((c) => c.id === 'boot-env'), { status: 'fail', code: 'HAL_BOOTENV_CONFIG', summary: /\/dev\/mtdblock1.*use the MTD character device \/dev\/mtd1/, fix: /\/dev\/mtdN, not \/dev\/mtdblockN/ });
  // the daemon refuses at the check (the booted slot's boot state cannot be read, so it is no known
  // good source): no attempt, nothing written, no reboot, the same code in the check's result
  const r = await d.agent(ignoringReboot(d)).runOnce();
  t.equal(r.rebooted, false);
  t.same(r.finished, []);
  t.match(r.lastCheck, { result: 'failed', detail: /^HAL_BOOTENV_CONFIG: / });
  t.ok(DEVICE_FAULT_CODES.includes('HAL_BOOTENV_CONFIG'));
});

t.test('uboot/rauc: two-copy fw_env.config, one-copy U-Boot ("bad CRC, using default environment")', async (t) => {
  // the measured HIL case: the OS side writes a redundant environment (CRC|flag|data), the bootloader
  // reads one copy without a flag byte, finds a bad CRC, boots its default environment (slot A) and
  // saves that default over copy 0 in its own layout. Here the trial's write sits in copy 1, which
  // libubootenv still reads: the evidence is intact and the device fault is claimed. (Had it sat in
  // copy 0, the evidence would be gone and only the conservative fallback verdict, rolledBack, could
  // be given.) Never a success, never a boot of the unconfirmed trial.
  const d = await device(t.testdir(), 'uboot', { convention: 'rauc' });
  const boardFile = join(d.boardDir, 'board.json');
  const desc = JSON.parse(await readFile(boardFile, 'utf8')) as { uboot: { redundant: boolean } };
  desc.uboot.redundant = false;
  await writeFile(boardFile, JSON.stringify(desc));
  const r = await runUpdateCycle(() => d.agent(realReboot(d)));
  t.equal(r.phase, 'idle');
  const log = await readFile(join(d.boardDir, 'boot.log'), 'utf8');
  t.match(log, /bad CRC, using default environment/, 'the bootloader never read what slotflip wrote');
  t.match(r.finished, [{ outcome: 'failed', reason: { code: BOOTLOADER_IGNORED_ENV } }]);
  t.equal((await boardStatus(d.boardDir)).booted, 'A');
  t.match(await createBootControl(d.config.board.boot).slotState('B'), { state: 'bad' });
});

t.test('uboot/rauc: a real reboot after the bootloader drained the tries is still a rollback', async (t) => {
  // the new kernel never comes up: U-Boot's script counts BOOT_B_LEFT down to 0, then boots A
  const d = await device(t.testdir(), 'uboot', { convention: 'rauc', boots: false });
  const r = await runUpdateCycle(() => d.agent(realReboot(d)));
  t.match(r.finished, [{ outcome: 'rolledBack', reason: { code: 'DAEMON_TRIAL_NOT_CONFIRMED' } }]);
  t.match(d.events.at(-1), { type: 'UpdateRolledBack' });
  const env = parseFwPrintenv((await runChecked(execTool, 'TEST', 'fw_printenv', ['-c', (d.config.board.boot as { fwEnvConfig: string }).fwEnvConfig])).stdout);
  t.equal(env.get('BOOT_ORDER'), 'A', 'slot B marked bad (out of BOOT_ORDER)');
  t.equal((await boardStatus(d.boardDir)).booted, 'A');
});

t.test('uboot/rauc: a daemon restart without a reboot is neither: the reboot is issued again', async (t) => {
  const d = await device(t.testdir(), 'uboot', { convention: 'rauc' });
  // the reboot command "returns" but the machine never went down (boot id unchanged)
  const noReboot = async () => {};
  const first = await d.agent(noReboot).runOnce();
  t.equal(first.rebooted, true);
  const armed = JSON.parse(await readFile(join(d.config.stateDir, 'update-record.json'), 'utf8')) as { phase: string; attempt: { armed?: { bootId?: string; target: unknown } } };
  t.equal(armed.phase, 'rebooting');
  t.match(armed.attempt.armed, { bootId: /^00000001-/, target: { state: 'trial', triesLeft: 3, primary: true } }, 'the armed state and boot are saved before the reboot');
  for (let i = 0; i < 2; i++) {
    const again = await d.agent(noReboot).runOnce({ check: false });
    t.same(again.events, ['Restarted', 'RebootIssued'], `restart ${i + 1}: resumes by rebooting again, nothing claimed`);
    t.equal(again.finished.length, 0);
  }
  // then the machine really reboots and the bootloader reads the environment: the trial succeeds
  d.boot.id++;
  await powerCycle(d.boardDir);
  const done = await runUpdateCycle(() => d.agent(realReboot(d)), { check: false });
  t.match(done.finished, [{ outcome: 'succeeded' }]);
  t.equal((await boardStatus(d.boardDir)).booted, 'B');
});

t.test('rpi-tryboot: the one-shot tryboot flag leaves no trace, so "ignored" is never claimed', async (t) => {
  // a reboot without the tryboot mode looks exactly like a tryboot that did not come up: the
  // existing fallback path, never the device-fault code
  const d = await device(t.testdir(), 'rpi-tryboot');
  const r = await runUpdateCycle(() => d.agent(ignoringReboot(d)));
  t.match(r.finished, [{ outcome: 'rolledBack', reason: { code: 'DAEMON_TRIAL_NOT_CONFIRMED' } }]);
  t.notOk(d.events.some((e) => (e['reason'] as { code?: string } | undefined)?.code === BOOTLOADER_IGNORED_ENV));
});

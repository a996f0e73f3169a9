/**
 * The uboot backend refuses a fw_env.config U-Boot cannot see: two copies on /dev/mtdblockN (libubootenv
 * writes incrementing flags there, a NOR-flash U-Boot only understands 1/0 and silently uses its default
 * environment). Real fw_env.config files, real parsing; the tool runner records whether fw_printenv /
 * fw_setenv were ever reached.
 */
import t from 'tap';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fwEnvConfigProblem, parseFwEnvConfig } from '../../hal/uboot-env.js';
import { checkFwEnvConfig } from '../../hal/backends/uboot.js';
import { createBootControl } from '../../hal/registry.js';
import { createBoard } from '../../hal/board.js';
import type { ToolRunner } from '../../hal/exec.js';

const RAUC_ENV = 'BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n';

function recordingRunner(): ToolRunner & { calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    async run(cmd) {
      calls.push(cmd);
      return { code: 0, signal: null, timedOut: false, stdout: cmd.endsWith('fw_printenv') ? RAUC_ENV : '', stderr: '' };
    },
  };
}

t.test('parseFwEnvConfig reads the legacy format and declines what it cannot judge', async (t) => {
  const text = [
    '# MTD device name\tDevice offset\tEnv. size\tFlash sector size\tNumber of sectors',
    '/dev/mtdblock2\t0x0000\t0x10000\t0x10000',
    '',
    '   /dev/mtdblock3   0x0000   0x10000   0x10000   1  ',
  ].join('\n');
  t.same(parseFwEnvConfig(text), [
    { device: '/dev/mtdblock2', fields: ['0x0000', '0x10000', '0x10000'], line: 2 },
    { device: '/dev/mtdblock3', fields: ['0x0000', '0x10000', '0x10000', '1'], line: 4 },
  ]);
  t.same(parseFwEnvConfig('/boot/uboot.env 0x0 0x4000\r\n/boot/uboot.env 0x4000 0x4000\r\n')?.map((c) => c.device), ['/boot/uboot.env', '/boot/uboot.env']);
  t.same(parseFwEnvConfig('# nothing\n\n'), []);
  t.equal(parseFwEnvConfig('uboot:\n  size: 0x4000\n  devices:\n    - path: /dev/mtd2\n'), undefined, 'YAML config: not judged');
  t.equal(parseFwEnvConfig('/dev/mtd2 zero 0x4000\n'), undefined, 'non-numeric field: not judged');
  t.equal(parseFwEnvConfig('/dev/mtd2 0 1 2 3 4 5\n'), undefined, 'too many fields: not judged');
});

t.test('fwEnvConfigProblem: only two copies on an mtdblock device', async (t) => {
  const cfg = (lines: string[]) => fwEnvConfigProblem(parseFwEnvConfig(lines.join('\n'))!);
  const p = cfg(['/dev/mtdblock2 0x0 0x10000 0x10000', '/dev/mtdblock3 0x0 0x10000 0x10000']);
  t.match(p, { device: '/dev/mtdblock2', line: 1, message: /incrementing flag bytes.*NOR-flash U-Boot.*default environment.*use the MTD character device \/dev\/mtd2 instead of \/dev\/mtdblock2/ });
  t.ok(cfg(['/dev/mtd2 0x0 0x10000 0x10000', '/dev/mtdblock3 0x0 0x10000 0x10000']), 'one of the two copies on mtdblock is enough');
  t.equal(cfg(['/dev/mtd2 0x0 0x10000 0x10000', '/dev/mtd3 0x0 0x10000 0x10000']), undefined, 'character devices: 1/0 flags');
  t.equal(cfg(['/dev/mtdblock2 0x0 0x10000 0x10000']), undefined, 'one copy has no flags');
  t.equal(cfg(['/dev/mmcblk0 0x3fe000 0x2000', '/dev/mmcblk0 0x3fc000 0x2000']), undefined, 'MMC: U-Boot compares the flags as a counter');
  t.equal(cfg(['/dev/mtdblock10x 0x0 0x100', '/dev/mtdblock3x 0x0 0x100']), undefined, 'not an mtdblock name');
});

t.test('the uboot backend refuses a two-copy mtdblock fw_env.config before touching the environment', async (t) => {
  const dir = t.testdir();
  const fwEnvConfig = join(dir, 'fw_env.config');
  await writeFile(fwEnvConfig, '# NOR flash, redundant\n/dev/mtdblock3 0x0000 0x10000 0x10000\n/dev/mtdblock4 0x0000 0x10000 0x10000\n');
  const runner = recordingRunner();
  const bc = createBootControl({ type: 'uboot', convention: 'rauc', fwEnvConfig, cmdline: { path: join(dir, 'cmdline'), key: 'rauc.slot' } }, { runner });
  for (const [what, call] of [
    ['slotState', () => bc.slotState('A')],
    ['armTrial', () => bc.armTrial('B', 3)],
    ['markBad', () => bc.markBad('B')],
    ['commit', () => bc.commit('A')],
  ] as [string, () => Promise<unknown>][]) {
    await t.rejects(call(), { code: 'HAL_BOOTENV_CONFIG', message: new RegExp(`${fwEnvConfig}: two environment copies.*/dev/mtdblock3 \\(line 2\\).*use the MTD character device /dev/mtd3`) }, `${what} refused`);
  }
  t.same(runner.calls, [], 'fw_printenv / fw_setenv never ran');
  await t.rejects(checkFwEnvConfig(fwEnvConfig), { code: 'HAL_BOOTENV_CONFIG', details: { path: fwEnvConfig, line: 2, device: '/dev/mtdblock3' } });

  // fixed in place: the next call goes through, without a restart
  await writeFile(fwEnvConfig, '/dev/mtd3 0x0000 0x10000 0x10000\n/dev/mtd4 0x0000 0x10000 0x10000\n');
  t.match(await bc.slotState('A'), { state: 'good', primary: true });
  t.same(runner.calls, ['fw_printenv']);
});

t.test('configs the guard cannot judge or has no quarrel with are left to the tools', async (t) => {
  const dir = t.testdir();
  t.equal(await checkFwEnvConfig(join(dir, 'missing.config')), false, 'unreadable: not judged (fw_printenv reports it)');
  const yaml = join(dir, 'fw_env.yaml');
  await writeFile(yaml, 'uboot:\n  size: 0x10000\n');
  t.equal(await checkFwEnvConfig(yaml), false);
  const one = join(dir, 'one.config');
  await writeFile(one, '/dev/mtdblock3 0x0 0x10000 0x10000\n');
  t.equal(await checkFwEnvConfig(one), true);
  // a real two-copy environment in a file (the emulated board's), through the real fw_printenv
  const board = await createBoard(join(dir, 'board'), { backend: 'uboot', slotSize: 8192 });
  const bc = createBootControl(board.bootConfig);
  t.match(await bc.slotState('A'), { state: 'good' });
});

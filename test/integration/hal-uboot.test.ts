// The uboot backend against the real libubootenv tools (fw_printenv/fw_setenv) and mkenvimage, on
// plain files and on real loop devices, single and redundant environments, both conventions: what the
// backend writes reads back identically through the tools and through our U-Boot block decoder.
import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { readFile, writeFile, open } from 'node:fs/promises';
import { join } from 'node:path';
import { createBootControl } from '../../hal/registry.js';
import { decodeEnvBlock, encodeEnvBlock, parseFwPrintenv, pickRedundantCopy } from '../../hal/uboot-env.js';
import type { ToolRunner } from '../../hal/exec.js';
import { execTool } from '../../hal/exec.js';

const ENV_SIZE = 0x4000;
const hex = (n: number) => '0x' + n.toString(16);

interface Layout {
  name: string;
  redundant: boolean;
  loop: boolean;
  twoFiles?: boolean;
}

const LAYOUTS: Layout[] = [
  { name: 'file, single copy', redundant: false, loop: false },
  { name: 'file, two copies', redundant: true, loop: false },
  { name: 'two files', redundant: true, loop: false, twoFiles: true },
  { name: 'loop device, two copies', redundant: true, loop: true },
];

function attachLoop(t: Test, file: string): string {
  const dev = execFileSync('losetup', ['-f', '--show', file], { encoding: 'utf8' }).trim();
  t.teardown(() => {
    execFileSync('losetup', ['-d', dev]);
  });
  return dev;
}

function fwPrintenv(config: string): Map<string, string> {
  return parseFwPrintenv(execFileSync('fw_printenv', ['-c', config], { encoding: 'utf8' }));
}

interface Env {
  config: string;
  /** [device path, offset] of each copy. */
  copies: Array<[string, number]>;
  cmdline: string;
}

async function makeEnv(t: Test, layout: Layout, initial: Record<string, string>): Promise<Env> {
  const dir = t.testdir();
  const txt = join(dir, 'initial.txt');
  await writeFile(txt, Object.entries(initial).map(([k, v]) => `${k}=${v}\n`).join(''));
  const img = join(dir, 'env.bin');
  execFileSync('mkenvimage', ['-s', hex(ENV_SIZE), ...(layout.redundant ? ['-r'] : []), '-o', img, txt]);
  const one = await readFile(img);
  let copies: Array<[string, number]>;
  if (!layout.redundant) {
    copies = [[img, 0]];
  } else if (layout.twoFiles) {
    const second = join(dir, 'env2.bin');
    await writeFile(second, one);
    copies = [[img, 0], [second, 0]];
  } else {
    await writeFile(img, Buffer.concat([one, one]));
    copies = [[img, 0], [img, ENV_SIZE]];
  }
  if (layout.loop) {
    const dev = attachLoop(t, img);
    copies = copies.map(([, off]) => [dev, off]);
  }
  const config = join(dir, 'fw_env.config');
  await writeFile(config, copies.map(([p, off]) => `${p} ${hex(off)} ${hex(ENV_SIZE)}\n`).join(''));
  const cmdline = join(dir, 'cmdline');
  await writeFile(cmdline, 'root=/dev/mmcblk0p2 rauc.slot=A slotflip.slot=A\n');
  return { config, copies, cmdline };
}

async function readCopy(path: string, off: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(ENV_SIZE);
    await fh.read(b, 0, ENV_SIZE, off);
    return b;
  } finally {
    await fh.close();
  }
}

/** The environment U-Boot would load, decoded by our own block parser. */
async function ubootView(env: Env, redundant: boolean): Promise<Map<string, string>> {
  const blocks = await Promise.all(env.copies.map(([p, off]) => readCopy(p, off)));
  const copies = blocks.map((b) => decodeEnvBlock(b, redundant));
  const active = redundant ? pickRedundantCopy(copies[0]!, copies[1]!) : copies[0]!.crcOk ? 0 : undefined;
  if (active === undefined) throw new Error('no valid copy');
  return copies[active]!.env;
}

t.test('mkenvimage output and our encoder agree byte for byte', async (t) => {
  const dir = t.testdir();
  const env = { BOOT_ORDER: 'A B', BOOT_A_LEFT: '3', bootcmd: 'run x; run y', z: '' };
  await writeFile(join(dir, 'in.txt'), Object.entries(env).map(([k, v]) => `${k}=${v}\n`).join(''));
  for (const redundant of [false, true]) {
    execFileSync('mkenvimage', ['-s', hex(ENV_SIZE), ...(redundant ? ['-r'] : []), '-p', '0', '-o', join(dir, 'out.bin'), join(dir, 'in.txt')]);
    const tool = await readFile(join(dir, 'out.bin'));
    const decoded = decodeEnvBlock(tool, redundant);
    t.ok(decoded.crcOk, `decodes mkenvimage output (redundant=${redundant})`);
    t.same(Object.fromEntries(decoded.env), env);
    t.same(encodeEnvBlock(decoded.env, ENV_SIZE, redundant, redundant ? tool[4] : 1, false), tool, 'same bytes, CRC included');
    t.ok(decodeEnvBlock(encodeEnvBlock(decoded.env, ENV_SIZE, redundant), redundant).crcOk);
  }
});

for (const layout of LAYOUTS) {
  t.test(layout.name, async (t) => {
    t.test('rauc convention: every change is one fw_setenv call and reads back identically', async (t) => {
      const env = await makeEnv(t, layout, { BOOT_ORDER: 'A', BOOT_A_LEFT: '3', BOOT_B_LEFT: '0', bootcmd: 'run rauc_boot' });
      const calls: string[][] = [];
      const runner: ToolRunner = { run: (cmd, args, o) => (calls.push([cmd, ...args]), execTool.run(cmd, args, o)) };
      const bc = createBootControl({ type: 'uboot', convention: 'rauc', fwEnvConfig: env.config, cmdline: { path: env.cmdline, key: 'rauc.slot' } }, { runner });
      t.match(await bc.slotState('A'), { state: 'good', primary: true });
      t.match(await bc.slotState('B'), { state: 'bad' });

      const expectEnv = async (want: Record<string, string | undefined>, label: string) => {
        const tool = fwPrintenv(env.config);
        t.same(Object.fromEntries(tool), Object.fromEntries(await ubootView(env, layout.redundant)), `${label}: fw_printenv and the U-Boot view agree`);
        for (const [k, v] of Object.entries(want)) t.equal(tool.get(k), v, `${label}: ${k}`);
        t.equal(tool.get('bootcmd'), 'run rauc_boot', `${label}: unrelated variables untouched`);
      };

      calls.length = 0;
      await bc.armTrial('B', 2);
      t.equal(calls.filter((c) => c[0] === 'fw_setenv').length, 1, 'one fw_setenv call');
      t.same(calls.find((c) => c[0] === 'fw_setenv'), ['fw_setenv', '-c', env.config, '-s', '-']);
      await expectEnv({ BOOT_ORDER: 'B A', BOOT_B_LEFT: '2', slotflip_trial: 'B' }, 'armTrial');
      t.match(await bc.slotState('B'), { state: 'trial', triesLeft: 2, primary: true });

      await bc.markBad('B');
      await expectEnv({ BOOT_ORDER: 'A', BOOT_B_LEFT: '0', slotflip_trial: undefined }, 'markBad');

      await bc.armTrial('B', 3);
      await bc.commit('B');
      await expectEnv({ BOOT_ORDER: 'B A', BOOT_B_LEFT: '3', slotflip_trial: undefined }, 'commit');
      calls.length = 0;
      await bc.commit('B');
      t.equal(calls.filter((c) => c[0] === 'fw_setenv').length, 0, 'committing again writes nothing');
    });

    t.test('mender convention reads back identically', async (t) => {
      const env = await makeEnv(t, layout, { mender_boot_part: '2', mender_boot_part_hex: '2', upgrade_available: '0', bootcount: '0', bootlimit: '1' });
      const bc = createBootControl({ type: 'uboot', convention: 'mender', fwEnvConfig: env.config, partitions: { A: 2, B: 3 }, cmdline: { path: env.cmdline, key: 'root', values: { A: '/dev/mmcblk0p2', B: '/dev/mmcblk0p3' } } });
      t.equal(await bc.bootedSlot(), 'A');
      await bc.markBad('B');
      await bc.armTrial('B', 2);
      let tool = fwPrintenv(env.config);
      t.same(Object.fromEntries(tool), Object.fromEntries(await ubootView(env, layout.redundant)));
      t.same(Object.fromEntries(tool), { mender_boot_part: '3', mender_boot_part_hex: '3', upgrade_available: '1', bootcount: '0', bootlimit: '2' });
      t.match(await bc.slotState('B'), { state: 'trial', triesLeft: 2, primary: true });
      t.match(await bc.slotState('A'), { state: 'good', primary: false });
      await bc.commit('B');
      tool = fwPrintenv(env.config);
      t.same(Object.fromEntries(tool), { mender_boot_part: '3', mender_boot_part_hex: '3', upgrade_available: '0', bootcount: '0', bootlimit: '2' });
      t.same(Object.fromEntries(tool), Object.fromEntries(await ubootView(env, layout.redundant)));
    });

    if (layout.redundant) {
      t.test('a torn write of the newest copy falls back to the previous state in the tools and in U-Boot', async (t) => {
        const env = await makeEnv(t, layout, { BOOT_ORDER: 'A', BOOT_A_LEFT: '3', BOOT_B_LEFT: '0' });
        const bc = createBootControl({ type: 'uboot', convention: 'rauc', fwEnvConfig: env.config, cmdline: { path: env.cmdline, key: 'rauc.slot' } });
        await bc.commit('A');
        const before = Object.fromEntries(fwPrintenv(env.config));
        await bc.armTrial('B', 2);
        // tear the copy just written (the newest), as a power cut during fw_setenv would
        const blocks = await Promise.all(env.copies.map(([p, off]) => readCopy(p, off)));
        const newest = pickRedundantCopy(decodeEnvBlock(blocks[0]!, true), decodeEnvBlock(blocks[1]!, true))!;
        const [p, off] = env.copies[newest]!;
        const fh = await open(p, 'r+');
        await fh.write(Buffer.alloc(64, 0x5a), 0, 64, off + 16);
        await fh.close();
        t.same(Object.fromEntries(fwPrintenv(env.config)), before, 'fw_printenv falls back to the older copy');
        t.same(Object.fromEntries(await ubootView(env, true)), before, 'U-Boot falls back to the older copy');
        t.match(await bc.slotState('B'), { state: 'bad' }, 'the backend sees the untorn state');
        await bc.armTrial('B', 2); // and can redo the step
        t.match(await bc.slotState('B'), { state: 'trial', triesLeft: 2 });
      });
    }
  });
}

t.test('a write that does not read back is HAL_BOOTENV_VERIFY', async (t) => {
  const env = await makeEnv(t, LAYOUTS[1]!, { BOOT_ORDER: 'A', BOOT_A_LEFT: '3', BOOT_B_LEFT: '0' });
  // a fw_setenv that "succeeds" without writing (e.g. a wrong config on a read-only medium)
  const runner: ToolRunner = { run: (cmd, args, o) => (cmd === 'fw_setenv' ? Promise.resolve({ stdout: '', stderr: '', code: 0, signal: null, timedOut: false }) : execTool.run(cmd, args, o)) };
  const bc = createBootControl({ type: 'uboot', convention: 'rauc', fwEnvConfig: env.config, cmdline: { path: env.cmdline, key: 'rauc.slot' } }, { runner });
  await t.rejects(bc.armTrial('B', 2), { code: 'HAL_BOOTENV_VERIFY' });
});

t.test('a missing config is HAL_BOOTENV_READ, a missing tool HAL_TOOL_MISSING', async (t) => {
  const dir = t.testdir();
  const bc = createBootControl({ type: 'uboot', convention: 'rauc', fwEnvConfig: join(dir, 'nope.config'), cmdline: { path: join(dir, 'cmdline') } });
  await t.rejects(bc.slotState('A'), { code: 'HAL_BOOTENV_READ' });
  const bc2 = createBootControl({ type: 'uboot', convention: 'rauc', fwEnvConfig: join(dir, 'nope.config'), fwPrintenv: join(dir, 'no-such-tool') });
  await t.rejects(bc2.slotState('A'), { code: 'HAL_TOOL_MISSING' });
});

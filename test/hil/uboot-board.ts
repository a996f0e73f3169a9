/**
 * The U-Boot board: Debian's prebuilt `u-boot-qemu` (qemu_arm64) under `qemu-system-aarch64` (TCG),
 * one virtio disk built by disk-image.ts, and a second pflash bank holding U-Boot's own environment.
 *
 * What runs where:
 * - U-Boot's own environment lives in pflash bank 1 (Debian's build: CONFIG_ENV_IS_IN_FLASH, one copy,
 *   0x40000 bytes at offset 0). It only sets `bootdelay=0` and a `bootcmd` that sources `boot.scr`
 *   from the FAT boot partition. U-Boot's `saveenv` to QEMU 7.2's pflash fails, so the A/B state
 *   cannot live there.
 * - The A/B state lives in a REDUNDANT environment on the virtio disk (two copies in the raw gap
 *   before p1, `CRC32 | flag | data`, exactly the layout `fw_setenv` writes for a two-line
 *   fw_env.config). `boot.scr` reads both copies, checks each with U-Boot's own `env import -c` (CRC),
 *   picks one with the same rule as U-Boot's `env_import_redund()` (env/common.c: valid copy wins;
 *   both valid → 0xff/0 wrap, else higher flag), runs the RAUC or Mender selection, and writes the
 *   *other* copy with flag+1 (what U-Boot's `env_save` does for MMC/FAT/SPI environments).
 * - Each slot starts with a legacy uImage (mkimage, data CRC32). `iminfo` verifies it, as `bootm`
 *   would: a corrupt slot is reported as SLOTFLIP-BADIMAGE and the board "resets" (powers off); the
 *   harness powers it on again, like a watchdog.
 *
 * The serial console carries one line per decision: `SLOTFLIP-ENV copy=N flag=F`, then
 * `SLOTFLIP-BOOT slot=X` | `SLOTFLIP-BADIMAGE slot=X` | `SLOTFLIP-NOSLOT`.
 *
 * Trade-off: the redundancy choice is script code mirroring U-Boot's C (Debian's binary has no
 * block-device environment driver for virtio); CRC checking, the hush interpreter, `setexpr`, `iminfo`
 * and the flash-environment loader are U-Boot's own. The flash-environment tests exercise U-Boot's
 * real env loader directly against files `fw_setenv` wrote.
 */
import { mkdir, readFile, writeFile, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { execTool, runChecked, type ToolRunner } from '../../hal/exec.js';
import type { SlotName } from '../../hal/boot-control.js';
import { buildDisk, diskLayout, slotPartition, readAt, writeAt, ENV_COPY_SIZE, ENV_OFFSETS, SECTOR, type DiskLayout } from './disk-image.js';
import type { EmulatorTracker, PowerOnResult } from './emulator.js';
import { createBootControl } from '../../hal/registry.js';
import type { HilBoard } from './scenarios.js';

export const UBOOT_BIN = '/usr/lib/u-boot/qemu_arm64/u-boot.bin';
/** Debian's qemu_arm64 U-Boot: environment in flash bank 1, offset 0, one copy of this size. */
export const UBOOT_FLASH_ENV_SIZE = 0x40000;
export const PFLASH_SIZE = 64 * 1024 * 1024;

export type UbootConvention = 'rauc' | 'mender';

/** Variables each convention keeps in the A/B environment (what boot.scr imports and exports). */
export const CONVENTION_VARS: Record<UbootConvention, readonly string[]> = {
  rauc: ['BOOT_ORDER', 'BOOT_A_LEFT', 'BOOT_B_LEFT'],
  mender: ['mender_boot_part', 'mender_boot_part_hex', 'upgrade_available', 'bootcount', 'bootlimit'],
};

/** Mender's partition numbers for the slots (rootfs A = p2, B = p3, as in our layout). */
export const MENDER_PART: Record<SlotName, number> = { A: 2, B: 3 };

// Fixed RAM addresses (qemu virt: RAM at 0x40000000, 256 MiB; U-Boot relocates itself to the top).
const SCRIPT_ADDR = 0x40200000;
const KERNEL_ADDR = 0x41000000;
const C0 = 0x42000000; // raw copy 0 as read from disk
const C1 = 0x42010000; // raw copy 1
const T0 = 0x42020000; // copy 0 rearranged to CRC | data for `env import -c`
const T1 = 0x42030000;
const OUT = 0x42040000; // copy being written: CRC | flag | data
// scratch bytes (see ubootBootScript). NOT above T0: `env export -c -s` clears far more than -s bytes
// past its address (measured: at least 0x30000), so anything kept there is lost.
const M = 0x41800000;
/** bytes read from the start of a slot (uImage header + payload). */
const KERNEL_READ = 64 * 1024;

const hex = (n: number): string => `0x${n.toString(16)}`;

/** Pure: the boot.scr source for `convention` on `layout`.
 *
 * Like U-Boot's own redundant environment, the WHOLE A/B environment is imported and saved (variables
 * userspace adds, such as the HAL's own markers, survive a bootloader save). The script's scratch
 * state (which copy, which flag, which slot) is therefore kept in RAM at M.., not in variables. */
export function ubootBootScript(convention: UbootConvention, layout: DiskLayout = diskLayout()): string {
  const n = ENV_COPY_SIZE;
  const blk = (off: number): string => hex(off / SECTOR);
  const nblk = hex(n / SECTOR);
  const importSize = hex(n - 1); // CRC + data, without the flag byte
  const USE = hex(M); // 0 | 1 copy in use; 2 none valid
  const FLAG = hex(M + 2); // flag of the copy in use (then of the copy written)
  const OK0 = hex(M + 3);
  const OK1 = hex(M + 4);
  const BOTH = hex(M + 9);
  const F0 = hex(C0 + 4);
  const F1 = hex(C1 + 4);
  const lines: string[] = [
    '# slotflip HIL boot script (generated by test/hil/uboot-board.ts)',
    `echo SLOTFLIP-SCRIPT convention=${convention}`,
    'virtio scan',
    `virtio read ${hex(C0)} ${blk(ENV_OFFSETS[0])} ${nblk}`,
    `virtio read ${hex(C1)} ${blk(ENV_OFFSETS[1])} ${nblk}`,
    '# rearrange CRC | flag | data into CRC | data, the layout `env import -c` verifies',
    `cp.b ${hex(C0)} ${hex(T0)} 4`,
    `cp.b ${hex(C0 + 5)} ${hex(T0 + 4)} ${hex(n - 5)}`,
    `cp.b ${hex(C1)} ${hex(T1)} 4`,
    `cp.b ${hex(C1 + 5)} ${hex(T1 + 4)} ${hex(n - 5)}`,
    `mw.b ${hex(M)} 0 0x10`,
    `if env import -c ${hex(T0)} ${importSize} sf_probe; then mw.b ${OK0} 1; fi`,
    `if env import -c ${hex(T1)} ${importSize} sf_probe; then mw.b ${OK1} 1; fi`,
    '# the choice U-Boot makes in env_import_redund() (env/common.c)',
    `mw.b ${USE} 2`,
    `if itest.b *${OK0} == 1 && itest.b *${OK1} == 0; then mw.b ${USE} 0; fi`,
    `if itest.b *${OK0} == 0 && itest.b *${OK1} == 1; then mw.b ${USE} 1; fi`,
    `if itest.b *${OK0} == 1 && itest.b *${OK1} == 1; then mw.b ${BOTH} 1; fi`,
    `if itest.b *${BOTH} == 1 && itest.b *${F0} == *${F1}; then mw.b ${USE} 0; fi`,
    `if itest.b *${BOTH} == 1 && itest.b *${F0} -gt *${F1}; then mw.b ${USE} 0; fi`,
    `if itest.b *${BOTH} == 1 && itest.b *${F1} -gt *${F0}; then mw.b ${USE} 1; fi`,
    `if itest.b *${BOTH} == 1 && itest.b *${F0} == ff && itest.b *${F1} == 0; then mw.b ${USE} 1; fi`,
    `if itest.b *${BOTH} == 1 && itest.b *${F0} == 0 && itest.b *${F1} == ff; then mw.b ${USE} 0; fi`,
    `if itest.b *${USE} == 0; then env import -c ${hex(T0)} ${importSize}; cp.b ${F0} ${FLAG} 1; fi`,
    `if itest.b *${USE} == 1; then env import -c ${hex(T1)} ${importSize}; cp.b ${F1} ${FLAG} 1; fi`,
    `setexpr.b sf_x *${USE}`,
    `setexpr.b sf_y *${FLAG}`,
    'echo SLOTFLIP-ENV copy=${sf_x} flag=${sf_y}',
    'setenv sf_x',
    'setenv sf_y',
  ];
  // Every statement is ONE line: U-Boot's hush misevaluated conditions and `${var}` inside multi-line
  // if/else blocks of a sourced script (measured), while one-line `if ...; then ...; fi` is reliable.
  const SAVE = hex(M + 5); // 1: the selection changed the environment, write it back
  const NF = hex(M + 6); // flag for the copy about to be written
  const SLOTV = hex(M + 7); // slot to boot: 1 A, 2 B
  const ALT = hex(M + 8);
  // U-Boot's env_save for redundant block environments: write the copy NOT in use, flag + 1 (0xff
  // wraps to 0). With no valid copy (USE=2, FLAG=0) the first save writes copy 0 with flag 1.
  const save = [
    `setexpr.b sf_x *${FLAG} + 1`,
    `mw.b ${NF} \${sf_x}`,
    'setenv sf_x',
    `if itest.b *${FLAG} == ff; then mw.b ${NF} 0; fi`,
    `if itest.b *${SAVE} == 1; then env export -c -s ${importSize} ${hex(T0)}; fi`,
    `if itest.b *${SAVE} == 1; then cp.b ${hex(T0)} ${hex(OUT)} 4; cp.b ${NF} ${hex(OUT + 4)} 1; cp.b ${hex(T0 + 4)} ${hex(OUT + 5)} ${hex(n - 5)}; fi`,
    `if itest.b *${SAVE} == 1 && itest.b *${USE} == 0; then virtio write ${hex(OUT)} ${blk(ENV_OFFSETS[1])} ${nblk}; echo SLOTFLIP-SAVED copy=1; fi`,
    `if itest.b *${SAVE} == 1 && itest.b *${USE} != 0; then virtio write ${hex(OUT)} ${blk(ENV_OFFSETS[0])} ${nblk}; echo SLOTFLIP-SAVED copy=0; fi`,
  ];
  const boot = [
    ...(['A', 'B'] as const).map((slot) => {
      const p = slotPartition(layout, slot);
      return `if itest.b *${SLOTV} == ${slot === 'A' ? 1 : 2}; then setenv sf_slot ${slot}; setenv bootargs "slotflip.slot=${slot} rauc.slot=${slot} root=/dev/vda${p.number}"; virtio read ${hex(KERNEL_ADDR)} ${hex(p.offset / SECTOR)} ${hex(KERNEL_READ / SECTOR)}; fi`;
    }),
    `if iminfo ${hex(KERNEL_ADDR)}; then echo SLOTFLIP-BOOT slot=\${sf_slot} bootargs=\${bootargs}; else echo SLOTFLIP-BADIMAGE slot=\${sf_slot}; fi`,
  ];
  if (convention === 'rauc') {
    // RAUC's documented U-Boot integration (docs/integration.rst, "U-Boot"): BOOT_ORDER lists slots
    // in order, BOOT_x_LEFT counts remaining tries, decremented and saved BEFORE booting; with no
    // slot left all counters are reset to 3 (and the board resets).
    lines.push(
      'test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"',
      'test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3',
      'test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3',
      'for BOOT_SLOT in ${BOOT_ORDER}; do',
      `  if itest.b *${SLOTV} == 0 && test "\${BOOT_SLOT}" = "A" && itest \${BOOT_A_LEFT} -gt 0; then setexpr BOOT_A_LEFT \${BOOT_A_LEFT} - 1; mw.b ${SLOTV} 1; fi`,
      `  if itest.b *${SLOTV} == 0 && test "\${BOOT_SLOT}" = "B" && itest \${BOOT_B_LEFT} -gt 0; then setexpr BOOT_B_LEFT \${BOOT_B_LEFT} - 1; mw.b ${SLOTV} 2; fi`,
      'done',
      `if itest.b *${SLOTV} == 0; then echo SLOTFLIP-NOSLOT; setenv BOOT_A_LEFT 3; setenv BOOT_B_LEFT 3; fi`,
      `mw.b ${SAVE} 1`,
      ...save,
      `if itest.b *${SLOTV} == 0; then poweroff; fi`,
      ...boot,
    );
  } else {
    // Mender's U-Boot integration: boot `mender_boot_part`; while `upgrade_available=1` every boot
    // increments `bootcount` (CONFIG_BOOTCOUNT_ENV) and past `bootlimit` runs `altbootcmd`, which
    // swaps to the other partition and clears `upgrade_available`.
    const { A: pa, B: pb } = MENDER_PART;
    lines.push(
      'test -n "${mender_boot_part}" || setenv mender_boot_part 2',
      'test -n "${mender_boot_part_hex}" || setenv mender_boot_part_hex ${mender_boot_part}',
      'test -n "${upgrade_available}" || setenv upgrade_available 0',
      'test -n "${bootcount}" || setenv bootcount 0',
      'test -n "${bootlimit}" || setenv bootlimit 1',
      `if itest \${upgrade_available} == 1; then setexpr bootcount \${bootcount} + 1; mw.b ${SAVE} 1; fi`,
      `if itest.b *${SAVE} == 1 && itest \${bootcount} -gt \${bootlimit}; then echo SLOTFLIP-ALTBOOT; mw.b ${ALT} 1; fi`,
      `if itest.b *${ALT} == 1 && itest \${mender_boot_part} == ${pa}; then setenv mender_boot_part ${pb}; mw.b ${ALT} 2; fi`,
      `if itest.b *${ALT} == 1 && itest \${mender_boot_part} == ${pb}; then setenv mender_boot_part ${pa}; mw.b ${ALT} 2; fi`,
      `if itest.b *${ALT} == 2; then setenv mender_boot_part_hex \${mender_boot_part}; setenv upgrade_available 0; fi`,
      ...save,
      `if itest \${mender_boot_part} == ${pb}; then mw.b ${SLOTV} 2; else mw.b ${SLOTV} 1; fi`,
      ...boot,
    );
  }
  lines.push('poweroff');
  return lines.join('\n') + '\n';
}

export type BootOutcome =
  | { kind: 'booted'; slot: SlotName; image: string }
  | { kind: 'bad-image'; slot: SlotName }
  | { kind: 'no-slot' }
  | { kind: 'failed'; reason: string };

export interface UbootPowerOn extends PowerOnResult {
  outcome: BootOutcome;
  /** env copy boot.scr loaded (`none` when neither was valid). */
  envCopy: '0' | '1' | 'none' | undefined;
  /** copy boot.scr wrote, if it saved. */
  savedCopy: '0' | '1' | undefined;
  altboot: boolean;
}

/** Pure: what the console says the bootloader did. */
export function parseUbootConsole(text: string): Pick<UbootPowerOn, 'outcome' | 'envCopy' | 'savedCopy' | 'altboot'> {
  const env = /SLOTFLIP-ENV copy=(0|1|none)/.exec(text)?.[1] as UbootPowerOn['envCopy'];
  const saved = /SLOTFLIP-SAVED copy=(0|1)/.exec(text)?.[1] as UbootPowerOn['savedCopy'];
  const altboot = text.includes('SLOTFLIP-ALTBOOT');
  const boot = /SLOTFLIP-BOOT slot=([AB])/.exec(text);
  const bad = /SLOTFLIP-BADIMAGE slot=([AB])/.exec(text);
  let outcome: BootOutcome;
  if (boot) {
    const image = /Image Name:\s+(\S[^\r\n]*)/.exec(text)?.[1]?.trim() ?? '';
    outcome = { kind: 'booted', slot: boot[1] as SlotName, image };
  } else if (bad) outcome = { kind: 'bad-image', slot: bad[1] as SlotName };
  else if (text.includes('SLOTFLIP-NOSLOT')) outcome = { kind: 'no-slot' };
  else if (!text.includes('SLOTFLIP-SCRIPT')) outcome = { kind: 'failed', reason: 'boot.scr never ran' };
  else outcome = { kind: 'failed', reason: 'boot.scr printed no decision' };
  return { outcome, envCopy: env, savedCopy: saved, altboot };
}

/** A legacy uImage whose name and payload identify the slot's "kernel" (`iminfo` checks its CRC). */
export async function buildKernelImage(dir: string, name: string, runner: ToolRunner = execTool): Promise<Buffer> {
  const payload = join(dir, `${name}.payload`);
  const out = join(dir, `${name}.uimg`);
  const body = Buffer.alloc(4096);
  body.write(`slotflip hil kernel ${name}\n`.repeat(100).slice(0, 4096));
  await writeFile(payload, body);
  const a = hex(KERNEL_ADDR);
  await runChecked(runner, 'HIL_IMAGE', 'mkimage', ['-A', 'arm64', '-O', 'linux', '-T', 'kernel', '-C', 'none', '-a', a, '-e', a, '-n', name, '-d', payload, out]);
  return readFile(out);
}

export interface UbootBoardOptions {
  dir: string;
  convention: UbootConvention;
  /** initial A/B variables in copy 0 (written with mkenvimage -r, flag 1); copy 1 starts blank. */
  initialEnv?: Record<string, string>;
  runner?: ToolRunner;
  /** per power-on limit. */
  powerOnTimeoutMs?: number;
}

export interface UbootBoard {
  dir: string;
  convention: UbootConvention;
  disk: string;
  flash: string;
  layout: DiskLayout;
  /** fw_env.config for the two copies on the disk image (what the daemon's HAL is given). */
  fwEnvConfig: string;
  /** builds and writes a fresh uImage named `name` into `slot` (an install). */
  installKernel(slot: SlotName, name: string): Promise<void>;
  /** writes raw bytes at the start of `slot` (a corrupt or half-written image). */
  writeSlotRaw(slot: SlotName, data: Uint8Array): Promise<void>;
  /** the A/B variables as fw_printenv reads them. */
  readEnv(): Promise<Record<string, string>>;
  /** one power-on: QEMU until U-Boot powers off (or the timeout). */
  powerOn(tracker: EmulatorTracker): Promise<UbootPowerOn>;
}

/** Raw bytes of both environment copies (for tearing writes and asserting flags). */
export async function readEnvCopies(disk: string): Promise<[Buffer, Buffer]> {
  return [await readAt(disk, ENV_OFFSETS[0], ENV_COPY_SIZE), await readAt(disk, ENV_OFFSETS[1], ENV_COPY_SIZE)];
}

export async function createUbootBoard(opts: UbootBoardOptions): Promise<UbootBoard> {
  const runner = opts.runner ?? execTool;
  const dir = opts.dir;
  await mkdir(dir, { recursive: true });
  const layout = diskLayout();
  const disk = join(dir, 'disk.img');
  const flash = join(dir, 'flash1.img');
  const scriptSrc = join(dir, 'boot.cmd');
  const scriptImg = join(dir, 'boot.scr');
  await writeFile(scriptSrc, ubootBootScript(opts.convention, layout));
  await runChecked(runner, 'HIL_IMAGE', 'mkimage', ['-A', 'arm64', '-O', 'linux', '-T', 'script', '-C', 'none', '-d', scriptSrc, scriptImg]);
  await buildDisk({
    path: disk,
    layout,
    bootFiles: { 'boot.scr': await readFile(scriptImg) },
    slots: { A: await buildKernelImage(dir, 'slotflip-A-v1', runner), B: await buildKernelImage(dir, 'slotflip-B-v1', runner) },
    runner,
  });

  // A/B state: copy 0 from mkenvimage -r (flag 1), copy 1 blank (CRC invalid) — a freshly flashed board.
  const envTxt = join(dir, 'ab-env.txt');
  const envBin = join(dir, 'ab-env.bin');
  const initial = opts.initialEnv ?? defaultInitialEnv(opts.convention);
  await writeFile(envTxt, Object.entries(initial).map(([k, v]) => `${k}=${v}\n`).join(''));
  await runChecked(runner, 'HIL_IMAGE', 'mkenvimage', ['-r', '-s', String(ENV_COPY_SIZE), '-o', envBin, envTxt]);
  await writeAt(disk, ENV_OFFSETS[0], await readFile(envBin));

  // U-Boot's own environment in flash bank 1: no delay, source boot.scr from p1.
  await writeFlashEnv(dir, flash, {
    bootdelay: '0',
    bootcmd: `load virtio 0:1 ${hex(SCRIPT_ADDR)} boot.scr && source ${hex(SCRIPT_ADDR)}; echo SLOTFLIP-SCRIPT-FAILED; poweroff`,
  }, runner);

  const fwEnvConfig = join(dir, 'fw_env.config');
  await writeFile(fwEnvConfig, ENV_OFFSETS.map((o) => `${disk} ${hex(o)} ${hex(ENV_COPY_SIZE)}\n`).join(''));

  const timeoutMs = opts.powerOnTimeoutMs ?? 30_000;
  return {
    dir,
    convention: opts.convention,
    disk,
    flash,
    layout,
    fwEnvConfig,
    async installKernel(slot, name) {
      const img = await buildKernelImage(dir, name, runner);
      await writeAt(disk, slotPartition(layout, slot).offset, img);
    },
    async writeSlotRaw(slot, data) {
      await writeAt(disk, slotPartition(layout, slot).offset, data);
    },
    async readEnv() {
      return fwPrintenv(fwEnvConfig, runner);
    },
    async powerOn(tracker) {
      const r = await tracker.run('qemu-system-aarch64', qemuArgs(flash, disk), { timeoutMs });
      return { ...r, ...parseUbootConsole(r.console) };
    },
  };
}

export function defaultInitialEnv(convention: UbootConvention): Record<string, string> {
  return convention === 'rauc'
    ? { BOOT_ORDER: 'A B', BOOT_A_LEFT: '3', BOOT_B_LEFT: '0' }
    : { mender_boot_part: '2', mender_boot_part_hex: '2', upgrade_available: '0', bootcount: '0', bootlimit: '1' };
}

export function qemuArgs(flash: string, disk?: string): string[] {
  return [
    '-M', 'virt', '-cpu', 'cortex-a57', '-m', '256', '-nographic', '-no-reboot',
    '-bios', UBOOT_BIN,
    '-drive', `if=pflash,unit=1,format=raw,file=${flash}`,
    ...(disk === undefined ? [] : ['-drive', `if=virtio,format=raw,file=${disk}`]),
    '-serial', 'mon:stdio', '-monitor', 'none',
    '-nic', 'none',
  ];
}

/** Writes a fresh pflash bank 1 image holding U-Boot's environment (one copy, mkenvimage). */
export async function writeFlashEnv(dir: string, flash: string, vars: Record<string, string>, runner: ToolRunner = execTool): Promise<void> {
  const txt = join(dir, 'flash-env.txt');
  const bin = join(dir, 'flash-env.bin');
  await writeFile(txt, Object.entries(vars).map(([k, v]) => `${k}=${v}\n`).join(''));
  await runChecked(runner, 'HIL_IMAGE', 'mkenvimage', ['-s', String(UBOOT_FLASH_ENV_SIZE), '-o', bin, txt]);
  const exists = await stat(flash).then(() => true, () => false);
  if (!exists) await writeFile(flash, Buffer.alloc(0));
  await truncate(flash, PFLASH_SIZE);
  await writeAt(flash, 0, await readFile(bin));
}

/** `fw_printenv -c CONFIG` parsed strictly into key → value. */
export async function fwPrintenv(config: string, runner: ToolRunner = execTool): Promise<Record<string, string>> {
  const r = await runChecked(runner, 'HIL_FW_PRINTENV', 'fw_printenv', ['-c', config]);
  const out: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    if (line === '') continue;
    const i = line.indexOf('=');
    if (i <= 0) throw new Error(`fw_printenv: unparsable line ${JSON.stringify(line)}`);
    out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

/** One atomic write of `vars` with `fw_setenv -c CONFIG -s FILE` (`key=value` lines). */
export async function fwSetenv(config: string, vars: Record<string, string>, scratchDir: string, runner: ToolRunner = execTool): Promise<void> {
  const file = join(scratchDir, `fw-setenv-${process.pid}.txt`);
  await writeFile(file, Object.entries(vars).map(([k, v]) => `${k}=${v}\n`).join(''));
  await runChecked(runner, 'HIL_FW_SETENV', 'fw_setenv', ['-c', config, '-s', file]);
}

export interface UbootHilBoardOptions {
  dir: string;
  convention: UbootConvention;
  tracker: EmulatorTracker;
  runner?: ToolRunner;
}

/** Kernel image name for a release version (the same release image goes into either slot). */
export const kernelName = (version: string): string => `slotflip-${version}`;

/**
 * The U-Boot board as a `HilBoard`: the HAL's own `uboot` backend (createBootControl) writes the A/B
 * environment through fw_setenv with the board's fw_env.config, and reads the booted slot from the
 * kernel command line U-Boot printed (written to `<dir>/cmdline` after each boot).
 */
export async function createUbootHilBoard(opts: UbootHilBoardOptions): Promise<HilBoard & { board: UbootBoard; last?: UbootPowerOn }> {
  const runner = opts.runner ?? execTool;
  const board = await createUbootBoard({ dir: opts.dir, convention: opts.convention, runner });
  await board.installKernel('A', kernelName('v1'));
  await board.installKernel('B', kernelName('v1'));
  const cmdlinePath = join(opts.dir, 'cmdline');
  await writeFile(cmdlinePath, '');
  const control = createBootControl({ type: 'uboot', convention: opts.convention, fwEnvConfig: board.fwEnvConfig, cmdline: { path: cmdlinePath, key: 'slotflip.slot' } }, { runner });
  const kernelDir = join(opts.dir, 'kernels');
  await mkdir(kernelDir, { recursive: true });
  const hil: HilBoard & { board: UbootBoard; last?: UbootPowerOn } = {
    label: `u-boot/${opts.convention}`,
    control,
    maxTries: control.maxTries,
    board,
    async powerOn() {
      const r = await board.powerOn(opts.tracker);
      hil.last = r;
      const bootargs = /SLOTFLIP-BOOT slot=[AB] bootargs=([^\r\n]*)/.exec(r.console)?.[1] ?? '';
      await writeFile(cmdlinePath, r.outcome.kind === 'booted' ? `${bootargs}\n` : '');
      const base = { durationMs: r.durationMs, console: r.console };
      switch (r.outcome.kind) {
        case 'booted':
          return { ...base, outcome: 'booted', slot: r.outcome.slot, image: r.outcome.image };
        case 'bad-image':
          return { ...base, outcome: 'bad-image', slot: r.outcome.slot };
        case 'no-slot':
          return { ...base, outcome: 'no-slot' };
        default:
          return { ...base, outcome: 'failed' };
      }
    },
    writeImage: (slot, version) => board.installKernel(slot, kernelName(version)),
    async writeCorruptImage(slot) {
      const img = await buildKernelImage(kernelDir, kernelName('corrupt'), runner);
      img[UIMAGE_HEADER + 100] ^= 0xff; // header intact, data CRC wrong: `iminfo`/`bootm` reject it
      await board.writeSlotRaw(slot, img);
    },
    async writePartialImage(slot, version) {
      const img = await buildKernelImage(kernelDir, kernelName(version), runner);
      await board.writeSlotRaw(slot, img.subarray(0, Math.floor(img.length / 2)));
    },
    async snapshotEnv() {
      return Buffer.concat(await readEnvCopies(board.disk));
    },
    async tearEnvWriteSince(before) {
      const now = await readEnvCopies(board.disk);
      const changed = ([0, 1] as const).filter((i) => !now[i].equals(before.subarray(i * ENV_COPY_SIZE, (i + 1) * ENV_COPY_SIZE)));
      if (changed.length !== 1) throw new Error(`expected one environment copy to change, ${changed.length} did`);
      const i = changed[0]!;
      const old = before.subarray(i * ENV_COPY_SIZE, (i + 1) * ENV_COPY_SIZE);
      const torn = tornCopy(old, now[i]);
      await writeAt(board.disk, ENV_OFFSETS[i], torn);
    },
  };
  return hil;
}

/** Size of a legacy uImage header. */
export const UIMAGE_HEADER = 64;

/** Pure: `next` written over `old` only up to the middle of the bytes that differ (a write that
 * reached storage partly). Everything before the cut is new, everything after is old. */
export function tornCopy(old: Buffer, next: Buffer): Buffer {
  let first = -1;
  let last = -1;
  for (let j = 0; j < next.length; j++) {
    if (old[j] !== next[j]) {
      if (first < 0) first = j;
      last = j;
    }
  }
  if (first < 0) return Buffer.from(next);
  const cut = Math.max(first + 1, Math.floor((first + last + 1) / 2));
  return Buffer.concat([next.subarray(0, cut), old.subarray(cut)]);
}

/**
 * U-Boot's OWN environment loader against environments written by fw_setenv (through the HAL).
 *
 * Debian's qemu_arm64 U-Boot keeps its environment in NOR flash (pflash bank 1), ONE copy of 0x40000
 * bytes at offset 0 (no CONFIG_SYS_REDUNDAND_ENVIRONMENT). Its `bootcmd` here prints the A/B variables
 * it loaded and powers off, so the console shows exactly what the bootloader saw.
 */
import { join } from 'node:path';
import { readFile, writeFile } from 'node:fs/promises';
import { execTool, runChecked, type ToolRunner } from '../../hal/exec.js';
import { writeAt } from './disk-image.js';
import { createBootControl, type GuardedBootControl } from '../../hal/registry.js';
import { qemuArgs, writeFlashEnv, UBOOT_FLASH_ENV_SIZE } from './uboot-board.js';
import type { EmulatorTracker, PowerOnResult } from './emulator.js';

export interface FlashEnvBoard {
  flash: string;
  fwEnvConfig: string;
  control: GuardedBootControl;
  /** power-on: what U-Boot printed, and the A/B variables it reported (undefined when it never ran our bootcmd). */
  powerOn(tracker: EmulatorTracker, timeoutMs?: number): Promise<PowerOnResult & { seen?: Record<string, string>; usedDefaultEnv: boolean }>;
}

const hex = (n: number): string => `0x${n.toString(16)}`;

/**
 * `copies` is what the fw_env.config given to the HAL claims: 1 (matches this U-Boot build) or 2 (a
 * redundant config, as many board support packages ship, against a U-Boot built without redundancy).
 */
export async function createFlashEnvBoard(dir: string, copies: 1 | 2, runner: ToolRunner = execTool): Promise<FlashEnvBoard> {
  const flash = join(dir, 'flash1.img');
  const vars: Record<string, string> = {
    bootdelay: '0',
    bootcmd: 'echo SLOTFLIP-FLASHENV order=${BOOT_ORDER} a=${BOOT_A_LEFT} b=${BOOT_B_LEFT} trial=${slotflip_trial}; poweroff',
    BOOT_ORDER: 'A B',
    BOOT_A_LEFT: '3',
    BOOT_B_LEFT: '0',
  };
  await writeFlashEnv(dir, flash, vars, runner);
  if (copies === 2) {
    // a redundant-format environment (CRC | flag | data) in both halves, as `mkenvimage -r` or a
    // previous redundant fw_setenv leaves it; libubootenv needs one valid copy before it writes
    const txt = join(dir, 'redund.txt');
    const bin = join(dir, 'redund.bin');
    await writeFile(txt, Object.entries(vars).map(([k, v]) => `${k}=${v}\n`).join(''));
    await runChecked(runner, 'HIL_IMAGE', 'mkenvimage', ['-r', '-s', String(UBOOT_FLASH_ENV_SIZE), '-o', bin, txt]);
    await writeAt(flash, 0, await readFile(bin));
  }
  const fwEnvConfig = join(dir, 'fw_env.config');
  const line = (off: number): string => `${flash} ${hex(off)} ${hex(UBOOT_FLASH_ENV_SIZE)} ${hex(UBOOT_FLASH_ENV_SIZE)}\n`;
  await writeFile(fwEnvConfig, copies === 1 ? line(0) : line(0) + line(UBOOT_FLASH_ENV_SIZE));
  const control = createBootControl({ type: 'uboot', convention: 'rauc', fwEnvConfig, cmdline: { path: join(dir, 'no-cmdline') } }, { runner });
  return {
    flash,
    fwEnvConfig,
    control,
    async powerOn(tracker, timeoutMs = 20_000) {
      // with its default environment U-Boot would go on to distro boot and wait at a prompt: stop there
      const r = await tracker.run('qemu-system-aarch64', qemuArgs(flash), { timeoutMs, until: /using default environment/ });
      const m = /SLOTFLIP-FLASHENV order=([^\r\n]*?) a=(\S*) b=(\S*) trial=(\S*)/.exec(r.console);
      const seen = m ? { BOOT_ORDER: m[1]!, BOOT_A_LEFT: m[2]!, BOOT_B_LEFT: m[3]!, slotflip_trial: m[4]! } : undefined;
      return { ...r, seen, usedDefaultEnv: r.console.includes('using default environment') };
    },
  };
}

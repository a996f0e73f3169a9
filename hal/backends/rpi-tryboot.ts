/**
 * Raspberry Pi tryboot (A/B partitions selected by the firmware from `autoboot.txt` on the FAT boot
 * partition, per the Raspberry Pi documentation):
 *
 *   [all]
 *   tryboot_a_b=1
 *   boot_partition=2      ← committed slot, booted on every normal power-on
 *   [tryboot]
 *   boot_partition=3      ← booted once, only after `reboot "0 tryboot"`
 *
 * The tryboot flag is one-shot and lives in the firmware, not on disk: a trial is exactly one boot
 * (maxTries 1), and only a reboot with the argument from `rebootArgument()` starts it. A power cut
 * instead boots the committed slot. In tryboot mode the firmware sets
 * `/proc/device-tree/chosen/bootloader/tryboot` to 1 (4-byte big-endian).
 *
 * Writes are power-safe: temp file, fsync, rename over autoboot.txt, fsync the directory; the FAT
 * driver replaces the directory entry in one sector write.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SlotflipError } from '../errors.js';
import { writeFileAtomic } from '../atomic-file.js';
import { otherSlot, type SlotName } from '../boot-control.js';
import { readBootedSlot, type CmdlineConfig } from '../cmdline.js';
import type { BackendCore } from './core.js';

export interface RpiTrybootBackendConfig {
  type: 'rpi-tryboot';
  /** where the FAT boot partition (holding autoboot.txt) is mounted. */
  bootDir: string;
  /** boot partition number per slot, default { A: 2, B: 3 }. */
  partitions?: { A: number; B: number };
  /** device-tree flag, default `/proc/device-tree/chosen/bootloader/tryboot`. */
  trybootFlagFile?: string;
  cmdline?: CmdlineConfig;
}

export interface Autoboot {
  trybootAB: boolean;
  /** [all] boot_partition. */
  bootPartition: number;
  /** [tryboot] boot_partition. */
  trybootPartition: number;
}

/** Strict parse of autoboot.txt: only [all] and [tryboot] sections, only tryboot_a_b and
 * boot_partition keys, decimal values. Throws HAL_BOOTENV_PARSE. */
export function parseAutoboot(text: string): Autoboot {
  let section = 'all';
  const vals: Record<string, Record<string, number>> = { all: {}, tryboot: {} };
  for (const [i, raw] of text.split(/\r?\n/).entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const bad = (why: string) => new SlotflipError('HAL_BOOTENV_PARSE', `autoboot.txt line ${i + 1}: ${why}`, { details: { line: line.slice(0, 80) } });
    const sec = /^\[([a-z_]+)\]$/.exec(line);
    if (sec) {
      if (sec[1] !== 'all' && sec[1] !== 'tryboot') throw bad(`unsupported section [${sec[1]}]`);
      section = sec[1];
      continue;
    }
    const kv = /^(tryboot_a_b|boot_partition)=(\d{1,3})$/.exec(line);
    if (!kv) throw bad('expected tryboot_a_b=N or boot_partition=N');
    const target = vals[section]!;
    if (kv[1]! in target) throw bad(`${kv[1]} set twice in [${section}]`);
    target[kv[1]!] = Number(kv[2]);
  }
  const all = vals.all!;
  const tb = vals.tryboot!;
  if (all.boot_partition === undefined) throw new SlotflipError('HAL_BOOTENV_PARSE', 'autoboot.txt: [all] has no boot_partition');
  return { trybootAB: all.tryboot_a_b === 1, bootPartition: all.boot_partition, trybootPartition: tb.boot_partition ?? all.boot_partition };
}

export function formatAutoboot(a: Autoboot): string {
  return `[all]\ntryboot_a_b=${a.trybootAB ? 1 : 0}\nboot_partition=${a.bootPartition}\n[tryboot]\nboot_partition=${a.trybootPartition}\n`;
}

/** The device-tree tryboot flag: exactly 4 bytes, big-endian. Throws HAL_BOOTENV_PARSE otherwise. */
export function parseTrybootFlag(buf: Uint8Array): boolean {
  if (buf.byteLength !== 4) throw new SlotflipError('HAL_BOOTENV_PARSE', `device-tree tryboot flag is ${buf.byteLength} bytes, not 4`);
  return Buffer.from(buf.buffer, buf.byteOffset, 4).readUInt32BE(0) === 1;
}

/** The one write the backend does (a seam for the power-cut harness): replace a file atomically. */
export interface RpiTrybootIo {
  writeFile(path: string, data: string): Promise<void>;
}

export function createRpiTrybootBackend(cfg: RpiTrybootBackendConfig, io: RpiTrybootIo = { writeFile: (p, d) => writeFileAtomic(p, d) }): BackendCore {
  const parts = cfg.partitions ?? { A: 2, B: 3 };
  const file = join(cfg.bootDir, 'autoboot.txt');
  const flagFile = cfg.trybootFlagFile ?? '/proc/device-tree/chosen/bootloader/tryboot';
  const read = async (): Promise<Autoboot> => {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (cause) {
      throw new SlotflipError('HAL_BOOTENV_READ', `cannot read ${file}; is the boot partition mounted at bootDir?`, { cause, details: { path: file } });
    }
    const a = parseAutoboot(text);
    for (const p of [a.bootPartition, a.trybootPartition]) {
      if (p !== parts.A && p !== parts.B) throw new SlotflipError('HAL_BOOTENV_PARSE', `${file}: boot_partition=${p} is neither slot A's (${parts.A}) nor B's (${parts.B}); fix partitions in the boot config`, { details: { partition: p } });
    }
    return a;
  };
  const inTryboot = async (): Promise<boolean> => {
    try {
      return parseTrybootFlag(await readFile(flagFile));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw e;
    }
  };
  const booted = () => readBootedSlot(cfg.cmdline ?? {});
  const write = async (before: Autoboot, after: Autoboot) => {
    const text = formatAutoboot(after);
    if (text === formatAutoboot(before)) return;
    await io.writeFile(file, text);
    if ((await readFile(file, 'utf8')) !== text) throw new SlotflipError('HAL_BOOTENV_VERIFY', `${file} did not read back as written`, { details: { path: file } });
  };
  const slotOf = (p: number): SlotName => (p === parts.A ? 'A' : 'B');
  return {
    backend: 'rpi-tryboot',
    maxTries: 1,
    bootedSlot: booted,
    async slotState(slot) {
      const a = await read();
      if (slotOf(a.bootPartition) === slot) return { state: 'good', primary: true };
      if (a.trybootAB && slotOf(a.trybootPartition) === slot) {
        let used = false;
        if (await inTryboot()) used = (await booted().catch(() => undefined)) === slot;
        return { state: 'trial', triesLeft: used ? 0 : 1, primary: false };
      }
      return { state: 'bad', primary: false };
    },
    async markBad(slot) {
      const a = await read();
      if (slotOf(a.bootPartition) === slot) {
        // the firmware always has a committed partition: the only way to stop booting it is to commit the other
        throw new SlotflipError('HAL_BOOTENV_UNSUPPORTED', `rpi-tryboot: slot ${slot} is the committed slot; commit ${otherSlot(slot)} instead of marking ${slot} bad`, { details: { slot } });
      }
      await write(a, { ...a, trybootPartition: a.bootPartition });
    },
    async armTrial(slot) {
      const a = await read();
      await write(a, { ...a, trybootAB: true, trybootPartition: parts[slot] });
    },
    async commit(slot) {
      const a = await read();
      await write(a, { trybootAB: true, bootPartition: parts[slot], trybootPartition: parts[slot] });
    },
    async rebootArgument() {
      const a = await read();
      return a.trybootAB && a.trybootPartition !== a.bootPartition ? '0 tryboot' : undefined;
    },
  };
}

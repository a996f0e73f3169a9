/**
 * The systemd-boot board: OVMF (UEFI firmware) under qemu-system-x86_64 (TCG) boots Debian's real
 * `systemd-bootx64.efi` from the ESP (p1) of the disk image. systemd-boot does its own boot counting:
 * before starting an entry `slotflip-b+3.conf` it renames it to `slotflip-b+2-1.conf` on the ESP, and
 * sorts entries with no tries left (`+0…`) after all others.
 *
 * The "kernel" of each slot is an EFI program on the ESP (`/EFI/slotflip/a.efi`, `b.efi`, as unified
 * kernel images sit on the ESP): a `grub-mkstandalone` image whose embedded config prints
 * `SLOTFLIP-BOOT slot=X cmdline=...` and the version, then halts (EFI ResetSystem → QEMU exits).
 * A corrupt one fails to load; systemd-boot then stays in its menu, so the run ends on that message.
 *
 * The HAL's `systemd-boot` backend works on a host directory mirroring the ESP's `loader/` (the kernel
 * here cannot mount FAT): before each power-on it is copied into the image with mtools, after it the
 * entry names systemd-boot left are copied back. One OVMF variable store per board (its NVRAM).
 */
import { copyFile, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execTool, runChecked, type ToolRunner } from '../../hal/exec.js';
import type { SlotName } from '../../hal/boot-control.js';
import { createBootControl } from '../../hal/registry.js';
import { buildDisk, diskLayout, partition } from './disk-image.js';
import type { EmulatorTracker } from './emulator.js';
import type { HilBoard } from './scenarios.js';
import { parseGrubConsole, plainConsole } from './grub-board.js';

export const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';
export const OVMF_VARS = '/usr/share/OVMF/OVMF_VARS_4M.fd';
export const SYSTEMD_BOOT_EFI = '/usr/lib/systemd/boot/efi/systemd-bootx64.efi';
const IDS = { A: 'slotflip-a', B: 'slotflip-b' } as const;
const efiName = (slot: SlotName): string => `${slot.toLowerCase()}.efi`;
/** entry file name without the boot counter and `.conf` (`slotflip-b+2-1.conf` → `slotflip-b`). */
const entryId = (file: string): string => file.replace(/(\+\d+(-\d+)?)?\.conf$/, '');

/** loader.conf and every entry file (name → content) of the host copy of the ESP's `loader/`. */
interface LoaderSnapshot {
  conf: string;
  entries: Record<string, string>;
}

/** A GRUB EFI program standing in for slot `slot`'s kernel, reporting `version`. */
export async function buildSlotEfi(dir: string, slot: SlotName, version: string, runner: ToolRunner = execTool): Promise<Buffer> {
  const cfg = join(dir, `kernel-${slot}.cfg`);
  const out = join(dir, `kernel-${slot}.efi`);
  await writeFile(cfg, `echo "SLOTFLIP-BOOT slot=${slot} cmdline=slotflip.slot=${slot}"\necho "SLOTFLIP-IMAGE slotflip-${version}"\nhalt\n`);
  const mods = 'echo halt configfile normal';
  await runChecked(runner, 'HIL_IMAGE', 'grub-mkstandalone', ['-O', 'x86_64-efi', `--modules=${mods}`, `--install-modules=${mods}`, '--locales=', '--fonts=', '--themes=', '-o', out, `boot/grub/grub.cfg=${cfg}`]);
  return readFile(out);
}

export interface SdbootHilBoardOptions {
  dir: string;
  tracker: EmulatorTracker;
  runner?: ToolRunner;
  powerOnTimeoutMs?: number;
}

export async function createSdbootHilBoard(opts: SdbootHilBoardOptions): Promise<HilBoard & { disk: string; esp: string }> {
  const runner = opts.runner ?? execTool;
  const layout = diskLayout();
  const disk = join(opts.dir, 'disk.img');
  const esp = join(opts.dir, 'esp');
  const entriesDir = join(esp, 'loader', 'entries');
  await mkdir(entriesDir, { recursive: true });
  const entry = (slot: SlotName) => `title slotflip ${slot}\nefi /EFI/slotflip/${efiName(slot)}\n`;
  await writeFile(join(entriesDir, `${IDS.A}.conf`), entry('A'));
  await writeFile(join(entriesDir, `${IDS.B}+0.conf`), entry('B')); // B starts marked bad
  await writeFile(join(esp, 'loader', 'loader.conf'), `timeout 0\ndefault ${IDS.A}.conf\n`);
  const work = join(opts.dir, 'work');
  await mkdir(work, { recursive: true });
  await buildDisk({
    path: disk,
    layout,
    bootFiles: {
      'EFI/BOOT/BOOTX64.EFI': await readFile(SYSTEMD_BOOT_EFI),
      [`EFI/slotflip/${efiName('A')}`]: await buildSlotEfi(work, 'A', 'v1', runner),
      [`EFI/slotflip/${efiName('B')}`]: await buildSlotEfi(work, 'B', 'v1', runner),
      'loader/loader.conf': await readFile(join(esp, 'loader', 'loader.conf')),
      [`loader/entries/${IDS.A}.conf`]: entry('A'),
      [`loader/entries/${IDS.B}+0.conf`]: entry('B'),
    },
    runner,
  });
  const img = `${disk}@@${partition(layout, 'boot').offset}`;
  const vars = join(opts.dir, 'OVMF_VARS.fd');
  await copyFile(OVMF_VARS, vars);
  const cmdlinePath = join(opts.dir, 'cmdline');
  await writeFile(cmdlinePath, '');
  const control = createBootControl({ type: 'systemd-boot', esp, cmdline: { path: cmdlinePath, key: 'slotflip.slot' } });
  const mtools = (cmd: string, args: string[]) => runChecked(runner, 'HIL_IMAGE', cmd, ['-i', img, ...args]);
  const espFile = async (name: string, data: Uint8Array) => {
    const f = join(work, 'upload');
    await writeFile(f, data);
    await mtools('mcopy', ['-o', f, `::/${name}`]);
  };
  const pushLoader = async () => {
    const listed = await mtools('mdir', ['-b', '::/loader/entries']);
    for (const line of listed.stdout.split('\n').map((l) => l.trim()).filter((l) => l.endsWith('.conf'))) {
      await mtools('mdel', [line]);
    }
    for (const f of await readdir(entriesDir)) await mtools('mcopy', ['-o', join(entriesDir, f), `::/loader/entries/${f}`]);
    await mtools('mcopy', ['-o', join(esp, 'loader', 'loader.conf'), '::/loader/loader.conf']);
  };
  const pullEntries = async () => {
    await rm(entriesDir, { recursive: true, force: true });
    await mkdir(entriesDir, { recursive: true });
    await mtools('mcopy', ['-n', '::/loader/entries/*', entriesDir]);
  };

  const loaderSnapshot = async (): Promise<LoaderSnapshot> => {
    const entries: Record<string, string> = {};
    for (const f of (await readdir(entriesDir)).sort()) entries[f] = await readFile(join(entriesDir, f), 'utf8');
    return { conf: await readFile(join(esp, 'loader', 'loader.conf'), 'utf8'), entries };
  };

  return {
    label: 'systemd-boot/ovmf',
    control,
    maxTries: control.maxTries,
    disk,
    esp,
    async powerOn() {
      await pushLoader();
      const before = new Set(await readdir(entriesDir));
      const r = await opts.tracker.run(
        'qemu-system-x86_64',
        [
          '-M', 'q35', '-m', '256', '-nographic', '-no-reboot',
          '-drive', `if=pflash,format=raw,readonly=on,file=${OVMF_CODE}`,
          '-drive', `if=pflash,format=raw,file=${vars}`,
          '-drive', `if=virtio,format=raw,file=${disk}`,
          '-serial', 'mon:stdio', '-monitor', 'none', '-nic', 'none',
        ],
        // systemd-boot v252 reports a failed start and waits in its menu
        { timeoutMs: opts.powerOnTimeoutMs ?? 120_000, until: /Failed to (start|execute|load)|Error (loading|starting)/ },
      );
      await pullEntries();
      const parsed = parseGrubConsole(r.console);
      const text = plainConsole(r.console);
      let outcome = parsed.outcome;
      let slot = parsed.slot;
      if (outcome === 'failed' && r.stoppedOnMatch) {
        // the entry systemd-boot tried is the one it renamed (counted) before starting it
        outcome = 'bad-image';
        const renamed = (await readdir(entriesDir)).filter((f) => !before.has(f));
        slot = renamed.length === 1 ? (renamed[0]!.startsWith(IDS.B) ? 'B' : renamed[0]!.startsWith(IDS.A) ? 'A' : undefined) : undefined;
      }
      await writeFile(cmdlinePath, outcome === 'booted' ? `${parsed.cmdline ?? ''}\n` : '');
      return { outcome, slot, image: parsed.image, durationMs: r.durationMs, console: text };
    },
    async writeImage(slot, version) {
      await espFile(`EFI/slotflip/${efiName(slot)}`, await buildSlotEfi(work, slot, version, runner));
    },
    async writeCorruptImage(slot) {
      const efi = await buildSlotEfi(work, slot, 'corrupt', runner);
      efi.fill(0x5a, 0, 512); // no DOS/PE header: LoadImage refuses it
      await espFile(`EFI/slotflip/${efiName(slot)}`, efi);
    },
    async writePartialImage(slot, version) {
      const efi = await buildSlotEfi(work, slot, version, runner);
      await espFile(`EFI/slotflip/${efiName(slot)}`, efi.subarray(0, Math.floor(efi.length / 2)));
    },
    async snapshotEnv() {
      return Buffer.from(JSON.stringify(await loaderSnapshot()));
    },
    async tearEnvWriteSince(before) {
      // The HAL changes the ESP in several steps, each one atomic rename or file replacement (armTrial:
      // entry → `+0`, its sort version raised, entry → `+N`). Power lost before the last step reached
      // the ESP: every entry keeps the name it had before (what the renames did is lost) with the
      // contents written since; if no entry was renamed, the last file replacement is lost instead.
      const old = JSON.parse(before.toString('utf8')) as LoaderSnapshot;
      const now = await loaderSnapshot();
      let renamed = false;
      for (const id of Object.values(IDS)) {
        const was = Object.keys(old.entries).find((f) => entryId(f) === id);
        const is = Object.keys(now.entries).find((f) => entryId(f) === id);
        if (was && is && was !== is) {
          await rename(join(entriesDir, is), join(entriesDir, was));
          renamed = true;
        }
      }
      if (renamed) return;
      for (const [f, text] of Object.entries(old.entries)) if (now.entries[f] !== text) await writeFile(join(entriesDir, f), text);
      await writeFile(join(esp, 'loader', 'loader.conf'), old.conf);
    },
  };
}

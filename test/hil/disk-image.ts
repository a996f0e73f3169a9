/**
 * Disk images for the hardware-in-the-loop lanes, built without root: `sfdisk` writes a GPT into a
 * plain file, `mkfs.vfat -C` + `mcopy` build the FAT boot partition as a separate file that is then
 * copied into place, and slot payloads are written at their partition offsets with positional writes.
 *
 * Layout (fixed, so the U-Boot script and grub.cfg can carry the numbers):
 *
 *   0x00000000  protective MBR + GPT header + entries (first 17 KiB)
 *   0x00040000  bootloader environment, copy 0 (ENV_COPY_SIZE bytes)  — raw, in the gap before p1,
 *   0x00048000  bootloader environment, copy 1                          as boards keep it on eMMC
 *   p1 "boot"   FAT: boot.scr / grub.cfg / EFI files                    (partition 1)
 *   p2 "A"      slot A (raw: the "kernel" the bootloader checks)        (partition 2, Mender's 2)
 *   p3 "B"      slot B                                                  (partition 3, Mender's 3)
 *   p4 "data"   persistent data                                         (partition 4)
 *
 * Trade-off: partitions are small (MiBs) so an image builds in well under a second; the bootloader
 * only reads the first blocks of a slot, and a slot's size is irrelevant to slot *selection*.
 */
import { open, readFile, rm, writeFile, mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { execTool, runChecked, type ToolRunner } from '../../hal/exec.js';
import type { SlotName } from '../../hal/boot-control.js';

export const SECTOR = 512;
export const MIB = 1024 * 1024;
/** byte offset of environment copy 0 / copy 1 inside the disk image. */
export const ENV_OFFSETS = [0x40000, 0x48000] as const;
/** size of one environment copy (CRC + flag + data for the redundant layout). */
export const ENV_COPY_SIZE = 0x4000;

export interface PartitionLayout {
  name: 'boot' | 'A' | 'B' | 'data';
  /** 1-based partition number. */
  number: number;
  /** first byte. */
  offset: number;
  /** bytes. */
  size: number;
}

export interface DiskLayout {
  sizeBytes: number;
  partitions: readonly PartitionLayout[];
}

export interface LayoutOptions {
  bootMiB?: number;
  slotMiB?: number;
  dataMiB?: number;
}

/** Pure: the partition table the builder writes (1 MiB aligned, first partition at 1 MiB). */
export function diskLayout(opts: LayoutOptions = {}): DiskLayout {
  const sizes: Array<[PartitionLayout['name'], number]> = [
    ['boot', (opts.bootMiB ?? 8) * MIB],
    ['A', (opts.slotMiB ?? 2) * MIB],
    ['B', (opts.slotMiB ?? 2) * MIB],
    ['data', (opts.dataMiB ?? 1) * MIB],
  ];
  let offset = MIB;
  const partitions = sizes.map(([name, size], i) => {
    const p = { name, number: i + 1, offset, size };
    offset += size;
    return p;
  });
  // one spare MiB at the end for the backup GPT
  return { sizeBytes: offset + MIB, partitions };
}

export function partition(layout: DiskLayout, name: PartitionLayout['name']): PartitionLayout {
  const p = layout.partitions.find((x) => x.name === name);
  if (!p) throw new Error(`disk layout has no partition ${name}`);
  return p;
}

export function slotPartition(layout: DiskLayout, slot: SlotName): PartitionLayout {
  return partition(layout, slot);
}

/** Pure: the sfdisk script for `layout` (GPT, named partitions). */
export function sfdiskScript(layout: DiskLayout): string {
  const types: Record<PartitionLayout['name'], string> = {
    boot: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B', // EFI system partition: FAT, found by OVMF too
    A: '0FC63DAF-8483-4772-8E79-3D69D8477DE4',
    B: '0FC63DAF-8483-4772-8E79-3D69D8477DE4',
    data: '0FC63DAF-8483-4772-8E79-3D69D8477DE4',
  };
  const lines = ['label: gpt', 'unit: sectors', 'first-lba: 2048', ''];
  for (const p of layout.partitions) {
    lines.push(`start=${p.offset / SECTOR}, size=${p.size / SECTOR}, type=${types[p.name]}, name="${p.name}"`);
  }
  return lines.join('\n') + '\n';
}

export interface BuildDiskOptions {
  path: string;
  layout?: DiskLayout;
  /** files to put on the FAT boot partition: name in the FAT (may contain `/`) → content. */
  bootFiles?: Record<string, Uint8Array | string>;
  /** raw content written at the start of each slot partition. */
  slots?: Partial<Record<SlotName, Uint8Array>>;
  runner?: ToolRunner;
}

/** Builds the image at `opts.path` (replacing it). Needs sfdisk, mkfs.vfat, mcopy, mmd; no root. */
export async function buildDisk(opts: BuildDiskOptions): Promise<DiskLayout> {
  const layout = opts.layout ?? diskLayout();
  const runner = opts.runner ?? execTool;
  await rm(opts.path, { force: true });
  const fh = await open(opts.path, 'w');
  await fh.truncate(layout.sizeBytes);
  await fh.close();
  await runChecked(runner, 'HIL_IMAGE', 'sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', opts.path], { input: sfdiskScript(layout) });

  const boot = partition(layout, 'boot');
  await writeAt(opts.path, boot.offset, await buildFatImage(opts.bootFiles ?? {}, boot.size, 'BOOT', runner));
  for (const [slot, data] of Object.entries(opts.slots ?? {}) as Array<[SlotName, Uint8Array]>) {
    const p = slotPartition(layout, slot);
    if (data.length > p.size) throw new Error(`slot ${slot} payload ${data.length} B exceeds partition ${p.size} B`);
    await writeAt(opts.path, p.offset, data);
  }
  return layout;
}

/** A FAT filesystem image of `sizeBytes` holding `files` (name may contain `/`), built with
 * `mkfs.vfat -C` and mtools in a temp dir. */
export async function buildFatImage(files: Record<string, Uint8Array | string>, sizeBytes: number, label: string, runner: ToolRunner = execTool): Promise<Buffer> {
  const work = await mkdtemp(join(tmpdir(), 'slotflip-hil-img-'));
  try {
    const vfat = join(work, 'fs.vfat');
    await runChecked(runner, 'HIL_IMAGE', 'mkfs.vfat', ['-C', '-n', label, vfat, String(sizeBytes / 1024)]);
    const dirs = new Set<string>();
    for (const [name, content] of Object.entries(files)) {
      const parts = name.split('/');
      for (let i = 1; i < parts.length; i++) {
        const d = parts.slice(0, i).join('/');
        if (!dirs.has(d)) {
          dirs.add(d);
          await runChecked(runner, 'HIL_IMAGE', 'mmd', ['-i', vfat, `::/${d}`]);
        }
      }
      const src = join(work, 'f');
      await writeFile(src, content);
      await runChecked(runner, 'HIL_IMAGE', 'mcopy', ['-o', '-i', vfat, src, `::/${name}`]);
    }
    return await readFile(vfat);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Positional write into an image file (no truncation), synced. */
export async function writeAt(path: string, offset: number, data: Uint8Array): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await fh.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function readAt(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    await fh.read(buf, 0, length, offset);
    return buf;
  } finally {
    await fh.close();
  }
}

/** Reads the GPT back with `sfdisk --json` (proves the image is what the bootloaders will see). */
export async function readPartitionTable(path: string, runner: ToolRunner = execTool): Promise<Array<{ name: string; start: number; size: number }>> {
  const r = await runChecked(runner, 'HIL_IMAGE', 'sfdisk', ['--json', path]);
  const parsed = JSON.parse(r.stdout) as { partitiontable: { partitions: Array<{ name?: string; start: number; size: number }> } };
  return parsed.partitiontable.partitions.map((p) => ({ name: p.name ?? '', start: p.start * SECTOR, size: p.size * SECTOR }));
}

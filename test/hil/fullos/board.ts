/**
 * The full-OS board: an x86-64 PC (q35, OVMF, one virtio disk, one virtio NIC) as the
 * systemd/examples/x86-grub-efi device, booting a real Debian from slot A or B.
 *
 *   p1 ESP (FAT)  /EFI/BOOT/BOOTX64.EFI   standalone GRUB (grub-mkstandalone) → /EFI/slotflip/grub.cfg
 *                 /EFI/slotflip/grubenv  greenboot's boot_counter/boot_success + slotflip_slot
 *   p2 A, p3 B    ext4 root filesystems (guest.ts), kernel and initramfs inside (/vmlinuz, /initrd.img)
 *   p4 data       ext4, mounted at /data (made from the image's /usr/share/factory/data):
 *                 /var/lib/slotflip and /var/lib/app are bound from it, so the daemon's state and the
 *                 application's data survive the slot switch
 *
 * grub.cfg is greenboot's 08_fallback_counting logic with the A/B choice in `slotflip_slot`
 * (`greenbootSelection` from ../grub-board.ts, the same lines the bootloader-level lanes run), then a real `linux`/`initrd`/`boot`
 * with `slotflip.slot=X` on the kernel command line, where the HAL's grub backend reads the booted slot.
 * GRUB prints `SLOTFLIP-BOOT slot=X` on the serial console first: the harness reads the bootloader's
 * choice from there, never from the guest.
 *
 * Network: QEMU user networking with `restrict=on` (the guest reaches nothing outside) and two
 * `guestfwd` rules: 10.0.2.100:1883 and 10.0.2.101:80 inside the guest are, per connection, a small Node
 * pipe (forwarder.mjs) to the harness's Mosquitto and HTTP server on 127.0.0.1. No other address is used.
 *
 * Power: `-no-reboot`, so every guest reboot ends the QEMU process: one process is one power-on, and the
 * harness starts the next (OVMF's variable store persists in the board directory).
 */
import { copyFile, open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execTool, runChecked, type ToolRunner } from '../../../hal/exec.js';
import type { SlotName } from '../../../hal/boot-control.js';
import { buildDisk, diskLayout, partition, slotPartition, type DiskLayout } from '../disk-image.js';
import type { EmulatorTracker, PowerOnResult } from '../emulator.js';
import { greenbootSelection, OVMF_CODE_FD, OVMF_VARS_TEMPLATE, plainConsole } from '../grub-board.js';
import { ESP_GRUBENV, GUEST_BROKER, GUEST_HTTP } from './guest.js';

export const FULLOS_LAYOUT: DiskLayout = diskLayout({ bootMiB: 32, slotMiB: 640, dataMiB: 32 });
const GRUB_MODULES = 'part_gpt fat ext2 linux loadenv test echo normal configfile halt serial terminal gzio';

/** Pure: the ESP's grub.cfg (greenboot counting, A/B in slotflip_slot, real kernel boot). */
export function fullOsGrubConfig(layout: DiskLayout = FULLOS_LAYOUT, envPath: string = ESP_GRUBENV): string {
  const env = `(hd0,gpt1)/${envPath}`;
  const pa = slotPartition(layout, 'A').number;
  const pb = slotPartition(layout, 'B').number;
  return [
    '# slotflip full-OS HIL board (test/hil/fullos/board.ts): greenboot counting, A/B in slotflip_slot',
    'set timeout=0',
    ...greenbootSelection(env),
    `if [ "$sf_boot" = "B" ]; then set sf_part=gpt${pb}; set sf_dev=/dev/vda${pb}; else set sf_part=gpt${pa}; set sf_dev=/dev/vda${pa}; fi`,
    'echo "SLOTFLIP-BOOT slot=$sf_boot counter=$boot_counter"',
    'linux (hd0,$sf_part)/vmlinuz root=$sf_dev rw console=ttyS0,115200 quiet slotflip.slot=$sf_boot',
    'initrd (hd0,$sf_part)/initrd.img',
    'boot',
    // a slot without a kernel: GRUB's `linux` failed; halting powers the board off (the harness sees no boot)
    'echo "SLOTFLIP-NOKERNEL slot=$sf_boot"',
    'halt',
    '',
  ].join('\n');
}

/** The standalone GRUB EFI binary whose embedded config hands over to the ESP's grub.cfg. */
async function buildGrubEfi(dir: string, runner: ToolRunner): Promise<Buffer> {
  const cfg = join(dir, 'embedded.cfg');
  const out = join(dir, 'BOOTX64.EFI');
  await writeFile(cfg, 'serial --unit=0 --speed=115200\nterminal_output serial console\nconfigfile (hd0,gpt1)/EFI/slotflip/grub.cfg\n');
  await runChecked(runner, 'HIL_IMAGE', 'grub-mkstandalone', ['-O', 'x86_64-efi', `--modules=${GRUB_MODULES}`, `--install-modules=${GRUB_MODULES}`, '--locales=', '--fonts=', '--themes=', '-o', out, `boot/grub/grub.cfg=${cfg}`]);
  return readFile(out);
}

/** Streams a file into the disk image at `offset` (slot images are hundreds of MiB). */
export async function copyInto(disk: string, offset: number, file: string, limit: number): Promise<number> {
  const src = await open(file, 'r');
  const dst = await open(disk, 'r+');
  try {
    const size = (await src.stat()).size;
    if (size > limit) throw new Error(`${file} is ${size} B, more than the ${limit} B partition`);
    const buf = Buffer.alloc(8 << 20);
    let at = 0;
    while (at < size) {
      const { bytesRead } = await src.read(buf, 0, buf.length, at);
      if (bytesRead === 0) break;
      await dst.write(buf, 0, bytesRead, offset + at);
      at += bytesRead;
    }
    await dst.sync();
    return at;
  } finally {
    await src.close();
    await dst.close();
  }
}

export interface FullOsBoardOptions {
  dir: string;
  /** ext4 image of the factory release, written to slot A (slot B stays empty). */
  factoryImage: string;
  /** grubenv as the factory writes it (grub-editenv file). */
  grubenv: string;
  /** the host's broker and HTTP server ports on 127.0.0.1. */
  brokerPort: number;
  httpPort: number;
  tracker: EmulatorTracker;
  runner?: ToolRunner;
  /** a MISCONFIGURED board: GRUB loads/saves this ESP path instead of the grubenv the daemon's config
   * names (both start as the factory's copy). Default: the same file. */
  grubReadsEnv?: string;
  /** the data partition's first-boot contents (`mkfs.ext4 -d`); default: empty. */
  dataTree?: string;
}

export interface FullOsBoard {
  disk: string;
  layout: DiskLayout;
  /** One power-on: runs until the guest reboots or powers off (or `timeoutMs`, or `until` matches). */
  powerOn(opts: { timeoutMs: number; until?: RegExp }): Promise<PowerOnResult & { grubSlot?: SlotName }>;
  /** The grubenv on the ESP as it is now (read from the image with mtools). */
  readGrubenv(): Promise<Record<string, string>>;
  /** A file on the data partition as it is now (powered off; debugfs), or undefined if absent. */
  readData(path: string): Promise<string | undefined>;
  /** Writes a file onto the data partition (powered off; debugfs -w), replacing it. */
  writeData(path: string, content: string): Promise<void>;
}

/** Replays the ext4 journal of a powered-off guest's partition image: debugfs reads the file system
 * as checkpointed, and what the guest fsynced may still be only in the journal. */
async function replayJournal(img: string, runner: ToolRunner = execTool): Promise<void> {
  const r = await runner.run('e2fsck', ['-fy', '-E', 'journal_only', img], { timeoutMs: 60_000 });
  // 0 nothing to do, 1 journal replayed / errors corrected
  if (r.code !== 0 && r.code !== 1) throw new Error(`e2fsck -E journal_only ${img}: exit ${r.code}: ${r.stderr.slice(0, 500)}`);
}

/** The partition [offset, offset + size) of `disk` as a file of its own. */
async function copyOut(disk: string, offset: number, size: number, out: string): Promise<void> {
  const src = await open(disk, 'r');
  const dst = await open(out, 'w');
  try {
    const buf = Buffer.alloc(1 << 20);
    for (let done = 0; done < size; ) {
      const { bytesRead } = await src.read(buf, 0, Math.min(buf.length, size - done), offset + done);
      if (bytesRead === 0) break;
      await dst.write(buf, 0, bytesRead);
      done += bytesRead;
    }
  } finally {
    await src.close();
    await dst.close();
  }
}

/** The per-connection pipe QEMU's guestfwd `cmd:` runs: stdin/stdout ↔ 127.0.0.1:PORT. */
const FORWARDER = `import { connect } from 'node:net';
const s = connect({ host: '127.0.0.1', port: Number(process.argv[2]) });
process.stdin.pipe(s).pipe(process.stdout);
s.on('error', () => process.exit(1));
s.on('close', () => process.exit(0));
process.stdin.on('end', () => s.end());
`;

export async function createFullOsBoard(opts: FullOsBoardOptions): Promise<FullOsBoard> {
  const runner = opts.runner ?? execTool;
  const layout = FULLOS_LAYOUT;
  const disk = join(opts.dir, 'disk.img');
  await buildDisk({
    path: disk,
    layout,
    bootFiles: {
      'EFI/BOOT/BOOTX64.EFI': await buildGrubEfi(opts.dir, runner),
      'EFI/slotflip/grub.cfg': fullOsGrubConfig(layout, opts.grubReadsEnv ?? ESP_GRUBENV),
      [ESP_GRUBENV]: await readFile(opts.grubenv),
      ...(opts.grubReadsEnv ? { [opts.grubReadsEnv]: await readFile(opts.grubenv) } : {}),
    },
    runner,
  });
  await copyInto(disk, slotPartition(layout, 'A').offset, opts.factoryImage, slotPartition(layout, 'A').size);
  const dataImg = join(opts.dir, 'data.ext4');
  const data = partition(layout, 'data');
  await runChecked(runner, 'HIL_IMAGE', 'mkfs.ext4', ['-q', '-F', '-L', 'slotflip-data', '-E', 'root_owner=0:0', ...(opts.dataTree ? ['-d', opts.dataTree] : []), dataImg, `${data.size / 1024}k`]);
  await copyInto(disk, data.offset, dataImg, data.size);

  const vars = join(opts.dir, 'OVMF_VARS.fd');
  await copyFile(OVMF_VARS_TEMPLATE, vars);
  const forwarder = join(opts.dir, 'forwarder.mjs');
  await writeFile(forwarder, FORWARDER);
  const fwd = (ip: string, port: number, hostPort: number) => `guestfwd=tcp:${ip}:${port}-cmd:${process.execPath} ${forwarder} ${hostPort}`;
  const args = [
    '-M', 'q35', '-m', '1024', '-smp', '1', '-nographic', '-no-reboot',
    '-drive', `if=pflash,format=raw,readonly=on,file=${OVMF_CODE_FD}`,
    '-drive', `if=pflash,format=raw,file=${vars}`,
    '-drive', `if=virtio,format=raw,file=${disk}`,
    '-netdev', ['user', 'id=n0', 'restrict=on', fwd(GUEST_BROKER.ip, GUEST_BROKER.port, opts.brokerPort), fwd(GUEST_HTTP.ip, GUEST_HTTP.port, opts.httpPort)].join(','),
    '-device', 'virtio-net-pci,netdev=n0',
    '-serial', 'mon:stdio', '-monitor', 'none',
  ];
  const esp = partition(layout, 'boot');
  return {
    disk,
    layout,
    async powerOn({ timeoutMs, until }) {
      const r = await opts.tracker.run('qemu-system-x86_64', args, { timeoutMs, ...(until ? { until } : {}), maxOutputBytes: 32 << 20 });
      const text = plainConsole(r.console);
      const m = /SLOTFLIP-BOOT slot=([AB])/.exec(text);
      return { ...r, console: text, ...(m ? { grubSlot: m[1] as SlotName } : {}) };
    },
    async readData(path) {
      await copyOut(disk, data.offset, data.size, dataImg);
      await replayJournal(dataImg);
      const r = await runner.run('debugfs', ['-R', `cat ${path}`, dataImg], { maxOutputBytes: 4 << 20 });
      // debugfs exits 0 either way; a missing file is reported on stderr
      return r.code === 0 && !/File not found/.test(r.stderr) ? r.stdout : undefined;
    },
    async writeData(path, content) {
      await copyOut(disk, data.offset, data.size, dataImg);
      // a write into a file system whose journal is not replayed would be undone at the next mount
      await replayJournal(dataImg);
      const src = join(opts.dir, 'data-write.tmp');
      await writeFile(src, content);
      await runChecked(runner, 'HIL_IMAGE', 'debugfs', ['-w', '-R', `rm ${path}`, dataImg]).catch(() => undefined);
      await runChecked(runner, 'HIL_IMAGE', 'debugfs', ['-w', '-R', `write ${src} ${path}`, dataImg]);
      await copyInto(disk, data.offset, dataImg, data.size);
    },
    async readGrubenv() {
      const r = await runChecked(runner, 'HIL_IMAGE', 'mtype', ['-i', `${disk}@@${esp.offset}`, `::/${ESP_GRUBENV}`]);
      const vars: Record<string, string> = {};
      for (const line of r.stdout.split('\n')) {
        const m = /^([A-Za-z0-9_]+)=(.*)$/.exec(line);
        if (m) vars[m[1]!] = m[2]!;
      }
      return vars;
    },
  };
}

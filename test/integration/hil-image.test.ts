/**
 * The HIL disk-image builder (no root): GPT written by sfdisk into a file, FAT boot partition from
 * mkfs.vfat -C + mtools, and the torn-write model the U-Boot lane uses.
 */
import t from 'tap';
import { join } from 'node:path';
import { execTool, runChecked } from '../../hal/exec.js';
import { decodeEnvBlock, encodeEnvBlock } from '../../hal/uboot-env.js';
import { buildDisk, diskLayout, readAt, readPartitionTable, MIB } from '../hil/disk-image.js';
import { tornCopy } from '../hil/uboot-board.js';

t.test('GPT with boot, A, B, data; files on the FAT boot partition; slot payloads in place', async (t) => {
  const path = join(t.testdir(), 'disk.img');
  const layout = diskLayout();
  await buildDisk({ path, layout, bootFiles: { 'grub/grub.cfg': 'echo hi\n' }, slots: { B: Buffer.from('SLOT-B-PAYLOAD') } });
  const parts = await readPartitionTable(path);
  t.same(parts.map((p) => p.name), ['boot', 'A', 'B', 'data']);
  t.same(parts.map((p) => p.start), layout.partitions.map((p) => p.offset));
  t.equal(parts[0]!.start, MIB, 'first partition 1 MiB aligned');
  const boot = layout.partitions[0]!;
  const r = await runChecked(execTool, 'T', 'mtype', ['-i', `${path}@@${boot.offset}`, '::/grub/grub.cfg']);
  t.equal(r.stdout, 'echo hi\n', 'file readable from the FAT partition inside the image');
  t.equal((await readAt(path, layout.partitions[2]!.offset, 14)).toString(), 'SLOT-B-PAYLOAD');
});

t.test('a torn environment write is new before the cut, old after it, and fails the CRC', async (t) => {
  const old = encodeEnvBlock(new Map([['BOOT_ORDER', 'A B'], ['BOOT_A_LEFT', '3'], ['BOOT_B_LEFT', '0']]), 0x4000, true, 1);
  const next = encodeEnvBlock(new Map([['BOOT_ORDER', 'B A'], ['BOOT_A_LEFT', '3'], ['BOOT_B_LEFT', '3'], ['slotflip_trial', 'B']]), 0x4000, true, 2);
  const torn = tornCopy(old, next);
  t.equal(torn.length, old.length);
  t.equal(torn[4], 2, 'the flag byte (early in the block) is already new');
  t.notOk(decodeEnvBlock(torn, true).crcOk, 'but the copy fails its CRC');
  t.ok(decodeEnvBlock(old, true).crcOk && decodeEnvBlock(next, true).crcOk);
  t.same(tornCopy(old, old), old, 'nothing differs: nothing torn');
});

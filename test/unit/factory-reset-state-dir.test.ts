/**
 * daemon/factory-reset.ts `stateDirOnData`: which part of the data partition is slotflip's state dir
 * (its floor and trust anchors survive a reset), found by identity, not by name: the reference
 * layout binds /var/lib/slotflip from <data>/var/lib/slotflip (a symlink stands in for the bind).
 */
import t from 'tap';
import { mkdir, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { stateDirOnData } from '../../daemon/factory-reset.js';

t.test('the state dir under the data dir, bound from it, elsewhere, not yet created', async (t) => {
  const dir = t.testdir();
  const data = join(dir, 'data');
  await mkdir(join(data, 'var/lib/slotflip'), { recursive: true });
  t.equal(await stateDirOnData(data, join(data, 'var/lib/slotflip')), 'var/lib/slotflip', 'inside the data dir');
  // /var/lib/slotflip ← <data>/var/lib/slotflip: on the device the path is the absolute state dir
  const bound = join(dir, 'root/var/lib/slotflip');
  await mkdir(join(dir, 'root/var/lib'), { recursive: true });
  await mkdir(join(data, bound), { recursive: true });
  await symlink(join(data, bound), bound);
  t.equal(await stateDirOnData(data, bound), bound.slice(1), 'bound from <data><stateDir>: found by device and inode');
  const elsewhere = join(dir, 'elsewhere/slotflip');
  await mkdir(elsewhere, { recursive: true });
  t.equal(await stateDirOnData(data, elsewhere), undefined, 'on another tree: the reset never touches it');
  t.equal(await stateDirOnData(data, join(data, 'var/lib/new')), 'var/lib/new', 'not created yet but under the data dir');
  t.equal(await stateDirOnData(data, data), undefined, 'the data dir itself is no state dir');
});

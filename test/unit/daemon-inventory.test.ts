// Inventory: real readings on this machine, and injected paths/readings for exact values.
import t from 'tap';
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { builtinSystemInfo, collectInventory, readBootId, freeSpaceMiB, type SystemInfo } from '../../daemon/inventory.js';

const fakeSi = (mounts: Array<{ mount: string; available: number }>): SystemInfo => ({
  time: () => ({ uptime: 1234.9 }),
  fsSize: async () => mounts,
  osInfo: async () => ({ distro: 'TestOS', release: '1', kernel: '6.1.0', arch: 'arm64' }),
});

t.test('injected readings give an exact inventory', async (t) => {
  const dir = t.testdir({ boot_id: '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n' });
  const inv = await collectInventory(
    { deviceId: 'dev1', hardware: 'acme,board-v2', bootedSlot: 'B', slots: { A: { version: '1.0.0', boot: { state: 'good', primary: false } }, B: { version: '1.1.0', boot: { state: 'trial', triesLeft: 2, primary: true } } } },
    { bootIdPath: join(dir, 'boot_id'), dataPath: '/var/lib/slotflip', si: fakeSi([{ mount: '/', available: 10 * 1048576 }, { mount: '/var', available: 300 * 1048576 }, { mount: '/var/lib/slotflip-other', available: 1 }]), now: () => 42 },
  );
  t.same(inv, {
    deviceId: 'dev1', hardware: 'acme,board-v2', bootedSlot: 'B',
    slots: { A: { version: '1.0.0', boot: { state: 'good', primary: false } }, B: { version: '1.1.0', boot: { state: 'trial', triesLeft: 2, primary: true } } },
    uptimeSeconds: 1234, bootId: '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0', freeSpaceMiB: 300,
    os: { distro: 'TestOS', release: '1', kernel: '6.1.0', arch: 'arm64' }, collectedAtMs: 42,
  }, 'longest mount prefix wins, not a mere string prefix');
});

t.test('unreadable parts are left out, never thrown', async (t) => {
  const dir = t.testdir({ bad_boot_id: 'not-a-uuid' });
  const broken: SystemInfo = { time: () => ({ uptime: 1 }), fsSize: async () => { throw new Error('df failed'); }, osInfo: async () => { throw new Error('no'); } };
  const inv = await collectInventory({ deviceId: 'd' }, { bootIdPath: join(dir, 'bad_boot_id'), si: broken, now: () => 1 });
  t.same(inv, { deviceId: 'd', slots: {}, uptimeSeconds: 1, collectedAtMs: 1 });
  t.equal(await readBootId(join(dir, 'missing')), undefined);
  t.equal(await freeSpaceMiB('/x', { fsSize: async () => [] }), undefined);
});

t.test('real readings on this machine', async (t) => {
  const dir = t.testdir();
  const inv = await collectInventory({ deviceId: 'here' }, { dataPath: dir });
  t.match(inv.bootId, /^[0-9a-f-]{36}$/, 'boot id from /proc');
  t.equal(inv.bootId, await readBootId());
  t.ok(inv.uptimeSeconds > 0);
  t.ok((inv.freeSpaceMiB ?? 0) > 0);
  t.match(inv.os, { kernel: /\d/ });
});

t.test('inventory fits a Record<string, unknown> state payload', async (t) => {
  const inv: Record<string, unknown> = await collectInventory({ deviceId: 'x' }, { si: fakeSi([]), now: () => 0, bootIdPath: '/nonexistent' });
  t.same(Object.keys(inv).sort(), ['collectedAtMs', 'deviceId', 'os', 'slots', 'uptimeSeconds']);
});

t.test('built-in readings: os-release parsed as systeminformation did, statfs only on the mounts that hold the path', async (t) => {
  const dir = t.testdir({
    'os-release': 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nVERSION="12 (bookworm)"\nID=debian\n',
    'os-release-min': 'NAME=Yocto\nVERSION_ID=5.0\n',
    'sub dir': {},
  });
  const info = builtinSystemInfo({ osReleasePaths: [join(dir, 'missing'), join(dir, 'os-release')] });
  t.match(await info.osInfo(), { distro: 'Debian GNU/Linux', release: '12', kernel: /\d/, arch: process.arch });
  t.match(await builtinSystemInfo({ osReleasePaths: [join(dir, 'os-release-min')] }).osInfo(), { distro: 'Yocto', release: '5.0' });
  await t.rejects(builtinSystemInfo({ osReleasePaths: [join(dir, 'missing')] }).osInfo(), 'no os-release: rejected (collectInventory leaves `os` out)');
  // a mount table naming this test dir (with an escaped space) and one that does not exist
  const mounts = join(dir, 'mounts');
  await writeFile(mounts, `rootfs / rootfs rw 0 0\nnone ${join(dir, 'sub\\040dir')} tmpfs rw 0 0\nnone /nonexistent-mount tmpfs rw 0 0\n`);
  const fs = await builtinSystemInfo({ mountsPath: mounts }).fsSize(join(dir, 'sub dir', 'state'));
  t.same(fs.map((m) => m.mount), ['/', join(dir, 'sub dir')], 'only the mounts that can hold the path, escapes decoded');
  t.ok(fs.every((m) => m.available > 0));
  t.equal(await freeSpaceMiB(join(dir, 'sub dir', 'state'), builtinSystemInfo({ mountsPath: mounts })), Math.floor(fs[1]!.available / 1048576));
  t.same((await builtinSystemInfo({ mountsPath: mounts }).fsSize()).map((m) => m.mount), ['/', join(dir, 'sub dir')], 'no path: every mount that statfs can read');
});

t.test('built-in OS readings match systeminformation on this machine', async (t) => {
  const si = (await import('systeminformation')).default;
  const [ours, theirs] = await Promise.all([builtinSystemInfo().osInfo(), si.osInfo()]);
  t.same(ours, { distro: theirs.distro, release: theirs.release, kernel: theirs.kernel, arch: theirs.arch });
});

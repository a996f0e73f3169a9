/**
 * `repo prune`: old releases leave the targets metadata, never one a device of some hardware and
 * channel may still be pointed at (below a partial rollout, a halted one, an explicit device list),
 * and a format 2 release's index target goes with it. Checked through the device's own refresh and
 * selection afterwards.
 */
import t from 'tap';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTestImage } from '../../hal/board.js';
import { addRelease, initRepo, pruneReleases, setRollout } from '../../manifests/repo.js';
import { TrustClient, dirSource } from '../../manifests/client.js';
import { selectRelease } from '../../manifests/select.js';

const HW = 'acme,prune';

async function repoWith(dir: string, releases: { version: string; hardware?: string[]; channel?: string; format?: 1 | 2; devices?: string[]; delta?: boolean }[]): Promise<string> {
  const repo = join(dir, 'repo');
  await initRepo(repo);
  for (const [i, r] of releases.entries()) {
    const image = join(dir, `os-${r.version}.img`);
    await writeFile(image, makeTestImage({ version: r.version, size: 40 * 1024 }));
    await addRelease(repo, { image, version: r.version, securityVersion: i + 1, hardware: r.hardware ?? [HW], channel: r.channel ?? 'stable', compression: 'gzip', chunkSize: 16 * 1024, ...(r.format ? { format: r.format } : {}), ...(r.devices ? { devices: r.devices } : {}), ...(r.delta ? { delta: true } : {}) });
  }
  return repo;
}

/** Target names of the newest signed targets metadata. */
async function targetNames(repo: string): Promise<string[]> {
  const meta = join(repo, 'repository/metadata');
  const newest = (await readdir(meta)).filter((n) => /^\d+\.targets\.json$/.test(n)).sort((x, y) => parseInt(y) - parseInt(x))[0]!;
  return Object.keys((JSON.parse(await readFile(join(meta, newest), 'utf8')) as { signed: { targets: Record<string, unknown> } }).signed.targets).sort();
}

t.test('keeps the N best per hardware and channel; index targets go along', async (t) => {
  const dir = t.testdir();
  const repo = await repoWith(dir, [{ version: '1.0.0', format: 1 }, { version: '1.1.0' }, { version: '1.2.0' }, { version: '1.0.1', channel: 'beta' }]);
  const dry = await pruneReleases(repo, { keep: 1, dryRun: true });
  t.same(dry, { removed: ['releases/1.0.0/os-1.0.0.img.gz', 'releases/1.1.0/os-1.1.0.img.gz'], kept: ['releases/1.0.1/os-1.0.1.img.gz', 'releases/1.2.0/os-1.2.0.img.gz'] });
  t.equal((await targetNames(repo)).length, 7, 'a dry run changes nothing (4 releases, 3 index targets)');
  const r = await pruneReleases(repo, { keep: 1 });
  t.ok(r.targetsVersion !== undefined, 'targets re-signed');
  t.same(await targetNames(repo), ['releases/1.0.1/os-1.0.1.img.gz', 'releases/1.0.1/os-1.0.1.img.gz.index', 'releases/1.2.0/os-1.2.0.img.gz', 'releases/1.2.0/os-1.2.0.img.gz.index']);
  t.same(await pruneReleases(repo, { keep: 1 }), { removed: [], kept: ['releases/1.0.1/os-1.0.1.img.gz', 'releases/1.2.0/os-1.2.0.img.gz'] }, 'idempotent: nothing left to remove');
  await t.rejects(pruneReleases(repo, { keep: 0 }), { code: 'MANIFEST_BAD_ARGUMENT' });
});

t.test('a release\'s delta index and pack targets go with it', async (t) => {
  const dir = t.testdir();
  const repo = await repoWith(dir, [{ version: '1.0.0', delta: true }, { version: '1.1.0', delta: true }]);
  t.same((await targetNames(repo)).filter((n) => n.includes('.delta-')), ['releases/1.0.0/os-1.0.0.img.gz.delta-index', 'releases/1.0.0/os-1.0.0.img.gz.delta-pack', 'releases/1.1.0/os-1.1.0.img.gz.delta-index', 'releases/1.1.0/os-1.1.0.img.gz.delta-pack']);
  await pruneReleases(repo, { keep: 1 });
  t.same(await targetNames(repo), ['releases/1.1.0/os-1.1.0.img.gz', 'releases/1.1.0/os-1.1.0.img.gz.delta-index', 'releases/1.1.0/os-1.1.0.img.gz.delta-pack', 'releases/1.1.0/os-1.1.0.img.gz.index']);
});

t.test('a partial rollout, a halt or a device list keeps the release the other devices run', async (t) => {
  const dir = t.testdir();
  const repo = await repoWith(dir, [{ version: '1.0.0' }, { version: '1.1.0' }, { version: '1.2.0' }, { version: '1.3.0', devices: ['dev-7'] }]);
  await setRollout(repo, 'releases/1.2.0/os-1.2.0.img.gz', { percent: 10 });
  let r = await pruneReleases(repo, { keep: 1 });
  t.same(r.removed, ['releases/1.0.0/os-1.0.0.img.gz'], '1.3.0 (one device) and 1.2.0 (10 %) leave 1.1.0 as what most devices run');
  const client = new TrustClient({ trustedDir: join(dir, 'trusted'), shippedRootPath: join(repo, 'repository/metadata/1.root.json'), source: dirSource(join(repo, 'repository/metadata')), now: Date.now });
  const { releases } = await client.refresh();
  const outside = ['a', 'b', 'c', 'd', 'e', 'f'].map((id) => selectRelease(releases, { deviceId: id, hardware: HW, channel: 'stable', committedSecurityVersion: 0 }, Date.now())).filter((s) => s.ok && s.release.custom.version === '1.1.0');
  t.ok(outside.length > 0, 'devices outside the rollout still find 1.1.0');
  await setRollout(repo, 'releases/1.2.0/os-1.2.0.img.gz', undefined);
  r = await pruneReleases(repo, { keep: 1 });
  t.same(r.removed, ['releases/1.1.0/os-1.1.0.img.gz'], 'once 1.2.0 reaches everyone, 1.1.0 may go');
  await setRollout(repo, 'releases/1.2.0/os-1.2.0.img.gz', { percent: 100, halted: true });
  t.same((await pruneReleases(repo, { keep: 1, dryRun: true })).removed, [], 'nothing goes below a halted release that is the last one for everyone');
});

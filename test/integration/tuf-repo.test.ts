/**
 * The manufacturer's repository tools on disk (init, release add, timestamp timer, rollout, key
 * rotations of every role) followed by a device TrustClient reading the repository directory.
 */
import t from 'tap';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { initRepo, addRelease, setRollout, resignTimestamp, rotateKey, repoSummary } from '../../manifests/repo.js';
import { TrustClient, dirSource, targetUrl } from '../../manifests/client.js';
import { selectRelease } from '../../manifests/select.js';

const T0 = Date.parse('2026-06-01T00:00:00Z');
const DAY = 86_400_000;

async function hashDir(dir: string): Promise<string> {
  const h = createHash('sha256');
  for (const n of (await readdir(dir)).sort()) h.update(n).update(await readFile(join(dir, n)));
  return h.digest('hex');
}

t.test('init, add a release, a device refreshes from the directory and selects it', async (t) => {
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  let now = T0;
  const sum = await initRepo(repo, { now: () => now });
  t.equal(sum.rootVersion, 1);
  t.equal(sum.keyIds.root.length, 3);
  for (const n of await readdir(join(repo, 'keys'))) {
    if (n.endsWith('.pem')) t.equal((await stat(join(repo, 'keys', n))).mode & 0o777, 0o600, `${n} is 0600`);
  }
  t.equal((await stat(join(repo, 'keys'))).mode & 0o777, 0o700, 'keys/ is 0700');
  await mkdir(join(dir, 'probe'));
  t.equal((await stat(repo)).mode & 0o777, (await stat(join(dir, 'probe'))).mode & 0o777, 'the repository dir itself keeps the default mode (servable)');
  await t.rejects(initRepo(repo, { now: () => now }), { code: 'MANIFEST_REPO_EXISTS' });

  const image = join(dir, 'image.img');
  await writeFile(image, randomBytes(40_000));
  const added = await addRelease(repo, { now: () => now, image, version: '1.1.0', securityVersion: 2, hardware: ['acme,board-a'], channel: 'stable', compression: 'gzip', chunkSize: 8192 });
  t.equal(added.targetName, 'releases/1.1.0/image.img.gz');
  t.equal(added.chunks, 5);
  t.match(added.path, new RegExp(`targets/releases/1.1.0/${added.sha256}\\.image\\.img\\.gz$`));

  const trusted = join(dir, 'trusted');
  const client = new TrustClient({ trustedDir: trusted, shippedRootPath: join(repo, 'repository/metadata/1.root.json'), source: dirSource(join(repo, 'repository/metadata')), now: () => now });
  const res = await client.refresh();
  t.equal(res.targetsVersion, 2);
  t.equal(res.releases.length, 1);
  const sel = selectRelease(client.targets(), { deviceId: 'dev-1', hardware: 'acme,board-a', channel: 'stable', committedSecurityVersion: 1 }, now);
  t.ok(sel.ok);
  if (sel.ok) {
    t.equal(sel.release.custom.version, '1.1.0');
    const url = targetUrl('http://cdn.example/targets', sel.release);
    t.equal(url, `http://cdn.example/targets/releases/1.1.0/${added.sha256}.image.img.gz`);
  }
  t.same((await readdir(trusted)).sort(), ['root.json', 'snapshot.json', 'targets.json', 'timestamp.json', 'trusted-time.json']);

  // the timestamp timer: a day later the old timestamp is expired, a re-signed one is accepted
  now += 2 * DAY;
  await t.rejects(client.refresh(), { code: 'MANIFEST_EXPIRED' });
  const r = await resignTimestamp(repo, { now: () => now });
  t.equal(r.timestampVersion, 3);
  t.equal(r.snapshotVersion, undefined, 'snapshot still has more than half its validity');
  const res2 = await client.refresh();
  t.equal(res2.timestampVersion, 3);
  now += 2 * DAY;
  const r2 = await resignTimestamp(repo, { now: () => now });
  t.equal(r2.snapshotVersion, 3, 'snapshot re-signed: less than half its validity left');
  t.equal((await client.refresh()).snapshotVersion, 3);

  // rollout halt
  await setRollout(repo, added.targetName, { percent: 100, halted: true }, { now: () => now });
  await client.refresh();
  const sel2 = selectRelease(client.targets(), { deviceId: 'dev-1', hardware: 'acme,board-a', channel: 'stable', committedSecurityVersion: 1 }, now);
  t.match(sel2, { ok: false, code: 'MANIFEST_ROLLOUT_HALTED' });

  // key rotations: each role, then root; the device follows
  for (const role of ['timestamp', 'snapshot', 'targets', 'root'] as const) {
    const before = await repoSummary(repo);
    await rotateKey(repo, role, { now: () => now });
    const after = await repoSummary(repo);
    t.equal(after.rootVersion, before.rootVersion + 1, `${role} rotation makes a new root`);
    t.not(after.keyIds[role][0], before.keyIds[role][0]);
    const rr = await client.refresh();
    t.equal(rr.rootVersion, after.rootVersion, `device follows the ${role} rotation`);
  }
  const hash = await hashDir(trusted);
  const again = await client.refresh();
  t.equal(again.updated, false);
  t.equal(await hashDir(trusted), hash, 'an idle refresh changes nothing');
});

t.test('root rotation with only a threshold of the root keys mounted', async (t) => {
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const { rename } = await import('node:fs/promises');
  await rename(join(repo, 'keys', 'root-2.pem'), join(dir, 'root-2.pem')); // kept offline elsewhere
  const s = await rotateKey(repo, 'root');
  t.equal(s.rootVersion, 2);
  t.same((await readdir(join(repo, 'keys'))).filter((n) => n.startsWith('root-')).sort(), ['root-1.pem', 'root-2.pem', 'root-3.pem']);
  t.equal((await readdir(join(repo, 'keys', 'retired'))).length, 2);
  const client = new TrustClient({ trustedDir: join(dir, 't'), shippedRootPath: join(repo, 'repository/metadata/1.root.json'), source: dirSource(join(repo, 'repository/metadata')), now: Date.now });
  t.match(await client.refresh(), { rootVersion: 2 });
  await rename(join(repo, 'keys', 'root-2.pem'), join(dir, 'new-root-2.pem'));
  await rename(join(repo, 'keys', 'root-3.pem'), join(dir, 'new-root-3.pem'));
  await t.rejects(rotateKey(repo, 'timestamp'), { code: 'MANIFEST_KEY_MISSING' }, 'one root key is below the threshold');
});

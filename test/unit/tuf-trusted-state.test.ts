/**
 * The device's trusted state: the shipped root as anchor and fallback, atomic persistence, the
 * trusted-time floor that never runs backwards, size caps in every source, and agreement between
 * our canonical JSON signing and @tufjs/models.
 */
import t from 'tap';
import { readFile, readdir, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Metadata, MetadataKind } from '@tufjs/models';
import { RepoSim } from '../../manifests/sim.js';
import { TrustClient, dirSource, memorySource, parseMetadata, verifyThreshold } from '../../manifests/client.js';
import { canonicalJson, generateSigningKey, signEnvelope, tufKey, tufSigner } from '../../manifests/keys.js';
import { releaseFromTarget } from '../../manifests/release.js';

const T0 = Date.parse('2026-06-01T00:00:00Z');
const DAY = 86_400_000;
const YEAR = 365 * DAY;

async function setup(dir: string): Promise<{ sim: RepoSim; shipped: string; trusted: string; client: (now?: () => number) => TrustClient }> {
  const sim = new RepoSim(T0);
  const shipped = join(dir, 'shipped-root.json');
  await writeFile(shipped, sim.publishAll());
  const trusted = join(dir, 'trusted');
  return { sim, shipped, trusted, client: (now = () => sim.now) => new TrustClient({ trustedDir: trusted, shippedRootPath: shipped, source: sim.source(), now }) };
}

t.test('a damaged stored root falls back to the shipped root and is repaired', async (t) => {
  const c = await setup(t.testdir());
  await c.client().refresh();
  const good = await readFile(join(c.trusted, 'root.json'));
  for (const damage of [good.subarray(0, 40), Buffer.alloc(0), Buffer.from('{"signed":{},"signatures":[]}'), Buffer.from(good.toString().replace(/"sig":"[0-9a-f]/, '"sig":"z'))]) {
    await writeFile(join(c.trusted, 'root.json'), damage);
    const r = await c.client().refresh();
    t.match(r.warnings, [{ code: 'MANIFEST_ROOT_DAMAGED' }]);
    t.same(await readFile(join(c.trusted, 'root.json')), good, 'stored root repaired from the shipped copy');
  }
});

t.test('a rotated stored root is kept; the shipped root still anchors after damage', async (t) => {
  const c = await setup(t.testdir());
  c.sim.rotateRoot();
  t.match(await c.client().refresh(), { rootVersion: 2 });
  await writeFile(join(c.trusted, 'root.json'), 'garbage');
  const r = await c.client().refresh();
  t.match(r, { rootVersion: 2, rootsRotated: 1 }, 'walks the chain again from the shipped v1');
});

t.test('a shipped root newer than the stored one wins (OS update shipped a rotated root)', async (t) => {
  const c = await setup(t.testdir());
  await c.client().refresh();
  c.sim.rotateRoot();
  await writeFile(c.shipped, c.sim.files.get('2.root.json')!);
  c.sim.files.delete('2.root.json');
  t.match(await c.client().refresh(), { rootVersion: 2, rootsRotated: 0 });
});

t.test('no usable root at all', async (t) => {
  const c = await setup(t.testdir());
  await writeFile(c.shipped, '{}');
  await t.rejects(c.client().refresh(), { code: 'MANIFEST_NO_TRUSTED_ROOT' });
  await writeFile(c.shipped, 'x'.repeat(600_000));
  await t.rejects(c.client().refresh(), { code: 'MANIFEST_NO_TRUSTED_ROOT' });
});

t.test('trusted time never runs backwards', async (t) => {
  const c = await setup(t.testdir());
  let clock = T0;
  const r1 = await c.client(() => clock).refresh();
  t.equal(r1.trustedTime, new Date(T0).toISOString());
  const floor1 = JSON.parse(await readFile(join(c.trusted, 'trusted-time.json'), 'utf8')) as { floor: string };
  t.equal(floor1.floor, new Date(T0).toISOString());
  clock = T0 - 10 * YEAR; // RTC reset / clock set back
  const r2 = await c.client(() => clock).refresh();
  t.equal(r2.trustedTime, new Date(T0).toISOString(), 'floor, not the clock');
  // the repository signs at T0 + 12 h; the floor follows the newest verified timestamp
  c.sim.now = T0 + DAY / 2;
  c.sim.bump('timestamp');
  c.sim.publishTimestamp();
  await c.client(() => clock).refresh();
  const r3 = await c.client(() => clock).refresh();
  t.equal(r3.trustedTime, new Date(T0 + DAY / 2).toISOString(), 'raised to the signed issue time');
  // two days of frozen repository with the clock still wrong: the floor alone cannot expire it,
  // but as soon as the real clock is back the freeze is caught
  clock = T0 + 3 * DAY;
  await t.rejects(c.client(() => clock).refresh(), { code: 'MANIFEST_EXPIRED' });
  clock = T0 + DAY / 2 + 60_000;
  const before = await readFile(join(c.trusted, 'trusted-time.json'), 'utf8');
  await c.client(() => clock).refresh();
  t.equal(await readFile(join(c.trusted, 'trusted-time.json'), 'utf8'), before, 'small advances are not written (flash wear)');
  await writeFile(join(c.trusted, 'trusted-time.json'), 'garbage');
  t.ok(await c.client(() => clock).refresh(), 'a damaged floor file is ignored');
});

t.test('size caps in every source', async (t) => {
  const dir = t.testdir();
  await mkdir(join(dir, 'm'));
  await writeFile(join(dir, 'm', 'big.json'), Buffer.alloc(2000));
  await t.rejects(dirSource(join(dir, 'm')).fetch('big.json', 1000), { code: 'MANIFEST_TOO_LARGE' });
  t.equal(await dirSource(join(dir, 'm')).fetch('missing.json', 1000), undefined);
  await t.rejects(dirSource(join(dir, 'm')).fetch('../m/big.json', 5000), { code: 'MANIFEST_FETCH_FAILED' }, 'no path traversal');
  const mem = memorySource(new Map([['x.json', new Uint8Array(2000)]]));
  await t.rejects(mem.fetch('x.json', 1999), { code: 'MANIFEST_TOO_LARGE' });
  t.equal((await mem.fetch('x.json', 2000))?.byteLength, 2000);
  t.equal(await mem.fetch('y.json', 10), undefined);
});

t.test('canonical JSON signing agrees with @tufjs/models', async (t) => {
  const sim = new RepoSim(T0);
  sim.targets.get('targets')!['x-text'] = 'quote " backslash \\ unicode é ✓ newline \n';
  const bytes = sim.sign('targets', sim.targets.get('targets')!);
  const md = parseMetadata(bytes, MetadataKind.Targets, 'targets');
  const k = sim.signers.get('targets')![0]!;
  t.doesNotThrow(() => verifyThreshold('targets', { keyIDs: [k.keyid], threshold: 1 }, { [k.keyid]: tufKey(k) }, md, 'x'));
  // and the other way: models signs, our canonical form is what it signed
  const m2 = Metadata.fromJSON(MetadataKind.Targets, JSON.parse(Buffer.from(bytes).toString()));
  m2.sign(tufSigner(k), false);
  const env = signEnvelope(sim.targets.get('targets')!, [k]);
  t.equal(m2.signatures[k.keyid]!.sig, env.signatures[0]!.sig, 'Ed25519 is deterministic: same bytes signed');
  t.equal(canonicalJson({ b: 1, a: [true, null, 'x'] }), '{"a":[true,null,"x"],"b":1}');
  t.throws(() => canonicalJson({ a: 1.5 }), { code: 'MANIFEST_INVALID' });
});

t.test('invalid slotflip custom blocks are reported and skipped', async (t) => {
  const c = await setup(t.testdir());
  const sha = 'b'.repeat(64);
  const payload = { compression: 'zstd', size: 10, sha256: sha, chunkSize: 4096, chunks: [{ sha256: sha, offset: 0, length: 5 }] };
  const good = { slotflip: 1, hardware: ['h'], version: '1.0.0', securityVersion: 1, channel: 'stable', payload };
  c.sim.addTarget('good', Buffer.from('g'), good);
  c.sim.addTarget('no-hw', Buffer.from('a'), { ...good, hardware: [] });
  c.sim.addTarget('neg-sv', Buffer.from('b'), { ...good, securityVersion: -1 });
  c.sim.addTarget('extra-field', Buffer.from('c'), { ...good, exec: 'rm -rf /' });
  c.sim.addTarget('chunk-count', Buffer.from('d'), { ...good, payload: { ...payload, size: 5000 } });
  c.sim.addTarget('not-slotflip', Buffer.from('e'), { other: true });
  c.sim.update();
  const r = await c.client().refresh();
  t.same(r.releases.map((x) => x.targetName), ['good']);
  t.same(r.invalidTargets.map((x) => [x.targetName, x.code]).sort(), [['chunk-count', 'MANIFEST_CUSTOM_INVALID'], ['extra-field', 'MANIFEST_CUSTOM_INVALID'], ['neg-sv', 'MANIFEST_CUSTOM_INVALID'], ['no-hw', 'MANIFEST_CUSTOM_INVALID']]);
  t.equal(releaseFromTarget({ path: 'p', custom: undefined } as never).kind, 'not-slotflip');
});

t.test('an idle refresh writes nothing', async (t) => {
  const c = await setup(t.testdir());
  await c.client().refresh();
  const snap = async (): Promise<string[]> => Promise.all((await readdir(c.trusted)).sort().map(async (n) => n + (await readFile(join(c.trusted, n), 'utf8'))));
  const before = await snap();
  await c.client().refresh();
  t.same(await snap(), before);
  t.ok(generateSigningKey().keyid.match(/^[0-9a-f]{64}$/));
});

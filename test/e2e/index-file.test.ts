/**
 * Format 2 from outside (issues 26 and 19): the chunk index is a signed target file of its own,
 * fetched over HTTP like the payload. Driven through the built CLI on an emulated U-Boot/RAUC board
 * served by a real HTTP server:
 * - a format 2 release installs and commits; the index is fetched once for the whole attempt
 *   (cached in the state directory, verified before each use) and the cache is gone once the
 *   attempt ended;
 * - a served index whose bytes were changed (same length), then one that is missing, is refused with
 *   its code BEFORE the inactive slot — the device's fallback — is marked bad: the whole board
 *   (slot images and boot environment) stays byte-identical; with the right file back, it installs;
 * - a format 1 release (`release add --inline-index`, what older daemons read) still installs.
 */
import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { slotOf, trialDevice, type TrialDevice } from './trial-device.js';

t.setTimeout(600_000);

async function hashTree(dir: string): Promise<string> {
  const h = createHash('sha256');
  const walk = async (d: string): Promise<void> => {
    for (const e of (await readdir(d, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else h.update(p + '\0').update(await readFile(p));
    }
  };
  await walk(dir);
  return h.digest('hex');
}

async function indexFileOf(dev: TrialDevice, version: string): Promise<string | undefined> {
  const dir = join(dev.dir, 'repo/repository/targets/releases', version);
  const f = (await readdir(dir)).find((n) => n.endsWith('.index'));
  return f === undefined ? undefined : join(dir, f);
}

const indexRequests = (dev: TrialDevice): number => dev.server.requests.filter((r) => r.path.endsWith('.index')).length;
const cached = async (dev: TrialDevice): Promise<string[]> => readdir(join(dev.dir, 'state', 'install-index')).catch(() => []);

/** Installs `version` (already published) through one full cycle: install, reboot, validate, commit. */
async function installAndCommit(t: Test, dev: TrialDevice, version: string, slot: 'A' | 'B'): Promise<void> {
  const r = await dev.update();
  t.equal(r.code, 0, `update installs ${version}: ${r.stdout}${r.stderr}`);
  t.ok(await dev.rebootIfAsked(), 'rebooted into the trial');
  await dev.update(false);
  const s = await dev.status();
  t.match(slotOf(s, slot).boot, { state: 'good', primary: true }, `${version} committed in ${slot}`);
  t.equal(slotOf(s, slot).release?.version, version);
}

t.test('a format 2 release installs; its index is fetched once and cached only while the attempt runs', async (t) => {
  const dev = await trialDevice(t.testdir(), { backend: 'uboot', convention: 'rauc' });
  t.teardown(() => dev.server.stop());
  await dev.publish('1.1.0', 1, true);
  const idx = await indexFileOf(dev, '1.1.0');
  t.ok(idx, 'release add wrote the index target file');
  const index = JSON.parse(await readFile(idx!, 'utf8')) as { slotflip: number; chunks: { packedSha256?: string }[] };
  t.equal(index.slotflip, 2);
  t.ok(index.chunks.length > 1 && index.chunks.every((c) => /^[0-9a-f]{64}$/.test(c.packedSha256 ?? '')), 'every chunk carries packedSha256');
  const targets = (await readdir(join(dev.dir, 'repo/repository/metadata'))).filter((n) => /^\d+\.targets\.json$/.test(n)).sort((a, b) => parseInt(b) - parseInt(a))[0]!;
  t.notMatch(await readFile(join(dev.dir, 'repo/repository/metadata', targets), 'utf8'), /"chunks"/, 'no chunk list in targets.json');

  const r = await dev.update();
  t.equal(r.code, 0, `installed and armed: ${r.stdout}${r.stderr}`);
  t.equal(indexRequests(dev), 1, 'index fetched once for preflight, write and verify');
  t.equal((await cached(dev)).length, 1, 'cached while the attempt is in flight (a resume needs no second fetch)');
  await dev.rebootIfAsked();
  await dev.update(false);
  const s = await dev.status();
  t.match(slotOf(s, 'B').boot, { state: 'good', primary: true }, '1.1.0 committed in B');
  t.equal(slotOf(s, 'B').release?.version, '1.1.0');
  t.same(await cached(dev), [], 'cache removed once the attempt ended');
});

t.test('a tampered or missing index is refused before the fallback slot is marked bad', async (t) => {
  const dev = await trialDevice(t.testdir(), { backend: 'uboot', convention: 'rauc' });
  t.teardown(() => dev.server.stop());
  await dev.publish('1.1.0', 1, true);
  await installAndCommit(t, dev, '1.1.0', 'B');
  const s0 = await dev.status();
  t.equal(slotOf(s0, 'A').boot.state, 'good', 'A (factory) good: the fallback');

  await dev.publish('1.2.0', 2, true);
  const idx = (await indexFileOf(dev, '1.2.0'))!;
  const good = await readFile(idx);
  const board = await hashTree(dev.boardDir);

  // the mirror serves other bytes of the same length (a digit of a hash changed)
  const bad = Buffer.from(good);
  const at = bad.indexOf('"sha256":"') + 12;
  bad[at] = bad[at] === 0x30 ? 0x31 : 0x30;
  await writeFile(idx, bad);
  let r = await dev.update();
  t.equal(r.code, 5, 'update exits 5: the signed metadata was rejected');
  let s = await dev.status();
  t.equal(s.phase, 'idle', 'no attempt started');
  t.match(s.lastCheck, { result: 'failed', detail: /^MANIFEST_INDEX_MISMATCH/ }, 'the check names the tampered index');
  t.equal(await hashTree(dev.boardDir), board, 'slots and boot environment byte-identical');
  t.match(slotOf(s, 'A').boot, { state: 'good' }, 'A still good');
  t.match(slotOf(s, 'B').boot, { state: 'good', primary: true }, 'B still the committed slot');

  // the mirror lost the file
  await rename(idx, `${idx}.away`);
  r = await dev.update();
  s = await dev.status();
  t.equal(s.phase, 'idle', 'no attempt started');
  t.match(s.lastCheck, { result: 'failed', detail: /^MANIFEST_INDEX_FETCH/ }, 'the check says the index could not be fetched');
  t.equal(await hashTree(dev.boardDir), board, 'still byte-identical');

  // the right file back: the same release installs
  await rename(`${idx}.away`, idx);
  await writeFile(idx, good);
  await installAndCommit(t, dev, '1.2.0', 'A');
});

t.test('a format 1 release (--inline-index) still installs', async (t) => {
  const dev = await trialDevice(t.testdir(), { backend: 'uboot', convention: 'rauc' });
  t.teardown(() => dev.server.stop());
  await dev.publish('1.1.0', 1, true, ['--inline-index']);
  t.equal(await indexFileOf(dev, '1.1.0'), undefined, 'no index target file');
  const targets = (await readdir(join(dev.dir, 'repo/repository/metadata'))).filter((n) => /^\d+\.targets\.json$/.test(n)).sort((a, b) => parseInt(b) - parseInt(a))[0]!;
  const custom = (Object.values((JSON.parse(await readFile(join(dev.dir, 'repo/repository/metadata', targets), 'utf8')) as { signed: { targets: Record<string, { custom: { slotflip: number; payload: { chunks: object[] } } }> } }).signed.targets)[0]!).custom;
  t.equal(custom.slotflip, 1, 'format 1');
  t.ok(custom.payload.chunks.length > 1 && custom.payload.chunks.every((c) => !('packedSha256' in c)), 'chunks inline, without fields older daemons refuse');
  await installAndCommit(t, dev, '1.1.0', 'B');
  t.equal(indexRequests(dev), 0, 'nothing fetched but the payload');
});

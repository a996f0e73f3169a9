/**
 * A real repository (repo init + release add with zstd) served by a real HTTP server; the device
 * refreshes over HTTP and fetches the payload at targetUrl(). Payload and transport attacks: a
 * payload differing by one bit, a truncated and an endless payload, oversized/endless metadata,
 * server errors and stalls — each rejected with a stable code, the trusted state unchanged, and the
 * next valid state still accepted.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startHttpServer } from '../harness/http-server.js';
import { initRepo, addRelease, resignTimestamp } from '../../manifests/repo.js';
import { TrustClient, fetchCapped, httpSource, targetUrl, verifyTargetBytes } from '../../manifests/client.js';
import { selectRelease } from '../../manifests/select.js';

const T0 = Date.parse('2026-06-01T00:00:00Z');

async function hashDir(dir: string): Promise<string> {
  const h = createHash('sha256');
  for (const n of (await readdir(dir)).sort()) h.update(n + '\0').update(await readFile(join(dir, n)));
  return h.digest('hex');
}

t.test('device over HTTP: refresh, select, payload download and attacks', async (t) => {
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  let now = T0;
  await initRepo(repo, { now: () => now });
  const image = join(dir, 'rootfs.img');
  const imageBytes = randomBytes(100_000);
  await writeFile(image, imageBytes);
  const added = await addRelease(repo, { now: () => now, image, version: '2.0.0', securityVersion: 3, hardware: ['acme,board-a', 'acme,board-b'], channel: 'stable', compression: 'zstd', chunkSize: 16384 });

  const server = await startHttpServer({ root: join(repo, 'repository') });
  t.teardown(() => server.stop());
  const trusted = join(dir, 'trusted');
  const client = new TrustClient({ trustedDir: trusted, shippedRootPath: join(repo, 'repository/metadata/root.json'), source: httpSource(server.url + 'metadata/', { timeoutMs: 1000 }), now: () => now });
  const res = await client.refresh();
  t.equal(res.releases.length, 1);
  t.ok(server.requests.every((r) => r.acceptEncoding === 'identity'), 'metadata fetched with accept-encoding: identity');
  const sel = selectRelease(res.releases, { deviceId: 'd1', hardware: 'acme,board-b', channel: 'stable', committedSecurityVersion: 3 }, now);
  if (!sel.ok) throw new Error(sel.code);
  t.equal(sel.release.targetName, added.targetName);
  const url = client.targetUrl(server.url + 'targets/', sel.release);
  t.equal(url, targetUrl(server.url + 'targets/', sel.release));
  const payload = await fetchCapped(url, sel.release.length);
  t.ok(payload);
  t.doesNotThrow(() => verifyTargetBytes(sel.release, payload!), 'payload matches the signed length and hash');
  t.equal(sel.release.custom.payload.sha256, createHash('sha256').update(imageBytes).digest('hex'));

  // payload attacks
  const flipped = Buffer.from(payload!);
  flipped[flipped.length >> 1]! ^= 0x10;
  await writeFile(join(repo, 'repository', 'evil.bin'), flipped);
  server.faults.replaceWith = 'evil.bin';
  t.throws(() => verifyTargetBytes(sel.release, flipped), { code: 'MANIFEST_TARGET_MISMATCH' }, 'one flipped bit');
  const got = await fetchCapped(url, sel.release.length);
  t.throws(() => verifyTargetBytes(sel.release, got!), { code: 'MANIFEST_TARGET_MISMATCH' }, 'one flipped bit, served over HTTP');
  server.faults.replaceWith = undefined;
  server.faults.cutAfter = 1000;
  await t.rejects(fetchCapped(url, sel.release.length), { code: 'MANIFEST_FETCH_FAILED' }, 'truncated payload (connection cut)');
  server.faults.cutAfter = undefined;
  t.throws(() => verifyTargetBytes(sel.release, payload!.subarray(0, 1000)), { code: 'MANIFEST_TARGET_MISMATCH' }, 'truncated payload (short body)');
  server.faults.endless = true;
  await t.rejects(fetchCapped(url, sel.release.length), { code: 'MANIFEST_TOO_LARGE' }, 'endless payload stops at the signed length');
  server.faults.endless = undefined;

  // transport attacks on metadata; each leaves the trusted dir untouched
  now += 2 * 86_400_000;
  await resignTimestamp(repo, { now: () => now });
  const before = await hashDir(trusted);
  const attacks: { name: string; code: string; fault: () => void }[] = [
    { name: 'endless timestamp.json', code: 'MANIFEST_TOO_LARGE', fault: () => { server.faults.endless = true; } },
    { name: 'HTTP 500', code: 'MANIFEST_FETCH_FAILED', fault: () => { server.faults.status = 500; } },
    { name: 'stalled server', code: 'MANIFEST_FETCH_FAILED', fault: () => { server.faults.stallAfter = 10; } },
    { name: 'timestamp.json missing (404)', code: 'MANIFEST_NOT_FOUND', fault: () => { server.faults.status = 404; } },
  ];
  for (const a of attacks) {
    a.fault();
    const err = await client.refresh().then(() => undefined, (e: unknown) => e);
    t.match(err, { code: a.code }, a.name);
    if (a.code === 'MANIFEST_FETCH_FAILED') t.match(err, { retryable: true }, `${a.name} is retryable`);
    t.equal(await hashDir(trusted), before, `${a.name}: trusted state byte-identical`);
    server.faults.endless = undefined;
    server.faults.status = undefined;
    server.faults.stallAfter = undefined;
  }
  const ok = await client.refresh();
  t.equal(ok.timestampVersion, 3, 'the next valid timestamp is accepted');
});

/**
 * publishToBroker against a real mosquitto: metadata arrives as retained messages under
 * slotflip/v1/meta/<file>; a device that subscribes later fills a memorySource from them and
 * refreshes; a second publish after a new release clears the stale snapshot/targets topics.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connectAsync } from 'mqtt';
import { startMosquitto } from '../harness/mosquitto.js';
import { addRelease, initRepo, publishToBroker } from '../../manifests/repo.js';
import { TrustClient, memorySource } from '../../manifests/client.js';

const PREFIX = 'slotflip/v1/meta/';

async function retained(url: string, expect: number): Promise<Map<string, Uint8Array>> {
  const client = await connectAsync(url, { reconnectPeriod: 0 });
  const map = new Map<string, Uint8Array>();
  const done = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${map.size} of ${expect} retained messages`)), 5000);
    client.on('message', (topic, payload, packet) => {
      if (!packet.retain) return;
      map.set(topic.slice(PREFIX.length), new Uint8Array(payload));
      if (map.size === expect) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  await client.subscribeAsync(PREFIX + '#', { qos: 1 });
  try {
    await done;
  } finally {
    await client.endAsync();
  }
  return map;
}

t.test('publish metadata as retained messages; a device refreshes from them', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const image = join(dir, 'img');
  await writeFile(image, randomBytes(20_000));
  await addRelease(repo, { image, version: '1.0.0', securityVersion: 1, hardware: ['acme,a'], channel: 'stable', compression: 'gzip', chunkSize: 8192 });
  const first = await publishToBroker(repo, broker.url);
  t.same(first.published.map((p) => p.slice(PREFIX.length)), ['1.root.json', '2.targets.json', '2.snapshot.json', 'timestamp.json'], 'timestamp last');
  t.same(first.cleared.map((p) => p.slice(PREFIX.length)).sort(), ['1.snapshot.json', '1.targets.json'], 'superseded versions are cleared');

  const map = await retained(broker.url, 4);
  const client = new TrustClient({ trustedDir: join(dir, 'trusted'), shippedRootPath: join(repo, 'repository/metadata/root.json'), source: memorySource(map), now: Date.now });
  const r = await client.refresh();
  t.equal(r.releases[0]?.custom.version, '1.0.0');

  await addRelease(repo, { image, version: '1.0.1', securityVersion: 1, hardware: ['acme,a'], channel: 'stable', compression: 'none', chunkSize: 8192 });
  const second = await publishToBroker(repo, broker.url);
  t.same(second.cleared.map((p) => p.slice(PREFIX.length)).sort(), ['1.snapshot.json', '1.targets.json', '2.snapshot.json', '2.targets.json']);
  const map2 = await retained(broker.url, 4);
  t.same([...map2.keys()].sort(), ['1.root.json', '3.snapshot.json', '3.targets.json', 'timestamp.json'], 'stale versions are gone from the broker');
  const r2 = await new TrustClient({ trustedDir: join(dir, 'trusted'), shippedRootPath: join(repo, 'repository/metadata/root.json'), source: memorySource(map2), now: Date.now }).refresh();
  t.equal(r2.releases.length, 2);

  await t.rejects(publishToBroker(repo, 'mqtt://127.0.0.1:1', { timeoutMs: 500 }), { code: 'MANIFEST_PUBLISH_FAILED' });
});

/**
 * publishToBroker against a real mosquitto: metadata arrives as retained messages under
 * slotflip/v2/meta/<level> (and v1 for the transition); a device that subscribes later fills a
 * memorySource from them and refreshes; a second publish after a new release clears the stale
 * snapshot/targets topics and retained garbage that is not part of the repository; the built CLI
 * refuses a message over 64 KiB (two large sparse releases) or, with --oversize skip, publishes
 * the rest with every message at most 64 KiB.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connectAsync } from 'mqtt';
import { startMosquitto } from '../harness/mosquitto.js';
import { addRelease, initRepo, publishToBroker } from '../../manifests/repo.js';
import { TrustClient, memorySource } from '../../manifests/client.js';
import { metaFileOfTopic } from '../../manifests/meta-topics.js';
import { execFile } from 'node:child_process';
import { open } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const PREFIX = 'slotflip/v2/meta/';
const CLI = fileURLToPath(new URL('../../dist/daemon/cli.js', import.meta.url));
const file = (topic: string): string => metaFileOfTopic(topic)!.file;

async function retained(url: string, expect: number): Promise<Map<string, Uint8Array>> {
  const client = await connectAsync(url, { reconnectPeriod: 0 });
  const map = new Map<string, Uint8Array>();
  const done = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${map.size} of ${expect} retained messages`)), 5000);
    client.on('message', (topic, payload, packet) => {
      if (!packet.retain) return;
      if (!topic.startsWith(PREFIX)) return;
      map.set(file(topic), new Uint8Array(payload));
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
  // garbage a stray publisher left retained (issue 14): not part of the repository, cleared
  const stray = await connectAsync(broker.url, { reconnectPeriod: 0 });
  await stray.publishAsync('slotflip/v1/meta/2.root.json', 'not json', { qos: 1, retain: true });
  await stray.publishAsync('slotflip/v2/meta/7_junk', 'x', { qos: 1, retain: true });
  await stray.endAsync();
  const first = await publishToBroker(repo, broker.url);
  t.same(first.published.filter((p) => p.startsWith(PREFIX)), ['slotflip/v2/meta/1_root', 'slotflip/v2/meta/2_targets', 'slotflip/v2/meta/2_snapshot', 'slotflip/v2/meta/timestamp'], 'timestamp last, no dots');
  t.same(first.published.filter((p) => !p.startsWith(PREFIX)), ['slotflip/v1/meta/1.root.json', 'slotflip/v1/meta/2.targets.json', 'slotflip/v1/meta/2.snapshot.json', 'slotflip/v1/meta/timestamp.json'], 'v1 too, for the transition');
  t.same(first.cleared.filter((p) => p.startsWith(PREFIX)).map(file).sort(), ['1.snapshot.json', '1.targets.json', '7.junk.json'], 'superseded versions and strays are cleared');
  t.ok(first.cleared.includes('slotflip/v1/meta/2.root.json'), 'the garbage v1 root is cleared');
  t.equal(first.protocolVersion, 5);
  t.ok(first.largestMessageBytes <= 65536);

  const map = await retained(broker.url, 4);
  const client = new TrustClient({ trustedDir: join(dir, 'trusted'), shippedRootPath: join(repo, 'repository/metadata/root.json'), source: memorySource(map), now: Date.now });
  const r = await client.refresh();
  t.equal(r.releases[0]?.custom.version, '1.0.0');

  await addRelease(repo, { image, version: '1.0.1', securityVersion: 1, hardware: ['acme,a'], channel: 'stable', compression: 'none', chunkSize: 8192 });
  const second = await publishToBroker(repo, broker.url, { layouts: ['v2'] });
  t.same(second.cleared.filter((p) => p.startsWith(PREFIX)).map(file).sort(), ['1.snapshot.json', '1.targets.json', '2.snapshot.json', '2.targets.json']);
  t.ok(second.cleared.includes('slotflip/v1/meta/timestamp.json') === false, 'v1 topics are left alone when only v2 is published');
  const map2 = await retained(broker.url, 4);
  t.same([...map2.keys()].sort(), ['1.root.json', '3.snapshot.json', '3.targets.json', 'timestamp.json'], 'stale versions are gone from the broker');
  const r2 = await new TrustClient({ trustedDir: join(dir, 'trusted'), shippedRootPath: join(repo, 'repository/metadata/root.json'), source: memorySource(map2), now: Date.now }).refresh();
  t.equal(r2.releases.length, 2);

  await t.rejects(publishToBroker(repo, 'mqtt://127.0.0.1:1', { timeoutMs: 500 }), { code: 'MANIFEST_PUBLISH_FAILED' });
});

function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, maxBuffer: 1 << 24 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

async function sparse(path: string, bytes: number, marks: number): Promise<void> {
  const fh = await open(path, 'w');
  await fh.truncate(bytes);
  for (let i = 0; i < marks; i++) await fh.write(randomBytes(16), 0, 16, Math.floor((bytes / marks) * i));
  await fh.close();
}

t.test('built CLI: two large releases; no message over 64 KiB is ever published', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  t.equal((await cli(['repo', 'init', repo])).code, 0);
  // 2 × 256 MiB sparse images in 256 KiB chunks, in format 1 (chunk index inline, for daemons before
  // format 2): the targets metadata far exceeds 64 KiB (format 2 keeps it small: publish-message-size.test.ts)
  for (const [i, v] of [[1, '1.0.0'], [2, '1.1.0']] as const) {
    const image = join(dir, `img${i}`);
    await sparse(image, 256 << 20, 8);
    const r = await cli(['release', 'add', repo, '--image', image, '--version', v, '--security-version', '1', '--hardware', 'acme,a', '--channel', 'stable', '--compression', 'gzip', '--chunk-size', String(256 << 10), '--inline-index']);
    t.equal(r.code, 0, r.stderr);
  }
  const sizes: Record<string, number> = {};
  const watcher = await connectAsync(broker.url, { reconnectPeriod: 0 });
  watcher.on('message', (topic, payload) => { sizes[topic] = Math.max(sizes[topic] ?? 0, payload.length); });
  await watcher.subscribeAsync('slotflip/#', { qos: 1 });
  t.teardown(() => watcher.endAsync());

  const refused = await cli(['repo', 'publish', repo, '--broker', broker.url]);
  t.equal(refused.code, 1, 'refused');
  t.match(refused.stderr, /MANIFEST_PUBLISH_OVERSIZE/);
  t.match(refused.stderr, /targets\.json is \d+ bytes, more than the 65536/);
  await new Promise((r) => setTimeout(r, 300));
  t.same(Object.keys(sizes), [], 'nothing was published');

  const skipped = await cli(['repo', 'publish', repo, '--broker', broker.url, '--oversize', 'skip', '--json']);
  t.equal(skipped.code, 0, skipped.stderr);
  const res = JSON.parse(skipped.stdout) as { skipped: { file: string; bytes: number }[]; published: string[] };
  t.match(res.skipped, [{ file: /^\d+\.targets\.json$/ }]);
  t.ok(res.skipped[0]!.bytes > 65536, `targets is ${res.skipped[0]!.bytes} bytes`);
  await new Promise((r) => setTimeout(r, 300));
  t.ok(Object.keys(sizes).length >= 4, 'timestamp, snapshot, root published');
  for (const [topic, n] of Object.entries(sizes)) t.ok(n <= 65536, `${topic}: ${n} bytes`);
});

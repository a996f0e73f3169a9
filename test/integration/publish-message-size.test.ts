/**
 * Issue 26 ("metadata that fits every broker"), proven from outside: a manufacturer publishes a
 * repository with two releases of 1,024 chunks each with the BUILT CLI, to a real Mosquitto started
 * here; a subscriber on `#` records every message the broker delivers, and every one is at most
 * 64 KiB. Before format 2 the chunk index lived in targets.json (~190 bytes per chunk, every release:
 * ~391 KB for these two releases) and the same publish was refused or withheld. Then `repo prune
 * --keep 1` drops the older release from the targets metadata and the next publish is smaller still.
 *
 * What the metadata's size depends on is the number of chunks, not the image's bytes: `npm test`
 * publishes 64 MiB sparse images in 64 KiB chunks (1,024 chunks, seconds); `npm run test:big`
 * (SLOTFLIP_BIG_IMAGES=1) the issue's own case, 4 GiB sparse images in the default 4 MiB chunks
 * (1,024 chunks; 4 GiB read, hashed and indexed twice: ~45 s on an idle 2-core machine, minutes
 * under load).
 */
import t from 'tap';
import { open, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { connectAsync } from 'mqtt';
import { startMosquitto } from '../harness/mosquitto.js';
import { slotflip, slotflipJson } from '../e2e/harness.js';

const BIG = process.env.SLOTFLIP_BIG_IMAGES === '1';
if (BIG) t.setTimeout(600_000);
/** image size and `release add` chunk options: 1,024 chunks either way */
const IMAGE = BIG ? { bytes: 4 * 1024 ** 3, label: '4 GiB in 4 MiB chunks', chunkArgs: [] } : { bytes: 64 * 1024 ** 2, label: '64 MiB in 64 KiB chunks', chunkArgs: ['--chunk-size', String(64 * 1024)] };
const CAP = 64 * 1024;

/** A sparse image of IMAGE.bytes whose first bytes name its version (so the two releases differ). */
async function sparseImage(path: string, version: string): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.write(Buffer.from(`slotflip test image ${version}\n`), 0, undefined, 0);
    await fh.truncate(IMAGE.bytes);
  } finally {
    await fh.close();
  }
}

t.test(`two releases of 1,024 chunks (${IMAGE.label}): every message published to Mosquitto is <= 64 KiB`, async (t) => {
  const dir = t.testdir();
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const repo = join(dir, 'repo');
  await slotflipJson(['repo', 'init', repo, '--json']);
  for (const version of ['1.0.0', '1.1.0']) {
    const image = join(dir, `os-${version}.img`);
    await sparseImage(image, version);
    // the whole image is read and hashed: for 4 GiB minutes on a loaded machine, seconds on an idle one
    const r = await slotflip(['release', 'add', repo, '--image', image, '--version', version, '--security-version', '1', '--hardware', 'acme,big', '--channel', 'stable', '--json', ...IMAGE.chunkArgs], { timeoutMs: 500_000 });
    t.equal(r.code, 0, `release add ${version}: ${r.stderr}`);
    const added = JSON.parse(r.stdout) as { chunks: number; format: number; index: { length: number } };
    t.equal(added.chunks, 1024, `${version}: ${IMAGE.label}`);
    t.equal(added.format, 2, 'format 2 by default');
    t.ok(added.index.length > CAP, `${version}: the index itself is ${added.index.length} bytes (fetched over HTTP, never published)`);
  }
  const metaDir = join(repo, 'repository/metadata');
  const targetsFile = (await readdir(metaDir)).filter((n) => /^\d+\.targets\.json$/.test(n)).sort((a, b) => parseInt(b) - parseInt(a))[0]!;
  const targetsBytes = (await stat(join(metaDir, targetsFile))).size;
  t.ok(targetsBytes < 8 * 1024, `targets.json with two releases of ${IMAGE.label} is ${targetsBytes} bytes`);

  // everything the broker delivers to a subscriber of every topic
  const seen: { topic: string; bytes: number }[] = [];
  const sub = await connectAsync(broker.url, { protocolVersion: 5 });
  t.teardown(() => sub.endAsync());
  sub.on('message', (topic, payload) => seen.push({ topic, bytes: payload.byteLength }));
  await sub.subscribeAsync('#', { qos: 1 });

  const publish = async (): Promise<{ published: string[]; largestMessageBytes: number }> => {
    const r = await slotflip(['repo', 'publish', repo, '--broker', broker.url, '--json']);
    t.equal(r.code, 0, `repo publish exits 0: ${r.stderr}`);
    return JSON.parse(r.stdout) as { published: string[]; largestMessageBytes: number };
  };
  const drained = async (n: number): Promise<void> => {
    for (let i = 0; i < 200 && seen.length < n; i++) await new Promise((r) => setTimeout(r, 25));
  };

  const first = await publish();
  await drained(first.published.length);
  t.ok(first.published.some((p) => p.endsWith('_targets')), 'targets metadata published (v2 layout)');
  t.ok(first.published.some((p) => p.endsWith('.targets.json')), 'and in the v1 layout');
  t.ok(seen.length >= first.published.length, `${seen.length} messages seen for ${first.published.length} published`);
  const largest = Math.max(...seen.map((m) => m.bytes));
  t.ok(largest <= CAP, `largest message ${largest} bytes <= ${CAP}`);
  for (const m of seen) if (m.bytes > CAP) t.fail(`${m.topic}: ${m.bytes} bytes`);
  t.equal(first.largestMessageBytes, largest, 'the publisher reports the same largest message');

  // prune: the newer release stays (the one the channel points to), the older one goes
  const pruned = await slotflipJson<{ removed: string[]; kept: string[] }>(['repo', 'prune', repo, '--keep', '1', '--json']);
  t.same(pruned.removed, ['releases/1.0.0/os-1.0.0.img.zst']);
  t.same(pruned.kept, ['releases/1.1.0/os-1.1.0.img.zst']);
  const after = JSON.parse(await readFile(join(metaDir, (await readdir(metaDir)).filter((n) => /^\d+\.targets\.json$/.test(n)).sort((a, b) => parseInt(b) - parseInt(a))[0]!), 'utf8')) as { signed: { targets: Record<string, unknown> } };
  // release add publishes the delta index and pack by default: they went with 1.0.0 too
  t.same(Object.keys(after.signed.targets).sort(), ['releases/1.1.0/os-1.1.0.img.zst', 'releases/1.1.0/os-1.1.0.img.zst.delta-index', 'releases/1.1.0/os-1.1.0.img.zst.delta-pack', 'releases/1.1.0/os-1.1.0.img.zst.index'], 'the index and delta targets went with their release');
  const before = seen.length;
  const second = await publish();
  await drained(before + second.published.length);
  const again = seen.slice(before);
  t.ok(again.length > 0 && again.every((m) => m.bytes <= CAP), `after prune: ${again.length} messages, largest ${Math.max(...again.map((m) => m.bytes))} bytes`);
});

/**
 * The daemon as the unit starts it: with the Node flags of /usr/bin/slotflip's `daemon` line
 * (systemd/packaging/slotflip.sh: no optimizing compilers, a 1 MiB semi-space, --expose-gc), a real
 * `slotflip daemon` takes a release from a real broker and HTTP server into slot B. The other e2e
 * scenarios run the CLI with Node's defaults; here the paths only those flags switch on run too: the
 * memory-reducing GC before the full install streams (footprint.ts reclaimHeap, which also flushes
 * compiled code) and the interpreted install. The slot must hold the image all the same.
 */
import t from 'tap';
import { join } from 'node:path';
import { launcherFlags } from '../bench/launcher-flags.js';
import { startMosquitto } from '../harness/mosquitto.js';
import { ROOT, slotSha256, startDaemon } from './harness.js';
import { setupDownload } from './scenarios.js';

const broker = await startMosquitto();
t.teardown(() => broker.stop());

t.test("the daemon under the launcher's flags installs the release, reclaiming the heap before it streams", async (t) => {
  const flags = launcherFlags(join(ROOT, 'systemd', 'packaging', 'slotflip.sh'), 'daemon');
  t.ok(flags?.includes('--expose-gc'), `the launcher's daemon line exposes gc (${flags?.join(' ')})`);
  const env = await setupDownload(t.testdir(), { brokerUrl: broker.url, deviceId: 'dev-launcher-flags', bytesPerSecond: 0 });
  t.teardown(() => env.srv.stop());
  const d = startDaemon(env.configPath, { nodeArgs: flags ?? [] });
  try {
    const reclaimed = await d.waitFor((l) => l.msg === 'heap reclaimed before the install streams', 30_000, 'heap reclaimed before the install streams');
    t.ok(Number(reclaimed.rssAfter) > 0 && Number(reclaimed.ms) >= 0, `reclaimed before streaming (${JSON.stringify({ ms: reclaimed.ms, rssBefore: reclaimed.rssBefore, rssAfter: reclaimed.rssAfter })})`);
    await d.waitFor((l) => l.msg === 'install verified', 30_000, 'install verified');
  } finally {
    await d.stop();
  }
  t.equal(await slotSha256(env.board.slots.B, env.rel.size), env.rel.imageSha256, 'slot B holds the image');
});

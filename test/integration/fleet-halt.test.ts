// A bad release reaches the first wave of a staged rollout and the fleet watcher halts it: 20
// emulated devices running the real agent (TUF over retained MQTT metadata, HTTP installer, emulated
// board) against a real Mosquitto and a real HTTP server. The rollout would open to 100% an hour
// later; after the halt the clock is moved past that wave and every device checks again: nobody
// outside the first wave ever requests the payload (per-device URL prefixes in the server's log).
import t from 'tap';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { startMosquitto } from '../harness/mosquitto.js';
import { startHttpServer } from '../harness/http-server.js';
import { addRelease, initRepo, publishToBroker } from '../../manifests/repo.js';
import { rolloutAllows, rolloutBucket } from '../../manifests/rollout.js';
import type { Rollout } from '../../manifests/types.js';
import { makeTestImage } from '../../hal/board.js';
import { FleetWatcher, type HaltRecord } from '../../daemon/fleet/watcher.js';
import { readRollout } from '../../daemon/fleet/rollout.js';
import { SimDevice } from '../sim/sim-device.js';
import { waitFor } from '../harness/wait.js';

t.test('a failing first wave is halted before the rollout widens', async (t) => {
  const root = t.testdir();
  const repo = join(root, 'repo');
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  await initRepo(repo, { rootKeys: 1, rootThreshold: 1 });
  await publishToBroker(repo, broker.url);

  // per-device URL prefixes (symlinks to the targets directory) make the request log name the device
  const httpRoot = join(root, 'www');
  const ids = Array.from({ length: 20 }, (_, i) => `dev-${String(i).padStart(2, '0')}`);
  await mkdir(join(httpRoot, 'd'), { recursive: true });
  for (const id of ids) await symlink(join(repo, 'repository', 'targets'), join(httpRoot, 'd', id));
  const http = await startHttpServer({ root: httpRoot });
  t.teardown(() => http.stop());

  let offsetMs = 0;
  const now = (): number => Date.now() + offsetMs;
  const log = pino({ level: 'silent' });
  const slotSize = 64 * 1024;
  const devices = ids.map((id) => new SimDevice(id, join(root, 'devices', id), {
    brokerUrl: broker.url,
    payloadBaseUrl: (d) => `${http.url}d/${d}/`,
    shippedRoot: join(repo, 'repository', 'metadata', '1.root.json'),
    hardware: 'sim-board',
    channel: 'stable',
    slotSize,
    jitterMs: 300,
    now,
    random: Math.random,
    log,
  }));
  t.teardown(() => Promise.all(devices.map((d) => d.stop())));
  await Promise.all(devices.map((d) => d.start()));

  const target = 'releases/2.0.0/image.img.gz';
  const rollout: Rollout = { percent: 25, waves: [{ at: new Date(now() + 3_600_000).toISOString().replace(/\.\d{3}Z$/, 'Z'), percent: 100 }] };
  const wave = new Set(ids.filter((id) => rolloutBucket(id, target) < 25));
  t.ok(wave.size >= 3 && wave.size <= 10, `first wave holds ${wave.size} of ${ids.length} devices`);

  let halt: HaltRecord | undefined;
  const watcher = new FleetWatcher({
    brokerUrl: broker.url, release: target, stragglerAfterMs: 600_000, now, log,
    halt: { failureRate: 0.5, minDevices: 3, repoDir: repo },
    onHalt: (h) => { halt = h; },
  });
  await watcher.start();
  t.teardown(() => watcher.stop());
  await waitFor(() => watcher.view.devices.size === ids.length, 'every device state in the watcher');

  // the bad release: its image boots but reports itself unhealthy, so each trial boot rolls back
  const imagePath = join(root, 'image.img');
  await writeFile(imagePath, makeTestImage({ version: '2.0.0', size: slotSize - 4096, healthy: false }));
  await addRelease(repo, { image: imagePath, name: target, version: '2.0.0', securityVersion: 1, hardware: ['sim-board'], channel: 'stable', compression: 'gzip', chunkSize: 16 * 1024, rollout });
  await publishToBroker(repo, broker.url);

  const h = await waitFor(() => halt, 'the watcher to halt the rollout');
  t.ok(h.decision.stats.attempted >= 3, 'halted only after the minimum number of attempts');
  t.ok(h.decision.stats.failed / h.decision.stats.attempted >= 0.5, `failure rate crossed: ${h.decision.reason}`);
  t.equal((await readRollout(repo, target))?.halted, true, 'the signed targets say halted');
  t.same((await readRollout(repo, target))?.waves, rollout.waves, 'the halt keeps the waves');

  // let the wave finish, then move past the 100% wave and make every device check again
  await Promise.all(devices.map((d) => d.idle()));
  offsetMs = 2 * 3_600_000;
  await Promise.all(devices.map((d) => d.checkNow()));

  const downloaders = new Set<string>();
  for (const r of http.requests) {
    const m = /^\/d\/([^/]+)\/releases\//.exec(r.path);
    if (m) downloaders.add(m[1]!);
  }
  t.ok(downloaders.size >= 3, `${downloaders.size} first-wave devices downloaded the bad release`);
  t.same([...downloaders].filter((id) => !wave.has(id)), [], 'no device outside the first wave requested the payload');

  for (const d of devices) {
    const s = d.state!;
    t.equal(s.version, '1.0.0', `${d.id} still runs 1.0.0`);
    if (!wave.has(d.id)) {
      t.ok(rolloutAllows({ ...rollout }, rolloutBucket(d.id, target), now()), `${d.id}: the 100% wave alone would let it install now`);
      t.match(s.lastCheck?.detail ?? '', /MANIFEST_ROLLOUT_HALTED/, `${d.id}: refused because the rollout is halted`);
    } else if (downloaders.has(d.id)) {
      t.equal(s.lastResult?.outcome, 'rolledBack', `${d.id}: tried, failed its health check, rolled back`);
    }
  }
  const summary = watcher.summary();
  t.equal(summary.release?.succeeded, 0, 'nobody succeeded with the bad release');
  t.ok(summary.failures.every((f) => f.failedChecks?.includes('image-health')), 'failures carry the failed check');
});

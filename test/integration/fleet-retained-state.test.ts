/**
 * `slotflip fleet watch` started AFTER the devices finished: it learns every outcome from the
 * devices' retained `state` alone (events are not retained, so it never sees them). Two devices run
 * the real daemon (UpdateService in process: HTTP metadata and payload, emulated board, reboot by
 * power cycle) against a real Mosquitto; one commits 1.1.0 with a failing `required: false` check
 * (a warning, not a failure), the other rolls it back (its required check fails). Then the
 * watcher connects and must see: one success, one failure with its reason and failed check, the
 * warning, and neither device as a straggler (the retained state says when it was published).
 */
import t from 'tap';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connectAsync } from 'mqtt';
import { pino } from 'pino';
import { createBoard, powerCycle, makeTestImage } from '../../hal/board.js';
import { initRepo, addRelease } from '../../manifests/repo.js';
import { startHttpServer } from '../harness/http-server.js';
import { startMosquitto } from '../harness/mosquitto.js';
import { resolveConfig } from '../../daemon/config.js';
import { UpdateService } from '../../daemon/service.js';
import { FleetWatcher } from '../../daemon/fleet/watcher.js';
import { deviceTopics } from '../../daemon/topics.js';
import type { CycleResult } from '../../daemon/agent.js';
import { waitFor } from '../harness/wait.js';

const SLOT_SIZE = 128 * 1024;

t.test('a watcher that connects after the devices finished sees their outcomes from retained state', async (t) => {
  const dir = t.testdir();
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const image = join(dir, 'image.img');
  await writeFile(image, makeTestImage({ version: '1.1.0', size: 64 * 1024 }));
  const rel = await addRelease(repo, { image, version: '1.1.0', securityVersion: 1, hardware: ['acme,board'], channel: 'stable', compression: 'zstd', chunkSize: 16 * 1024 });
  const srv = await startHttpServer({ root: join(repo, 'repository') });
  t.teardown(() => srv.stop());
  const log = pino({ level: 'silent' });
  const node = process.execPath;
  // the events, for the record (the watcher below never sees them: they are not retained)
  const listener = await connectAsync(broker.url, { reconnectPeriod: 0 });
  t.teardown(() => listener.endAsync());
  const events: Record<string, unknown>[] = [];
  const latest = new Map<string, Record<string, unknown>>();
  listener.on('message', (topic, payload) => {
    if (payload.length === 0) return;
    const body = JSON.parse(payload.toString()) as Record<string, unknown>;
    if (topic.endsWith('/events')) events.push(body);
    else latest.set(topic, body);
  });
  await listener.subscribeAsync(['slotflip/v2/devices/+/events', 'slotflip/v2/devices/+/state'], { qos: 1 });

  // one device's whole update: install, reboot (power cycle), validate in the "next boot", stop
  const runDevice = async (id: string, requiredExit: number): Promise<CycleResult[]> => {
    const boardDir = join(dir, id);
    const board = await createBoard(boardDir, { backend: 'emulated', slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
    const config = await resolveConfig({
      deviceId: id, hardware: 'acme,board', stateDir: join(dir, `${id}-state`),
      trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'http', url: srv.url }] },
      board: { slots: { A: { path: board.slots.A, size: SLOT_SIZE }, B: { path: board.slots.B, size: SLOT_SIZE } }, boot: board.bootConfig, tries: 2 },
      broker: { urls: [broker.url], reconnect: { minMs: 50, maxMs: 200 } },
      health: {
        deadlineSeconds: 20,
        checks: [
          { type: 'command', name: 'app', argv: [node, '-e', `process.exit(${requiredExit})`], timeoutSeconds: 10 },
          { type: 'command', name: 'disk-space', required: false, argv: [node, '-e', 'console.log("only 3% free on /data"); process.exit(1)'], timeoutSeconds: 10 },
        ],
      },
    });
    const results: CycleResult[] = [];
    for (let boot = 0; boot < 4; boot++) {
      const svc = new UpdateService({
        config, log, schedule: false, retryMs: 3_600_000,
        overrides: { reboot: async () => { await powerCycle(boardDir); } },
        onCycle: (r) => { if (!('error' in r)) results.push(r); },
      });
      await svc.start();
      await svc.idle();
      // the retained state and the events reach the broker before this "boot" ends
      await waitFor(() => svc.transport?.connected, `${id} connected`);
      for (let i = 0; i < 200 && (await svc.outbox.pending()).length > 0; i++) await new Promise((r) => setTimeout(r, 25));
      const last = results[results.length - 1];
      if (!last?.rebooted) {
        t.teardown(() => svc.stop()); // finished, and still running (online), as a device would
        // the state this boot published (after its connect) is on the broker before the watcher comes
        await waitFor(() => latest.get(deviceTopics(id).state)?.['lastResult'], `${id}'s final state`);
        break;
      }
      await svc.stop();
    }
    return results;
  };

  const ok = await runDevice('dev-ok', 0);
  const bad = await runDevice('dev-bad', 3);
  t.match(ok.flatMap((r) => r.finished), [{ outcome: 'succeeded' }], 'dev-ok committed');
  t.match(bad.flatMap((r) => r.finished), [{ outcome: 'rolledBack' }], 'dev-bad rolled back');
  t.match(ok.flatMap((r) => r.finished), [{ warnings: [{ name: 'disk-space', output: /only 3% free/ }] }], 'the failed wanted check is in the history');
  const committed = await waitFor(() => events.find((e) => e['deviceId'] === 'dev-ok' && e['type'] === 'UpdateCommitted'), 'UpdateCommitted');
  t.match(committed, { warnings: [{ name: 'disk-space', output: /exit 1 \(expected 0\)\nonly 3% free on \/data/ }] }, 'and in the UpdateCommitted event, with its output');
  t.notOk(JSON.stringify(committed['warnings'] ?? null).includes('required'), 'a warning is a name and an output');

  // the retained state the devices left behind: one shape for the last result
  const peek = await connectAsync(broker.url, { reconnectPeriod: 0 });
  const retained = new Map<string, Record<string, unknown>>();
  peek.on('message', (topic, payload) => { if (payload.length) retained.set(topic, JSON.parse(payload.toString()) as Record<string, unknown>); });
  await peek.subscribeAsync([deviceTopics('dev-ok').state, deviceTopics('dev-bad').state], { qos: 1 });
  await waitFor(() => retained.size === 2 || undefined, 'both retained states');
  await peek.endAsync();
  const okState = retained.get(deviceTopics('dev-ok').state)!;
  t.match(okState, { lastResult: { outcome: 'succeeded', release: { id: String, version: '1.1.0' }, warnings: [{ name: 'disk-space', output: /only 3% free/ }] }, at: /^\d{4}-\d\d-\d\dT/ });
  t.notOk((okState['inventory'] as Record<string, unknown> | undefined)?.['lastResult'], 'no second, differently shaped last result in the inventory');

  // now the operator starts watching
  const watcher = new FleetWatcher({ brokerUrl: broker.url, release: rel.targetName, stragglerAfterMs: 600_000, now: Date.now, log });
  await watcher.start();
  t.teardown(() => watcher.stop());
  await waitFor(() => {
    const s = watcher.summary();
    return s.release && s.release.succeeded + s.release.failed === 2 ? s : undefined;
  }, 'both outcomes from retained state', 10_000);
  // the retained online flags come on topics of their own, not necessarily before the states
  await waitFor(() => [...watcher.view.devices.values()].every((d) => d.online !== undefined) || undefined, 'both devices\' retained online flags', 10_000);
  const s = watcher.summary();
  t.match(s.release, { attempted: 2, succeeded: 1, failed: 1, inProgress: 0 });
  t.match(s.failures, [{ deviceId: 'dev-bad', outcome: 'rolledBack', reason: /^DAEMON_HEALTH_CHECK_FAILED/, failedChecks: ['app'] }]);
  t.equal(s.stragglersTotal, 0, 'a retained state published moments ago is not a straggler');
  const seen = [...watcher.view.devices.values()].map((d) => ({ id: d.deviceId, online: d.online, agoMs: Date.now() - d.lastSeen }));
  t.ok(seen.every((d) => d.online === true && d.agoMs < 60_000), `online, last seen when the state was published (${JSON.stringify(seen)})`);
  t.equal(s.versions['1.1.0'], 1, 'the running version from the retained state');
  t.match(s.release, { withWarnings: 1 });
  t.same(watcher.view.devices.get('dev-ok')!.releases[rel.targetName]!.warnedChecks, ['disk-space'], 'the warning reaches the fleet view');
});

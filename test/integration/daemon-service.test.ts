/**
 * `slotflip daemon` as a separate process against a real Mosquitto (mutual TLS with a per-device
 * certificate and per-device ACLs) and a real HTTP server, on an emulated board. Metadata arrives as retained MQTT messages (the fleet's `publishToBroker`),
 * payloads over HTTP with Range. The configured reboot command only records the request: the test
 * then does what the machine would — the process dies (SIGKILL), the board power-cycles, systemd
 * starts the daemon again — and the new process validates the trial boot and commits.
 *
 * The events seen on the broker must be complete, ordered (seq) and truthful: "installed" before
 * the reboot, "committed" only from the process that validated the new slot.
 */
import t from 'tap';
import { writeFile, readFile, access } from 'node:fs/promises';
import { join } from 'node:path';
import { connectAsync } from 'mqtt';
import { createBoard, powerCycle, boardStatus, makeTestImage } from '../../hal/board.js';
import { initRepo, addRelease, publishToBroker } from '../../manifests/repo.js';
import { startHttpServer } from '../harness/http-server.js';
import { startMosquitto } from '../harness/mosquitto.js';
import { startDaemonProcess, type DaemonProcess } from '../harness/daemon-process.js';

const SLOT_SIZE = 256 * 1024;

t.test('daemon process: MQTT metadata, HTTP payload, reboot by power cycle, commit reported', async (t) => {
  const dir = t.testdir();
  const broker = await startMosquitto({ tls: { devices: ['dev-p1'] } });
  const dev = broker.certs!.clients['dev-p1']!;
  t.teardown(() => broker.stop());
  const boardDir = join(dir, 'board');
  const board = await createBoard(boardDir, { backend: 'emulated', slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const srv = await startHttpServer({ root: join(repo, 'repository') });
  t.teardown(() => srv.stop());

  const rebootFlag = join(dir, 'reboot-requested');
  const cfgPath = join(dir, 'config.json');
  await writeFile(cfgPath, JSON.stringify({
    deviceId: 'dev-p1',
    hardware: 'acme,board',
    stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'mqtt' }], payloadBaseUrls: [`${srv.url}targets/`] },
    board: { slots: { A: { path: board.slots.A, size: SLOT_SIZE }, B: { path: board.slots.B, size: SLOT_SIZE } }, boot: board.bootConfig, tries: 2 },
    // the device: mutual TLS with its own certificate, confined by the broker's ACL to its subtree
    broker: { urls: [broker.tlsUrl!], tls: { ca: broker.certs!.ca, cert: dev.cert, key: dev.key }, reconnect: { minMs: 100, maxMs: 1000 } },
    health: { deadlineSeconds: 30, checks: [{ type: 'broker', name: 'broker' }] },
    reboot: { command: [process.execPath, '-e', `require('fs').writeFileSync(${JSON.stringify(rebootFlag)}, 'now')`] },
    log: { level: 'info' },
  }));

  // the fleet's view: every event and the retained state of this device
  const observer = await connectAsync(broker.url, { clientId: 'observer', reconnectPeriod: 0 });
  t.teardown(() => observer.endAsync());
  const events: Record<string, unknown>[] = [];
  let state: Record<string, unknown> | undefined;
  observer.on('message', (topic, payload) => {
    if (topic.endsWith('/events')) events.push(JSON.parse(payload.toString()) as Record<string, unknown>);
    if (topic.endsWith('/state') && payload.length) state = JSON.parse(payload.toString()) as Record<string, unknown>;
  });
  await observer.subscribeAsync(['slotflip/v2/devices/dev-p1/events', 'slotflip/v2/devices/dev-p1/state'], { qos: 1 });
  const waitEvent = async (type: string, ms = 60_000) => {
    const until = Date.now() + ms;
    while (Date.now() < until) {
      const e = events.find((x) => x['type'] === type);
      if (e) return e;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`no ${type} event; got ${JSON.stringify(events.map((e) => e['type']))}`);
  };

  let daemon: DaemonProcess = startDaemonProcess(cfgPath);
  t.teardown(() => daemon.kill());
  await daemon.waitFor((l) => l['msg'] === 'cycle done', 60_000, 'first cycle');

  // publish a release: retained metadata on the broker; the running daemon reacts to the new timestamp
  const image = join(dir, 'image.img');
  await writeFile(image, makeTestImage({ version: '1.1.0', size: 120 * 1024 }));
  await addRelease(repo, { image, version: '1.1.0', securityVersion: 1, hardware: ['acme,board'], channel: 'stable', compression: 'zstd', chunkSize: 16 * 1024 });
  await publishToBroker(repo, broker.url);

  // the reboot command ran (the daemon then waits reboot.graceSeconds for the shutdown: no log line yet)
  for (let i = 0; await access(rebootFlag).then(() => false, () => true); i++) {
    if (i > 600) throw new Error('no reboot request in 60 s');
    await new Promise((r) => setTimeout(r, 100));
  }
  await waitEvent('RebootStarted');
  t.same(events.map((e) => e['type']), ['UpdateStarted', 'UpdateInstalled', 'RebootStarted'], 'nothing claims success before the reboot');

  // the reboot: the process dies, the bootloader tries slot B, the daemon starts again
  await daemon.kill();
  const boot = await powerCycle(boardDir);
  t.equal(boot.booted, 'B');
  daemon = startDaemonProcess(cfgPath);
  const committed = await waitEvent('UpdateCommitted');
  t.match(committed, { deviceId: 'dev-p1', version: '1.1.0', securityVersion: 1 });
  t.same(events.map((e) => e['type']), ['UpdateStarted', 'UpdateInstalled', 'RebootStarted', 'UpdateCommitted']);
  const seqs = events.map((e) => e['seq'] as number);
  t.ok(seqs.every((s, i) => i === 0 || s > seqs[i - 1]!), `seq increasing: ${seqs.join(',')}`);
  t.equal(new Set(events.map((e) => e['attempt'])).size, 1, 'one attempt');

  // retained state reflects the commit
  await daemon.waitFor((l) => l['msg'] === 'cycle done' && Array.isArray(l['finished']) && (l['finished'] as string[]).includes('succeeded'), 30_000, 'commit cycle');
  const until = Date.now() + 10_000;
  while (Date.now() < until && (state?.['bootedSlot'] !== 'B' || state?.['phase'] !== 'idle')) await new Promise((r) => setTimeout(r, 50));
  // one last result, in the shape fleet watch reads (topics.ts StateLastResult), stamped with `at`
  t.match(state, { deviceId: 'dev-p1', bootedSlot: 'B', phase: 'idle', committedSecurityVersion: 1, at: /^\d{4}-\d\d-\d\dT/, lastResult: { outcome: 'succeeded', release: { version: '1.1.0' } }, inventory: { bootedSlot: 'B', uptimeSeconds: Number } });
  t.notOk((state?.['inventory'] as Record<string, unknown>)['lastResult'], 'no second, flat copy inside the inventory');
  t.equal((await boardStatus(boardDir)).booted, 'B');

  // a clean stop
  t.equal(await daemon.stop(), 0, 'SIGTERM: clean exit');
  const rec = JSON.parse(await readFile(join(dir, 'state/update-record.json'), 'utf8')) as { phase: string; history: { outcome: string }[] };
  t.equal(rec.phase, 'idle');
  t.match(rec.history, [{ outcome: 'succeeded' }]);
});

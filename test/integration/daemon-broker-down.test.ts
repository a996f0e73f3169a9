/**
 * A broker that is down for the whole update window delays the reports and breaks nothing: the
 * daemon (UpdateService, in process) updates from its HTTP source across a reboot while the broker
 * is unreachable; every event waits in the persisted outbox, and once the broker is back the fleet
 * receives all of them, in order, exactly as they happened.
 */
import t from 'tap';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connectAsync } from 'mqtt';
import { pino } from 'pino';
import { createBoard, powerCycle, boardStatus, makeTestImage } from '../../hal/board.js';
import { initRepo, addRelease } from '../../manifests/repo.js';
import { startHttpServer } from '../harness/http-server.js';
import { startMosquitto } from '../harness/mosquitto.js';
import { resolveConfig } from '../../daemon/config.js';
import { UpdateService } from '../../daemon/service.js';
import type { CycleResult } from '../../daemon/agent.js';

const SLOT_SIZE = 256 * 1024;

t.test('update while the broker is down; events delivered in order when it returns', async (t) => {
  const dir = t.testdir();
  const broker = await startMosquitto({ dir: join(dir, 'broker') });
  t.teardown(() => broker.stop());
  await broker.stop({ cleanup: false }); // down for the whole update window

  const boardDir = join(dir, 'board');
  const board = await createBoard(boardDir, { backend: 'emulated', slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const image = join(dir, 'image.img');
  await writeFile(image, makeTestImage({ version: '1.1.0', size: 100 * 1024 }));
  await addRelease(repo, { image, version: '1.1.0', securityVersion: 1, hardware: ['acme,board'], channel: 'stable', compression: 'zstd', chunkSize: 16 * 1024 });
  const srv = await startHttpServer({ root: join(repo, 'repository') });
  t.teardown(() => srv.stop());

  const config = await resolveConfig({
    deviceId: 'dev-bd', hardware: 'acme,board', stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'http', url: srv.url }] },
    board: { slots: { A: { path: board.slots.A, size: SLOT_SIZE }, B: { path: board.slots.B, size: SLOT_SIZE } }, boot: board.bootConfig },
    broker: { urls: [broker.url], reconnect: { minMs: 50, maxMs: 200 }, connectTimeoutMs: 500 },
  });
  const log = pino({ level: 'silent' });
  const boot = async (): Promise<{ service: UpdateService; results: CycleResult[] }> => {
    const results: CycleResult[] = [];
    const service = new UpdateService({
      config, log, schedule: false, retryMs: 3_600_000,
      overrides: { reboot: async () => { await powerCycle(boardDir); } },
      onCycle: (r) => { if (!('error' in r)) results.push(r); },
    });
    await service.start();
    await service.idle();
    return { service, results };
  };

  // first boot: install, arm, reboot — no broker anywhere
  const first = await boot();
  t.match(first.results, [{ rebooted: true, phase: 'rebooting' }]);
  t.equal(first.service.transport?.connected, false);
  await first.service.stop();

  // second boot (the trial): validate and commit, still without a broker
  const second = await boot();
  t.match(second.results, [{ phase: 'idle', finished: [{ outcome: 'succeeded' }] }]);
  t.equal((await boardStatus(boardDir)).booted, 'B');
  const pending = await second.service.outbox.pending();
  t.same(pending.map((e) => e.event.type), ['UpdateStarted', 'UpdateInstalled', 'RebootStarted', 'UpdateCommitted'], 'every event kept');
  await second.service.stop();

  // the broker comes back; the fleet listens; the daemon (third start) delivers the backlog
  await broker.restart();
  const observer = await connectAsync(broker.url, { clientId: 'fleet', reconnectPeriod: 0 });
  t.teardown(() => observer.endAsync());
  const events: { seq: number; type: string }[] = [];
  observer.on('message', (_topic, payload) => events.push(JSON.parse(payload.toString()) as { seq: number; type: string }));
  await observer.subscribeAsync('slotflip/v2/devices/dev-bd/events', { qos: 1 });
  const third = await boot();
  t.teardown(() => third.service.stop());
  const until = Date.now() + 20_000;
  while (events.length < 4 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  t.same(events.map((e) => e.type), ['UpdateStarted', 'UpdateInstalled', 'RebootStarted', 'UpdateCommitted']);
  t.ok(events.every((e, i) => i === 0 || e.seq > events[i - 1]!.seq), 'in seq order');
  t.match(third.results, [{ phase: 'idle', finished: [] }], 'nothing more to do');
  const until2 = Date.now() + 5_000;
  while ((await third.service.outbox.pending()).length > 0 && Date.now() < until2) await new Promise((r) => setTimeout(r, 50));
  t.same(await third.service.outbox.pending(), [], 'outbox drained after the acks');
});

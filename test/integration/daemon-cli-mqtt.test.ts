/**
 * `slotflip update --once` on a device whose metadata comes only from the broker: the command
 * connects, waits for the retained metadata, runs the cycle, and delivers the events it queued
 * before it exits. A broker that is unreachable only costs the bounded wait.
 */
import t from 'tap';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { connectAsync } from 'mqtt';
import { createBoard, powerCycle, makeTestImage } from '../../hal/board.js';
import { initRepo, addRelease, publishToBroker } from '../../manifests/repo.js';
import { startHttpServer } from '../harness/http-server.js';
import { startMosquitto, freePort } from '../harness/mosquitto.js';
import { command as update } from '../../daemon/commands/update.js';

const SLOT_SIZE = 256 * 1024;

async function run(argv: string[]): Promise<{ code: number; out: Record<string, unknown> }> {
  let out = '';
  const stdout = new Writable({ write(c, _e, cb) { out += String(c); cb(); } });
  const stderr = new Writable({ write(_c, _e, cb) { cb(); } });
  const code = await update.run(argv, { stdout, stderr, env: {} });
  return { code, out: JSON.parse(out) as Record<string, unknown> };
}

t.test('update --once with MQTT-only metadata reports its events before exiting', async (t) => {
  const dir = t.testdir();
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const boardDir = join(dir, 'board');
  const board = await createBoard(boardDir, { backend: 'emulated', slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const image = join(dir, 'image.img');
  await writeFile(image, makeTestImage({ version: '1.1.0', size: 100 * 1024 }));
  await addRelease(repo, { image, version: '1.1.0', securityVersion: 1, hardware: ['acme,board'], channel: 'stable', compression: 'zstd', chunkSize: 16 * 1024 });
  await publishToBroker(repo, broker.url);
  const srv = await startHttpServer({ root: join(repo, 'repository') });
  t.teardown(() => srv.stop());

  const observer = await connectAsync(broker.url, { clientId: 'fleet', reconnectPeriod: 0 });
  t.teardown(() => observer.endAsync());
  const events: string[] = [];
  observer.on('message', (_topic, payload) => events.push((JSON.parse(payload.toString()) as { type: string }).type));
  await observer.subscribeAsync('slotflip/v2/devices/dev-m/events', { qos: 1 });

  const config = (brokerUrl: string) => ({
    deviceId: 'dev-m', hardware: 'acme,board', stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'mqtt' }], payloadBaseUrls: [`${srv.url}targets/`] },
    board: { slots: { A: { path: board.slots.A, size: SLOT_SIZE }, B: { path: board.slots.B, size: SLOT_SIZE } }, boot: board.bootConfig },
    broker: { urls: [brokerUrl], reconnect: { minMs: 100, maxMs: 500 }, connectTimeoutMs: 1000 },
    reboot: { command: [process.execPath, '-e', '0'] },
    log: { level: 'warn' },
  });
  const cfgPath = join(dir, 'config.json');
  await writeFile(cfgPath, JSON.stringify(config(broker.url)));

  const r1 = await run(['--once', '--config', cfgPath, '--json']);
  t.match(r1.out, { rebooted: true, phase: 'rebooting' });
  const until = Date.now() + 5000;
  while (events.length < 3 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  t.same(events, ['UpdateStarted', 'UpdateInstalled', 'RebootStarted'], 'delivered before the command returned');

  await powerCycle(boardDir);
  const r2 = await run(['--once', '--no-check', '--config', cfgPath, '--json']);
  t.match(r2.out, { phase: 'idle', finished: [{ outcome: 'succeeded' }] });
  const until2 = Date.now() + 5000;
  while (events.length < 4 && Date.now() < until2) await new Promise((r) => setTimeout(r, 20));
  t.same(events.at(-1), 'UpdateCommitted');

  // an unreachable broker: the command still runs after the bounded wait; with no metadata it could
  // not check, and says so (exit 5: metadata rejected or not obtained; daemon/exit-codes.ts)
  const deadCfg = join(dir, 'config-dead.json');
  await writeFile(deadCfg, JSON.stringify(config(`mqtt://127.0.0.1:${await freePort()}`)));
  const started = Date.now();
  const r3 = await run(['--once', '--config', deadCfg, '--json']);
  t.equal(r3.code, 5);
  t.match(r3.out, { phase: 'idle', finished: [] });
  t.ok(Date.now() - started < 30_000, 'bounded wait');
});

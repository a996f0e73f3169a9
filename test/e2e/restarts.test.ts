/**
 * The servers restart under a downloading device: the payload's HTTP server goes away at ~30 % of
 * the download and comes back on the same port 1.5 s later, and the broker restarts meanwhile. The
 * daemon resumes with Range (the server's byte count stays <= 1.05 x the payload + one chunk), slot B
 * holds the image, and the fleet receives the device's reports after the broker is back.
 */
import t from 'tap';
import { connectAsync } from 'mqtt';
import { startHttpServer } from '../harness/http-server.js';
import { startMosquitto } from '../harness/mosquitto.js';
import { bytesServed, slotSha256, startDaemon, until } from './harness.js';
import { MIB, setupDownload } from './scenarios.js';

const broker = await startMosquitto({ persistence: true });
t.teardown(() => broker.stop());

t.test('HTTP server and broker restarted mid-download: resumed with Range (<= 1.05x payload + 1 chunk), reports delivered', async (t) => {
  const dir = t.testdir();
  const env = await setupDownload(dir, { brokerUrl: broker.url, deviceId: 'dev-restart', bytesPerSecond: 4 * MIB, extra: { retry: { delaySeconds: 1, maxDelaySeconds: 2 } } });
  const servers = [env.srv];
  t.teardown(() => Promise.all(servers.map((s) => s.stop())));

  // the fleet's watcher: a persistent session, so events published while it reconnects are kept
  const observer = await connectAsync(broker.url, { clientId: 'fleet-restart', clean: false, reconnectPeriod: 200 });
  t.teardown(() => observer.endAsync(true));
  const events: string[] = [];
  observer.on('message', (_topic, payload) => events.push((JSON.parse(payload.toString()) as { type: string }).type));
  await observer.subscribeAsync('slotflip/v2/devices/dev-restart/events', { qos: 1 });

  const d = startDaemon(env.configPath);
  t.teardown(() => d.kill());
  await until(() => bytesServed(env.srv, env.rel.urlPath) >= 0.3 * env.rel.length, 30_000, '30 % served');
  const { port, requests } = env.srv;
  await env.srv.stop();
  await broker.restart({ downMs: 500 });
  await new Promise((r) => setTimeout(r, 1500));
  servers.push(await startHttpServer({ root: env.fleet.repository, faults: { bytesPerSecond: 4 * MIB }, port, requests }));

  await d.waitFor((l) => l.msg === 'install verified', 60_000, 'install verified');
  await d.waitFor((l) => l.msg === 'cycle done' && l.phase === 'rebooting', 30_000, 'a cycle that ends at the reboot');
  const served = bytesServed(servers[1]!, env.rel.urlPath);
  const bound = Math.ceil(1.05 * env.rel.length + env.chunkSize);
  t.comment(JSON.stringify({ payload: env.rel.length, served, ratio: Math.round((served / env.rel.length) * 1000) / 1000, bound, requests: requests.filter((q) => q.path === env.rel.urlPath).map((q) => `${q.status} ${q.range ?? ''} ${q.bytesSent}`) }));
  t.ok(served <= bound, `served ${served} <= ${bound}`);
  t.ok(requests.some((q) => q.path === env.rel.urlPath && q.status === 206), 'the restarted server was asked for the rest with Range');
  t.equal(await slotSha256(env.board.slots.B, env.rel.size), env.rel.imageSha256, 'slot B holds the image');
  await until(() => events.includes('UpdateInstalled'), 20_000, 'UpdateInstalled on the broker').catch(() => undefined);
  t.ok(events.includes('UpdateStarted') && events.includes('UpdateInstalled'), `the fleet got the reports after the broker restart (${events.join(', ')})`);
  t.equal(await d.stop(), 0, 'the daemon stops cleanly');
});

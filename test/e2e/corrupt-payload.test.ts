/**
 * A payload corrupt at the source (issue 14): one byte flipped in the middle of the payload file
 * that both mirrors serve. The daemon must not pull the payload again and again: the bad chunk is
 * fetched alone a bounded number of times per mirror, then the attempt ends `failed` with a stable
 * code (INSTALL_PAYLOAD_CORRUPT), the target slot stays marked bad, the fleet gets an UpdateFailed
 * event, and the device stops downloading (it is not started again until a newer release appears or
 * an operator runs `slotflip check --retry`). Measured from outside: bytes served by both HTTP
 * servers (<= 2 x the payload), the event on the broker, `slotflip status`, and the daemon's RSS.
 */
import t from 'tap';
import { connectAsync } from 'mqtt';
import { startMosquitto } from '../harness/mosquitto.js';
import { corruptPayload } from './harness.js';
import { corruptRun, setupDownload } from './scenarios.js';

const broker = await startMosquitto();
t.teardown(() => broker.stop());

t.test('a corrupt payload ends the attempt failed (INSTALL_PAYLOAD_CORRUPT) after <= 2x the payload, target bad, fleet told, RSS flat', async (t) => {
  const dir = t.testdir();
  // unthrottled: a fast link, where re-fetching the rest of the file on every retry costs the most
  const env = await setupDownload(dir, { brokerUrl: broker.url, deviceId: 'dev-corrupt', bytesPerSecond: 0, mirrors: 2 });
  t.teardown(() => Promise.all([env.srv.stop(), ...env.mirrorsSrv.map((m) => m.stop())]));
  await corruptPayload(env.rel, 0.5);

  const observer = await connectAsync(broker.url, { clientId: 'fleet-e2e', reconnectPeriod: 0 });
  t.teardown(() => observer.endAsync());
  const events: Array<{ type: string; reason?: { code?: string } }> = [];
  observer.on('message', (_topic, payload) => events.push(JSON.parse(payload.toString()) as { type: string }));
  await observer.subscribeAsync('slotflip/v2/devices/dev-corrupt/events', { qos: 1 });

  const r = await corruptRun(env, { quietMs: 4000 });
  t.comment(JSON.stringify(r.figures));
  t.match(r.finished, { outcome: 'failed', reason: { code: 'INSTALL_PAYLOAD_CORRUPT' } }, 'the attempt ended failed with a stable code');
  t.ok(r.figures.served <= 2 * env.rel.length, `bytes served by both mirrors ${r.figures.served} <= 2 x payload ${env.rel.length} (${r.figures.ratio}x)`);
  t.ok(r.figures.mirrorsUsed === 2, 'the second mirror was tried before giving up');
  // a later attempt of the same release (another trigger: retained metadata, a poll) asks each mirror
  // once for the chunk known corrupt, alone, and ends again: at most one chunk per mirror
  t.ok(r.figures.servedAfterEnd <= 2 * env.chunkSize + 4096, `after the attempt ended: ${r.figures.servedAfterEnd} bytes (<= one chunk per mirror)`);
  t.equal(r.figures.servedAfterEnd, 0, 'the failed release is not started again until a newer one appears or an operator asks');
  t.match(r.status, { phase: 'idle', slots: [{ slot: 'A', booted: true }, { slot: 'B', boot: { state: 'bad' } }] }, 'the target slot stays marked bad; the device is idle');
  const until = Date.now() + 5000;
  while (!events.some((e) => e.type === 'UpdateFailed') && Date.now() < until) await new Promise((res) => setTimeout(res, 50));
  t.match(events.find((e) => e.type === 'UpdateFailed'), { reason: { code: 'INSTALL_PAYLOAD_CORRUPT' } }, 'the fleet got an UpdateFailed report with the code');
  t.ok(r.figures.rssGrowthKiB <= 24 * 1024, `RSS after the retries grew ${r.figures.rssGrowthKiB} KiB over the first failure's (<= 24 MiB)`);
});

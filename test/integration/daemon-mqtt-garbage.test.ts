/**
 * Garbage on retained meta topics (issue 14), from outside: a real Mosquitto holds bytes that are
 * not JSON on `slotflip/v2/meta/2_root` and a forged (unsigned) timestamp with a huge version on
 * `slotflip/v2/meta/timestamp`. The built `slotflip daemon` stays up, logs each problem once at warn
 * with its code and topic, installs the release from the HTTP repository anyway, and
 * `slotflip status --json` shows the problems; the manufacturer's `repo publish` clears the stray
 * topic and says so.
 */
import t from 'tap';
import { connectAsync } from 'mqtt';
import { startMosquitto } from '../harness/mosquitto.js';
import { cli, makeDevice, makeRepo, observe, startBuiltDaemon } from '../harness/broker-lane.js';

t.test('stray retained metadata: logged once, HTTP used instead, cleared by repo publish', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const dir = t.testdir();
  const repo = await makeRepo(dir);
  t.teardown(() => repo.stop());
  await repo.add('1.1.0');

  const admin = await connectAsync(broker.url, { reconnectPeriod: 0 });
  t.teardown(() => admin.endAsync());
  await admin.publishAsync('slotflip/v2/meta/2_root', Buffer.from([0xff, 0x00, 0x13]), { qos: 1, retain: true });
  const forged = { signed: { _type: 'timestamp', version: 999, spec_version: '1.0.31', expires: '2099-01-01T00:00:00Z', meta: { 'snapshot.json': { version: 999 } } }, signatures: [] };
  await admin.publishAsync('slotflip/v2/meta/timestamp', JSON.stringify(forged), { qos: 1, retain: true });

  const obs = await observe(broker.url, ['slotflip/v2/devices/+/events']);
  t.teardown(() => obs.close());
  const dev = await makeDevice(dir, 'dev-g', repo, broker.url);
  const d = startBuiltDaemon(dev.configPath);
  t.teardown(() => d.kill());
  await obs.waitEvent('dev-g', 'RebootStarted', 60_000);
  t.pass('installed from the HTTP repository despite the broker\'s garbage');

  const problems = (): Record<string, unknown>[] => d.lines.filter((l) => l['msg'] === 'mqtt problem');
  const parse = problems().filter((l) => l['code'] === 'MANIFEST_PARSE');
  t.equal(parse.length, 1, 'the non-JSON root: one warn line');
  t.match(parse[0], { level: 40, topic: 'slotflip/v2/meta/2_root' });
  const sig = problems().filter((l) => l['code'] === 'MANIFEST_SIGNATURE');
  t.equal(sig.length, 1, 'the forged timestamp: one warn line');
  t.match(sig[0], { level: 40, topic: 'slotflip/v2/meta/timestamp', file: 'timestamp.json' });

  // more checks: nothing new is logged for the same causes
  await admin.publishAsync('slotflip/v2/devices/dev-g/cmd/check', 'x', { qos: 1 });
  await admin.publishAsync('slotflip/v2/devices/dev-g/cmd/check', 'x', { qos: 1 });
  await new Promise((r) => setTimeout(r, 3000));
  t.equal(problems().filter((l) => l['code'] === 'MANIFEST_PARSE' || l['code'] === 'MANIFEST_SIGNATURE').length, 2, 'still once per cause');

  const st = await cli(['status', '--config', dev.configPath, '--json']);
  t.equal(st.code, 0, st.stderr);
  const status = JSON.parse(st.stdout) as { broker?: { problems: { code: string; topic?: string }[] } };
  t.match(status.broker?.problems, [{ code: 'MANIFEST_PARSE', topic: 'slotflip/v2/meta/2_root' }, { code: 'MANIFEST_SIGNATURE', topic: 'slotflip/v2/meta/timestamp' }]);
  await d.kill();

  // the manufacturer republishes: the stray root goes, and the output says so
  const pub = await cli(['repo', 'publish', repo.dir, '--broker', broker.url]);
  t.equal(pub.code, 0, pub.stderr);
  t.match(pub.stdout, /cleared retained slotflip\/v2\/meta\/2_root/);
});

// What MqttTransport asks MQTT.js for: captured through the injectable client factory.
import t from 'tap';
import { join } from 'node:path';
import { connect, type IClientOptions } from 'mqtt';
import { MqttTransport, brokerConfigDefaults, type BrokerConfig, type ClientFactory } from '../../daemon/mqtt.js';
import { Outbox, MemoryOutboxStore } from '../../daemon/outbox.js';
import { freePort } from '../harness/mosquitto.js';

async function capture(t: { teardown(fn: () => unknown): void }, config: BrokerConfig, deviceId = 'dev9'): Promise<{ opts: IClientOptions[]; urls: string[]; problems: string[]; tr: MqttTransport }> {
  const opts: IClientOptions[] = [];
  const urls: string[] = [];
  const problems: string[] = [];
  const factory: ClientFactory = (url, o) => { urls.push(url); opts.push(o); return connect(url, o); };
  const tr = new MqttTransport({ config, deviceId, outbox: new Outbox({ store: new MemoryOutboxStore() }), connect: factory });
  tr.on('problem', (p) => problems.push(p.code));
  tr.start();
  t.teardown(() => tr.stop());
  return { opts, urls, problems, tr };
}

async function until(fn: () => boolean): Promise<void> {
  for (let i = 0; i < 300 && !fn(); i++) await new Promise((r) => setTimeout(r, 10));
}

t.test('options: v5, mutual TLS files, credentials file, will, no MQTT.js reconnect', async (t) => {
  const dir = t.testdir({ 'ca.pem': 'CA', 'dev.pem': 'CERT', 'dev.key': 'KEY', 'creds.json': '{"username":"u1","password":"p1"}' });
  const dead = await freePort();
  const { opts } = await capture(t, { ...brokerConfigDefaults, reconnect: { minMs: 10_000, maxMs: 10_000 }, urls: [`mqtts://127.0.0.1:${dead}`], tls: { ca: join(dir, 'ca.pem'), cert: join(dir, 'dev.pem'), key: join(dir, 'dev.key') }, credentialsFile: join(dir, 'creds.json') } as BrokerConfig);
  await until(() => opts.length > 0);
  const o = opts[0]!;
  t.match(o, {
    protocolVersion: 5, clientId: 'dev9', clean: true, keepalive: 60, reconnectPeriod: 0, rejectUnauthorized: true,
    username: 'u1', password: 'p1', properties: { maximumPacketSize: 262144, sessionExpiryInterval: 0 },
    will: { topic: 'slotflip/v2/devices/dev9/online', qos: 1, retain: true },
  });
  t.equal(String(o.will!.payload), 'offline');
  t.same([String(o.ca), String(o.cert), String(o.key)], ['CA', 'CERT', 'KEY']);
});

t.test('options: 3.1.1 has no v5 properties; urls rotate on reconnect', async (t) => {
  const [a, b] = [await freePort(), await freePort()];
  const { opts, urls } = await capture(t, { ...brokerConfigDefaults, protocolVersion: 4, clientId: 'custom-id', reconnect: { minMs: 10, maxMs: 20 }, urls: [`mqtt://127.0.0.1:${a}`, `mqtt://127.0.0.1:${b}`] } as BrokerConfig);
  await until(() => urls.length >= 3);
  t.equal(opts[0]!.protocolVersion, 4);
  t.equal(opts[0]!.properties, undefined);
  t.equal(opts[0]!.clientId, 'custom-id');
  t.same(urls.slice(0, 3), [`mqtt://127.0.0.1:${a}`, `mqtt://127.0.0.1:${b}`, `mqtt://127.0.0.1:${a}`]);
});

t.test('unreadable TLS file or bad credentials: reported, retried, never thrown', async (t) => {
  const dir = t.testdir({ 'creds.json': 'user:pass' });
  const a = await capture(t, { ...brokerConfigDefaults, reconnect: { minMs: 10, maxMs: 20 }, urls: ['mqtts://127.0.0.1:1'], tls: { ca: join(dir, 'missing.pem') } } as BrokerConfig);
  await until(() => a.problems.length >= 2);
  t.same(a.problems.slice(0, 2), ['DAEMON_MQTT_CONNECT', 'DAEMON_MQTT_CONNECT'], 'keeps retrying (the file may appear, e.g. after provisioning)');
  t.equal(a.opts.length, 0);
  const b = await capture(t, { ...brokerConfigDefaults, reconnect: { minMs: 10, maxMs: 20 }, urls: ['mqtt://127.0.0.1:1'], credentialsFile: join(dir, 'creds.json') } as BrokerConfig);
  await until(() => b.problems.length >= 1);
  t.equal(b.problems[0], 'DAEMON_MQTT_CONNECT');
  t.equal(await b.tr.probe(50), false, 'probe: not reachable');
});

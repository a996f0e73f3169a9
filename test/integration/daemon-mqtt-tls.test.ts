// Mutual TLS with per-device certificates and per-device ACLs on a real Mosquitto.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { connectAsync, type IClientOptions, type MqttClient } from 'mqtt';
import { startMosquitto } from '../harness/mosquitto.js';
import { MqttTransport, brokerConfigDefaults, type BrokerConfig } from '../../daemon/mqtt.js';
import { connectMqtt } from '../../daemon/mqtt-connect.js';
import { Outbox, MemoryOutboxStore } from '../../daemon/outbox.js';
import { metaTopic } from '../../daemon/topics.js';
import { waitFor } from '../harness/wait.js';

const broker = await startMosquitto({ tls: { devices: ['dev1', 'dev2'], admins: ['fleet'] } });
t.teardown(() => broker.stop());
const certs = broker.certs!;
const tlsUrl = broker.tlsUrl!;

function tlsOpts(name: string, protocolVersion: 4 | 5): IClientOptions {
  return {
    protocolVersion,
    clientId: `${name}-raw-${protocolVersion}`,
    ca: readFileSync(certs.ca),
    cert: readFileSync(certs.clients[name]!.cert),
    key: readFileSync(certs.clients[name]!.key),
    reconnectPeriod: 0,
  };
}

function deviceConfig(name: string, over: Partial<BrokerConfig> = {}): BrokerConfig {
  return { ...brokerConfigDefaults, urls: [tlsUrl], reconnect: { minMs: 50, maxMs: 200 }, tls: { ca: certs.ca, cert: certs.clients[name]!.cert, key: certs.clients[name]!.key }, ...over } as BrokerConfig;
}

async function collect(client: MqttClient, filter: string): Promise<string[]> {
  const seen: string[] = [];
  client.on('message', (topic, payload) => seen.push(`${topic} ${payload.toString()}`));
  await client.subscribeAsync(filter, { qos: 1 });
  return seen;
}

t.test('a client without a certificate is refused', async (t) => {
  await t.rejects(connectAsync(tlsUrl, { ca: readFileSync(certs.ca), reconnectPeriod: 0, connectTimeout: 3000 }));
});

t.test('device transport over mutual TLS: metadata in, events out, online flag', async (t) => {
  const fleet = await connectAsync(tlsUrl, tlsOpts('fleet', 5));
  t.teardown(() => fleet.endAsync());
  const seen = await collect(fleet, 'slotflip/v2/devices/dev1/#');
  await fleet.publishAsync(metaTopic('2.root.json'), '{"root":1}', { qos: 1, retain: true });
  const outbox = new Outbox({ store: new MemoryOutboxStore() });
  const metadata = new Map<string, Uint8Array>();
  const tr = new MqttTransport({ config: deviceConfig('dev1'), deviceId: 'dev1', outbox, metadata });
  tr.start();
  t.teardown(() => tr.stop());
  await waitFor(() => metadata.get('2.root.json'), 'metadata over TLS');
  await outbox.append({ type: 'UpdateCommitted', release: 'r1' });
  await waitFor(() => seen.find((s) => s.startsWith('slotflip/v2/devices/dev1/events ')), 'event over TLS');
  t.ok(seen.includes('slotflip/v2/devices/dev1/online online'));
  t.match(JSON.parse(seen.find((s) => s.includes('/events '))!.split(' ')[1]!), { type: 'UpdateCommitted', seq: 1, deviceId: 'dev1' });
  t.equal((await outbox.pending()).length, 0);
});

t.test('MQTT 5: a device cannot publish into another device subtree (PUBACK 0x87)', async (t) => {
  const fleet = await connectAsync(tlsUrl, tlsOpts('fleet', 5));
  t.teardown(() => fleet.endAsync());
  const seen = await collect(fleet, 'slotflip/v2/devices/#');
  const dev1 = await connectAsync(tlsUrl, tlsOpts('dev1', 5));
  t.teardown(() => dev1.endAsync());
  const err = await dev1.publishAsync('slotflip/v2/devices/dev2/events', 'forged', { qos: 1 }).then(() => undefined, (e: unknown) => e);
  t.match(err, { code: 0x87 }, 'denied with reason 0x87 (not authorized)');
  await t.rejects(dev1.publishAsync('slotflip/v1/meta/root.json', 'evil', { qos: 1 }), { code: 0x87 }, 'devices cannot write metadata');
  await dev1.publishAsync('slotflip/v2/devices/dev1/events', 'own', { qos: 1 });
  await waitFor(() => seen.includes('slotflip/v2/devices/dev1/events own'), 'own publish delivered');
  t.notOk(seen.some((s) => s.includes('forged')), 'the forged event never reached anyone');
  // Mosquitto grants the subscription but checks read access per message: dev1 never reads dev2's topics
  const dev1Seen = await collect(dev1, 'slotflip/v2/devices/+/cmd/#');
  await fleet.publishAsync('slotflip/v2/devices/dev2/cmd/check', 'for-dev2', { qos: 1 });
  await fleet.publishAsync('slotflip/v2/devices/dev1/cmd/check', 'for-dev1', { qos: 1 });
  await waitFor(() => dev1Seen.includes('slotflip/v2/devices/dev1/cmd/check for-dev1'), 'own command');
  t.same(dev1Seen, ['slotflip/v2/devices/dev1/cmd/check for-dev1'], 'cannot read another device subtree');
});

t.test('MQTT 3.1.1: a denied publish is silently dropped by the broker', async (t) => {
  const fleet = await connectAsync(tlsUrl, tlsOpts('fleet', 4));
  t.teardown(() => fleet.endAsync());
  const seen = await collect(fleet, 'slotflip/v2/devices/#');
  const dev1 = await connectAsync(tlsUrl, tlsOpts('dev1', 4));
  t.teardown(() => dev1.endAsync());
  await dev1.publishAsync('slotflip/v2/devices/dev2/events', 'forged311', { qos: 1 });
  await dev1.publishAsync('slotflip/v2/devices/dev1/events', 'own311', { qos: 1 });
  await waitFor(() => seen.includes('slotflip/v2/devices/dev1/events own311'), 'own publish delivered');
  t.notOk(seen.some((s) => s.includes('forged311')));
});

t.test('transport whose certificate does not match its device id: events refused and kept', async (t) => {
  // dev1's certificate, configured as dev2: the ACL (%u = certificate CN) refuses dev2's topics
  const outbox = new Outbox({ store: new MemoryOutboxStore() });
  const tr = new MqttTransport({ config: deviceConfig('dev1', { clientId: 'dev1-misconfigured' }), deviceId: 'dev2', outbox });
  const problems: Array<{ code: string; reason: unknown }> = [];
  tr.on('problem', (p) => problems.push({ code: p.code, reason: p.details?.reason }));
  tr.start();
  t.teardown(() => tr.stop());
  await waitFor(() => tr.connected, 'connected');
  await outbox.append({ type: 'UpdateFailed' });
  await waitFor(() => problems.find((p) => p.code === 'DAEMON_MQTT_PUBLISH'), 'publish refused');
  t.match(problems.find((p) => p.code === 'DAEMON_MQTT_PUBLISH'), { reason: 0x87 });
  await waitFor(() => problems.filter((p) => p.code === 'DAEMON_MQTT_PUBLISH').length >= 3, 'retried with backoff', 5000);
  t.same((await outbox.pending()).map((e) => e.seq), [1], 'a refused event is never acked or dropped');
});

// daemon/mqtt-connect.ts builds the TLS socket itself (not MQTT.js's connect()): the same refusals
function outcome(client: MqttClient): Promise<{ connected: boolean; error?: Error }> {
  return new Promise((resolve) => {
    let error: Error | undefined;
    client.on('error', (e) => { error ??= e; });
    client.once('connect', () => resolve({ connected: true }));
    client.once('close', () => resolve({ connected: false, ...(error ? { error } : {}) }));
  });
}

t.test('the device connector refuses a broker whose certificate its CA did not sign', async (t) => {
  // no `ca`: the broker's test CA is not in the system store, so the handshake must not complete
  const client = connectMqtt(tlsUrl, { ...tlsOpts('dev1', 5), ca: undefined, clientId: 'dev1-untrusted' });
  t.teardown(() => client.end(true));
  const r = await outcome(client);
  t.equal(r.connected, false, 'never connected');
  t.match(r.error?.message ?? '', /certificate|self.signed|issuer/i, `the TLS error reached the client: ${r.error?.message}`);
});

t.test('the device connector: a client certificate turns mqtt:// into TLS (as MQTT.js does); mqtts:// connects', async (t) => {
  for (const url of [tlsUrl.replace(/^mqtts:/, 'mqtt:'), tlsUrl]) {
    const client = connectMqtt(url, { ...tlsOpts('dev1', 5), clientId: 'dev1' });
    const r = await outcome(client);
    t.equal(r.connected, true, `${url}: connected (${r.error?.message ?? 'no error'})`);
    t.ok((client.stream as { encrypted?: boolean }).encrypted, `${url}: over TLS`);
    await client.endAsync();
  }
});

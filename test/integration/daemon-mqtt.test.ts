// MqttTransport against a real Mosquitto (plain listener): metadata, state, commands, online/LWT,
// outbox delivery across a broker restart, reconnect backoff, bounded packets. MQTT 3.1.1 and 5.
import t from 'tap';
import { connectAsync, type MqttClient, type IClientOptions } from 'mqtt';
import { startMosquitto, freePort } from '../harness/mosquitto.js';
import { MqttTransport, brokerConfigDefaults, type BrokerConfig, type ClientFactory } from '../../daemon/mqtt.js';
import { connect as mqttConnect } from 'mqtt';
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Outbox, MemoryOutboxStore } from '../../daemon/outbox.js';
import { deviceTopics, metaTopic } from '../../daemon/topics.js';
import { waitFor } from '../harness/wait.js';

interface Seen { topic: string; payload: string; retain: boolean }
async function observe(url: string, filter: string, opts: IClientOptions = {}): Promise<{ client: MqttClient; seen: Seen[] }> {
  const client = await connectAsync(url, { reconnectPeriod: 100, ...opts });
  const seen: Seen[] = [];
  client.on('message', (topic, payload, packet) => seen.push({ topic, payload: payload.toString(), retain: packet.retain }));
  await client.subscribeAsync(filter, { qos: 1 });
  return { client, seen };
}

function config(urls: string[], over: Partial<BrokerConfig> = {}): BrokerConfig {
  return { ...brokerConfigDefaults, reconnect: { minMs: 50, maxMs: 400 }, urls, ...over } as BrokerConfig;
}

const broker = await startMosquitto({ persistence: true, maxPacketSize: 64 * 1024 });
t.teardown(() => broker.stop());

for (const protocolVersion of [4, 5] as const) {
  t.test(`MQTT ${protocolVersion === 4 ? '3.1.1' : '5'}: metadata, state, commands, online flag`, async (t) => {
    const id = `dev-m${protocolVersion}`;
    const topics = deviceTopics(id);
    const admin = await connectAsync(broker.url);
    t.teardown(() => admin.endAsync());
    await admin.publishAsync(metaTopic('timestamp.json'), '{"signed":1}', { qos: 1, retain: true });
    const obs = await observe(broker.url, `${topics.root}/#`);
    t.teardown(() => obs.client.endAsync());

    const metadata = new Map<string, Uint8Array>();
    const tr = new MqttTransport({ config: config([broker.url], { protocolVersion }), deviceId: id, outbox: new Outbox({ store: new MemoryOutboxStore() }), metadata });
    const metaEvents: string[] = [];
    tr.on('metadata', (m) => metaEvents.push(`${m.file}:${m.retained}:${m.bytes ? Buffer.from(m.bytes).toString() : '-'}`));
    const commands: string[] = [];
    tr.on('command', (c) => commands.push(c.name));
    tr.start();
    t.teardown(() => tr.stop());

    await waitFor(() => metadata.get('timestamp.json'), 'retained metadata in the map');
    t.equal(Buffer.from(metadata.get('timestamp.json')!).toString(), '{"signed":1}');
    t.ok(await tr.probe(1000), 'probe says reachable');
    await waitFor(() => obs.seen.find((s) => s.topic === topics.online && s.payload === 'online'), 'online flag');

    await admin.publishAsync(metaTopic('3.targets.json'), '{"t":2}', { qos: 1, retain: true });
    await waitFor(() => metadata.get('3.targets.json'), 'live metadata');
    await admin.publishAsync(metaTopic('3.targets.json'), '', { qos: 1, retain: true });
    await waitFor(() => !metadata.has('3.targets.json'), 'cleared metadata removed from the map');
    await admin.publishAsync(`slotflip/v1/meta/../evil`, 'x', { qos: 1 });
    await admin.publishAsync(topics.cmdCheck, 'now', { qos: 1 });
    await waitFor(() => commands.length === 1, 'check command');
    t.same(metaEvents, ['timestamp.json:true:{"signed":1}', '3.targets.json:false:{"t":2}', '3.targets.json:false:-']);
    t.notOk([...metadata.keys()].some((k) => k.includes('/') || k.includes('..')), 'unsafe names never enter the map');

    t.equal(await tr.publishState({ phase: 'idle', n: 1 }), true);
    const late = await observe(broker.url, topics.state);
    t.teardown(() => late.client.endAsync());
    await waitFor(() => late.seen.find((s) => s.retain && s.payload === '{"phase":"idle","n":1}'), 'retained state for a late subscriber');

    await tr.stop();
    await waitFor(() => obs.seen.find((s) => s.topic === topics.online && s.payload === 'offline'), 'offline on clean stop');
  });
}

t.test('last will: an abrupt disconnect leaves a retained "offline"', async (t) => {
  const id = 'dev-lwt';
  const topics = deviceTopics(id);
  let captured: MqttClient | undefined;
  const factory: ClientFactory = (url, o) => (captured = mqttConnect(url, o));
  const tr = new MqttTransport({ config: config([broker.url], { reconnect: { minMs: 60_000, maxMs: 60_000 }, keepaliveSeconds: 5 }), deviceId: id, outbox: new Outbox({ store: new MemoryOutboxStore() }), connect: factory });
  tr.start();
  t.teardown(() => tr.stop());
  await waitFor(() => tr.connected, 'connected');
  const obs = await observe(broker.url, topics.online);
  t.teardown(() => obs.client.endAsync());
  await waitFor(() => obs.seen.find((s) => s.payload === 'online'), 'online');
  const t0 = Date.now();
  captured!.stream.destroy(); // TCP gone without DISCONNECT, as on power loss or a kill
  await waitFor(() => obs.seen.find((s) => s.payload === 'offline'), 'last will', 5000);
  t.ok(Date.now() - t0 < 2000, 'the broker publishes the will at once on a closed socket');
  const late = await observe(broker.url, topics.online);
  t.teardown(() => late.client.endAsync());
  await waitFor(() => late.seen.find((s) => s.retain && s.payload === 'offline'), 'will is retained');
});

t.test('outbox: in order, at least once, across a broker restart', async (t) => {
  const id = 'dev-outbox';
  const topics = deviceTopics(id);
  // a persistent observer session: the broker queues events for it while it is away
  const obs = await observe(broker.url, topics.events, { clean: false, clientId: 'fleet-observer' });
  t.teardown(() => obs.client.endAsync(true));
  const outbox = new Outbox(t.testdir());
  const tr = new MqttTransport({ config: config([broker.url]), deviceId: id, outbox });
  const delays: number[] = [];
  tr.on('reconnectScheduled', (r) => delays.push(r.delayMs));
  tr.start();
  t.teardown(() => tr.stop());
  await waitFor(() => tr.connected, 'connected');
  for (let i = 0; i < 20; i++) await outbox.append({ type: 'Progress', i });
  // restart at once: some of these are still in flight
  const restarted = broker.restart({ downMs: 500 });
  for (let i = 20; i < 30; i++) await outbox.append({ type: 'Progress', i }); // some land while the broker is down
  await restarted;
  for (let i = 30; i < 40; i++) await outbox.append({ type: 'Progress', i });
  await waitFor(() => new Set(obs.seen.map((s) => JSON.parse(s.payload).seq)).size >= 40, 'all 40 events after the restart', 15_000);
  await waitFor(() => tr.connected, 'transport reconnected');
  const seqs = obs.seen.map((s) => JSON.parse(s.payload) as { seq: number; i: number; deviceId: string; type: string });
  const firstSeen = seqs.map((s) => s.seq).filter((s, k, a) => a.indexOf(s) === k);
  t.same(firstSeen, Array.from({ length: 40 }, (_, k) => k + 1), 'every seq arrives, first occurrences in order');
  t.ok(seqs.every((s) => s.i === s.seq - 1 && s.deviceId === id && s.type === 'Progress'), 'payloads match their seq');
  const acked = await (async () => { for (let n = 0; n < 200; n++) { if ((await outbox.pending()).length === 0) return true; await new Promise((r) => setTimeout(r, 20)); } return false; })();
  t.ok(acked, 'everything acked eventually');
  t.comment(`observed ${seqs.length} messages for 40 events`);
  t.ok(delays.length >= 1, 'reconnects were scheduled');
  t.ok(delays.every((d) => d >= 25 && d <= 400), `backoff within [min/2, max]: ${delays.join(',')}`);
});

t.test('reconnect backoff grows exponentially with jitter against a dead port', async (t) => {
  const port = await freePort();
  const delays: number[] = [];
  const rnd = [0, 1, 0.5, 0.25, 0.75, 0, 1];
  let k = 0;
  const tr = new MqttTransport({ config: config([`mqtt://127.0.0.1:${port}`], { reconnect: { minMs: 20, maxMs: 160 } }), deviceId: 'dev-backoff', outbox: new Outbox({ store: new MemoryOutboxStore() }), random: () => rnd[k++ % rnd.length]! });
  tr.on('reconnectScheduled', (r) => delays.push(r.delayMs));
  tr.start();
  t.teardown(() => tr.stop());
  await waitFor(() => delays.length >= 7, '7 reconnect attempts');
  await tr.stop();
  // base = min(160, 20·2ⁿ) → 20, 40, 80, 160, 160…; delay = base/2 + rnd·base/2
  t.same(delays.slice(0, 7), [10, 40, 60, 100, 140, 80, 160]);
});

t.test('bounded packets: oversize event becomes a truthful stub, oversize metadata is ignored', async (t) => {
  const id = 'dev-big';
  const topics = deviceTopics(id);
  const obs = await observe(broker.url, topics.events);
  t.teardown(() => obs.client.endAsync());
  const outbox = new Outbox({ store: new MemoryOutboxStore() });
  const metadata = new Map<string, Uint8Array>();
  const tr = new MqttTransport({ config: config([broker.url], { maxPacketSize: 4096 }), deviceId: id, outbox, metadata, maxMetadataBytes: 2048 });
  const problems: string[] = [];
  tr.on('problem', (p) => problems.push(p.code));
  tr.start();
  t.teardown(() => tr.stop());
  await waitFor(() => tr.connected, 'connected');
  await outbox.append({ type: 'Huge', blob: 'x'.repeat(10_000) });
  await outbox.append({ type: 'Small' });
  await waitFor(() => obs.seen.length >= 2, 'two events');
  t.match(JSON.parse(obs.seen[0]!.payload), { type: 'Huge', seq: 1, truncated: true });
  t.ok(JSON.parse(obs.seen[0]!.payload).originalBytes > 10_000);
  t.match(JSON.parse(obs.seen[1]!.payload), { type: 'Small', seq: 2 });
  const admin = await connectAsync(broker.url);
  t.teardown(() => admin.endAsync());
  await admin.publishAsync(metaTopic('2.big.json'), JSON.stringify({ y: 'y'.repeat(3000) }), { qos: 1 });
  await admin.publishAsync(metaTopic('1.ok.json'), '{"z":1}', { qos: 1 });
  await waitFor(() => metadata.get('1.ok.json'), 'small metadata');
  t.notOk(metadata.has('2.big.json'));
  t.ok(problems.includes('DAEMON_MQTT_OVERSIZE'));
});

t.test('daemon restart: events queued while the broker was unreachable are delivered by the next process', async (t) => {
  const id = 'dev-reboot';
  const dir = t.testdir();
  const obs = await observe(broker.url, deviceTopics(id).events);
  t.teardown(() => obs.client.endAsync());
  const dead = await freePort();
  const first = new Outbox(dir);
  const tr1 = new MqttTransport({ config: config([`mqtt://127.0.0.1:${dead}`]), deviceId: id, outbox: first });
  tr1.start();
  for (const type of ['UpdateStarted', 'UpdateInstalled']) await first.append({ type });
  await tr1.stop(); // "reboot" with the broker still unreachable
  const second = new Outbox(dir); // a new process reads the same directory
  const tr2 = new MqttTransport({ config: config([broker.url]), deviceId: id, outbox: second });
  tr2.start();
  t.teardown(() => tr2.stop());
  t.equal(await second.append({ type: 'UpdateCommitted' }), 3, 'seq continues across the restart');
  await waitFor(() => obs.seen.length >= 3, 'three events');
  t.same(obs.seen.map((s) => [JSON.parse(s.payload).seq, JSON.parse(s.payload).type]), [[1, 'UpdateStarted'], [2, 'UpdateInstalled'], [3, 'UpdateCommitted']]);
  // the device's ack of the last event is a durable write in `dir`: let it land and stop the transport
  // before the test ends and its directory is removed (on a loaded machine the write came after: ENOENT)
  for (const until = Date.now() + 20_000; (await second.stats()).pending > 0;) {
    if (Date.now() > until) throw new Error('timed out waiting for the outbox to record the deliveries');
    await new Promise((r) => setTimeout(r, 10));
  }
  await tr2.stop();
});

t.test('last will: a daemon process killed with SIGKILL goes "offline"', async (t) => {
  const id = 'dev-killed';
  const topics = deviceTopics(id);
  const obs = await observe(broker.url, topics.online);
  t.teardown(() => obs.client.endAsync());
  const here = fileURLToPath(new URL('.', import.meta.url));
  const root = resolve(here, '../..');
  const dir = t.testdir();
  const child = join(dir, 'child.ts');
  await writeFile(child, [
    `import { MqttTransport, brokerConfigDefaults } from ${JSON.stringify(pathToFileURL(join(root, 'daemon/mqtt.ts')).href)};`,
    `import { Outbox } from ${JSON.stringify(pathToFileURL(join(root, 'daemon/outbox.ts')).href)};`,
    `const tr = new MqttTransport({ config: { ...brokerConfigDefaults, urls: [${JSON.stringify(broker.url)}] } as any, deviceId: ${JSON.stringify(id)}, outbox: new Outbox(${JSON.stringify(dir)}) });`,
    `tr.on('connected', () => process.stdout.write('connected\\n'));`,
    `tr.start();`,
    `setInterval(() => undefined, 1000);`,
  ].join('\n'));
  const proc = spawn(process.execPath, ['--import', pathToFileURL(join(root, 'node_modules/@tapjs/typescript/dist/esm/import.mjs')).href, child], { stdio: ['ignore', 'pipe', 'inherit'], cwd: root });
  t.teardown(() => { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL'); });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  await waitFor(() => out.includes('connected'), 'child connected', 30_000);
  await waitFor(() => obs.seen.find((s) => s.payload === 'online'), 'online');
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGKILL');
  await exited;
  await waitFor(() => obs.seen.find((s) => s.payload === 'offline'), 'will after SIGKILL', 5000);
  t.same(obs.seen.map((s) => s.payload), ['online', 'offline']);
});

t.test('flapping: two devices sharing a client id kick each other out, and back off instead of hammering', async (t) => {
  const mk = (): { tr: MqttTransport; delays: number[] } => {
    const delays: number[] = [];
    const tr = new MqttTransport({ config: config([broker.url], { clientId: 'dup-id', reconnect: { minMs: 20, maxMs: 320 } }), deviceId: 'dev-dup', outbox: new Outbox({ store: new MemoryOutboxStore() }) });
    tr.on('reconnectScheduled', (r) => delays.push(r.delayMs));
    tr.start();
    t.teardown(() => tr.stop());
    return { tr, delays };
  };
  const a = mk();
  const b = mk();
  await waitFor(() => a.delays.length + b.delays.length >= 10, 'ten reconnects between them', 15_000);
  await a.tr.stop();
  await b.tr.stop();
  const longest = Math.max(...a.delays, ...b.delays);
  t.ok(longest >= 160, `delays grew towards the cap despite each connect succeeding: ${a.delays.join(',')} | ${b.delays.join(',')}`);
});

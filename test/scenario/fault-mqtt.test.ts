/**
 * Broker faults during a full update (real Mosquitto, the real MqttTransport delivering the persisted
 * outbox, an emulated board): the broker goes down (and comes back) right after each phase's report,
 * and once with its persistence wiped (the device's and the fleet's sessions lost). The update itself
 * never depends on the broker; the fleet (a persistent observer session) eventually receives every
 * event, in order of seq, duplicates allowed (at-least-once) and identical when repeated; no event
 * is invented.
 */
import t from 'tap';
import { connectAsync, type MqttClient } from 'mqtt';
import { join } from 'node:path';
import { createBoard, powerCycle } from '../../hal/board.js';
import { createAgent } from '../../daemon/compose.js';
import { runUpdateCycle, type EventSink } from '../../daemon/agent.js';
import { Outbox } from '../../daemon/outbox.js';
import { MqttTransport, brokerConfigDefaults, type BrokerConfig } from '../../daemon/mqtt.js';
import { deviceTopics } from '../../daemon/topics.js';
import { startMosquitto } from '../harness/mosquitto.js';
import { boardHealth } from '../powercut/driver.js';
import { buildFixtures, SLOT_SIZE, writeConfig } from '../powercut/harness.js';

async function waitFor(fn: () => boolean | Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

t.test('broker faults during an update', async (t) => {
  const fx = await buildFixtures(join(t.testdir(), 'fx'));
  t.teardown(() => fx.stop());
  const cases: Array<{ name: string; at: string; wipe?: boolean }> = [
    { name: 'broker drop right after UpdateStarted (prepare/download)', at: 'UpdateStarted' },
    { name: 'broker drop right after UpdateInstalled (arm)', at: 'UpdateInstalled' },
    { name: 'broker drop right after RebootStarted (reboot, first boot, health check)', at: 'RebootStarted' },
    { name: 'broker drop right after UpdateCommitted (commit)', at: 'UpdateCommitted' },
    { name: 'session loss: broker restarted without its persistence, mid-update', at: 'UpdateInstalled', wipe: true },
  ];
  for (const c of cases) {
    t.test(c.name, async (t) => {
      const broker = await startMosquitto({ persistence: !c.wipe });
      t.teardown(() => broker.stop());
      const dir = t.testdir();
      const boardDir = join(dir, 'board');
      const board = await createBoard(boardDir, { backend: 'emulated', slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
      const id = `mq-${c.at}`;
      const config = await writeConfig(join(dir, 'config.json'), { deviceId: id, stateDir: join(dir, 'state'), root: fx.roots.good, url: `${fx.server.url}good/stage1/`, board, tries: 2 });
      const topics = deviceTopics(id);
      const seen: Array<{ seq: number; type: string; raw: string }> = [];
      const obs: MqttClient = await connectAsync(broker.url, { clean: false, clientId: `fleet-${id}`, reconnectPeriod: 100 });
      t.teardown(() => obs.endAsync(true));
      obs.on('message', (_topic, payload) => { const e = JSON.parse(payload.toString()) as { seq: number; type: string }; seen.push({ seq: e.seq, type: e.type, raw: payload.toString() }); });
      await obs.subscribeAsync(topics.events, { qos: 1 });
      const outbox = new Outbox({ dir: join(config.stateDir, 'outbox') });
      const bcfg = { ...brokerConfigDefaults, urls: [broker.url], reconnect: { minMs: 50, maxMs: 300 } } as BrokerConfig;
      const tr = new MqttTransport({ config: bcfg, deviceId: id, outbox });
      tr.start();
      t.teardown(() => tr.stop());
      await waitFor(() => tr.connected, 'device connected');
      let restart: Promise<void> | undefined;
      const sink: EventSink = {
        async append(event) {
          const seq = await outbox.append(event);
          if (event.type === c.at && !restart) restart = broker.restart({ downMs: 400 });
          return seq;
        },
      };
      const r = await runUpdateCycle(() => createAgent(config, { outbox: sink, reboot: async () => { await powerCycle(boardDir); }, health: boardHealth(boardDir) }));
      t.match(r.finished, [{ outcome: 'succeeded', release: { version: '1.1.0' } }], 'the update does not depend on the broker');
      t.ok(restart, 'the broker went down during the update');
      await restart;
      const all = await outbox.entries();
      if (c.wipe) {
        // the fleet's queued messages died with the broker's state: what must survive is the device
        // side — every event stays in the outbox until a PUBACK, and is delivered after the restart
        await waitFor(async () => (await outbox.pending()).length === 0, 'outbox drained after the session loss');
        t.pass('every event acknowledged by the new broker session');
      } else {
        await waitFor(() => new Set(seen.map((s) => s.seq)).size >= all.length, `observer got all ${all.length} events`);
      }
      const bySeq = new Map<number, string>();
      for (const s of seen) {
        const prev = bySeq.get(s.seq);
        if (prev !== undefined) t.equal(s.raw, prev, `redelivery of seq ${s.seq} is identical`);
        bySeq.set(s.seq, s.raw);
      }
      const known = new Map(all.map((e) => [e.seq, e.event.type]));
      for (const s of seen) t.equal(s.type, known.get(s.seq), `seq ${s.seq} is the event the device recorded`);
      if (!c.wipe) {
        const firsts = seen.map((s) => s.seq).filter((s, i, a) => a.indexOf(s) === i);
        t.same([...firsts].sort((a, b) => a - b), all.map((e) => e.seq), 'every seq delivered');
        t.same([...new Set(seen.map((s) => s.type))].filter((x) => x !== 'x'), ['UpdateStarted', 'UpdateInstalled', 'RebootStarted', 'UpdateCommitted'].filter((x) => seen.some((s) => s.type === x)), 'event types as the update produced them');
        t.same(all.map((e) => e.event.type), ['UpdateStarted', 'UpdateInstalled', 'RebootStarted', 'UpdateCommitted']);
      }
      t.comment(`${c.name}: ${seen.length} deliveries for ${all.length} events`);
    });
  }
});

/**
 * The body of the single-node broker lane (issue 26), shared by
 * test/integration/daemon-mqtt-brokers-rabbitmq.test.ts and -ejabberd.test.ts (one broker per
 * file, so each file stays well inside tap's per-file timeout):
 *
 * - the daemon connects with MQTT 5 and falls back to 3.1.1 where the broker refuses 5, saying so
 *   at warn, and remembers it in the state directory;
 * - retained metadata arrives through v2 topics (no dots) intact;
 * - push → install → reboot → commit on an emulated board;
 * - a release that reaches only the HTTP repository (nothing retained on the broker) is installed
 *   after a `fleet check` nudge, and by a late joiner.
 */
import type { Test } from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { powerCycle } from '../../hal/board.js';
import { hasEjabberd, hasRabbitMQ, startEjabberd, startRabbitMQ, type ErlangBroker, type ErlangBrokerKind } from './erlang-brokers.js';
import { cli, makeDevice, makeRepo, observe, startBuiltDaemon } from './broker-lane.js';

/** false when the broker is installed, else why the test is skipped. */
export async function brokerSkip(kind: ErlangBrokerKind): Promise<false | string> {
  const ok = kind === 'rabbitmq' ? hasRabbitMQ() : await hasEjabberd();
  return ok ? false : `${kind} is not installed (apt-get install rabbitmq-server ejabberd)`;
}

export async function singleNodeLane(t: Test, kind: ErlangBrokerKind): Promise<void> {
  const k = { kind, start: () => (kind === 'rabbitmq' ? startRabbitMQ() : startEjabberd()) };
  const broker: ErlangBroker = await k.start();
  t.teardown(() => broker.stop());
  const dir = t.testdir();
  const auth = broker.password !== undefined ? { username: 'fleet', password: broker.password } : {};
  const pubArgs = broker.password !== undefined ? ['--username', 'fleet-pub'] : [];
  const pubEnv = broker.password !== undefined ? { SLOTFLIP_BROKER_PASSWORD: broker.password } : {};
  const repo = await makeRepo(dir);
  t.teardown(() => repo.stop());

  const obs = await observe(broker.url, ['slotflip/v2/meta/timestamp', 'slotflip/v2/devices/+/events'], auth);
  t.teardown(() => obs.close());

  // the device starts with nothing to install
  const dev = await makeDevice(dir, 'dev-1', repo, broker.url, broker.password !== undefined ? { password: broker.password } : {});
  const d1 = startBuiltDaemon(dev.configPath);
  t.teardown(() => d1.kill());
  const connected = await d1.waitFor((l) => l['msg'] === 'broker connected', 60_000, 'broker connected');
  if (k.kind === 'rabbitmq') {
    const warn = d1.lines.find((l) => typeof l['msg'] === 'string' && (l['msg'] as string).includes('refused MQTT 5'));
    t.ok(warn, 'a warn line names the protocol and the broker\'s answer');
    t.match(warn, { level: 40, protocol: 'MQTT 5', answer: /CONNACK/, fallback: 'MQTT 3.1.1' });
    t.equal(connected['protocolVersion'], 4, 'connected with MQTT 3.1.1');
    const remembered = join(dev.stateDir, 'mqtt-protocol.json');
    for (let i = 0; i < 50 && !existsSync(remembered); i++) await new Promise((r) => setTimeout(r, 100));
    t.same(JSON.parse(await readFile(remembered, 'utf8')), { [broker.url]: 4 }, 'remembered in the state dir');
  } else {
    t.equal(connected['protocolVersion'], 5, 'ejabberd speaks MQTT 5');
  }
  await d1.waitFor((l) => l['msg'] === 'cycle done', 60_000, 'first cycle');

  // push: publish a release; the retained v2 timestamp reaches the observer and the device
  await repo.add('1.1.0');
  const pub = await cli(['repo', 'publish', repo.dir, '--broker', broker.url, ...pubArgs], pubEnv);
  t.equal(pub.code, 0, pub.stderr);
  t.match(pub.stdout, k.kind === 'rabbitmq' ? /MQTT 3\.1\.1/ : /MQTT 5/);
  await obs.waitEvent('dev-1', 'RebootStarted', 90_000);
  t.same(obs.events.get('dev-1'), ['UpdateStarted', 'UpdateInstalled', 'RebootStarted'], 'pushed release installed');
  const ts = obs.last.get('slotflip/v2/meta/timestamp');
  t.ok(ts, 'the retained timestamp arrived on its v2 topic');
  t.match(JSON.parse(ts!.payload.toString()), { signed: { _type: 'timestamp' } }, 'intact');
  const late = await observe(broker.url, ['slotflip/v2/meta/timestamp'], auth);
  await new Promise((r) => setTimeout(r, 1000));
  t.equal(late.last.get('slotflip/v2/meta/timestamp')?.retain, true, 'retained: a later exact subscription gets it');
  await late.close();

  // reboot into the new slot; the daemon commits
  await d1.kill();
  await powerCycle(dev.boardDir);
  const d1b = startBuiltDaemon(dev.configPath);
  t.teardown(() => d1b.kill());
  await obs.waitEvent('dev-1', 'UpdateCommitted', 90_000);

  // a release that reaches only the HTTP repository: nothing retained changes on the broker
  await repo.add('1.2.0');
  const pwArgs: string[] = [];
  if (broker.password !== undefined) {
    const pw = join(dir, 'password');
    await writeFile(pw, broker.password);
    pwArgs.push('--username', 'fleet-chk', '--password-file', pw);
  }
  const check = await cli(['fleet', 'check', '--broker', broker.url, '--device', 'dev-1', ...pwArgs]);
  t.equal(check.code, 0, check.stderr);
  const until = Date.now() + 90_000;
  while ((obs.events.get('dev-1') ?? []).filter((e) => e === 'RebootStarted').length < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 200));
  t.equal((obs.events.get('dev-1') ?? []).filter((e) => e === 'RebootStarted').length, 2, 'cmd/check: installed 1.2.0 from the HTTP repository');
  await d1b.kill();

  // a late joiner: the broker's retained timestamp is older than the repository's
  const dev2 = await makeDevice(dir, 'dev-2', repo, broker.url, broker.password !== undefined ? { password: broker.password } : {});
  const d2 = startBuiltDaemon(dev2.configPath);
  t.teardown(() => d2.kill());
  await obs.waitEvent('dev-2', 'RebootStarted', 90_000);
  await d2.kill();
}

/**
 * `npm run test:brokers`: two-node clusters of Debian's RabbitMQ 3.10 and ejabberd 23.01, both of
 * which keep retained messages on the node that received them (issue 26). Driven from outside with
 * the built CLI:
 *
 * - `repo publish` to node A; a device whose daemon connects to node B (which never sees the
 *   retained release) still installs it: at start it reads timestamp.json from the HTTP repository;
 * - a later release published to node A reaches the connected device on B as a live message (push),
 *   and it installs;
 * - `fleet watch` on node A sees the device's events, not its retained state (kept on B), and says
 *   so ("seen without retained state") instead of showing the device as missing; `fleet check`
 *   through node A makes the device on B publish its state, which the watcher then sees live.
 */
import t from 'tap';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { hasEjabberd, hasRabbitMQ, startEjabberd, startRabbitMQ, type ErlangBroker } from '../harness/erlang-brokers.js';
import { cli, makeDevice, makeRepo, observe, startBuiltDaemon } from '../harness/broker-lane.js';

const kinds = [
  { kind: 'rabbitmq' as const, available: async () => hasRabbitMQ(), start: () => startRabbitMQ({ nodes: 2 }) },
  { kind: 'ejabberd' as const, available: hasEjabberd, start: () => startEjabberd({ nodes: 2 }) },
];

for (const k of kinds) {
  const skip = (await k.available()) ? false : `${k.kind} is not installed`;
  t.test(`${k.kind} 2-node cluster: retained messages stay on their node; devices still install`, { skip }, async (t) => {
    const broker: ErlangBroker = await k.start();
    t.teardown(() => broker.stop());
    const [nodeA, nodeB] = broker.urls as [string, string];
    const dir = t.testdir();
    const pw = broker.password;
    const auth = pw !== undefined ? { username: 'obs', password: pw } : {};
    const pubArgs = pw !== undefined ? ['--username', 'fleet-pub'] : [];
    const pubEnv = pw !== undefined ? { SLOTFLIP_BROKER_PASSWORD: pw } : {};
    const pwFile = join(dir, 'password');
    await writeFile(pwFile, pw ?? '');
    const fleetAuth = pw !== undefined ? ['--username', 'fleet-watch', '--password-file', pwFile] : [];

    const repo = await makeRepo(dir);
    t.teardown(() => repo.stop());
    await repo.add('1.1.0');
    const pub = await cli(['repo', 'publish', repo.dir, '--broker', nodeA, ...pubArgs], pubEnv);
    t.equal(pub.code, 0, pub.stderr);

    // node B never saw the retained timestamp
    const onB = await observe(nodeB, ['slotflip/v2/meta/timestamp', 'slotflip/v2/devices/+/events'], auth);
    t.teardown(() => onB.close());
    await new Promise((r) => setTimeout(r, 1500));
    t.notOk(onB.last.get('slotflip/v2/meta/timestamp')?.retain, 'node B has no retained timestamp (node-local retained store)');

    // a device on node B installs anyway (HTTP repository at start)
    const dev = await makeDevice(dir, 'dev-b', repo, nodeB, pw !== undefined ? { password: pw } : {});
    const d = startBuiltDaemon(dev.configPath);
    t.teardown(() => d.kill());
    await onB.waitEvent('dev-b', 'RebootStarted', 120_000);
    t.pass('device on node B installed the release published to node A');
    await d.waitFor((l) => l['msg'] === 'cycle done', 60_000, 'cycle done');

    // fleet watch on node A: events arrive (routed across the cluster), the retained state does not
    const watchOut = cli(['fleet', 'watch', '--broker', nodeA, '--json', '--interval', '2', '--for', '25', ...fleetAuth], {}, 120_000);
    await new Promise((r) => setTimeout(r, 3000));
    // a second release, published to node A while the device is connected to B: pushed live
    await repo.add('1.2.0');
    const pub2 = await cli(['repo', 'publish', repo.dir, '--broker', nodeA, ...pubArgs], pubEnv);
    t.equal(pub2.code, 0, pub2.stderr);
    const until = Date.now() + 120_000;
    while ((onB.events.get('dev-b') ?? []).filter((e) => e === 'RebootStarted').length < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 200));
    t.equal((onB.events.get('dev-b') ?? []).filter((e) => e === 'RebootStarted').length, 2, 'the second release, published on A, installed on B');
    const w = await watchOut;
    t.equal(w.code, 0, w.stderr);
    const summaries = w.stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string; withoutState?: string[]; phases?: Record<string, number> }).filter((s) => s.type === 'summary');
    t.ok(summaries.some((s) => s.withoutState?.includes('dev-b')), 'fleet watch: dev-b seen without retained state, not missing');

    // fleet check through node A: the device publishes its state again, live to a watcher on A
    const watch2 = cli(['fleet', 'watch', '--broker', nodeA, '--json', '--interval', '2', '--for', '15', ...fleetAuth], {}, 120_000);
    await new Promise((r) => setTimeout(r, 3000));
    const chk = await cli(['fleet', 'check', '--broker', nodeA, '--device', 'dev-b', ...fleetAuth]);
    t.equal(chk.code, 0, chk.stderr);
    const w2 = await watch2;
    const last = w2.stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string; withoutState?: string[]; devices?: number }).filter((s) => s.type === 'summary').at(-1);
    t.ok(last && !(last.withoutState ?? []).includes('dev-b'), 'after fleet check the watcher on A has the state of dev-b');
    await d.kill();
  });
}

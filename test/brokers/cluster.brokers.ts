/**
 * `npm run test:brokers`: two-node clusters of Debian's RabbitMQ 3.10 and ejabberd 23.01, both of
 * which keep retained messages on the node that received them (issue 26). Driven from outside with
 * the built CLI:
 *
 * - `repo publish` to node A; a device whose daemon connects to node B (which never sees the
 *   retained release) still installs it: at start it reads timestamp.json from the HTTP repository;
 * - `fleet watch` on node A sees the device's online flag and events, not its retained state (kept
 *   on B), and says so ("seen without retained state") instead of showing it as a straggler;
 * - a later release published to node A reaches the connected device on B as a live message (push),
 *   and it installs;
 * - a watcher started later on A sees nothing of the device until `fleet check` through A makes it
 *   publish its state again.
 */
import t from 'tap';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { powerCycle } from '../../hal/board.js';
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

    // a device on node B installs anyway (HTTP repository at start), then reboots and commits
    const dev = await makeDevice(dir, 'dev-b', repo, nodeB, pw !== undefined ? { password: pw } : {});
    const d = startBuiltDaemon(dev.configPath);
    t.teardown(() => d.kill());
    await onB.waitEvent('dev-b', 'RebootStarted', 120_000);
    t.pass('device on node B installed the release published to node A');
    await d.kill();
    await powerCycle(dev.boardDir);

    // fleet watch on node A from before the device comes back: its online flag and events arrive
    // (routed across the cluster), its retained state never does (kept on B); the live state at the
    // end of the cycle does
    const watch1 = cli(['fleet', 'watch', '--broker', nodeA, '--json', '--interval', '0.5', '--for', '40', ...fleetAuth], {}, 120_000);
    await new Promise((r) => setTimeout(r, 3000));
    const d2 = startBuiltDaemon(dev.configPath);
    t.teardown(() => d2.kill());
    await onB.waitEvent('dev-b', 'UpdateCommitted', 120_000);
    await d2.waitFor((l) => l['msg'] === 'cycle done', 60_000, 'cycle done');

    // a second release, published to node A while the device is connected to B: pushed live
    await repo.add('1.2.0');
    const pub2 = await cli(['repo', 'publish', repo.dir, '--broker', nodeA, ...pubArgs], pubEnv);
    t.equal(pub2.code, 0, pub2.stderr);
    const until = Date.now() + 120_000;
    while ((onB.events.get('dev-b') ?? []).filter((e) => e === 'RebootStarted').length < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 200));
    t.equal((onB.events.get('dev-b') ?? []).filter((e) => e === 'RebootStarted').length, 2, 'the second release, published on A, reached the device on B (live) and installed');
    const w = await watch1;
    t.equal(w.code, 0, w.stderr);
    type Summary = { type: string; withoutState?: string[]; phases?: Record<string, number>; devices?: number; stragglers?: { deviceId: string }[] };
    const summaries = w.stdout.trim().split('\n').map((l) => JSON.parse(l) as Summary).filter((s) => s.type === 'summary');
    t.ok(summaries.some((s) => s.withoutState?.includes('dev-b')), 'fleet watch on A: dev-b seen without retained state while its events arrived');
    t.notOk(summaries.some((s) => s.stragglers?.some((g) => g.deviceId === 'dev-b')), 'never shown as a straggler');
    t.notOk(summaries.at(-1)?.withoutState?.includes('dev-b'), 'its live state arrived later');

    // the device asked for its trial reboot (the board's reboot command returns and the daemon waits
    // to go down, running no cycle): power-cycle it into 1.2.0, which it validates and commits
    await d2.kill();
    await powerCycle(dev.boardDir);
    const d3 = startBuiltDaemon(dev.configPath);
    t.teardown(() => d3.kill());
    await d3.waitFor((l) => l['msg'] === 'cycle done', 60_000, 'cycle done');

    // a watcher started now on A sees nothing of dev-b (retained on B only) until `fleet check`
    // through A makes the device publish its state again
    const watch2 = cli(['fleet', 'watch', '--broker', nodeA, '--json', '--interval', '1', '--for', '20', ...fleetAuth], {}, 120_000);
    await new Promise((r) => setTimeout(r, 3000));
    const chk = await cli(['fleet', 'check', '--broker', nodeA, '--device', 'dev-b', ...fleetAuth]);
    t.equal(chk.code, 0, chk.stderr);
    const w2 = await watch2;
    const s2 = w2.stdout.trim().split('\n').map((l) => JSON.parse(l) as Summary).filter((s) => s.type === 'summary');
    t.equal(s2[0]?.devices, 0, 'before the nudge: nothing retained on node A');
    t.ok((s2.at(-1)?.devices ?? 0) >= 1 && !s2.at(-1)?.withoutState?.includes('dev-b'), 'after fleet check the watcher on A has the state of dev-b');
    await d3.kill();
  });
}

// `slotflip fleet rollout` and `fleet watch` through their command layer, against a real Mosquitto
// and a real repository: re-signing, republishing retained metadata, the watch output, and an
// automatic halt driven by device events published on the broker.
import t from 'tap';
import { Writable } from 'node:stream';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connectAsync } from 'mqtt';
import { pino } from 'pino';
import { startMosquitto } from '../harness/mosquitto.js';
import { addRelease, initRepo } from '../../manifests/repo.js';
import { makeTestImage } from '../../hal/board.js';
import { runFleet } from '../../daemon/commands/fleet.js';
import { readRollout } from '../../daemon/fleet/rollout.js';
import type { CommandIO } from '../../daemon/commands/command.js';

function capture(): { io: CommandIO; out: () => string; err: () => string } {
  let out = '';
  let err = '';
  const sink = (f: (s: string) => void): Writable => new Writable({ write(chunk, _enc, cb) { f(String(chunk)); cb(); } });
  return { io: { stdout: sink((s) => { out += s; }), stderr: sink((s) => { err += s; }), env: {} }, out: () => out, err: () => err };
}

const broker = await startMosquitto();
t.teardown(() => broker.stop());
const T = 'releases/2.0.0/image.img.gz';

async function makeRepo(dir: string): Promise<void> {
  await initRepo(dir, { rootKeys: 1, rootThreshold: 1 });
  const image = join(dir, '..', 'image.img');
  await writeFile(image, makeTestImage({ version: '2.0.0', size: 16 * 1024 }));
  await addRelease(dir, { image, name: T, version: '2.0.0', securityVersion: 1, hardware: ['sim-board'], channel: 'stable', compression: 'gzip', chunkSize: 8192 });
}

async function retainedTargets(): Promise<{ name: string; rollout: unknown }> {
  const c = await connectAsync(broker.url);
  const seen = new Map<string, string>();
  c.on('message', (topic, payload) => seen.set(topic, payload.toString()));
  await c.subscribeAsync('slotflip/v1/meta/+', { qos: 1 });
  await new Promise((r) => setTimeout(r, 300));
  await c.endAsync();
  const names = [...seen.entries()].filter(([k, v]) => /\d+\.targets\.json$/.test(k) && v.length > 0);
  if (names.length !== 1) throw new Error(`expected one retained targets file, got ${names.map((n) => n[0]).join(', ')}`);
  const [name, text] = names[0]!;
  const doc = JSON.parse(text) as { signed: { targets: Record<string, { custom: { rollout?: unknown } }> } };
  return { name, rollout: doc.signed.targets[T]?.custom.rollout };
}

t.test('fleet rollout: percent and waves, signed and republished; halt, resume, show', async (t) => {
  const repo = join(t.testdir(), 'repo');
  await makeRepo(repo);
  const now = (): number => Date.parse('2026-11-27T12:00:00Z');

  const c = capture();
  t.equal(await runFleet(['rollout', repo, '--release', T, '--percent', '10', '--wave', '+1h=50', '--wave', '2026-11-28T00:00:00Z=100', '--broker', broker.url, '--json'], c.io, { now }), 0);
  const r = JSON.parse(c.out()) as { targetsVersion: number; rollout: unknown; published: number };
  const expected = { percent: 10, waves: [{ at: '2026-11-27T13:00:00Z', percent: 50 }, { at: '2026-11-28T00:00:00Z', percent: 100 }] };
  t.same(r.rollout, expected);
  t.ok(r.published >= 4, 'root, targets, snapshot, timestamp published');
  t.same(await readRollout(repo, T), expected, 'signed in the repository');
  const retained = await retainedTargets();
  t.equal(retained.name, `slotflip/v1/meta/${r.targetsVersion}.targets.json`, 'only the newest targets stays retained');
  t.same(retained.rollout, expected, 'the broker carries the new rollout');

  const h = capture();
  t.equal(await runFleet(['rollout', repo, '--release', T, '--halt'], h.io, { now }), 0);
  t.match(h.out(), /HALTED, 10% now, 50% from 2026-11-27T13:00:00Z/);
  t.same(await readRollout(repo, T), { ...expected, halted: true });
  const res = capture();
  t.equal(await runFleet(['rollout', repo, '--release', T, '--resume'], res.io, { now }), 0);
  t.same(await readRollout(repo, T), expected, 'resume keeps the percentages');
  const show = capture();
  t.equal(await runFleet(['rollout', repo, '--release', T, '--show', '--json'], show.io, { now }), 0);
  t.same(JSON.parse(show.out()), { targetName: T, rollout: expected });

  await t.rejects(runFleet(['rollout', repo, '--percent', '5'], capture().io), { code: 'DAEMON_USAGE' }, '--release is required');
  await t.rejects(runFleet(['rollout', repo, '--release', T, '--percent', '5', '--halt'], capture().io), { code: 'DAEMON_USAGE' }, 'one mode only');
  await t.rejects(runFleet(['rollout', repo, '--release', 'releases/nope', '--percent', '5'], capture().io), { code: 'MANIFEST_TARGET_NOT_FOUND' });
  await t.rejects(runFleet(['rollout', repo, '--release', T, '--percent', '101'], capture().io), { code: 'DAEMON_USAGE' });
  await t.rejects(runFleet(['bogus'], capture().io), { code: 'DAEMON_USAGE' });
});

t.test('fleet watch: JSON lines, and an automatic halt from device events', async (t) => {
  const repo = join(t.testdir(), 'repo');
  await makeRepo(repo);
  await runFleet(['rollout', repo, '--release', T, '--percent', '20', '--broker', broker.url], capture().io);

  // three devices: one retained state from before the watcher started, then live events
  const dev = await connectAsync(broker.url);
  t.teardown(() => dev.endAsync());
  const rid = `${T}@00112233aabbccdd`;
  await dev.publishAsync('slotflip/v2/devices/w1/state', JSON.stringify({ phase: 'idle', version: '1.0.0' }), { qos: 1, retain: true });

  const c = capture();
  const watching = runFleet(['watch', '--broker', broker.url, '--release', T, '--json', '--interval', '0.2', '--halt-on-failure-rate', '0.5', '--min-devices', '2', '--repo', repo, '--exit-on-halt', '--for', '20'], c.io, { log: pino({ level: 'silent' }) });
  await new Promise((r) => setTimeout(r, 500));
  const ev = (id: string, seq: number, type: string, extra: object = {}): Promise<unknown> =>
    dev.publishAsync(`slotflip/v2/devices/${id}/events`, JSON.stringify({ seq, deviceId: id, type, releaseId: rid, version: '2.0.0', ...extra }), { qos: 1 });
  await ev('w1', 1, 'UpdateStarted');
  await ev('w2', 1, 'UpdateStarted');
  await ev('w2', 2, 'UpdateCommitted');
  await new Promise((r) => setTimeout(r, 400));
  t.equal(await readRollout(repo, T).then((x) => x?.halted), undefined, 'one attempt in flight, one success: no halt');
  await ev('w1', 2, 'UpdateRolledBack', { reason: { code: 'DAEMON_HEALTH_CHECK_FAILED', message: 'health checks failed: app' }, failures: [{ name: 'app', output: 'x' }] });

  t.equal(await watching, 3, 'exit status 3: a halt was applied');
  const lines = c.out().trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  const halt = lines.find((l) => l['type'] === 'halt')!;
  t.ok(halt, 'a halt line was printed');
  t.match(halt['reason'], /1 of 2 devices failed/);
  t.same(halt['rollout'], { percent: 20, halted: true });
  const last = lines.at(-1)!;
  t.equal(last['type'], 'summary');
  t.equal(last['devices'], 2);
  t.same((last['release'] as Record<string, unknown>)['failed'], 1);
  t.same(await readRollout(repo, T), { percent: 20, halted: true });
  t.same((await retainedTargets()).rollout, { percent: 20, halted: true }, 'the halt reached the broker');

  await t.rejects(runFleet(['watch', '--broker', broker.url, '--halt-on-failure-rate', '0.5', '--repo', repo], capture().io), { code: 'DAEMON_USAGE' }, 'a halt needs --release');
  await t.rejects(runFleet(['watch', '--broker', broker.url, '--release', T, '--halt-on-failure-rate', '2', '--repo', repo], capture().io), { code: 'DAEMON_USAGE' });
  await t.rejects(runFleet(['watch', '--broker', 'mqtt://127.0.0.1:1', '--for', '1'], capture().io, { log: pino({ level: 'silent' }) }), { code: 'DAEMON_FLEET_CONNECT' });
});

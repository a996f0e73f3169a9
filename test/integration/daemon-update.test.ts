/**
 * End to end on an emulated board, through the same API `slotflip update --once` and the demo use:
 * a real TUF repository (manifests/repo.ts) served by a real HTTP server with Range, the real
 * installer (zstd, per-chunk verification), the real boot-control backend against the board's
 * files, real health checks (a command), the persisted outbox, and reboot = power-cycle the board.
 *
 * 1. 1.1.0 installs into B, trial boot, health check passes, commit: succeeded.
 * 2. 1.2.0 (boots, but its health check fails) installs into A, trial boot, check fails: rolled back
 *    to B with the failing check's output; not retried; the securityVersion is not raised.
 */
import t from 'tap';
import { writeFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { createBoard, powerCycle, boardStatus, makeTestImage } from '../../hal/board.js';
import { initRepo, addRelease } from '../../manifests/repo.js';
import { startHttpServer } from '../harness/http-server.js';
import { resolveConfig, type Config } from '../../daemon/config.js';
import { createAgent } from '../../daemon/compose.js';
import { runUpdateCycle } from '../../daemon/agent.js';
import { Outbox } from '../../daemon/outbox.js';

const SLOT_SIZE = 512 * 1024;

// Health check: reads the booted slot from the board's cmdline and the image header's `healthy` flag.
const HEALTH_SCRIPT = `
import { readFileSync } from 'node:fs';
const [boardDir] = process.argv.slice(2);
const cmdline = readFileSync(boardDir + '/cmdline', 'utf8');
const slot = /slotflip\\.slot=([AB])/.exec(cmdline)?.[1];
if (!slot) { console.log('no slot on cmdline: ' + cmdline); process.exit(2); }
const head = readFileSync(boardDir + '/slot-' + slot.toLowerCase() + '.img').subarray(0, 4096).toString('utf8');
const header = JSON.parse(head.split('\\n')[1]);
console.log('slot ' + slot + ' runs ' + header.version + (header.healthy ? ': app healthy' : ': app failed to start'));
process.exit(header.healthy ? 0 : 1);
`;

function logSink(lines: Record<string, unknown>[]): Writable {
  return new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
}

t.test('full update, then a health-check rollback, on an emulated board', async (t) => {
  const dir = t.testdir();
  const boardDir = join(dir, 'board');
  const board = await createBoard(boardDir, { backend: 'emulated', slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const srv = await startHttpServer({ root: join(repo, 'repository') });
  t.teardown(() => srv.stop());
  await writeFile(join(dir, 'health.mjs'), HEALTH_SCRIPT);

  const publish = async (version: string, securityVersion: number, healthy: boolean) => {
    const image = join(dir, `image-${version}.img`);
    await writeFile(image, makeTestImage({ version, size: 300 * 1024, healthy }));
    return addRelease(repo, { image, version, securityVersion, hardware: ['acme,board'], channel: 'stable', compression: 'zstd', chunkSize: 64 * 1024 });
  };

  const config: Config = await resolveConfig({
    deviceId: 'dev-1',
    hardware: 'acme,board',
    stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'http', url: srv.url }] },
    board: { slots: { A: { path: board.slots.A, size: SLOT_SIZE }, B: { path: board.slots.B, size: SLOT_SIZE } }, boot: board.bootConfig, tries: 2 },
    health: { deadlineSeconds: 30, checks: [{ type: 'command', name: 'app', argv: [process.execPath, join(dir, 'health.mjs'), boardDir], timeoutSeconds: 10 }] },
  });
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info', base: { deviceId: 'dev-1' } }, logSink(lines));
  let reboots = 0;
  const reboot = async () => {
    reboots++;
    await powerCycle(boardDir);
  };
  const makeAgent = () => createAgent(config, { log, reboot });

  // nothing published yet
  const none = await runUpdateCycle(makeAgent);
  t.equal(none.finished.length, 0);
  t.equal(none.lastCheck?.result, 'none');
  t.match(none.lastCheck?.detail, /MANIFEST_NO_RELEASE/);

  // 1. a good update
  await publish('1.1.0', 1, true);
  const r1 = await runUpdateCycle(makeAgent);
  t.equal(r1.phase, 'idle');
  t.equal(reboots, 1, 'one reboot into the trial');
  t.match(r1.finished, [{ outcome: 'succeeded', source: 'A', target: 'B', release: { version: '1.1.0', securityVersion: 1 } }]);
  const s1 = await boardStatus(boardDir);
  t.equal(s1.booted, 'B');
  t.equal(s1.images.B.version, '1.1.0');
  const agent = await makeAgent();
  const st = await agent.status();
  t.equal(st.bootedSlot, 'B');
  t.equal(st.committedSecurityVersion, 1);
  t.match(st.slots.find((s) => s.slot === 'B'), { booted: true, boot: { state: 'good', primary: true }, release: { version: '1.1.0' } });

  // running release: nothing to do
  const again = await runUpdateCycle(makeAgent);
  t.equal(again.finished.length, 0);
  t.match(again.lastCheck?.detail, /up to date/);
  t.equal(reboots, 1);

  // 2. a release whose application fails its health check
  await publish('1.2.0', 2, false);
  const r2 = await runUpdateCycle(makeAgent);
  t.equal(r2.phase, 'idle');
  t.equal(reboots, 3, 'reboot into the trial, reboot back');
  t.match(r2.finished, [{ outcome: 'rolledBack', source: 'B', target: 'A', reason: { code: 'DAEMON_HEALTH_CHECK_FAILED' }, failures: [{ name: 'app', output: /1\.2\.0: app failed to start/ }] }]);
  const s2 = await boardStatus(boardDir);
  t.equal(s2.booted, 'B', 'back on the committed slot');
  t.equal(s2.images.B.version, '1.1.0');
  const st2 = await (await makeAgent()).status();
  t.equal(st2.committedSecurityVersion, 1, 'securityVersion not raised by a rolled-back release');
  t.match(st2.slots.find((s) => s.slot === 'A'), { boot: { state: 'bad' } });

  // not retried until a newer release appears
  const r3 = await runUpdateCycle(makeAgent);
  t.equal(r3.finished.length, 0);
  t.match(r3.lastCheck?.detail, /rolled back before/);
  t.equal(reboots, 3);

  // the outbox holds the truthful, ordered story
  const outbox = new Outbox({ dir: join(config.stateDir, 'outbox') });
  const events = (await outbox.entries()).map((e) => ({ seq: e.seq, ...e.event }));
  t.same(events.map((e) => e.type), [
    'UpdateStarted', 'UpdateInstalled', 'RebootStarted', 'UpdateCommitted',
    'UpdateStarted', 'UpdateInstalled', 'RebootStarted', 'UpdateRolledBack',
  ]);
  t.ok(events.every((e, i) => i === 0 || e.seq > events[i - 1]!.seq), 'sequence numbers increase');
  t.match(events[7], { releaseId: /1\.2\.0/, reason: { code: 'DAEMON_HEALTH_CHECK_FAILED' }, failures: [{ name: 'app' }] });

  // logs: one line per transition, with releaseId and attempt on the attempt's lines
  const transitions = lines.filter((l) => l['msg'] === 'state transition');
  t.ok(transitions.length >= 16);
  t.match(transitions[0], { from: 'idle', to: 'checking', event: 'CheckRequested' });
  t.ok(transitions.filter((l) => l['to'] === 'downloading').every((l) => typeof l['releaseId'] === 'string' && typeof l['attempt'] === 'number'));
  t.match(transitions.find((l) => l['to'] === 'rollingBack'), { from: 'validating', event: 'HealthCheckFailed', attempt: 2 });

  // history on disk survives a new agent, and the record is schema 1
  const rec = JSON.parse(await readFile(join(config.stateDir, 'update-record.json'), 'utf8')) as { schema: number; history: unknown[]; rolledBack: string[] };
  t.equal(rec.schema, 1);
  t.equal(rec.history.length, 2);
  t.equal(rec.rolledBack.length, 1);
});

t.test('the bootloader falls back when the new kernel never comes up', async (t) => {
  const dir = t.testdir();
  const boardDir = join(dir, 'board');
  const board = await createBoard(boardDir, { backend: 'emulated', slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const image = join(dir, 'image.img');
  await writeFile(image, makeTestImage({ version: '2.0.0', size: 200 * 1024, boots: false }));
  await addRelease(repo, { image, version: '2.0.0', securityVersion: 1, hardware: ['acme,board'], channel: 'stable', compression: 'gzip', chunkSize: 32 * 1024 });
  // a USB stick: the repository directory as the source
  const config = await resolveConfig({
    deviceId: 'dev-2', hardware: 'acme,board', stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'dir', path: join(repo, 'repository') }] },
    board: { slots: { A: { path: board.slots.A, size: SLOT_SIZE }, B: { path: board.slots.B, size: SLOT_SIZE } }, boot: board.bootConfig, tries: 2 },
  });
  const reboot = async () => { await powerCycle(boardDir); };
  const r = await runUpdateCycle(() => createAgent(config, { reboot, outbox: null }));
  t.match(r.finished, [{ outcome: 'rolledBack', reason: { code: 'DAEMON_TRIAL_NOT_CONFIRMED', message: /trial boot never confirmed/ } }]);
  const s = await boardStatus(boardDir);
  t.equal(s.booted, 'A');
  t.equal(s.images.A.version, '1.0.0');
});

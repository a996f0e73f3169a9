import t from 'tap';
import { Writable } from 'node:stream';
import { join } from 'node:path';
import { readdir, readFile, utimes, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { pino } from 'pino';
import { Runner, toErrorInfo, type Executors } from '../../daemon/runner.js';
import { initialState, releaseRefOf, type Effect, type Event, type MachineState } from '../../daemon/machine.js';
import { acquireStateLock, FileStateStore, MemoryStateStore, parseRecord, RECORD_FILE } from '../../daemon/state-store.js';
import { SlotflipError } from '../../hal/errors.js';
import type { Release } from '../../manifests/types.js';

const R: Release = {
  targetName: 'releases/1.1.0/image.zst', length: 10, hashes: { sha256: 'aa'.repeat(32) },
  custom: { slotflip: 1, hardware: ['b'], version: '1.1.0', securityVersion: 3, channel: 'stable', payload: { compression: 'zstd', size: 10, sha256: 'bb'.repeat(32), chunkSize: 10, chunks: [] } },
};

function sink(lines: Record<string, unknown>[]): Writable {
  return new Writable({ write(c, _e, cb) { for (const l of String(c).split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>); cb(); } });
}

/** Executors that record what ran, in order, interleaved with the store's saves. */
function recording(trace: string[], overrides: Partial<Executors> = {}): Executors {
  const ok = (type: Event['type']) => async (e: Effect): Promise<Event> => {
    trace.push(`effect:${e.type}`);
    return { type } as Event;
  };
  const base: Executors = {
    check: async () => { trace.push('effect:check'); return { type: 'ReleaseFound', release: R, bootedSlot: 'A', bootedState: 'good' }; },
    markBad: ok('SlotMarkedBad'),
    writeSlot: ok('DownloadCompleted'),
    verifySlot: ok('SlotVerified'),
    armTrial: ok('TrialArmed'),
    reboot: ok('RebootIssued'),
    runHealthChecks: ok('HealthChecksPassed'),
    commit: ok('Committed'),
    markBadAndReboot: ok('RebootIssued'),
    abandon: ok('Reported'),
    report: async (e) => { trace.push(`report:${e.report.kind}`); return { type: 'Reported' }; },
  };
  return { ...base, ...overrides };
}

class TracingStore extends MemoryStateStore {
  constructor(private readonly trace: string[]) { super(); }
  override async save(state: MachineState) {
    this.trace.push(`save:${state.phase}`);
    return super.save(state);
  }
}

t.test('the record is saved before each phase\'s work; a reboot ends the drive', async (t) => {
  const trace: string[] = [];
  const lines: Record<string, unknown>[] = [];
  const store = new TracingStore(trace);
  const runner = new Runner({ store, executors: recording(trace), now: () => 1000, log: pino({ level: 'info' }, sink(lines)) });
  const r = await runner.drive(initialState(), { type: 'CheckRequested' });
  t.equal(r.rebooted, true);
  t.equal(r.state.phase, 'rebooting');
  t.same(trace, [
    'save:checking', 'effect:check',
    'save:preparing', 'report:updateStarted', 'effect:markBad',
    'save:downloading', 'effect:writeSlot',
    'save:verifying', 'effect:verifySlot',
    'save:arming', 'effect:armTrial',
    'save:rebooting', 'report:installed', 'report:rebooting', 'effect:reboot',
  ]);
  t.equal((await store.load()).phase, 'rebooting');
  const transitions = lines.filter((l) => l['msg'] === 'state transition');
  t.same(transitions.map((l) => [l['from'], l['to'], l['event']]), [
    ['idle', 'checking', 'CheckRequested'], ['checking', 'preparing', 'ReleaseFound'], ['preparing', 'downloading', 'SlotMarkedBad'],
    ['downloading', 'verifying', 'DownloadCompleted'], ['verifying', 'arming', 'SlotVerified'], ['arming', 'rebooting', 'TrialArmed'],
  ]);
  t.match(transitions[1], { releaseId: 'releases/1.1.0/image.zst@bbbbbbbbbbbbbbbb', attempt: 1 });
  t.notOk('releaseId' in transitions[0]!, 'no attempt yet on the first line');

  // after the reboot: validate, commit
  trace.length = 0;
  const r2 = await runner.drive(await store.load(), { type: 'BootedInto', slot: 'B' });
  // the final report is saved with the idle record, appended, then cleared from it by a second save
  t.same(trace, ['save:validating', 'effect:runHealthChecks', 'save:committing', 'effect:commit', 'save:idle', 'report:succeeded', 'save:idle']);
  t.equal(r2.state.committedSecurityVersion, 3);
  t.equal((await store.load()).pendingReports, undefined, 'nothing left pending');
});

t.test('a final report survives a cut between the record and the outbox (at-least-once)', async (t) => {
  const trace: string[] = [];
  const store = new TracingStore(trace);
  let cut = true;
  const executors = recording(trace, {
    writeSlot: async () => ({ type: 'DownloadFailed', error: { code: 'INSTALL_BAD', message: 'bad', retryable: false } }),
    report: async (e) => {
      if (cut && e.report.kind === 'failed') throw new Error('power cut');
      trace.push(`report:${e.report.kind}`);
      return { type: 'Reported' };
    },
  });
  const runner = new Runner({ store, executors, now: () => 5, log: pino({ level: 'silent' }) });
  const r = await runner.drive(initialState(), { type: 'CheckRequested' });
  t.equal(r.state.phase, 'idle');
  const saved = await store.load();
  t.match(saved.pendingReports, [{ kind: 'failed', attempt: 1, reason: { code: 'INSTALL_BAD' } }], 'the record keeps the unsent final report');
  t.match(saved.history, [{ outcome: 'failed' }]);
  // next start: appended first, then cleared
  cut = false;
  trace.length = 0;
  const flushed = await runner.flushReports(saved, pino({ level: 'silent' }));
  t.same(trace, ['report:failed', 'save:idle']);
  t.equal(flushed.pendingReports, undefined);
  t.equal((await store.load()).pendingReports, undefined);
  // nothing pending: no write
  trace.length = 0;
  await runner.flushReports(await store.load(), pino({ level: 'silent' }));
  t.same(trace, []);
});

t.test('a throwing executor takes the shared failure path with its code', async (t) => {
  const trace: string[] = [];
  const store = new MemoryStateStore();
  const executors = recording(trace, {
    markBad: async () => { throw new SlotflipError('HAL_BOOTENV_WRITE', 'fw_setenv failed', { retryable: false }); },
    report: async () => { throw new Error('outbox disk full'); },
  });
  const runner = new Runner({ store, executors, now: () => 5, log: pino({ level: 'silent' }) });
  const r = await runner.drive(initialState(), { type: 'CheckRequested' });
  t.equal(r.state.phase, 'idle');
  t.match(r.state.history, [{ outcome: 'failed', reason: { code: 'HAL_BOOTENV_WRITE', message: 'fw_setenv failed' } }]);
  t.equal(r.rebooted, false);
});

t.test('a retryable download failure stops the drive and keeps the attempt', async (t) => {
  const trace: string[] = [];
  const store = new MemoryStateStore();
  const executors = recording(trace, { writeSlot: async () => ({ type: 'DownloadFailed', error: { code: 'INSTALL_HTTP', message: 'reset', retryable: true } }) });
  const runner = new Runner({ store, executors, now: () => 5, log: pino({ level: 'silent' }) });
  const r = await runner.drive(initialState(), { type: 'CheckRequested' });
  t.equal(r.state.phase, 'downloading');
  t.equal((await store.load()).phase, 'downloading');
  t.same(trace.slice(-1), ['report:downloadInterrupted']);
});

t.test('a loop across restarts is abandoned: DAEMON_STATE_LOOP, committed slot untouched', async (t) => {
  const trace: string[] = [];
  const store = new MemoryStateStore();
  // every trial boot "crashes" during the health checks: the drive never gets further
  const executors = recording(trace, { runHealthChecks: async (e) => { trace.push(`effect:${e.type}`); return { type: 'Reported' }; } });
  const runner = new Runner({ store, executors, now: () => 5, log: pino({ level: 'silent' }), machine: { maxTransitions: 10 } });
  await runner.drive(initialState(), { type: 'CheckRequested' });
  let state: MachineState = await store.load();
  for (let i = 0; i < 10 && state.phase !== 'idle'; i++) state = (await runner.drive(state, { type: 'BootedInto', slot: 'B' })).state;
  t.equal(state.phase, 'idle');
  t.match(state.history.at(-1), { outcome: 'failed', reason: { code: 'DAEMON_STATE_LOOP' } });
  t.ok(trace.includes('effect:abandon'));
  t.notOk(trace.includes('effect:commit'));
});

t.test('executor table is exhaustive (compile-time)', async (t) => {
  // @ts-expect-error: a table without `commit` does not type-check
  const missing: Executors = { ...recording([]), commit: undefined };
  t.ok(missing);
  t.same(toErrorInfo(new Error('x')), { code: 'DAEMON_UNEXPECTED', message: 'x', retryable: false });
  t.same(toErrorInfo('s'), { code: 'DAEMON_UNEXPECTED', message: 's', retryable: false });
});

t.test('file state store: atomic, versioned, refuses what it cannot read', async (t) => {
  const dir = t.testdir();
  const store = new FileStateStore({ stateDir: dir, now: () => 42, initialSecurityVersion: 2 });
  const fresh = await store.load();
  t.match(fresh, { schema: 1, phase: 'idle', committedSecurityVersion: 2, saves: 0 });
  const s: MachineState = { ...initialState(2), phase: 'downloading', attempt: { number: 1, release: R, ref: releaseRefOf(R), source: 'A', target: 'B', startedAt: 1 }, attempts: 1 };
  const saved = await store.save(s);
  t.match(saved, { schema: 1, savedAt: 42, saves: 1 });
  const again = new FileStateStore({ stateDir: dir, now: () => 43 });
  t.same(await again.load(), saved);
  t.match(await again.save(s), { saves: 2 }, 'save counter continues across instances');

  const path = join(dir, RECORD_FILE);
  const good = await readFile(path, 'utf8');
  await writeFile(path, good.slice(0, 20));
  await t.rejects(again.load(), { code: 'DAEMON_STATE_CORRUPT', message: new RegExp(path) });
  await writeFile(path, JSON.stringify({ ...JSON.parse(good), schema: 2 }));
  await t.rejects(again.load(), { code: 'DAEMON_STATE_CORRUPT', message: /unknown schema 2/ });
  t.throws(() => parseRecord(JSON.stringify({ ...JSON.parse(good), phase: 'flying' }), 'x'), { code: 'DAEMON_STATE_CORRUPT' });
  t.throws(() => parseRecord(JSON.stringify({ ...JSON.parse(good), attempt: null }), 'x'), { message: /without an attempt/ });
  t.throws(() => parseRecord('[]', 'x'), { message: /not an object/ });

  // a write that fails (power cut, disk full) leaves the previous record
  await writeFile(path, good);
  const failing = new FileStateStore({ stateDir: dir, now: () => 44, writeFileAtomic: async () => { throw new SlotflipError('HAL_ATOMIC_WRITE', 'ENOSPC', { retryable: true }); } });
  await t.rejects(failing.save({ ...s, phase: 'verifying' }), { code: 'HAL_ATOMIC_WRITE' });
  t.equal((await failing.load()).phase, 'downloading');
});

t.test('state lock: exclusive, names the holder, takes over a stale one, released', async (t) => {
  const stateDir = t.testdir();
  const lockPath = join(stateDir, 'lock');
  const release = await acquireStateLock({ stateDir });
  t.match(JSON.parse(await readFile(lockPath, 'utf8')), { pid: process.pid });
  // a second agent in this very process: refused
  await t.rejects(acquireStateLock({ stateDir }), { code: 'DAEMON_LOCKED', message: new RegExp(`process ${process.pid}`) });
  // another live process (pid 1 is always alive) holds it: refused with its pid and what to do
  await release();
  await writeFile(lockPath, JSON.stringify({ pid: 1, nonce: 'x', at: 0 }));
  await t.rejects(acquireStateLock({ stateDir, isAlive: () => true }), { code: 'DAEMON_LOCKED', message: /process 1 .*wait for it/ });
  // the holder is dead: taken over
  const r2 = await acquireStateLock({ stateDir, isAlive: () => false });
  t.match(JSON.parse(await readFile(lockPath, 'utf8')), { pid: process.pid });
  await r2();
  await r2(); // idempotent
  t.notOk(existsSync(lockPath), 'released');
  // a lock from an earlier boot is stale whatever its pid
  await writeFile(lockPath, JSON.stringify({ pid: 1, bootId: 'old-boot', nonce: 'y', at: 0 }));
  const r3 = await acquireStateLock({ stateDir, isAlive: () => true, bootId: async () => 'this-boot' });
  await r3();
  // a dead predecessor with our pid (pid reuse after a restart) is stale too
  await writeFile(lockPath, JSON.stringify({ pid: process.pid, nonce: 'z', at: 0, started: 1 }));
  const r4 = await acquireStateLock({ stateDir });
  await r4();
  t.same((await readdir(stateDir)).filter((f) => f.startsWith('lock')), [], 'no lock or aside file left');
});

t.test('a torn lock (a power cut while an older slotflip wrote it) is taken over at once, whatever its age; what a cut leaves while taking one is cleaned up', async (t) => {
  const stateDir = t.testdir();
  const lockPath = join(stateDir, 'lock');
  // written just now (fresh mtime), cut mid-write; and a device whose clock went back (mtime ahead)
  for (const [what, mtime] of [['fresh', new Date()], ['mtime in the future', new Date(Date.now() + 86_400_000)]] as const) {
    await writeFile(lockPath, '{"pid": 12');
    await utimes(lockPath, mtime, mtime);
    const r = await acquireStateLock({ stateDir, isAlive: () => true });
    t.match(JSON.parse(await readFile(lockPath, 'utf8')), { pid: process.pid }, `${what}: taken over, not DAEMON_LOCKED`);
    await r();
  }
  // a cut between writing a lock of its own and linking it, or while taking a stale one over
  await writeFile(join(stateDir, 'lock.new-999999-0a1b'), '{"pid": 999999');
  await writeFile(join(stateDir, 'lock.stale-999999-0a1c'), '{"pid": 1, "nonce": "q"}');
  const r = await acquireStateLock({ stateDir, isAlive: (pid) => pid !== 999999 });
  t.same((await readdir(stateDir)).filter((f) => f.startsWith('lock')).sort(), ['lock'], 'only the lock itself is left');
  await r();
  t.same((await readdir(stateDir)).filter((f) => f.startsWith('lock')), [], 'released');
});

t.test('a record without pendingReports (older daemon) loads; a malformed one is refused', async (t) => {
  const dir = t.testdir();
  const store = new FileStateStore({ stateDir: dir, now: () => 1 });
  const old = { schema: 1, savedAt: 1, saves: 1, ...initialState() };
  await writeFile(join(dir, 'update-record.json'), JSON.stringify(old));
  t.equal((await store.load()).pendingReports, undefined);
  await writeFile(join(dir, 'update-record.json'), JSON.stringify({ ...old, pendingReports: 'x' }));
  await t.rejects(store.load(), { code: 'DAEMON_STATE_CORRUPT', message: /pendingReports/ });
});

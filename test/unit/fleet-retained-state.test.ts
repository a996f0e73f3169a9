/**
 * The retained device state's `lastResult`: one definition (daemon/topics.ts) that the daemon writes
 * and `fleet watch` reads, a tolerant reader for the flat shape older daemons left inside
 * `inventory`, and device faults (DEVICE_FAULT_CODES) honoured on the retained path as on events.
 */
import t from 'tap';
import { readLastResult, stateLastResult, type StateLastResult } from '../../daemon/topics.js';
import { emptyView, foldMessage, releaseStats, summarize } from '../../daemon/fleet/watch.js';
import { BOOTLOADER_IGNORED_ENV, DEVICE_FAULT_CODES, type HistoryEntry } from '../../daemon/machine.js';

const T = 'releases/2.0.0/image.img.zst';
const RID = `${T}@0123456789abcdef`;
const topic = (id: string): string => `slotflip/v2/devices/${id}/state`;
const ref = { id: RID, targetName: T, version: '2.0.0', securityVersion: 3 };

const entry = (over: Partial<HistoryEntry> = {}): HistoryEntry => ({ attempt: 4, release: ref, source: 'A', target: 'B', outcome: 'succeeded', startedAt: 1000, endedAt: 5000, ...over });

t.test('stateLastResult writes the wire fields only; readLastResult reads them back', async (t) => {
  const h = { ...entry({ outcome: 'rolledBack', reason: { code: 'DAEMON_HEALTH_CHECK_FAILED', message: 'health checks failed: app', retryable: false }, failures: [{ name: 'app', output: 'exit 3', required: true }] }), extra: 'internal' } as HistoryEntry;
  const wire = stateLastResult(h);
  t.same(wire, {
    attempt: 4, outcome: 'rolledBack', release: ref, source: 'A', target: 'B', startedAt: 1000, endedAt: 5000,
    reason: { code: 'DAEMON_HEALTH_CHECK_FAILED', message: 'health checks failed: app' }, failures: [{ name: 'app', output: 'exit 3', required: true }],
  });
  t.same(readLastResult(JSON.parse(JSON.stringify(wire))), {
    releaseId: RID, outcome: 'rolledBack', version: '2.0.0', at: 5000, reasonCode: 'DAEMON_HEALTH_CHECK_FAILED',
    reasonText: 'DAEMON_HEALTH_CHECK_FAILED: health checks failed: app', failedChecks: ['app'],
  });
  const warned: StateLastResult = stateLastResult(entry({ warnings: [{ name: 'disk', output: 'low' }] }));
  t.same(readLastResult(warned), { releaseId: RID, outcome: 'succeeded', version: '2.0.0', at: 5000, warnedChecks: ['disk'] });
});

t.test('readLastResult tolerates the old flat inventory shape and rejects garbage', async (t) => {
  t.same(readLastResult({ outcome: 'rolled-back', releaseId: RID, version: '2.0.0', code: 'DAEMON_TRIAL_NOT_CONFIRMED', atMs: 7 }),
    { releaseId: RID, outcome: 'rolledBack', version: '2.0.0', at: 7, reasonCode: 'DAEMON_TRIAL_NOT_CONFIRMED', reasonText: 'DAEMON_TRIAL_NOT_CONFIRMED' });
  t.same(readLastResult({ outcome: 'committed', releaseId: RID }), { releaseId: RID, outcome: 'succeeded' });
  t.same(readLastResult({ outcome: 'failed', releaseId: RID, atMs: '1970-01-01T00:00:01.000Z' }), { releaseId: RID, outcome: 'failed', at: 1000 });
  for (const bad of [undefined, null, 3, 'x', [], {}, { outcome: 'none' }, { outcome: 'committed' }, { outcome: 'constructor', releaseId: RID },
    { outcome: '__proto__', releaseId: RID }, { outcome: 'rolled-back', release: { id: RID } }, { outcome: 'succeeded', release: { id: 5 } }, { outcome: 'exploded', release: { id: RID } }]) {
    t.equal(readLastResult(bad), undefined, `ignored: ${JSON.stringify(bad)}`);
  }
});

t.test('fleet watch learns outcomes from a retained state alone, in either shape', async (t) => {
  const v = emptyView();
  const now = 1_000_000;
  // current daemon
  foldMessage(v, { topic: topic('new'), payload: JSON.stringify({ at: now - 1000, phase: 'idle', lastResult: stateLastResult(entry({ outcome: 'rolledBack', reason: { code: 'DAEMON_HEALTH_CHECK_FAILED', message: 'app' }, failures: [{ name: 'app', output: 'x' }] })) }), retained: true }, now);
  // an older daemon's retained state: no top-level lastResult, the flat copy in inventory
  foldMessage(v, { topic: topic('old'), payload: JSON.stringify({ phase: 'idle', inventory: { lastResult: { outcome: 'committed', releaseId: RID, version: '2.0.0', atMs: 9 } } }), retained: true }, now);
  t.match(releaseStats(v, T), { attempted: 2, succeeded: 1, failed: 1 });
  t.match(v.devices.get('new')!.releases[T], { outcome: 'rolledBack', reason: 'DAEMON_HEALTH_CHECK_FAILED: app', failedChecks: ['app'] });
  t.equal(v.devices.get('new')!.lastSeen, now - 1000, 'a retained state\'s `at` is when the device was last heard of');
  const s = summarize(v, now, { stragglerAfterMs: 60_000 });
  t.same(s.stragglers.map((x) => x.deviceId), ['old'], 'only the state without `at` looks silent');
});

t.test('device faults are honoured on the retained path, in both shapes', async (t) => {
  t.ok(DEVICE_FAULT_CODES.includes(BOOTLOADER_IGNORED_ENV));
  for (const code of DEVICE_FAULT_CODES) {
    const v = emptyView();
    foldMessage(v, { topic: topic('ok'), payload: JSON.stringify({ lastResult: stateLastResult(entry()) }), retained: true }, 10);
    foldMessage(v, { topic: topic('cur'), payload: JSON.stringify({ lastResult: stateLastResult(entry({ outcome: 'failed', reason: { code, message: 'the bootloader never read it' } })) }), retained: true }, 10);
    foldMessage(v, { topic: topic('old'), payload: JSON.stringify({ inventory: { lastResult: { outcome: 'failed', releaseId: RID, code, atMs: 5 } } }), retained: true }, 10);
    t.same(releaseStats(v, T), { targetName: T, attempted: 3, inProgress: 0, succeeded: 1, failed: 0, failureRate: 0, deviceFaults: 2 }, `${code}: not counted against the release`);
    t.same(summarize(v, 10, { release: T, stragglerAfterMs: 1e9 }).deviceFaults?.map((f) => f.deviceId).sort(), ['cur', 'old']);
  }
  // and a release failure from the old shape still counts
  const v = emptyView();
  foldMessage(v, { topic: topic('old'), payload: JSON.stringify({ inventory: { lastResult: { outcome: 'rolled-back', releaseId: RID, code: 'DAEMON_HEALTH_CHECK_FAILED', atMs: 5 } } }), retained: true }, 10);
  t.match(releaseStats(v, T), { attempted: 1, failed: 1 });
  t.notOk(releaseStats(v, T).deviceFaults);
});

// The fleet watcher's pure core: folding broker messages into the view, failure accounting, the
// halt decision, stragglers, and the rollout argument parsing.
import t from 'tap';
import { decideHalt, emptyView, foldMessage, formatSummary, haltPolicyProblem, parseDeviceTopic, releaseStats, summarize, targetOf, type FleetView } from '../../daemon/fleet/watch.js';
import { buildRollout, parsePercent, parseWave } from '../../daemon/fleet/rollout.js';

const T = 'releases/2.0.0/image.img.gz';
const RID = `${T}@0123456789abcdef`;
const topic = (id: string, leaf: string): string => `slotflip/v2/devices/${id}/${leaf}`;
let seqs: Record<string, number> = {};

function event(view: FleetView, id: string, type: string, extra: Record<string, unknown> = {}, now = 1000): void {
  const seq = (seqs[id] = (seqs[id] ?? 0) + 1);
  foldMessage(view, { topic: topic(id, 'events'), payload: JSON.stringify({ seq, deviceId: id, type, releaseId: RID, version: '2.0.0', ...extra }) }, now);
}

t.beforeEach(() => {
  seqs = {};
});

t.test('topics and release ids', async (t) => {
  t.same(parseDeviceTopic('slotflip/v2/devices/d1/state'), { deviceId: 'd1', leaf: 'state' });
  t.equal(parseDeviceTopic('slotflip/v1/meta/timestamp.json'), undefined);
  t.equal(parseDeviceTopic('slotflip/v2/devices/d1/cmd/check'), undefined);
  t.equal(targetOf(RID), T);
  t.equal(targetOf('plain'), 'plain');
});

t.test('events fold into per-release outcomes; duplicates by seq are dropped', async (t) => {
  const v = emptyView();
  event(v, 'a', 'UpdateStarted');
  event(v, 'a', 'UpdateInstalled');
  event(v, 'a', 'UpdateCommitted');
  // the same event delivered again (at-least-once)
  foldMessage(v, { topic: topic('a', 'events'), payload: JSON.stringify({ seq: 2, type: 'UpdateInstalled', releaseId: RID }) }, 1000);
  event(v, 'b', 'UpdateStarted');
  event(v, 'b', 'UpdateRolledBack', { reason: { code: 'DAEMON_HEALTH_CHECK_FAILED', message: 'health checks failed: app' }, failures: [{ name: 'app', output: 'exit 1' }] });
  event(v, 'c', 'UpdateStarted');
  t.equal(v.duplicates, 1);
  t.equal(v.devices.get('a')!.version, '2.0.0', 'a commit sets the running version');
  t.same(releaseStats(v, T), { targetName: T, attempted: 3, inProgress: 1, succeeded: 1, failed: 1, failureRate: 1 / 3 });
  const b = v.devices.get('b')!.releases[T]!;
  t.equal(b.outcome, 'rolledBack');
  t.equal(b.reason, 'DAEMON_HEALTH_CHECK_FAILED: health checks failed: app');
  t.same(b.failedChecks, ['app']);
});

t.test('a device that failed and retried still counts as failed until it succeeds', async (t) => {
  const v = emptyView();
  event(v, 'a', 'UpdateStarted');
  event(v, 'a', 'UpdateFailed', { reason: { code: 'INSTALL_CHUNK_HASH_MISMATCH', message: 'x' } });
  event(v, 'a', 'UpdateStarted');
  t.equal(releaseStats(v, T).failed, 1);
  event(v, 'a', 'UpdateCommitted');
  t.equal(releaseStats(v, T).failed, 0);
  t.equal(releaseStats(v, T).succeeded, 1);
});

t.test('retained state fills gaps but never regresses what events said', async (t) => {
  const v = emptyView();
  // a watcher that started late: only the retained state tells the outcome
  const state = {
    phase: 'idle',
    slots: [{ slot: 'A', booted: true, release: { id: 'x', version: '1.0.0' } }, { slot: 'B', booted: false }],
    lastResult: { release: { id: RID, version: '2.0.0' }, outcome: 'rolledBack', endedAt: 5000, reason: { code: 'DAEMON_TRIAL_NOT_CONFIRMED', message: 'fell back' } },
    at: new Date(6000).toISOString(),
  };
  foldMessage(v, { topic: topic('late', 'state'), payload: JSON.stringify(state), retained: true }, 99_000);
  const d = v.devices.get('late')!;
  t.equal(d.version, '1.0.0', 'version from the booted slot');
  t.equal(d.lastSeen, 6000, 'a retained state is dated by its own timestamp, not its receipt');
  t.equal(d.releases[T]!.outcome, 'rolledBack');
  t.equal(d.releases[T]!.reason, 'DAEMON_TRIAL_NOT_CONFIRMED: fell back');

  // events said succeeded at t=9000; an older retained state with an attempt in flight must not undo it
  event(v, 'b', 'UpdateCommitted', { at: new Date(9000).toISOString() });
  foldMessage(v, { topic: topic('b', 'state'), payload: JSON.stringify({ phase: 'downloading', attempt: { releaseId: RID, version: '2.0.0', startedAt: 8000 } }) }, 10_000);
  t.equal(v.devices.get('b')!.releases[T]!.outcome, 'succeeded');
  t.equal(v.devices.get('b')!.phase, 'downloading');

  // a state showing an attempt in flight counts as attempted
  foldMessage(v, { topic: topic('c', 'state'), payload: JSON.stringify({ phase: 'downloading', version: '1.0.0', attempt: { releaseId: RID, version: '2.0.0' } }) }, 10_000);
  t.equal(v.devices.get('c')!.releases[T]!.outcome, 'started');
  t.equal(v.devices.get('c')!.version, '1.0.0', 'an explicit version field wins');
});

t.test('garbage is counted, never thrown', async (t) => {
  const v = emptyView();
  foldMessage(v, { topic: topic('a', 'state'), payload: 'not json' }, 1);
  foldMessage(v, { topic: topic('a', 'events'), payload: '[1,2]' }, 1);
  foldMessage(v, { topic: topic('a', 'state'), payload: '' }, 1);
  foldMessage(v, { topic: topic('a', 'events'), payload: JSON.stringify({ seq: 1, type: 'Whatever' }) }, 1);
  foldMessage(v, { topic: 'other/topic', payload: '{}' }, 1);
  foldMessage(v, { topic: topic('a', 'state'), payload: new TextEncoder().encode(JSON.stringify({ phase: 7, slots: 'x', lastResult: { release: 3 } })) }, 1);
  t.equal(v.malformed, 2);
  t.equal(v.messages, 5, 'messages outside the device tree are not counted');
  t.same(v.devices.get('a')!.releases, {});
  t.equal(v.devices.get('a')!.phase, undefined);
});

t.test('halt decision: threshold and minimum attempts', async (t) => {
  const policy = { failureRate: 0.3, minDevices: 5 };
  const v = emptyView();
  for (const id of ['a', 'b', 'c']) event(v, id, 'UpdateStarted');
  event(v, 'a', 'UpdateRolledBack');
  event(v, 'b', 'UpdateRolledBack');
  let d = decideHalt(releaseStats(v, T), policy);
  t.equal(d.halt, false, '2 of 3 failed but fewer than 5 attempted');
  t.match(d.reason, /3 of the 5 attempts/);
  for (const id of ['d', 'e', 'f', 'g']) event(v, id, 'UpdateStarted');
  d = decideHalt(releaseStats(v, T), policy);
  t.equal(d.halt, false, '2 of 7 = 28.6% is below 30%');
  event(v, 'c', 'UpdateFailed');
  d = decideHalt(releaseStats(v, T), policy);
  t.equal(d.halt, true, '3 of 7 = 42.9% crosses 30%');
  t.match(d.reason, /3 of 7 devices failed/);
  t.equal(decideHalt(releaseStats(emptyView(), T), { failureRate: 1, minDevices: 1 }).halt, false, 'nothing attempted, nothing to halt');
  t.equal(decideHalt({ targetName: T, attempted: 4, inProgress: 4, succeeded: 0, failed: 0, failureRate: 0 }, { failureRate: 0.0001, minDevices: 1 }).halt, false, 'no failure never halts');
  t.equal(haltPolicyProblem({ failureRate: 0, minDevices: 1 })?.includes('failure-rate'), true);
  t.equal(haltPolicyProblem({ failureRate: 1.5, minDevices: 1 })?.includes('failure-rate'), true);
  t.equal(haltPolicyProblem({ failureRate: 0.2, minDevices: 0 })?.includes('min-devices'), true);
  t.equal(haltPolicyProblem({ failureRate: 0.2, minDevices: 3 }), undefined);
});

t.test('summary: counts per version and phase, failures, stragglers, table', async (t) => {
  const v = emptyView();
  const st = (id: string, version: string, phase: string, now: number): void => {
    foldMessage(v, { topic: topic(id, 'state'), payload: JSON.stringify({ phase, version }) }, now);
  };
  st('a', '1.0.0', 'idle', 1000);
  st('b', '2.0.0', 'idle', 50_000);
  st('c', '1.0.0', 'downloading', 60_000);
  foldMessage(v, { topic: topic('c', 'online'), payload: 'offline' }, 60_000);
  foldMessage(v, { topic: topic('b', 'online'), payload: 'online' }, 60_000);
  event(v, 'c', 'UpdateStarted', {}, 60_000);
  event(v, 'c', 'UpdateRolledBack', { reason: { code: 'DAEMON_HEALTH_CHECK_FAILED', message: 'm' }, failures: [{ name: 'app' }] }, 60_000);
  const s = summarize(v, 100_000, { release: T, stragglerAfterMs: 90_000 });
  t.same(s.versions, { '1.0.0': 2, '2.0.0': 1 });
  t.same(s.phases, { idle: 2, downloading: 1 });
  t.equal(s.online, 1);
  t.equal(s.offline, 1);
  t.same(s.stragglers.map((x) => x.deviceId), ['a', 'c'], 'a is silent for 99 s, c is offline');
  t.equal(s.failuresTotal, 1);
  t.equal(s.failures[0]!.deviceId, 'c');
  t.same(s.release, { targetName: T, attempted: 1, inProgress: 0, succeeded: 0, failed: 1, failureRate: 1 });
  const text = formatSummary(s);
  t.match(text, /versions: 1\.0\.0=2 {2}2\.0\.0=1/);
  t.match(text, /c {2}rolledBack {2}releases\/2\.0\.0\/image\.img\.gz@0123456789abcdef {2}DAEMON_HEALTH_CHECK_FAILED: m {2}\[checks: app\]/);
  t.match(text, /a {2}silent 99s/);
  t.match(text, /c {2}silent \d+s {2}offline/);
  t.equal(summarize(v, 100_000, { stragglerAfterMs: 1, maxListed: 1 }).stragglers.length, 1, 'lists are capped');
});

t.test('rollout arguments', async (t) => {
  const now = Date.parse('2026-11-27T12:00:00Z');
  t.same(parseWave('+2h=50', now), { at: '2026-11-27T14:00:00Z', percent: 50 });
  t.same(parseWave('+30m=10.5', now), { at: '2026-11-27T12:30:00Z', percent: 10.5 });
  t.same(parseWave('2026-12-01T08:00:00Z=100', now), { at: '2026-12-01T08:00:00Z', percent: 100 });
  for (const bad of ['50', '+2h=150', 'tomorrow=5', '+2x=5', '=5', '2026-13-45T00:00:00Z=5']) {
    t.throws(() => parseWave(bad, now), { code: 'DAEMON_USAGE' }, `refuses ${bad}`);
  }
  t.equal(parsePercent('0', 'p'), 0);
  t.throws(() => parsePercent('', 'p'));
  t.throws(() => parsePercent('-1', 'p'));
  t.same(buildRollout(10, [{ at: '2026-12-02T00:00:00Z', percent: 100 }, { at: '2026-12-01T00:00:00Z', percent: 50 }]), {
    percent: 10,
    waves: [{ at: '2026-12-01T00:00:00Z', percent: 50 }, { at: '2026-12-02T00:00:00Z', percent: 100 }],
  });
  t.same(buildRollout(5), { percent: 5 });
  t.same(buildRollout(5, [], true), { percent: 5, halted: true });
});

t.test('device faults (the bootloader ignored the trial) are listed apart and never halt a rollout', async (t) => {
  const IGNORED = { code: 'DAEMON_BOOTLOADER_IGNORED_ENV', message: 'the bootloader did not read the boot environment slotflip wrote' };
  const policy = { failureRate: 0.3, minDevices: 3 };
  const v = emptyView();
  for (const id of ['a', 'b', 'c', 'd']) event(v, id, 'UpdateStarted');
  for (const id of ['a', 'b', 'c']) event(v, id, 'UpdateFailed', { reason: IGNORED });
  event(v, 'd', 'UpdateCommitted');
  let stats = releaseStats(v, T);
  t.same(stats, { targetName: T, attempted: 4, inProgress: 0, succeeded: 1, failed: 0, failureRate: 0, deviceFaults: 3 });
  let d = decideHalt(stats, policy);
  t.equal(d.halt, false, '3 misconfigured boards of 4 do not halt the release');
  t.match(d.reason, /1 of the 3 attempts needed before judging \(3 device faults not counted\)/);
  // the halt still works on release failures among the devices that could judge the release
  for (const id of ['e', 'f']) event(v, id, 'UpdateStarted');
  event(v, 'e', 'UpdateRolledBack', { reason: { code: 'DAEMON_HEALTH_CHECK_FAILED', message: 'app' } });
  stats = releaseStats(v, T);
  t.match(stats, { attempted: 6, inProgress: 1, succeeded: 1, failed: 1, failureRate: 1 / 3, deviceFaults: 3 });
  d = decideHalt(stats, policy);
  t.equal(d.halt, true);
  t.match(d.reason, /1 of 3 devices failed .* \(3 device faults not counted\)/);

  const s = summarize(v, 2000, { release: T, stragglerAfterMs: 1e9 });
  t.same(s.failures.map((f) => f.deviceId), ['e'], 'release failures only');
  t.equal(s.deviceFaultsTotal, 3);
  t.same(s.deviceFaults?.map((f) => f.deviceId), ['a', 'b', 'c']);
  const text = formatSummary(s);
  t.match(text, /failed 1 \(33\.3%\), device faults 3 \(not counted\)/);
  t.match(text, /device faults \(3, the device's configuration, not counted against the release\):\n {4}a {2}failed {2}\S+ {2}DAEMON_BOOTLOADER_IGNORED_ENV: the bootloader did not read/);
  t.equal(summarize(emptyView(), 0, { stragglerAfterMs: 1 }).deviceFaults, undefined, 'absent when there are none');

  // a device fault then a release failure counts as a failure; then a success clears both
  event(v, 'a', 'UpdateStarted');
  t.equal(releaseStats(v, T).deviceFaults, 3, 'a retry in flight is still the device fault');
  event(v, 'a', 'UpdateRolledBack', { reason: { code: 'DAEMON_HEALTH_CHECK_FAILED', message: 'app' } });
  t.match(releaseStats(v, T), { failed: 2, deviceFaults: 2 });
  event(v, 'b', 'UpdateCommitted');
  t.match(releaseStats(v, T), { succeeded: 2, deviceFaults: 1 });

  // a late watcher learns it from the retained state alone
  const late = emptyView();
  foldMessage(late, { topic: topic('z', 'state'), payload: JSON.stringify({ phase: 'idle', lastResult: { release: { id: RID, version: '2.0.0' }, outcome: 'failed', endedAt: 5, reason: IGNORED } }), retained: true }, 10);
  t.match(releaseStats(late, T), { attempted: 1, failed: 0, deviceFaults: 1 });
  // the uboot backend's refusal of an mtdblock fw_env.config is a device fault too
  const cfg = emptyView();
  event(cfg, 'y', 'UpdateFailed', { reason: { code: 'HAL_BOOTENV_CONFIG', message: 'use /dev/mtd1' } });
  t.match(releaseStats(cfg, T), { failed: 0, deviceFaults: 1 });
});

t.test('a device seen by its events but without retained state is listed as such, not as missing', async (t) => {
  const v = emptyView();
  event(v, 'gw.7', 'UpdateStarted');
  foldMessage(v, { topic: 'slotflip/v2/devices/gw_2e7/events', payload: JSON.stringify({ seq: 9, deviceId: 'gw.7', type: 'UpdateInstalled', releaseId: RID }) }, 1000);
  foldMessage(v, { topic: topic('s', 'state'), payload: JSON.stringify({ phase: 'idle', at: new Date(1000).toISOString() }), retained: true }, 1000);
  foldMessage(v, { topic: 'slotflip/v1/devices/old/online', payload: 'online', retained: true }, 1000);
  t.same(parseDeviceTopic('slotflip/v2/devices/gw_2e7/state'), { deviceId: 'gw.7', leaf: 'state' }, 'v2 device level decoded');
  t.same(parseDeviceTopic('slotflip/v1/devices/old/state'), { deviceId: 'old', leaf: 'state' }, 'v1 devices still read');
  const s = summarize(v, 2000, { stragglerAfterMs: 3_600_000 });
  t.same(s.withoutState, ['gw.7', 'old']);
  t.equal(s.withoutStateTotal, 2);
  t.equal(s.phases['no-state'], 2, 'not "unknown": the state exists, the broker did not deliver it');
  t.match(formatSummary(s), /seen without retained state \(2\).*fleet check --device ID/s);
  const s2 = summarize(emptyView(), 2000, { stragglerAfterMs: 1 });
  t.equal(s2.withoutState, undefined, 'absent when every device has a state');
});

import t from 'tap';
import {
  transition, resume, initialState, releaseIdOf, releaseRefOf, bootloaderIgnoredTrial, MAX_TRANSITIONS, BOOTLOADER_IGNORED_ENV, DEVICE_FAULT_CODES,
  MAX_STEP_RETRIES, STEP_RETRY_MAX_MS, SOURCE_NOT_GOOD, stepRetryDelay, forgetFailed,
  type Event, type MachineState, type Phase, type Effect, type Attempt, type BootEvidence,
} from '../../daemon/machine.js';
import type { SlotBootState } from '../../hal/boot-control.js';
import type { Release } from '../../manifests/types.js';

function release(version: string, securityVersion = 1, sha = 'ab'.repeat(32)): Release {
  return {
    targetName: `releases/${version}/image.zst`,
    length: 100,
    hashes: { sha256: 'cd'.repeat(32) },
    custom: {
      slotflip: 1, hardware: ['acme,board'], version, securityVersion, channel: 'stable',
      payload: { compression: 'zstd', size: 1024, sha256: sha, chunkSize: 512, chunks: [] },
    },
  };
}

const R1 = release('1.1.0', 2);
const NOW = 1_700_000_000_000;

function withAttempt(phase: Phase, extra: Partial<MachineState> = {}, attempt: Partial<Attempt> = {}): MachineState {
  const a: Attempt = { number: 1, release: R1, ref: releaseRefOf(R1), source: 'A', target: 'B', startedAt: NOW - 1000, ...attempt };
  return { ...initialState(1), phase, attempt: a, attempts: 1, transitions: 3, ...extra };
}

const types = (effects: Effect[]) => effects.map((e) => e.type);

t.test('happy path: every phase does its work and ends committed', async (t) => {
  let s = initialState(1);
  const steps: [Event, Phase, string[]][] = [
    [{ type: 'CheckRequested' }, 'checking', ['check']],
    [{ type: 'ReleaseFound', release: R1, bootedSlot: 'A', bootedState: 'good' }, 'preparing', ['report', 'markBad']],
    [{ type: 'SlotMarkedBad' }, 'downloading', ['writeSlot']],
    [{ type: 'DownloadCompleted' }, 'verifying', ['verifySlot']],
    [{ type: 'SlotVerified' }, 'arming', ['armTrial']],
    [{ type: 'TrialArmed' }, 'rebooting', ['report', 'report', 'reboot']],
    [{ type: 'RebootIssued' }, 'rebooting', []],
    [{ type: 'BootedInto', slot: 'B' }, 'validating', ['runHealthChecks']],
    [{ type: 'HealthChecksPassed' }, 'committing', ['commit']],
    [{ type: 'Committed' }, 'idle', ['report']],
  ];
  for (const [event, phase, effects] of steps) {
    const r = transition(s, event, NOW);
    t.notOk(r.ignored, `${event.type} applies in ${s.phase}`);
    t.equal(r.state.phase, phase, `${event.type} → ${phase}`);
    t.same(types(r.effects), effects, `${event.type} effects`);
    s = r.state;
  }
  t.equal(s.committedSecurityVersion, 2, 'securityVersion raised at commit');
  t.same(s.installed.B?.id, releaseIdOf(R1));
  t.equal(s.history.length, 1);
  t.equal(s.history[0]!.outcome, 'succeeded');
  t.equal(s.attempt, null);
  const last = transition(withAttempt('committing'), { type: 'Committed' }, NOW).effects[0]!;
  t.match(last, { type: 'report', report: { kind: 'succeeded' } });
});

t.test('target is marked bad before writing, the booted slot is never a target', async (t) => {
  for (const booted of ['A', 'B'] as const) {
    const r = transition({ ...initialState(), phase: 'checking' }, { type: 'ReleaseFound', release: R1, bootedSlot: booted, bootedState: 'good' }, NOW);
    const mark = r.effects.find((e) => e.type === 'markBad');
    t.same(mark, { type: 'markBad', slot: booted === 'A' ? 'B' : 'A' });
    t.equal(r.state.attempt?.source, booted);
  }
});

t.test('shared failure path: before the trial the attempt fails, after it it rolls back', async (t) => {
  const err = { code: 'X_FAIL', message: 'boom' };
  const cases: [Phase, Event, Phase, string[]][] = [
    ['preparing', { type: 'StepFailed', error: err }, 'idle', ['report']],
    ['downloading', { type: 'DownloadFailed', error: err }, 'idle', ['report']],
    ['verifying', { type: 'VerificationFailed', error: err }, 'idle', ['report']],
    // from arming on a failed step is retried, never ends the attempt with a trial armed
    ['arming', { type: 'StepFailed', error: err }, 'arming', []],
    ['rebooting', { type: 'StepFailed', error: err }, 'rebooting', []],
    ['validating', { type: 'HealthCheckFailed', failures: [{ name: 'app', output: 'exit 3' }] }, 'rollingBack', ['markBadAndReboot']],
    ['validating', { type: 'StepFailed', error: err }, 'rollingBack', ['markBadAndReboot']],
    ['committing', { type: 'StepFailed', error: err }, 'committing', []],
    ['rollingBack', { type: 'StepFailed', error: err }, 'rollingBack', []],
    ['rebooting', { type: 'RollbackRequested', reason: 'operator' }, 'rollingBack', ['markBadAndReboot']],
  ];
  for (const [phase, event, to, effects] of cases) {
    const r = transition(withAttempt(phase), event, NOW);
    t.equal(r.state.phase, to, `${phase} + ${event.type} → ${to}`);
    t.same(types(r.effects), effects, `${phase} + ${event.type} effects`);
    if (to === 'idle') {
      t.equal(r.state.history.at(-1)?.outcome, 'failed');
      t.equal(r.state.committedSecurityVersion, 1, 'security version untouched on failure');
      t.same(r.state.rolledBack, [], 'a failed attempt is not a rollback');
    }
  }
});

t.test('a retryable download failure keeps the attempt for the next cycle', async (t) => {
  const r = transition(withAttempt('downloading'), { type: 'DownloadFailed', error: { code: 'INSTALL_HTTP', message: 'reset', retryable: true } }, NOW);
  t.equal(r.state.phase, 'downloading');
  t.match(r.effects, [{ type: 'report', report: { kind: 'downloadInterrupted' } }]);
  const again = transition(r.state, resume(r.state, 'A')!, NOW);
  t.same(types(again.effects), ['writeSlot'], 'restart resumes the download');
});

t.test('health-check rollback: failures carried to history and the report; release remembered', async (t) => {
  const failures = [{ name: 'app', output: 'exit 3: no database' }];
  let r = transition(withAttempt('validating'), { type: 'HealthCheckFailed', failures }, NOW);
  t.equal(r.state.attempt?.reason?.code, 'DAEMON_HEALTH_CHECK_FAILED');
  r = transition(r.state, { type: 'RebootIssued' }, NOW);
  t.equal(r.state.phase, 'rollingBack');
  r = transition(r.state, resume(r.state, 'A')!, NOW);
  t.equal(r.state.phase, 'rollingBack', 'back on the committed slot, the target is marked bad first');
  t.same(types(r.effects), ['markBad']);
  r = transition(r.state, { type: 'SlotMarkedBad' }, NOW);
  t.equal(r.state.phase, 'idle');
  const h = r.state.history.at(-1)!;
  t.equal(h.outcome, 'rolledBack');
  t.same(h.failures, failures);
  t.match(r.effects, [{ type: 'report', report: { kind: 'rolledBack', failures, reason: { code: 'DAEMON_HEALTH_CHECK_FAILED' } } }]);
  t.same(r.state.rolledBack, [releaseIdOf(R1)]);
  t.equal(r.state.committedSecurityVersion, 1);

  // the same release is not retried; a newer one is
  const checking = { ...r.state, phase: 'checking' as const };
  const same = transition(checking, { type: 'ReleaseFound', release: R1, bootedSlot: 'A', bootedState: 'good' }, NOW);
  t.equal(same.state.phase, 'idle');
  t.match(same.state.lastCheck?.detail, /rolled back before/);
  const newer = transition(checking, { type: 'ReleaseFound', release: release('1.1.1', 2, 'ef'.repeat(32)), bootedSlot: 'A', bootedState: 'good' }, NOW);
  t.equal(newer.state.phase, 'preparing');
});

t.test('releases below the committed securityVersion or already running are skipped', async (t) => {
  const s: MachineState = { ...initialState(5), phase: 'checking' };
  const low = transition(s, { type: 'ReleaseFound', release: release('2.0.0', 4), bootedSlot: 'A', bootedState: 'good' }, NOW);
  t.equal(low.state.phase, 'idle');
  t.match(low.state.lastCheck?.detail, /below the committed 5/);
  const running = { ...s, installed: { A: releaseRefOf(R1) } };
  const up = transition(running, { type: 'ReleaseFound', release: R1, bootedSlot: 'A', bootedState: 'good' }, NOW);
  t.match(up.state.lastCheck?.detail, /up to date/);
  const other = transition(running, { type: 'ReleaseFound', release: R1, bootedSlot: 'B', bootedState: 'good' }, NOW);
  t.match(other.state.lastCheck?.detail, /below/, 'release 1.1.0 (sv 2) < 5');
});

t.test('committed securityVersion is never lowered', async (t) => {
  const r = transition(withAttempt('committing', { committedSecurityVersion: 9 }), { type: 'Committed' }, NOW);
  t.equal(r.state.committedSecurityVersion, 9);
});

t.test('events that do not apply are ignored without changing state', async (t) => {
  const all: Event[] = [
    { type: 'CheckRequested' }, { type: 'ReleaseFound', release: R1, bootedSlot: 'A', bootedState: 'good' }, { type: 'NoReleaseFound', reason: 'x' },
    { type: 'CheckFailed', error: { code: 'E', message: 'm' } }, { type: 'SlotMarkedBad' }, { type: 'DownloadCompleted' },
    { type: 'DownloadFailed', error: { code: 'E', message: 'm' } }, { type: 'SlotVerified' }, { type: 'VerificationFailed', error: { code: 'E', message: 'm' } },
    { type: 'TrialArmed' }, { type: 'RebootIssued' }, { type: 'RebootDeferred', reason: 'window' }, { type: 'BootedInto', slot: 'B' },
    { type: 'HealthChecksPassed' }, { type: 'HealthChecksPassed', warnings: [{ name: 'w', output: 'o' }] }, { type: 'HealthCheckFailed', failures: [] }, { type: 'Committed' }, { type: 'RollbackRequested', reason: 'r' },
    { type: 'Restarted' }, { type: 'StepFailed', error: { code: 'E', message: 'm' } }, { type: 'Reported' },
  ];
  const applies: Record<string, Phase[]> = {
    CheckRequested: ['idle'], ReleaseFound: ['checking'], NoReleaseFound: ['checking'], CheckFailed: ['checking'],
    SlotMarkedBad: ['preparing', 'rollingBack'], DownloadCompleted: ['downloading'], DownloadFailed: ['downloading'], SlotVerified: ['verifying'],
    VerificationFailed: ['verifying'], TrialArmed: ['arming'], RebootIssued: ['rebooting', 'rollingBack'], RebootDeferred: ['rebooting'],
    BootedInto: ['arming', 'rebooting', 'validating', 'committing', 'rollingBack'], HealthChecksPassed: ['validating'],
    HealthCheckFailed: ['validating'], Committed: ['committing'], RollbackRequested: ['validating', 'rebooting'],
    Restarted: ['checking', 'preparing', 'downloading', 'verifying', 'arming', 'rebooting', 'rollingBack'],
    StepFailed: ['preparing', 'downloading', 'verifying', 'arming', 'rebooting', 'validating', 'committing', 'rollingBack'], Reported: [],
  };
  for (const phase of ['idle', 'checking', 'preparing', 'downloading', 'verifying', 'arming', 'rebooting', 'validating', 'committing', 'rollingBack'] as Phase[]) {
    const s = phase === 'idle' || phase === 'checking' ? { ...initialState(), phase } : withAttempt(phase);
    for (const e of all) {
      const r = transition(s, e, NOW);
      const expected = applies[e.type]!.includes(phase);
      t.equal(!r.ignored, expected, `${phase} + ${e.type} ${expected ? 'applies' : 'is ignored'}`);
      if (r.ignored) t.equal(r.state, s);
    }
  }
});

t.test('transition counter: a looping attempt is abandoned with DAEMON_STATE_LOOP', async (t) => {
  let s = withAttempt('validating', { transitions: 0 });
  let r = transition(s, { type: 'BootedInto', slot: 'B' }, NOW, { maxTransitions: 5 });
  for (let i = 0; i < 4; i++) {
    t.equal(r.state.phase, 'validating');
    s = r.state;
    r = transition(s, { type: 'BootedInto', slot: 'B' }, NOW, { maxTransitions: 5 });
  }
  t.equal(r.state.transitions, 5);
  r = transition(r.state, { type: 'BootedInto', slot: 'B' }, NOW, { maxTransitions: 5 });
  t.equal(r.state.phase, 'idle');
  t.same(types(r.effects), ['abandon', 'report']);
  t.same(r.effects[0], { type: 'abandon', slot: 'B' }, 'only the target is touched');
  t.equal(r.state.history.at(-1)?.reason?.code, 'DAEMON_STATE_LOOP');
  t.equal(r.state.history.at(-1)?.outcome, 'failed');
  t.equal(r.state.committedSecurityVersion, 1);
  t.equal(MAX_TRANSITIONS, 100);
  // a reboot deferral does not count
  const d = transition(withAttempt('rebooting', { transitions: 7 }), { type: 'RebootDeferred', reason: 'lock held' }, NOW);
  t.equal(d.state.transitions, 7);
});

t.test('history is bounded', async (t) => {
  let s = initialState();
  for (let i = 0; i < 60; i++) {
    s = transition({ ...s, phase: 'preparing', attempt: { number: i + 1, release: R1, ref: releaseRefOf(R1), source: 'A', target: 'B', startedAt: NOW } }, { type: 'StepFailed', error: { code: 'E', message: 'm' } }, NOW).state;
  }
  t.equal(s.history.length, 50);
  t.equal(s.history[0]!.attempt, 11);
});

t.test('resume table', async (t) => {
  const trial = { state: 'trial' as const, triesLeft: 2, primary: true };
  const fellBack = { state: 'bad' as const, primary: false };
  const rows: [Phase, 'A' | 'B', typeof trial | typeof fellBack | undefined, Event | null, Phase | null, string[] | null][] = [
    ['idle', 'A', undefined, null, null, null],
    ['preparing', 'A', undefined, { type: 'Restarted' }, 'preparing', ['markBad']],
    ['downloading', 'A', undefined, { type: 'Restarted' }, 'downloading', ['writeSlot']],
    ['verifying', 'A', undefined, { type: 'Restarted' }, 'verifying', ['verifySlot']],
    ['arming', 'A', undefined, { type: 'Restarted' }, 'arming', ['armTrial']],
    ['arming', 'B', undefined, { type: 'BootedInto', slot: 'B' }, 'validating', ['runHealthChecks']],
    ['rebooting', 'B', undefined, { type: 'BootedInto', slot: 'B' }, 'validating', ['runHealthChecks']],
    ['rebooting', 'A', trial, { type: 'Restarted' }, 'rebooting', ['reboot']],
    ['rebooting', 'A', fellBack, { type: 'BootedInto', slot: 'A' }, 'rollingBack', ['markBad']],
    ['validating', 'B', undefined, { type: 'BootedInto', slot: 'B' }, 'validating', ['runHealthChecks']],
    ['validating', 'A', fellBack, { type: 'BootedInto', slot: 'A' }, 'rollingBack', ['markBad']],
    ['committing', 'B', undefined, { type: 'BootedInto', slot: 'B' }, 'committing', ['commit']],
    ['committing', 'A', undefined, { type: 'BootedInto', slot: 'A' }, 'rollingBack', ['markBad']],
    ['rollingBack', 'A', undefined, { type: 'BootedInto', slot: 'A' }, 'rollingBack', ['markBad']],
    ['rollingBack', 'B', undefined, { type: 'Restarted' }, 'rollingBack', ['markBadAndReboot']],
  ];
  for (const [phase, booted, target, event, to, effects] of rows) {
    const rec = phase === 'idle' ? initialState() : withAttempt(phase);
    const ev = resume(rec, booted, target);
    t.same(ev, event, `resume(${phase}, booted ${booted}${target ? `, target ${target.state}` : ''})`);
    if (!ev) continue;
    const r = transition(rec, ev, NOW);
    t.equal(r.state.phase, to, `${phase} → ${to}`);
    t.same(types(r.effects), effects);
  }
  // the bootloader fell back: the target is marked bad, then it is reported as a rollback with the reason
  const fb = transition(withAttempt('rebooting'), resume(withAttempt('rebooting'), 'A', fellBack)!, NOW);
  t.same(fb.effects, [{ type: 'markBad', slot: 'B' }], 'the unconfirmed trial slot is marked bad before the attempt ends');
  const r = transition(fb.state, { type: 'SlotMarkedBad' }, NOW);
  t.equal(r.state.phase, 'idle');
  t.match(r.state.history.at(-1), { outcome: 'rolledBack', reason: { code: 'DAEMON_TRIAL_NOT_CONFIRMED', message: /trial boot never confirmed/ } });
  t.match(r.effects, [{ type: 'report', report: { kind: 'rolledBack' } }]);
  t.same(resume({ ...initialState(), phase: 'checking' }, 'A'), { type: 'Restarted' });
  t.equal(transition({ ...initialState(), phase: 'checking' }, { type: 'Restarted' }, NOW).state.phase, 'idle');
});

// ---------------------------------------------------------------------------------------------
// The bootloader ignored the environment: a real reboot (boot id changed since arming) into the
// source slot, on a backend whose tries are visible, with the target's state exactly as armed.

const ARMED: SlotBootState = { state: 'trial', triesLeft: 3, primary: true };
const armedAttempt = (phase: Phase, extra: Partial<MachineState> = {}) => withAttempt(phase, extra, { armed: { bootId: 'boot-1', target: ARMED } });

t.test('TrialArmed records the armed state and boot id with the rebooting phase', async (t) => {
  const r = transition(withAttempt('arming'), { type: 'TrialArmed', armed: { bootId: 'boot-1', target: ARMED } }, NOW);
  t.equal(r.state.phase, 'rebooting');
  t.same(r.state.attempt?.armed, { bootId: 'boot-1', target: ARMED });
  t.same(types(r.effects), ['report', 'report', 'reboot']);
  // re-armed after a restart without evidence: the stale record is dropped, nothing is claimed later
  const again = transition({ ...armedAttempt('arming') }, { type: 'TrialArmed' }, NOW);
  t.equal(again.state.attempt?.armed, undefined);
});

t.test('bootloaderIgnoredTrial: only unambiguous evidence', async (t) => {
  const a = armedAttempt('rebooting').attempt!;
  const ev = (o: Partial<BootEvidence> = {}): BootEvidence => ({ bootId: 'boot-2', target: { ...ARMED }, triesVisible: true, ...o });
  t.ok(bootloaderIgnoredTrial(a, 'A', ev()), 'rebooted into the source, trial untouched');
  const not: [string, Attempt, 'A' | 'B', BootEvidence | undefined][] = [
    ['no evidence', a, 'A', undefined],
    ['same boot (daemon restart, no reboot)', a, 'A', ev({ bootId: 'boot-1' })],
    ['boot id unreadable now', a, 'A', { target: ARMED, triesVisible: true }],
    ['boot id unknown when armed', { ...a, armed: { target: ARMED } }, 'A', ev()],
    ['no armed record (older daemon, or armed before a power cut)', { ...a, armed: undefined } as Attempt, 'A', ev()],
    ['tries not visible (rpi-tryboot, custom)', a, 'A', ev({ triesVisible: false })],
    ['target state unreadable', a, 'A', { bootId: 'boot-2', triesVisible: true }],
    ['a try was consumed', a, 'A', ev({ target: { state: 'trial', triesLeft: 2, primary: true } })],
    ['tries drained (fell back)', a, 'A', ev({ target: { state: 'trial', triesLeft: 0, primary: false } })],
    ['target bad', a, 'A', ev({ target: { state: 'bad', primary: false } })],
    ['target no longer primary', a, 'A', ev({ target: { state: 'trial', triesLeft: 3, primary: false } })],
    ['booted the target', a, 'B', ev()],
    ['armed state was not a primary trial', { ...a, armed: { bootId: 'boot-1', target: { state: 'good', primary: true } } }, 'A', ev({ target: { state: 'good', primary: true } })],
  ];
  for (const [why, att, booted, e] of not) t.notOk(bootloaderIgnoredTrial(att, booted, e), why);
});

t.test('resume after a real reboot the bootloader ignored: distinct code, target marked bad, outcome failed', async (t) => {
  const rec = armedAttempt('rebooting', { transitions: 5 });
  const boot = { bootId: 'boot-2', triesVisible: true };
  const ev = resume(rec, 'A', { ...ARMED }, boot);
  t.same(ev, { type: 'BootedInto', slot: 'A', evidence: { ...boot, target: ARMED } });
  let r = transition(rec, ev!, NOW);
  t.equal(r.state.phase, 'rollingBack');
  t.same(r.effects, [{ type: 'markBad', slot: 'B' }], 'the target is marked bad before the attempt ends; the source is not touched');
  t.equal(r.state.attempt?.reason?.code, BOOTLOADER_IGNORED_ENV);
  t.equal(r.state.attempt?.endsAs, 'failed');
  // a power cut before the target was marked bad: the saved record resumes to the same markBad
  const again = resume(r.state, 'A', { ...ARMED }, boot);
  t.same(again, { type: 'BootedInto', slot: 'A' });
  t.same(transition(r.state, again!, NOW).effects, [{ type: 'markBad', slot: 'B' }]);
  r = transition(r.state, { type: 'SlotMarkedBad' }, NOW);
  t.equal(r.state.phase, 'idle');
  const h = r.state.history.at(-1)!;
  t.equal(h.outcome, 'failed', 'not a rollback: the release never ran');
  t.equal(h.reason?.code, BOOTLOADER_IGNORED_ENV);
  t.match(h.reason?.message, /did not read the boot environment slotflip wrote.*device configuration fault.*fw_env\.config.*\/dev\/mtdN.*slotflip doctor/);
  t.match(r.effects, [{ type: 'report', report: { kind: 'failed', reason: { code: BOOTLOADER_IGNORED_ENV } } }]);
  t.equal(r.state.committedSecurityVersion, 1);
  t.ok(DEVICE_FAULT_CODES.includes(BOOTLOADER_IGNORED_ENV));
  // not retried automatically (it would only reboot into the same ignored trial); a newer one is tried
  t.same(r.state.rolledBack, [releaseIdOf(R1)]);
  const checking = { ...r.state, phase: 'checking' as const };
  const same = transition(checking, { type: 'ReleaseFound', release: R1, bootedSlot: 'A', bootedState: 'good' }, NOW);
  t.equal(same.state.phase, 'idle');
  t.match(same.state.lastCheck?.detail, /bootloader ignored .* trial before \(DAEMON_BOOTLOADER_IGNORED_ENV\).*slotflip doctor/);
  t.equal(transition(checking, { type: 'ReleaseFound', release: release('1.1.1', 2, 'ef'.repeat(32)), bootedSlot: 'A', bootedState: 'good' }, NOW).state.phase, 'preparing');
  // marking bad fails: the attempt is kept and the step retried (the trial must not stay armed)
  const broken = transition(transition(rec, ev!, NOW).state, { type: 'StepFailed', error: { code: 'HAL_BOOTENV_WRITE', message: 'x' } }, NOW);
  t.equal(broken.state.phase, 'rollingBack');
  t.equal(broken.state.attempt?.stepFailures, 1);
  t.same(resume(broken.state, 'A'), { type: 'BootedInto', slot: 'A' }, 'a restart retries the mark-bad');
});

t.test('resume: the other rebooting/source cases are unchanged', async (t) => {
  const rec = armedAttempt('rebooting');
  const visible = { triesVisible: true };
  // daemon restart without a reboot: same boot id → reboot again (the reboot never happened)
  t.same(resume(rec, 'A', { ...ARMED }, { ...visible, bootId: 'boot-1' }), { type: 'Restarted' });
  // boot id unknown now → as before
  t.same(resume(rec, 'A', { ...ARMED }, visible), { type: 'Restarted' });
  // tries not visible (rpi-tryboot) → as before
  t.same(resume(rec, 'A', { ...ARMED }, { bootId: 'boot-2', triesVisible: false }), { type: 'Restarted' });
  // tries drained: the bootloader fell back → the existing rollback path
  const drained = { state: 'trial' as const, triesLeft: 0, primary: false };
  const fb = resume(rec, 'A', drained, { ...visible, bootId: 'boot-2' });
  t.same(fb, { type: 'BootedInto', slot: 'A' });
  let r = transition(rec, fb!, NOW);
  t.equal(r.state.attempt?.reason?.code, 'DAEMON_TRIAL_NOT_CONFIRMED');
  r = transition(r.state, { type: 'SlotMarkedBad' }, NOW);
  t.equal(r.state.history.at(-1)?.outcome, 'rolledBack');
  // booted the target: validate
  t.same(resume(rec, 'B', { state: 'trial', triesLeft: 2, primary: true }, { ...visible, bootId: 'boot-2' }), { type: 'BootedInto', slot: 'B' });
  // only the rebooting phase may claim it: validating means the target booted (the bootloader read it)
  const val = armedAttempt('validating');
  t.same(resume(val, 'A', { ...ARMED }, { ...visible, bootId: 'boot-2' }), { type: 'BootedInto', slot: 'A' });
  const ev: Event = { type: 'BootedInto', slot: 'A', evidence: { bootId: 'boot-2', target: ARMED, triesVisible: true } };
  t.equal(transition(val, ev, NOW).state.attempt?.reason?.code, 'DAEMON_TRIAL_NOT_CONFIRMED');
  t.equal(transition(armedAttempt('arming'), ev, NOW).state.attempt?.reason?.code, 'DAEMON_TRIAL_NOT_CONFIRMED');
  // the machine re-checks the evidence itself: a BootedInto whose evidence does not hold is a fallback
  const weak: Event = { type: 'BootedInto', slot: 'A', evidence: { bootId: 'boot-1', target: ARMED, triesVisible: true } };
  t.equal(transition(rec, weak, NOW).state.attempt?.reason?.code, 'DAEMON_TRIAL_NOT_CONFIRMED');
});

t.test('an update starts only from a good booted slot', async (t) => {
  const checking = { ...initialState(1), phase: 'checking' as const };
  for (const bootedState of ['trial', 'bad'] as const) {
    const r = transition(checking, { type: 'ReleaseFound', release: R1, bootedSlot: 'B', bootedState }, NOW);
    t.equal(r.state.phase, 'idle', `booted ${bootedState}: no attempt`);
    t.same(r.effects, [], `booted ${bootedState}: nothing marked bad, nothing written`);
    t.equal(r.state.lastCheck?.result, 'failed');
    t.match(r.state.lastCheck?.detail, new RegExp(`^${SOURCE_NOT_GOOD}: booted slot B reads ${bootedState}`));
  }
  t.equal(transition(checking, { type: 'ReleaseFound', release: R1, bootedSlot: 'B', bootedState: 'good' }, NOW).state.phase, 'preparing');
});

t.test('a failed step after arming is retried with backoff, then disarmed; the release is not retried', async (t) => {
  const err = { code: 'DAEMON_REBOOT_FAILED', message: 'reboot: exit 1' };
  let s = withAttempt('rebooting', {}, { trialReboots: 1 });
  const delays: number[] = [];
  for (let n = 1; n <= MAX_STEP_RETRIES; n++) {
    const r = transition(s, { type: 'StepFailed', error: err }, NOW);
    t.equal(r.state.phase, 'rebooting', `failure ${n}: still rebooting`);
    t.same(r.effects, [], `failure ${n}: nothing ended, nothing disarmed`);
    t.equal(r.state.attempt?.stepFailures, n);
    t.equal(r.state.attempt?.trialReboots, 0, 'the reboot that failed is given back');
    delays.push(r.state.attempt!.retryAt! - NOW);
    // the retry: a restart issues the reboot again
    const again = transition(r.state, { type: 'Restarted' }, NOW);
    t.same(types(again.effects), ['reboot']);
    s = again.state;
  }
  t.same(delays, [1, 2, 3, 4, 5].map((n) => stepRetryDelay(n)), 'exponential backoff');
  t.ok(delays.every((d, i) => i === 0 || d > delays[i - 1]!));
  // one more: give up, but disarm first — the booted slot is still the source
  const gaveUp = transition(s, { type: 'StepFailed', error: err }, NOW);
  t.equal(gaveUp.state.phase, 'rollingBack');
  t.same(gaveUp.effects, [{ type: 'markBad', slot: 'B' }]);
  t.equal(gaveUp.state.attempt?.stepFailures, undefined, 'a new phase starts with a clean count');
  const done = transition(gaveUp.state, { type: 'SlotMarkedBad' }, NOW);
  t.equal(done.state.phase, 'idle');
  t.match(done.state.history.at(-1), { outcome: 'failed', reason: { code: 'DAEMON_REBOOT_FAILED' } });
  t.same(done.state.rolledBack, [releaseIdOf(R1)], 'installed but never tried: not retried until a newer release');
  const checking = { ...done.state, phase: 'checking' as const };
  t.equal(transition(checking, { type: 'ReleaseFound', release: R1, bootedSlot: 'A', bootedState: 'good' }, NOW).state.phase, 'idle');
});

t.test('a rollback whose mark-bad or reboot fails never ends while the failed slot may boot', async (t) => {
  let s = withAttempt('rollingBack', {}, { reason: { code: 'DAEMON_HEALTH_CHECK_FAILED', message: 'app' } });
  for (let n = 1; n <= MAX_STEP_RETRIES * 3; n++) {
    const r = transition(s, { type: 'StepFailed', error: { code: 'HAL_BOOTENV_WRITE', message: 'EIO' } }, NOW);
    t.equal(r.state.phase, 'rollingBack');
    s = r.state;
  }
  t.equal(s.attempt?.stepFailures, MAX_STEP_RETRIES * 3);
  t.ok(s.attempt!.retryAt! - NOW <= STEP_RETRY_MAX_MS, 'backoff is capped');
  // still booted in the target: a restart marks it bad and reboots again
  t.same(resume(s, 'B'), { type: 'Restarted' });
  t.same(types(transition(s, { type: 'Restarted' }, NOW).effects), ['markBadAndReboot']);
  // back on the source: mark bad (idempotent), then the attempt ends rolledBack
  const back = transition(s, resume(s, 'A')!, NOW);
  t.same(back.effects, [{ type: 'markBad', slot: 'B' }]);
  t.equal(transition(back.state, { type: 'SlotMarkedBad' }, NOW).state.history.at(-1)?.outcome, 'rolledBack');
});

t.test('a commit that keeps failing rolls back; it never leaves the target half-confirmed', async (t) => {
  let s = withAttempt('committing');
  for (let n = 1; n <= MAX_STEP_RETRIES; n++) s = transition(s, { type: 'StepFailed', error: { code: 'HAL_BOOTENV_WRITE', message: 'EIO' } }, NOW).state;
  t.equal(s.phase, 'committing');
  t.same(resume(s, 'B'), { type: 'BootedInto', slot: 'B' }, 'a restart re-commits');
  const r = transition(s, { type: 'StepFailed', error: { code: 'HAL_BOOTENV_WRITE', message: 'EIO' } }, NOW);
  t.equal(r.state.phase, 'rollingBack');
  t.same(types(r.effects), ['markBadAndReboot']);
  t.equal(r.state.committedSecurityVersion, 1, 'nothing raised');
});

t.test('a payload corrupt at every mirror is not retried until an operator asks', async (t) => {
  const corrupt = { code: 'INSTALL_PAYLOAD_CORRUPT', message: 'chunk 3 corrupt at every mirror', retryable: false };
  const r = transition(withAttempt('downloading'), { type: 'DownloadFailed', error: corrupt }, NOW);
  t.match(r.state.history.at(-1), { outcome: 'failed', reason: { code: 'INSTALL_PAYLOAD_CORRUPT' } });
  t.same(r.state.rolledBack, [releaseIdOf(R1)]);
  const checking = { ...r.state, phase: 'checking' as const };
  const again = transition(checking, { type: 'ReleaseFound', release: R1, bootedSlot: 'A', bootedState: 'good' }, NOW);
  t.equal(again.state.phase, 'idle');
  t.match(again.state.lastCheck?.detail, /failed before \(INSTALL_PAYLOAD_CORRUPT\).*slotflip check --retry/);
  // an ordinary download failure is retried as before
  const plain = transition(withAttempt('downloading'), { type: 'DownloadFailed', error: { code: 'INSTALL_SLOT_IO', message: 'EIO' } }, NOW);
  t.same(plain.state.rolledBack, []);
  // the operator's --retry clears failed releases, never rolled-back ones
  const rolled = { ...r.state, rolledBack: [...r.state.rolledBack, 'other@x'], history: [...r.state.history, { ...r.state.history.at(-1)!, attempt: 9, release: { ...r.state.history.at(-1)!.release, id: 'other@x' }, outcome: 'rolledBack' as const }] };
  const f = forgetFailed(rolled);
  t.same(f.cleared, [releaseIdOf(R1)]);
  t.same(f.state.rolledBack, ['other@x']);
  t.equal(transition({ ...f.state, phase: 'checking' }, { type: 'ReleaseFound', release: R1, bootedSlot: 'A', bootedState: 'good' }, NOW).state.phase, 'preparing');
});

t.test('the install\'s transfer figures ride from DownloadCompleted to the UpdateInstalled report only', async (t) => {
  const transfer = { method: 'delta' as const, imageBytes: 100, reusedBytes: 90, downloadedBytes: 7, requests: 2, seedMismatches: 0 };
  const d = transition(withAttempt('downloading'), { type: 'DownloadCompleted', transfer }, NOW);
  t.equal(d.state.phase, 'verifying');
  t.same(d.state.attempt?.transfer, transfer, 'kept in the attempt (persisted with the record)');
  const v = transition(d.state, { type: 'SlotVerified' }, NOW);
  const a = transition(v.state, { type: 'TrialArmed' }, NOW);
  const reports = a.effects.filter((e): e is Extract<Effect, { type: 'report' }> => e.type === 'report').map((e) => e.report);
  t.same(reports.map((r) => r.kind), ['installed', 'rebooting']);
  t.same(reports[0]!.transfer, transfer, 'UpdateInstalled says how the image arrived');
  t.equal(reports[1]!.transfer, undefined, 'other reports do not repeat it');
  const plain = transition(withAttempt('downloading'), { type: 'DownloadCompleted' }, NOW);
  t.equal(plain.state.attempt?.transfer, undefined, 'an installer that reports nothing leaves nothing');
});

/**
 * `required: false` (wanted) health checks that fail on a boot whose required checks pass: the
 * machine commits (correct) and carries the failures as `warnings` in the record until the commit,
 * then into history and the UpdateCommitted report; `status` and `history` print them. A rollback
 * keeps reporting its failures as before.
 */
import t from 'tap';
import { pino } from 'pino';
import { transition, initialState, releaseRefOf, MAX_WARNINGS, type Attempt, type MachineState, type Phase, type HistoryEntry } from '../../daemon/machine.js';
import { Agent, type AgentDeps } from '../../daemon/agent.js';
import { MemoryStateStore } from '../../daemon/state-store.js';
import type { BootControl, SlotBootState, SlotName } from '../../hal/boot-control.js';
import type { Release } from '../../manifests/types.js';
import { formatStatus } from '../../daemon/commands/status.js';
import { formatHistory } from '../../daemon/commands/history.js';

const NOW = 1_700_000_000_000;
const R1 = {
  targetName: 'releases/1.1.0/image.zst', length: 100, hashes: { sha256: 'cd'.repeat(32) },
  custom: { slotflip: 1, hardware: ['acme,board'], version: '1.1.0', securityVersion: 2, channel: 'stable', payload: { compression: 'zstd', size: 1024, sha256: 'ab'.repeat(32), chunkSize: 512, chunks: [] } },
} as unknown as Release;

function withAttempt(phase: Phase, attempt: Partial<Attempt> = {}): MachineState {
  const a: Attempt = { number: 1, release: R1, ref: releaseRefOf(R1), source: 'A', target: 'B', startedAt: NOW - 1000, ...attempt };
  return { ...initialState(1), phase, attempt: a, attempts: 1, transitions: 3 };
}

const W = [{ name: 'disk-space', output: 'exit 1 (expected 0)\nonly 3% free' }];

t.test('machine: warnings ride from HealthChecksPassed through the record to history and the report', async (t) => {
  const v = transition(withAttempt('validating'), { type: 'HealthChecksPassed', warnings: W }, NOW);
  t.equal(v.state.phase, 'committing', 'a failed wanted check does not stop the commit');
  t.same(v.effects, [{ type: 'commit', slot: 'B' }]);
  t.same(v.state.attempt?.warnings, W, 'kept in the record saved before the commit (a power cut here keeps them)');
  const c = transition(v.state, { type: 'Committed' }, NOW + 5);
  t.equal(c.state.phase, 'idle');
  t.match(c.state.history.at(-1), { outcome: 'succeeded', warnings: W });
  t.notOk(c.state.history.at(-1)?.reason, 'a warning is not a reason');
  t.match(c.effects, [{ type: 'report', report: { kind: 'succeeded', warnings: W } }]);
  t.match(c.state.pendingReports, [{ kind: 'succeeded', warnings: W }], 'and in the report kept for the outbox');

  // a restart in committing (power cut after the save) re-commits with the saved warnings
  const again = transition(v.state, { type: 'BootedInto', slot: 'B' }, NOW + 1);
  t.same(again.effects, [{ type: 'commit', slot: 'B' }]);
  t.match(transition(again.state, { type: 'Committed' }, NOW + 2).state.history.at(-1), { warnings: W });
});

t.test('machine: no warnings, no field; bounded; a re-validation replaces them; manual mark-good has none', async (t) => {
  const clean = transition(transition(withAttempt('validating'), { type: 'HealthChecksPassed' }, NOW).state, { type: 'Committed' }, NOW);
  t.notOk('warnings' in clean.state.history.at(-1)!, 'a clean boot carries no warnings field');
  const many = Array.from({ length: MAX_WARNINGS + 5 }, (_, i) => ({ name: `w${i}`, output: 'x', required: false }));
  const capped = transition(withAttempt('validating'), { type: 'HealthChecksPassed', warnings: many }, NOW);
  t.equal(capped.state.attempt?.warnings?.length, MAX_WARNINGS, `at most ${MAX_WARNINGS}`);
  t.same(capped.state.attempt?.warnings?.[0], { name: 'w0', output: 'x' }, 'name and output only');
  const old = withAttempt('validating', { warnings: [{ name: 'stale', output: 'from an earlier validation' }] });
  t.notOk(transition(old, { type: 'HealthChecksPassed' }, NOW).state.attempt?.warnings, 'a passing re-validation without warnings clears them');
  t.notOk(transition(old, { type: 'HealthChecksPassed', warnings: [] }, NOW).state.attempt?.warnings);
  t.ok(transition(withAttempt('idle'), { type: 'HealthChecksPassed', warnings: W }, NOW).ignored, 'outside validating: ignored');
});

t.test('machine: a rollback reports its failures, not warnings', async (t) => {
  const failures = [{ name: 'app', output: 'exit 3', required: true }, { name: 'disk-space', output: 'low', required: false }];
  let s = transition(withAttempt('validating'), { type: 'HealthCheckFailed', failures }, NOW).state;
  s = transition(s, { type: 'BootedInto', slot: 'A' }, NOW).state;
  const r = transition(s, { type: 'SlotMarkedBad' }, NOW);
  t.match(r.state.history.at(-1), { outcome: 'rolledBack', failures });
  t.notOk(r.state.history.at(-1)?.warnings);
});

function fakeBoard(): BootControl {
  const st: Record<SlotName, SlotBootState> = { A: { state: 'good', primary: false }, B: { state: 'trial', primary: true, triesLeft: 2 } };
  return {
    backend: 'emulated', bootedSlot: async () => 'B', slotState: async (s) => st[s],
    markBad: async () => undefined, armTrial: async () => undefined,
    commit: async (s) => { st[s] = { state: 'good', primary: true }; },
  };
}

t.test('agent: the health runner\'s non-fatal failures become warnings in UpdateCommitted', async (t) => {
  const appended: Record<string, unknown>[] = [];
  const store = new MemoryStateStore({ ...withAttempt('rebooting'), transitions: 4 });
  const deps: AgentDeps = {
    identity: { deviceId: 'd1', hardware: 'acme,board', channel: 'stable' },
    bootControl: fakeBoard(),
    slots: {} as AgentDeps['slots'],
    releases: { releases: async () => [] },
    installer: { write: async () => undefined, verify: async () => undefined },
    health: { run: async () => ({ ok: true, failures: [{ name: 'disk-space', output: 'only 3% free', required: false }] }) },
    store, reboot: async () => undefined, now: () => NOW, log: pino({ level: 'silent' }),
    outbox: { append: async (e) => { appended.push(e); } },
  };
  const r = await new Agent(deps).runOnce({ check: false });
  t.match(r.finished, [{ outcome: 'succeeded', warnings: [{ name: 'disk-space', output: 'only 3% free' }] }]);
  const ev = appended.find((e) => e['type'] === 'UpdateCommitted');
  t.same(ev?.['warnings'], [{ name: 'disk-space', output: 'only 3% free' }], 'UpdateCommitted carries { name, output }');
  t.match((await store.load()).history.at(-1), { warnings: [{ name: 'disk-space' }] });
});

t.test('status and history print the warnings', async (t) => {
  const entry: HistoryEntry = { attempt: 1, release: releaseRefOf(R1), source: 'A', target: 'B', outcome: 'succeeded', startedAt: NOW, endedAt: NOW + 1, warnings: W };
  const out = formatStatus({
    deviceId: 'd1', hardware: 'acme,board', channel: 'stable', phase: 'idle', bootedSlot: 'B', committedSecurityVersion: 2,
    slots: [{ slot: 'A', booted: false, boot: { state: 'good', primary: false } }, { slot: 'B', booted: true, boot: { state: 'good', primary: true } }],
    lastResult: entry,
  });
  t.match(out, /last result: succeeded 1\.1\.0 with 1 warning\n  warning disk-space: exit 1 \(expected 0\) \| only 3% free/);
  const hist = formatHistory([entry, { ...entry, attempt: 2, outcome: 'rolledBack', warnings: undefined, reason: { code: 'DAEMON_HEALTH_CHECK_FAILED', message: 'health checks failed: app' }, failures: [{ name: 'app', output: 'exit 3' }] } as HistoryEntry]);
  t.match(hist, /#1 .* succeeded 1\.1\.0 .*\n    warning disk-space: exit 1 \(expected 0\) \| only 3% free\n#2 .* rolledBack .*DAEMON_HEALTH_CHECK_FAILED.*\n    app: exit 3$/);
  t.equal(formatHistory([]), 'no update attempts yet');
});

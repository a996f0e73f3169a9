/**
 * Health-check timing and settling (issue 22, sequences 5 and 6):
 * - the deadline is measured on a monotonic clock: a forward wall-clock step (NTP on a board without
 *   an RTC) in the middle of the checks leaves the later checks their budget;
 * - `settle` waits for systemd to finish starting the system, then reads boot-complete.target;
 *   `slotflip health` (settle: false) never waits for itself.
 */
import t from 'tap';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runHealthChecks, type HealthCheckConfig, type HealthConfig } from '../../daemon/health.js';
import type { ToolResult, ToolRunner } from '../../hal/exec.js';

const ok = (stdout = ''): ToolResult => ({ code: 0, signal: null, stdout, stderr: '', timedOut: false }) as ToolResult;
const DAY = 86_400_000;

async function twoDropIns(dir: string): Promise<string> {
  const req = join(dir, 'required.d');
  await mkdir(req, { recursive: true });
  for (const n of ['10-first', '20-second']) {
    await writeFile(join(req, n), '#!/bin/sh\nexit 0\n');
    await chmod(join(req, n), 0o755);
  }
  return req;
}

/** A runner whose first call steps the wall clock 30 days forward (what NTP does on an RTC-less board). */
function steppingRunner(budgets: number[]): ToolRunner {
  return {
    async run(_cmd, _args, options) {
      budgets.push(options?.timeoutMs ?? -1);
      if (budgets.length === 1) {
        const real = Date.now.bind(Date);
        Date.now = () => real() + 30 * DAY;
      }
      return ok('fine');
    },
  };
}

t.test('a forward wall-clock step during the checks leaves the later checks their budget', async (t) => {
  const realNow = Date.now;
  t.teardown(() => {
    Date.now = realNow;
  });
  const required = await twoDropIns(t.testdir());
  const config: HealthConfig = { deadlineSeconds: 120, checks: [], dropInDirs: { required } };
  const budgets: number[] = [];
  const r = await runHealthChecks(config, { runner: steppingRunner(budgets) });
  t.equal(budgets.length, 2, 'both drop-ins ran');
  t.ok(budgets[1]! > 100_000, `the check after the step still had ${budgets[1]} ms of the 120 s deadline`);
  t.equal(r.ok, true, 'healthy boot stays healthy');
  t.equal(r.deadlineExceeded, false);
  t.ok(r.results.every((x) => x.durationMs < 60_000), 'durations are not inflated by the step');
});

t.test('the same step with a wall clock as the timer is what the monotonic clock prevents', async (t) => {
  // shows the test above can fail: measuring with Date.now (the old behaviour) starves the second check
  const realNow = Date.now;
  t.teardown(() => {
    Date.now = realNow;
  });
  const required = await twoDropIns(t.testdir());
  const budgets: number[] = [];
  const r = await runHealthChecks({ deadlineSeconds: 120, checks: [], dropInDirs: { required } }, { runner: steppingRunner(budgets), clock: () => Date.now() });
  t.ok(budgets.length < 2 || budgets[1]! <= 1, `with a wall clock the later check gets ${budgets[1] ?? 'no'} ms`);
  t.equal(r.ok, false, 'a false rollback');
});

/** systemctl stand-in: `is-system-running` answers from `states` (the last repeats), `is-active`
 * from `bootComplete`; every call is recorded. Time is a fake monotonic clock advanced by sleep. */
function fakeSystem(states: string[], bootComplete = 'active') {
  let clock = 0;
  const calls: string[] = [];
  let i = 0;
  const runner: ToolRunner = {
    async run(cmd, args) {
      calls.push([cmd, ...args].join(' '));
      if (args[0] === 'is-system-running') {
        const s = states[Math.min(i++, states.length - 1)]!;
        return { ...ok(`${s}\n`), code: s === 'running' ? 0 : 1 };
      }
      if (args[0] === 'is-active') return { ...ok(`${bootComplete}\n`), code: bootComplete === 'active' ? 0 : 3 };
      return ok('checked');
    },
  };
  return { runner, calls, clock: () => clock, sleep: async (ms: number) => void (clock += ms), elapsed: () => clock };
}

const check: HealthCheckConfig = { type: 'command', name: 'app', argv: ['app-selftest'], timeoutSeconds: 5 };

t.test('settle: the checks run only once systemd has finished starting the system', async (t) => {
  const f = fakeSystem(['starting', 'starting', 'starting', 'running']);
  const r = await runHealthChecks({ deadlineSeconds: 60, checks: [check], settle: { timeoutSeconds: 600, bootComplete: true } }, { runner: f.runner, clock: f.clock, sleep: f.sleep, settlePollMs: 1000 });
  t.same(f.calls, ['systemctl is-system-running', 'systemctl is-system-running', 'systemctl is-system-running', 'systemctl is-system-running', 'systemctl is-active -- boot-complete.target', 'app-selftest'], 'waited, read the verdict, then checked');
  t.equal(f.elapsed(), 3000, 'polled every second');
  t.equal(r.ok, true);
  t.match(r.results, [{ name: 'system settled', kind: 'settle', ok: true }, { name: 'boot-complete.target', ok: true }, { name: 'app', ok: true }]);
});

t.test('settle: a boot that never settles within the deadline is unhealthy, and no check races it', async (t) => {
  const f = fakeSystem(['starting']);
  const r = await runHealthChecks({ deadlineSeconds: 60, checks: [check], settle: { timeoutSeconds: 30 } }, { runner: f.runner, clock: f.clock, sleep: f.sleep, settlePollMs: 2000 });
  t.equal(r.ok, false);
  t.equal(f.elapsed(), 30_000, 'waited exactly the settle deadline');
  t.notOk(f.calls.includes('app-selftest'), 'the checks did not run against a half-started system');
  t.match(r.results, [{ name: 'system settled', ok: false, required: true, output: /still starting after 30 s/ }]);
});

t.test('settle: a failed boot-complete.target (greenboot or slotflip-health said no) fails the boot', async (t) => {
  const f = fakeSystem(['degraded'], 'failed');
  const r = await runHealthChecks({ deadlineSeconds: 60, checks: [check], settle: { timeoutSeconds: 30, bootComplete: true } }, { runner: f.runner, clock: f.clock, sleep: f.sleep });
  t.equal(r.ok, false);
  t.match(r.results, [{ name: 'system settled', ok: true }, { name: 'boot-complete.target', ok: false, output: /is failed/ }]);
});

t.test('settle: no systemd at all is a failed settle, never a throw', async (t) => {
  const runner: ToolRunner = { run: async () => Promise.reject(Object.assign(new Error('systemctl: not found'), { code: 'HAL_TOOL_MISSING' })) };
  const r = await runHealthChecks({ deadlineSeconds: 60, checks: [], settle: { timeoutSeconds: 5 } }, { runner });
  t.equal(r.ok, false);
  t.match(r.results, [{ name: 'system settled', ok: false, output: /HAL_TOOL_MISSING/ }]);
});

t.test('settle: false (slotflip health, itself a boot job) skips the wait', async (t) => {
  const f = fakeSystem(['starting']);
  const r = await runHealthChecks({ deadlineSeconds: 60, checks: [check], settle: { timeoutSeconds: 600, bootComplete: true } }, { runner: f.runner, clock: f.clock, sleep: f.sleep, settle: false });
  t.same(f.calls, ['app-selftest']);
  t.equal(r.ok, true);
});

// Policies, table-driven: maintenance windows, update lock with maximum deferral, free space.
import t from 'tap';
import { writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { windowStatus, evaluatePolicies, createUpdatePolicies, rebootDecision, readUpdateLock, validatePolicies, policiesConfigSchema, type MaintenanceWindow, type PoliciesConfig } from '../../daemon/policies.js';

const at = (iso: string): number => Date.parse(iso);
const nightly: MaintenanceWindow = { cron: '0 2 * * *', durationMinutes: 120, timezone: 'Etc/UTC' };
const weekendNoon: MaintenanceWindow = { cron: '30 12 * * 6,0', durationMinutes: 30, timezone: 'Etc/UTC' };
const berlin: MaintenanceWindow = { cron: '0 3 * * *', durationMinutes: 60, timezone: 'Europe/Berlin' };

t.test('windowStatus', async (t) => {
  const cases: Array<[string, MaintenanceWindow[] | undefined, string, { open: boolean; closesAt?: string; nextOpen?: string }]> = [
    ['no windows: always open', undefined, '2026-03-04T15:00:00Z', { open: true }],
    ['empty list: always open', [], '2026-03-04T15:00:00Z', { open: true }],
    ['at the opening minute', [nightly], '2026-03-04T02:00:00Z', { open: true, closesAt: '2026-03-04T04:00:00Z' }],
    ['inside', [nightly], '2026-03-04T03:59:59Z', { open: true, closesAt: '2026-03-04T04:00:00Z' }],
    ['closing instant is outside', [nightly], '2026-03-04T04:00:00Z', { open: false, nextOpen: '2026-03-05T02:00:00Z' }],
    ['just before', [nightly], '2026-03-04T01:59:59Z', { open: false, nextOpen: '2026-03-04T02:00:00Z' }],
    ['window across midnight', [{ cron: '0 23 * * *', durationMinutes: 180, timezone: 'Etc/UTC' }], '2026-03-05T01:30:00Z', { open: true, closesAt: '2026-03-05T02:00:00Z' }],
    ['weekday of a weekend window', [weekendNoon], '2026-03-04T12:40:00Z', { open: false, nextOpen: '2026-03-07T12:30:00Z' }],
    ['saturday', [weekendNoon], '2026-03-07T12:40:00Z', { open: true, closesAt: '2026-03-07T13:00:00Z' }],
    ['any of several', [nightly, weekendNoon], '2026-03-08T12:31:00Z', { open: true, closesAt: '2026-03-08T13:00:00Z' }],
    ['time zone: 03:00 Berlin = 02:00 UTC in winter', [berlin], '2026-01-10T02:30:00Z', { open: true, closesAt: '2026-01-10T03:00:00Z' }],
    ['time zone: 03:00 Berlin = 01:00 UTC in summer', [berlin], '2026-07-10T02:30:00Z', { open: false, nextOpen: '2026-07-11T01:00:00Z' }],
  ];
  for (const [name, windows, now, want] of cases) {
    const got = windowStatus(windows, at(now));
    t.same(got, {
      open: want.open,
      ...(want.closesAt ? { closesAtMs: at(want.closesAt) } : {}),
      ...(want.nextOpen ? { nextOpenMs: at(want.nextOpen) } : {}),
    }, name);
  }
  t.same(windowStatus([{ cron: '0 0 1 1 *', durationMinutes: 5, timezone: 'Etc/UTC' }], at('2026-03-04T00:00:00Z'), 60), { open: false }, 'nothing within the horizon');
});

t.test('rebootDecision', async (t) => {
  const now = at('2026-03-04T10:00:00Z');
  const cases: Array<[string, Parameters<typeof rebootDecision>[0], string]> = [
    ['free lock', { lockHeld: false, nowMs: now, maxDeferralMinutes: 60 }, 'proceed'],
    ['held, first time', { lockHeld: true, nowMs: now, maxDeferralMinutes: 60 }, 'defer'],
    ['held for 59 min', { lockHeld: true, nowMs: now, deferredSinceMs: now - 59 * 60_000, maxDeferralMinutes: 60 }, 'defer'],
    ['held for 60 min', { lockHeld: true, nowMs: now, deferredSinceMs: now - 60 * 60_000, maxDeferralMinutes: 60 }, 'override'],
    ['zero deferral allowed', { lockHeld: true, nowMs: now, maxDeferralMinutes: 0 }, 'override'],
  ];
  for (const [name, input, action] of cases) t.equal(rebootDecision(input).action, action, name);
  t.same(rebootDecision({ lockHeld: true, nowMs: now, maxDeferralMinutes: 60 }), { action: 'defer', deferredSinceMs: now, overrideAtMs: now + 3_600_000 });
});

t.test('evaluatePolicies', async (t) => {
  const cfg: PoliciesConfig = {
    maintenanceWindows: { download: [nightly], reboot: [weekendNoon] },
    updateLock: { path: '/run/app/update.lock', maxDeferralMinutes: 30 },
    minFreeSpaceMiB: 512,
  };
  const held = { held: true, holderPid: 42, detail: 'held by pid 42' };
  const free = { held: false, detail: 'no lock file' };
  const cases: Array<[string, Parameters<typeof evaluatePolicies>[0], Parameters<typeof evaluatePolicies>[2], Partial<ReturnType<typeof evaluatePolicies>>]> = [
    ['download in window with space', 'download', { nowMs: at('2026-03-04T02:10:00Z'), freeSpaceMiB: 1000 }, { allowed: true, reasons: [] }],
    ['download outside window', 'download', { nowMs: at('2026-03-04T12:00:00Z'), freeSpaceMiB: 1000 }, { allowed: false, retryAtMs: at('2026-03-05T02:00:00Z') }],
    ['download, too little space', 'download', { nowMs: at('2026-03-04T02:10:00Z'), freeSpaceMiB: 100 }, { allowed: false, reasons: ['only 100 MiB free, policy needs 512 MiB'] }],
    ['download, space unknown', 'download', { nowMs: at('2026-03-04T02:10:00Z') }, { allowed: false, reasons: ['free space unknown'] }],
    ['install has no window: any time', 'install', { nowMs: at('2026-03-04T12:00:00Z') }, { allowed: true }],
    ['reboot in window, lock free', 'reboot', { nowMs: at('2026-03-07T12:35:00Z'), lock: free }, { allowed: true, reasons: [] }],
    ['reboot in window, lock held', 'reboot', { nowMs: at('2026-03-07T12:35:00Z'), lock: held }, { allowed: false, deferredSinceMs: at('2026-03-07T12:35:00Z'), lockOverrideAtMs: at('2026-03-07T13:05:00Z'), retryAtMs: undefined }],
    ['reboot, lock held past max deferral', 'reboot', { nowMs: at('2026-03-07T12:40:00Z'), lock: held, deferredSinceMs: at('2026-03-07T12:05:00Z') }, { allowed: true, lockOverridden: true }],
    ['reboot outside window, lock held long', 'reboot', { nowMs: at('2026-03-09T12:40:00Z'), lock: held, deferredSinceMs: at('2026-03-07T12:05:00Z') }, { allowed: false }],
  ];
  for (const [name, phase, input, want] of cases) t.match(evaluatePolicies(phase, cfg, input), want, name);
  t.same(evaluatePolicies('download', { minFreeSpaceMiB: 0 }, { nowMs: 0 }), { allowed: true, reasons: [] }, 'empty policy allows everything');
});

t.test('readUpdateLock: pid presence and flock', async (t) => {
  const dir = t.testdir({ live: `${process.pid}\n`, dead: '999999999\n', empty: '', garbage: 'hello' });
  t.match(await readUpdateLock(join(dir, 'absent')), { held: false, detail: 'no lock file' });
  t.match(await readUpdateLock(join(dir, 'live')), { held: true, holderPid: process.pid });
  t.match(await readUpdateLock(join(dir, 'dead')), { held: false, detail: /stale/ });
  t.match(await readUpdateLock(join(dir, 'empty')), { held: false });
  t.match(await readUpdateLock(join(dir, 'garbage')), { held: false });
  // a real flock held by another process
  // its own process group: the lock fd is inherited by `sleep`, so kill the whole group (ours only)
  const holder = spawn('flock', [join(dir, 'empty'), 'sleep', '30'], { stdio: 'ignore', detached: true });
  const killHolder = (): void => { try { process.kill(-holder.pid!, 'SIGKILL'); } catch { /* already gone */ } };
  t.teardown(killHolder);
  let status = await readUpdateLock(join(dir, 'empty'));
  for (let i = 0; i < 100 && !status.held; i++) {
    await new Promise((r) => setTimeout(r, 20));
    status = await readUpdateLock(join(dir, 'empty'));
  }
  t.match(status, { held: true, detail: 'flock held' });
  const exited = new Promise((r) => holder.once('exit', r));
  killHolder();
  await exited;
  // the group's `sleep` (holding the inherited fd) may be reaped a moment after flock itself
  status = await readUpdateLock(join(dir, 'empty'));
  for (let i = 0; i < 100 && status.held; i++) {
    await new Promise((r) => setTimeout(r, 20));
    status = await readUpdateLock(join(dir, 'empty'));
  }
  t.match(status, { held: false }, 'released when the holder dies');
  await writeFile(join(dir, 'x'), '');
  t.match(await readUpdateLock(join(dir, 'x'), { runner: { run: async () => { throw new Error('no flock'); } } }), { held: true }, 'without flock(1) an empty lock file counts as held');
});

t.test('config: schema and cron validation', async (t) => {
  const v = new Ajv({ allErrors: true, useDefaults: true, strict: true }).compile(policiesConfigSchema);
  const c = { maintenanceWindows: { reboot: [{ cron: '0 3 * * *', durationMinutes: 60 }] }, updateLock: { path: '/run/lock/app', maxDeferralMinutes: 120 } };
  t.ok(v(c), JSON.stringify(v.errors));
  t.equal((c as unknown as PoliciesConfig).minFreeSpaceMiB, 0, 'default filled');
  t.notOk(v({ maintenanceWindows: { whenever: [] } }));
  t.notOk(v({ updateLock: { path: 'relative', maxDeferralMinutes: 1 } }));
  t.same(validatePolicies(c as unknown as PoliciesConfig), []);
  t.same(validatePolicies({ minFreeSpaceMiB: 0, maintenanceWindows: { download: [{ cron: '0 3 * * * *', durationMinutes: 5 }, { cron: '99 3 * * *', durationMinutes: 5 }, { cron: '0 3 * * *', durationMinutes: 5, timezone: 'Mars/Olympus' }] } }).length, 3);
});

t.test('createUpdatePolicies: the agent-facing object', async (t) => {
  const dir = t.testdir({ lock: `${process.pid}` });
  const saved: Array<number | undefined> = [];
  let stored: number | undefined;
  const pol = createUpdatePolicies(
    { maintenanceWindows: { install: [nightly] }, updateLock: { path: join(dir, 'lock'), maxDeferralMinutes: 10 }, minFreeSpaceMiB: 100 },
    { freeSpaceMiB: async () => 50, deferral: { get: async () => stored, set: async (ms) => { stored = ms; saved.push(ms); } } },
  );
  t.match(await pol.mayStart({}, at('2026-03-04T02:30:00Z')), { ok: false, reason: /only 50 MiB free/ });
  const pol2 = createUpdatePolicies({ maintenanceWindows: { install: [nightly] }, minFreeSpaceMiB: 0 });
  t.same(await pol2.mayStart({}, at('2026-03-04T02:30:00Z')), { ok: true });
  t.same(await pol2.mayStart({}, at('2026-03-04T12:00:00Z')), { ok: false, reason: 'outside the install maintenance window', until: at('2026-03-05T02:00:00Z') });
  const t0 = at('2026-03-04T12:00:00Z');
  // a held lock can be released any moment: no `until` (the daemon keeps polling, it does not sleep
  // until the override)
  t.match(await pol.mayReboot(t0), { ok: false, reason: /held by pid/, until: undefined });
  t.match(await pol.mayReboot(t0 + 300_000), { ok: false }, 'still deferred');
  t.match(await pol.mayReboot(t0 + 600_000), { ok: true, note: /rebooting anyway/ });
  t.same(saved, [t0, undefined], 'deferral start persisted once, cleared when the reboot goes ahead');
});

/**
 * A reboot deferred by a policy is retried at the policy's `until`, not on a fixed 60 s beat:
 * UpdateService with an injected clock and fake timers (nothing waits for real), the real policies
 * from the config (a nightly reboot window), a trial armed and pending in the record. The wait is
 * bounded (never under 10 s, never over 1 h: a clock that jumps cannot stall or spin it), a policy
 * without an `until` keeps `retryMs`, and a restart schedules from the policy's answer again.
 */
import t from 'tap';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import type { BootControl, SlotBootState, SlotName } from '../../hal/boot-control.js';
import type { Release } from '../../manifests/types.js';
import { resolveConfig, type Config } from '../../daemon/config.js';
import { UpdateService, backoffDelay, retryDelay, DEFAULT_RETRY_BOUNDS } from '../../daemon/service.js';
import { MemoryStateStore } from '../../daemon/state-store.js';
import { initialState, releaseRefOf, type MachineState } from '../../daemon/machine.js';
import type { UpdatePolicies, CycleResult } from '../../daemon/agent.js';
import type { TimerApi } from '../../daemon/mqtt.js';

const at = (iso: string): number => Date.parse(iso);
const MIN = 60_000;

const R1: Release = {
  targetName: 'releases/1.1.0/image.zst',
  length: 100,
  hashes: { sha256: 'cd'.repeat(32) },
  custom: { slotflip: 1, hardware: ['acme,board'], version: '1.1.0', securityVersion: 1, channel: 'stable', payload: { compression: 'zstd', size: 1024, sha256: 'ab'.repeat(32), chunkSize: 512, chunks: [] } },
} as Release;

/** installed, trial armed on B, waiting for the reboot */
function pendingReboot(): MachineState {
  return {
    ...initialState(0), phase: 'rebooting', attempts: 1, transitions: 5,
    attempt: { number: 1, release: R1, ref: releaseRefOf(R1), source: 'A', target: 'B', startedAt: at('2026-11-27T20:00:00Z') },
  };
}

/** a board on slot A with B armed as a trial (what the record says) */
function board(): BootControl & { calls: string[] } {
  const calls: string[] = [];
  const st: Record<SlotName, SlotBootState> = { A: { state: 'good', primary: false }, B: { state: 'trial', primary: true, triesLeft: 2 } };
  return {
    backend: 'emulated', calls,
    bootedSlot: async () => 'A',
    slotState: async (s) => st[s],
    markBad: async (s) => { calls.push(`markBad ${s}`); },
    armTrial: async (s) => { calls.push(`armTrial ${s}`); },
    commit: async (s) => { calls.push(`commit ${s}`); },
  };
}

class FakeTimers implements TimerApi {
  pending: Array<{ fn: () => void; ms: number; id: number }> = [];
  private next = 1;
  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.next++;
    this.pending.push({ fn, ms, id });
    return id;
  }
  clearTimeout(h: unknown): void {
    this.pending = this.pending.filter((p) => p.id !== h);
  }
  /** the one pending timer's delay (throws unless exactly one is pending) */
  soleDelay(): number {
    if (this.pending.length !== 1) throw new Error(`expected exactly one retry pending, found ${this.pending.length}`);
    return this.pending[0]!.ms;
  }
  fire(): void {
    const p = this.pending.shift()!;
    p.fn();
  }
}

async function setup(dir: string, lockPath?: string): Promise<Config> {
  await writeFile(join(dir, 'root.json'), '{}');
  return resolveConfig({
    deviceId: 'svc-r', hardware: 'acme,board', stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(dir, 'root.json'), sources: [{ type: 'dir', path: join(dir, 'repo') }] },
    board: { slots: { A: { path: join(dir, 'a.img'), size: 1024 }, B: { path: join(dir, 'b.img'), size: 1024 } }, boot: { type: 'emulated', stateFile: join(dir, 'board.json') } },
    health: { deadlineSeconds: 5, checks: [] },
    // reboots only between 02:00 and 04:00 UTC
    policies: lockPath
      ? { updateLock: { path: lockPath, maxDeferralMinutes: 24 * 60 } }
      : { maintenanceWindows: { reboot: [{ cron: '0 2 * * *', durationMinutes: 120, timezone: 'Etc/UTC' }] } },
  });
}

interface Rig { svc: UpdateService; timers: FakeTimers; clock: { now: number }; reboots: number[]; cycles: CycleResult[] }

function rig(config: Config, store: MemoryStateStore, clock: { now: number }, policies?: UpdatePolicies, reboots: number[] = [], reclaim?: () => void): Rig {
  const timers = new FakeTimers();
  const cycles: CycleResult[] = [];
  const svc = new UpdateService({
    config, log: pino({ level: 'silent' }), schedule: false, transport: null, timers, ...(reclaim ? { reclaim } : {}),
    overrides: {
      now: () => clock.now, store, bootControl: board(), releases: { releases: async () => [] }, outbox: null,
      reboot: async () => { reboots.push(clock.now); },
      ...(policies ? { policies } : {}),
    },
    onCycle: (r) => { if (!('error' in r)) cycles.push(r); },
  });
  return { svc, timers, clock, reboots, cycles };
}

t.test('retryDelay: until, bounded to [10 s, 1 h]', async (t) => {
  const now = at('2026-11-27T01:30:00Z');
  t.equal(retryDelay(now + 30 * MIN, now), 30 * MIN, 'the policy\'s until');
  t.equal(retryDelay(now + 5000, now), 10_000, 'never sooner than 10 s');
  t.equal(retryDelay(now - 3_600_000, now), 10_000, 'an until already past (clock jumped forward): 10 s');
  t.equal(retryDelay(now + 5 * 3_600_000, now), 3_600_000, 'never later than 1 h (clock jumped backward, or far off)');
  t.equal(retryDelay(Number.NaN, now), 3_600_000, 'nonsense: the cap');
  t.same(DEFAULT_RETRY_BOUNDS, { minMs: 10_000, maxMs: 3_600_000 });
  t.equal(retryDelay(now + 2000, now, { minMs: 1000, maxMs: 5000 }), 2000, 'bounds are configurable');
});

t.test('a reboot outside its window is retried when the window opens, not every 60 s', async (t) => {
  const config = await setup(t.testdir());
  const store = new MemoryStateStore(pendingReboot());
  const clock = { now: at('2026-11-27T01:30:00Z') };
  const r = rig(config, store, clock);
  await r.svc.start();
  await r.svc.idle();
  t.match(r.cycles, [{ phase: 'rebooting', rebooted: false, retryAt: at('2026-11-27T02:00:00Z') }], 'deferred until the window opens');
  t.same(r.reboots, []);
  t.equal(r.timers.soleDelay(), 30 * MIN, 'the retry is due at 02:00, 30 minutes away (not 60 s)');
  t.equal(r.svc.retryDueAt, at('2026-11-27T02:00:00Z'));

  clock.now = at('2026-11-27T02:00:00Z');
  r.timers.fire();
  await r.svc.idle();
  t.same(r.reboots, [at('2026-11-27T02:00:00Z')], 'rebooted into the trial when the window opened');
  t.equal(r.timers.pending.length, 0, 'nothing more to retry');
  await r.svc.stop();
});

t.test('far off or already past: the wait is capped at 1 h and floored at 10 s', async (t) => {
  const config = await setup(t.testdir());
  const store = new MemoryStateStore(pendingReboot());
  const clock = { now: at('2026-11-27T21:00:00Z') };
  const r = rig(config, store, clock);
  await r.svc.start();
  await r.svc.idle();
  t.equal(r.timers.soleDelay(), 3_600_000, '5 h to the window: re-evaluated after 1 h at the latest');

  // the wall clock jumps back a day (a bad RTC, then NTP): still at most an hour
  clock.now = at('2026-11-26T22:00:00Z');
  r.timers.fire();
  await r.svc.idle();
  t.equal(r.timers.soleDelay(), 3_600_000, 'a clock that jumped back does not stall the retry');

  // a few seconds before the window: floored at 10 s, and the window is open by then
  clock.now = at('2026-11-27T01:59:55Z');
  r.timers.fire();
  await r.svc.idle();
  t.equal(r.timers.soleDelay(), 10_000, 'never sooner than 10 s');
  t.same(r.reboots, []);
  clock.now = at('2026-11-27T02:00:05Z');
  r.timers.fire();
  await r.svc.idle();
  t.equal(r.reboots.length, 1, 'rebooted inside the window');
  await r.svc.stop();
});

t.test('an update lock (released any moment) keeps retryMs, not the 24 h override time', async (t) => {
  const dir = t.testdir({ lock: `${process.pid}` }); // held by a live process: this one
  const config = await setup(dir, join(dir, 'lock'));
  const store = new MemoryStateStore(pendingReboot());
  const clock = { now: at('2026-11-27T12:00:00Z') };
  const reboots: number[] = [];
  const a = rig(config, store, clock, undefined, reboots);
  await a.svc.start();
  await a.svc.idle();
  t.match(a.cycles, [{ phase: 'rebooting', rebooted: false }]);
  t.notOk('retryAt' in a.cycles[0]!, 'no until: the lock may go any moment');
  t.equal(a.timers.soleDelay(), 60_000, 'polled every retryMs');
  await rm(join(dir, 'lock'));
  clock.now += 60_000;
  a.timers.fire();
  await a.svc.idle();
  t.same(reboots, [clock.now], 'rebooted on the first retry after the lock was released');
  await a.svc.stop();
});

t.test('stop() cancels a retry; a restart schedules from the policy again', async (t) => {
  const config = await setup(t.testdir());
  const store = new MemoryStateStore(pendingReboot());
  const clock = { now: at('2026-11-27T12:00:00Z') };
  const noUntil: UpdatePolicies = { mayStart: async () => ({ ok: true }), mayReboot: async () => ({ ok: false, reason: 'custom policy' }) };
  const a = rig(config, store, clock, noUntil);
  await a.svc.start();
  await a.svc.idle();
  t.equal(a.timers.soleDelay(), 60_000, 'no until: the default retryMs');
  await a.svc.stop();
  t.equal(a.timers.pending.length, 0, 'stop() cancels the retry');

  // the daemon restarts (same record) with the window policy: it asks again and waits for 02:00
  const reboots: number[] = [];
  const b = rig(config, store, clock, undefined, reboots);
  await b.svc.start();
  await b.svc.idle();
  t.equal(b.timers.soleDelay(), 3_600_000, 'resumed in rebooting, deferred again, capped wait');
  clock.now = at('2026-11-28T01:45:00Z');
  b.timers.fire();
  await b.svc.idle();
  t.equal(b.timers.soleDelay(), 15 * MIN, 'then exactly until 02:00');
  t.equal((await store.load()).phase, 'rebooting', 'the record still says where to resume');
  clock.now = at('2026-11-28T02:00:00Z');
  b.timers.fire();
  await b.svc.idle();
  t.same(reboots, [at('2026-11-28T02:00:00Z')]);
  await b.svc.stop();
});

t.test('backoffDelay: doubles per failure in a row, capped, jittered into [1/2, 1]', async (t) => {
  t.equal(backoffDelay(0, 60_000, 3_600_000, 0.3), 60_000, 'nothing failed: the base, no jitter');
  t.equal(backoffDelay(1, 60_000, 3_600_000, 1), 60_000);
  t.equal(backoffDelay(1, 60_000, 3_600_000, 0), 30_000, 'jitter never below half');
  t.equal(backoffDelay(3, 60_000, 3_600_000, 1), 240_000, 'doubled twice');
  t.equal(backoffDelay(40, 60_000, 3_600_000, 1), 3_600_000, 'capped');
  t.equal(backoffDelay(40, 60_000, 3_600_000, 0), 1_800_000, 'cap jittered too');
});

t.test('failed cycles in a row back off from config retry.delaySeconds to retry.maxDelaySeconds; a good cycle resets', async (t) => {
  const dir = t.testdir();
  const base = await setup(dir);
  const config: Config = { ...base, retry: { delaySeconds: 5, maxDelaySeconds: 12 } };
  let broken = true;
  const real = new MemoryStateStore(initialState(0));
  const store = { load: async () => { if (broken) throw Object.assign(new Error('EIO'), { code: 'HAL_ATOMIC_WRITE', retryable: true }); return real.load(); }, save: (s: MachineState) => real.save(s) };
  const timers = new FakeTimers();
  const svc = new UpdateService({
    config, log: pino({ level: 'silent' }), schedule: false, transport: null, timers, random: () => 1,
    overrides: { store: store as never, bootControl: board(), releases: { releases: async () => [] }, outbox: null, reboot: async () => undefined },
  });
  await svc.start();
  await svc.idle();
  const delays: number[] = [];
  for (let i = 0; i < 4; i++) {
    delays.push(timers.soleDelay());
    timers.fire();
    await svc.idle();
  }
  t.same(delays, [5000, 10_000, 12_000, 12_000], 'from the config: 5 s, doubled, capped at 12 s');
  broken = false;
  timers.fire();
  await svc.idle();
  t.equal(timers.pending.length, 0, 'a good cycle that ends idle schedules nothing');
  broken = true;
  svc.trigger('test');
  await svc.idle();
  t.equal(timers.soleDelay(), 5000, 'the next failure starts again at the base');
  await svc.stop();
});

t.test('idle again after a cycle: the heap is reclaimed once, 2 s later; never during a cycle, never after stop', async (t) => {
  const config = await setup(t.testdir());
  const clock = { now: at('2026-11-27T12:00:00Z') };
  let reclaims = 0;
  const r = rig(config, new MemoryStateStore(initialState(0)), clock, undefined, [], () => { reclaims++; });
  await r.svc.start();
  await r.svc.idle();
  t.match(r.cycles, [{ phase: 'idle' }]);
  t.equal(r.timers.soleDelay(), 2000, 'one reclaim pending, 2 s after the cycle');
  t.equal(reclaims, 0, 'not yet');
  r.timers.fire();
  t.equal(reclaims, 1, 'reclaimed once idle');
  t.equal(r.timers.pending.length, 0, 'nothing re-armed by itself: the next cycle arms it');

  r.svc.trigger('command');
  t.equal(r.timers.pending.length, 0, 'no reclaim while a cycle runs');
  await r.svc.idle();
  t.equal(r.timers.soleDelay(), 2000, 'armed again after that cycle');
  r.svc.trigger('command');
  t.equal(r.timers.pending.length, 0, 'a cycle starting cancels the pending reclaim');
  await r.svc.idle();
  await r.svc.stop();
  t.equal(r.timers.pending.length, 0, 'stop cancels it');
  t.equal(reclaims, 1);
});

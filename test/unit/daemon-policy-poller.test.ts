// Poller: cron schedule + jitter + no overlap (injected scheduler/sleep), and real runs (local matcher, node-cron).
import t from 'tap';
import { Poller, type Scheduler } from '../../daemon/poller.js';

function harness(): { scheduler: Scheduler; fire: () => void; stopped: () => boolean; crons: string[] } {
  let fn: (() => void) | undefined;
  let stopped = false;
  const crons: string[] = [];
  return {
    scheduler: (cron, f) => { crons.push(cron); fn = f; return { stop: () => { stopped = true; } }; },
    fire: () => fn?.(),
    stopped: () => stopped,
    crons,
  };
}

t.test('each tick waits a random jitter, then polls', async (t) => {
  const h = harness();
  const sleeps: number[] = [];
  let polls = 0;
  const p = new Poller({ cron: '*/5 * * * *', jitterSeconds: 60, poll: async () => { polls++; }, scheduler: h.scheduler, random: () => 0.25, sleep: async (ms) => { sleeps.push(ms); } });
  p.start();
  p.start();
  t.same(h.crons, ['*/5 * * * *'], 'start is idempotent');
  h.fire();
  await new Promise((r) => setImmediate(r));
  t.same(sleeps, [15_000]);
  t.equal(polls, 1);
  await p.trigger();
  t.same(sleeps, [15_000], 'trigger polls at once, without jitter');
  t.equal(polls, 2);
  await p.stop();
  t.ok(h.stopped());
});

t.test('ticks during a running poll are skipped; errors do not stop the poller', async (t) => {
  const h = harness();
  let release!: () => void;
  let polls = 0;
  const errors: unknown[] = [];
  const p = new Poller({
    cron: '* * * * *', jitterSeconds: 0, scheduler: h.scheduler, onError: (e) => errors.push(e),
    poll: () => { polls++; if (polls === 2) return Promise.reject(new Error('server down')); return new Promise<void>((r) => { release = r; }); },
  });
  p.start();
  h.fire();
  h.fire();
  h.fire();
  t.equal(polls, 1);
  t.same(p.stats(), { ticks: 3, skipped: 2 });
  release();
  await new Promise((r) => setImmediate(r));
  h.fire();
  await new Promise((r) => setImmediate(r));
  t.equal(polls, 2);
  t.match(errors, [{ message: 'server down' }]);
  h.fire();
  t.equal(polls, 3, 'still polling after an error');
  release();
  await p.stop();
});

t.test('stop during the jitter wait skips that poll', async (t) => {
  const h = harness();
  let polls = 0;
  const p = new Poller({ cron: '* * * * *', jitterSeconds: 3600, random: () => 0.9, scheduler: h.scheduler, poll: async () => { polls++; } });
  p.start();
  h.fire();
  const t0 = Date.now();
  await p.stop();
  t.ok(Date.now() - t0 < 1000, 'the real sleep is cut short');
  t.equal(polls, 0);
});

t.test('invalid schedule is refused', async (t) => {
  t.throws(() => new Poller({ cron: 'every day', jitterSeconds: 0, poll: async () => undefined }), RangeError);
  t.throws(() => new Poller({ cron: '* * * * *', jitterSeconds: -1, poll: async () => undefined }), RangeError);
});

// a plain expression runs on daemon/cron-local.ts, one with names on node-cron: both really fire
for (const cron of ['* * * * * *', '* * * * * SUN-SAT']) t.test(`real schedule fires: ${cron}`, async (t) => {
  let polls = 0;
  const p = new Poller({ cron, jitterSeconds: 0, poll: async () => { polls++; } });
  p.start();
  const until = Date.now() + 3000;
  while (polls === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  await p.stop();
  t.ok(polls >= 1, 'a per-second schedule polled within 3 s');
});

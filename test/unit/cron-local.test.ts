// daemon/cron-local.ts against node-cron itself: same matches for plain numeric expressions, the
// next time is the first node-cron match, and everything outside the subset is left to node-cron.
import t from 'tap';
import fc from 'fast-check';
import { createTask, validate } from 'node-cron';
import { parseLocalCron } from '../../daemon/cron-local.js';

const RANGES: Array<[number, number]> = [[0, 59], [0, 59], [0, 23], [1, 31], [1, 12], [0, 7]];

/** One field of the plain subset: `*`, `*\/n`, `a`, `a-b`, `a-b/n`, or a list of them. */
const fieldArb = ([min, max]: [number, number]): fc.Arbitrary<string> => {
  const v = fc.integer({ min, max });
  const item = fc.oneof(
    fc.constant('*'),
    fc.integer({ min: 1, max: Math.max(1, max - min) }).map((n) => `*/${n}`),
    v.map(String),
    fc.tuple(v, v).map(([a, b]) => `${Math.min(a, b)}-${Math.max(a, b)}`),
    fc.tuple(v, v, fc.integer({ min: 1, max: 10 })).map(([a, b, n]) => `${Math.min(a, b)}-${Math.max(a, b)}/${n}`),
  );
  return fc.array(item, { minLength: 1, maxLength: 3 }).map((xs) => xs.join(','));
};

const exprArb = fc.tuple(fc.boolean(), ...RANGES.map(fieldArb)).map(([six, ...f]) => (six ? f : f.slice(1)).join(' '));
// 2020..2032, whole seconds
const timeArb = fc.integer({ min: Date.UTC(2020, 0, 1) / 1000, max: Date.UTC(2032, 0, 1) / 1000 }).map((s) => s * 1000);

function nodeCronMatch(expr: string, ms: number): boolean {
  const task = createTask(expr, () => undefined);
  try {
    return task.match(new Date(ms));
  } finally {
    void task.destroy();
  }
}

t.test('match: the same answer as node-cron for every plain expression and time', async (t) => {
  fc.assert(fc.property(exprArb, timeArb, (expr, ms) => {
    if (!validate(expr)) return true; // node-cron refuses it: the Poller never gets that far
    const local = parseLocalCron(expr);
    if (!local) throw new Error(`${expr}: plain, yet not parsed`);
    return local.match(new Date(ms)) === nodeCronMatch(expr, ms);
  }), { numRuns: 3000 });
  t.pass('3000 expressions and times agree');
});

t.test('next: a match, and no node-cron match before it', async (t) => {
  fc.assert(fc.property(exprArb, timeArb, (expr, ms) => {
    if (!validate(expr)) return true;
    const local = parseLocalCron(expr)!;
    const next = local.next(ms);
    if (next === undefined) return true; // e.g. 31 February: node-cron never matches it either
    if (!(next > ms) || !nodeCronMatch(expr, next)) return false;
    // nothing matched in between (checked second by second up to 2 h back from it)
    for (let s = Math.max(ms + 1000, next - 7_200_000); s < next; s += 1000) if (local.match(new Date(s))) return false;
    return true;
  }), { numRuns: 200 });
  t.pass('200 next times checked');
});

t.test('the default poll schedule and the edges', async (t) => {
  const poll = parseLocalCron('17 */6 * * *')!;
  const from = new Date(2026, 10, 27, 13, 0, 0).getTime();
  t.equal(poll.next(from), new Date(2026, 10, 27, 18, 17, 0).getTime(), 'next 18:17 local');
  t.equal(poll.next(new Date(2026, 10, 27, 18, 17, 0).getTime()), new Date(2026, 10, 28, 0, 17, 0).getTime(), 'strictly after a match');
  t.equal(parseLocalCron('0 0 29 2 *')!.next(Date.UTC(2026, 0, 1)), new Date(2028, 1, 29).getTime(), 'a leap day, two years on');
  t.equal(parseLocalCron('0 0 31 2 *')!.next(Date.UTC(2026, 0, 1)), undefined, 'never');
  t.ok(parseLocalCron('0 0 * * 7')!.match(new Date(2026, 10, 29)), 'day of week 7 is Sunday');
  for (const other of ['0 0 * * MON', '@daily', '0 0 L * *', '0 0 * * 1#2', '0 0 ? * *', '5/10 * * * *', '* * * *', '1 2 3 4 5 6 7']) {
    t.equal(parseLocalCron(other), undefined, `${other}: left to node-cron`);
  }
});

t.test('localScheduler: fires at each match, waits at most 1 h at a time, follows a clock that jumps', async (t) => {
  const { localScheduler } = await import('../../daemon/poller.js');
  let now = new Date(2026, 10, 27, 13, 0, 0).getTime();
  let pending: { fn: () => void; ms: number } | undefined;
  const waits: number[] = [];
  const clock = { now: () => now, setTimeout: (fn: () => void, ms: number) => { waits.push(ms); pending = { fn, ms }; return 1; }, clearTimeout: () => { pending = undefined; } };
  const fired: number[] = [];
  const s = localScheduler(parseLocalCron('17 */6 * * *')!, () => fired.push(now), clock);
  const step = (): void => { const p = pending!; pending = undefined; now += p.ms; p.fn(); };
  while (fired.length === 0) step();
  t.same(fired, [new Date(2026, 10, 27, 18, 17).getTime()], 'first at 18:17');
  t.ok(waits.every((w) => w <= 3_600_000), 'no wait over an hour');
  t.same(waits.slice(0, 6), [3_600_000, 3_600_000, 3_600_000, 3_600_000, 3_600_000, 17 * 60_000], '13:00 → 18:17: five one-hour waits, then 17 minutes');
  // the wall clock jumps back two days (NTP on a board whose RTC was wrong): the next match from then
  now = new Date(2026, 10, 25, 9, 0, 0).getTime();
  step();
  while (fired.length === 1) step();
  t.equal(fired[1], new Date(2026, 10, 25, 12, 17).getTime(), 'the next match after the jump, not two days late');
  s.stop();
  t.equal(pending, undefined, 'stop clears the timer');
});

// hal/iso-time.ts: isoTime(ms) is new Date(ms).toISOString() (the daemon stamps its state and its
// trusted-time floor with it instead, issue 16), for every valid time and at the edges.
import t from 'tap';
import fc from 'fast-check';
import { isoTime } from '../../hal/iso-time.js';

// the range of ECMAScript time values: ±8.64e15 ms around 1970
const MAX = 8.64e15;

t.test('the same string as toISOString for any valid time', (t) => {
  fc.assert(fc.property(fc.integer({ min: -MAX, max: MAX }), (ms) => isoTime(ms) === new Date(ms).toISOString()), { numRuns: 20_000 });
  // around today, where the daemon's times are
  fc.assert(fc.property(fc.integer({ min: Date.UTC(1970, 0, 1), max: Date.UTC(2200, 0, 1) }), (ms) => isoTime(ms) === new Date(ms).toISOString()), { numRuns: 20_000 });
  t.end();
});

t.test('edges: year 0, 9999/10000, negative years, the ends of the range, fractions', (t) => {
  const cases = [0, -1, 1, 999, Date.UTC(0, 0, 1) - 1, Date.UTC(-1, 0, 1), Date.UTC(9999, 11, 31, 23, 59, 59, 999), Date.UTC(10000, 0, 1), -62198755200000, -62198755200001, MAX, -MAX, 1.5, -0.5, Date.UTC(2026, 11, 8, 1, 2, 3, 45)];
  for (const ms of cases) t.equal(isoTime(ms), new Date(ms).toISOString(), String(ms));
  t.end();
});

t.test('an invalid time throws the RangeError toISOString throws', (t) => {
  for (const ms of [NaN, MAX + 1, -MAX - 1, Infinity, -Infinity]) {
    t.throws(() => new Date(ms).toISOString(), RangeError, `toISOString(${ms}) throws`);
    t.throws(() => isoTime(ms), RangeError, `isoTime(${ms}) throws`);
  }
  t.end();
});

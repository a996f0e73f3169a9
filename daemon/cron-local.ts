/**
 * The poll schedule's next time, for the plain numeric cron expressions a poll schedule uses
 * (`17 *\/6 * * *`), in the device's local time, without Intl.
 *
 * Why: node-cron computes every match through `Intl.DateTimeFormat`, which maps ICU's locale and
 * time-zone data into the process: ~6 MiB of an idle daemon's RSS for a schedule that fires every
 * few hours (bench:memory, issue 16). For expressions made only of numbers, `*`, ranges, steps and
 * lists (5 fields, or 6 with seconds first) the match is plain arithmetic on the Date's local-time
 * fields; anything else (names, `L`, `#`, `?`, nicknames, a time zone) returns undefined from
 * `parseLocalCron` and the caller keeps node-cron. Semantics follow node-cron's `TimeMatcher.match`:
 * every field must match (day of month AND day of week), day of week 0 and 7 are Sunday.
 * Validation stays node-cron's (`validate`); test/unit/cron-local.test.ts checks this matcher
 * against node-cron's own on random expressions and times.
 *
 * The Date getters still read the local time through ICU's time-zone data (~0.3-0.45 MiB of an idle
 * daemon, issue 16). V8's `--no-icu-timezone-data` reads it through localtime_r instead and saves that,
 * but it is wrong where daylight saving time is not one hour: in Australia/Lord_Howe (30 min) on
 * 15 July 2026 12:00 UTC it gives 22:00, offset -600, where the zone's time is 22:30, -630 (ICU's
 * answer; Node 24.22, checked by idlemem3). A poll schedule must not shift with the zone: not used.
 */

import { weakRequire } from '../hal/lazy.js';

/** node-cron, for what this matcher leaves to it (validation, names, time zones), held weakly
 * (hal/lazy.ts): an idle daemon uses it only while it reads its config and when a maintenance
 * window or a time zone asks for it, and its code (~0.3 MiB of heap) is freed in between. Its
 * CommonJS build; node-cron's only state, its registry of tasks, is one no caller here reads. */
export const nodeCron = weakRequire<typeof import('node-cron')>('node-cron');

export interface LocalCron {
  /** true when `date`'s local second matches every field. */
  match(date: Date): boolean;
  /** the first matching second strictly after `afterMs` (ms since epoch), or undefined when none
   * within `horizonDays` (default 8 years: a 29 February schedule still has one). */
  next(afterMs: number, horizonDays?: number): number | undefined;
}

const FIELDS: Array<[min: number, max: number]> = [[0, 59], [0, 59], [0, 23], [1, 31], [1, 12], [0, 7]];
const ITEM = /^(\*|\d{1,2}(?:-\d{1,2})?)(?:\/(\d{1,2}))?$/;

/** The allowed values of one field, or undefined when the field is outside the plain subset. */
function field(text: string, [min, max]: [number, number]): boolean[] | undefined {
  const allowed = new Array<boolean>(max + 1).fill(false);
  for (const item of text.split(',')) {
    const m = ITEM.exec(item);
    if (!m) return undefined;
    let [lo, hi] = [min, max];
    if (m[1] !== '*') {
      const [a, b] = m[1]!.split('-').map(Number) as [number, number | undefined];
      // `a/n` without a range: left to node-cron (its reading of it is its own)
      if (b === undefined && m[2] !== undefined) return undefined;
      lo = a;
      hi = b ?? a;
    }
    const step = m[2] !== undefined ? Number(m[2]) : 1;
    if (lo < min || hi > max || lo > hi || step < 1) return undefined;
    for (let v = lo; v <= hi; v += step) allowed[v] = true;
  }
  return allowed;
}

/** A matcher for `expr` when it is a plain numeric cron expression; undefined otherwise. */
export function parseLocalCron(expr: string): LocalCron | undefined {
  const parts = expr.trim().split(/\s+/);
  if (parts.length !== 5 && parts.length !== 6) return undefined;
  const texts = parts.length === 5 ? ['0', ...parts] : parts;
  const sets: boolean[][] = [];
  for (let i = 0; i < 6; i++) {
    const s = field(texts[i]!, FIELDS[i]!);
    if (!s) return undefined;
    sets.push(s);
  }
  const [sec, min, hour, dom, month, dow] = sets as [boolean[], boolean[], boolean[], boolean[], boolean[], boolean[]];
  if (dow[7]) dow[0] = true;
  const dayOk = (d: Date): boolean => !!dom[d.getDate()] && !!dow[d.getDay()] && !!month[d.getMonth() + 1];
  const match = (d: Date): boolean => dayOk(d) && !!hour[d.getHours()] && !!min[d.getMinutes()] && !!sec[d.getSeconds()];
  return {
    match,
    next(afterMs, horizonDays = 8 * 366) {
      let t = Math.floor(afterMs / 1000) * 1000 + 1000;
      const end = afterMs + horizonDays * 86_400_000;
      while (t <= end) {
        const d = new Date(t);
        // skip whole days, hours and minutes that cannot match (local time: DST-shifted days are
        // re-read from the Date, never assumed to be 24 h long)
        if (!dayOk(d)) t = new Date(d.getFullYear(), d.getMonth(), d.getDate() + 1).getTime();
        else if (!hour[d.getHours()]) t = nextBoundary(t, 3_600_000, d);
        else if (!min[d.getMinutes()]) t = nextBoundary(t, 60_000, d);
        else if (!sec[d.getSeconds()]) t += 1000;
        else return t;
      }
      return undefined;
    },
  };
}

/** The start of the next local hour or minute after `t` (whole-offset zones: hours and minutes
 * begin at the same instants in local time and UTC, up to the zone's minute offset). */
function nextBoundary(t: number, unit: number, d: Date): number {
  const local = t - d.getTimezoneOffset() * 60_000;
  const next = (Math.floor(local / unit) + 1) * unit + d.getTimezoneOffset() * 60_000;
  // a DST change inside the step moves the offset: never step backwards or by more than one unit
  return next > t ? Math.min(next, t + unit) : t + unit;
}

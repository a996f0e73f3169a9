/**
 * `new Date(ms).toISOString()` without V8's date formatting (issue 16): V8's `toISOString` sets up
 * its time-zone cache through ICU on first use, which pages in ~0.7 MiB of ICU's code and data
 * (measured on a bare Node 24 beyond what a local-time `getHours()` already does: node-floor, ICU
 * code +240 KiB, ICU data +384 KiB), and stays resident in a daemon that stamps every check with
 * the time. The UTC getters used here need none of it. Same output as `toISOString` for every
 * valid time (years 0-9999 as four digits, beyond as a signed six-digit year), the same RangeError
 * for an invalid one (test/unit/iso-time.test.ts compares the two).
 */
const two = (n: number): string => (n < 10 ? `0${n}` : String(n));

export function isoTime(ms: number): string {
  const d = new Date(ms);
  if (Number.isNaN(d.getTime())) throw new RangeError('Invalid time value');
  const y = d.getUTCFullYear();
  const year = y >= 0 && y <= 9999 ? String(y).padStart(4, '0') : `${y < 0 ? '-' : '+'}${String(Math.abs(y)).padStart(6, '0')}`;
  const milli = String(d.getUTCMilliseconds()).padStart(3, '0');
  return `${year}-${two(d.getUTCMonth() + 1)}-${two(d.getUTCDate())}T${two(d.getUTCHours())}:${two(d.getUTCMinutes())}:${two(d.getUTCSeconds())}.${milli}Z`;
}

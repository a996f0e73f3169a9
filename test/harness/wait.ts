/**
 * Polls `fn` until it returns something other than undefined/false, and returns that; throws
 * `timed out waiting for WHAT` after `timeoutMs`. For tests that wait on a broker, a service or a
 * watcher to reach a state (never for measuring time).
 */
export async function waitFor<T>(fn: () => T | undefined | false, what: string, timeoutMs = 20_000, pollMs = 10): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

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

/**
 * Settles as `p` does, or with `onTimeout()` after `ms` if `p` has not settled by then; the timer is
 * cleared either way, so a test that got its answer early does not keep its process alive until the
 * deadline (tap times a file until its event loop drains).
 */
export async function within<T, U>(p: Promise<T>, ms: number, onTimeout: () => U): Promise<T | U> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<U>((resolve, reject) => {
    timer = setTimeout(() => {
      try { resolve(onTimeout()); } catch (e) { reject(e); }
    }, ms);
  });
  try {
    return await Promise.race([p, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

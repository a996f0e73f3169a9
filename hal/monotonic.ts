/**
 * A monotonic clock in milliseconds with `performance.now()`'s shape, for code that measures
 * durations (issue 16). The global `performance` is a lazy getter that loads node:perf_hooks (the
 * User Timing, resource timing, histogram and event-loop-delay modules: ~0.8 MiB of a bare Node's
 * RSS, measured) the first time it is read; the idle daemon times its heap reclaim and its seed
 * index pacing, and needs none of that. A module imports `performance` from here and its
 * `performance.now()` calls read `process.hrtime`, which Node has loaded at start.
 *
 * Only differences between two readings mean something (the origin is arbitrary, not `timeOrigin`).
 */
export const performance: { now(): number } = {
  now: () => Number(process.hrtime.bigint()) / 1e6,
};

/**
 * The daemon's memory footprint (issue 16): V8 run without its optimizing compilers, and an idle
 * daemon's free heap handed back to the OS. Figures: `npm run bench:memory`.
 *
 * Interpreter and baseline code only (`--no-turbofan --no-maglev`, set by the CLI before it loads the
 * daemon command's modules): TurboFan and Maglev are several MiB of the node binary's code that stay resident
 * once they have run, plus the optimized code and its metadata, for a process whose hot paths are
 * native (SHA-256, zstd/gzip, file and socket I/O). Measured: idle RSS −9 MiB, peak while installing
 * 1 GiB −10 MiB, the install's CPU time unchanged (7.5/7.6 s with, 7.6/6.6 s without; load 11).
 * `--jitless` would save ~3 MiB more but also removes WebAssembly, which the install's page-aligned
 * O_DIRECT buffers are made of (daemon/install/hasher.ts, read-back.ts). These two flags are not
 * accepted in NODE_OPTIONS, hence v8.setFlagsFromString: they only stop future tier-ups, which V8
 * checks when a function gets hot, so setting them while running is safe.
 *
 * Heap reclaim:
 * A check cycle leaves garbage behind: the TUF refresh parses and verifies whole metadata documents,
 * the agent and its collaborators are rebuilt per cycle. V8 collects it at some later GC but keeps
 * the pages it occupied committed, and releases them only in a collection asked to reduce memory,
 * which a daemon that then sleeps for hours never triggers: measured ~10 MiB of RSS held for nothing
 * (bench:memory). With `--expose-gc` in the unit's NODE_OPTIONS (systemd/slotflip.service) the daemon
 * asks V8 for one memory-reducing ("last resort") collection once no cycle has run for a moment.
 *
 * Trade-off: a few full collections' CPU (tens of ms for a ~15 MiB heap) per idle period, i.e. per
 * check, never during one; without `--expose-gc` nothing happens (the daemon works as before).
 */
import v8 from 'node:v8';

/** Turns V8's optimizing compilers off for the rest of this process (see the header). */
export function interpretOnly(): void {
  v8.setFlagsFromString('--no-turbofan');
  v8.setFlagsFromString('--no-maglev');
}

/** V8's `gc()` extension (present with `--expose-gc`). Unknown options are ignored by older V8s. */
export type GcFunction = (options?: { type?: 'major' | 'minor'; execution?: 'sync' | 'async'; flavor?: 'regular' | 'last-resort' }) => unknown;

/** The `gc` function `--expose-gc` put on the global object, if any. Read by the composition root. */
export function exposedGc(): GcFunction | undefined {
  const g = (globalThis as { gc?: unknown }).gc;
  return typeof g === 'function' ? (g as GcFunction) : undefined;
}

/** One memory-reducing collection; returns how long it took (ms) and the RSS before and after. */
export function reclaimHeap(gc: GcFunction): { ms: number; rssBefore: number; rssAfter: number } {
  const rssBefore = process.memoryUsage.rss();
  const t0 = performance.now();
  // last resort = V8's CollectAllAvailableGarbage: repeated full GCs that also shrink the heap and
  // release its free pages (a regular major GC frees the objects but keeps the pages)
  gc({ type: 'major', execution: 'sync', flavor: 'last-resort' });
  return { ms: Math.round(performance.now() - t0), rssBefore, rssAfter: process.memoryUsage.rss() };
}

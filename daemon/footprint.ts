/**
 * The daemon's memory footprint (issue 16): V8 run without its optimizing compilers, and an idle
 * daemon's free heap handed back to the OS. Figures: `npm run bench:memory`.
 *
 * Interpreter and baseline code only (`--no-turbofan --no-maglev`, set by the CLI before it loads the
 * daemon command's modules): TurboFan and Maglev are several MiB of the node binary's code that stay resident
 * once they have run, plus the optimized code and its metadata, for a process whose hot paths are
 * native (SHA-256, zstd/gzip, file and socket I/O). Measured: idle RSS −9 MiB. `slotflip install`
 * and `update` run the same way (daemon/cli.ts, the launcher). A delta install no longer turns them on
 * while it cuts a slot: that chunking's loops run as WebAssembly (manifests/cdc-wasm.ts), as fast
 * interpreted as optimized; a full install never did: its CPU measured the same either way (5.41 s with, 5.46 s without, CLI, 1 GiB, load 15-18;
 * earlier 7.5/7.6 with, 7.6/6.6 without, load 11), and without them its peak RSS is 7-10 MiB lower
 * (TurboFan and Maglev's pages of the node binary, their code and its metadata). The daemon's own
 * full install (bench:memory, four pairs, load 9-21): peak 142 vs 157 MiB median but CPU +10%
 * (20.5 vs 18.6 s): unresolved; the README's bench notes keep the figures.
 * `--jitless` would save ~3 MiB more but also removes WebAssembly, which the install's page-aligned
 * O_DIRECT buffers are made of (daemon/install/hasher.ts, read-back.ts). These two flags are not
 * accepted in NODE_OPTIONS, hence v8.setFlagsFromString: they only stop future tier-ups, which V8
 * checks when a function gets hot, so setting them while running is safe. /usr/bin/slotflip
 * (systemd/packaging/slotflip.sh) also passes them on Node's command line for `slotflip daemon`:
 * set from here they come too late for what got hot while Node started and the daemon's modules
 * loaded, whose Maglev/TurboFan code stays resident (−1.9 MiB more, bench:memory); started that way,
 * `withOptimizingCompilers` still turns them on (test/unit/daemon-footprint.test.ts).
 *
 * Heap reclaim:
 * A check cycle leaves garbage behind: the TUF refresh parses and verifies whole metadata documents,
 * the agent and its collaborators are rebuilt per cycle. V8 collects it at some later GC but keeps
 * the pages it occupied committed, and releases them only in a collection asked to reduce memory,
 * which a daemon that then sleeps for hours never triggers: measured ~10 MiB of RSS held for nothing
 * (bench:memory). With `--expose-gc` in the unit's NODE_OPTIONS (systemd/slotflip.service) the daemon
 * asks V8 for one memory-reducing ("last resort") collection once no cycle has run for a moment.
 *
 * The same collection drops the compiled code of what is not running (`reclaimHeap`).
 *
 * Trade-off: a few full collections' CPU (tens of ms for a ~15 MiB heap) per idle period, i.e. per
 * check, never during one, and the next check compiles its code again and reloads what is held
 * weakly (@tufjs/models, manifests/client.ts): measured (`bench:memory --only checkcpu`, 20 check
 * cycles each after 4 s idle vs back to back, load 7-13) 61-72 ms of CPU per check after the reclaim
 * against 15-28 ms back to back; 39-40 ms with the reclaim but without the code flush; main before
 * @tufjs/models was held weakly 49 ms. Tens of ms per check, i.e. per poll period: not worth the
 * resident code. Without `--expose-gc` nothing happens (the daemon works as before).
 */
import nodeModule from 'node:module';
import v8 from 'node:v8';
import { performance } from '../hal/monotonic.js';

// V8's flags are process-wide: so is this state (how many installs hold the compilers on)
let interpreted = false;
let holds = 0;

function optimizing(on: boolean): void {
  v8.setFlagsFromString(on ? '--turbofan' : '--no-turbofan');
  v8.setFlagsFromString(on ? '--maglev' : '--no-maglev');
}

/** Turns V8's optimizing compilers off for this process, except inside `withOptimizingCompilers`. */
export function interpretOnly(): void {
  interpreted = true;
  if (holds === 0) optimizing(false);
}

/**
 * Runs `fn` with the optimizing compilers on (when `interpretOnly` turned them off), then off again.
 * For JS-heavy work that is cheap only when optimized (the idle seed-index build's `optimize`
 * option, for its bench; a slot cut in JS took 13x the CPU interpreted before it ran as WebAssembly).
 * Afterwards the compilers are off again.
 */
export async function withOptimizingCompilers<T>(fn: () => Promise<T>): Promise<T> {
  if (!interpreted) return fn();
  if (holds++ === 0) optimizing(true);
  try {
    return await fn();
  } finally {
    if (--holds === 0) optimizing(false);
  }
}

/** V8's `gc()` extension (present with `--expose-gc`). Unknown options are ignored by older V8s. */
export type GcFunction = (options?: { type?: 'major' | 'minor'; execution?: 'sync' | 'async'; flavor?: 'regular' | 'last-resort' }) => unknown;

/** The `gc` function `--expose-gc` put on the global object, if any. Read by the composition root. */
export function exposedGc(): GcFunction | undefined {
  const g = (globalThis as { gc?: unknown }).gc;
  return typeof g === 'function' ? (g as GcFunction) : undefined;
}

/** One memory-reducing collection; returns how long it took (ms) and the RSS before and after.
 * It also flushes the bytecode and baseline code of every function not running now (V8's
 * --stress-flush-code and --flush-baseline-code, for this collection only): what the start and the
 * last cycle compiled (~1 MiB) is compiled again from its source at its next call, i.e. at the next
 * check, a few ms. Idle RSS -1.4 MiB (bench:memory A/B, load 8). V8 keeps all bytecode while a
 * coverage collector (NODE_V8_COVERAGE) runs. */
export function reclaimHeap(gc: GcFunction): { ms: number; rssBefore: number; rssAfter: number } {
  const rssBefore = process.memoryUsage.rss();
  const t0 = performance.now();
  // last resort = V8's CollectAllAvailableGarbage: repeated full GCs that also shrink the heap and
  // release its free pages (a regular major GC frees the objects but keeps the pages)
  v8.setFlagsFromString('--stress-flush-code');
  v8.setFlagsFromString('--flush-baseline-code');
  try {
    gc({ type: 'major', execution: 'sync', flavor: 'last-resort' });
  } finally {
    v8.setFlagsFromString('--no-stress-flush-code');
    v8.setFlagsFromString('--no-flush-baseline-code');
  }
  return { ms: Math.round(performance.now() - t0), rssBefore, rssAfter: process.memoryUsage.rss() };
}

/**
 * Writes Node's compile cache (NODE_COMPILE_CACHE, set by /usr/bin/slotflip) for the modules loaded
 * so far. Node writes it only at a clean exit, which a daemon rarely has (it ends in a reboot or a
 * SIGKILL); without this its next start would compile everything again. Silent by Node's design:
 * with the cache off, unwritable, or on a Node without `flushCompileCache` (< 22.10) nothing happens.
 */
export function persistCompileCache(): void {
  (nodeModule as { flushCompileCache?: () => void }).flushCompileCache?.();
}

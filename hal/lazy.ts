/**
 * Loading on first use (issues 16, 24): the one helper for a module that a command or an idle daemon
 * may never need, e.g. MQTT.js for `slotflip install URL` (an HTTP source) or TLS for a broker on
 * plain TCP. A module loaded at start costs every process its parse, its bytecode and its heap, used
 * or not; here the cost is paid by the first call, and by nothing when there is none.
 *
 * Synchronous (`require`): for CommonJS packages and node: builtins, where the caller cannot wait.
 * An ES module loaded later is a plain `await import(...)` at its point of use.
 */
import { createRequire, Module } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);

/** A module next to the caller is named by its URL (`new URL('./x.cjs', import.meta.url)`). */
const toPath = (specifier: string | URL): string => (specifier instanceof URL ? fileURLToPath(specifier) : specifier);

/** A function that loads `specifier` at its first call and returns it (Node's cache from then on).
 * `specifier`: a package of the application's node_modules, a node: builtin, or a file's URL. */
export function lazyRequire<T>(specifier: string | URL): () => T {
  let loaded: T | undefined;
  return () => (loaded ??= require(toPath(specifier)) as T);
}

/**
 * Like `lazyRequire`, for a module used once in a while whose code is big (the generated config
 * validator: ~250 KB of source, ~1.5 MiB of heap once run): loaded at the first call, held only
 * weakly afterwards and taken out of Node's module cache, so the garbage collector frees its code
 * and data once the caller lets go of it; a later call loads it again. The module must be
 * CommonJS and stateless (each load is a fresh copy), and so must the modules it is the first to
 * load (the config validator: ajv's runtime helpers and ajv-formats): they leave the cache with it,
 * since each keeps its first requirer as its parent (Node >= 22, not writable from outside), which
 * would hold it for good. Dependencies already loaded before stay cached as usual.
 */
export function weakRequire<T extends object>(specifier: string | URL): () => T {
  let held: WeakRef<T> | undefined;
  return () => {
    const cached = held?.deref();
    if (cached) return cached;
    const path = require.resolve(toPath(specifier));
    const before = new Set(Object.keys(require.cache));
    const loaded = require(path) as T;
    // Node keeps a loaded module in its cache and in the requiring module's `children`
    const entry = require.cache[path];
    for (const key of Object.keys(require.cache)) if (!before.has(key)) delete require.cache[key];
    const siblings = entry?.parent?.children;
    if (entry && siblings?.includes(entry)) siblings.splice(siblings.indexOf(entry), 1);
    held = new WeakRef(loaded);
    return loaded;
  };
}

/**
 * Puts `exports` in Node's module cache as the module `specifier` that `from`'s file would load,
 * unless that one is loaded already: for a package a dependency loads at once but uses only where
 * this process never runs (MQTT.js's `worker-timers`, Web Worker timers for browsers: ~0.8 MiB of
 * an idle daemon's RSS, bench:memory). `exports` must do what the package does where it is used.
 * Resolved as Node would; where that fails (another layout, the package gone) nothing happens and
 * the real module loads if it is ever asked for.
 */
export function standIn(specifier: string, from: string, exports: object): void {
  let path: string;
  try {
    path = createRequire(require.resolve(from)).resolve(specifier);
  } catch {
    return;
  }
  if (require.cache[path]) return;
  const m = new Module(path);
  m.filename = path;
  m.exports = exports;
  m.loaded = true;
  require.cache[path] = m;
}

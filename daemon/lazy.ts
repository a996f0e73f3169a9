/**
 * Loading on first use (issues 16, 24): the one helper for a module that a command or an idle daemon
 * may never need, e.g. MQTT.js for `slotflip install URL` (an HTTP source) or TLS for a broker on
 * plain TCP. A module loaded at start costs every process its parse, its bytecode and its heap, used
 * or not; here the cost is paid by the first call, and by nothing when there is none.
 *
 * Synchronous (`require`): for CommonJS packages and node: builtins, where the caller cannot wait.
 * An ES module loaded later is a plain `await import(...)` at its point of use.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

/** A function that loads `specifier` at its first call and returns it (Node's cache from then on).
 * `specifier` resolves from daemon/ (node_modules of the application, node: builtins). */
export function lazyRequire<T>(specifier: string): () => T {
  let loaded: T | undefined;
  return () => (loaded ??= require(specifier) as T);
}

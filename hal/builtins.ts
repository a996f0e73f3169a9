/**
 * node:fs, node:http and node:util for slotflip's ES modules, taken through `require` (issue 16).
 *
 * An ES `import` of a Node builtin, named or default, makes the module's ES namespace from ALL its
 * exports, and that reads every lazy getter among them: node:http's `WebSocket`, `MessageEvent` and
 * `CloseEvent` load undici (fetch, with perf_hooks and web streams), node:fs's `promises` loads
 * fs/promises (and with it readline and the REPL's history module), node:util's load more again.
 * `require` returns the CommonJS exports and runs none of them. Measured on Node 24.22
 * (`--max-semi-space-size=1 --no-turbofan --no-maglev`, what /usr/bin/slotflip runs): a module
 * doing `import http from 'node:http'` plus `import fs from 'node:fs'` and `'node:fs/promises'`:
 * RSS 57.5 MiB, 227 modules loaded; the same three through require: 47.1 MiB, 161 modules.
 * Modules loaded by import vs require, one builtin at a time: fs 30 vs 0, http 98 vs 32, util 35
 * vs 0 (node:net, crypto, child_process, zlib, stream, https, tls, fs/promises: the same either way,
 * so those stay ordinary imports). One ES import of node:http, node:fs or node:util anywhere in a
 * process's module graph costs it all; test/e2e/daemon-module-graph.test.ts checks that
 * `slotflip install URL` loads no undici, readline or http2.
 *
 * node:fs/promises itself (with readline and the REPL's history module behind it): 22 modules of the
 * idle daemon import it, and the default config's idle indexing (install.delta 'auto':
 * daemon/install/idle-index.ts -> seed-index, manifests/cdc, hal/file-slot) works through FileHandles
 * while idle. Measured (issue 16, idlemem3) with every dist/ import of it redirected by a preloaded
 * hook to callback fs + promisify and a FileHandle stand-in: idle 56.4/56.5 vs 56.9/57.0 MiB
 * (memory-bench --only idle, load 7-10), ~0.5 MiB for rewriting all of them: not done.
 *
 * Types: `import type` from the builtin as usual (erased at build time).
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

// Node's bootstrap has loaded these two already: requiring them costs nothing more
export const nodeFs = require('node:fs') as typeof import('node:fs');
export const nodeUtil = require('node:util') as typeof import('node:util');

/** node:http, loaded at the first call (a module importing this file for node:fs must not load the
 * HTTP stack: an idle daemon with an mqtt:// broker has none). */
export function nodeHttp(): typeof import('node:http') {
  return require('node:http') as typeof import('node:http');
}

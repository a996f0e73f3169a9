/**
 * Runs one delta install in its own process, for `bench:delta` (peak RSS and wall time of the
 * installer alone). Prints one JSON line `{"result":…,"usage":…}` or `{"error":…}` (exit 1).
 *
 *   delta-child --built built.json --index-url URL --pack-url URL --slot PATH [--running PATH] [--progress]
 *               [--target-seed INDEX] [--running-seed INDEX]
 *
 * --target-seed / --running-seed: delta index files describing what the slot / the running image
 * holds, used as kept seed indexes (daemon/install/seed-index.ts) instead of cutting that slot.
 * --running-published URL --running-built FILE: the running image's release's delta index as a
 * device without a kept one fetches it (route.ts: capped at and checked against its signed length
 * and SHA-256 from FILE, the release's built.json), inside the timed span.
 * --thin-url URL --thin FILE: the release's thin index (manifests/delta-thin.ts; FILE: its length, SHA-256,
 * base and rawSha256 as the release signs them), used when a seed above is the index it names.
 * --full-bytes N: the full payload's length, as the daemon passes it (route.ts): the install stops with
 * INSTALL_DELTA_NOT_WORTH when the slots would save too little (judged early from samples of slots
 * without a seed index: daemon/install/delta.ts).
 * --interpreted: as the daemon runs it (started with --no-turbofan --no-maglev, see
 * daemon/footprint.ts): V8's optimizing compilers off throughout (a slot cut runs as WebAssembly:
 * manifests/cdc-wasm.ts).
 */
import { readFile, stat } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { fetchVerified, installDelta, type SeedInput } from '../../daemon/install/delta.js';
import { createSlotWriter } from '../../hal/file-slot.js';
import { interpretOnly } from '../../daemon/footprint.js';
import { parseDeltaIndex, type BuiltDelta, type DeltaIndex } from '../../manifests/delta.js';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { built: { type: 'string' }, 'index-url': { type: 'string' }, 'pack-url': { type: 'string' }, slot: { type: 'string' }, running: { type: 'string' }, progress: { type: 'boolean', default: false }, 'target-seed': { type: 'string' }, 'running-seed': { type: 'string' }, 'running-published': { type: 'string' }, 'running-built': { type: 'string' }, 'thin-url': { type: 'string' }, thin: { type: 'string' }, interpreted: { type: 'boolean', default: false }, 'full-bytes': { type: 'string' } } });
  if (values.interpreted) interpretOnly();
  if (!values.built || !values['index-url'] || !values['pack-url'] || !values.slot) throw new Error('usage: delta-child --built FILE --index-url URL --pack-url URL --slot PATH [--running PATH]');
  const built = JSON.parse(await readFile(values.built, 'utf8')) as BuiltDelta;
  // reading and parsing a kept index is part of the install's cost: inside the timed span
  const t0 = process.hrtime.bigint();
  const seeds: { target?: SeedInput; running?: SeedInput } = {
    ...(values['target-seed'] ? { target: parseDeltaIndex(await readFile(values['target-seed'])) } : {}),
    ...(values['running-seed'] ? { running: parseDeltaIndex(await readFile(values['running-seed'])) } : {}),
  };
  if (values['running-published'] && values['running-built']) {
    const old = JSON.parse(await readFile(values['running-built'], 'utf8')) as BuiltDelta;
    const f = await fetchVerified({ urls: [values['running-published']], ...old.index }, {}, 30_000);
    seeds.running = Object.assign(parseDeltaIndex(f.bytes), { origin: 'published' as const });
  }
  const thin = values.thin && values['thin-url'] ? { urls: [values['thin-url']], ...(JSON.parse(await readFile(values.thin, 'utf8')) as { length: number; sha256: string; base: string; rawSha256: string }) } : undefined;
  const bases = [seeds.target, seeds.running].filter((s): s is DeltaIndex => s !== undefined && 'rawSha256' in s);
  const result = await installDelta({
    index: { urls: [values['index-url']], ...built.index },
    ...(thin ? { thin, bases } : {}),
    pack: { urls: [values['pack-url']], ...built.pack },
    slot: createSlotWriter('B', { path: values.slot }),
    seeds,
    readBack: 'path', // as the daemon reads back hal's own slots (compose.ts)
    ...(values['full-bytes'] ? { fullBytes: Number(values['full-bytes']) } : {}),
    ...(values.running ? { running: { path: values.running, size: (await stat(values.running)).size } } : {}),
    ...(values.progress ? { onProgress: (p: object) => void process.stdout.write(`${JSON.stringify({ progress: p })}\n`) } : {}),
  });
  const wallMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const hwm = /VmHWM:\s+(\d+) kB/.exec(await readFile('/proc/self/status', 'utf8'));
  process.stdout.write(`${JSON.stringify({ result, usage: { wallMs, maxRssKiB: hwm ? Number(hwm[1]) : process.resourceUsage().maxRSS } })}\n`);
}

main().catch((e: unknown) => {
  const err = e as { code?: string; message?: string; details?: unknown };
  process.stdout.write(`${JSON.stringify({ error: { code: err.code, message: err.message, details: err.details } })}\n`);
  process.exitCode = 1;
});

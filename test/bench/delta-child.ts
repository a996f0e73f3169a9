/**
 * Runs one delta install in its own process, for `bench:delta` (peak RSS and wall time of the
 * installer alone). Prints one JSON line `{"result":…,"usage":…}` or `{"error":…}` (exit 1).
 *
 *   delta-child --built built.json --index-url URL --pack-url URL --slot PATH [--running PATH] [--progress]
 */
import { readFile, stat } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { installDelta } from '../../daemon/install/delta.js';
import { createSlotWriter } from '../../hal/file-slot.js';
import type { BuiltDelta } from '../../manifests/delta.js';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { built: { type: 'string' }, 'index-url': { type: 'string' }, 'pack-url': { type: 'string' }, slot: { type: 'string' }, running: { type: 'string' }, progress: { type: 'boolean', default: false } } });
  if (!values.built || !values['index-url'] || !values['pack-url'] || !values.slot) throw new Error('usage: delta-child --built FILE --index-url URL --pack-url URL --slot PATH [--running PATH]');
  const built = JSON.parse(await readFile(values.built, 'utf8')) as BuiltDelta;
  const t0 = process.hrtime.bigint();
  const result = await installDelta({
    index: { urls: [values['index-url']], ...built.index },
    pack: { urls: [values['pack-url']], ...built.pack },
    slot: createSlotWriter('B', { path: values.slot }),
    readBack: 'path', // as the daemon reads back hal's own slots (compose.ts)
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

/**
 * Runs one install in its own process, for the bench (peak RSS and CPU of the installer alone) and
 * for the kill-and-resume test. Prints progress lines `{"progress":…}` when --progress is given and
 * one final JSON line `{"result":…,"usage":…}` or `{"error":…}` (exit 1).
 *
 *   install-child --payload built.json --source URL|PATH [--source URL …] --slot PATH
 *                 [--slot-size N] --state FILE [--progress] [--flush-mib N] [--gzip-decoder zlib]
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { installPayload } from '../../daemon/install/index.js';
import type { BuiltPayload } from '../../manifests/payload.js';
import { createPathSlot } from './path-slot.js';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      payload: { type: 'string' },
      source: { type: 'string', multiple: true },
      slot: { type: 'string' },
      'slot-size': { type: 'string' },
      state: { type: 'string' },
      progress: { type: 'boolean', default: false },
      'flush-mib': { type: 'string' },
      'gzip-decoder': { type: 'string' },
      'read-back': { type: 'string' },
    },
  });
  if (!values.payload || !values.source?.length || !values.slot || !values.state) {
    throw new Error('usage: install-child --payload FILE --source URL|PATH --slot PATH --state FILE');
  }
  const built = JSON.parse(await readFile(values.payload, 'utf8')) as BuiltPayload;
  const sources = values.source;
  const isUrl = /^https?:\/\//.test(sources[0]!);
  const slotSize = values['slot-size'] !== undefined ? Number(values['slot-size']) : undefined;
  const t0 = process.hrtime.bigint();
  const result = await installPayload({
    payload: built.payload,
    length: built.length,
    source: isUrl ? { urls: sources } : { path: sources[0]! },
    slot: createPathSlot('B', values.slot, slotSize !== undefined ? { size: slotSize } : {}),
    resumeStatePath: values.state,
    flushEveryBytes: values['flush-mib'] !== undefined ? Number(values['flush-mib']) << 20 : undefined,
    retry: { baseDelayMs: 20, maxAttempts: 4 },
    gzipDecoder: values['gzip-decoder'] === 'zlib' ? 'zlib' : 'zstd-cli',
    readBack: values['read-back'] === 'path' ? 'path' : 'handle',
    onProgress: values.progress ? (p) => process.stdout.write(`${JSON.stringify({ progress: p })}\n`) : undefined,
  });
  const wallMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const ru = process.resourceUsage();
  // CPU of reaped children (the zstd decoder): utime/stime of waited-for children, in clock ticks
  const stat = (await readFile('/proc/self/stat', 'utf8')).split(') ')[1]!.split(' ');
  const childCpuMs = ((Number(stat[13]) + Number(stat[14])) * 1000) / 100;
  // peak RSS of this process image: VmHWM (getrusage's maxrss survives exec and shows the parent's)
  const hwm = /VmHWM:\s+(\d+) kB/.exec(await readFile('/proc/self/status', 'utf8'));
  const maxRssKiB = hwm ? Number(hwm[1]) : ru.maxRSS;
  process.stdout.write(`${JSON.stringify({ result, usage: { wallMs, userMs: ru.userCPUTime / 1000, systemMs: ru.systemCPUTime / 1000, childCpuMs, maxRssKiB } })}\n`);
}

main().catch((e: unknown) => {
  const err = e as { code?: string; message?: string; details?: unknown };
  process.stdout.write(`${JSON.stringify({ error: { code: err.code, message: err.message, details: err.details } })}\n`);
  process.exitCode = 1;
});

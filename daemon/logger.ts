/**
 * The root pino logger, built once by the composition root (CLI entry) and handed down. JSON lines
 * on the given destination (stdout by default: journald collects them), `base: { deviceId, version }`,
 * secrets redacted. Modules take children named after themselves (`daemon.runner`).
 *
 * pino loads worker_threads (lib/tools.js: `isMainThread`), thread-stream (lib/transport.js, for
 * `pino.transport()`) and assert (sonic-boom) at require time, whatever the options or destination:
 * no option avoids them. Measured (issue 16, idlemem3): the idle daemon with the three redirected to
 * stubs by a preloaded module hook idles 0.2-0.5 MiB lower (56.6/56.8 vs 57.1/57.0 MiB, memory-bench
 * --only idle, load 5-8): most of what they cost on a bare Node is shared with modules the daemon
 * loads anyway. Not worth patching a dependency's internals or replacing the logger for.
 */
import { pino, type Logger, type DestinationStream } from 'pino';

export interface LoggerOptions {
  deviceId: string;
  version: string;
  level?: string;
  /** where JSON lines go; tests pass a sink stream and parse the lines. Default: stdout. */
  destination?: DestinationStream;
}

export const REDACT_PATHS = ['password', '*.password', 'key', '*.key', 'credentials', '*.credentials', 'authorization', '*.authorization'];

export function createLogger(o: LoggerOptions): Logger {
  return pino(
    { level: o.level ?? 'info', base: { deviceId: o.deviceId, version: o.version }, redact: { paths: REDACT_PATHS, censor: '[redacted]' } },
    o.destination ?? pino.destination({ dest: 1, sync: true }),
  );
}

/** A logger that drops everything (for commands whose output is the result, not the log). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

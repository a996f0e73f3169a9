/**
 * The root pino logger, built once by the composition root (CLI entry) and handed down. JSON lines
 * on the given destination (stdout by default: journald collects them), `base: { deviceId, version }`,
 * secrets redacted. Modules take children named after themselves (`daemon.runner`).
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

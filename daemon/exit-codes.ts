/**
 * Exit codes of the `slotflip` device commands: one table (README.md "Exit codes"), so scripts and
 * factory lines can rely on them. 0 means the command did what it says, nothing less.
 */
import type { CycleResult } from './agent.js';

export const EXIT = {
  /** the command did what it says (installed and armed / rebooting, committed, up to date for `update`). */
  done: 0,
  /** unexpected error: config, bootloader, I/O. */
  error: 1,
  /** usage: unknown option, missing argument. */
  usage: 2,
  /** an install attempt failed, rolled back, or stopped before it was armed. */
  incomplete: 3,
  /** nothing applicable: no release for this device (or already running it), nothing to roll back. */
  nothing: 4,
  /** the signed metadata was rejected or could not be obtained (any MANIFEST_* refusal). */
  rejected: 5,
  /** busy: another slotflip process holds the lock, or an update in flight forbids this now. */
  busy: 6,
} as const;

/** Selection outcomes that mean "no release applies to this device": not an attack, not an error. */
const NOT_APPLICABLE = new Set([
  'MANIFEST_NO_RELEASE', 'MANIFEST_HARDWARE_MISMATCH', 'MANIFEST_CHANNEL_MISMATCH', 'MANIFEST_DEVICE_NOT_TARGETED',
  'MANIFEST_SECURITY_DOWNGRADE', 'MANIFEST_ROLLOUT_HALTED', 'MANIFEST_ROLLOUT_PENDING', 'MANIFEST_TARGET_NOT_FOUND',
]);

/** Usage-like codes of the tools (a bad argument is the caller's mistake). */
const USAGE = new Set(['MANIFEST_BAD_ARGUMENT', 'DAEMON_BAD_ARGUMENT', 'ERR_PARSE_ARGS_UNKNOWN_OPTION', 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE', 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL']);

/** Exit code for an error that ended a command. */
export function exitCodeForError(code: string | undefined): number {
  const c = code ?? '';
  if (c.endsWith('_USAGE') || USAGE.has(c)) return EXIT.usage;
  if (c === 'DAEMON_LOCKED' || c === 'DAEMON_BUSY') return EXIT.busy;
  if (c === 'DAEMON_NOTHING_TO_ROLL_BACK') return EXIT.nothing;
  if (c.startsWith('MANIFEST_')) return NOT_APPLICABLE.has(c) ? EXIT.nothing : isToolCode(c) ? EXIT.error : EXIT.rejected;
  return EXIT.error;
}

/** Manufacturer-tool codes that say nothing about a device's metadata. */
function isToolCode(c: string): boolean {
  return [
    'MANIFEST_REPO_EXISTS', 'MANIFEST_REPO_INVALID', 'MANIFEST_KEY_MISSING', 'MANIFEST_PAYLOAD_BUILD', 'MANIFEST_PUBLISH_FAILED',
    'MANIFEST_PUBLISH_OVERSIZE', 'MANIFEST_KEY_PASSPHRASE', 'MANIFEST_SIGNER_FAILED', 'MANIFEST_ROOT_PENDING',
  ].includes(c);
}

/** Exit code for a selection/refresh outcome code (verify, check): 4 not applicable, 5 rejected. */
export function exitCodeForRefusal(code: string): number {
  return NOT_APPLICABLE.has(code) ? EXIT.nothing : EXIT.rejected;
}

/** The leading `CODE:` of a check detail ("MANIFEST_EXPIRED: ..."), if any. */
function detailCode(detail: string | undefined): string | undefined {
  return /^([A-Z][A-Z0-9_]+):/.exec(detail ?? '')?.[1];
}

/** Phases in which an attempt is underway but not yet armed (or not yet back on a good slot). */
const UNFINISHED = new Set(['checking', 'preparing', 'downloading', 'verifying', 'arming', 'committing', 'rollingBack', 'validating']);

/**
 * Exit code of one update cycle. `install` demands that a release was installed by this run:
 * nothing to install is 4 there, but 0 for `update` (a periodic cycle that found the device up to
 * date did its job). A check whose metadata was rejected is 5 for both. `checked` false (update
 * --no-check): the stored last check is an older run's and says nothing about this one.
 */
export function cycleExitCode(r: CycleResult, mode: 'update' | 'install', checked = true): number {
  if (r.finished.some((h) => h.outcome !== 'succeeded')) return EXIT.incomplete;
  if (r.rebooted) return EXIT.done;
  if (UNFINISHED.has(r.phase)) return EXIT.incomplete;
  // rebooting without a reboot issued: installed and armed, the reboot deferred by policy
  if (r.phase === 'rebooting') return EXIT.done;
  const check = checked ? r.lastCheck : undefined;
  if (!check) return mode === 'install' ? EXIT.nothing : EXIT.done;
  if (check.result === 'failed') return EXIT.rejected;
  if (check.result === 'none') {
    const code = detailCode(check.detail);
    if (code && code.startsWith('MANIFEST_') && !NOT_APPLICABLE.has(code)) return EXIT.rejected;
    return mode === 'install' ? EXIT.nothing : EXIT.done;
  }
  return EXIT.done;
}

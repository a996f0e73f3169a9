/**
 * `slotflip install SOURCE --config FILE [--json]`: like `rauc install`, from a given place instead
 * of the configured sources: SOURCE is a published repository directory (holding `metadata/` and
 * `targets/`, e.g. a USB stick) or its http(s) URL. The metadata is still verified against the
 * device's shipped TUF root, and the release still has to match this device's hardware, channel and
 * securityVersion: a local source changes where bytes come from, never what is trusted.
 * Then one update cycle runs as `update --once` does (install, arm, reboot per policy).
 */
import { resolve } from 'node:path';
import { SlotflipError } from '../../hal/errors.js';
import { COMMON_OPTIONS_HELP, describeCycle, openAgent, parseCommandArgs, write } from '../command-support.js';
import type { SourceConfig } from '../config.js';
import { cycleExitCode } from '../exit-codes.js';
import type { Command } from './command.js';

export function sourceFromArgument(arg: string): SourceConfig {
  if (/^https?:\/\//.test(arg)) return { type: 'http', url: arg };
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(arg)) throw new SlotflipError('DAEMON_USAGE', `install: unsupported source ${JSON.stringify(arg)}; give a directory or an http(s) URL`);
  return { type: 'dir', path: resolve(arg) };
}

export const command: Command = {
  help: [
    'usage: slotflip install SOURCE --config FILE [--json]',
    '',
    'Install the release for this device from SOURCE: a published repository directory (metadata/',
    'and targets/, e.g. a USB stick) or its http(s) URL. Verified against the device\'s shipped TUF',
    'root like any update; then armed as a trial boot and rebooted into (per the reboot policy).',
    'Run `slotflip update --once` after the reboot to validate (the daemon does it by itself).',
    '',
    'options:',
    COMMON_OPTIONS_HELP,
    '',
    'exit codes: 0 installed and armed (rebooting or reboot pending), 1 error, 2 usage,',
    '  3 the attempt failed, rolled back or stopped before it was armed, 4 no release applies',
    '  (or it already runs), 5 the signed metadata was rejected, 6 busy (another slotflip holds the lock)',
  ].join('\n'),
  async run(argv, io) {
    const p = parseCommandArgs(argv, io, {}, true);
    if (p.positionals.length !== 1) throw new SlotflipError('DAEMON_USAGE', 'install needs exactly one SOURCE (a directory or an http(s) URL); see --help');
    const opened = await openAgent(p, { source: sourceFromArgument(p.positionals[0]!) });
    let r;
    try {
      r = await opened.agent.runOnce({ check: true });
    } finally {
      await opened.close();
    }
    write(io, p.json ? JSON.stringify(r) : describeCycle(r));
    return cycleExitCode(r, 'install');
  },
};

/**
 * `slotflip update --once --config FILE [--json]`: one check-install cycle, for cron-less setups and
 * tests. First resumes whatever is in flight (after a trial boot that is the post-boot validation:
 * health checks, then commit or roll back), then checks for a release and installs it. Stops when a
 * reboot is issued; run it again after the reboot to validate.
 *
 * Exit codes (daemon/exit-codes.ts): 0 done (updated, nothing to do, or rebooting), 3 an attempt
 * failed, rolled back or is unfinished, 5 metadata rejected, 6 busy, 1 error, 2 usage.
 */
import { SlotflipError } from '../../hal/errors.js';
import { COMMON_OPTIONS_HELP, describeCycle, openAgent, parseCommandArgs, write } from '../command-support.js';
import type { Command } from './command.js';
import { cycleExitCode } from '../exit-codes.js';

export const command: Command = {
  help: [
    'usage: slotflip update --once [--no-check] --config FILE [--json]',
    '',
    'Run one update cycle: resume a pending update (validate a trial boot, commit or roll back),',
    'then look for a release for this device and install it into the inactive slot, arm a trial',
    'boot and reboot (when the reboot policy allows). Run again after the reboot to validate.',
    '',
    'options:',
    '  --once          required: one cycle, then exit (the long-running form is `slotflip daemon`)',
    '  --no-check      only resume pending work; do not look for a new release',
    COMMON_OPTIONS_HELP,
    '',
    'exit codes: 0 done (installed and rebooting, committed, or up to date), 1 error, 2 usage,',
    '  3 the attempt failed, rolled back or is unfinished, 5 the signed metadata was rejected, 6 busy',
  ].join('\n'),
  async run(argv, io) {
    const p = parseCommandArgs(argv, io, { once: { type: 'boolean', default: false }, 'no-check': { type: 'boolean', default: false } });
    if (!p.values['once']) throw new SlotflipError('DAEMON_USAGE', 'update needs --once (the long-running form is `slotflip daemon`); see --help');
    const opened = await openAgent(p);
    let r;
    try {
      r = await opened.agent.runOnce({ check: !p.values['no-check'] });
      // a device without a daemon reports a reset applied at boot here (the daemon does at start);
      // after the cycle, which held the state lock: never beside a running daemon
      if (opened.outbox) {
        const { reportAppliedReset } = await import('../reset-report.js');
        await reportAppliedReset(opened.config.stateDir, opened.outbox, opened.log).catch((e: unknown) => opened.log.warn({ err: e }, 'cannot report the factory reset applied at this boot'));
      }
    } finally {
      await opened.close();
    }
    write(io, p.json ? JSON.stringify(r) : describeCycle(r));
    return cycleExitCode(r, 'update', !p.values['no-check']);
  },
};

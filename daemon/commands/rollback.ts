/**
 * `slotflip rollback --config FILE [--reason TEXT] [--json]`: abandon a pending trial boot: mark the
 * trial slot bad and reboot into the committed one; after the reboot, `update --once` (or the daemon)
 * records and reports the rollback. Refuses (DAEMON_NOTHING_TO_ROLL_BACK) when no trial is pending.
 */
import { COMMON_OPTIONS_HELP, describeCycle, openAgent, parseCommandArgs, write } from '../command-support.js';
import type { Command } from './command.js';

export const command: Command = {
  help: [
    'usage: slotflip rollback --config FILE [--reason TEXT] [--json]',
    '',
    'Abandon a pending trial boot: mark the trial slot bad and reboot into the committed slot.',
    'Refuses when no trial is pending (the booted slot is then the committed one).',
    '',
    'options:',
    '  --reason TEXT   recorded in the history and the report (default: "rollback requested by operator")',
    COMMON_OPTIONS_HELP,
    '',
    'exit codes: 0 rolling back, 4 nothing to roll back, 6 busy (another slotflip holds the lock), 1 error, 2 usage',
  ].join('\n'),
  async run(argv, io) {
    const p = parseCommandArgs(argv, io, { reason: { type: 'string' } });
    const { agent } = await openAgent(p, {}, { connect: false });
    const r = await agent.rollback((p.values['reason'] as string | undefined) ?? undefined);
    write(io, p.json ? JSON.stringify(r) : describeCycle(r));
    return 0;
  },
};

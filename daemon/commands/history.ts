/**
 * `slotflip history --config FILE [--json]`: finished update attempts, oldest first (bounded), with
 * outcome, reason and failed checks. Read-only.
 */
import { COMMON_OPTIONS_HELP, openAgent, parseCommandArgs, write } from '../command-support.js';
import type { Command } from './command.js';

export const command: Command = {
  help: ['usage: slotflip history --config FILE [--json]', '', 'List finished update attempts (succeeded, rolledBack, failed), oldest first. Read-only.', '', 'options:', COMMON_OPTIONS_HELP].join('\n'),
  async run(argv, io) {
    const p = parseCommandArgs(argv, io);
    const { agent } = await openAgent(p, {}, { connect: false });
    const h = await agent.history();
    if (p.json) {
      write(io, JSON.stringify(h));
      return 0;
    }
    if (h.length === 0) write(io, 'no update attempts yet');
    for (const e of h) {
      write(io, `#${e.attempt} ${new Date(e.endedAt).toISOString()} ${e.outcome} ${e.release.version} (${e.release.id}) ${e.source}→${e.target}${e.reason ? ` ${e.reason.code}: ${e.reason.message}` : ''}`);
      for (const f of e.failures ?? []) write(io, `    ${f.name}: ${f.output.split('\n').slice(-3).join(' | ')}`);
    }
    return 0;
  },
};

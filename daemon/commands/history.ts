/**
 * `slotflip history --config FILE [--json]`: finished update attempts, oldest first (bounded), with
 * outcome, reason, failed checks and warnings. Read-only.
 */
import { COMMON_OPTIONS_HELP, openAgent, parseCommandArgs, write } from '../command-support.js';
import type { HistoryEntry } from '../machine.js';
import type { Command } from './command.js';
import { lastLines } from './status.js';

/** The human listing: one line per attempt, then its failed checks, then its warnings (failed
 * `required: false` checks of a boot that still committed). Pure. */
export function formatHistory(h: readonly HistoryEntry[]): string {
  if (h.length === 0) return 'no update attempts yet';
  const lines: string[] = [];
  for (const e of h) {
    lines.push(`#${e.attempt} ${new Date(e.endedAt).toISOString()} ${e.outcome} ${e.release.version} (${e.release.id}) ${e.source}→${e.target}${e.reason ? ` ${e.reason.code}: ${e.reason.message}` : ''}`);
    for (const f of e.failures ?? []) lines.push(`    ${f.name}: ${lastLines(f.output)}`);
    for (const w of e.warnings ?? []) lines.push(`    warning ${w.name}: ${lastLines(w.output)}`);
  }
  return lines.join('\n');
}

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
    write(io, formatHistory(h));
    return 0;
  },
};

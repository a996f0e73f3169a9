/**
 * `slotflip status --config FILE [--json]`: where the device stands: booted slot, both slots' boot
 * state and release, the update phase and attempt, the committed securityVersion, the last check and
 * the last result (with the failed checks of a rollback and the warnings of a commit). Read-only.
 */
import { COMMON_OPTIONS_HELP, openAgent, parseCommandArgs, write } from '../command-support.js';
import type { AgentStatus } from '../agent.js';
import type { Command } from './command.js';
import { formatBrokerReport, readBrokerReport } from '../broker-state.js';

/** The last few lines of a check's output, on one line. */
export function lastLines(output: string, n = 3): string {
  return output.split('\n').slice(-n).join(' | ');
}

export function formatStatus(s: AgentStatus): string {
  const lines = [
    `device ${s.deviceId} (${s.hardware}, channel ${s.channel})`,
    `booted slot ${s.bootedSlot}; phase ${s.phase}; committed securityVersion ${s.committedSecurityVersion}`,
  ];
  for (const slot of s.slots) {
    const boot = 'error' in slot.boot ? `unknown (${slot.boot.error})` : `${slot.boot.state}${slot.boot.primary ? ', primary' : ''}${slot.boot.triesLeft !== undefined ? `, ${slot.boot.triesLeft} tries left` : ''}`;
    lines.push(`  slot ${slot.slot}${slot.booted ? ' (booted)' : ''}: ${boot}; ${slot.release ? `${slot.release.version} (${slot.release.id})` : 'release unknown'}`);
  }
  if (s.attempt) {
    const a = s.attempt;
    lines.push(`attempt ${a.number}: ${a.version} slot ${a.source} → ${a.target}, ${a.transitions} transitions`);
    // a failed step being retried (arming, rebooting, committing, rolling back): say what and when
    if (a.stepFailures && a.lastError) {
      lines.push(`  ${s.phase} failed ${a.stepFailures} time${a.stepFailures === 1 ? '' : 's'} (${a.lastError.code}: ${a.lastError.message}); retried${a.retryAt !== undefined ? ` at ${new Date(a.retryAt).toISOString()}` : ''} by the daemon or the next \`slotflip update --once\``);
    }
  }
  if (s.lastCheck) lines.push(`last check ${new Date(s.lastCheck.at).toISOString()}: ${s.lastCheck.result}${s.lastCheck.detail ? ` (${s.lastCheck.detail})` : ''}`);
  if (s.lastResult) {
    const l = s.lastResult;
    lines.push(`last result: ${l.outcome} ${l.release.version}${l.reason ? ` (${l.reason.code})` : ''}${l.warnings?.length ? ` with ${l.warnings.length} warning${l.warnings.length === 1 ? '' : 's'}` : ''}`);
    // failed wanted (required: false) checks of a boot that passed: the device committed, but
    // something the operator asked to hear about is not right
    for (const w of l.warnings ?? []) lines.push(`  warning ${w.name}: ${lastLines(w.output)}`);
    if (l.outcome !== 'succeeded') for (const f of l.failures ?? []) lines.push(`  failed ${f.name}: ${lastLines(f.output)}`);
  }
  return lines.join('\n');
}

export const command: Command = {
  help: ['usage: slotflip status --config FILE [--json]', '', 'Show the booted slot, both slots\' boot state and release, the update phase and the last result. Read-only.', '', 'options:', COMMON_OPTIONS_HELP].join('\n'),
  async run(argv, io) {
    const p = parseCommandArgs(argv, io);
    const { agent, config } = await openAgent(p, {}, { connect: false });
    const s = await agent.status();
    // what the daemon last saw of its broker (protocol, metadata problems): daemon/broker-state.ts
    const broker = config.broker ? await readBrokerReport(config.stateDir) : undefined;
    write(io, p.json ? JSON.stringify(broker ? { ...s, broker } : s) : [formatStatus(s), ...(broker ? formatBrokerReport(broker) : [])].join('\n'));
    return 0;
  },
};

/**
 * `slotflip status --config FILE [--json]`: where the device stands: booted slot, both slots' boot
 * state and release, the update phase and attempt, the committed securityVersion, the last check and
 * the last result. Read-only.
 */
import { COMMON_OPTIONS_HELP, openAgent, parseCommandArgs, write } from '../command-support.js';
import type { AgentStatus } from '../agent.js';
import type { Command } from './command.js';

export function formatStatus(s: AgentStatus): string {
  const lines = [
    `device ${s.deviceId} (${s.hardware}, channel ${s.channel})`,
    `booted slot ${s.bootedSlot}; phase ${s.phase}; committed securityVersion ${s.committedSecurityVersion}`,
  ];
  for (const slot of s.slots) {
    const boot = 'error' in slot.boot ? `unknown (${slot.boot.error})` : `${slot.boot.state}${slot.boot.primary ? ', primary' : ''}${slot.boot.triesLeft !== undefined ? `, ${slot.boot.triesLeft} tries left` : ''}`;
    lines.push(`  slot ${slot.slot}${slot.booted ? ' (booted)' : ''}: ${boot}; ${slot.release ? `${slot.release.version} (${slot.release.id})` : 'release unknown'}`);
  }
  if (s.attempt) lines.push(`attempt ${s.attempt.number}: ${s.attempt.version} slot ${s.attempt.source} → ${s.attempt.target}, ${s.attempt.transitions} transitions`);
  if (s.lastCheck) lines.push(`last check ${new Date(s.lastCheck.at).toISOString()}: ${s.lastCheck.result}${s.lastCheck.detail ? ` (${s.lastCheck.detail})` : ''}`);
  if (s.lastResult) lines.push(`last result: ${s.lastResult.outcome} ${s.lastResult.release.version}${s.lastResult.reason ? ` (${s.lastResult.reason.code})` : ''}`);
  return lines.join('\n');
}

export const command: Command = {
  help: ['usage: slotflip status --config FILE [--json]', '', 'Show the booted slot, both slots\' boot state and release, the update phase and the last result. Read-only.', '', 'options:', COMMON_OPTIONS_HELP].join('\n'),
  async run(argv, io) {
    const p = parseCommandArgs(argv, io);
    const { agent } = await openAgent(p, {}, { connect: false });
    const s = await agent.status();
    write(io, p.json ? JSON.stringify(s) : formatStatus(s));
    return 0;
  },
};

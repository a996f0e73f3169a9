/**
 * `slotflip mark-good --config FILE [--json]`: confirm the running slot now, without waiting for
 * the health checks (like `rauc status mark-good`). A pending trial commits and is reported as
 * succeeded; with nothing pending the booted slot is committed (idempotent).
 */
import { COMMON_OPTIONS_HELP, describeCycle, openAgent, parseCommandArgs, write } from '../command-support.js';
import type { Command } from './command.js';

export const command: Command = {
  help: ['usage: slotflip mark-good --config FILE [--json]', '', 'Confirm the booted slot: commit a pending trial boot now (skipping the health checks), or re-commit the booted slot.', '', 'options:', COMMON_OPTIONS_HELP, '', 'exit codes: 0 marked good, 6 busy (an update in flight, or another slotflip holds the lock), 1 error, 2 usage'].join('\n'),
  async run(argv, io) {
    const p = parseCommandArgs(argv, io);
    const { agent } = await openAgent(p, {}, { connect: false });
    const r = await agent.markGood();
    write(io, p.json ? JSON.stringify(r) : r.finished.length ? describeCycle(r) : `slot ${r.bootedSlot} marked good`);
    return 0;
  },
};

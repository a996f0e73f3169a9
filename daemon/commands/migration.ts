/**
 * `slotflip migration settle --config FILE [--json]`: restore or drop the data-migration snapshot
 * once its attempt is decided (daemon/migration.ts `settle`). slotflip-migration-settle.service
 * runs it early at boot, after the data partition is mounted and before the applications start,
 * so an old slot that booted after a failed trial never sees the new release's migrated data. The
 * daemon does the same at the end of every cycle; both are idempotent.
 */
import { SlotflipError } from '../../hal/errors.js';
import { createBootControl } from '../../hal/registry.js';
import { parseCommandArgs, write } from '../command-support.js';
import { loadConfig } from '../config.js';
import { FileStateStore } from '../state-store.js';
import { createMigrations } from '../migration.js';
import type { Command } from './command.js';

export const command: Command = {
  help: ['usage: slotflip migration settle --config FILE [--json]', '', "Restore the data-migration snapshot when a slot other than the migration's trial slot booted (a rollback), drop it when that attempt committed; otherwise leave it. Early-boot step (slotflip-migration-settle.service).", '', 'exit codes: 0 done (or nothing to do), 1 error, 2 usage'].join('\n'),
  async run(argv, io) {
    const p = parseCommandArgs(argv, io, {}, true);
    if (p.positionals.length !== 1 || p.positionals[0] !== 'settle') throw new SlotflipError('DAEMON_USAGE', 'expected `slotflip migration settle --config FILE`; see --help');
    const config = await loadConfig(p.config);
    const booted = await createBootControl(config.board.boot, {}).bootedSlot();
    const state = await new FileStateStore({ stateDir: config.stateDir, now: Date.now }).load();
    const done = await createMigrations(config).settle(booted, state.history);
    write(io, p.json ? JSON.stringify({ bootedSlot: booted, snapshot: done ?? null }) : done ? `migration snapshot ${done} (booted slot ${booted})` : 'no migration snapshot to settle');
    return 0;
  },
};

/**
 * The report of a factory reset applied at boot (FactoryResetApplied), sent once by whichever
 * slotflip process first runs with an outbox after the reset boot: the daemon at start, or
 * `slotflip update --once` on a device without a daemon. The apply (daemon/factory-reset.ts)
 * leaves a note in the state dir; it is dropped only after the event is in the outbox, so a crash in
 * between reports it twice (at least once, like every event), never zero times.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { readFileCapped } from '../hal/atomic-file.js';
import type { Outbox } from './outbox.js';
import { toErrorInfo } from './runner.js';

/** the apply's note (daemon/factory-reset.ts RESET_DONE_FILE; repeated here so that reporting does
 * not load the reset code). */
const RESET_DONE_FILE = 'factory-reset-done.json';

export async function reportAppliedReset(stateDir: string, outbox: Outbox, log: Logger): Promise<void> {
  const path = join(stateDir, RESET_DONE_FILE);
  let done: Record<string, unknown>;
  try {
    done = JSON.parse((await readFileCapped(path, 64 * 1024)).toString('utf8')) as Record<string, unknown>;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    log.warn({ err: toErrorInfo(e), path }, 'unreadable factory reset report; dropped');
    await rm(path, { force: true }).catch(() => undefined);
    return;
  }
  const command = done['command'] as { id?: unknown; nonce?: unknown } | undefined;
  await outbox.append({ type: 'FactoryResetApplied', mode: String(done['mode'] ?? 'full'), via: command ? 'fleet' : 'local', ...(typeof command?.id === 'string' ? { commandId: command.id } : {}), ...(typeof command?.nonce === 'string' ? { nonce: command.nonce } : {}) });
  log.info({ mode: done['mode'], commandId: command?.id }, 'factory reset applied at this boot');
  await rm(path, { force: true });
}

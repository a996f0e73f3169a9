/**
 * Requesting a factory reset from a device's config: what `slotflip factory-reset` (local) and a
 * signed fleet command (daemon/fleet-command.ts) both do, so the two leave the same marker. The
 * apply at boot (daemon/factory-reset.ts) reads no config; everything it needs goes into the marker
 * here.
 */
import { join } from 'node:path';
import { recordFloor, requestFactoryReset, stateDirOnData, type ResetMarker, type ResetMode } from './factory-reset.js';
import { RECORD_FILE } from './state-store.js';
import { configDefaults, type Config } from './config.js';

/** The data dir and identity paths of a config (defaults for configs built in code). */
export function dataOf(config: Config): { dir: string; identity: string[] } {
  return config.data ?? { dir: configDefaults.data.dir, identity: [...configDefaults.data.identity] };
}

/**
 * Leaves the reset marker for the next boot (one atomic write; nothing is wiped now). The floor and
 * trust anchors live in the state dir: kept (every mode but `as-shipped`) when it lies on the data
 * partition; outside it, the reset never touches them. `command`: the fleet command that asked.
 */
export async function requestResetFromConfig(config: Config, mode: ResetMode, now: number, command?: { id: string; nonce: string }): Promise<ResetMarker & { dataDir: string }> {
  const data = dataOf(config);
  const onData = await stateDirOnData(data.dir, config.stateDir);
  const security = { ...(onData !== undefined ? { dir: onData } : {}), floor: await recordFloor(join(config.stateDir, RECORD_FILE)) };
  const marker = await requestFactoryReset(data.dir, mode, data.identity, now, security, command);
  return { dataDir: data.dir, ...marker };
}

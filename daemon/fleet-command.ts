/**
 * A signed factory-reset command from the fleet (format and signature: manifests/command.ts),
 * judged and run on the device. The service (daemon/service.ts) calls `runFleetCommand` between
 * update cycles, never during one, and reports the outcome.
 *
 * Checks, each refusal with its own code and nothing written: the command's shape, signature
 * (targets keys of the trusted root), expiry (trusted time) and device (MANIFEST_COMMAND_*, pure:
 * manifests/command.ts); then this device's own limits: a nonce it already ran
 * (DAEMON_COMMAND_REPLAYED), a mode its config does not permit (DAEMON_COMMAND_NOT_PERMITTED), an
 * update attempt in flight (DAEMON_COMMAND_BUSY: a reset during a trial would forget the trial).
 * The trusted directory is only read (TrustClient.currentTrust), so a refused command leaves the
 * trusted state, the update record, the replay memory and the data partition byte-identical.
 *
 * Accepting is two atomic writes, in this order: the reset marker (the same as `slotflip
 * factory-reset` leaves: daemon/reset-request.ts), then the nonce in the replay memory
 * (`<stateDir>/fleet-commands.json`). A crash between them leaves a marker and a command not yet
 * remembered: the retained command comes again and is accepted again (same marker). The reverse
 * order could lose a command. The replay memory survives every reset mode (daemon/factory-reset.ts
 * keeps it), and entries are dropped only once their command has expired (then it is refused as
 * expired anyway). A command may be valid for at most 7 days, so the memory stays small.
 */
import { join } from 'node:path';
import type { Root } from '@tufjs/models';
import { readFileCapped, writeFileAtomic } from '../hal/atomic-file.js';
import { verifyCommand, type CommandRejectCode, type FactoryResetCommand } from '../manifests/command.js';
import { configDefaults, type Config } from './config.js';
import { FLEET_COMMANDS_FILE, type ResetMarker } from './factory-reset.js';
import { requestResetFromConfig } from './reset-request.js';
import { RECORD_FILE } from './state-store.js';

/** entries kept at most (a command lives ≤ 7 days: more than this many in a week is not a fleet). */
const MAX_REMEMBERED = 1024;

export type FleetCommandCode = CommandRejectCode | 'DAEMON_COMMAND_REPLAYED' | 'DAEMON_COMMAND_NOT_PERMITTED' | 'DAEMON_COMMAND_BUSY' | 'MANIFEST_NO_TRUSTED_ROOT';

export type FleetCommandOutcome =
  | { accepted: true; id: string; command: FactoryResetCommand; marker: ResetMarker & { dataDir: string } }
  | { accepted: false; code: FleetCommandCode; message: string; id?: string; command?: Partial<FactoryResetCommand> };

export interface FleetCommandDeps {
  config: Config;
  now: () => number;
  /** the trusted root and time, read-only (TrustClient.currentTrust). */
  trust: () => Promise<{ root: Root; trustedTime: number }>;
  /** where the command came from, for messages (the topic). */
  where: string;
}

interface Remembered {
  nonce: string;
  id: string;
  expires: string;
}

function memoryPath(config: Config): string {
  return join(config.stateDir, FLEET_COMMANDS_FILE);
}

async function readMemory(path: string): Promise<Remembered[]> {
  let text: string;
  try {
    // ~100 bytes an entry, MAX_REMEMBERED entries
    text = (await readFileCapped(path, 1 << 20)).toString('utf8');
  } catch {
    return [];
  }
  try {
    const v = JSON.parse(text) as { seen?: unknown };
    return Array.isArray(v.seen) ? v.seen.filter((e): e is Remembered => typeof e?.nonce === 'string' && typeof e.expires === 'string') : [];
  } catch {
    // written atomically, so only a foreign writer garbles it: refuse nothing because of it, but
    // keep what the trusted time already rules out (expiry) as the line of defence
    return [];
  }
}

/** The phase the update record names, read leniently (any record that says where an attempt is
 * counts, even one the state store would refuse); undefined when there is none. */
async function recordPhase(path: string): Promise<string | undefined> {
  try {
    const phase = (JSON.parse((await readFileCapped(path, 16 << 20)).toString('utf8')) as { phase?: unknown }).phase;
    return typeof phase === 'string' ? phase : undefined;
  } catch {
    return undefined;
  }
}

/** Judges the command in `bytes` and, when it is acceptable, requests the reset (see the header). */
export async function runFleetCommand(bytes: Uint8Array, deps: FleetCommandDeps): Promise<FleetCommandOutcome> {
  const { config } = deps;
  let trust;
  try {
    trust = await deps.trust();
  } catch (e) {
    return { accepted: false, code: 'MANIFEST_NO_TRUSTED_ROOT', message: `${deps.where}: no trusted root to check the command against (${(e as { code?: string }).code ?? 'error'}); reinstall the OS image or restore its root.json` };
  }
  const v = verifyCommand(bytes, { root: trust.root, deviceId: config.deviceId, at: trust.trustedTime, where: deps.where });
  if (!v.ok) return { accepted: false, code: v.code, message: v.message, ...(v.id ? { id: v.id } : {}), ...(v.command ? { command: v.command } : {}) };
  const { command, id } = v;
  const seen = await readMemory(memoryPath(config));
  if (seen.some((e) => e.nonce === command.nonce)) {
    return { accepted: false, code: 'DAEMON_COMMAND_REPLAYED', message: `${deps.where}: command ${id} (nonce ${command.nonce}) already ran on this device; issue a new one to reset it again`, id, command };
  }
  const permitted = config.data?.fleetResetModes ?? configDefaults.data.fleetResetModes;
  if (!permitted.includes(command.mode)) {
    return { accepted: false, code: 'DAEMON_COMMAND_NOT_PERMITTED', message: `${deps.where}: reset mode "${command.mode}" is not one this device permits from the fleet (config /data/fleetResetModes: ${permitted.length > 0 ? permitted.join(', ') : 'none'})`, id, command };
  }
  const phase = await recordPhase(join(config.stateDir, RECORD_FILE));
  if (phase !== undefined && phase !== 'idle' && phase !== 'checking') {
    return { accepted: false, code: 'DAEMON_COMMAND_BUSY', message: `${deps.where}: an update attempt is in flight (phase ${phase}); a reset now would forget it. The device runs the command once the attempt ends, or send it again then`, id, command };
  }
  const marker = await requestResetFromConfig(config, command.mode, deps.now(), { id, nonce: command.nonce });
  // after the marker (see the header); expired entries go, they can no longer be replayed
  const live = seen.filter((e) => Date.parse(e.expires) > trust.trustedTime);
  const next = [...live, { nonce: command.nonce, id, expires: command.expires }].slice(-MAX_REMEMBERED);
  await writeFileAtomic(memoryPath(config), JSON.stringify({ schema: 1, seen: next }) + '\n');
  return { accepted: true, id, command, marker };
}

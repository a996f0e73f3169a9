/**
 * The manufacturer's side of signed fleet commands (format: manifests/command.ts): build a
 * factory-reset command for one device and sign it with the repository's targets key (a key file,
 * encrypted or not, or an external signer: the same custody as the metadata it signs). Publishing
 * it is the CLI's (`slotflip fleet factory-reset`, daemon/commands/fleet.ts), on the device's own
 * command topic.
 */
import { randomBytes } from 'node:crypto';
import { Key } from '@tufjs/models';
import { SlotflipError } from '../hal/errors.js';
import { buildResetCommand, MAX_VALIDITY_MS, type CommandEnvelope, type CommandResetMode } from './command.js';
import { canonicalJson } from './keys.js';
import { roleSigner, type KeyAccess } from './repo.js';

export interface SignResetOptions {
  deviceId: string;
  mode: CommandResetMode;
  reboot: boolean;
  /** how long the command stays valid, ms (at most MAX_VALIDITY_MS). */
  validMs: number;
  now?: () => number;
  keys?: KeyAccess;
  /** the nonce (tests); default 16 random bytes. */
  nonce?: string;
}

/** Signs a factory-reset command for one device with DIR's targets key. MANIFEST_BAD_ARGUMENT,
 * MANIFEST_KEY_MISSING, MANIFEST_SIGNER_FAILED. */
export async function signResetCommand(dir: string, o: SignResetOptions): Promise<CommandEnvelope> {
  if (!Number.isFinite(o.validMs) || o.validMs < 1000 || o.validMs > MAX_VALIDITY_MS) {
    throw new SlotflipError('MANIFEST_BAD_ARGUMENT', `a command's validity must be between 1 s and ${MAX_VALIDITY_MS / 86_400_000} days (devices refuse longer ones)`, { details: { validMs: o.validMs } });
  }
  const signer = await roleSigner(dir, 'targets', o.keys);
  const signed = buildResetCommand({ deviceId: o.deviceId, mode: o.mode, reboot: o.reboot, nonce: o.nonce ?? randomBytes(16).toString('hex'), now: (o.now ?? Date.now)(), validMs: o.validMs });
  const sig = await signer.sign(Buffer.from(canonicalJson(signed), 'utf8'));
  const envelope: CommandEnvelope = { signed, signatures: [{ keyid: signer.keyid, sig }] };
  // the signature must verify with the key it names before a device sees it (a signer holding
  // another key fails here, not on every device)
  try {
    Key.fromJSON(signer.keyid, signer.publicJson as never).verifySignature({ signed: { toJSON: () => signed }, signatures: { [signer.keyid]: { keyID: signer.keyid, sig } } } as never);
  } catch (cause) {
    throw new SlotflipError('MANIFEST_SIGNER_FAILED', `${signer.where}: the command's signature does not verify with key ${signer.keyid.slice(0, 12)}…`, { cause, details: { keyid: signer.keyid } });
  }
  return envelope;
}

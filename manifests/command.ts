/**
 * Signed fleet commands for one device (issue 18: a factory reset the manufacturer sends).
 *
 * A command is a statement outside the TUF workflow, signed the way `offline.json` is: by a
 * threshold of the *targets* keys of the root the device trusts (the role that already decides what
 * the device installs, which is more than a reset can do). The bytes signed are the canonical JSON
 * of `signed`, whose `_type` ("slotflip-command") no TUF role has, so a command can never pass for
 * metadata nor metadata for a command.
 *
 *   { "signed": { "_type": "slotflip-command", "version": 1, "command": "factory-reset",
 *                 "deviceId": "gw-7", "mode": "full", "reboot": true, "nonce": "<32 hex>",
 *                 "issued": "2026-05-01T12:00:00Z", "expires": "2026-05-01T13:00:00Z" },
 *     "signatures": [ { "keyid": "...", "sig": "..." } ] }
 *
 * Binding: `deviceId` (exactly this device), `expires` (judged against the device's trusted time,
 * which never runs backwards) and `nonce` (the device remembers every nonce it ran until the
 * command expires: daemon/fleet-command.ts). A command may be valid for at most MAX_VALIDITY_MS, so
 * that memory stays bounded. This module is pure: it parses and verifies and returns a result; the
 * replay memory, the device's own limits and running the reset are the daemon's.
 */
import { createHash } from 'node:crypto';
import type { Root } from '@tufjs/models';
import { canonicalJson } from './keys.js';
import { verifyThreshold } from './client.js';

export const COMMAND_TYPE = 'slotflip-command';
/** a command is at most this large on the wire (checked before parsing). */
export const MAX_COMMAND_BYTES = 16 * 1024;
/** the longest a command may stay valid (expires - issued). */
export const MAX_VALIDITY_MS = 7 * 86_400_000;
export const COMMAND_NAMES = ['factory-reset'] as const;
export const RESET_MODE_NAMES = ['full', 'keep-identity', 'as-shipped'] as const;

export type CommandName = (typeof COMMAND_NAMES)[number];
export type CommandResetMode = (typeof RESET_MODE_NAMES)[number];

/** The signed part of a factory-reset command. */
export interface FactoryResetCommand {
  _type: typeof COMMAND_TYPE;
  version: 1;
  command: 'factory-reset';
  deviceId: string;
  mode: CommandResetMode;
  /** reboot right away to apply it (else it is applied at the next boot, whoever reboots). */
  reboot: boolean;
  /** 16 random bytes, hex: what makes each command one of a kind. */
  nonce: string;
  issued: string;
  expires: string;
}

export interface CommandEnvelope {
  signed: FactoryResetCommand;
  signatures: { keyid: string; sig: string }[];
}

export type CommandRejectCode = 'MANIFEST_COMMAND_INVALID' | 'MANIFEST_COMMAND_SIGNATURE' | 'MANIFEST_COMMAND_WRONG_DEVICE' | 'MANIFEST_COMMAND_EXPIRED';

export type CommandVerdict =
  | { ok: true; command: FactoryResetCommand; id: string }
  | { ok: false; code: CommandRejectCode; message: string; /** what could be read of it, for the report */ command?: Partial<FactoryResetCommand>; id?: string };

const NONCE = /^[0-9a-f]{32}$/;
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A short, stable id of a command for logs and reports: sha256 of its signed part, 16 hex. */
export function commandId(signed: unknown): string {
  return createHash('sha256').update(canonicalJson(signed)).digest('hex').slice(0, 16);
}

function isoSeconds(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** The signed part of a new factory-reset command (the publisher signs its canonical JSON). Pure. */
export function buildResetCommand(o: { deviceId: string; mode: CommandResetMode; reboot: boolean; nonce: string; now: number; validMs: number }): FactoryResetCommand {
  return { _type: COMMAND_TYPE, version: 1, command: 'factory-reset', deviceId: o.deviceId, mode: o.mode, reboot: o.reboot, nonce: o.nonce, issued: isoSeconds(o.now), expires: isoSeconds(o.now + o.validMs) };
}

/**
 * Parses and verifies a command for the device `deviceId`, against the trusted `root` at the
 * trusted time `at` (ms). Checks, in this order, each with its own code: size and shape
 * (MANIFEST_COMMAND_INVALID), signatures (MANIFEST_COMMAND_SIGNATURE: a threshold of the root's
 * targets keys), the root's own expiry and the command's (MANIFEST_COMMAND_EXPIRED), the device
 * (MANIFEST_COMMAND_WRONG_DEVICE). Nothing unsigned is looked at beyond its shape. Pure.
 */
export function verifyCommand(bytes: Uint8Array, o: { root: Root; deviceId: string; at: number; where: string }): CommandVerdict {
  const where = o.where;
  const invalid = (why: string, command?: Partial<FactoryResetCommand>): CommandVerdict => ({ ok: false, code: 'MANIFEST_COMMAND_INVALID', message: `${where}: ${why}`, ...(command ? { command } : {}) });
  if (bytes.length > MAX_COMMAND_BYTES) return invalid(`${bytes.length} bytes, more than the ${MAX_COMMAND_BYTES} a command may have`);
  let doc: { signed?: unknown; signatures?: unknown };
  try {
    doc = JSON.parse(utf8.decode(bytes)) as typeof doc;
  } catch {
    return invalid('not UTF-8 JSON');
  }
  if (typeof doc !== 'object' || doc === null) return invalid('not a JSON object');
  const s = doc.signed as Record<string, unknown> | undefined;
  if (typeof s !== 'object' || s === null || Array.isArray(s)) return invalid('"signed" is missing');
  if (s['_type'] !== COMMAND_TYPE) return invalid(`"signed._type" is not "${COMMAND_TYPE}"`);
  if (s['version'] !== 1) return invalid(`"signed.version" ${JSON.stringify(s['version'])} is not 1 (a newer publisher?)`);
  if (!COMMAND_NAMES.includes(s['command'] as CommandName)) return invalid(`unknown command ${JSON.stringify(s['command'])}; this device knows ${COMMAND_NAMES.join(', ')}`);
  const known = new Set(['_type', 'version', 'command', 'deviceId', 'mode', 'reboot', 'nonce', 'issued', 'expires']);
  const extra = Object.keys(s).filter((k) => !known.has(k));
  if (extra.length > 0) return invalid(`unknown field(s) ${extra.join(', ')} in "signed"`);
  if (typeof s['deviceId'] !== 'string' || s['deviceId'].length === 0 || s['deviceId'].length > 128) return invalid('"signed.deviceId" must be a device id');
  if (!RESET_MODE_NAMES.includes(s['mode'] as CommandResetMode)) return invalid(`"signed.mode" ${JSON.stringify(s['mode'])} is none of ${RESET_MODE_NAMES.join(', ')}`);
  if (typeof s['reboot'] !== 'boolean') return invalid('"signed.reboot" must be true or false');
  if (typeof s['nonce'] !== 'string' || !NONCE.test(s['nonce'])) return invalid('"signed.nonce" must be 32 lower-case hex digits');
  const issued = typeof s['issued'] === 'string' ? Date.parse(s['issued']) : NaN;
  const expires = typeof s['expires'] === 'string' ? Date.parse(s['expires']) : NaN;
  if (!Number.isFinite(issued) || !Number.isFinite(expires)) return invalid('"signed.issued" and "signed.expires" must be ISO-8601 times');
  const cmd = s as unknown as FactoryResetCommand;
  const seen: Partial<FactoryResetCommand> = { command: cmd.command, deviceId: cmd.deviceId, mode: cmd.mode, nonce: cmd.nonce, issued: cmd.issued, expires: cmd.expires };
  if (expires <= issued || expires - issued > MAX_VALIDITY_MS) return invalid(`valid from ${cmd.issued} to ${cmd.expires}: a command must expire after it is issued and within ${MAX_VALIDITY_MS / 86_400_000} days`, seen);
  if (!Array.isArray(doc.signatures)) return invalid('"signatures" is not a list', seen);
  const signatures: Record<string, { keyID: string; sig: string }> = {};
  for (const sg of doc.signatures as { keyid?: unknown; sig?: unknown }[]) {
    if (typeof sg?.keyid !== 'string' || typeof sg.sig !== 'string') return invalid('a signature lacks keyid or sig', seen);
    if (signatures[sg.keyid]) return invalid('duplicate signature key id', seen);
    signatures[sg.keyid] = { keyID: sg.keyid, sig: sg.sig };
  }
  const id = commandId(s);
  // the same check (distinct keys, threshold) as targets metadata, over the canonical signed part
  const md = { signatures, signed: { toJSON: () => s } } as never;
  try {
    verifyThreshold('targets', o.root.roles['targets'], o.root.keys, md, where);
  } catch (e) {
    return { ok: false, code: 'MANIFEST_COMMAND_SIGNATURE', message: `${where} is not signed by a threshold of the targets keys of the trusted root v${o.root.version} (${(e as Error).message}); sign it with the repository's targets key, and publish a rotated root before commands signed by its new keys`, command: seen, id };
  }
  if (o.at >= Date.parse(o.root.expires)) return { ok: false, code: 'MANIFEST_COMMAND_EXPIRED', message: `${where}: the trusted root v${o.root.version} expired at ${o.root.expires} (trusted time ${new Date(o.at).toISOString()}); publish a new root first`, command: seen, id };
  if (o.at >= expires) return { ok: false, code: 'MANIFEST_COMMAND_EXPIRED', message: `${where} expired at ${cmd.expires} (trusted time ${new Date(o.at).toISOString()}); issue a new one`, command: seen, id };
  if (cmd.deviceId !== o.deviceId) return { ok: false, code: 'MANIFEST_COMMAND_WRONG_DEVICE', message: `${where} is for device ${JSON.stringify(cmd.deviceId)}, this is ${JSON.stringify(o.deviceId)}`, command: seen, id };
  return { ok: true, command: cmd, id };
}

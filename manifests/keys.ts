/**
 * Ed25519 signing keys for TUF metadata, and OLPC canonical JSON (the bytes TUF signs).
 * Key ids are the standard TUF ones: sha256 of the canonical JSON of the public key object, so other
 * TUF tools compute the same ids. Private keys are PKCS#8 PEM; nothing here touches the disk.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign as edSign, type KeyObject } from 'node:crypto';
import { Key, Signature } from '@tufjs/models';
import { SlotflipError } from '../hal/errors.js';

export interface SigningKey {
  keyid: string;
  /** raw 32-byte public key, hex (TUF's ed25519 keyval.public). */
  publicHex: string;
  privateKey: KeyObject;
}

/** OLPC canonical JSON as TUF uses it: sorted keys, no whitespace, only `"` and `\` escaped, integers only. */
export function canonicalJson(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'number') {
    if (!Number.isInteger(value)) throw new SlotflipError('MANIFEST_INVALID', `canonical JSON allows integers only, got ${value}`);
    return String(value);
  }
  if (typeof value === 'string') return '"' + value.replace(/\\/g, '\\\\').replace(/"/g, '\\"') + '"';
  if (Array.isArray(value)) return '[' + value.map(canonicalJson).join(',') + ']';
  if (typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    const keys = Object.keys(obj).filter((k) => obj[k] !== undefined).sort();
    return '{' + keys.map((k) => canonicalJson(k) + ':' + canonicalJson(obj[k])).join(',') + '}';
  }
  throw new SlotflipError('MANIFEST_INVALID', `canonical JSON cannot encode ${typeof value}`);
}

/** The public TUF key object (as it appears in root.keys / delegations.keys). */
export function publicKeyJson(publicHex: string): { keytype: 'ed25519'; scheme: 'ed25519'; keyval: { public: string } } {
  return { keytype: 'ed25519', scheme: 'ed25519', keyval: { public: publicHex } };
}

export function keyIdOf(publicHex: string): string {
  return createHash('sha256').update(canonicalJson(publicKeyJson(publicHex))).digest('hex');
}

function rawPublicHex(pub: KeyObject): string {
  const der = pub.export({ format: 'der', type: 'spki' });
  return der.subarray(der.length - 32).toString('hex');
}

export function generateSigningKey(): SigningKey {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const publicHex = rawPublicHex(publicKey);
  return { keyid: keyIdOf(publicHex), publicHex, privateKey };
}

export function signingKeyFromPem(pem: string): SigningKey {
  const privateKey = createPrivateKey(pem);
  if (privateKey.asymmetricKeyType !== 'ed25519') throw new SlotflipError('MANIFEST_KEY_MISSING', 'key file does not hold an Ed25519 private key');
  const publicHex = rawPublicHex(createPublicKey(privateKey));
  return { keyid: keyIdOf(publicHex), publicHex, privateKey };
}

export function privatePem(key: SigningKey): string {
  return key.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
}

/** @tufjs/models Key for the public half. */
export function tufKey(key: SigningKey): Key {
  return Key.fromJSON(key.keyid, publicKeyJson(key.publicHex));
}

/** Signs raw bytes; hex signature. */
export function signBytes(key: SigningKey, data: Uint8Array): string {
  return edSign(null, data, key.privateKey).toString('hex');
}

/** A signer for @tufjs/models Metadata.sign(). */
export function tufSigner(key: SigningKey): (data: Buffer) => Signature {
  return (data) => new Signature({ keyID: key.keyid, sig: signBytes(key, data) });
}

/** Signs a plain `signed` JSON object (tests and tools that craft documents): the TUF envelope. */
export function signEnvelope(signed: Record<string, unknown>, keys: readonly SigningKey[]): { signed: Record<string, unknown>; signatures: { keyid: string; sig: string }[] } {
  const bytes = Buffer.from(canonicalJson(signed), 'utf8');
  return { signed, signatures: keys.map((k) => ({ keyid: k.keyid, sig: signBytes(k, bytes) })) };
}

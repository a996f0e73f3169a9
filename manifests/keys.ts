/**
 * Ed25519 signing keys for TUF metadata, and OLPC canonical JSON (the bytes TUF signs).
 * Key ids are the standard TUF ones: sha256 of the canonical JSON of the public key object, so other
 * TUF tools compute the same ids. Private keys are PKCS#8 PEM, optionally encrypted with a passphrase
 * (node:crypto's PEM encryption); nothing here touches the disk. External signers: signers.ts.
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
  return keyIdOfJson(publicKeyJson(publicHex));
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

/** True when `pem` is an encrypted PKCS#8 key (`-----BEGIN ENCRYPTED PRIVATE KEY-----`). */
export function isEncryptedPem(pem: string): boolean {
  return /-----BEGIN ENCRYPTED PRIVATE KEY-----/.test(pem);
}

/**
 * Reads an Ed25519 private key, plain or encrypted PKCS#8 PEM. An encrypted key without a passphrase,
 * or with the wrong one, is MANIFEST_KEY_PASSPHRASE (`where` names the file in the message).
 */
export function signingKeyFromPem(pem: string, passphrase?: string, where = 'key file'): SigningKey {
  let privateKey: KeyObject;
  if (isEncryptedPem(pem)) {
    if (passphrase === undefined || passphrase === '') {
      throw new SlotflipError('MANIFEST_KEY_PASSPHRASE', `${where} is encrypted and no passphrase was given; pass it with --passphrase-fd N or $SLOTFLIP_KEY_PASSPHRASE`, { details: { where } });
    }
    try {
      privateKey = createPrivateKey({ key: pem, format: 'pem', passphrase });
    } catch (cause) {
      throw new SlotflipError('MANIFEST_KEY_PASSPHRASE', `${where} could not be decrypted: wrong passphrase (or a damaged file)`, { cause, details: { where } });
    }
  } else {
    privateKey = createPrivateKey(pem);
  }
  if (privateKey.asymmetricKeyType !== 'ed25519') throw new SlotflipError('MANIFEST_KEY_MISSING', 'key file does not hold an Ed25519 private key');
  const publicHex = rawPublicHex(createPublicKey(privateKey));
  return { keyid: keyIdOf(publicHex), publicHex, privateKey };
}

/** PKCS#8 PEM; with a non-empty passphrase, encrypted (AES-256-CBC, PBKDF2 as OpenSSL does it). */
export function privatePem(key: SigningKey, passphrase?: string): string {
  if (passphrase !== undefined && passphrase !== '') {
    return key.privateKey.export({ format: 'pem', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase }).toString();
  }
  return key.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
}

/** A TUF public key object of any supported type (ed25519 hex, ecdsa/rsa PEM). */
export interface PublicKeyJson {
  keytype: string;
  scheme: string;
  keyval: { public: string };
}

/** TUF key id of any public key object: sha256 of its canonical JSON. */
export function keyIdOfJson(pub: PublicKeyJson): string {
  return createHash('sha256').update(canonicalJson(pub)).digest('hex');
}

/**
 * The TUF public key object for a PEM SPKI public key (what `pkcs11-tool --read-object --type
 * pubkey`, `openssl pkey -pubout` or a cloud KMS print): Ed25519 → ed25519/ed25519 with the raw key
 * in hex; EC P-256 → ecdsa/ecdsa-sha2-nistp256 with the PEM; P-384 → ecdsa-sha2-nistp384.
 */
export function publicJsonFromPem(pem: string): PublicKeyJson {
  let pub: KeyObject;
  try {
    pub = createPublicKey(pem);
  } catch (cause) {
    throw new SlotflipError('MANIFEST_BAD_ARGUMENT', 'not a PEM public key', { cause });
  }
  if (pub.asymmetricKeyType === 'ed25519') return publicKeyJson(rawPublicHex(pub));
  if (pub.asymmetricKeyType === 'ec') {
    const curve = pub.asymmetricKeyDetails?.namedCurve;
    const spki = pub.export({ format: 'pem', type: 'spki' }).toString();
    if (curve === 'prime256v1') return { keytype: 'ecdsa', scheme: 'ecdsa-sha2-nistp256', keyval: { public: spki } };
    if (curve === 'secp384r1') return { keytype: 'ecdsa', scheme: 'ecdsa-sha2-nistp384', keyval: { public: spki } };
  }
  throw new SlotflipError('MANIFEST_KEY_UNSUPPORTED', `public key type ${pub.asymmetricKeyType ?? 'unknown'} is not supported for signing; use Ed25519 or ECDSA P-256/P-384`);
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

/**
 * Who signs: a key file on this machine (plain or passphrase-encrypted PEM) or an external signer,
 * a command that holds the key somewhere else (an HSM through PKCS#11, a YubiKey, a cloud KMS).
 * Everything that signs repository metadata goes through `Signer`, so a role's key can move from a
 * file to an HSM without the repository tools knowing.
 *
 * External signer protocol (manifests/README.md "Key custody"): the command (an argv array, run
 * without a shell) gets the canonical JSON bytes to sign on stdin and, in its environment,
 * SLOTFLIP_SIGN_KEYID, SLOTFLIP_SIGN_ROLE, SLOTFLIP_SIGN_KEYTYPE, SLOTFLIP_SIGN_SCHEME; it prints the
 * signature in hex (TUF's encoding: 64 raw bytes for ed25519, DER for ecdsa) on stdout and exits 0.
 * Every signature it returns is verified against the public key it names before it is used, so a
 * signer that holds another key, or prints garbage, fails with MANIFEST_SIGNER_FAILED instead of
 * publishing metadata no device would accept.
 */
import { execFile } from 'node:child_process';
import { Key, Signature, type Metadata, type Root, type Snapshot, type Targets, type Timestamp } from '@tufjs/models';
import { SlotflipError } from '../hal/errors.js';
import { canonicalJson, keyIdOfJson, publicJsonFromPem, publicKeyJson, signBytes, type PublicKeyJson, type SigningKey } from './keys.js';

export interface Signer {
  keyid: string;
  /** the public key as it appears in root.keys. */
  publicJson: PublicKeyJson;
  /** where the key is, for messages ("keys/targets.pem", "external signer /usr/bin/hsm-sign"). */
  where: string;
  /** Signs the bytes; TUF hex signature. May be slow (a token waiting for a touch). */
  sign(data: Buffer): Promise<string>;
}

/** A signer for a private key held in this process. */
export function localSigner(key: SigningKey, where = 'key file'): Signer {
  return { keyid: key.keyid, publicJson: publicKeyJson(key.publicHex), where, sign: async (data) => signBytes(key, data) };
}

/** The contents of a `NAME.signer.json` file. */
export interface ExternalSignerSpec {
  /** argv: the program and its arguments (never run through a shell). */
  command: string[];
  /** the public key: a TUF key object, or a PEM SPKI public key. */
  public: PublicKeyJson | string;
  /** how long one signature may take, ms (default 120 s: a token may wait for a touch). */
  timeoutMs?: number;
}

/** Validates a parsed signer file; `where` names it in messages. */
export function parseSignerSpec(raw: unknown, where: string): ExternalSignerSpec {
  const o = raw as Partial<ExternalSignerSpec> | null;
  const bad = (what: string): never => {
    throw new SlotflipError('MANIFEST_BAD_ARGUMENT', `${where}: ${what}; expected {"command": ["/path/to/signer", "arg", …], "public": "<PEM public key>" or a TUF key object}`, { details: { where } });
  };
  if (!o || typeof o !== 'object') return bad('not a JSON object');
  if (!Array.isArray(o.command) || o.command.length === 0 || !o.command.every((a) => typeof a === 'string' && a.length > 0)) return bad('"command" must be a non-empty array of strings');
  if (typeof o.public !== 'string' && (typeof o.public !== 'object' || o.public === null || typeof o.public.keyval?.public !== 'string')) return bad('"public" is missing');
  if (o.timeoutMs !== undefined && (!Number.isSafeInteger(o.timeoutMs) || o.timeoutMs <= 0)) return bad('"timeoutMs" must be a positive integer');
  return o as ExternalSignerSpec;
}

/** A signer that runs `spec.command` for each signature. `env` is the environment the command gets
 * (the caller's, so a PIN or KMS credentials can reach it), plus the SLOTFLIP_SIGN_* variables. */
export function externalSigner(spec: ExternalSignerSpec, role: string, env: NodeJS.ProcessEnv, where: string): Signer {
  const publicJson = typeof spec.public === 'string' ? publicJsonFromPem(spec.public) : spec.public;
  const keyid = keyIdOfJson(publicJson);
  const [cmd, ...args] = spec.command as [string, ...string[]];
  return {
    keyid,
    publicJson,
    where,
    sign: (data) =>
      new Promise((resolve, reject) => {
        const fail = (what: string, cause?: unknown): void =>
          reject(new SlotflipError('MANIFEST_SIGNER_FAILED', `${where}: external signer ${cmd} for ${role} key ${keyid.slice(0, 12)}… ${what}`, { cause, details: { role, keyid, command: cmd } }));
        const child = execFile(
          cmd,
          args,
          {
            timeout: spec.timeoutMs ?? 120_000,
            maxBuffer: 64 * 1024,
            env: { ...env, SLOTFLIP_SIGN_KEYID: keyid, SLOTFLIP_SIGN_ROLE: role, SLOTFLIP_SIGN_KEYTYPE: publicJson.keytype, SLOTFLIP_SIGN_SCHEME: publicJson.scheme },
          },
          (err, stdout, stderr) => {
            if (err) return fail(`failed (${String(stderr).trim().split('\n').slice(-1)[0] || 'exit ' + String(err.code)})`, err);
            const sig = String(stdout).trim();
            if (!/^([0-9a-fA-F]{2})+$/.test(sig)) return fail('printed no hex signature on stdout');
            resolve(sig.toLowerCase());
          },
        );
        child.stdin?.on('error', () => undefined); // a signer that exits without reading: reported by the callback
        child.stdin?.end(data);
      }),
  };
}

type AnyMeta = Metadata<Root | Targets | Snapshot | Timestamp>;

/**
 * Signs `md` with every signer (appending to its signatures, or replacing them when `append` is
 * false) and verifies each new signature against its signer's public key (MANIFEST_SIGNER_FAILED).
 */
export async function signMetadata(md: AnyMeta, signers: readonly Signer[], append = true): Promise<void> {
  const bytes = Buffer.from(canonicalJson(md.signed.toJSON()), 'utf8');
  if (!append) for (const id of Object.keys(md.signatures)) delete md.signatures[id];
  for (const s of signers) {
    const sig = await s.sign(bytes);
    md.signatures[s.keyid] = new Signature({ keyID: s.keyid, sig });
    try {
      Key.fromJSON(s.keyid, s.publicJson as never).verifySignature(md as never);
    } catch (cause) {
      delete md.signatures[s.keyid];
      throw new SlotflipError('MANIFEST_SIGNER_FAILED', `${s.where}: the signature does not verify with key ${s.keyid.slice(0, 12)}… (the signer holds another key, or signs other bytes)`, { cause, details: { keyid: s.keyid } });
    }
  }
}

/** The key ids among `keyIds` whose signature on `md` verifies. */
export function validSignatures(md: AnyMeta, keyIds: readonly string[], keys: Record<string, Key>): string[] {
  return keyIds.filter((id) => {
    const k = keys[id];
    if (!k || !md.signatures[id]) return false;
    try {
      k.verifySignature(md as never);
      return true;
    } catch {
      return false;
    }
  });
}

/**
 * The manufacturer's TUF repository: keys, signing, releases, publishing. Built on @tufjs/models
 * (Metadata, Root, Targets, Snapshot, Timestamp) with Ed25519 keys from node:crypto.
 *
 * Layout of DIR:
 *   keys/            private keys, PKCS#8 PEM, mode 0600 (dir 0700): root-1.pem … root-N.pem,
 *                    targets.pem, snapshot.pem, timestamp.pem; retired/ keeps rotated-out keys.
 *                    Root and targets keys belong offline (see manifests/README.md); only the
 *                    operation that needs a key reads it, so the others may be absent.
 *   repo.json        tool settings (expiry periods); not signed, not published.
 *   repository/metadata/   N.root.json (every version, never deleted: devices walk the chain),
 *                    root.json (copy of the newest, to ship in OS images), N.targets.json,
 *                    N.snapshot.json, timestamp.json.
 *   repository/targets/    payloads as `<dir>/<sha256>.<basename>`.
 *
 * consistent_snapshot is true: snapshot and targets are published under versioned names and
 * payloads under hash-prefixed names, so a device or CDN never sees a half-updated mix, files are
 * immutable (cache forever, resume downloads safely), and only timestamp.json changes in place.
 * Every file is written atomically; timestamp.json is written last, so a reader sees either the old
 * or the new consistent set.
 *
 * Trade-off: rollout changes (setRollout, and automatic halts) re-sign targets, so the machine that
 * runs them needs the targets key; keep it on the release machine, not on the broker host.
 */
import { buildReleaseDelta, type PublishedDelta } from './delta-publish.js';
import type { DeltaFormat } from './delta.js';
import { chmod, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Key, MetaFile, Metadata, MetadataKind, Root, Snapshot, TargetFile, Targets, Timestamp } from '@tufjs/models';
import { SlotflipError } from '../hal/errors.js';
import { writeFileAtomic } from '../hal/atomic-file.js';
import { canonicalJson, generateSigningKey, keyIdOfJson, privatePem, publicJsonFromPem, signingKeyFromPem, type PublicKeyJson, type SigningKey } from './keys.js';
import { externalSigner, localSigner, parseSignerSpec, signMetadata, validSignatures, type ExternalSignerSpec, type Signer } from './signers.js';
import { buildPayload } from './payload.js';
import { encodeIndexFile, indexTargetName } from './chunk-index.js';
import { releaseFromTarget } from './release.js';
import { compareReleases } from './select.js';
import { rolloutAllows } from './rollout.js';
import { ISSUED_FIELD, OFFLINE_FILE, OFFLINE_TYPE, TIME_RESET_FIELD } from './client.js';
import { checkTargetName as checkTargetNameRule } from './validate.js';
import { META_PREFIXES, MAX_MESSAGE_BYTES, metaTopic, type MetaLayout } from './meta-topics.js';
import type { Compression, ReleaseCustom, ReleaseMigration, Rollout } from './types.js';
import { migrationProblem } from './migration.js';
import { createHash } from 'node:crypto';

export type TopRole = 'root' | 'targets' | 'snapshot' | 'timestamp';

export interface ExpiryDays {
  root: number;
  targets: number;
  snapshot: number;
  timestamp: number;
}

export const DEFAULT_EXPIRY_DAYS: ExpiryDays = { root: 365, targets: 90, snapshot: 7, timestamp: 1 };

/** How the tools reach private keys (manifests/README.md "Key custody"). */
export interface KeyAccess {
  /** passphrase of encrypted key files; when set, keys this tool writes are encrypted with it. */
  passphrase?: string;
  /** environment handed to external signers (a PIN, KMS credentials); default none. */
  env?: NodeJS.ProcessEnv;
}

export interface RepoOptions {
  /** clock, ms since epoch (default Date.now). */
  now?: () => number;
  keys?: KeyAccess;
}

export interface InitRepoOptions extends RepoOptions {
  /** number of root keys (default 3) and signatures required (default 2). */
  rootKeys?: number;
  rootThreshold?: number;
  expiryDays?: Partial<ExpiryDays>;
  /** root keys held apart: their public keys only (no root key is generated or stored here); root
   * v1 is then PENDING until a threshold of holders signed it (signPendingRoot). */
  rootPublicKeys?: PublicKeyJson[];
  /** external signers for the online/release roles instead of generated key files. */
  signers?: Partial<Record<'targets' | 'snapshot' | 'timestamp', ExternalSignerSpec>>;
}

export interface RepoSummary {
  dir: string;
  rootVersion: number;
  targetsVersion: number;
  snapshotVersion: number;
  timestampVersion: number;
  keyIds: Record<TopRole, string[]>;
  /** a root version waiting for root key holders' signatures (repo sign-root), if any. */
  pendingRoot?: PendingRootStatus;
}

export interface PendingRootStatus {
  version: number;
  /** valid signatures so far / needed, from the new root's keys and (rotation) the trusted root's. */
  newKeys: { have: number; need: number; missing: string[] };
  trustedKeys?: { have: number; need: number; missing: string[] };
  /** the root became the trusted one (published) with this signature. */
  published: boolean;
}

const DAY = 86_400_000;
const SPEC_VERSION = '1.0.31';

function badArg(message: string, details?: Record<string, unknown>): SlotflipError {
  return new SlotflipError('MANIFEST_BAD_ARGUMENT', message, { details });
}

const metaDir = (dir: string): string => join(dir, 'repository', 'metadata');
const targetsDir = (dir: string): string => join(dir, 'repository', 'targets');
const keysDir = (dir: string): string => join(dir, 'keys');

function isoIn(now: number, days: number): string {
  // TUF expects second precision with a Z suffix
  return new Date(now + days * DAY).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function serialize(md: Metadata<Root | Targets | Snapshot | Timestamp>): Buffer {
  return Buffer.from(JSON.stringify(md.toJSON(), null, 2) + '\n', 'utf8');
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

const pendingDir = (dir: string): string => join(dir, 'pending');

async function writeKey(dir: string, name: string, key: SigningKey, access: KeyAccess | undefined, sub = ''): Promise<void> {
  const path = join(keysDir(dir), sub, `${name}.pem`);
  await writeFile(path, privatePem(key, access?.passphrase), { mode: 0o600, flag: 'wx' });
  await chmod(path, 0o600);
}

async function writeSignerSpec(dir: string, name: string, spec: ExternalSignerSpec, sub = ''): Promise<void> {
  await writeFileAtomic(join(keysDir(dir), sub, `${name}.signer.json`), JSON.stringify(spec, null, 2) + '\n');
}

/** Reads a private key file (plain or encrypted PEM): a signer. */
export async function signerFromKeyFile(path: string, access: KeyAccess | undefined): Promise<Signer> {
  let pem: string;
  try {
    pem = await readFile(path, 'utf8');
  } catch (cause) {
    throw new SlotflipError('MANIFEST_KEY_MISSING', `signing key ${path} is missing or unreadable`, { cause, details: { path } });
  }
  return localSigner(signingKeyFromPem(pem, access?.passphrase, path), path);
}

/** Reads an external signer file (`NAME.signer.json`): a signer for `role`. */
export async function signerFromSpecFile(path: string, role: string, access: KeyAccess | undefined): Promise<Signer> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(path, 'utf8'));
  } catch (cause) {
    throw new SlotflipError('MANIFEST_KEY_MISSING', `external signer file ${path} is missing or not JSON`, { cause, details: { path } });
  }
  return externalSigner(parseSignerSpec(raw, path), role, access?.env ?? {}, path);
}

/**
 * The signer for key NAME in DIR/keys (or keys/SUB): `NAME.pem` (plain or encrypted) or
 * `NAME.signer.json` (an external signer). Missing both: MANIFEST_KEY_MISSING.
 */
async function readKey(dir: string, name: string, access: KeyAccess | undefined, sub = ''): Promise<Signer> {
  const base = join(keysDir(dir), sub, name);
  const role = name.replace(/-\d+$/, '');
  if (await exists(`${base}.pem`)) return signerFromKeyFile(`${base}.pem`, access);
  if (await exists(`${base}.signer.json`)) return signerFromSpecFile(`${base}.signer.json`, role, access);
  throw new SlotflipError('MANIFEST_KEY_MISSING', `signing key ${base}.pem (or an external signer ${base}.signer.json) is missing; mount the offline key store for this step`, { details: { path: `${base}.pem` } });
}

/** The signer of the top-level role's key in DIR/keys (file or external signer); MANIFEST_KEY_MISSING. */
export async function roleSigner(dir: string, role: 'targets' | 'snapshot' | 'timestamp', access?: KeyAccess): Promise<Signer> {
  return readKey(dir, role, access);
}

/** All keys in DIR/keys whose name starts with `prefix` (root-1, root-2, …), files or signers. */
async function readKeys(dir: string, prefix: string, access: KeyAccess | undefined): Promise<Signer[]> {
  let names: string[];
  try {
    names = await readdir(keysDir(dir));
  } catch (cause) {
    throw new SlotflipError('MANIFEST_KEY_MISSING', `key directory ${keysDir(dir)} is missing`, { cause });
  }
  const keys: Signer[] = [];
  for (const n of names.filter((x) => x.startsWith(prefix) && (x.endsWith('.pem') || x.endsWith('.signer.json'))).sort()) {
    keys.push(await readKey(dir, n.replace(/\.(pem|signer\.json)$/, ''), access));
  }
  return keys;
}

function missingAsNone(e: unknown): Signer[] {
  if ((e as { code?: string }).code === 'MANIFEST_KEY_MISSING') return [];
  throw e;
}

async function readSettings(dir: string): Promise<ExpiryDays> {
  return (await readRepoJson(dir)).days;
}

async function readRepoJson(dir: string): Promise<{ days: ExpiryDays; rootHolders: boolean }> {
  try {
    const raw = JSON.parse(await readFile(join(dir, 'repo.json'), 'utf8')) as { expiryDays?: Partial<ExpiryDays>; rootCustody?: string };
    return { days: { ...DEFAULT_EXPIRY_DAYS, ...raw.expiryDays }, rootHolders: raw.rootCustody === 'holders' };
  } catch (cause) {
    throw new SlotflipError('MANIFEST_REPO_INVALID', `${join(dir, 'repo.json')} is missing or not JSON; is ${dir} a repository made by \`slotflip repo init\`?`, { cause });
  }
}

interface Loaded<T extends Root | Targets | Snapshot | Timestamp> {
  md: Metadata<T>;
  bytes: Buffer;
}

async function latestVersion(dir: string, role: string): Promise<number> {
  const names = await readdir(metaDir(dir)).catch((cause: unknown) => {
    throw new SlotflipError('MANIFEST_REPO_INVALID', `${metaDir(dir)} is missing`, { cause });
  });
  let max = 0;
  const re = new RegExp(`^(\\d+)\\.${role.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.json$`);
  for (const n of names) {
    const m = re.exec(n);
    if (m) max = Math.max(max, Number(m[1]));
  }
  if (max === 0) throw new SlotflipError('MANIFEST_REPO_INVALID', `no ${role} metadata in ${metaDir(dir)}`);
  return max;
}

async function load(dir: string, file: string, kind: MetadataKind): Promise<Loaded<never>> {
  const path = join(metaDir(dir), file);
  try {
    const bytes = await readFile(path);
    const md = Metadata.fromJSON(kind as MetadataKind.Root, JSON.parse(bytes.toString('utf8')));
    return { md, bytes } as unknown as Loaded<never>;
  } catch (cause) {
    throw new SlotflipError('MANIFEST_REPO_INVALID', `${path} is missing or invalid`, { cause, details: { path } });
  }
}

async function loadRoot(dir: string): Promise<Loaded<Root>> {
  return load(dir, `${await latestVersion(dir, 'root')}.root.json`, MetadataKind.Root);
}
async function loadTargets(dir: string): Promise<Loaded<Targets>> {
  return load(dir, `${await latestVersion(dir, 'targets')}.targets.json`, MetadataKind.Targets);
}
async function loadSnapshot(dir: string): Promise<Loaded<Snapshot>> {
  return load(dir, `${await latestVersion(dir, 'snapshot')}.snapshot.json`, MetadataKind.Snapshot);
}
async function loadTimestamp(dir: string): Promise<Loaded<Timestamp>> {
  return load(dir, 'timestamp.json', MetadataKind.Timestamp);
}

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

async function writeMeta(dir: string, file: string, bytes: Buffer): Promise<void> {
  await writeFileAtomic(join(metaDir(dir), file), bytes);
}

/** Signs and writes a new snapshot (listing `targetsBytes`' version) and then a new timestamp. */
async function publishSnapshotAndTimestamp(dir: string, now: number, days: ExpiryDays, targets: Loaded<Targets>, access: KeyAccess | undefined): Promise<void> {
  const snapKey = await readKey(dir, 'snapshot', access);
  const tsKey = await readKey(dir, 'timestamp', access);
  const prev = await loadSnapshot(dir);
  const meta: Record<string, MetaFile> = { ...prev.md.signed.meta };
  meta['targets.json'] = new MetaFile({ version: targets.md.signed.version, length: targets.bytes.length, hashes: { sha256: sha256(targets.bytes) } });
  const snap = new Metadata(new Snapshot({ version: prev.md.signed.version + 1, specVersion: SPEC_VERSION, expires: isoIn(now, days.snapshot), meta }));
  await signMetadata(snap, [snapKey], false);
  const snapBytes = serialize(snap);
  await writeMeta(dir, `${snap.signed.version}.snapshot.json`, snapBytes);
  await writeTimestamp(dir, now, days, tsKey, { md: snap, bytes: snapBytes });
}

async function writeTimestamp(dir: string, now: number, days: ExpiryDays, key: Signer, snap: Loaded<Snapshot>): Promise<void> {
  let version = 1;
  try {
    version = (await loadTimestamp(dir)).md.signed.version + 1;
  } catch {
    // first timestamp
  }
  const ts = new Metadata(
    new Timestamp({
      version,
      specVersion: SPEC_VERSION,
      expires: isoIn(now, days.timestamp),
      snapshotMeta: new MetaFile({ version: snap.md.signed.version, length: snap.bytes.length, hashes: { sha256: sha256(snap.bytes) } }),
      unrecognizedFields: { [ISSUED_FIELD]: new Date(now).toISOString() },
    }),
  );
  await signMetadata(ts, [key], false);
  // timestamp last: it is what makes the new set visible
  await writeMeta(dir, 'timestamp.json', serialize(ts));
}

/** A Root built through Root.fromJSON (the models package does not export its Role class). */
function makeRoot(o: { version: number; expires: string; consistentSnapshot: boolean; keys: Record<string, Key>; roles: Record<string, { keyIDs: string[]; threshold: number }> }): Root {
  return Root.fromJSON({
    _type: 'root',
    spec_version: SPEC_VERSION,
    version: o.version,
    expires: o.expires,
    consistent_snapshot: o.consistentSnapshot,
    keys: Object.fromEntries(Object.entries(o.keys).map(([id, k]) => [id, k.toJSON()])),
    roles: Object.fromEntries(Object.entries(o.roles).map(([n, r]) => [n, { keyids: [...r.keyIDs], threshold: r.threshold }])),
  });
}

async function writeRoot(dir: string, root: Metadata<Root>): Promise<void> {
  const bytes = serialize(root);
  await writeMeta(dir, `${root.signed.version}.root.json`, bytes);
  await writeMeta(dir, 'root.json', bytes);
}

/** Summary of the repository's current versions and key ids (rootVersion 0: no trusted root yet,
 * the first one is pending). Read-only. */
export async function repoSummary(dir: string): Promise<RepoSummary> {
  const trusted = await trustedRootOrUndefined(dir);
  const pendingRoot = await pendingRootStatus(dir);
  const root = trusted?.signed ?? (await loadPendingRoot(dir))?.md.signed;
  if (!root) throw new SlotflipError('MANIFEST_REPO_INVALID', `no root metadata in ${metaDir(dir)} or ${pendingDir(dir)}`);
  const keyIds = Object.fromEntries((['root', 'targets', 'snapshot', 'timestamp'] as const).map((r) => [r, root.roles[r]?.keyIDs ?? []])) as Record<TopRole, string[]>;
  return {
    dir,
    rootVersion: trusted?.signed.version ?? 0,
    targetsVersion: (await loadTargets(dir)).md.signed.version,
    snapshotVersion: (await loadSnapshot(dir)).md.signed.version,
    timestampVersion: (await loadTimestamp(dir)).md.signed.version,
    keyIds,
    ...(pendingRoot ? { pendingRoot } : {}),
  };
}

/**
 * Creates keys and version-1 metadata in DIR. Refuses (MANIFEST_REPO_EXISTS) when DIR already holds
 * a repository, so keys are never overwritten. Not atomic as a whole: a crash leaves a partial DIR
 * that a re-run refuses; delete it and start again (nothing was published yet).
 */
export async function initRepo(dir: string, opts: InitRepoOptions = {}): Promise<RepoSummary> {
  const now = (opts.now ?? Date.now)();
  const nKeys = opts.rootKeys ?? 3;
  const threshold = opts.rootThreshold ?? 2;
  if (!Number.isInteger(nKeys) || nKeys < 1 || !Number.isInteger(threshold) || threshold < 1 || threshold > nKeys) {
    throw badArg(`root threshold ${threshold} of ${nKeys} keys is invalid; need 1 <= threshold <= keys`);
  }
  if ((await exists(join(dir, 'repo.json'))) || (await exists(keysDir(dir)))) {
    throw new SlotflipError('MANIFEST_REPO_EXISTS', `${dir} already holds a repository (repo.json or keys/); refusing to overwrite keys`, { details: { dir } });
  }
  const days: ExpiryDays = { ...DEFAULT_EXPIRY_DAYS, ...opts.expiryDays };
  await mkdir(dir, { recursive: true }); // default mode: repository/ must stay servable
  await mkdir(keysDir(dir), { mode: 0o700 });
  await chmod(keysDir(dir), 0o700);
  await mkdir(metaDir(dir), { recursive: true });
  await mkdir(targetsDir(dir), { recursive: true });

  const access = opts.keys;
  // root keys held apart: only their public halves reach this machine
  const rootKeys = opts.rootPublicKeys ? [] : Array.from({ length: nKeys }, () => generateSigningKey());
  const rootPublic = opts.rootPublicKeys ?? rootKeys.map((k) => localSigner(k).publicJson);
  const roleSigners = {} as Record<'targets' | 'snapshot' | 'timestamp', Signer>;
  for (const [i, k] of rootKeys.entries()) await writeKey(dir, `root-${i + 1}`, k, access);
  for (const role of ['targets', 'snapshot', 'timestamp'] as const) {
    const spec = opts.signers?.[role];
    if (spec) {
      await writeSignerSpec(dir, role, spec);
      roleSigners[role] = externalSigner(spec, role, access?.env ?? {}, join(keysDir(dir), `${role}.signer.json`));
    } else {
      const k = generateSigningKey();
      await writeKey(dir, role, k, access);
      roleSigners[role] = localSigner(k, join(keysDir(dir), `${role}.pem`));
    }
  }
  await writeFileAtomic(join(dir, 'repo.json'), JSON.stringify({ slotflipRepo: 1, expiryDays: days, ...(opts.rootPublicKeys ? { rootCustody: 'holders' } : {}) }, null, 2) + '\n');

  const keys: Record<string, Key> = {};
  const rootIds = rootPublic.map((pub) => keyIdOfJson(pub));
  if (new Set(rootIds).size !== rootIds.length) throw badArg('the same root public key was given twice');
  for (const [i, pub] of rootPublic.entries()) keys[rootIds[i]!] = Key.fromJSON(rootIds[i]!, pub as never);
  for (const sg of Object.values(roleSigners)) keys[sg.keyid] = Key.fromJSON(sg.keyid, sg.publicJson as never);
  const root = new Metadata(
    makeRoot({
      version: 1,
      expires: isoIn(now, days.root),
      consistentSnapshot: true,
      keys,
      roles: {
        root: { keyIDs: rootIds, threshold },
        targets: { keyIDs: [roleSigners.targets.keyid], threshold: 1 },
        snapshot: { keyIDs: [roleSigners.snapshot.keyid], threshold: 1 },
        timestamp: { keyIDs: [roleSigners.timestamp.keyid], threshold: 1 },
      },
    }),
  );
  if (opts.rootPublicKeys) {
    // pending until a threshold of the holders signed it (signPendingRoot): no trusted root yet
    await writePendingRoot(dir, root, {});
  } else {
    await signMetadata(root, rootKeys.map((k) => localSigner(k)));
    await writeRoot(dir, root);
  }

  const targets = new Metadata(new Targets({ version: 1, specVersion: SPEC_VERSION, expires: isoIn(now, days.targets) }));
  await signMetadata(targets, [roleSigners.targets], false);
  const tBytes = serialize(targets);
  await writeMeta(dir, '1.targets.json', tBytes);
  const snap = new Metadata(
    new Snapshot({
      version: 1,
      specVersion: SPEC_VERSION,
      expires: isoIn(now, days.snapshot),
      meta: { 'targets.json': new MetaFile({ version: 1, length: tBytes.length, hashes: { sha256: sha256(tBytes) } }) },
    }),
  );
  await signMetadata(snap, [roleSigners.snapshot], false);
  const sBytes = serialize(snap);
  await writeMeta(dir, '1.snapshot.json', sBytes);
  await writeTimestamp(dir, now, days, roleSigners.timestamp, { md: snap, bytes: sBytes });
  return repoSummary(dir);
}

// ---------------------------------------------------------------- pending roots (root keys held apart)

/** What finishing a pending root must also do (a role rotation re-signs that role's metadata). */
interface PendingAfter {
  role?: Exclude<TopRole, 'root'>;
}

async function writePendingRoot(dir: string, root: Metadata<Root>, after: PendingAfter): Promise<void> {
  await mkdir(pendingDir(dir), { recursive: true, mode: 0o700 });
  await writeFileAtomic(join(pendingDir(dir), `${root.signed.version}.root.json`), serialize(root));
  await writeFileAtomic(join(pendingDir(dir), `${root.signed.version}.after.json`), JSON.stringify(after) + '\n');
}

async function loadPendingRoot(dir: string): Promise<{ md: Metadata<Root>; after: PendingAfter } | undefined> {
  const names = await readdir(pendingDir(dir)).catch(() => [] as string[]);
  const v = names.map((n) => /^(\d+)\.root\.json$/.exec(n)?.[1]).filter((x): x is string => x !== undefined).map(Number).sort((a, b) => a - b)[0];
  if (v === undefined) return undefined;
  const path = join(pendingDir(dir), `${v}.root.json`);
  try {
    const md = Metadata.fromJSON(MetadataKind.Root, JSON.parse(await readFile(path, 'utf8'))) as Metadata<Root>;
    const after = JSON.parse(await readFile(join(pendingDir(dir), `${v}.after.json`), 'utf8').catch(() => '{}')) as PendingAfter;
    return { md, after };
  } catch (cause) {
    throw new SlotflipError('MANIFEST_REPO_INVALID', `${path} is not a valid root`, { cause, details: { path } });
  }
}

async function trustedRootOrUndefined(dir: string): Promise<Metadata<Root> | undefined> {
  const names = await readdir(metaDir(dir)).catch(() => [] as string[]);
  return names.some((n) => /^\d+\.root\.json$/.test(n)) ? (await loadRoot(dir)).md : undefined;
}

function pendingStatus(md: Metadata<Root>, prev: Metadata<Root> | undefined, published: boolean): PendingRootStatus {
  const count = (signedBy: Metadata<Root>, keysOf: Root): { have: number; need: number; missing: string[] } => {
    const role = keysOf.roles['root']!;
    const ok = validSignatures(signedBy, role.keyIDs, keysOf.keys);
    return { have: ok.length, need: role.threshold, missing: role.keyIDs.filter((id) => !ok.includes(id)) };
  };
  const status: PendingRootStatus = { version: md.signed.version, newKeys: count(md, md.signed), published };
  if (prev) status.trustedKeys = count(md, prev.signed);
  return status;
}

const complete = (st: PendingRootStatus): boolean => st.newKeys.have >= st.newKeys.need && (!st.trustedKeys || st.trustedKeys.have >= st.trustedKeys.need);

/**
 * Adds the signature of one root key holder to the pending root (repo init with --root-pubkey, or
 * a rotation without the root keys). Once a threshold of the new root's keys AND (for a rotation) a
 * threshold of the trusted root's keys signed, the pending root becomes the trusted root: it is
 * published as N.root.json / root.json and, for a role rotation, that role's metadata is re-signed
 * with its new key. Needs only the holder's key (and, to finish a role rotation, that role's new
 * key on this machine). A key that belongs to neither root is MANIFEST_BAD_ARGUMENT.
 */
export async function signPendingRoot(dir: string, signers: readonly Signer[], opts: RepoOptions = {}): Promise<PendingRootStatus> {
  const pending = await loadPendingRoot(dir);
  if (!pending) throw badArg(`${dir} has no pending root to sign (${pendingDir(dir)} is empty)`);
  const { md, after } = pending;
  const prev = md.signed.version > 1 ? await trustedRootOrUndefined(dir) : undefined;
  if (md.signed.version > 1 && prev?.signed.version !== md.signed.version - 1) {
    throw new SlotflipError('MANIFEST_REPO_INVALID', `pending root v${md.signed.version} does not follow the trusted root v${prev?.signed.version ?? 0}`);
  }
  for (const sg of signers) {
    const ours = md.signed.roles['root']!.keyIDs.includes(sg.keyid) || (prev?.signed.roles['root']!.keyIDs.includes(sg.keyid) ?? false);
    if (!ours) throw badArg(`key ${sg.keyid} (${sg.where}) is not a root key of pending root v${md.signed.version}${prev ? ` or of trusted root v${prev.signed.version}` : ''}`, { keyid: sg.keyid });
  }
  await signMetadata(md, signers);
  const st = pendingStatus(md, prev, false);
  if (!complete(st)) {
    await writePendingRoot(dir, md, after);
    return st;
  }
  await finishPendingRoot(dir, md, after, opts);
  return { ...st, published: true };
}

/** Status of the pending root, if any (read-only). */
export async function pendingRootStatus(dir: string): Promise<PendingRootStatus | undefined> {
  const pending = await loadPendingRoot(dir);
  if (!pending) return undefined;
  return pendingStatus(pending.md, pending.md.signed.version > 1 ? await trustedRootOrUndefined(dir) : undefined, false);
}

async function finishPendingRoot(dir: string, md: Metadata<Root>, after: PendingAfter, opts: RepoOptions): Promise<void> {
  const now = (opts.now ?? Date.now)();
  const days = await readSettings(dir);
  const role = after.role;
  // check the new role key is here before the root that names it is published
  const newRoleKey = role ? await readKey(dir, role, opts.keys, 'pending') : undefined;
  await writeRoot(dir, md);
  if (role && newRoleKey) await installPendingRoleKey(dir, role, `${now}`);
  await rm(join(pendingDir(dir), `${md.signed.version}.root.json`), { force: true });
  await rm(join(pendingDir(dir), `${md.signed.version}.after.json`), { force: true });
  if (role && newRoleKey) await resignRole(dir, role, newRoleKey, now, days, opts.keys);
}

/** Moves keys/pending/ROLE.{pem,signer.json} into place, retiring the current one. */
async function installPendingRoleKey(dir: string, role: string, stamp: string): Promise<void> {
  await mkdir(join(keysDir(dir), 'retired'), { recursive: true, mode: 0o700 });
  for (const ext of ['.pem', '.signer.json']) {
    await rename(join(keysDir(dir), `${role}${ext}`), join(keysDir(dir), 'retired', `${role}-${stamp}${ext}`)).catch(() => undefined);
  }
  for (const ext of ['.pem', '.signer.json']) {
    if (await exists(join(keysDir(dir), 'pending', `${role}${ext}`))) await rename(join(keysDir(dir), 'pending', `${role}${ext}`), join(keysDir(dir), `${role}${ext}`));
  }
}

/** After a new root named a new key for `role`: re-sign that role's metadata (and what lists it). */
async function resignRole(dir: string, role: Exclude<TopRole, 'root'>, key: Signer, now: number, days: ExpiryDays, access: KeyAccess | undefined): Promise<void> {
  if (role === 'targets') await updateTargets(dir, now, undefined, access, () => undefined);
  else if (role === 'snapshot') await publishSnapshotAndTimestamp(dir, now, days, await loadTargets(dir), access);
  else await writeTimestamp(dir, now, days, key, await loadSnapshot(dir));
}

/**
 * A new Ed25519 key for one holder, written to OUT (0600; encrypted when a passphrase is given) and
 * its TUF public key object to OUT's `.pub` sibling (give that file to `repo init --root-pubkey`).
 * Refuses to overwrite either file.
 */
export async function generateKeyFile(out: string, access: KeyAccess | undefined): Promise<{ keyid: string; key: string; pub: string }> {
  const pubPath = out.replace(/\.pem$/, '') + '.pub';
  if ((await exists(out)) || (await exists(pubPath))) throw badArg(`${out} or ${pubPath} already exists; refusing to overwrite a key`);
  const k = generateSigningKey();
  await writeFile(out, privatePem(k, access?.passphrase), { mode: 0o600, flag: 'wx' });
  await chmod(out, 0o600);
  const pub = localSigner(k).publicJson;
  await writeFile(pubPath, JSON.stringify(pub, null, 2) + '\n', { flag: 'wx' });
  return { keyid: k.keyid, key: out, pub: pubPath };
}

/** Reads a public key file for --root-pubkey: a TUF key object (`.pub` from keygen) or a PEM public key. */
export async function readPublicKeyFile(path: string): Promise<PublicKeyJson> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (cause) {
    throw badArg(`public key file ${path} is unreadable`, { path, cause: String(cause) });
  }
  if (/-----BEGIN PUBLIC KEY-----/.test(text)) return publicJsonFromPem(text);
  try {
    const o = JSON.parse(text) as PublicKeyJson;
    if (typeof o.keytype === 'string' && typeof o.scheme === 'string' && typeof o.keyval?.public === 'string') return { keytype: o.keytype, scheme: o.scheme, keyval: { public: o.keyval.public } };
  } catch {
    // reported below
  }
  throw badArg(`${path} is neither a TUF public key object ({"keytype", "scheme", "keyval": {"public"}}) nor a PEM public key`, { path });
}

export interface AddReleaseOptions extends RepoOptions {
  /** image file to publish. */
  image: string;
  /** TUF target name; default `releases/<version>/<image basename><.zst|.gz>`. */
  name?: string;
  version: string;
  securityVersion: number;
  hardware: string[];
  channel: string;
  compression: Compression;
  chunkSize: number;
  devices?: string[];
  rollout?: Rollout;
  /** a data migration the image ships (manifests/migration.ts); checked before anything is built. */
  migration?: ReleaseMigration;
  /** targets expiry override, days. */
  expiresDays?: number;
  /** 2 (default): the chunk index is a target file of its own (`<name>.index`), targets.json stays
   * small. 1: the chunk list inline in the custom block, for fleets whose devices run a daemon that
   * predates format 2 (manifests/README.md "Moving a fleet to format 2"). */
  format?: 1 | 2;
  /** also publish a delta index and pack (manifests/delta-publish.ts) as targets of their own,
   * referenced from the format 2 chunk index file's `delta` section (devices that do not know it
   * ignore it and install the full payload); not with format 1. */
delta?: boolean;
  /** zstd level of the delta pack's frames (default DEFAULT_DELTA_LEVEL, manifests/delta.ts). */
  deltaLevel?: number;
  /** delta index format (default DELTA_FORMAT: 2, x86-filtered frames; 1 for daemons that predate it). */
  deltaFormat?: DeltaFormat;
}

export interface AddedRelease {
  targetName: string;
  /** payload path under repository/targets/. */
  path: string;
  length: number;
  sha256: string;
  targetsVersion: number;
  custom: ReleaseCustom;
  /** number of chunks in the payload. */
  chunks: number;
  /** format 2: the index target, its file under repository/targets/, length and SHA-256. */
  index?: { targetName: string; path: string; length: number; sha256: string };
  /** the delta files, when `delta` was asked for. */
  delta?: PublishedDelta;
}

const TARGET_NAME = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._+-]+)*$/;

/** The device's target-name rules (validate.ts, MANIFEST_TARGET_NAME), then the publishing tool's
 * narrower alphabet, so a manufacturer never signs a name some device would refuse. */
function checkTargetName(name: string): void {
  const c = checkTargetNameRule(name);
  if (!c.ok) throw new SlotflipError(c.code, `${c.message}; use letters, digits, ".", "_", "-", separated by "/"`, { details: { name } });
  if (!TARGET_NAME.test(name)) {
    throw new SlotflipError('MANIFEST_TARGET_NAME', `target name ${JSON.stringify(name)} is invalid: use letters, digits, ".", "_", "-", separated by "/"`, { details: { name } });
  }
}

function checkRollout(r: Rollout | undefined): void {
  if (r === undefined) return;
  const okPct = (p: number): boolean => typeof p === 'number' && p >= 0 && p <= 100;
  if (!okPct(r.percent) || (r.waves ?? []).some((w) => !okPct(w.percent) || !Number.isFinite(Date.parse(w.at)))) {
    throw badArg('rollout percentages must be 0..100 and wave times ISO-8601');
  }
}

/** Re-signs targets with `mutate` applied, then snapshot and timestamp. */
async function updateTargets(dir: string, now: number, expiresDays: number | undefined, access: KeyAccess | undefined, mutate: (targets: Record<string, TargetFile>) => void): Promise<Loaded<Targets>> {
  const days = await readSettings(dir);
  const key = await readKey(dir, 'targets', access);
  const prev = await loadTargets(dir);
  const map: Record<string, TargetFile> = { ...prev.md.signed.targets };
  mutate(map);
  const next = new Metadata(
    new Targets({
      version: prev.md.signed.version + 1,
      specVersion: SPEC_VERSION,
      expires: isoIn(now, expiresDays ?? days.targets),
      targets: map,
      ...(prev.md.signed.delegations ? { delegations: prev.md.signed.delegations } : {}),
    }),
  );
  await signMetadata(next, [key], false);
  const bytes = serialize(next);
  await writeMeta(dir, `${next.signed.version}.targets.json`, bytes);
  const loaded: Loaded<Targets> = { md: next, bytes };
  await publishSnapshotAndTimestamp(dir, now, days, loaded, access);
  return loaded;
}

/** The TUF target name `addRelease` gives a release: `--name`, or releases/V/<image name>.zst (.gz, or none). */
export function releaseTargetName(opts: Pick<AddReleaseOptions, 'name' | 'version' | 'image' | 'compression'>): string {
  const ext = opts.compression === 'zstd' ? '.zst' : opts.compression === 'gzip' ? '.gz' : '';
  return opts.name ?? `releases/${opts.version}/${basename(opts.image)}${ext}`;
}

/**
 * Builds the payload from `image` (compress, chunk, index), places it under repository/targets/ as
 * `<dir>/<sha256>.<basename>`, adds the target with its slotflip custom block, and re-signs targets,
 * snapshot and timestamp. Format 2 (default) also writes the chunk index file
 * (`<dir>/<sha256>.<basename>.index`, canonical JSON, chunk-index.ts) and adds it as a target of its
 * own; format 1 puts the chunk list inline. Needs the targets, snapshot and timestamp keys. Adding
 * the same name again replaces the entry (a new targets version).
 */
export async function addRelease(dir: string, opts: AddReleaseOptions): Promise<AddedRelease> {
  const now = (opts.now ?? Date.now)();
  if (!opts.version) throw badArg('--version is required');
  if (!Number.isSafeInteger(opts.securityVersion) || opts.securityVersion < 0) throw badArg('--security-version must be an integer >= 0');
  if (!opts.hardware || opts.hardware.length === 0 || opts.hardware.some((h) => !h)) throw badArg('at least one --hardware compatible string is required');
  if (!opts.channel) throw badArg('--channel is required');
  checkRollout(opts.rollout);
  const migrationBad = opts.migration ? migrationProblem(opts.migration) : null;
  if (migrationBad) throw badArg(`${migrationBad} (--migration, --migration-snapshot, --migration-timeout)`, { migration: opts.migration });
  const targetName = releaseTargetName(opts);
  const format = opts.format ?? 2;
  if (format !== 1 && format !== 2) throw badArg(`format ${String(format)}: use 2 (default) or 1 (inline chunk index, for daemons before format 2)`);
  checkTargetName(targetName);
  if (format === 2) checkTargetName(indexTargetName(targetName));
  if (opts.delta && format === 1) throw badArg('--delta needs format 2 (the delta section lives in the chunk index file): drop --inline-index');
  await readSettings(dir);
  await readKey(dir, 'targets', opts.keys); // fail before the (slow) build if the key is absent

  const finalDir = join(targetsDir(dir), dirname(targetName));
  await mkdir(finalDir, { recursive: true });
  const staging = join(finalDir, `.build-${process.pid}-${now}.${basename(targetName)}`);
  const built = await buildPayload(opts.image, staging, { compression: opts.compression, chunkSize: opts.chunkSize });
  const finalPath = join(finalDir, `${built.sha256}.${basename(targetName)}`);
  await rename(staging, finalPath);

  // the earlier release devices of this hardware most likely hold: the thin index is written against its index
  const deltaBase = opts.delta ? (await earlierDeltaIndex(dir, opts.hardware, targetName))?.path : undefined;
  const delta = opts.delta ? await buildReleaseDelta(opts.image, targetsDir(dir), targetName, { ...(deltaBase ? { base: deltaBase } : {}), ...(opts.deltaLevel !== undefined ? { level: opts.deltaLevel } : {}), ...(opts.deltaFormat !== undefined ? { format: opts.deltaFormat } : {}) }) : undefined;

  const base = {
    hardware: [...opts.hardware],
    version: opts.version,
    securityVersion: opts.securityVersion,
    channel: opts.channel,
    ...(opts.devices && opts.devices.length > 0 ? { devices: [...opts.devices] } : {}),
    ...(opts.rollout ? { rollout: opts.rollout } : {}),
    ...(opts.migration ? { migration: { path: opts.migration.path, ...(opts.migration.timeoutSeconds !== undefined ? { timeoutSeconds: opts.migration.timeoutSeconds } : {}), snapshot: [...opts.migration.snapshot] } } : {}),
  };
  const { compression, size, sha256: imageSha256, chunkSize } = built.payload;
  const indexName = indexTargetName(targetName);
  let custom: ReleaseCustom;
  let index: AddedRelease['index'];
  if (format === 1) {
    // format 1's schema allows no other chunk field: older daemons refuse packedSha256
    custom = { slotflip: 1, ...base, payload: { compression, size, sha256: imageSha256, chunkSize, chunks: built.payload.chunks.map((c) => ({ sha256: c.sha256, offset: c.offset, length: c.length })) } };
  } else {
    const bytes = encodeIndexFile(targetName, built.payload, delta ? (delta.section as unknown as Record<string, unknown>) : undefined);
    const indexSha = sha256(bytes);
    const indexPath = join(finalDir, `${indexSha}.${basename(indexName)}`);
    await writeFileAtomic(indexPath, bytes);
    index = { targetName: indexName, path: indexPath, length: bytes.length, sha256: indexSha };
    custom = { slotflip: 2, ...base, payload: { compression, size, sha256: imageSha256, chunkSize, index: { target: indexName } } };
  }
  const loaded = await updateTargets(dir, now, opts.expiresDays, opts.keys, (map) => {
    map[targetName] = new TargetFile({ path: targetName, length: built.length, hashes: { sha256: built.sha256 }, unrecognizedFields: { custom: custom as never } });
    if (index) map[indexName] = new TargetFile({ path: indexName, length: index.length, hashes: { sha256: index.sha256 } });
    else delete map[indexName]; // re-added as format 1: the old index goes with the old entry
    for (const d of delta?.targets ?? []) map[d.name] = new TargetFile({ path: d.name, length: d.length, hashes: { sha256: d.sha256 } });
  });
  return { targetName, path: finalPath, length: built.length, sha256: built.sha256, targetsVersion: loaded.md.signed.version, custom, chunks: built.payload.chunks.length, ...(index ? { index } : {}), ...(delta ? { delta } : {}) };
}

/** An earlier release, and its delta index file: the seed a device holding that release has. */
export interface EarlierDeltaIndex {
  targetName: string;
  version: string;
  /** its `.delta-index` file under repository/targets/ (content-addressed by its signed SHA-256);
   * undefined when it has none (published with --no-delta or format 1). */
  path: string | undefined;
}

/**
 * The release a device of `hardware` most likely holds when `exceptTarget` reaches it: the best
 * (devices' own order: securityVersion, then semver) other release that shares a hardware string,
 * with the path of its `.delta-index` target file; `undefined` when there is none. Reads the current
 * targets metadata: call it before the new release replaces anything.
 */
export async function earlierDeltaIndex(dir: string, hardware: readonly string[], exceptTarget: string): Promise<EarlierDeltaIndex | undefined> {
  const map = (await loadTargets(dir)).md.signed.targets;
  const earlier = Object.values(map)
    .flatMap((t) => {
      const r = releaseFromTarget(t);
      return r.kind === 'release' && r.release.targetName !== exceptTarget && r.release.custom.hardware.some((h) => hardware.includes(h)) ? [r.release] : [];
    })
    .sort(compareReleases)[0];
  if (!earlier) return undefined;
  const idx = map[`${earlier.targetName}.delta-index`];
  const sha = idx?.hashes['sha256'];
  const path = idx && sha && /^[0-9a-f]{64}$/.test(sha) ? join(targetsDir(dir), dirname(idx.path), `${sha}.${basename(idx.path)}`) : undefined;
  return { targetName: earlier.targetName, version: earlier.custom.version, path };
}

/** Replaces (or with `undefined` removes) a release's rollout and re-signs targets, snapshot, timestamp. */
export async function setRollout(dir: string, targetName: string, rollout: Rollout | undefined, opts: RepoOptions = {}): Promise<number> {
  checkRollout(rollout);
  const now = (opts.now ?? Date.now)();
  const loaded = await updateTargets(dir, now, undefined, opts.keys, (map) => {
    const t = map[targetName];
    if (!t) throw new SlotflipError('MANIFEST_TARGET_NOT_FOUND', `no target ${targetName} in the repository`, { details: { targetName } });
    const custom = { ...(t.custom as Record<string, unknown>) };
    if (rollout) custom['rollout'] = rollout;
    else delete custom['rollout'];
    map[targetName] = new TargetFile({ path: t.path, length: t.length, hashes: t.hashes, unrecognizedFields: { ...t.unrecognizedFields, custom: custom as never } });
  });
  return loaded.md.signed.version;
}

export interface ResignResult {
  timestampVersion: number;
  /** set when the snapshot was re-signed too (it had less than half its validity left). */
  snapshotVersion?: number;
}

/**
 * Re-signs timestamp.json with a fresh expiry (for a cron job / systemd timer: needs only the
 * timestamp key, plus the snapshot key when the snapshot has less than half its validity left).
 * Idempotent apart from the version counter; each call is one atomic write (two with a snapshot).
 */
export async function resignTimestamp(dir: string, opts: RepoOptions = {}): Promise<ResignResult> {
  const now = (opts.now ?? Date.now)();
  const days = await readSettings(dir);
  const tsKey = await readKey(dir, 'timestamp', opts.keys);
  let snap = await loadSnapshot(dir);
  const left = Date.parse(snap.md.signed.expires) - now;
  let snapshotVersion: number | undefined;
  if (left < (days.snapshot * DAY) / 2) {
    const key = await readKey(dir, 'snapshot', opts.keys);
    const next = new Metadata(new Snapshot({ version: snap.md.signed.version + 1, specVersion: SPEC_VERSION, expires: isoIn(now, days.snapshot), meta: snap.md.signed.meta }));
    await signMetadata(next, [key], false);
    const bytes = serialize(next);
    await writeMeta(dir, `${next.signed.version}.snapshot.json`, bytes);
    snap = { md: next, bytes };
    snapshotVersion = next.signed.version;
  }
  await writeTimestamp(dir, now, days, tsKey, snap);
  const ts = (await loadTimestamp(dir)).md.signed.version;
  return snapshotVersion === undefined ? { timestampVersion: ts } : { timestampVersion: ts, snapshotVersion };
}

export interface RotateOptions extends RepoOptions {
  /** root rotation with keys held apart: the new holders' public keys (no private root key here). */
  rootPublicKeys?: PublicKeyJson[];
  /** root rotation: the new threshold (default: the current one). */
  rootThreshold?: number;
  /** targets/snapshot/timestamp: the new key is held by this external signer. */
  signer?: ExternalSignerSpec;
  /** produce a pending root even when the root keys are here (they sign it; holders add theirs). */
  pending?: boolean;
}

/**
 * Rotates a role's keys. `root`: all root keys are replaced; the new root must be signed by a
 * threshold of the old keys AND of the new ones (TUF 5.3.4/5.3.5). Other roles: the role gets a new
 * key in a new root (signed by the current root keys), and its metadata (plus what lists it) is
 * re-signed. Old private keys move to keys/retired/.
 *
 * With the root keys in keys/ (a repository made without --root-pubkey) the new root is published
 * at once. With root keys held apart (or `pending`), the new root is written to DIR/pending/ signed
 * by whatever root keys are here (usually none) and the new role key waits in keys/pending/; each
 * holder then runs signPendingRoot, and the signature that completes both thresholds publishes it.
 */
export async function rotateKey(dir: string, role: TopRole, opts: RotateOptions = {}): Promise<RepoSummary> {
  if (!['root', 'targets', 'snapshot', 'timestamp'].includes(role)) throw badArg(`unknown role ${role}; use root, targets, snapshot or timestamp`);
  const now = (opts.now ?? Date.now)();
  const { days, rootHolders } = await readRepoJson(dir);
  const waiting = await loadPendingRoot(dir);
  if (waiting) throw new SlotflipError('MANIFEST_ROOT_PENDING', `root v${waiting.md.signed.version} in ${pendingDir(dir)} still waits for root key holders' signatures; finish it with \`slotflip repo sign-root ${dir} --key HOLDER.pem\` first`, { details: { version: waiting.md.signed.version } });
  const held = rootHolders || opts.pending === true || opts.rootPublicKeys !== undefined;
  const prev = await loadRoot(dir);
  const r = prev.md.signed;
  const oldRole = r.roles[role]!;
  const stamp = `${now}`;
  await mkdir(join(keysDir(dir), 'retired'), { recursive: true, mode: 0o700 });

  // the new keys: generated here, or public halves only (holders, external signer)
  const generated: SigningKey[] = [];
  let newPublic: PublicKeyJson[];
  let newSigner: Signer | undefined;
  if (role === 'root') {
    if (opts.rootPublicKeys) newPublic = opts.rootPublicKeys;
    else if (held) throw badArg('the root keys of this repository are held apart: give the new holders\' public keys with --root-pubkey FILE (one per holder)');
    else {
      for (const _ of oldRole.keyIDs) generated.push(generateSigningKey());
      newPublic = generated.map((k) => localSigner(k).publicJson);
    }
  } else if (opts.signer) {
    newSigner = externalSigner(opts.signer, role, opts.keys?.env ?? {}, `external signer for ${role}`);
    newPublic = [newSigner.publicJson];
  } else {
    generated.push(generateSigningKey());
    newSigner = localSigner(generated[0]!);
    newPublic = [newSigner.publicJson];
  }
  const newIds = newPublic.map((p) => keyIdOfJson(p));
  const threshold = role === 'root' ? (opts.rootThreshold ?? oldRole.threshold) : oldRole.threshold;
  if (!Number.isInteger(threshold) || threshold < 1 || threshold > newIds.length || new Set(newIds).size !== newIds.length) {
    throw badArg(`threshold ${threshold} of ${newIds.length} distinct ${role} keys is invalid`);
  }
  const keys: Record<string, Key> = { ...r.keys };
  for (const id of oldRole.keyIDs) {
    const stillUsed = Object.entries(r.roles).some(([n, other]) => n !== role && other.keyIDs.includes(id));
    if (!stillUsed) delete keys[id];
  }
  for (const [i, p] of newPublic.entries()) keys[newIds[i]!] = Key.fromJSON(newIds[i]!, p as never);
  const roles: Record<string, { keyIDs: string[]; threshold: number }> = { ...r.roles, [role]: { keyIDs: newIds, threshold } };
  const next = new Metadata(makeRoot({ version: r.version + 1, expires: isoIn(now, days.root), consistentSnapshot: r.consistentSnapshot, keys, roles }));
  // held apart: usually no root key here at all (only a missing key directory is forgiven; a wrong
  // passphrase for a root key that is here still fails)
  const localRoot = held ? await readKeys(dir, 'root-', opts.keys).catch(missingAsNone) : await readKeys(dir, 'root-', opts.keys);
  const oldUsable = localRoot.filter((k) => r.roles['root']!.keyIDs.includes(k.keyid));

  if (held) {
    await signMetadata(next, oldUsable);
    await mkdir(join(keysDir(dir), 'pending'), { recursive: true, mode: 0o700 });
    if (role !== 'root') {
      for (const ext of ['.pem', '.signer.json']) await rm(join(keysDir(dir), 'pending', `${role}${ext}`), { force: true });
      if (opts.signer) await writeSignerSpec(dir, role, opts.signer, 'pending');
      else await writeKey(dir, role, generated[0]!, opts.keys, 'pending');
    }
    await writePendingRoot(dir, next, role === 'root' ? {} : { role });
    const st = await pendingRootStatus(dir);
    if (st && complete(st)) await finishPendingRoot(dir, next, role === 'root' ? {} : { role }, opts);
    return repoSummary(dir);
  }

  if (oldUsable.length < r.roles['root']!.threshold) {
    throw new SlotflipError('MANIFEST_KEY_MISSING', `only ${oldUsable.length} of the ${r.roles['root']!.threshold} root keys needed are in ${keysDir(dir)}; mount the offline root keys`);
  }
  await signMetadata(next, oldUsable);
  if (role === 'root') await signMetadata(next, generated.map((k) => localSigner(k)));

  // retire old private keys, install new ones, then publish (a crash in between leaves the old
  // root published and the new keys on disk: re-running rotate re-signs with whatever is present)
  if (role === 'root') {
    for (const n of (await readdir(keysDir(dir))).filter((x) => /^root-.*\.(pem|signer\.json)$/.test(x))) {
      await rename(join(keysDir(dir), n), join(keysDir(dir), 'retired', n.replace(/\.(pem|signer\.json)$/, `-${stamp}.$1`)));
    }
    for (const [i, k] of generated.entries()) await writeKey(dir, `root-${i + 1}`, k, opts.keys);
  } else {
    for (const ext of ['.pem', '.signer.json']) await rename(join(keysDir(dir), `${role}${ext}`), join(keysDir(dir), 'retired', `${role}-${stamp}${ext}`)).catch(() => undefined);
    if (opts.signer) await writeSignerSpec(dir, role, opts.signer);
    else await writeKey(dir, role, generated[0]!, opts.keys);
  }
  await writeRoot(dir, next);
  if (role !== 'root') await resignRole(dir, role, newSigner!, now, days, opts.keys);
  return repoSummary(dir);
}

/**
 * Publishes a new root version, same keys and roles, whose signed part carries the trusted-time
 * reset `at` (manifests/README.md "Trusted time"): every device that walks to it sets its time floor
 * to `at`. The recovery for devices whose floor is wrong. Needs a threshold of the root keys (with
 * root keys held apart: the root is pending until the holders signed it); also re-signs the
 * timestamp (the new root changes nothing else).
 */
export async function publishTimeReset(dir: string, at: number, opts: RepoOptions = {}): Promise<RepoSummary> {
  const now = (opts.now ?? Date.now)();
  if (!Number.isFinite(at)) throw badArg('--to must be an ISO-8601 time');
  const { days, rootHolders } = await readRepoJson(dir);
  const waiting = await loadPendingRoot(dir);
  if (waiting) throw new SlotflipError('MANIFEST_ROOT_PENDING', `root v${waiting.md.signed.version} in ${pendingDir(dir)} still waits for root key holders' signatures; finish it first`, { details: { version: waiting.md.signed.version } });
  const prev = (await loadRoot(dir)).md.signed;
  const rootKeys = (rootHolders ? await readKeys(dir, 'root-', opts.keys).catch(missingAsNone) : await readKeys(dir, 'root-', opts.keys)).filter((k) => prev.roles['root']!.keyIDs.includes(k.keyid));
  if (!rootHolders && rootKeys.length < prev.roles['root']!.threshold) {
    throw new SlotflipError('MANIFEST_KEY_MISSING', `only ${rootKeys.length} of the ${prev.roles['root']!.threshold} root keys needed are in ${keysDir(dir)}; mount the offline root keys`);
  }
  const root = makeRoot({ version: prev.version + 1, expires: isoIn(now, days.root), consistentSnapshot: prev.consistentSnapshot, keys: prev.keys, roles: prev.roles });
  root.unrecognizedFields[TIME_RESET_FIELD] = new Date(at).toISOString() as never;
  const next = new Metadata(root);
  await signMetadata(next, rootKeys);
  if (rootHolders) {
    await writePendingRoot(dir, next, {});
    return repoSummary(dir);
  }
  await writeRoot(dir, next);
  await resignTimestamp(dir, opts);
  return repoSummary(dir);
}

export interface PublishOptions {
  /** topic layouts written (default both: `v2` for devices of this version, `v1` for devices not yet
   * updated; publish `['v2']` once the fleet has moved). See meta-topics.ts. */
  layouts?: MetaLayout[];
  /** legacy: a v1-style prefix (`<prefix><file name>`) instead of `layouts`. */
  prefix?: string;
  username?: string;
  password?: string;
  /** TLS material (PEM contents or paths are accepted by the caller; here: contents). */
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
  /** connect timeout, ms (default 10 s). */
  timeoutMs?: number;
  /** largest message published, bytes (default 64 KiB: Azure's retained cap, half AWS IoT's). */
  maxMessageBytes?: number;
  /** a file over `maxMessageBytes`: 'refuse' (default: MANIFEST_PUBLISH_OVERSIZE before anything is
   * published) or 'skip' (publish the rest; devices fetch the skipped file over HTTP). */
  oversize?: 'refuse' | 'skip';
  /** also clear retained topics under the meta prefixes that are not part of this repository
   * (default true). Brokers that send no retained messages to wildcard subscriptions (RabbitMQ
   * before 3.13) show none, so there only known older versions are cleared. */
  clearStrays?: boolean;
  /** 5 (default, falling back to 4 when the broker refuses it) or 4. */
  protocolVersion?: 4 | 5;
}

export interface PublishResult {
  published: string[];
  /** retained topics cleared (older snapshot/targets versions, strays not in this repository). */
  cleared: string[];
  /** files not published because they exceed `maxMessageBytes` (oversize 'skip'). */
  skipped: { file: string; bytes: number }[];
  /** the protocol the broker accepted. */
  protocolVersion: 4 | 5;
  /** the largest message published, bytes. */
  largestMessageBytes: number;
}

type MqttClientLike = import('mqtt').MqttClient;

/**
 * MQTT.js's connectAsync never settles when the broker closes the socket without a CONNACK (how
 * RabbitMQ before 3.13 answers MQTT 5) and reconnects are off: the process would just exit. This one
 * rejects on that close.
 */
export async function connectOrFail(url: string, options: import('mqtt').IClientOptions): Promise<MqttClientLike> {
  const { connect } = await import('mqtt');
  const client = connect(url, { ...options, reconnectPeriod: 0 });
  return new Promise((resolve, reject) => {
    const fail = (e: Error): void => {
      client.off('connect', ok);
      client.end(true);
      reject(e);
    };
    const ok = (): void => {
      client.off('error', fail);
      client.off('close', closed);
      resolve(client);
    };
    const closed = (): void => fail(Object.assign(new Error('connection closed before CONNACK'), { code: 'CLOSED_BEFORE_CONNACK' }));
    client.once('connect', ok);
    client.once('error', fail);
    client.once('close', closed);
  });
}

/** Connects with MQTT 5, and with 3.1.1 when the broker refuses 5 (closes without CONNACK). */
async function connectPublisher(brokerUrl: string, opts: PublishOptions): Promise<{ client: MqttClientLike; version: 4 | 5 }> {
  const base = {
    clean: true,
    connectTimeout: opts.timeoutMs ?? 10_000,
    reconnectPeriod: 0,
    ...(opts.username !== undefined ? { username: opts.username } : {}),
    ...(opts.password !== undefined ? { password: opts.password } : {}),
    ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
    ...(opts.cert !== undefined ? { cert: opts.cert } : {}),
    ...(opts.key !== undefined ? { key: opts.key } : {}),
  };
  const versions: (4 | 5)[] = opts.protocolVersion ? [opts.protocolVersion] : [5, 4];
  let first: unknown;
  for (const version of versions) {
    try {
      return { client: await connectOrFail(brokerUrl, { ...base, protocolVersion: version }), version };
    } catch (cause) {
      first ??= cause;
      const code = (cause as { code?: unknown }).code;
      // a broker that is not there will not speak 3.1.1 either
      if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EHOSTUNREACH') break;
    }
  }
  throw new SlotflipError('MANIFEST_PUBLISH_FAILED', `cannot connect to broker ${brokerUrl} (MQTT ${versions.map((v) => (v === 5 ? '5' : '3.1.1')).join(', then ')}); check the URL and credentials`, { cause: first, retryable: true, details: { brokerUrl } });
}

/** Retained topics under `filters` right now (those the broker sends to wildcard subscriptions). */
async function retainedTopics(client: MqttClientLike, filters: string[], settleMs = 400, maxMs = 3000): Promise<Set<string>> {
  const seen = new Set<string>();
  let last = Date.now();
  const onMessage = (topic: string, payload: Buffer, packet: { retain?: boolean }): void => {
    if (packet.retain && payload.length > 0) seen.add(topic);
    last = Date.now();
  };
  client.on('message', onMessage);
  try {
    await client.subscribeAsync(filters, { qos: 1 });
    const start = Date.now();
    last = Date.now();
    while (Date.now() - last < settleMs && Date.now() - start < maxMs) await new Promise((r) => setTimeout(r, 50));
    await client.unsubscribeAsync(filters).catch(() => undefined);
  } finally {
    client.off('message', onMessage);
  }
  return seen;
}

/**
 * Publishes the repository's metadata to an MQTT broker as RETAINED QoS 1 messages, in each topic
 * layout (meta-topics.ts): every N.root.json, the current N.targets.json and N.snapshot.json, then
 * timestamp.json LAST (a device that sees the new timestamp finds everything it references). Older
 * snapshot/targets versions, and retained topics under the meta prefixes that are not part of this
 * repository (garbage, another repository's files), get an empty retained message, which deletes
 * them from the broker. No message is larger than `maxMessageBytes` (default 64 KiB): a larger file
 * is refused (MANIFEST_PUBLISH_OVERSIZE, nothing published) or, with `oversize: 'skip'`, left to
 * HTTP. Idempotent.
 */
export async function publishToBroker(dir: string, brokerUrl: string, opts: PublishOptions = {}): Promise<PublishResult> {
  const topicsOf = (file: string): string[] => {
    if (opts.prefix !== undefined) return [opts.prefix + file];
    return (opts.layouts ?? ['v2', 'v1']).map((l) => metaTopic(file, l)).filter((x): x is string => x !== undefined);
  };
  const prefixes = opts.prefix !== undefined ? [opts.prefix] : (opts.layouts ?? ['v2', 'v1']).map((l) => META_PREFIXES[l]);
  const max = opts.maxMessageBytes ?? MAX_MESSAGE_BYTES;
  const names = await readdir(metaDir(dir)).catch((cause: unknown) => {
    throw new SlotflipError('MANIFEST_REPO_INVALID', `${metaDir(dir)} is missing`, { cause });
  });
  const snapV = await latestVersion(dir, 'snapshot');
  const targV = await latestVersion(dir, 'targets');
  const roots = names.filter((n) => /^\d+\.root\.json$/.test(n)).sort((a, b) => parseInt(a) - parseInt(b));
  const current = [...roots, `${targV}.targets.json`, `${snapV}.snapshot.json`, 'timestamp.json'];
  const stale = names.filter((n) => /^\d+\.(snapshot|targets)\.json$/.test(n) && !current.includes(n));
  // every message is sized before anything is published: a refusal leaves the broker as it was
  const files: { file: string; bytes: Buffer }[] = [];
  const skipped: PublishResult['skipped'] = [];
  for (const file of current) {
    const bytes = await readFile(join(metaDir(dir), file));
    if (bytes.byteLength > max) {
      if ((opts.oversize ?? 'refuse') === 'refuse') {
        throw new SlotflipError('MANIFEST_PUBLISH_OVERSIZE', `${file} is ${bytes.byteLength} bytes, more than the ${max} allowed in one MQTT message (AWS IoT Core takes 128 KB, Azure 64 KB retained; Mosquitto withholds what exceeds a client's maximum packet size); nothing was published. Publish with --oversize skip to leave it to HTTP (devices fetch what the broker lacks from the repository), prune old releases (\`slotflip repo prune DIR --keep N\`), or publish releases in format 2 (the default; not \`release add --inline-index\`)`, { details: { file, bytes: bytes.byteLength, maxMessageBytes: max } });
      }
      skipped.push({ file, bytes: bytes.byteLength });
      continue;
    }
    files.push({ file, bytes });
  }
  const { client, version } = await connectPublisher(brokerUrl, opts);
  const published: string[] = [];
  const cleared: string[] = [];
  let largest = 0;
  try {
    const wanted = new Set(files.flatMap((f) => topicsOf(f.file)));
    const strays = (opts.clearStrays ?? true) ? await retainedTopics(client, prefixes.map((p) => `${p}#`)) : new Set<string>();
    for (const { file, bytes } of files) {
      for (const topic of topicsOf(file)) {
        await client.publishAsync(topic, bytes, { qos: 1, retain: true });
        largest = Math.max(largest, bytes.byteLength);
        published.push(topic);
      }
    }
    const toClear = new Set<string>([...stale.flatMap(topicsOf), ...skipped.flatMap((s) => topicsOf(s.file)), ...[...strays].filter((t) => !wanted.has(t))]);
    for (const topic of toClear) {
      await client.publishAsync(topic, Buffer.alloc(0), { qos: 1, retain: true });
      cleared.push(topic);
    }
  } catch (cause) {
    throw new SlotflipError('MANIFEST_PUBLISH_FAILED', `publishing to ${brokerUrl} failed; the broker may deny retained publishes on ${prefixes.map((p) => `${p}#`).join(', ')}`, { cause, retryable: true, details: { brokerUrl } });
  } finally {
    await client.endAsync().catch(() => undefined);
  }
  return { published, cleared, skipped, protocolVersion: version, largestMessageBytes: largest };
}

export interface ExportOptions extends RepoOptions {
  /** how long the bundle's offline statement is valid, days (default 30; capped at the targets and
   * root expiry). */
  validDays?: number;
  /** export only these target names (default: every target of the current targets metadata). */
  targets?: string[];
}

export interface ExportResult {
  out: string;
  /** the offline statement's own expiry, ISO-8601. */
  expires: string;
  targets: string[];
  files: number;
}

/**
 * Writes an offline bundle for a USB stick to OUT (which must not hold one already):
 *
 *   OUT/metadata/  every N.root.json and root.json, the current N.targets.json and N.snapshot.json,
 *                  timestamp.json, and offline.json (written last)
 *   OUT/targets/   the exported payloads, `<dir>/<sha256>.<basename>` as in the repository, and
 *                  the chunk index file of every exported format 2 release
 *
 * offline.json is a statement signed by the TARGETS key (the offline, longer-lived role): "this
 * timestamp (version, sha256) and this snapshot (version, sha256) are fresh until EXPIRES". A
 * device accepts it only from local media (`slotflip install DIR`), and only to excuse the
 * timestamp's and snapshot's own expiry: root and targets expiry, signatures, rollback and
 * mix-and-match checks all still apply. Needs the targets key; signs nothing else.
 */
export async function exportBundle(dir: string, out: string, opts: ExportOptions = {}): Promise<ExportResult> {
  const now = (opts.now ?? Date.now)();
  const validDays = opts.validDays ?? 30;
  if (!Number.isFinite(validDays) || validDays <= 0 || validDays > 366) throw badArg('--valid-days must be a number of days in 1..366');
  if (await exists(join(out, 'metadata'))) throw badArg(`${out} already holds a bundle (metadata/); give an empty directory`, { out });
  const key = await readKey(dir, 'targets', opts.keys);
  const root = await loadRoot(dir);
  const targets = await loadTargets(dir);
  const snapshot = await loadSnapshot(dir);
  const ts = await loadTimestamp(dir);
  const listed = opts.targets ?? Object.keys(targets.md.signed.targets).sort();
  for (const n of listed) if (!targets.md.signed.targets[n]) throw new SlotflipError('MANIFEST_TARGET_NOT_FOUND', `target ${JSON.stringify(n)} is not in targets v${targets.md.signed.version}`, { details: { target: n } });
  // a format 2 release is installable only with its chunk index: it goes along
  const names = [...new Set(listed.flatMap((n) => {
    const idx = indexOfCustom(targets.md.signed.targets[n]!.custom);
    return idx && targets.md.signed.targets[idx] ? [n, idx] : [n];
  }))].sort();

  const metaOut = join(out, 'metadata');
  await mkdir(metaOut, { recursive: true });
  let files = 0;
  const copy = async (from: string, to: string): Promise<void> => {
    await mkdir(dirname(to), { recursive: true });
    await writeFileAtomic(to, await readFile(from));
    files++;
  };
  for (const n of (await readdir(metaDir(dir))).filter((f) => /^\d+\.root\.json$/.test(f) || f === 'root.json')) await copy(join(metaDir(dir), n), join(metaOut, n));
  await copy(join(metaDir(dir), `${targets.md.signed.version}.targets.json`), join(metaOut, `${targets.md.signed.version}.targets.json`));
  await copy(join(metaDir(dir), `${snapshot.md.signed.version}.snapshot.json`), join(metaOut, `${snapshot.md.signed.version}.snapshot.json`));
  for (const n of names) {
    const t = targets.md.signed.targets[n]!;
    const file = join(dirname(n), `${t.hashes['sha256']}.${basename(n)}`);
    await copy(join(targetsDir(dir), file), join(out, 'targets', file));
  }
  await copy(join(metaDir(dir), 'timestamp.json'), join(metaOut, 'timestamp.json'));

  const expiresMs = Math.min(now + validDays * 86_400_000, Date.parse(targets.md.signed.expires), Date.parse(root.md.signed.expires));
  const expires = new Date(expiresMs).toISOString().replace(/\.\d{3}Z$/, 'Z');
  const signedPart = {
    _type: OFFLINE_TYPE,
    version: 1,
    issued: new Date(now).toISOString().replace(/\.\d{3}Z$/, 'Z'),
    expires,
    timestamp: { version: ts.md.signed.version, sha256: sha256(ts.bytes) },
    snapshot: { version: snapshot.md.signed.version, sha256: sha256(snapshot.bytes) },
  };
  const statement = { signed: signedPart, signatures: [{ keyid: key.keyid, sig: await key.sign(Buffer.from(canonicalJson(signedPart), 'utf8')) }] };
  // offline.json last: a bundle without it is a plain (online-only) repository copy
  await writeFileAtomic(join(metaOut, OFFLINE_FILE), Buffer.from(JSON.stringify(statement, null, 1) + '\n'));
  return { out, expires, targets: names, files: files + 1 };
}

/** The index target a slotflip custom block names (format 2), else undefined. */
function indexOfCustom(custom: unknown): string | undefined {
  const c = custom as { slotflip?: unknown; payload?: { index?: { target?: unknown } } } | undefined;
  const t = c?.slotflip === 2 ? c.payload?.index?.target : undefined;
  return typeof t === 'string' ? t : undefined;
}

export interface PruneOptions extends RepoOptions {
  /** releases kept per (hardware, channel), newest first (by the devices' own order: securityVersion,
   * then semver); at least 1. */
  keep: number;
  /** list what would go, change nothing. */
  dryRun?: boolean;
}

export interface PruneResult {
  /** release targets removed from the targets metadata (their index targets go with them). */
  removed: string[];
  /** release targets kept. */
  kept: string[];
  /** the new targets version (undefined: nothing removed, nothing signed). */
  targetsVersion?: number;
}

/**
 * Removes old releases from the targets metadata so it stays small (every device fetches it, and
 * every MQTT message stays under the broker's cap). For each (hardware compatible string, channel)
 * the releases are ranked as devices rank them (manifests/select.ts compareReleases); a release stays
 * when, in ANY group it belongs to, it is among the `keep` best OR no better release of that group is
 * available to every device of it right now: a release whose `devices` list, rollout percentage,
 * schedule or halt keeps some devices away makes the next one down what those devices install, so it
 * is never pruned from under them. Format 2 index targets go with their release; targets that are
 * not slotflip releases are left alone. Payload and index FILES stay in repository/targets/ (devices
 * in the middle of an install still fetch them; they are content-addressed, delete them later by hand).
 * Needs the targets, snapshot and timestamp keys; one new targets version when anything goes.
 */
export async function pruneReleases(dir: string, opts: PruneOptions): Promise<PruneResult> {
  const now = (opts.now ?? Date.now)();
  if (!Number.isSafeInteger(opts.keep) || opts.keep < 1) throw badArg(`--keep ${String(opts.keep)}: keep at least 1 release per hardware and channel`);
  const current = (await loadTargets(dir)).md.signed.targets;
  const releases = Object.values(current).flatMap((t) => {
    const r = releaseFromTarget(t);
    return r.kind === 'release' ? [r.release] : [];
  });
  const groups = new Map<string, typeof releases>();
  for (const r of releases) {
    for (const hw of r.custom.hardware) {
      const key = JSON.stringify([hw, r.custom.channel]);
      groups.set(key, [...(groups.get(key) ?? []), r]);
    }
  }
  // available to every device of its group now: no device list, rollout (if any) at 100 % now and not
  // halted (a later wave could lower it again: a schedule counts as not for everyone)
  const forEveryone = (r: (typeof releases)[number]): boolean => r.custom.devices === undefined && (r.custom.rollout === undefined || (rolloutAllows(r.custom.rollout, 99, now) && (r.custom.rollout.waves ?? []).every((w) => w.percent >= 100)));
  const keep = new Set<string>();
  for (const list of groups.values()) {
    const ranked = [...list].sort(compareReleases);
    let coveredAll = false;
    for (const [i, r] of ranked.entries()) {
      if (i < opts.keep || !coveredAll) keep.add(r.targetName);
      if (forEveryone(r)) coveredAll = true;
      if (i >= opts.keep - 1 && coveredAll) break;
    }
  }
  const removed = releases.map((r) => r.targetName).filter((n) => !keep.has(n)).sort();
  const kept = releases.map((r) => r.targetName).filter((n) => keep.has(n)).sort();
  if (removed.length === 0 || opts.dryRun) return { removed, kept };
  const loaded = await updateTargets(dir, now, undefined, opts.keys, (map) => {
    for (const n of removed) {
      const idx = indexOfCustom(map[n]?.custom);
      delete map[n];
      // an index target another kept release still names stays
      if (idx && !kept.some((k) => indexOfCustom(map[k]?.custom) === idx)) delete map[idx];
      // its delta files (manifests/delta-publish.ts) are named after it and go with it
      delete map[`${n}.delta-index`];
      delete map[`${n}.delta-pack`];
      delete map[`${n}.delta-thin`];
    }
  });
  return { removed, kept, targetsVersion: loaded.md.signed.version };
}

/**
 * An in-memory TUF repository simulator: a first-class test double (like undici's MockAgent) for
 * anything that consumes slotflip metadata — the trust client's conformance and attack suites, the
 * daemon's transport tests, the installer's tests.
 *
 * Metadata is kept as plain, mutable `signed` JSON objects so a test can craft anything a malicious
 * or broken repository could serve (threshold 0, duplicate signatures, wrong versions, oversized
 * documents); `publish*` signs with the current signers and stores the exact bytes a client
 * fetches. Signing uses the same canonical JSON and Ed25519 as the real repository tools.
 */
import { createHash } from 'node:crypto';
import { canonicalJson, generateSigningKey, publicKeyJson, signBytes, type SigningKey } from './keys.js';
import { ISSUED_FIELD, memorySource, quoteRole, type MetadataSource } from './client.js';
import type { ReleaseCustom } from './types.js';

export type Json = Record<string, unknown>;

export interface SimRole {
  keyids: string[];
  threshold: number;
}

export interface SimDelegation extends SimRole {
  name: string;
  terminating: boolean;
  paths?: string[];
  path_hash_prefixes?: string[];
}

export interface SimTargets extends Json {
  _type: 'targets';
  spec_version: string;
  version: number;
  expires: string;
  targets: Record<string, { length: number; hashes: Record<string, string>; custom?: unknown }>;
  delegations?: { keys: Record<string, Json>; roles: SimDelegation[] };
}

const DAY = 86_400_000;
const iso = (ms: number): string => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export class RepoSim {
  now: number;
  /** published files by name, exactly as a client fetches them. */
  readonly files = new Map<string, Uint8Array>();
  /** payloads by URL path under the targets base (hash-prefixed when consistent). */
  readonly targetFiles = new Map<string, Uint8Array>();
  /** names fetched through source(), in order. */
  readonly fetched: string[] = [];

  root: Json & { version: number; expires: string; keys: Record<string, Json>; roles: Record<string, SimRole>; consistent_snapshot: boolean };
  timestamp: Json & { version: number; expires: string; meta: Record<string, Json> };
  snapshot: Json & { version: number; expires: string; meta: Record<string, Json> };
  /** 'targets' and delegated roles. */
  readonly targets = new Map<string, SimTargets>();
  /** keys that sign each role when published (may differ from what root lists: attacks). */
  readonly signers = new Map<string, SigningKey[]>();
  /** include length and hashes in snapshot/timestamp meta. */
  metaHashes = true;
  /** expiry periods, days, applied by bump(). */
  readonly periods: Record<string, number> = { root: 365, targets: 90, snapshot: 7, timestamp: 1 };

  constructor(now: number, opts: { rootKeys?: number; rootThreshold?: number; consistentSnapshot?: boolean } = {}) {
    this.now = now;
    const rootKeys = Array.from({ length: opts.rootKeys ?? 1 }, () => generateSigningKey());
    this.root = {
      _type: 'root',
      spec_version: '1.0.31',
      version: 1,
      expires: iso(now + 365 * DAY),
      consistent_snapshot: opts.consistentSnapshot ?? true,
      keys: {},
      roles: {
        root: { keyids: [], threshold: opts.rootThreshold ?? 1 },
        targets: { keyids: [], threshold: 1 },
        snapshot: { keyids: [], threshold: 1 },
        timestamp: { keyids: [], threshold: 1 },
      },
    };
    for (const k of rootKeys) this.addKey('root', k);
    for (const r of ['targets', 'snapshot', 'timestamp']) this.addKey(r);
    this.targets.set('targets', { _type: 'targets', spec_version: '1.0.31', version: 1, expires: iso(now + 90 * DAY), targets: {} });
    this.snapshot = { _type: 'snapshot', spec_version: '1.0.31', version: 1, expires: iso(now + 7 * DAY), meta: {} };
    this.timestamp = { _type: 'timestamp', spec_version: '1.0.31', version: 1, expires: iso(now + DAY), meta: {} };
  }

  /** Adds a key to a top-level role in root (and to its signers). */
  addKey(role: string, key: SigningKey = generateSigningKey()): SigningKey {
    this.root.keys[key.keyid] = publicKeyJson(key.publicHex);
    this.root.roles[role]!.keyids.push(key.keyid);
    this.signers.set(role, [...(this.signers.get(role) ?? []), key]);
    return key;
  }

  /** Replaces all keys of a top-level role with one new key (signers too). */
  replaceKeys(role: string, key: SigningKey = generateSigningKey()): SigningKey {
    this.root.roles[role]!.keyids = [];
    this.signers.set(role, []);
    return this.addKey(role, key);
  }

  /** A signed envelope's bytes; `keys` default to the role's signers. */
  sign(role: string, signed: Json, keys?: readonly SigningKey[]): Uint8Array {
    const data = Buffer.from(canonicalJson(signed), 'utf8');
    const signatures = (keys ?? this.signers.get(role) ?? []).map((k) => ({ keyid: k.keyid, sig: signBytes(k, data) }));
    return Buffer.from(JSON.stringify({ signatures, signed }), 'utf8');
  }

  /** Sets a role's version+1 and a fresh expiry from `now`. */
  bump(role: string): void {
    const doc = role === 'root' ? this.root : role === 'timestamp' ? this.timestamp : role === 'snapshot' ? this.snapshot : this.targets.get(role)!;
    doc.version += 1;
    doc.expires = iso(this.now + (this.periods[role] ?? 90) * DAY);
  }

  /** Publishes root as `<v>.root.json`, signed by its signers plus `extraSigners` (old root keys). */
  publishRoot(extraSigners: readonly SigningKey[] = []): Uint8Array {
    const seen = new Set<string>();
    const keys = [...extraSigners, ...(this.signers.get('root') ?? [])].filter((k) => !seen.has(k.keyid) && seen.add(k.keyid));
    const bytes = this.sign('root', this.root, keys);
    this.files.set(`${this.root.version}.root.json`, bytes);
    return bytes;
  }

  /** Bumps root, replaces its keys with `n` new ones, and publishes it signed by old and new keys. */
  rotateRoot(n = 1, threshold = 1): SigningKey[] {
    const old = this.signers.get('root') ?? [];
    this.bump('root');
    this.root.roles['root'] = { keyids: [], threshold };
    this.signers.set('root', []);
    const fresh = Array.from({ length: n }, () => this.addKey('root'));
    this.publishRoot(old);
    return fresh;
  }

  private fileName(role: string, version: number): string {
    const enc = `${quoteRole(role)}.json`;
    return this.root.consistent_snapshot ? `${version}.${enc}` : enc;
  }

  /** Signs and stores a targets role (top-level or delegated) under its current version. */
  publishTargets(role = 'targets'): Uint8Array {
    const doc = this.targets.get(role)!;
    const bytes = this.sign(role, doc);
    this.files.set(this.fileName(role, doc.version), bytes);
    return bytes;
  }

  /** Recomputes snapshot meta from the published targets roles, signs and stores it. */
  publishSnapshot(): Uint8Array {
    const meta: Record<string, Json> = {};
    for (const [role, doc] of this.targets) {
      const bytes = this.files.get(this.fileName(role, doc.version));
      if (!bytes) continue;
      meta[`${role}.json`] = this.metaHashes ? { version: doc.version, length: bytes.length, hashes: { sha256: sha256(bytes) } } : { version: doc.version };
    }
    this.snapshot.meta = meta;
    const bytes = this.sign('snapshot', this.snapshot);
    this.files.set(this.root.consistent_snapshot ? `${this.snapshot.version}.snapshot.json` : 'snapshot.json', bytes);
    return bytes;
  }

  /** Points timestamp at the published snapshot, signs and stores timestamp.json. */
  publishTimestamp(): Uint8Array {
    const snapName = this.root.consistent_snapshot ? `${this.snapshot.version}.snapshot.json` : 'snapshot.json';
    const snap = this.files.get(snapName)!;
    this.timestamp.meta = { 'snapshot.json': this.metaHashes ? { version: this.snapshot.version, length: snap.length, hashes: { sha256: sha256(snap) } } : { version: this.snapshot.version } };
    this.timestamp[ISSUED_FIELD] = new Date(this.now).toISOString();
    const bytes = this.sign('timestamp', this.timestamp);
    this.files.set('timestamp.json', bytes);
    return bytes;
  }

  /** Version-1 publication: root, targets, snapshot, timestamp. Returns the root bytes (the anchor). */
  publishAll(): Uint8Array {
    const root = this.publishRoot();
    for (const role of this.targets.keys()) this.publishTargets(role);
    this.publishSnapshot();
    this.publishTimestamp();
    return root;
  }

  /** A normal repository update: bump and publish the given targets roles, then snapshot and timestamp. */
  update(roles: string[] = ['targets']): void {
    for (const r of roles) {
      this.bump(r);
      this.publishTargets(r);
    }
    this.bump('snapshot');
    this.publishSnapshot();
    this.bump('timestamp');
    this.publishTimestamp();
  }

  /** Adds a target (file contents published under the consistent, hash-prefixed name). */
  addTarget(path: string, content: Uint8Array, custom?: ReleaseCustom | Json, role = 'targets'): void {
    const doc = this.targets.get(role)!;
    const hash = sha256(content);
    doc.targets[path] = { length: content.length, hashes: { sha256: hash }, ...(custom ? { custom } : {}) };
    const parts = path.split('/');
    const last = parts.pop()!;
    const name = this.root.consistent_snapshot ? [...parts, `${hash}.${last}`].join('/') : path;
    this.targetFiles.set(name, new Uint8Array(content));
  }

  /** Delegates `paths` from `parent` to a new role with one new key. */
  delegate(parent: string, name: string, opts: { paths?: string[]; terminating?: boolean; threshold?: number } = {}): SigningKey {
    const key = generateSigningKey();
    const p = this.targets.get(parent)!;
    p.delegations ??= { keys: {}, roles: [] };
    p.delegations.keys[key.keyid] = publicKeyJson(key.publicHex);
    p.delegations.roles.push({ name, keyids: [key.keyid], threshold: opts.threshold ?? 1, terminating: opts.terminating ?? false, paths: opts.paths ?? ['*'] });
    this.targets.set(name, { _type: 'targets', spec_version: '1.0.31', version: 1, expires: iso(this.now + 90 * DAY), targets: {} });
    this.signers.set(name, [key]);
    return key;
  }

  /** A MetadataSource over the published files that records every fetched name. */
  source(): MetadataSource {
    const inner = memorySource(this.files);
    return {
      fetch: (name, max) => {
        this.fetched.push(name);
        return inner.fetch(name, max);
      },
    };
  }
}

/**
 * Device-side TUF client: the TUF client workflow (specification 5.x) on @tufjs/models.
 *
 * Why not tuf-js's `Updater`: it reads the clock itself (`new Date()`, no injection, so expiry cannot
 * be judged against a trusted time that never runs backwards and tests cannot fake time), writes
 * trusted metadata with `fs.writeFileSync` (a power cut mid-write leaves a torn root.json and a
 * device that trusts nothing), has no notion of a root shipped read-only in the OS image to fall back
 * on, counts one public key listed under two key ids twice toward a threshold, and fetches only over
 * HTTP (metadata here also arrives as retained MQTT messages or from a USB stick). So the workflow is
 * re-implemented here on the library's data model (parsing, signature checks per key) with:
 *
 * - an injected clock and a *trusted time* = max(now(), persisted floor); the floor is raised after
 *   every successful refresh to max(trusted time, the newest verified timestamp's signed
 *   `x-slotflip-issued` time), so a board whose RTC resets to 1970 or whose clock is set years back
 *   still judges expiry from the newest time it has verified. Trade-off: a compromised *timestamp*
 *   key can push the floor into the future (a denial of service, never an install); the floor is
 *   written only when it moved by at least 10 minutes, to spare flash.
 * - every trusted file written with writeFileAtomic (temp, fsync, rename, fsync dir), only after it
 *   verified, and by default only once the WHOLE refresh succeeded (staged in memory, then written
 *   root → targets → snapshot → timestamp): any rejection leaves the trusted directory
 *   byte-identical. A crash mid-commit leaves individually valid files that the next refresh
 *   re-verifies (an old timestamp signed by rotated-out keys is simply ignored).
 * - size caps enforced by the source *before* parsing (and the snapshot/targets length from the
 *   parent when listed);
 * - thresholds counted over distinct public keys, not key ids;
 * - a damaged or missing stored root falls back to the shipped root (and repairs the stored copy);
 *   a shipped root newer than the stored one (an OS update shipping a rotated root) wins;
 * - transport behind `MetadataSource` (directory, HTTP with caps and timeout, in-memory map that the
 *   MQTT transport fills from retained messages).
 *
 * Trusted directory layout (also what the tuf-conformance CLI expects): root.json, timestamp.json,
 * snapshot.json, targets.json, `<quoteRole(role)>.json` for delegated roles, and
 * trusted-time.json (the time floor). Files are the exact bytes that verified.
 *
 * Not thread-safe: one refresh at a time per trusted directory (the daemon serialises them).
 */
import { mkdir } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { Key, MetaFile, Metadata, MetadataKind, Root, Snapshot, TargetFile, Targets, Timestamp } from '@tufjs/models';
import { weakRequire } from '../hal/lazy.js';
import { SlotflipError, isCoded } from '../hal/errors.js';
import { readFileCapped, writeFileAtomic } from '../hal/atomic-file.js';
import type { ManifestCode } from './codes.js';
import type { Release } from './types.js';
import { indexTargetOf, releaseFromTarget, withIndexTarget } from './release.js';
import { checkKeyScheme, checkTargetName } from './validate.js';
import { httpGet, type HttpGetResponse } from './http-get.js';
import { isoTime } from '../hal/iso-time.js';

// ---------------------------------------------------------------- sources

/** Where metadata comes from. Names are file names as published: `timestamp.json`, `3.root.json`,
 * `7.snapshot.json`, `7.targets.json`, `2.<role>.json` (delegated role names percent-encoded, quoteRole). */
export interface MetadataSource {
  /** Returns the document, or undefined when it does not exist (404, no file, no retained message).
   * Must refuse with MANIFEST_TOO_LARGE before holding more than `maxBytes`; other failures throw
   * MANIFEST_FETCH_FAILED (retryable). Read-only, idempotent. */
  fetch(name: string, maxBytes: number): Promise<Uint8Array | undefined>;
  /** true for local media (a directory, a USB stick): only such a source may vouch for expired
   * timestamp/snapshot metadata with an offline bundle's `offline.json` (see OFFLINE_FILE). */
  readonly local?: boolean;
}

function checkName(name: string): void {
  if (name.length === 0 || name.length > 512 || name.includes('/') || name.includes('\\') || name.includes('\0') || name === '.' || name === '..') {
    throw new SlotflipError('MANIFEST_FETCH_FAILED', `refusing to fetch metadata named ${JSON.stringify(name)}: not a plain file name`, { details: { name } });
  }
}

function tooLarge(where: string, maxBytes: number): SlotflipError {
  return new SlotflipError('MANIFEST_TOO_LARGE', `${where} is larger than the ${maxBytes} bytes allowed; refused before parsing`, { details: { where, maxBytes } });
}

/** Reads metadata from a directory (a repository's metadata/ folder, a USB stick). */
export function dirSource(dir: string): MetadataSource {
  return {
    local: true,
    async fetch(name, maxBytes) {
      checkName(name);
      const path = join(dir, name);
      try {
        return new Uint8Array(await readFileCapped(path, maxBytes));
      } catch (e) {
        if (isCoded(e, 'HAL_FILE_TOO_LARGE')) throw tooLarge(path, maxBytes);
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
        throw new SlotflipError('MANIFEST_FETCH_FAILED', `reading ${path} failed`, { cause: e, retryable: true, details: { path } });
      }
    },
  };
}

/** Serves metadata from a map (the daemon's MQTT transport fills it from retained messages). */
export function memorySource(map: Map<string, Uint8Array>): MetadataSource {
  return {
    async fetch(name, maxBytes) {
      checkName(name);
      const data = map.get(name);
      if (data === undefined) return undefined;
      if (data.byteLength > maxBytes) throw tooLarge(`retained ${name}`, maxBytes);
      return new Uint8Array(data);
    },
  };
}

export interface HttpSourceOptions {
  /** whole-request timeout, ms (default 30 s). */
  timeoutMs?: number;
  headers?: Record<string, string>;
}

/** GETs `url` (node:http/https, manifests/http-get.ts), holding at most `maxBytes`; undefined on
 * 404/403/410. Redirects are followed; `timeoutMs` covers the whole exchange, body included. */
export async function fetchCapped(url: string, maxBytes: number, options: HttpSourceOptions = {}): Promise<Uint8Array | undefined> {
  let res: HttpGetResponse;
  const signal = AbortSignal.timeout(options.timeoutMs ?? 30_000);
  try {
    // identity: a compressed body would defeat the byte cap
    res = await httpGet(url, { headers: { 'accept-encoding': 'identity', ...options.headers }, signal, redirect: 'follow' });
  } catch (cause) {
    throw new SlotflipError('MANIFEST_FETCH_FAILED', `GET ${url} failed; check the URL and the network`, { cause, retryable: true, details: { url } });
  }
  if (res.status === 404 || res.status === 403 || res.status === 410) {
    res.cancel();
    return undefined;
  }
  if (res.status < 200 || res.status > 299) {
    res.cancel();
    throw new SlotflipError('MANIFEST_FETCH_FAILED', `GET ${url} answered HTTP ${res.status}`, { retryable: res.status >= 500 || res.status === 429, details: { url, status: res.status } });
  }
  const declared = Number(res.headers['content-length'] ?? NaN);
  if (Number.isFinite(declared) && declared > maxBytes) {
    res.cancel();
    throw tooLarge(url, maxBytes);
  }
  const parts: Uint8Array[] = [];
  let total = 0;
  try {
    for await (const chunk of res.body) {
      total += chunk.byteLength;
      if (total > maxBytes) throw tooLarge(url, maxBytes);
      parts.push(chunk);
    }
  } catch (e) {
    res.cancel();
    if (isCoded(e, 'MANIFEST_TOO_LARGE')) throw e;
    throw new SlotflipError('MANIFEST_FETCH_FAILED', `GET ${url}: body read failed`, { cause: e, retryable: true, details: { url } });
  }
  const out = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}

/** Reads metadata from an HTTP(S) base URL (any static host or CDN). */
export function httpSource(baseUrl: string, options: HttpSourceOptions = {}): MetadataSource {
  const base = baseUrl.endsWith('/') ? baseUrl : baseUrl + '/';
  return {
    async fetch(name, maxBytes) {
      checkName(name);
      return fetchCapped(base + name, maxBytes, options);
    },
  };
}

// ---------------------------------------------------------------- limits and results

export interface TrustLimits {
  /** byte caps, checked before parsing. */
  rootBytes: number;
  timestampBytes: number;
  snapshotBytes: number;
  targetsBytes: number;
  /** how many root versions one refresh may walk. */
  maxRootRotations: number;
  /** how many delegated roles one lookup may visit. */
  maxDelegations: number;
}

export const DEFAULT_LIMITS: TrustLimits = {
  rootBytes: 512 * 1024,
  timestampBytes: 16 * 1024,
  snapshotBytes: 2 * 1024 * 1024,
  targetsBytes: 8 * 1024 * 1024,
  maxRootRotations: 32,
  maxDelegations: 32,
};

/** Signed, unrecognized timestamp field carrying the repository's signing time (ISO-8601). */
export const ISSUED_FIELD = 'x-slotflip-issued';
/** Signed, unrecognized ROOT field (ISO-8601): the recovery for a device whose time floor is wrong.
 * A root version the device has not trusted before that carries it sets the floor to that time. */
export const TIME_RESET_FIELD = 'x-slotflip-time-reset';
/** An offline bundle's freshness statement, beside the metadata on local media (export.ts). */
export const OFFLINE_FILE = 'offline.json';
export const OFFLINE_TYPE = 'slotflip-offline';
const FLOOR_FILE = 'trusted-time.json';
const FLOOR_WRITE_STEP_MS = 10 * 60 * 1000;
/** How far ahead of a plausible local clock a signed issue time may move the floor. */
export const FLOOR_MAX_AHEAD_MS = 60 * 60 * 1000;

export interface RefreshOptions {
  /** 'at-end' (default, devices): verified documents are staged in memory and written (each
   * atomically: root, targets roles, snapshot, timestamp, time floor) only when the whole refresh
   * succeeded, so any rejection leaves the trusted directory byte-identical. 'as-verified': each
   * document is written as soon as it verified, literally as the TUF spec describes (the
   * conformance CLI uses this). Both are crash-safe: every file is written atomically and the
   * workflow re-verifies whatever it finds stored. */
  persist?: 'at-end' | 'as-verified';
  /** also load every delegated targets role to list their releases (default true; the conformance
   * CLI passes false so a refresh fetches top-level metadata only). */
  delegations?: boolean;
}

export interface RefreshResult {
  rootVersion: number;
  timestampVersion: number;
  snapshotVersion: number;
  targetsVersion: number;
  /** root versions walked in this refresh. */
  rootsRotated: number;
  /** true when the timestamp moved (new metadata). */
  updated: boolean;
  /** trusted time used for expiry, ISO-8601. */
  trustedTime: string;
  releases: Release[];
  /** targets with a slotflip custom block that failed validation (skipped). */
  invalidTargets: { targetName: string; code: ManifestCode; message: string }[];
  /** non-fatal conditions, e.g. MANIFEST_ROOT_DAMAGED. */
  warnings: { code: ManifestCode; message: string }[];
}

export interface TrustClientOptions {
  /** directory holding the trusted metadata (writable, persistent). */
  trustedDir: string;
  /** root.json shipped inside the read-only OS image: the trust anchor. */
  shippedRootPath: string;
  source: MetadataSource;
  now: () => number;
  limits?: Partial<TrustLimits>;
  /** keep the persisted trusted-time floor (default true). The conformance CLI turns it off: its
   * test suite fakes the clock forwards and back between runs. */
  trustedTimeFloor?: boolean;
}

type AnyMeta = Metadata<Root | Timestamp | Snapshot | Targets>;

/**
 * @tufjs/models (with minimatch, brace-expansion), loaded for a refresh and held weakly afterwards
 * (hal/lazy.ts `weakRequire`): an idle daemon holds no metadata object between checks (the agent,
 * and with it its TrustClient, is built per cycle), so between checks the package's code and
 * classes are freed with the rest of a check's garbage (bench:memory, issue 16). A TrustClient keeps
 * the copy it started with for its whole life, so every object of one refresh comes from one copy
 * of the package (its classes' `instanceof` checks hold).
 */
const tufModels = weakRequire<typeof import('@tufjs/models')>('@tufjs/models');

/** @tufjs/models' `MetadataKind` values (a string enum), named without loading the package. */
const Kind = { Root: 'root', Timestamp: 'timestamp', Snapshot: 'snapshot', Targets: 'targets' } as unknown as {
  readonly Root: MetadataKind.Root;
  readonly Timestamp: MetadataKind.Timestamp;
  readonly Snapshot: MetadataKind.Snapshot;
  readonly Targets: MetadataKind.Targets;
};

function fail(code: ManifestCode, message: string, details?: Record<string, unknown>, cause?: unknown): never {
  throw new SlotflipError(code, message, { details, cause });
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** bytes → Metadata of `kind`, or a coded error. No signature check. */
export function parseMetadata(bytes: Uint8Array, kind: MetadataKind.Root, where: string): Metadata<Root>;
export function parseMetadata(bytes: Uint8Array, kind: MetadataKind.Timestamp, where: string): Metadata<Timestamp>;
export function parseMetadata(bytes: Uint8Array, kind: MetadataKind.Snapshot, where: string): Metadata<Snapshot>;
export function parseMetadata(bytes: Uint8Array, kind: MetadataKind.Targets, where: string): Metadata<Targets>;
export function parseMetadata(bytes: Uint8Array, kind: MetadataKind, where: string): AnyMeta {
  let data: unknown;
  try {
    data = JSON.parse(utf8.decode(bytes));
  } catch (cause) {
    fail('MANIFEST_PARSE', `${where} is not valid UTF-8 JSON`, { where }, cause);
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) fail('MANIFEST_INVALID', `${where} is not a JSON object`, { where });
  const signed = (data as { signed?: unknown }).signed;
  if (typeof signed !== 'object' || signed === null) fail('MANIFEST_INVALID', `${where} has no "signed" object`, { where });
  const type = (signed as { _type?: unknown })._type;
  if (type !== kind) fail('MANIFEST_WRONG_ROLE', `${where} has _type ${JSON.stringify(type)}, expected "${kind}"`, { where, type });
  const delegated = (signed as { delegations?: { roles?: unknown } }).delegations?.roles;
  if (kind === Kind.Targets && Array.isArray(delegated)) {
    for (const r of delegated as { name?: unknown }[]) {
      if (typeof r?.name === 'string' && ['root', 'timestamp', 'snapshot', 'targets'].includes(r.name)) {
        fail('MANIFEST_DELEGATION_INVALID', `${where}: a delegated role may not be named "${r.name}"`, { where });
      }
    }
  }
  let md: AnyMeta;
  try {
    md = tufModels().Metadata.fromJSON(kind as MetadataKind.Root, data as never) as AnyMeta;
  } catch (cause) {
    fail('MANIFEST_INVALID', `${where} is not well-formed TUF ${kind} metadata: ${(cause as Error).message}`, { where }, cause);
  }
  const s = md.signed;
  if (!Number.isSafeInteger(s.version) || s.version < 1) fail('MANIFEST_INVALID', `${where}: version must be an integer >= 1`, { where });
  if (!Number.isFinite(Date.parse(s.expires))) fail('MANIFEST_INVALID', `${where}: expires ${JSON.stringify(s.expires)} is not a date`, { where });
  const checkRole = (name: string, r: { keyIDs: string[]; threshold: number }): void => {
    if (!Number.isSafeInteger(r.threshold) || r.threshold < 1) fail('MANIFEST_INVALID', `${where}: role ${name} threshold must be an integer >= 1`, { where });
  };
  const checkKeys = (keys: Record<string, Key>): void => {
    for (const [keyid, k] of Object.entries(keys)) {
      const c = checkKeyScheme(keyid, k.keyType, k.scheme);
      if (!c.ok) fail(c.code, `${where}: ${c.message}`, { where, keyid });
    }
  };
  // fromJSON built the class of `kind` (checked against _type above)
  if (kind === Kind.Root) {
    const root = s as Root;
    checkKeys(root.keys);
    for (const [n, r] of Object.entries(root.roles)) checkRole(n, r);
  } else if (kind === Kind.Targets && (s as Targets).delegations) {
    const t = s as Targets & { delegations: NonNullable<Targets['delegations']> };
    checkKeys(t.delegations.keys);
    for (const r of Object.values(t.delegations.roles ?? {})) {
      checkRole(r.name, r);
    }
  }
  return md;
}

/** Threshold check over DISTINCT public keys (one key listed under two ids counts once). */
export function verifyThreshold(roleName: string, role: { keyIDs: string[]; threshold: number } | undefined, keys: Record<string, Key>, md: AnyMeta, where: string): void {
  if (!role) fail('MANIFEST_INVALID', `${where}: the delegating metadata has no role "${roleName}"`, { where });
  if (!Number.isSafeInteger(role.threshold) || role.threshold < 1) fail('MANIFEST_INVALID', `${where}: threshold for ${roleName} must be >= 1`, { where });
  const distinct = new Set<string>();
  for (const keyid of role.keyIDs) {
    const key = keys[keyid];
    if (!key) continue;
    try {
      key.verifySignature(md as never);
      distinct.add(`${key.keyType}:${key.scheme}:${key.keyVal.public ?? ''}`);
    } catch {
      // a bad or missing signature just does not count
    }
  }
  if (distinct.size < role.threshold) {
    fail('MANIFEST_SIGNATURE', `${where} is signed by ${distinct.size} of the ${role.threshold} distinct trusted ${roleName} keys required`, { where, valid: distinct.size, threshold: role.threshold });
  }
}

function isExpired(expires: string, at: number): boolean {
  return at >= Date.parse(expires);
}

/** Percent-encodes a role name for file names and URLs: everything but A-Z a-z 0-9 - . _ ~ (as
 * python's quote(name, '')), so "../x", "/x", "?" or "#" never become paths, queries or fragments. */
export function quoteRole(role: string): string {
  return encodeURIComponent(role).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
}

function roleFile(role: string): string {
  return `${quoteRole(role)}.json`;
}

function verifyMetaFile(meta: MetaFile, bytes: Uint8Array, where: string): void {
  if (meta.length !== undefined && bytes.byteLength !== meta.length) {
    fail('MANIFEST_HASH_MISMATCH', `${where} is ${bytes.byteLength} bytes, the signed metadata says ${meta.length}`, { where });
  }
  for (const [alg, want] of Object.entries(meta.hashes ?? {})) {
    let got: string;
    try {
      got = createHash(alg).update(bytes).digest('hex');
    } catch (cause) {
      fail('MANIFEST_HASH_MISMATCH', `${where}: unsupported hash algorithm ${alg}`, { where }, cause);
    }
    if (got !== want) fail('MANIFEST_HASH_MISMATCH', `${where} ${alg} differs from the signed metadata`, { where, alg });
  }
}

/** URL of a release's payload under a targets base URL. With consistent snapshots (slotflip's
 * repositories) the file is published as `<dir>/<sha256>.<basename>`, immutable and cache-safe. */
export function targetUrl(baseUrl: string, release: Pick<Release, 'targetName' | 'hashes'>, consistentSnapshot = true): string {
  const base = baseUrl.endsWith('/') ? baseUrl : baseUrl + '/';
  const parts = release.targetName.split('/');
  const last = parts.pop()!;
  const sha = release.hashes['sha256'] ?? Object.values(release.hashes)[0];
  const file = consistentSnapshot && sha ? `${sha}.${last}` : last;
  return base + [...parts, file].map(encodeURIComponent).join('/');
}

// ---------------------------------------------------------------- the client

export class TrustClient {
  private readonly dir: string;
  private readonly shippedRootPath: string;
  private readonly source: MetadataSource;
  private readonly now: () => number;
  readonly limits: TrustLimits;
  private readonly useFloor: boolean;

  private root: Metadata<Root> | undefined;
  private snapshot: Metadata<Snapshot> | undefined;
  private topTargets: Metadata<Targets> | undefined;
  private delegated = new Map<string, Metadata<Targets>>();
  private refTime = 0;
  private releaseList: Release[] = [];
  /** documents verified in the running refresh, written at its end ('at-end' mode). */
  private staged: Map<string, Uint8Array> | undefined;
  /** the parsed offline statement of this refresh (null: none on the media). */
  private offline: ReturnType<TrustClient['parseOffline']> | null | undefined;
  /** @tufjs/models, held for this client's life: its metadata objects come from this one copy. */
  protected readonly models = tufModels();

  constructor(options: TrustClientOptions) {
    this.dir = options.trustedDir;
    this.shippedRootPath = options.shippedRootPath;
    this.source = options.source;
    this.now = options.now;
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.useFloor = options.trustedTimeFloor ?? true;
  }

  /** The verified releases of the last successful refresh (empty before one). */
  targets(): Release[] {
    return [...this.releaseList];
  }

  /** The current trusted root (after a refresh), for tools. */
  trustedRoot(): Metadata<Root> | undefined {
    return this.root;
  }

  /** Payload URL for a release of this repository (honours its consistent_snapshot). */
  targetUrl(baseUrl: string, release: Pick<Release, 'targetName' | 'hashes'>): string {
    return targetUrl(baseUrl, release, this.root?.signed.consistentSnapshot ?? true);
  }

  /**
   * Runs the TUF client workflow once: root chain, timestamp, snapshot, targets (and, by default,
   * every delegated role). Documents are persisted atomically only after they verified (by
   * default all at the end, see RefreshOptions.persist), so a rejection (coded MANIFEST_*) leaves
   * the trusted directory as it was, and the next valid metadata is still accepted. Safe to call
   * again after any failure or crash. Fails closed: a broken delegated role fails the whole refresh
   * (a device never picks an older release because a newer one's metadata was withheld).
   */
  async refresh(options: RefreshOptions = {}): Promise<RefreshResult> {
    this.staged = (options.persist ?? 'at-end') === 'at-end' ? new Map() : undefined;
    try {
      const result = await this.runRefresh(options);
      await this.commit();
      return result;
    } catch (e) {
      // nothing from a failed refresh may be used afterwards (findTarget, targets())
      this.snapshot = undefined;
      this.topTargets = undefined;
      this.delegated.clear();
      this.releaseList = [];
      throw e;
    } finally {
      this.staged = undefined;
    }
  }

  private async commit(): Promise<void> {
    const staged = this.staged;
    if (!staged) return;
    this.staged = undefined;
    const order = (f: string): number => (f === 'root.json' ? 0 : f === 'snapshot.json' ? 2 : f === 'timestamp.json' ? 3 : f === FLOOR_FILE ? 4 : 1);
    for (const file of [...staged.keys()].sort((a, b) => order(a) - order(b))) {
      await writeFileAtomic(join(this.dir, file), staged.get(file)!);
    }
  }

  private async runRefresh(options: RefreshOptions): Promise<RefreshResult> {
    const warnings: RefreshResult['warnings'] = [];
    this.snapshot = undefined;
    this.topTargets = undefined;
    this.delegated.clear();
    this.releaseList = [];
    this.offline = undefined;
    await mkdir(this.dir, { recursive: true });

    // 5.1: one reference time for the whole refresh, never behind the persisted floor
    const floor = await this.readFloor();
    this.refTime = Math.max(this.now(), floor);

    // 5.2: trusted root (stored, else shipped)
    let root: Metadata<Root> = await this.loadTrustedRoot(warnings);
    this.root = root;

    // 5.3: root rotation chain
    let rotated = 0;
    let timeReset: number | undefined;
    for (let i = 0; i < this.limits.maxRootRotations; i++) {
      const next: number = root.signed.version + 1;
      const name = `${next}.root.json`;
      const bytes = await this.source.fetch(name, this.limits.rootBytes);
      if (bytes === undefined) break;
      const md: Metadata<Root> = parseMetadata(bytes, Kind.Root, name);
      verifyThreshold('root', root.signed.roles['root'], root.signed.keys, md, `${name} (old root keys)`);
      if (md.signed.version !== next) {
        fail('MANIFEST_ROOT_VERSION', `${name} has version ${md.signed.version}, expected ${next}`, { name });
      }
      verifyThreshold('root', md.signed.roles['root'], md.signed.keys, md, `${name} (its own root keys)`);
      // 5.3.8 before 5.3.10: an expired link may be an intermediate one. With 'at-end' persistence
      // an expired FINAL root is staged and discarded when the expiry check below fails.
      await this.persist('root', bytes);
      root = md;
      this.root = md;
      rotated++;
      const reset = Date.parse(String(md.signed.unrecognizedFields[TIME_RESET_FIELD] ?? ''));
      if (this.useFloor && Number.isFinite(reset)) timeReset = reset;
    }
    let floorBase = floor;
    if (timeReset !== undefined) {
      // recovery: the offline root keys say what the floor should be (it may go back)
      warnings.push({ code: 'MANIFEST_TIME_RESET', message: `root v${root.signed.version} resets the trusted-time floor from ${isoTime(floor)} to ${isoTime(timeReset)}` });
      floorBase = timeReset;
      this.refTime = Math.max(this.now(), timeReset);
    }
    if (isExpired(root.signed.expires, this.refTime)) {
      fail('MANIFEST_EXPIRED', `root v${root.signed.version} expired at ${root.signed.expires} (trusted time ${isoTime(this.refTime)}); the repository must publish a new root`, { role: 'root' });
    }

    // 5.4: timestamp
    const localTs = await this.loadLocal<Timestamp>('timestamp', Kind.Timestamp, (md) => this.verifyTop('timestamp', md));
    const tsBytes = await this.source.fetch('timestamp.json', this.limits.timestampBytes);
    if (tsBytes === undefined) fail('MANIFEST_NOT_FOUND', 'timestamp.json is not published by the repository', { name: 'timestamp.json' });
    const ts = parseMetadata(tsBytes, Kind.Timestamp, 'timestamp.json');
    this.verifyTop('timestamp', ts);
    let updated = true;
    let finalTs = ts;
    if (localTs) {
      if (ts.signed.version < localTs.signed.version) {
        fail('MANIFEST_ROLLBACK', `timestamp.json v${ts.signed.version} is older than the trusted v${localTs.signed.version}`, { role: 'timestamp' });
      }
      if (ts.signed.snapshotMeta.version < localTs.signed.snapshotMeta.version) {
        fail('MANIFEST_ROLLBACK', `timestamp.json lists snapshot v${ts.signed.snapshotMeta.version}, older than the trusted v${localTs.signed.snapshotMeta.version}`, { role: 'snapshot' });
      }
      if (ts.signed.version === localTs.signed.version) {
        finalTs = localTs;
        updated = false;
      }
    }
    if (isExpired(finalTs.signed.expires, this.refTime) && !(await this.offlineVouches('timestamp', finalTs.signed.version, tsBytes))) {
      fail('MANIFEST_EXPIRED', `timestamp v${finalTs.signed.version} expired at ${finalTs.signed.expires} (trusted time ${isoTime(this.refTime)}); the repository's timestamp timer must re-sign it`, { role: 'timestamp' });
    }
    if (updated) await this.persist('timestamp', tsBytes);

    // 5.5: snapshot
    const snapMeta = finalTs.signed.snapshotMeta;
    const localSnap = await this.loadLocal<Snapshot>('snapshot', Kind.Snapshot, (md) => this.verifyTop('snapshot', md));
    let snapshot: Metadata<Snapshot>;
    if (localSnap && localSnap.signed.version === snapMeta.version && (!isExpired(localSnap.signed.expires, this.refTime) || (this.source.local && await this.offlineVouches('snapshot', localSnap.signed.version, await this.storedBytes('snapshot'))))) {
      snapshot = localSnap;
    } else {
      const name = root.signed.consistentSnapshot ? `${snapMeta.version}.snapshot.json` : 'snapshot.json';
      const bytes = await this.source.fetch(name, Math.min(snapMeta.length ?? Infinity, this.limits.snapshotBytes));
      if (bytes === undefined) fail('MANIFEST_NOT_FOUND', `${name} is listed by timestamp.json but not published`, { name });
      verifyMetaFile(snapMeta, bytes, name);
      const snap = parseMetadata(bytes, Kind.Snapshot, name);
      this.verifyTop('snapshot', snap);
      if (snap.signed.version !== snapMeta.version) {
        fail('MANIFEST_VERSION_MISMATCH', `${name} has version ${snap.signed.version}, timestamp.json lists ${snapMeta.version}`, { name });
      }
      if (localSnap) {
        for (const [file, info] of Object.entries(localSnap.signed.meta)) {
          const cur = snap.signed.meta[file];
          if (!cur) fail('MANIFEST_ROLLBACK', `${name} no longer lists ${file}, which the trusted snapshot lists`, { name, file });
          if (cur.version < info.version) fail('MANIFEST_ROLLBACK', `${name} lists ${file} v${cur.version}, older than the trusted v${info.version}`, { name, file });
        }
      }
      if (isExpired(snap.signed.expires, this.refTime) && !(await this.offlineVouches('snapshot', snap.signed.version, bytes))) {
        fail('MANIFEST_EXPIRED', `${name} expired at ${snap.signed.expires} (trusted time ${isoTime(this.refTime)})`, { role: 'snapshot' });
      }
      await this.persist('snapshot', bytes);
      snapshot = snap;
    }
    this.snapshot = snapshot;

    // 5.6: top-level targets
    const targets = await this.loadTargetsRole('targets', 'root');

    const invalidTargets: RefreshResult['invalidTargets'] = [];
    if (options.delegations ?? true) {
      this.releaseList = await this.collectReleases(invalidTargets);
    } else {
      this.releaseList = this.releasesOf(targets, invalidTargets);
    }

    await this.raiseFloor(floorBase, finalTs, [root, snapshot, targets, finalTs], timeReset !== undefined);
    return {
      rootVersion: root.signed.version,
      timestampVersion: finalTs.signed.version,
      snapshotVersion: snapshot.signed.version,
      targetsVersion: targets.signed.version,
      rootsRotated: rotated,
      updated,
      trustedTime: isoTime(this.refTime),
      releases: [...this.releaseList],
      invalidTargets,
      warnings,
    };
  }

  /**
   * Spec 5.6.7: the authoritative TargetFile for `path` (pre-order depth-first over delegations,
   * terminating roles honoured, at most maxDelegations roles visited), or undefined. Loads and
   * persists delegated roles as needed. Requires a successful refresh first.
   */
  async findTarget(path: string): Promise<TargetFile | undefined> {
    if (!this.topTargets) fail('MANIFEST_NOT_FOUND', 'findTarget before a successful refresh');
    const stack: { role: string; parent: string }[] = [{ role: 'targets', parent: 'root' }];
    const visited = new Set<string>();
    while (stack.length > 0) {
      const { role, parent } = stack.pop()!;
      if (visited.has(role)) continue;
      // the top-level targets plus maxDelegations delegated roles; stopping quietly here could miss
      // the release the device is looking for, so running out is a coded failure (fail closed)
      if (visited.size > this.limits.maxDelegations) this.delegationLimit(role, parent, path);
      const md = await this.loadTargetsRole(role, parent);
      const hit = md.signed.targets[path];
      if (hit) return hit;
      visited.add(role);
      const d = md.signed.delegations;
      if (!d) continue;
      const children: { role: string; parent: string }[] = [];
      for (const { role: child, terminating } of d.rolesForTarget(path)) {
        children.push({ role: child, parent: role });
        if (terminating) {
          stack.length = 0;
          break;
        }
      }
      stack.push(...children.reverse());
    }
    return undefined;
  }

  // ---------------------------------------------------------------- internals

  private delegationLimit(role: string, parent: string, path?: string): never {
    fail(
      'MANIFEST_DELEGATION_LIMIT',
      `delegation limit reached: ${this.limits.maxDelegations} delegated roles visited${path === undefined ? '' : ` looking up ${path}`}, role "${role}" (delegated by "${parent}") not visited; flatten the repository's delegations`,
      { role, parent, limit: this.limits.maxDelegations, ...(path === undefined ? {} : { path }) },
    );
  }

  private verifyTop(role: 'timestamp' | 'snapshot' | 'targets', md: AnyMeta): void {
    const root = this.root!.signed;
    verifyThreshold(role, root.roles[role], root.keys, md, `${role} metadata`);
  }

  private async readFloor(): Promise<number> {
    if (!this.useFloor) return 0;
    try {
      const raw = await readFileCapped(join(this.dir, FLOOR_FILE), 4096);
      const t = Date.parse((JSON.parse(raw.toString('utf8')) as { floor?: string }).floor ?? '');
      return Number.isFinite(t) ? t : 0;
    } catch {
      return 0; // absent or damaged: the clock and the verified timestamps still bound it
    }
  }

  /**
   * The trusted-time rule (manifests/README.md "Trusted time"). The floor moves to the verified
   * timestamp's signed issue time, but never past
   * - the earliest expiry in the chain just verified (root, snapshot, targets, timestamp), minus
   *   1 ms: raising the floor can never by itself expire the metadata the device trusts now; and
   * - when the local clock is plausible (no more than FLOOR_MAX_AHEAD_MS behind the old floor),
   *   the clock + FLOOR_MAX_AHEAD_MS: an online key cannot carry the floor away from a device
   *   whose clock works, not even step by step.
   * A device whose clock is implausible (RTC reset) follows the chain bound only; a root-signed
   * TIME_RESET_FIELD is the way back for a floor that is wrong anyway.
   */
  private async raiseFloor(old: number, ts: Metadata<Timestamp>, chain: AnyMeta[], force: boolean): Promise<void> {
    if (!this.useFloor) return;
    let next = this.refTime;
    const issued = Date.parse(String(ts.signed.unrecognizedFields[ISSUED_FIELD] ?? ''));
    if (Number.isFinite(issued)) {
      const now = this.now();
      const ceiling = Math.min(...chain.map((md) => Date.parse(md.signed.expires) - 1));
      const clockCap = now + FLOOR_MAX_AHEAD_MS >= old ? now + FLOOR_MAX_AHEAD_MS : Infinity;
      next = Math.max(next, Math.min(issued, ceiling, clockCap));
    }
    if (force || next - old >= FLOOR_WRITE_STEP_MS) {
      const bytes = Buffer.from(JSON.stringify({ floor: isoTime(next) }) + '\n');
      if (this.staged) this.staged.set(FLOOR_FILE, bytes);
      else await writeFileAtomic(join(this.dir, FLOOR_FILE), bytes);
    }
  }

  /** The stored bytes of a top-level role (verified earlier by loadLocal). */
  private async storedBytes(role: string): Promise<Uint8Array> {
    return new Uint8Array(await readFileCapped(join(this.dir, roleFile(role)), this.limits.snapshotBytes));
  }

  /**
   * True when local media carry an offline freshness statement (OFFLINE_FILE) that a threshold of
   * the trusted root's *targets* keys signed, that has not itself expired at the trusted time, and
   * that names exactly these bytes of `role` (version and sha256). Only a `local` source is asked.
   * A statement that is present but wrong refuses the refresh with its own code.
   */
  private async offlineVouches(role: 'timestamp' | 'snapshot', version: number, bytes: Uint8Array): Promise<boolean> {
    if (!this.source.local) return false;
    if (this.offline === undefined) {
      const raw = await this.source.fetch(OFFLINE_FILE, 64 * 1024);
      this.offline = raw === undefined ? null : this.parseOffline(raw);
    }
    const o = this.offline;
    if (o === null) return false;
    if (isExpired(o.expires, this.refTime)) {
      fail('MANIFEST_OFFLINE_EXPIRED', `the offline bundle expired at ${o.expires} (trusted time ${isoTime(this.refTime)}); export a new bundle with \`slotflip release export\``, { expires: o.expires });
    }
    const want = o[role];
    const sha = createHash('sha256').update(bytes).digest('hex');
    if (want.version !== version || want.sha256 !== sha) {
      fail('MANIFEST_OFFLINE_INVALID', `${OFFLINE_FILE} vouches for ${role} v${want.version}, the bundle holds v${version} (or other bytes); export the bundle again`, { role });
    }
    return true;
  }

  private parseOffline(raw: Uint8Array): { expires: string; timestamp: { version: number; sha256: string }; snapshot: { version: number; sha256: string } } {
    const bad = (why: string): never => fail('MANIFEST_OFFLINE_INVALID', `${OFFLINE_FILE}: ${why}`, { file: OFFLINE_FILE });
    let doc: { signed?: Record<string, unknown>; signatures?: unknown };
    try {
      doc = JSON.parse(utf8.decode(raw)) as typeof doc;
    } catch {
      return bad('not valid UTF-8 JSON');
    }
    const signed = doc?.signed;
    if (typeof signed !== 'object' || signed === null || signed['_type'] !== OFFLINE_TYPE) return bad(`"signed._type" is not "${OFFLINE_TYPE}"`);
    const ref = (x: unknown): { version: number; sha256: string } => {
      const r = x as { version?: unknown; sha256?: unknown } | undefined;
      if (!r || !Number.isSafeInteger(r.version) || typeof r.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(r.sha256)) return bad('timestamp/snapshot must each carry an integer version and a sha256');
      return { version: r.version as number, sha256: r.sha256 };
    };
    const expires = signed['expires'];
    if (typeof expires !== 'string' || !Number.isFinite(Date.parse(expires))) return bad('"expires" is not a date');
    const out = { expires, timestamp: ref(signed['timestamp']), snapshot: ref(signed['snapshot']) };
    if (!Array.isArray(doc.signatures)) return bad('"signatures" is not a list');
    const signatures: Record<string, { keyID: string; sig: string }> = {};
    for (const sg of doc.signatures as { keyid?: unknown; sig?: unknown }[]) {
      if (typeof sg?.keyid !== 'string' || typeof sg.sig !== 'string') return bad('a signature lacks keyid or sig');
      if (signatures[sg.keyid]) return bad('duplicate signature key id');
      signatures[sg.keyid] = { keyID: sg.keyid, sig: sg.sig };
    }
    const root = this.root!.signed;
    // the longer-lived, offline-kept targets role vouches; same threshold as for targets metadata
    const md = { signatures, signed: { toJSON: () => signed } } as unknown as AnyMeta;
    try {
      verifyThreshold('targets', root.roles['targets'], root.keys, md, OFFLINE_FILE);
    } catch (e) {
      return fail('MANIFEST_OFFLINE_INVALID', `${OFFLINE_FILE} is not signed by a threshold of the trusted targets keys`, { file: OFFLINE_FILE }, e);
    }
    return out;
  }

  private async persist(role: string, bytes: Uint8Array): Promise<void> {
    if (this.staged) this.staged.set(roleFile(role), bytes);
    else await writeFileAtomic(join(this.dir, roleFile(role)), bytes);
  }

  private async readRootFile(path: string, where: string): Promise<{ md: Metadata<Root>; bytes: Uint8Array } | 'absent' | SlotflipError> {
    try {
      const bytes = new Uint8Array(await readFileCapped(path, this.limits.rootBytes));
      const md = parseMetadata(bytes, Kind.Root, where);
      verifyThreshold('root', md.signed.roles['root'], md.signed.keys, md, where);
      return { md, bytes };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 'absent';
      if (isCoded(e, 'HAL_FILE_TOO_LARGE')) return tooLarge(where, this.limits.rootBytes);
      return isCoded(e) ? (e as SlotflipError) : new SlotflipError('MANIFEST_NO_TRUSTED_ROOT', `${where}: unreadable`, { cause: e });
    }
  }

  private async loadTrustedRoot(warnings: RefreshResult['warnings']): Promise<Metadata<Root>> {
    const chosen = await this.chooseRoot();
    if (chosen.repair) {
      if (chosen.storedError) {
        warnings.push({ code: 'MANIFEST_ROOT_DAMAGED', message: `stored root.json was rejected (${chosen.storedError.code}); using the shipped root v${chosen.md.signed.version} and repairing the stored copy` });
      }
      await this.persist('root', chosen.repair);
    }
    return chosen.md;
  }

  /** The root trusted now: the stored one, else (absent, damaged, older) the shipped one, whose bytes
   * then come back as `repair`. Reads only. MANIFEST_NO_TRUSTED_ROOT when neither is usable. */
  private async chooseRoot(): Promise<{ md: Metadata<Root>; repair?: Uint8Array; storedError?: SlotflipError }> {
    const storedPath = join(this.dir, 'root.json');
    const stored = await this.readRootFile(storedPath, 'stored root.json');
    const sameFile = storedPath === this.shippedRootPath;
    const shipped = sameFile ? stored : await this.readRootFile(this.shippedRootPath, `shipped root ${this.shippedRootPath}`);
    const ok = (x: typeof stored): x is { md: Metadata<Root>; bytes: Uint8Array } => typeof x === 'object' && !(x instanceof Error);
    if (ok(stored) && (!ok(shipped) || stored.md.signed.version >= shipped.md.signed.version)) return { md: stored.md };
    if (ok(shipped)) return { md: shipped.md, repair: shipped.bytes, ...(stored instanceof Error ? { storedError: stored } : {}) };
    const why = shipped instanceof Error ? `${shipped.code}: ${shipped.message}` : 'missing';
    fail('MANIFEST_NO_TRUSTED_ROOT', `no usable trusted root: the shipped root ${this.shippedRootPath} is ${why}; reinstall the OS image or restore its root.json`, { shippedRootPath: this.shippedRootPath });
  }

  /**
   * What the device trusts right now, without a refresh and without writing anything: the trusted
   * root (stored, else shipped) and the trusted time (max of the clock and the persisted floor).
   * For statements signed outside the TUF workflow (fleet commands: manifests/command.ts), which
   * must never change the trusted directory, not even when they are refused.
   */
  async currentTrust(): Promise<{ root: Metadata<Root>; trustedTime: number }> {
    const { md } = await this.chooseRoot();
    return { root: md, trustedTime: Math.max(this.now(), await this.readFloor()) };
  }

  /** A locally stored document that still verifies under the current trust; undefined otherwise. */
  private async loadLocal<S extends Timestamp | Snapshot | Targets>(role: string, kind: MetadataKind, check: (md: Metadata<S>) => void): Promise<Metadata<S> | undefined> {
    const cap = kind === Kind.Timestamp ? this.limits.timestampBytes : kind === Kind.Snapshot ? this.limits.snapshotBytes : this.limits.targetsBytes;
    try {
      const bytes = new Uint8Array(await readFileCapped(join(this.dir, roleFile(role)), cap));
      const md = parseMetadata(bytes, kind as MetadataKind.Targets, `stored ${roleFile(role)}`) as unknown as Metadata<S>;
      check(md);
      return md;
    } catch {
      return undefined; // absent, damaged or signed by rotated-out keys: fetch a fresh one
    }
  }

  private delegatorOf(parent: string): { keys: Record<string, Key>; role: (name: string) => { keyIDs: string[]; threshold: number } | undefined } {
    if (parent === 'root') {
      const r = this.root!.signed;
      return { keys: r.keys, role: (n) => r.roles[n] };
    }
    const p = parent === 'targets' ? this.topTargets : this.delegated.get(parent);
    const d = p?.signed.delegations;
    if (!d) fail('MANIFEST_DELEGATION_INVALID', `role ${parent} delegates nothing`, { parent });
    return {
      keys: d.keys,
      role: (n) => d.roles?.[n] ?? (d.succinctRoles?.isDelegatedRole(n) ? d.succinctRoles : undefined),
    };
  }

  private async loadTargetsRole(role: string, parent: string): Promise<Metadata<Targets>> {
    if (role === 'targets' && this.topTargets) return this.topTargets;
    const cached = this.delegated.get(role);
    if (cached) return cached;
    // snapshot lists roles by their raw name; files and URLs use the quoted one
    const file = roleFile(role);
    const meta = this.snapshot!.signed.meta[`${role}.json`];
    if (!meta) fail(role === 'targets' ? 'MANIFEST_INVALID' : 'MANIFEST_DELEGATION_INVALID', `snapshot v${this.snapshot!.signed.version} does not list ${role}.json`, { role });
    const delegator = this.delegatorOf(parent);
    const check = (md: Metadata<Targets>, where: string): void => verifyThreshold(role, delegator.role(role), delegator.keys, md, where);
    const local = await this.loadLocal<Targets>(role, Kind.Targets, (md) => check(md, `stored ${file}`));
    let md: Metadata<Targets>;
    if (local && local.signed.version === meta.version && !isExpired(local.signed.expires, this.refTime)) {
      md = local;
    } else {
      const name = this.root!.signed.consistentSnapshot ? `${meta.version}.${file}` : file;
      const bytes = await this.source.fetch(name, Math.min(meta.length ?? Infinity, this.limits.targetsBytes));
      if (bytes === undefined) fail('MANIFEST_NOT_FOUND', `${name} is listed by the snapshot but not published`, { name });
      verifyMetaFile(meta, bytes, name);
      md = parseMetadata(bytes, Kind.Targets, name);
      check(md, name);
      if (md.signed.version !== meta.version) {
        fail('MANIFEST_VERSION_MISMATCH', `${name} has version ${md.signed.version}, the snapshot lists ${meta.version}`, { name });
      }
      if (isExpired(md.signed.expires, this.refTime)) {
        fail('MANIFEST_EXPIRED', `${name} expired at ${md.signed.expires} (trusted time ${isoTime(this.refTime)}); the targets key holder must re-sign it`, { role });
      }
      await this.persist(role, bytes);
    }
    if (role === 'targets') this.topTargets = md;
    else this.delegated.set(role, md);
    return md;
  }

  private releasesOf(md: Metadata<Targets>, invalid: RefreshResult['invalidTargets']): Release[] {
    const out: Release[] = [];
    for (const t of Object.values(md.signed.targets)) {
      const r = releaseFromTarget(t);
      if (r.kind === 'release') {
        const idx = indexTargetOf(r.release);
        out.push(idx === undefined ? r.release : withIndexTarget(r.release, md.signed.targets[idx]));
      } else if (r.kind === 'invalid') invalid.push({ targetName: t.path, code: 'MANIFEST_CUSTOM_INVALID', message: r.message });
    }
    return out;
  }

  /** Every target path named by any reachable role, each resolved through findTarget so delegation
   * paths, order and terminating roles decide which signed entry is authoritative. */
  private async collectReleases(invalid: RefreshResult['invalidTargets']): Promise<Release[]> {
    const paths = new Set<string>();
    const stack = ['targets'];
    const parents = new Map<string, string>([['targets', 'root']]);
    const seen = new Set<string>();
    while (stack.length > 0) {
      const role = stack.pop()!;
      if (seen.has(role)) continue;
      if (seen.size >= this.limits.maxDelegations + 1) this.delegationLimit(role, parents.get(role)!);
      seen.add(role);
      const md = await this.loadTargetsRole(role, parents.get(role)!);
      for (const p of Object.keys(md.signed.targets)) paths.add(p);
      const d = md.signed.delegations;
      const children = [...Object.values(d?.roles ?? {}).map((r) => r.name), ...(d?.succinctRoles ? [...d.succinctRoles.getRoles()].filter((n) => this.snapshot!.signed.meta[`${n}.json`]) : [])];
      for (const child of children) {
        if (!parents.has(child)) parents.set(child, role);
        stack.push(child);
      }
    }
    const out: Release[] = [];
    for (const p of [...paths].sort()) {
      const t = await this.findTarget(p);
      if (!t) continue;
      const r = releaseFromTarget(t);
      if (r.kind === 'release') {
        // format 2: the chunk index's signed length and hashes, resolved like any target (a name
        // outside every role's paths stays unresolved: selection refuses MANIFEST_INDEX_NOT_FOUND)
        const idx = indexTargetOf(r.release);
        out.push(idx === undefined ? r.release : withIndexTarget(r.release, checkTargetName(idx).ok ? await this.findTarget(idx) : undefined));
      } else if (r.kind === 'invalid') invalid.push({ targetName: p, code: 'MANIFEST_CUSTOM_INVALID', message: r.message });
    }
    return out;
  }
}

/** Checks downloaded target bytes against the signed length and every listed hash. */
export function verifyTargetBytes(target: { length: number; hashes: Record<string, string>; path?: string; targetName?: string }, bytes: Uint8Array): void {
  const where = target.path ?? target.targetName ?? 'target';
  if (bytes.byteLength !== target.length) fail('MANIFEST_TARGET_MISMATCH', `${where} is ${bytes.byteLength} bytes, the signed metadata says ${target.length}`, { where });
  for (const [alg, want] of Object.entries(target.hashes)) {
    let got: string;
    try {
      got = createHash(alg).update(bytes).digest('hex');
    } catch (cause) {
      fail('MANIFEST_TARGET_MISMATCH', `${where}: unsupported hash algorithm ${alg}`, { where }, cause);
    }
    if (got !== want) fail('MANIFEST_TARGET_MISMATCH', `${where}: ${alg} differs from the signed metadata`, { where, alg });
  }
}

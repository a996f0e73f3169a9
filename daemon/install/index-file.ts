/**
 * Format v2's chunk index on the device: a selected Release names an index target (its signed length
 * and SHA-256 in the targets metadata); this module turns the Release into the PayloadInfo (chunk
 * list included) that preflight, the installer and the read-back take. Format v1 releases carry the
 * list inline and pass through unchanged.
 *
 * - Fetched from the same places as the payload (the configured mirrors, a repository directory, an
 *   offline bundle, `slotflip install SOURCE`), through the installer's own source (TLS, headers,
 *   Range-free GET), mirror after mirror. The read is capped at the signed length (a longer file is
 *   refused, never buffered); then length and SHA-256 are compared with the signed metadata
 *   (MANIFEST_INDEX_MISMATCH), the structure judged (manifests/chunk-index.ts: MANIFEST_INDEX_INVALID,
 *   MANIFEST_INDEX_PAYLOAD_MISMATCH). No mirror answering: MANIFEST_INDEX_FETCH (retryable).
 * - Cached in the state directory (`<stateDir>/install-index/<sha256>.index`, written atomically)
 *   so a resumed attempt (after a reboot or a power cut) needs no second fetch; the cached bytes are
 *   verified against the signed hash again before every use (a damaged cache is dropped and fetched
 *   anew). `settle` removes the cache when no attempt is in flight any more.
 *
 * The agent resolves the index in its `check` step, before the inactive slot is marked bad: every
 * failure here leaves the device untouched.
 *
 * Trade-off: the whole index is held in memory as parsed JSON (~190 bytes per chunk on the wire,
 * a few hundred in memory: ~0.5 MiB for a 4 GiB image in 4 MiB chunks); the installer needs the
 * whole list anyway.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { SlotflipError, isCoded } from '../../hal/errors.js';
import { readFileCapped, writeFileAtomic } from '../../hal/atomic-file.js';
import { readFull } from '../../hal/read-full.js';
import { parseIndexFile } from '../../manifests/chunk-index.js';
import type { PayloadInfo, Release, TargetRef } from '../../manifests/types.js';
import { toSource, type InstallSourceSpec } from './installer.js';
import type { OpenedStream, PayloadSource } from './source.js';

const SHA256 = /^[0-9a-f]{64}$/;

export interface IndexResolverOptions {
  /** where a target's bytes come from: the payload's locations (mirrors, a file) for that target. */
  locate: (target: TargetRef) => InstallSourceSpec;
  /** the cache directory (`<stateDir>/install-index`); created on first use. */
  cacheDir: string;
  /** one fetch from one location, ms (default 60 000). */
  timeoutMs?: number;
  log?: Logger;
}

/** The cache directory under a state directory. */
export function indexCacheDir(stateDir: string): string {
  return join(stateDir, 'install-index');
}

export class IndexResolver {
  constructor(private readonly o: IndexResolverOptions) {}

  /**
   * The PayloadInfo of `release`: format 1 as signed; format 2 from the verified index (cache
   * first, else fetched and cached). Throws MANIFEST_INDEX_* (see the module header); never touches
   * a slot or the boot environment.
   */
  async payloadOf(release: Release): Promise<PayloadInfo> {
    return (await this.indexOf(release)).payload;
  }

  /**
   * Like `payloadOf`, plus the index file's optional `delta` section as found (authenticated with
   * the file; its owner, manifests/delta.ts parseDeltaSection, judges its shape). Format 1 has none.
   * `store: false`: a fetched file is not cached (a release other than the one being installed: the
   * cache holds the in-flight release's index only, and storing drops the others).
   */
  async indexOf(release: Release, o: { store?: boolean } = {}): Promise<{ payload: PayloadInfo; delta?: unknown }> {
    if (release.custom.slotflip !== 2) return { payload: release.custom.payload };
    const ref = release.index;
    if (!ref) {
      throw new SlotflipError('MANIFEST_INDEX_NOT_FOUND', `release ${release.targetName}: its chunk index ${release.custom.payload.index.target} is not a target of the signed metadata; republish the release`, { details: { target: release.custom.payload.index.target } });
    }
    const sha = ref.hashes['sha256'];
    if (typeof sha !== 'string' || !SHA256.test(sha)) {
      throw new SlotflipError('MANIFEST_INDEX_INVALID', `chunk index ${ref.targetName}: no sha256 in the signed metadata; republish the release`, { details: { target: ref.targetName } });
    }
    const cached = await this.fromCache(ref, sha);
    const bytes = cached ?? (await this.fetch(ref, sha));
    const parsed = parseIndexFile(bytes, release);
    if (!parsed.ok) {
      if (cached) await rm(this.cachePath(sha), { force: true }).catch(() => undefined);
      throw new SlotflipError(parsed.code, parsed.message, { details: { target: ref.targetName } });
    }
    if (!cached && o.store !== false) await this.store(sha, bytes);
    return { payload: parsed.payload, ...(parsed.file.delta !== undefined ? { delta: parsed.file.delta } : {}) };
  }

  /**
   * Drops cached indexes other than `inFlight`'s (all of them when no attempt is in flight).
   * Idempotent; never throws (a leftover file is harmless: it is verified before use).
   */
  async settle(inFlight: Release | undefined): Promise<void> {
    const keep = inFlight?.index?.hashes['sha256'];
    const names = await readdir(this.o.cacheDir).catch(() => [] as string[]);
    for (const n of names) {
      if (keep !== undefined && n === `${keep}.index`) continue;
      await rm(join(this.o.cacheDir, n), { force: true }).catch(() => undefined);
    }
  }

  private cachePath(sha: string): string {
    return join(this.o.cacheDir, `${sha}.index`);
  }

  /** The cached bytes when present AND still matching the signed length and hash, else undefined. */
  private async fromCache(ref: TargetRef, sha: string): Promise<Buffer | undefined> {
    let bytes: Buffer;
    try {
      bytes = await readFileCapped(this.cachePath(sha), ref.length);
    } catch {
      return undefined; // absent, unreadable or too long: fetch it again
    }
    if (bytes.length === ref.length && createHash('sha256').update(bytes).digest('hex') === sha) return bytes;
    this.o.log?.warn({ target: ref.targetName, path: this.cachePath(sha) }, 'cached chunk index does not match the signed hash: fetching it again');
    await rm(this.cachePath(sha), { force: true }).catch(() => undefined);
    return undefined;
  }

  private async store(sha: string, bytes: Uint8Array): Promise<void> {
    try {
      await mkdir(this.o.cacheDir, { recursive: true });
      await writeFileAtomic(this.cachePath(sha), bytes);
      await this.settleExcept(sha);
    } catch (err) {
      // a full state partition costs a second fetch on resume, nothing more
      this.o.log?.warn({ err: { code: (err as { code?: unknown }).code, message: (err as Error).message } }, 'could not cache the chunk index');
    }
  }

  private async settleExcept(sha: string): Promise<void> {
    for (const n of await readdir(this.o.cacheDir).catch(() => [] as string[])) {
      if (n !== `${sha}.index`) await rm(join(this.o.cacheDir, n), { force: true }).catch(() => undefined);
    }
  }

  /** Mirror after mirror: the first whose bytes match the signed length and hash. */
  private async fetch(ref: TargetRef, sha: string): Promise<Buffer> {
    // a configuration without payload locations fails here with the payload's own code
    // (DAEMON_NO_PAYLOAD_URL, INSTALL_SOURCE_OPEN): the same answer the payload would get
    const source: PayloadSource = toSource(this.o.locate(ref), this.o.timeoutMs);
    const failures: { where: string; code: string; message: string }[] = [];
    let mismatch = false;
    for (let i = 0; i < source.count; i++) {
      const ac = new AbortController();
      const timer = setTimeout(() => ac.abort(), this.o.timeoutMs ?? 60_000);
      let opened: OpenedStream | undefined;
      try {
        // the signed length is the cap: the source refuses a file of another total length
        opened = await source.open(i, 0, ref.length, ac.signal);
        const bytes = await readCapped(opened, ref.length, ac.signal);
        const got = createHash('sha256').update(bytes).digest('hex');
        if (bytes.length !== ref.length || got !== sha) {
          mismatch = true;
          failures.push({ where: opened.where, code: 'MANIFEST_INDEX_MISMATCH', message: `${bytes.length} bytes with SHA-256 ${got}` });
          continue;
        }
        return bytes;
      } catch (e) {
        const code = isCoded(e) ? e.code : 'INSTALL_NETWORK';
        if (code === 'INSTALL_PAYLOAD_TRUNCATED' || code === 'INSTALL_PAYLOAD_OVERSIZED' || code === 'MANIFEST_INDEX_MISMATCH') mismatch = true;
        failures.push({ where: (e as { details?: { url?: string; path?: string } }).details?.url ?? (e as { details?: { path?: string } }).details?.path ?? `location ${i}`, code, message: (e as Error).message });
      } finally {
        clearTimeout(timer);
        opened?.close();
      }
    }
    const list = failures.map((f) => `${f.where}: ${f.code}`).join('; ');
    if (mismatch) {
      throw new SlotflipError('MANIFEST_INDEX_MISMATCH', `chunk index ${ref.targetName} as served differs from the signed metadata (${ref.length} bytes, SHA-256 ${sha}): ${list}; a mirror holds other bytes, republish or fix the mirror; nothing was changed on this device`, { details: { target: ref.targetName, failures } });
    }
    throw new SlotflipError('MANIFEST_INDEX_FETCH', `chunk index ${ref.targetName} could not be fetched: ${list}; check the mirrors (payloadBaseUrls) and the network; nothing was changed on this device`, { retryable: true, details: { target: ref.targetName, failures } });
  }
}

/** Reads an opened stream or descriptor to its end, refusing more than `cap` bytes. */
async function readCapped(s: OpenedStream, cap: number, signal: AbortSignal): Promise<Buffer> {
  const tooLong = (): SlotflipError => new SlotflipError('MANIFEST_INDEX_MISMATCH', `${s.where}: longer than the signed ${cap} bytes`, { details: { where: s.where, length: cap } });
  if (s.fd !== undefined) {
    const out = Buffer.alloc(cap + 1);
    const got = await readFull(s.fd, out, 0, out.length, s.start); // cap + 1: one byte more is too long
    if (got > cap) throw tooLong();
    return out.subarray(0, got);
  }
  const stream = s.stream!;
  const parts: Buffer[] = [];
  let got = 0;
  await new Promise<void>((resolve, reject) => {
    const onAbort = (): void => done(new SlotflipError('INSTALL_STALLED', `${s.where}: the chunk index did not arrive in time`, { retryable: true, details: { where: s.where } }));
    signal.addEventListener('abort', onAbort, { once: true });
    function done(e?: Error): void {
      signal.removeEventListener('abort', onAbort);
      stream.removeAllListeners('data');
      if (e) reject(e);
      else resolve();
    }
    stream.on('data', (b: Buffer) => {
      got += b.length;
      if (got > cap) {
        done(tooLong());
        return;
      }
      // a copy: a plain-HTTP body's pieces are views of the connection's ONE reused read buffer
      // (source.ts), overwritten by the next read (an index over 64 KiB came out garbled)
      parts.push(Buffer.from(b));
    });
    stream.once('end', () => done());
    stream.once('error', (cause) => done(new SlotflipError('INSTALL_NETWORK', `${s.where}: transfer failed while reading the chunk index`, { cause, retryable: true, details: { where: s.where } })));
  });
  return Buffer.concat(parts);
}

/**
 * Retained TUF metadata from the broker, held in bounded memory, and the broker's metadata problems.
 *
 * Trade-off: the broker is a fast path, never the source of truth (the HTTP repository is), so this
 * store may refuse or drop anything: a copy it does not hold is simply fetched over HTTP. What it
 * holds is what the trust client asks for: `timestamp.json`, the `<N>.root.json` chain (the newest
 * `maxRoots`), and the newest `<N>.<role>.json` of every other role (snapshot, targets, delegated
 * roles), never more than `maxTotalBytes` together. Bytes that are not JSON are refused on arrival,
 * and bytes the trust client rejected are remembered by hash (`distrust`), so a stray retained
 * message can neither break a check nor come back after a reconnect; a republished (different)
 * copy is accepted at once.
 *
 * INVARIANTS: `view` (the map the trust layer reads) holds, per file, the v2 copy when there is one,
 * else the v1 copy; the sum of held copies' sizes never exceeds `maxTotalBytes`.
 */
import { createHash } from 'node:crypto';
import type { MetaLayout } from '../manifests/meta-topics.js';

export interface MetaProblem {
  code: string;
  /** file name (`2.root.json`) and topic it came on, when known. */
  file?: string;
  topic?: string;
  message: string;
  /** ms since epoch, first seen. */
  at: number;
}

/** `changed` false: the same bytes were already held (a second matching subscription, a resend). */
export type AcceptResult = { ok: true; changed: boolean } | { ok: false; code: string; message: string };

interface Held {
  bytes: Uint8Array;
  layout: MetaLayout;
  topic: string;
}

const ROLE_FILE = /^(?:([1-9][0-9]{0,9})\.)?(.+)\.json$/;

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export class RetainedMeta {
  /** file → bytes: what the trust layer's memorySource reads. */
  readonly view: Map<string, Uint8Array>;
  private readonly held = new Map<string, Partial<Record<MetaLayout, Held>>>();
  private readonly distrusted = new Set<string>();
  private total = 0;

  constructor(view: Map<string, Uint8Array>, private readonly limits: { maxTotalBytes: number; maxRoots: number }) {
    this.view = view;
  }

  /** Bytes held, all copies. */
  get bytesHeld(): number {
    return this.total;
  }

  /** The topic a held file came on (for problem reports). */
  topicOf(file: string): string | undefined {
    const h = this.held.get(file);
    return (h?.v2 ?? h?.v1)?.topic;
  }

  /** Takes a retained copy (or refuses it, saying why). An empty payload deletes. */
  accept(file: string, layout: MetaLayout, topic: string, bytes: Uint8Array): AcceptResult {
    const prev = this.held.get(file)?.[layout];
    if (bytes.byteLength === 0) {
      this.remove(file, layout);
      return { ok: true, changed: prev !== undefined };
    }
    if (prev && Buffer.from(prev.bytes).equals(bytes)) return { ok: true, changed: false };
    const m = ROLE_FILE.exec(file);
    if (!m) return { ok: false, code: 'DAEMON_MQTT_META_UNWANTED', message: `${topic}: not a TUF metadata file name; ignored` };
    const version = m[1] ? Number(m[1]) : undefined;
    const role = m[2]!;
    if (file !== 'timestamp.json' && version === undefined) return { ok: false, code: 'DAEMON_MQTT_META_UNWANTED', message: `${topic}: slotflip devices read only timestamp.json and versioned <N>.<role>.json files; ignored` };
    if (this.distrusted.has(sha(bytes))) return { ok: false, code: 'DAEMON_MQTT_META_DISTRUSTED', message: `${topic}: the same bytes already failed verification; ignored until republished` };
    try {
      const v: unknown = JSON.parse(Buffer.from(bytes).toString('utf8'));
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    } catch {
      return { ok: false, code: 'MANIFEST_PARSE', message: `${topic}: retained metadata is not a JSON object; ignored (the repository over HTTP is used instead)` };
    }
    // keep only what the trust client can ask for: the newest version of a role (roots: the newest few)
    if (version !== undefined) {
      const same = [...this.held.keys()].filter((f) => f !== file && ROLE_FILE.exec(f)?.[2] === role && ROLE_FILE.exec(f)?.[1] !== undefined);
      const versions = same.map((f) => Number(ROLE_FILE.exec(f)![1]));
      if (role === 'root') {
        const newer = versions.filter((x) => x > version).length;
        if (newer >= this.limits.maxRoots) return { ok: false, code: 'DAEMON_MQTT_META_UNWANTED', message: `${topic}: an old root; ignored` };
      } else if (versions.some((x) => x > version)) {
        return { ok: false, code: 'DAEMON_MQTT_META_UNWANTED', message: `${topic}: an older ${role} than one already held; ignored` };
      }
      if (role !== 'root') for (const f of same) this.removeAll(f);
    }
    const after = this.total - (prev?.bytes.byteLength ?? 0) + bytes.byteLength;
    if (after > this.limits.maxTotalBytes) {
      return { ok: false, code: 'DAEMON_MQTT_META_CAP', message: `${topic}: holding it would exceed the ${this.limits.maxTotalBytes} bytes kept from the broker (broker.maxRetainedMetadataBytes); it is fetched over HTTP instead` };
    }
    this.total = after;
    this.held.set(file, { ...this.held.get(file), [layout]: { bytes, layout, topic } });
    if (role === 'root') this.trimRoots();
    this.refresh(file);
    return { ok: true, changed: true };
  }

  /** Forgets a copy the trust client rejected and refuses the same bytes from now on. */
  distrust(file: string): string | undefined {
    const h = this.held.get(file);
    if (!h) return undefined;
    const topic = (h.v2 ?? h.v1)?.topic;
    for (const c of [h.v1, h.v2]) if (c) this.distrusted.add(sha(c.bytes));
    // bounded: the set only grows by rejected copies, each costing 64 hex characters
    if (this.distrusted.size > 1024) this.distrusted.delete(this.distrusted.values().next().value!);
    this.removeAll(file);
    return topic;
  }

  private trimRoots(): void {
    const roots = [...this.held.keys()].filter((f) => /^\d+\.root\.json$/.test(f)).sort((a, b) => parseInt(b) - parseInt(a));
    for (const f of roots.slice(this.limits.maxRoots)) this.removeAll(f);
  }

  private remove(file: string, layout: MetaLayout): void {
    const h = this.held.get(file);
    const c = h?.[layout];
    if (!h || !c) return;
    this.total -= c.bytes.byteLength;
    delete h[layout];
    if (!h.v1 && !h.v2) this.held.delete(file);
    this.refresh(file);
  }

  private removeAll(file: string): void {
    this.remove(file, 'v1');
    this.remove(file, 'v2');
  }

  private refresh(file: string): void {
    const h = this.held.get(file);
    const c = h?.v2 ?? h?.v1;
    if (c) this.view.set(file, c.bytes);
    else this.view.delete(file);
  }
}

/** Problems seen on the broker, each logged once per distinct cause (code + file + message). */
export class ProblemLog {
  private readonly seen = new Map<string, MetaProblem>();

  /** Records a problem; true when it is new (log it), false when already known. */
  add(p: MetaProblem): boolean {
    const key = `${p.code}\u0000${p.topic ?? p.file ?? ''}\u0000${p.message}`;
    if (this.seen.has(key)) return false;
    this.seen.set(key, p);
    if (this.seen.size > 32) this.seen.delete(this.seen.keys().next().value!);
    return true;
  }

  /** Forgets the problems of `file` (a good copy arrived or verified). */
  clearFile(file: string): void {
    for (const [k, p] of this.seen) if (p.file === file) this.seen.delete(k);
  }

  list(): MetaProblem[] {
    return [...this.seen.values()];
  }
}

/**
 * Persisted at-least-once event outbox.
 *
 * Every event the daemon reports ("installing", "installed", "committed", "rolled back") is appended
 * here first and only then delivered; the transport acks it after the broker's PUBACK. Sequence
 * numbers are monotonic across restarts and reboots (the next number is persisted with the entries),
 * so consumers order by `seq` and drop duplicates.
 *
 * Trade-off: the whole outbox is one small JSON snapshot replaced atomically (temp → fsync → rename
 * → fsync dir) on every change. That costs a rewrite per event, but events are rare (a handful per
 * update) and the bound keeps the file small; in exchange there is no journal to compact or repair.
 *
 * Bounded: at most `maxEntries` entries. Delivered entries are kept as local history and are the first
 * to go; only when every entry is undelivered is the oldest undelivered one dropped, and that is
 * counted (`droppedUndelivered`) and reported with the next delivered event, never silent.
 *
 * INVARIANTS: `nextSeq` > every seq ever handed out; entries are sorted by seq; all mutations are
 * serialised and persisted before the promise resolves.
 */
import { join } from 'node:path';
import { mkdir, rename } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { writeFileAtomic, readFileCapped } from '../hal/atomic-file.js';
import { SlotflipError, isCoded } from '../hal/errors.js';

/** An event: JSON-serialisable, with a `type` (past-tense fact, e.g. `UpdateCommitted`). */
export interface OutboxEvent {
  type: string;
  [key: string]: unknown;
}

export interface OutboxEntry {
  seq: number;
  event: OutboxEvent;
  delivered: boolean;
}

export interface OutboxSnapshot {
  schema: 1;
  nextSeq: number;
  entries: OutboxEntry[];
  droppedDelivered: number;
  droppedUndelivered: number;
}

/** Storage behind the outbox. One shared contract suite (test/contract/daemon-outbox-store.test.ts) runs against every implementation. */
export interface OutboxStore {
  /** The last snapshot saved, or undefined when none was ever saved. Never returns a torn snapshot. */
  load(): Promise<OutboxSnapshot | undefined>;
  /** Replaces the stored snapshot. Atomic: after a crash `load()` returns the old or the new one. Resolves once durable. */
  save(snapshot: OutboxSnapshot): Promise<void>;
}

/** In-memory store (tests, brokerless dry runs). Survives re-opening the Outbox, not the process. */
export class MemoryOutboxStore implements OutboxStore {
  private data: string | undefined;
  async load(): Promise<OutboxSnapshot | undefined> {
    return this.data === undefined ? undefined : (JSON.parse(this.data) as OutboxSnapshot);
  }
  async save(snapshot: OutboxSnapshot): Promise<void> {
    this.data = JSON.stringify(snapshot);
  }
}

const FILE = 'outbox.json';
const MAX_FILE_BYTES = 64 << 20;

/**
 * File store: `<dir>/outbox.json` = `{"sha256": HEX, "body": "<snapshot JSON>"}`, replaced atomically.
 * A file that fails its checksum or does not parse (disk corruption) is renamed aside to
 * `outbox.json.corrupt-<ms>` and `load()` throws DAEMON_OUTBOX_CORRUPT with the quarantined path;
 * `Outbox` then starts afresh from `corruptSeqFloor` and reports it.
 */
export class FileOutboxStore implements OutboxStore {
  readonly path: string;
  constructor(readonly dir: string, private readonly now: () => number = Date.now) {
    this.path = join(dir, FILE);
  }
  async load(): Promise<OutboxSnapshot | undefined> {
    let raw: Buffer;
    try {
      raw = await readFileCapped(this.path, MAX_FILE_BYTES);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new SlotflipError('DAEMON_OUTBOX_READ', `outbox: cannot read ${this.path}; check permissions and size`, { cause: e, details: { path: this.path } });
    }
    try {
      const wrapped = JSON.parse(raw.toString('utf8')) as { sha256?: unknown; body?: unknown };
      if (typeof wrapped.body !== 'string' || typeof wrapped.sha256 !== 'string') throw new Error('missing fields');
      if (createHash('sha256').update(wrapped.body).digest('hex') !== wrapped.sha256) throw new Error('checksum mismatch');
      const snap = JSON.parse(wrapped.body) as OutboxSnapshot;
      if (snap.schema !== 1 || !Array.isArray(snap.entries) || !Number.isSafeInteger(snap.nextSeq)) throw new Error('unknown schema');
      return snap;
    } catch (cause) {
      const aside = `${this.path}.corrupt-${this.now()}`;
      await rename(this.path, aside).catch(() => undefined);
      throw new SlotflipError('DAEMON_OUTBOX_CORRUPT', `outbox: ${this.path} is corrupt; moved to ${aside} and starting a new outbox`, { cause, details: { path: this.path, quarantined: aside } });
    }
  }
  async save(snapshot: OutboxSnapshot): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const body = JSON.stringify(snapshot);
    await writeFileAtomic(this.path, JSON.stringify({ sha256: createHash('sha256').update(body).digest('hex'), body }));
  }
}

export interface OutboxOptions {
  /** directory for the default file store, or an explicit store. */
  dir?: string;
  store?: OutboxStore;
  /** bound on kept entries (delivered + undelivered); default 1000. */
  maxEntries?: number;
  /** clock, for the corrupt-file recovery seq floor. */
  now?: () => number;
}

export interface OutboxStats {
  nextSeq: number;
  pending: number;
  delivered: number;
  droppedDelivered: number;
  droppedUndelivered: number;
  /** set when the stored outbox was corrupt and a new one was started. */
  recoveredFromCorruption: boolean;
}

export class Outbox {
  private readonly store: OutboxStore;
  private readonly maxEntries: number;
  private readonly now: () => number;
  private snap: OutboxSnapshot | undefined;
  private recovered = false;
  private chain: Promise<unknown> = Promise.resolve();
  private readonly listeners = new Set<(entry: OutboxEntry) => void>();

  constructor(opts: OutboxOptions | string) {
    const o = typeof opts === 'string' ? { dir: opts } : opts;
    this.now = o.now ?? Date.now;
    if (o.store) this.store = o.store;
    else if (o.dir) this.store = new FileOutboxStore(o.dir, this.now);
    else throw new TypeError('Outbox: give `dir` or `store`');
    this.maxEntries = o.maxEntries ?? 1000;
    if (!Number.isInteger(this.maxEntries) || this.maxEntries < 1) throw new RangeError('Outbox: maxEntries must be a positive integer');
  }

  /** Serialises `fn` after every earlier mutation, loading the snapshot first. */
  private locked<T>(fn: (s: OutboxSnapshot) => Promise<T> | T): Promise<T> {
    const run = this.chain.then(async () => fn(await this.ensureLoaded()));
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async ensureLoaded(): Promise<OutboxSnapshot> {
    if (this.snap) return this.snap;
    let loaded: OutboxSnapshot | undefined;
    try {
      loaded = await this.store.load();
    } catch (e) {
      if (!isCoded(e, 'DAEMON_OUTBOX_CORRUPT')) throw e;
      // seqs must stay monotonic though the old counter is lost: restart above any plausible old value.
      this.recovered = true;
      loaded = { schema: 1, nextSeq: corruptSeqFloor(this.now()), entries: [], droppedDelivered: 0, droppedUndelivered: 0 };
    }
    this.snap = loaded ?? { schema: 1, nextSeq: 1, entries: [], droppedDelivered: 0, droppedUndelivered: 0 };
    return this.snap;
  }

  /**
   * Appends an event and persists it before resolving with its sequence number. Not idempotent: two
   * calls are two events. A crash before the promise resolves may or may not keep the event; after
   * it resolves the event survives any crash. May evict (see module comment).
   */
  append(event: OutboxEvent): Promise<number> {
    if (typeof event?.type !== 'string' || event.type.length === 0) return Promise.reject(new TypeError('Outbox.append: event.type must be a non-empty string'));
    const copy = JSON.parse(JSON.stringify(event)) as OutboxEvent;
    return this.locked(async (s) => {
      const next: OutboxSnapshot = { ...s, entries: [...s.entries] };
      const seq = next.nextSeq;
      next.nextSeq = seq + 1;
      next.entries.push({ seq, event: copy, delivered: false });
      while (next.entries.length > this.maxEntries) {
        const i = next.entries.findIndex((e) => e.delivered);
        if (i >= 0) {
          next.entries.splice(i, 1);
          next.droppedDelivered += 1;
        } else {
          next.entries.shift();
          next.droppedUndelivered += 1;
        }
      }
      await this.store.save(next);
      this.snap = next;
      const entry = next.entries[next.entries.length - 1]!;
      for (const l of this.listeners) l(entry);
      return seq;
    });
  }

  /** Undelivered entries, oldest first (a copy). Pure read. */
  pending(): Promise<OutboxEntry[]> {
    return this.locked((s) => s.entries.filter((e) => !e.delivered).map((e) => structuredClone(e)));
  }

  /** Every kept entry, oldest first, delivered or not (local history). */
  entries(): Promise<OutboxEntry[]> {
    return this.locked((s) => s.entries.map((e) => structuredClone(e)));
  }

  /**
   * Marks `seq` (or every seq in a list, with one durable write) delivered. Idempotent; acking an
   * unknown or evicted seq is a no-op. A crash before it resolves means those events are delivered
   * again (at least once).
   */
  ack(seq: number | readonly number[]): Promise<void> {
    const wanted = new Set(typeof seq === 'number' ? [seq] : seq);
    return this.locked(async (s) => {
      if (!s.entries.some((e) => wanted.has(e.seq) && !e.delivered)) return;
      const next: OutboxSnapshot = { ...s, entries: s.entries.map((e) => (wanted.has(e.seq) && !e.delivered ? { ...e, delivered: true } : e)) };
      await this.store.save(next);
      this.snap = next;
    });
  }

  stats(): Promise<OutboxStats> {
    return this.locked((s) => ({
      nextSeq: s.nextSeq,
      pending: s.entries.filter((e) => !e.delivered).length,
      delivered: s.entries.filter((e) => e.delivered).length,
      droppedDelivered: s.droppedDelivered,
      droppedUndelivered: s.droppedUndelivered,
      recoveredFromCorruption: this.recovered,
    }));
  }

  /** Calls `fn` after each durable append (the transport wakes its delivery loop). Returns an unsubscribe. */
  onAppend(fn: (entry: OutboxEntry) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }
}

/**
 * Seq floor after losing a corrupt outbox: milliseconds since the epoch × 1000. Any earlier outbox
 * would have needed over 1000 events per millisecond of its life to exceed it.
 */
export function corruptSeqFloor(nowMs: number): number {
  return Math.floor(nowMs) * 1000;
}

/**
 * The persisted update record: the machine's whole state in one versioned JSON file
 * (`<stateDir>/update-record.json`), replaced atomically (temp → fsync → rename → fsync dir) before
 * each phase's work. A crash at any point leaves either the previous record or the new one.
 *
 * Trade-off: one file, rewritten whole, instead of an append log: the record is small (bounded
 * history) and a single rename is the simplest thing a power cut cannot tear.
 *
 * A record that cannot be parsed or has an unknown `schema` is NOT silently replaced: `load` throws
 * DAEMON_STATE_CORRUPT (with the path), because guessing would risk touching the committed slot.
 *
 * Schema: still 1. `pendingReports` was added as an optional field: a record without it (older
 * daemon) loads as "nothing pending", and an older daemon (e.g. after rolling back to an older
 * image) reading a newer record ignores it instead of refusing the whole record.
 *
 * Also here: the state directory's lock (`<stateDir>/lock`, see `acquireStateLock`): one process
 * at a time may drive the machine on this device.
 */
import { randomBytes } from 'node:crypto';
import { link, open, readdir, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../hal/atomic-file.js';
import { fsyncDir } from '../hal/atomic-file.js';
import { SlotflipError } from '../hal/errors.js';
import { initialState, PHASES, type MachineState } from './machine.js';

export const RECORD_SCHEMA = 1;
export const RECORD_FILE = 'update-record.json';
const MAX_RECORD_BYTES = 16 * 1024 * 1024;

export interface UpdateRecord extends MachineState {
  schema: typeof RECORD_SCHEMA;
  /** when this record was written (ms since epoch, from the injected clock). */
  savedAt: number;
  /** number of saves ever made (monotonic; diagnostics). */
  saves: number;
}

export interface StateStore {
  /** The saved record, or a fresh idle one when none exists yet. Read-only. Throws
   * DAEMON_STATE_CORRUPT when the file exists but is not a valid record. */
  load(): Promise<UpdateRecord>;
  /** Replaces the record atomically; durable when it resolves. Idempotent for equal input. */
  save(state: MachineState): Promise<UpdateRecord>;
}

export interface FileStateStoreOptions {
  stateDir: string;
  now: () => number;
  /** committed securityVersion for a device without a record (e.g. from the factory image). */
  initialSecurityVersion?: number;
  /** seam for power-cut tests; defaults to hal's writeFileAtomic. */
  writeFileAtomic?: (path: string, data: string) => Promise<void>;
}

export class FileStateStore implements StateStore {
  readonly path: string;
  private saves = 0;

  constructor(private readonly options: FileStateStoreOptions) {
    this.path = join(options.stateDir, RECORD_FILE);
  }

  async load(): Promise<UpdateRecord> {
    let text: string;
    try {
      const buf = await readFile(this.path);
      if (buf.length > MAX_RECORD_BYTES) throw new SlotflipError('DAEMON_STATE_CORRUPT', `${this.path} is ${buf.length} bytes; a record is never that large. Inspect it, then move it away to start fresh`, { details: { path: this.path } });
      text = buf.toString('utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        return { schema: RECORD_SCHEMA, savedAt: 0, saves: 0, ...initialState(this.options.initialSecurityVersion ?? 0) };
      }
      throw e;
    }
    const record = parseRecord(text, this.path);
    this.saves = Math.max(this.saves, record.saves);
    return record;
  }

  async save(state: MachineState): Promise<UpdateRecord> {
    const record: UpdateRecord = { ...state, schema: RECORD_SCHEMA, savedAt: this.options.now(), saves: ++this.saves };
    const write = this.options.writeFileAtomic ?? writeFileAtomic;
    await write(this.path, JSON.stringify(record) + '\n');
    return record;
  }
}

/** Parses and checks a record's shape; throws DAEMON_STATE_CORRUPT with the path and what is wrong. */
export function parseRecord(text: string, path: string): UpdateRecord {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (cause) {
    throw new SlotflipError('DAEMON_STATE_CORRUPT', `${path} is not valid JSON; inspect it, then move it away to start fresh`, { cause, details: { path } });
  }
  const bad = (what: string): never => {
    throw new SlotflipError('DAEMON_STATE_CORRUPT', `${path}: ${what}; inspect it, then move it away to start fresh`, { details: { path } });
  };
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return bad('not an object');
  const r = v as Partial<UpdateRecord>;
  if (r.schema !== RECORD_SCHEMA) return bad(`unknown schema ${JSON.stringify(r.schema)} (this daemon reads schema ${RECORD_SCHEMA})`);
  if (typeof r.phase !== 'string' || !PHASES.includes(r.phase)) return bad(`unknown phase ${JSON.stringify(r.phase)}`);
  if (r.phase !== 'idle' && r.phase !== 'checking' && (typeof r.attempt !== 'object' || r.attempt === null)) return bad(`phase ${r.phase} without an attempt`);
  if (!Number.isInteger(r.committedSecurityVersion) || (r.committedSecurityVersion as number) < 0) return bad('committedSecurityVersion is not a non-negative integer');
  if (!Number.isInteger(r.transitions) || !Number.isInteger(r.attempts)) return bad('transitions/attempts are not integers');
  if (!Array.isArray(r.history) || !Array.isArray(r.rolledBack) || typeof r.installed !== 'object' || r.installed === null) return bad('history, rolledBack or installed missing');
  // optional (added without a schema change: older records lack it, older daemons ignore it)
  if (r.pendingReports !== undefined && !Array.isArray(r.pendingReports)) return bad('pendingReports is not a list');
  return r as UpdateRecord;
}

/** An in-memory store for tests and the model; `saved` is what a power cut would leave. */
export class MemoryStateStore implements StateStore {
  saved: UpdateRecord;
  constructor(initial?: MachineState) {
    this.saved = { schema: RECORD_SCHEMA, savedAt: 0, saves: 0, ...(initial ?? initialState()) };
  }
  async load(): Promise<UpdateRecord> {
    return structuredClone(this.saved);
  }
  async save(state: MachineState): Promise<UpdateRecord> {
    this.saved = structuredClone({ ...state, schema: RECORD_SCHEMA, savedAt: 0, saves: this.saved.saves + 1 });
    return structuredClone(this.saved);
  }
}

// ---------------------------------------------------------------------------------------------

export const LOCK_FILE = 'lock';

interface LockContent {
  pid: number;
  /** kernel boot id when taken: a lock from an earlier boot is stale whatever its pid says. */
  bootId?: string;
  /** random: tells this lock apart from another one with the same pid (pid reuse). */
  nonce: string;
  at: number;
  /** when the holding process started (ms since epoch, wall clock): tells this very process apart
   * from a dead predecessor whose pid it reuses (containers restart daemons with the same pid). */
  started?: number;
}

export interface StateLockOptions {
  stateDir: string;
  now?: () => number;
  /** this process's pid (tests); default process.pid. */
  pid?: number;
  /** is `pid` a running process? default: `process.kill(pid, 0)`. */
  isAlive?: (pid: number) => boolean;
  /** current boot id; default reads /proc/sys/kernel/random/boot_id (undefined when unreadable). */
  bootId?: () => Promise<string | undefined>;
}

/** Releases the lock (removes the file if it is still ours). Idempotent; never throws. */
export type ReleaseLock = () => Promise<void>;

async function readBootId(): Promise<string | undefined> {
  try {
    return (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim() || undefined;
  } catch {
    return undefined;
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function parseLock(text: string): LockContent | undefined {
  try {
    const v = JSON.parse(text) as Partial<LockContent>;
    return Number.isSafeInteger(v.pid) && typeof v.nonce === 'string' ? (v as LockContent) : undefined;
  } catch {
    return undefined;
  }
}

/** Creates `path` (O_EXCL: EEXIST when it exists) holding `text`, synced. */
async function createSynced(path: string, text: string): Promise<void> {
  const fh = await open(path, 'wx', 0o644);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close().catch(() => undefined);
  }
}

/** Removes what a crash left while taking or taking over the lock (`lock.new-PID-…`,
 * `lock.stale-PID-…` of a process no longer running). Best effort. */
async function removeDeadLockFiles(stateDir: string, alive: (pid: number) => boolean): Promise<void> {
  const names = await readdir(stateDir).catch(() => [] as string[]);
  for (const name of names) {
    const m = /^lock\.(?:new|stale)-(\d+)-[0-9a-f]+$/.exec(name);
    if (m && Number(m[1]) !== process.pid && !alive(Number(m[1]))) await unlink(join(stateDir, name)).catch(() => undefined);
  }
}

/**
 * Takes the exclusive lock `<stateDir>/lock` (written whole, then linked into place: holding this pid,
 * the boot id and a nonce). When it exists and its holder is alive (same boot, pid running), refuses with DAEMON_LOCKED
 * naming the pid. A stale lock (holder dead, earlier boot, or unreadable content) is taken over
 * atomically: it is renamed aside (one rename: only one contender can move it), checked to be the
 * very lock judged stale (otherwise put back with link(), which never overwrites), and the O_EXCL
 * create is retried. A crash while holding the lock leaves a stale lock the next process takes over.
 */
export async function acquireStateLock(o: StateLockOptions): Promise<ReleaseLock> {
  const path = join(o.stateDir, LOCK_FILE);
  const pid = o.pid ?? process.pid;
  const alive = o.isAlive ?? pidAlive;
  const bootId = await (o.bootId ?? readBootId)();
  const started = Math.round(Date.now() - process.uptime() * 1000);
  const mine: LockContent = { pid, ...(bootId ? { bootId } : {}), nonce: randomBytes(8).toString('hex'), at: (o.now ?? Date.now)(), started };
  const text = JSON.stringify(mine) + '\n';
  for (let tries = 0; tries < 3; tries++) {
    // written whole to a file of its own, then linked into place (link never overwrites): a lock
    // at `path` is always complete, so one that does not parse was left by a crash or a damaged
    // filesystem, never one being written right now, and is taken over at once
    const fresh = `${path}.new-${pid}-${mine.nonce}`;
    let taken = false;
    try {
      await createSynced(fresh, text);
      try {
        await link(fresh, path);
      } catch (e) {
        // a filesystem without hard links (vfat): create the lock in place as before (O_EXCL)
        if (!['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS'].includes((e as NodeJS.ErrnoException).code ?? '')) throw e;
        await createSynced(path, text);
      }
      taken = true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
        await unlink(fresh).catch(() => undefined);
        throw new SlotflipError('DAEMON_LOCK_FAILED', `cannot create the state lock ${path}: ${(e as Error).message}; check that the state directory exists, is writable and has free space`, { cause: e, retryable: true, details: { path } });
      }
    } finally {
      await unlink(fresh).catch(() => undefined);
    }
    if (taken) {
      await fsyncDir(o.stateDir).catch(() => undefined);
      await removeDeadLockFiles(o.stateDir, alive);
      let released = false;
      return async () => {
        if (released) return;
        released = true;
        try {
          const now = parseLock(await readFile(path, 'utf8'));
          if (now?.nonce === mine.nonce) await unlink(path);
        } catch {
          // already gone: nothing to release
        }
      };
    }
    let seen: string;
    try {
      seen = await readFile(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; // released meanwhile: retry
      throw e;
    }
    const holder = parseLock(seen);
    if (!holder) {
      // empty or torn (a lock is linked into place whole, so this is a crash's or an older
      // slotflip's leftover, never one being written now): stale, taken over below
    } else if (
      (holder.bootId === undefined || bootId === undefined || holder.bootId === bootId) &&
      // our own pid: live only when it is this very process (another agent in it holds the lock)
      (holder.pid === pid ? holder.started !== undefined && Math.abs(holder.started - started) < 2000 : alive(holder.pid))
    ) {
      throw new SlotflipError('DAEMON_LOCKED', `${path} is held by process ${holder.pid} (another slotflip update or daemon is running on this device); wait for it to finish or stop it (e.g. \`systemctl stop slotflip\`), then retry. Read-only commands such as \`slotflip status\` work meanwhile`, {
        retryable: true,
        details: { path, pid: holder.pid },
      });
    }
    // stale: move it aside, then make sure it is the one we judged stale
    const aside = `${path}.stale-${pid}-${mine.nonce}`;
    try {
      await rename(path, aside);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw e;
    }
    const moved = await readFile(aside, 'utf8').catch(() => '');
    if (moved !== seen) {
      // we moved a fresh lock someone took in between: give it back (link never overwrites)
      await link(aside, path).catch(() => undefined);
      await unlink(aside).catch(() => undefined);
      continue;
    }
    await unlink(aside).catch(() => undefined);
  }
  throw new SlotflipError('DAEMON_LOCKED', `${path}: could not take the state lock (another process keeps taking it); retry`, { retryable: true, details: { path } });
}

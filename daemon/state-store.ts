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
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../hal/atomic-file.js';
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

/**
 * Data migrations that roll back with the slot (issue 18, 3). On the first boot of a trial slot,
 * before its health checks, the configured migration runs after a snapshot (a copy) of the data
 * paths it touches; a failed migration is a failed health check. When the attempt ends anything but
 * `succeeded` (rolled back, failed) and the device runs the old slot again, the snapshot is copied
 * back and deleted; a commit deletes it.
 *
 * Trade-off: a plain copy, bounded by `maxBytes`, instead of file-system snapshots (btrfs, LVM):
 * it works on any data partition and is simple to make power-cut safe, at the cost of copying the
 * touched paths once per update. Migrations that touch a large database should name only its dir.
 *
 * Power cuts (every step idempotent; the state is one `meta.json` written atomically):
 * - during the snapshot: `meta.json` says `complete` only after the copy is fsynced and renamed
 *   into place; an incomplete one is discarded and taken again (the data is not touched yet).
 * - during the migration: the next start finds a complete snapshot and no `migrated`: it restores
 *   the snapshot (undoing the half migration) and runs the migration again from the same data.
 * - during a restore: `meta.json` stays until the restore finished; the next start restores again.
 *
 * Today the migration's argv comes from the device config (`migration.argv`): emulated boards
 * cannot read a path inside the new image. A release's `custom.migration` (an absolute path inside
 * the signed image) is validated by `isImagePath` for when it can.
 */
import { execFile } from 'node:child_process';
import { cp, lstat, mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { dirname, isAbsolute, join, normalize } from 'node:path';
import { fsyncDir, writeFileAtomic } from '../hal/atomic-file.js';
import type { HealthFailure, HistoryEntry } from './machine.js';
import { syncTree } from './factory-reset.js';

export interface MigrationConfig {
  /** the migration command (argv, never a shell string); runs with SLOTFLIP_DATA_DIR set. */
  argv: string[];
  /** paths relative to the data dir it may change: snapshotted before, restored on rollback. */
  paths: string[];
  /** the snapshot's size budget; a larger one fails the attempt's health check. */
  maxBytes: number;
  timeoutSeconds: number;
}

interface Meta {
  attempt: number;
  releaseId: string;
  /** the trial slot the migration ran on: booting any other slot means the attempt is over. */
  target: string;
  complete: boolean;
  /** the paths that existed at snapshot time (the others are removed by a restore). */
  present: string[];
  migrated?: boolean;
}

/** `custom.migration` of a release: an absolute path inside the image without `..` (never a shell string). */
export function isImagePath(p: unknown): p is string {
  return typeof p === 'string' && p.length > 1 && p.length <= 1024 && isAbsolute(p) && !p.split('/').includes('..') && normalize(p) === p && !/[\0\n]/.test(p);
}

export type Exec = (argv: string[], env: NodeJS.ProcessEnv, timeoutMs: number) => Promise<{ code: number; output: string }>;

const realExec: Exec = (argv, env, timeoutMs) =>
  new Promise((resolve) => {
    execFile(argv[0]!, argv.slice(1), { env, timeout: timeoutMs, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      const e = err as (Error & { code?: number | string; signal?: string }) | null;
      const output = `${stdout}${stderr}`.slice(-4096);
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : 127) : 0, output: e && !output ? e.message : output });
    });
  });

export class Migrations {
  private readonly meta: string;
  private readonly copy: string;
  constructor(private readonly o: { dataDir: string; snapshotDir: string; config?: MigrationConfig; exec?: Exec; env?: NodeJS.ProcessEnv; onStep?: (step: 'snapshot' | 'migrate' | 'restore') => void }) {
    this.meta = join(o.snapshotDir, 'meta.json');
    this.copy = join(o.snapshotDir, 'data');
  }

  private async readMeta(): Promise<Meta | undefined> {
    try {
      return JSON.parse(await readFile(this.meta, 'utf8')) as Meta;
    } catch {
      return undefined;
    }
  }

  /**
   * First boot of the trial (before its health checks): snapshot, then migrate. Idempotent: a
   * migration that already succeeded for this attempt is not run again; one that was cut is undone
   * from the snapshot and run again. Returns the failure to report as a failed check, or undefined.
   */
  async beforeChecks(attempt: number, releaseId: string, target: string): Promise<HealthFailure | undefined> {
    const c = this.o.config;
    if (!c) return undefined;
    let m = await this.readMeta();
    if (m && m.attempt === attempt && m.complete && m.migrated) return undefined;
    if (m && m.attempt === attempt && m.complete) {
      // a cut during the migration: start it again from the data as it was
      await this.restoreFrom(m);
    } else {
      this.o.onStep?.('snapshot');
      const size = await sizeOf(c.paths.map((p) => join(this.o.dataDir, p)));
      if (size > c.maxBytes) return { name: 'migration', output: `DAEMON_MIGRATION_SNAPSHOT_TOO_LARGE: the paths ${c.paths.join(', ')} under ${this.o.dataDir} hold ${size} bytes, more than migration.maxBytes (${c.maxBytes}); raise it or name fewer paths`, required: true };
      await rm(this.o.snapshotDir, { recursive: true, force: true });
      const tmp = `${this.o.snapshotDir}.tmp`;
      await rm(tmp, { recursive: true, force: true });
      await mkdir(join(tmp, 'data'), { recursive: true });
      const present: string[] = [];
      for (const p of c.paths) {
        const from = join(this.o.dataDir, p);
        if (!(await lstat(from).then(() => true, () => false))) continue;
        await cp(from, join(tmp, 'data', p), { recursive: true, preserveTimestamps: true, verbatimSymlinks: true });
        present.push(p);
      }
      await syncTree(join(tmp, 'data'));
      m = { attempt, releaseId, target, complete: true, present };
      await writeFileAtomic(join(tmp, 'meta.json'), JSON.stringify(m) + '\n');
      // rename only when complete: a snapshot dir that exists is a whole one
      await rename(tmp, this.o.snapshotDir);
      await fsyncDir(join(this.o.snapshotDir, '..'));
    }
    this.o.onStep?.('migrate');
    const r = await (this.o.exec ?? realExec)(c.argv, { ...this.o.env, SLOTFLIP_DATA_DIR: this.o.dataDir }, c.timeoutSeconds * 1000);
    if (r.code !== 0) return { name: 'migration', output: `migration ${c.argv.join(' ')} exited ${r.code}: ${r.output}`.trim(), required: true };
    await writeFileAtomic(this.meta, JSON.stringify({ ...m, migrated: true }) + '\n');
    return undefined;
  }

  /**
   * Restores or drops the snapshot once its attempt is decided, from facts readable early at boot
   * (before the update record is resumed, so `slotflip migration settle` can run before the apps):
   * - a slot other than the migration's target booted: the trial is over without that slot
   *   (rolled back, or the bootloader fell back): restore, then delete: the old slot runs on the
   *   data it knows;
   * - the target booted and the record's history says the attempt succeeded: delete;
   * - otherwise (the trial is still being judged) keep it. Idempotent; returns what was done.
   */
  async settle(bootedSlot: string, history: HistoryEntry[]): Promise<'restored' | 'dropped' | undefined> {
    await rm(`${this.o.snapshotDir}.tmp`, { recursive: true, force: true });
    const m = await this.readMeta();
    if (!m) return undefined;
    const restore = bootedSlot !== m.target || history.some((e) => e.attempt === m.attempt && e.outcome !== 'succeeded');
    const drop = history.some((e) => e.attempt === m.attempt && e.outcome === 'succeeded');
    if (!restore && !drop) return undefined;
    if (restore && m.complete) {
      this.o.onStep?.('restore');
      await this.restoreFrom(m);
    }
    // deleting the snapshot last: a cut before this restores again (idempotent)
    await rm(this.o.snapshotDir, { recursive: true, force: true });
    return restore ? 'restored' : 'dropped';
  }

  private async restoreFrom(m: Meta): Promise<void> {
    for (const p of this.o.config?.paths ?? m.present) {
      const live = join(this.o.dataDir, p);
      await rm(live, { recursive: true, force: true });
      if (m.present.includes(p)) await cp(join(this.copy, p), live, { recursive: true, force: true, preserveTimestamps: true, verbatimSymlinks: true });
      // on disk before the snapshot may go (settle deletes it right after)
      const st = await lstat(live).catch(() => undefined);
      if (st?.isDirectory()) await syncTree(live);
      else if (st?.isFile()) await syncFile(live);
      // the parent may not exist (a path that was absent, under a dir the migration never made)
      await fsyncDir(dirname(live)).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'ENOENT') throw e; });
    }
  }
}

async function syncFile(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function sizeOf(paths: string[]): Promise<number> {
  let total = 0;
  for (const p of paths) {
    const st = await lstat(p).catch(() => undefined);
    if (!st) continue;
    total += st.isFile() ? st.size : 0;
    if (st.isDirectory()) total += await sizeOf((await readdir(p)).map((n) => join(p, n)));
  }
  return total;
}

/**
 * Data migrations that roll back with the slot (issue 18). On the first boot of a trial slot,
 * before its health checks, the trial's migration runs after a snapshot of the data paths it may
 * change; a failed or timed-out migration is a failed health check. When the attempt ends anything
 * but `succeeded` (rolled back, failed) and the device runs the old slot again, the snapshot is
 * copied back and deleted; a commit deletes it.
 *
 * Which migration: the release's own `custom.migration` (manifests/migration.ts: an executable
 * inside the signed image, run from the new slot's root `imageRoot`, `/` on a device) when it names
 * one; otherwise the device config's `migration` (argv), if any. One plan shape serves both
 * (`MigrationPlan`); the snapshot records its own paths, so the old slot restores a release's
 * migration without knowing the release.
 *
 * Trade-off: a file copy (a reflink where the file system has them: FICLONE falls back to a copy),
 * bounded by a byte budget, instead of file-system snapshots (btrfs, LVM): it works on any data
 * partition and is simple to make power-cut safe, at the cost of copying the touched paths once per
 * update. Migrations that touch a large database should name only its dir.
 *
 * Power cuts (every step idempotent; the state is one `meta.json` written atomically):
 * - during the snapshot: the copy is built in `<snapshotDir>.tmp`, fsynced, and renamed into place
 *   with its `meta.json`: a snapshot dir that exists is whole; a torn `.tmp` is discarded and the
 *   snapshot taken again (the data is not touched yet).
 * - during the migration: the next start finds a complete snapshot and no `migrated`: it restores
 *   the snapshot (undoing the half migration) and runs the migration again from the same data.
 * - during a restore: `meta.json` stays until the restore finished and is on disk; the next start
 *   restores again (each path is emptied and copied whole; a directory keeps its inode, since it
 *   may be a bind mount's source).
 */
import { execFile } from 'node:child_process';
import { cp, lstat, mkdir, open, readdir, readFile, realpath, rename, rm, stat } from 'node:fs/promises';
import { dirname, join, sep } from 'node:path';
import { fsyncDir, writeFileAtomic } from '../hal/atomic-file.js';
import { migrationProblem } from '../manifests/migration.js';
import type { ReleaseMigration } from '../manifests/types.js';
import type { HealthFailure, HistoryEntry } from './machine.js';
import { syncTree } from './factory-reset.js';
import { configDefaults, type Config } from './config.js';
import { nodeFs } from '../hal/builtins.js';
const { constants } = nodeFs;

export interface MigrationConfig {
  /** the migration command (argv, never a shell string); runs with SLOTFLIP_DATA_DIR set. */
  argv: string[];
  /** paths relative to the data dir it may change: snapshotted before, restored on rollback. */
  paths: string[];
  /** the snapshot's size budget; a larger one fails the attempt's health check. */
  maxBytes: number;
  timeoutSeconds: number;
}

/** What runs on a trial's first boot, from the release or the config. */
export interface MigrationPlan {
  from: 'release' | 'config';
  argv: string[];
  /** relative to the data dir: snapshotted before, restored on rollback. */
  paths: string[];
  maxBytes: number;
  timeoutSeconds: number;
}

/** The snapshot budget when the config sets none (`migration.maxBytes`). */
export const DEFAULT_SNAPSHOT_MAX_BYTES = 64 * 1024 * 1024;
const DEFAULT_TIMEOUT_SECONDS = 300;
/** PATH for a migration when the daemon passes no environment of its own. */
const SAFE_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

interface Meta {
  attempt: number;
  releaseId: string;
  /** the trial slot the migration ran on: booting any other slot means the attempt is over. */
  target: string;
  complete: boolean;
  /** the plan's paths (absent in snapshots of older versions: the config's then). */
  paths?: string[];
  /** the paths that existed at snapshot time (the others are removed by a restore). */
  present: string[];
  migrated?: boolean;
}

/** `custom.migration` of a release: an absolute path inside the image without `..` (never a shell string). */
export function isImagePath(p: unknown): p is string {
  return typeof p === 'string' && migrationProblem({ path: p, snapshot: ['.'] }) === null;
}

export type ExecResult = { code: number; output: string; timedOut?: boolean };
export type Exec = (argv: string[], env: NodeJS.ProcessEnv, timeoutMs: number) => Promise<ExecResult>;

const realExec: Exec = (argv, env, timeoutMs) =>
  new Promise((resolve) => {
    // SIGKILL at the timeout: a migration that ignores SIGTERM must not outlive the deadline
    execFile(argv[0]!, argv.slice(1), { env, timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      const e = err as (Error & { code?: number | string; signal?: string; killed?: boolean }) | null;
      const output = `${stdout}${stderr}`.slice(-4096);
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : 127) : 0, output: e && !output ? e.message : output, ...(e?.killed ? { timedOut: true } : {}) });
    });
  });

/** A cut point for tests: called before each step (throwing from it stops there, like a power cut). */
export type MigrationStep = 'snapshot' | 'snapshotCopied' | 'migrate' | 'restore' | 'restoredPath' | 'drop';

export interface MigrationsOptions {
  dataDir: string;
  snapshotDir: string;
  /** the device config's migration (used when the release names none). */
  config?: MigrationConfig;
  /** where the booted slot's root file system is: `/` on a device (default); a directory in tests. */
  imageRoot?: string;
  /** the snapshot budget for a release's migration (config data.snapshotMaxBytes; default 64 MiB). */
  maxBytes?: number;
  /** the trial's health deadline: a release's migration gets this long at most (default 300 s). */
  deadlineSeconds?: number;
  exec?: Exec;
  env?: NodeJS.ProcessEnv;
  onStep?: (step: MigrationStep) => void;
}

const fail = (output: string): HealthFailure => ({ name: 'migration', output, required: true });

export class Migrations {
  private readonly meta: string;
  private readonly copy: string;
  constructor(private readonly o: MigrationsOptions) {
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
   * The plan for a trial: the release's migration (checked again here, and its executable must be
   * a regular executable file on the booted root's file system, outside the data dir: a symlink
   * into the data partition is refused), else the config's, else none. A failure is returned as
   * the failed check it becomes.
   */
  async plan(named: ReleaseMigration | undefined): Promise<MigrationPlan | HealthFailure | undefined> {
    const c = this.o.config;
    if (!named) return c ? { from: 'config', argv: c.argv, paths: c.paths, maxBytes: c.maxBytes, timeoutSeconds: c.timeoutSeconds } : undefined;
    const problem = migrationProblem(named);
    if (problem) return fail(`DAEMON_MIGRATION_INVALID: the release's ${problem}; publish a corrected release`);
    const root = this.o.imageRoot ?? '/';
    const full = join(root, named.path);
    const where = `${named.path}${root === '/' ? '' : ` (under ${root})`}`;
    try {
      const [real, realRoot, realData] = await Promise.all([realpath(full), realpath(root), realpath(this.o.dataDir).catch(() => this.o.dataDir)]);
      const inside = (p: string, dir: string) => dir === sep || p === dir || p.startsWith(dir + sep);
      const [st, rootSt] = await Promise.all([stat(real), stat(realRoot)]);
      if (!inside(real, realRoot) || inside(real, realData) || st.dev !== rootSt.dev) {
        return fail(`DAEMON_MIGRATION_NOT_IN_IMAGE: the release's migration ${where} resolves to ${real}, which is not on the booted slot's root file system; the image must ship it`);
      }
      if (!st.isFile() || (st.mode & 0o111) === 0) return fail(`DAEMON_MIGRATION_NOT_IN_IMAGE: the release's migration ${where} is not an executable file; the image must ship it with mode 0755`);
    } catch (cause) {
      return fail(`DAEMON_MIGRATION_NOT_IN_IMAGE: the release names the migration ${where}, but the booted image has no such file (${(cause as NodeJS.ErrnoException).code ?? 'error'}); the image must ship it`);
    }
    const deadline = this.o.deadlineSeconds ?? DEFAULT_TIMEOUT_SECONDS;
    return { from: 'release', argv: [full], paths: named.snapshot, maxBytes: this.o.maxBytes ?? DEFAULT_SNAPSHOT_MAX_BYTES, timeoutSeconds: Math.min(named.timeoutSeconds ?? deadline, deadline) };
  }

  /**
   * First boot of the trial (before its health checks): snapshot, then migrate. Idempotent: a
   * migration that already succeeded for this attempt is not run again; one that was cut is undone
   * from the snapshot and run again. Returns the failure to report as a failed check, or undefined.
   */
  async beforeChecks(attempt: number, releaseId: string, target: string, named?: ReleaseMigration): Promise<HealthFailure | undefined> {
    const plan = await this.plan(named);
    if (!plan || 'name' in plan) return plan;
    let m = await this.readMeta();
    if (m && m.attempt === attempt && m.complete && m.migrated) return undefined;
    if (m && m.attempt === attempt && m.complete) {
      // a cut during the migration: start it again from the data as it was
      await this.restoreFrom(m);
    } else {
      this.o.onStep?.('snapshot');
      const size = await sizeOf(plan.paths.map((p) => join(this.o.dataDir, p)));
      const budget = plan.from === 'config' ? 'migration.maxBytes' : 'data.snapshotMaxBytes';
      if (size > plan.maxBytes) return fail(`DAEMON_MIGRATION_SNAPSHOT_TOO_LARGE: the paths ${plan.paths.join(', ')} under ${this.o.dataDir} hold ${size} bytes, more than ${budget} (${plan.maxBytes}); raise it or name fewer paths`);
      await rm(this.o.snapshotDir, { recursive: true, force: true });
      const tmp = `${this.o.snapshotDir}.tmp`;
      await rm(tmp, { recursive: true, force: true });
      await mkdir(join(tmp, 'data'), { recursive: true });
      const present: string[] = [];
      for (const p of plan.paths) {
        const from = join(this.o.dataDir, p);
        if (!(await lstat(from).then(() => true, () => false))) continue;
        await cp(from, join(tmp, 'data', p), { recursive: true, preserveTimestamps: true, verbatimSymlinks: true, mode: constants.COPYFILE_FICLONE });
        present.push(p);
      }
      await syncTree(join(tmp, 'data'));
      this.o.onStep?.('snapshotCopied');
      m = { attempt, releaseId, target, complete: true, paths: plan.paths, present };
      await writeFileAtomic(join(tmp, 'meta.json'), JSON.stringify(m) + '\n');
      // rename only when complete: a snapshot dir that exists is a whole one
      await rename(tmp, this.o.snapshotDir);
      await fsyncDir(join(this.o.snapshotDir, '..'));
    }
    this.o.onStep?.('migrate');
    const env = { PATH: SAFE_PATH, ...this.o.env, SLOTFLIP_DATA_DIR: this.o.dataDir, SLOTFLIP_RELEASE_ID: releaseId };
    const r = await (this.o.exec ?? realExec)(plan.argv, env, plan.timeoutSeconds * 1000);
    if (r.timedOut) return fail(`DAEMON_MIGRATION_TIMEOUT: migration ${plan.argv.join(' ')} did not finish within ${plan.timeoutSeconds} s and was killed: ${r.output}`.trim());
    if (r.code !== 0) return fail(`migration ${plan.argv.join(' ')} exited ${r.code}: ${r.output}`.trim());
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
    this.o.onStep?.('drop');
    // deleting the snapshot last: a cut before this restores again (idempotent)
    await rm(this.o.snapshotDir, { recursive: true, force: true });
    await fsyncDir(dirname(this.o.snapshotDir)).catch(() => undefined);
    return restore ? 'restored' : 'dropped';
  }

  private async restoreFrom(m: Meta): Promise<void> {
    const copyOpts = { recursive: true, force: true, preserveTimestamps: true, verbatimSymlinks: true, mode: constants.COPYFILE_FICLONE } as const;
    for (const p of m.paths ?? this.o.config?.paths ?? m.present) {
      const live = join(this.o.dataDir, p);
      const saved = join(this.copy, p);
      const liveSt = await lstat(live).catch(() => undefined);
      const savedSt = m.present.includes(p) ? await lstat(saved).catch(() => undefined) : undefined;
      if (liveSt?.isDirectory() && savedSt?.isDirectory()) {
        // in place, keeping the directory itself: it may be the source of a bind mount (the
        // reference layout binds /var/lib/app from /data/var/lib/app, systemd/README.md), and a
        // directory removed and made again leaves that mount on the deleted one, where the old
        // slot's application can create nothing ("Directory nonexistent": found by the full-OS lane)
        for (const e of await readdir(live)) await rm(join(live, e), { recursive: true, force: true });
        for (const e of await readdir(saved)) await cp(join(saved, e), join(live, e), copyOpts);
      } else {
        await rm(live, { recursive: true, force: true });
        if (m.present.includes(p)) {
          await mkdir(dirname(live), { recursive: true });
          await cp(saved, live, copyOpts);
        }
      }
      // on disk before the snapshot may go (settle deletes it right after)
      const st = await lstat(live).catch(() => undefined);
      if (st?.isDirectory()) await syncTree(live);
      else if (st?.isFile()) await syncFile(live);
      // the parent may not exist (a path that was absent, under a dir the migration never made)
      await fsyncDir(dirname(live)).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'ENOENT') throw e; });
      this.o.onStep?.('restoredPath');
    }
  }
}

/** The device's migrations as the config lays them out (snapshot in `<stateDir>/migration-snapshot`). */
export function createMigrations(config: Pick<Config, 'stateDir' | 'data' | 'migration' | 'health'>): Migrations {
  const data = config.data ?? configDefaults.data;
  return new Migrations({
    dataDir: data.dir,
    snapshotDir: join(config.stateDir, 'migration-snapshot'),
    imageRoot: config.data?.imageRoot ?? '/',
    deadlineSeconds: config.health.deadlineSeconds,
    ...(config.data?.snapshotMaxBytes !== undefined ? { maxBytes: config.data.snapshotMaxBytes } : {}),
    ...(config.migration ? { config: config.migration } : {}),
  });
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

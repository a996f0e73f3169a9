/**
 * Factory reset of the data partition: requested on the running system, applied at the next boot
 * before anything mounts or reads the data (slotflip-factory-reset.service, `DefaultDependencies=no`,
 * `Before=local-fs.target`).
 *
 * Trade-off: the apply is a fixed sequence of idempotent steps, always run from the first, driven
 * by one marker file on the data partition that is removed LAST. A power cut at any point leaves the
 * marker, so the next boot runs the whole sequence again; every step gives the same result whether
 * it ran before, half ran, or never ran. This costs a repeated wipe after a cut (cheap) and buys a
 * reset that cannot end half-done with the marker gone.
 *
 * Modes (what survives; the marker says which, `slotflip factory-reset` flags choose):
 * - `full` (default): everything goes except slotflip's security state: the anti-rollback floor
 *   (the committed securityVersion, carried into a fresh idle update record: no history, no attempt,
 *   only what each slot holds, since the slots are not reset)
 *   and the trust anchors (`<stateDir>/trusted`, the rotated TUF root chain). A reset must not make
 *   a device installable with a release its owner's keys already superseded. The outbox
 *   (`<stateDir>/outbox`: undelivered events, the sequence number the fleet deduplicates by) stays
 *   too: a reset device's events must not look like replays.
 * - `keep-identity`: as `full`, and the config's `data.identity` paths (device config, client
 *   certificate, by default slotflip's whole state dir) are kept as they are.
 * - `as-shipped` (`--forget-security`): nothing survives; the device trusts the root shipped in the
 *   image again and its floor starts at the config's initial one. For refurbishing a device whose
 *   keys are reissued, never as the field default.
 *
 * Steps of `applyFactoryReset`:
 * 1. keep: copy what survives into `.slotflip-factory-reset.keep` (built as `.keep.tmp`, fsynced,
 *    renamed: it exists only when complete): the security state (the trust dir, the outbox, a fresh record
 *    holding the floor = the higher of the live record's and the marker's) then the identity paths.
 *    Skipped when `.keep` already exists (an earlier run's cut after this step: the live copies may
 *    be wiped already).
 * 2. wipe: remove every entry of the data dir except the marker and `.keep`.
 * 3. defaults: copy the image's defaults tree (`/usr/share/factory/data` style) into the data dir.
 * 4. restore: copy `.keep` over the data dir.
 * 5. sync the data dir, remove `.keep` (a cut after this: step 1 copies the restored state again).
 * 6. remove the marker, fsync the directory: the reset is done.
 *
 * In every mode, `as-shipped` included, the replay memory of signed fleet commands
 * (`<stateDir>/fleet-commands.json`, daemon/fleet-command.ts) is kept: a reset command still
 * retained on the broker must not reset the device a second time. And the apply leaves
 * `<stateDir>/factory-reset-done.json` (mode, the command that asked) for the daemon to report once.
 *
 * The apply reads no config (it runs before /etc is assembled): everything it needs is in the marker.
 */
import { cp, mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { isAbsolute, join, normalize, relative, resolve } from 'node:path';
import { SlotflipError } from '../hal/errors.js';
import { fsyncDir, writeFileAtomic } from '../hal/atomic-file.js';
import { initialState } from './machine.js';
import { parseRecord, RECORD_FILE, RECORD_SCHEMA, type UpdateRecord } from './state-store.js';
import { isoTime } from '../hal/iso-time.js';

export const MARKER = '.slotflip-factory-reset';
const KEEP = `${MARKER}.keep`;
const KEEP_TMP = `${MARKER}.keep.tmp`;

export type ResetMode = 'full' | 'keep-identity' | 'as-shipped';
export const RESET_MODES: readonly ResetMode[] = ['full', 'keep-identity', 'as-shipped'];
/** The trust anchors under the state dir (daemon/compose.ts statePaths.trusted). */
const TRUST_DIR = 'trusted';
/** The outbox (statePaths.outbox): events not yet delivered and the sequence number the fleet
 * deduplicates by; a reset must not make the device's events look like replays. */
const OUTBOX_DIR = 'outbox';

export interface ResetMarker {
  schema: 1;
  mode: ResetMode;
  /** paths relative to the data dir kept across a `keep-identity` reset (empty otherwise). */
  keep: string[];
  /** slotflip's state dir relative to the data dir, whose floor and trust anchors survive (every
   * mode but `as-shipped`; absent when the state dir is not on the data partition: then the reset
   * never touches it). */
  securityDir?: string;
  /** the committed securityVersion when the reset was requested (the apply keeps the higher of
   * this and the record's at boot, so a lost or torn record never lowers the floor). */
  floor?: number;
  /** slotflip's state dir relative to the data dir, in every mode (absent when it is not on the data
   * partition): the fleet commands already run (FLEET_COMMANDS_FILE) survive every reset, even
   * `as-shipped`, or a command still retained on the broker would reset the device again; the apply
   * leaves its report (RESET_DONE_FILE) there. */
  stateDir?: string;
  /** the signed fleet command that asked for this reset (absent: the local command). */
  command?: { id: string; nonce: string };
  requestedAt: string;
}

/** The fleet commands a device has run (daemon/fleet-command.ts), under the state dir. */
export const FLEET_COMMANDS_FILE = 'fleet-commands.json';
/** What the apply leaves in the state dir for the daemon to report once (FactoryResetApplied). */
export const RESET_DONE_FILE = 'factory-reset-done.json'; // also named in daemon/reset-report.ts

/** What a reset keeps of slotflip's security state. */
export interface SecurityState {
  /** the state dir relative to the data dir, or undefined when it lies outside it. */
  dir?: string;
  floor: number;
}

/** A relative path inside the data dir: no leading `/`, no `..` segment, not the marker's own files. */
export function isKeepPath(p: string): boolean {
  if (p.length === 0 || isAbsolute(p)) return false;
  const n = normalize(p);
  return !n.split('/').includes('..') && n !== '.' && !n.startsWith(MARKER);
}

/**
 * Leaves the reset request for the next boot: one atomic write of the marker (the old request, if
 * any, is replaced whole). Nothing is wiped now: the running system keeps using its data until the
 * reboot. Idempotent.
 */
export async function requestFactoryReset(dataDir: string, mode: ResetMode, keep: string[], now: number, security?: SecurityState, command?: { id: string; nonce: string }): Promise<ResetMarker> {
  for (const p of keep) {
    if (!isKeepPath(p)) throw new SlotflipError('DAEMON_BAD_ARGUMENT', `factory reset: keep path "${p}" must be relative to the data dir ${dataDir} and must not contain ".."; fix /data/identity in the config`, { details: { path: p } });
  }
  if (security?.dir !== undefined && !isKeepPath(security.dir)) throw new SlotflipError('DAEMON_BAD_ARGUMENT', `factory reset: the state dir "${security.dir}" must be relative to the data dir ${dataDir}`, { details: { path: security.dir } });
  await mkdir(dataDir, { recursive: true });
  const keepsSecurity = mode !== 'as-shipped' && security?.dir !== undefined;
  const marker: ResetMarker = {
    schema: 1,
    mode,
    keep: mode === 'keep-identity' ? keep : [],
    ...(keepsSecurity ? { securityDir: security.dir, floor: security.floor } : {}),
    ...(security?.dir !== undefined ? { stateDir: security.dir } : {}),
    ...(command ? { command: { id: command.id, nonce: command.nonce } } : {}),
    requestedAt: isoTime(now),
  };
  await writeFileAtomic(join(dataDir, MARKER), JSON.stringify(marker) + '\n');
  return marker;
}

/** The pending request, if any (a marker that does not parse still means "reset": mode full). */
export async function readResetMarker(dataDir: string): Promise<ResetMarker | undefined> {
  let text: string;
  try {
    text = await readFile(join(dataDir, MARKER), 'utf8');
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new SlotflipError('DAEMON_FACTORY_RESET_IO', `factory reset: cannot read ${join(dataDir, MARKER)}`, { cause });
  }
  try {
    const m = JSON.parse(text) as Partial<ResetMarker>;
    const keep = Array.isArray(m.keep) ? m.keep.filter((p): p is string => typeof p === 'string' && isKeepPath(p)) : [];
    const mode: ResetMode = m.mode === 'keep-identity' || m.mode === 'as-shipped' ? m.mode : 'full';
    const security = mode !== 'as-shipped' && typeof m.securityDir === 'string' && isKeepPath(m.securityDir)
      ? { securityDir: m.securityDir, floor: Number.isSafeInteger(m.floor) && (m.floor as number) >= 0 ? (m.floor as number) : 0 }
      : {};
    const stateDir = typeof m.stateDir === 'string' && isKeepPath(m.stateDir) ? { stateDir: m.stateDir } : {};
    const command = typeof m.command?.id === 'string' && typeof m.command.nonce === 'string' ? { command: { id: m.command.id, nonce: m.command.nonce } } : {};
    return { schema: 1, mode, keep: mode === 'keep-identity' ? keep : [], ...security, ...stateDir, ...command, requestedAt: String(m.requestedAt ?? '') };
  } catch {
    // a torn or garbled marker (it is written atomically, so only a foreign writer makes one):
    // the user asked for a reset; the safe reading keeps nothing
    return { schema: 1, mode: 'full', keep: [], requestedAt: '' };
  }
}

export type ResetStep = 'keep' | 'wipe' | 'defaults' | 'restore' | 'dropKeep' | 'dropMarker';

export interface ApplyOptions {
  dataDir: string;
  /** the image's defaults for the data dir (read-only); missing = start empty. */
  defaultsDir?: string;
  /** called before each step starts (tests cut the power here). */
  beforeStep?: (step: ResetStep) => void | Promise<void>;
}

export interface ApplyResult {
  applied: boolean;
  mode?: ResetMode;
  kept?: string[];
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(() => true, () => false);
}

/** Applies a pending reset (see the module header); without a marker it does nothing. Idempotent. */
export async function applyFactoryReset(o: ApplyOptions): Promise<ApplyResult> {
  const marker = await readResetMarker(o.dataDir);
  if (!marker) return { applied: false };
  const step = async (s: ResetStep) => o.beforeStep?.(s);
  const at = (name: string) => join(o.dataDir, name);
  const kept: string[] = [];
  try {
    await step('keep');
    const stateRel = marker.stateDir ?? marker.securityDir;
    if ((marker.keep.length > 0 || stateRel !== undefined) && !(await exists(at(KEEP)))) {
      await rm(at(KEEP_TMP), { recursive: true, force: true });
      await mkdir(at(KEEP_TMP));
      if (stateRel !== undefined && (await exists(at(join(stateRel, FLEET_COMMANDS_FILE))))) {
        // every mode: the replay memory of fleet commands (see ResetMarker.stateDir)
        await mkdir(join(at(KEEP_TMP), stateRel), { recursive: true });
        await cp(at(join(stateRel, FLEET_COMMANDS_FILE)), join(at(KEEP_TMP), stateRel, FLEET_COMMANDS_FILE), { preserveTimestamps: true });
      }
      if (marker.securityDir !== undefined) {
        // the security state first: identity paths that overlap it (the whole state dir) win
        const sec = marker.securityDir;
        for (const d of [TRUST_DIR, OUTBOX_DIR]) {
          if (await exists(at(join(sec, d)))) await cp(at(join(sec, d)), join(at(KEEP_TMP), sec, d), { recursive: true, preserveTimestamps: true, verbatimSymlinks: true });
        }
        const live = await readRecord(at(join(sec, RECORD_FILE)));
        const floor = Math.max(marker.floor ?? 0, live?.committedSecurityVersion ?? 0);
        await mkdir(join(at(KEEP_TMP), sec), { recursive: true });
        // the slots are not reset: what each holds stays known (`installed`), or the device would
        // download the release it is running again
        await writeFileAtomic(join(at(KEEP_TMP), sec, RECORD_FILE), JSON.stringify({ schema: RECORD_SCHEMA, savedAt: 0, saves: 0, ...initialState(floor), installed: live?.installed ?? {} }) + '\n');
      }
      for (const p of marker.keep) {
        if (!(await exists(at(p)))) continue;
        await cp(at(p), join(at(KEEP_TMP), p), { recursive: true, preserveTimestamps: true, verbatimSymlinks: true });
      }
      await syncTree(at(KEEP_TMP));
      // rename only when complete: `.keep` present means "the identity is safe, wipe away"
      await rename(at(KEEP_TMP), at(KEEP));
      await fsyncDir(o.dataDir);
    }
    await step('wipe');
    for (const e of await readdir(o.dataDir)) {
      if (e === MARKER || e === KEEP) continue;
      await rm(at(e), { recursive: true, force: true });
    }
    await fsyncDir(o.dataDir);
    await step('defaults');
    if (o.defaultsDir && (await exists(o.defaultsDir))) {
      await cp(o.defaultsDir, o.dataDir, { recursive: true, force: true, verbatimSymlinks: true });
    }
    await step('restore');
    if (await exists(at(KEEP))) {
      for (const p of keptPaths(marker)) {
        if (!(await exists(join(at(KEEP), p)))) continue;
        await rm(at(p), { recursive: true, force: true });
        await cp(join(at(KEEP), p), at(p), { recursive: true, force: true, preserveTimestamps: true, verbatimSymlinks: true });
        kept.push(p);
      }
    }
    if (stateRel !== undefined) {
      // the report the daemon sends once it runs (FactoryResetApplied); rewritten by a repeated run
      await mkdir(at(stateRel), { recursive: true });
      await writeFileAtomic(at(join(stateRel, RESET_DONE_FILE)), JSON.stringify({ mode: marker.mode, ...(marker.command ? { command: marker.command } : {}), kept }) + '\n');
    }
    // everything on disk before the marker goes: a cut after this point must find a finished tree
    await syncTree(o.dataDir, new Set([MARKER, KEEP]));
    await step('dropKeep');
    await rm(at(KEEP), { recursive: true, force: true });
    await fsyncDir(o.dataDir);
    await step('dropMarker');
    // LAST: removing the marker is what makes the reset done
    await rm(at(MARKER), { force: true });
    await fsyncDir(o.dataDir);
  } catch (cause) {
    if ((cause as { code?: string }).code?.startsWith('DAEMON_')) throw cause;
    throw new SlotflipError('DAEMON_FACTORY_RESET_IO', `factory reset of ${o.dataDir} failed (${(cause as NodeJS.ErrnoException).code ?? 'error'}); the marker stays, so the next boot tries again; check the data partition (fsck, free space)`, { cause, details: { dataDir: o.dataDir } });
  }
  return { applied: true, mode: marker.mode, kept };
}

/**
 * Where slotflip's state dir lies on the data partition, relative to `dataDir`, or undefined when it
 * is not on it (then a reset never touches it). Found by identity (device and inode), not by name:
 * the reference layout binds `/var` (or `/var/lib/slotflip`) from `<dataDir>/var...`, so
 * `/var/lib/slotflip` is `<dataDir>/var/lib/slotflip` though neither path contains the other.
 */
export async function stateDirOnData(dataDir: string, stateDir: string): Promise<string | undefined> {
  const rel = relative(resolve(dataDir), resolve(stateDir));
  const inside = rel !== '' && !rel.startsWith('..') && !isAbsolute(rel) ? rel : undefined;
  const st = await stat(stateDir).catch(() => undefined);
  if (!st) return inside;
  for (const c of [inside, resolve(stateDir).replace(/^\/+/, '')]) {
    if (c === undefined) continue;
    const there = await stat(join(dataDir, c)).catch(() => undefined);
    if (there && there.dev === st.dev && there.ino === st.ino) return c;
  }
  return undefined;
}

/** What `.keep` holds, in restore order (the security state, then the identity paths over it). */
function keptPaths(m: ResetMarker): string[] {
  const stateRel = m.stateDir ?? m.securityDir;
  return [
    ...(stateRel !== undefined ? [join(stateRel, FLEET_COMMANDS_FILE)] : []),
    ...(m.securityDir !== undefined ? [join(m.securityDir, TRUST_DIR), join(m.securityDir, OUTBOX_DIR), join(m.securityDir, RECORD_FILE)] : []),
    ...m.keep,
  ];
}

/** The update record at `path`, or undefined when there is none or it is unreadable (the marker's
 * floor then stands). */
async function readRecord(path: string): Promise<UpdateRecord | undefined> {
  try {
    return parseRecord(await readFile(path, 'utf8'), path);
  } catch {
    return undefined;
  }
}

/** The committed securityVersion of the record at `path`; 0 when there is none or it is unreadable. */
export async function recordFloor(path: string): Promise<number> {
  return (await readRecord(path))?.committedSecurityVersion ?? 0;
}

/** fsync every regular file and directory under `dir` (skipping `skip` at the top level). */
export async function syncTree(dir: string, skip: Set<string> = new Set()): Promise<void> {
  for (const e of await readdir(dir, { withFileTypes: true })) {
    if (skip.has(e.name)) continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) await syncTree(p);
    else if (e.isFile()) {
      const fh = await open(p, 'r');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
  }
  await fsyncDir(dir);
}

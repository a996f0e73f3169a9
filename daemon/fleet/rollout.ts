/**
 * Rollout changes on the manufacturer's side: parse `--percent` / `--wave AT=P`, read the rollout in
 * force from the repository's newest signed targets, and apply a change (re-sign targets, snapshot,
 * timestamp through manifests/repo.ts `setRollout`, then optionally republish the metadata retained
 * on the broker with `publishToBroker`).
 *
 * Trade-off: the rollout in force is read from the newest `N.targets.json` on disk (the bytes this
 * machine signed), not from the broker: the repository directory is the source of truth, the broker
 * a cache that `publishToBroker` overwrites.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SlotflipError } from '../../hal/errors.js';
import { publishToBroker, setRollout, type PublishOptions, type PublishResult } from '../../manifests/repo.js';
import type { Rollout, RolloutWave } from '../../manifests/types.js';

const MAX_TARGETS_BYTES = 64 << 20;

function usage(message: string, details?: Record<string, unknown>): SlotflipError {
  return new SlotflipError('DAEMON_USAGE', message, { details });
}

/** Parses a percentage 0..100 (decimals allowed). Throws DAEMON_USAGE naming `what`. */
export function parsePercent(text: string, what: string): number {
  const p = Number(text);
  if (text.trim() === '' || !Number.isFinite(p) || p < 0 || p > 100) throw usage(`${what}: "${text}" is not a percentage from 0 to 100`, { value: text });
  return p;
}

const RELATIVE = /^\+(\d+(?:\.\d+)?)(s|m|h|d)$/;
const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * Parses `--wave AT=P`: AT is an ISO-8601 time (`2026-12-01T08:00:00Z`) or an offset from `now`
 * (`+30m`, `+2h`, `+1d`); P a percentage. Pure apart from `now`. Throws DAEMON_USAGE.
 */
export function parseWave(text: string, now: number): RolloutWave {
  const eq = text.lastIndexOf('=');
  if (eq <= 0) throw usage(`--wave "${text}": expected AT=PERCENT, e.g. +2h=50 or 2026-12-01T08:00:00Z=100`, { value: text });
  const at = text.slice(0, eq).trim();
  const percent = parsePercent(text.slice(eq + 1), `--wave "${text}"`);
  const rel = RELATIVE.exec(at);
  let ms: number;
  if (rel) ms = now + Number(rel[1]) * UNIT_MS[rel[2]!]!;
  else {
    if (!/^\d{4}-\d{2}-\d{2}T/.test(at)) throw usage(`--wave "${text}": time "${at}" is neither ISO-8601 (2026-12-01T08:00:00Z) nor an offset (+30m, +2h, +1d)`, { value: text });
    ms = Date.parse(at);
    if (!Number.isFinite(ms)) throw usage(`--wave "${text}": time "${at}" does not parse`, { value: text });
  }
  return { at: new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z'), percent };
}

/** A rollout from `--percent` and `--wave`s (sorted by time). Pure. */
export function buildRollout(percent: number, waves: RolloutWave[] = [], halted = false): Rollout {
  const sorted = [...waves].sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
  return { percent, ...(sorted.length > 0 ? { waves: sorted } : {}), ...(halted ? { halted: true } : {}) };
}

async function newestTargets(dir: string): Promise<{ path: string; signed: Record<string, unknown> }> {
  const metaDir = join(dir, 'repository', 'metadata');
  let names: string[];
  try {
    names = await readdir(metaDir);
  } catch (cause) {
    throw new SlotflipError('MANIFEST_REPO_INVALID', `${metaDir} is missing; is ${dir} a repository made by \`slotflip repo init\`?`, { cause, details: { path: metaDir } });
  }
  let best = 0;
  for (const n of names) {
    const m = /^(\d+)\.targets\.json$/.exec(n);
    if (m) best = Math.max(best, Number(m[1]));
  }
  if (best === 0) throw new SlotflipError('MANIFEST_REPO_INVALID', `no targets metadata in ${metaDir}`, { details: { path: metaDir } });
  const path = join(metaDir, `${best}.targets.json`);
  const bytes = await readFile(path);
  if (bytes.length > MAX_TARGETS_BYTES) throw new SlotflipError('MANIFEST_TOO_LARGE', `${path} is larger than ${MAX_TARGETS_BYTES} bytes`, { details: { path } });
  try {
    const doc = JSON.parse(bytes.toString('utf8')) as { signed?: Record<string, unknown> };
    if (typeof doc.signed !== 'object' || doc.signed === null) throw new Error('no signed part');
    return { path, signed: doc.signed };
  } catch (cause) {
    throw new SlotflipError('MANIFEST_REPO_INVALID', `${path} is not valid targets metadata`, { cause, details: { path } });
  }
}

/**
 * The rollout in force for `targetName` in the repository's newest signed targets: the rollout
 * object, or undefined when the release has none (everyone may install). Read-only. Throws
 * MANIFEST_TARGET_NOT_FOUND when the release is not listed.
 */
export async function readRollout(dir: string, targetName: string): Promise<Rollout | undefined> {
  const { path, signed } = await newestTargets(dir);
  const targets = signed['targets'] as Record<string, { custom?: { rollout?: Rollout } }> | undefined;
  const t = targets?.[targetName];
  if (!t) throw new SlotflipError('MANIFEST_TARGET_NOT_FOUND', `no target ${targetName} in ${path}; list the releases with \`slotflip release list\``, { details: { targetName, path } });
  return t.custom?.rollout;
}

export interface ApplyRolloutOptions {
  now?: () => number;
  /** republish the metadata (retained) to this broker after signing. */
  broker?: string;
  publish?: PublishOptions;
}

export interface ApplyRolloutResult {
  targetName: string;
  rollout: Rollout;
  targetsVersion: number;
  published?: PublishResult;
}

/**
 * Replaces the rollout of `targetName` and re-signs targets, snapshot and timestamp (needs those
 * keys in DIR/keys); then, with `broker`, republishes every current metadata file retained,
 * timestamp last. Each file is written atomically by repo.ts; a crash between signing and publishing
 * leaves the repository signed and the broker on the previous metadata: run it again (idempotent
 * apart from version numbers).
 */
export async function applyRollout(dir: string, targetName: string, rollout: Rollout, opts: ApplyRolloutOptions = {}): Promise<ApplyRolloutResult> {
  const targetsVersion = await setRollout(dir, targetName, rollout, opts.now ? { now: opts.now } : {});
  const result: ApplyRolloutResult = { targetName, rollout, targetsVersion };
  // a halt must reach devices even when targets.json has outgrown one MQTT message (a large chunk
  // index): the oversized file is left to HTTP rather than the whole republish refused
  if (opts.broker !== undefined) result.published = await publishToBroker(dir, opts.broker, { oversize: 'skip', ...opts.publish });
  return result;
}

/**
 * Halts the rollout of `targetName`: keeps the rollout in force and adds `halted: true` (a release
 * without a rollout gets `{ percent: 100, halted: true }`), re-signs, and republishes with `broker`.
 * Idempotent in effect: halting a halted rollout signs a new (identical) version.
 */
export async function haltRollout(dir: string, targetName: string, opts: ApplyRolloutOptions = {}): Promise<ApplyRolloutResult> {
  const current = await readRollout(dir, targetName);
  const rollout: Rollout = { ...(current ?? { percent: 100 }), halted: true };
  return applyRollout(dir, targetName, rollout, opts);
}

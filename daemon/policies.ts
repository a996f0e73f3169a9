/**
 * Update policies: the `policies` config fragment, maintenance windows (cron + duration) per phase,
 * the update lock an application holds to defer a reboot (with a maximum deferral), minimum free
 * space, and `createUpdatePolicies`, the object the agent asks.
 */
import { nodeCron } from './cron-local.js';
import { readFile } from 'node:fs/promises';
import { execTool, type ToolRunner } from '../hal/exec.js';

/** A window opens at every match of `cron` (node-cron syntax, 5 or 6 fields) and lasts `durationMinutes`. */
export interface MaintenanceWindow {
  cron: string;
  durationMinutes: number;
  /** IANA time zone for the cron expression; default: the system's. */
  timezone?: string;
}

export interface PoliciesConfig {
  /** per phase: when absent or empty, that phase may run at any time. */
  maintenanceWindows?: { download?: MaintenanceWindow[]; install?: MaintenanceWindow[]; reboot?: MaintenanceWindow[] };
  /** applications hold this file (flock or presence with a live pid) to defer the reboot. */
  updateLock?: { path: string; maxDeferralMinutes: number };
  /** refuse to start a download unless this much space is free on the state filesystem. */
  minFreeSpaceMiB: number;
}

export const policiesConfigDefaults = { minFreeSpaceMiB: 0 };

const windowSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['cron', 'durationMinutes'],
  properties: {
    cron: { type: 'string', minLength: 9, maxLength: 200 },
    durationMinutes: { type: 'integer', minimum: 1, maximum: 10080 },
    timezone: { type: 'string', minLength: 1, maxLength: 64 },
  },
} as const;

const windowList = { type: 'array', items: windowSchema } as const;

/** JSON Schema (ajv). Cron syntax is checked semantically by `validatePolicies`. */
export const policiesConfigSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    maintenanceWindows: {
      type: 'object',
      additionalProperties: false,
      properties: { download: windowList, install: windowList, reboot: windowList },
    },
    updateLock: {
      type: 'object',
      additionalProperties: false,
      required: ['path', 'maxDeferralMinutes'],
      properties: {
        path: { type: 'string', pattern: '^/' },
        maxDeferralMinutes: { type: 'integer', minimum: 0, maximum: 525600 },
      },
    },
    minFreeSpaceMiB: { type: 'integer', minimum: 0, default: policiesConfigDefaults.minFreeSpaceMiB },
  },
} as const;

// ---------------------------------------------------------------------------------------------
// Decisions. Everything here is a pure function of its inputs (the clock is an argument) except
// `readUpdateLock`, which looks at one file and, through the injected runner, at its flock.
//
// Windows have minute resolution: "now is inside a window" means some minute t in (now − D, now]
// matches the cron expression (standard 5-field syntax, node-cron semantics and time zones).

export type PolicyPhase = 'download' | 'install' | 'reboot';

const MINUTE = 60_000;

/** Problems with the windows' cron expressions, by config path; empty when all are valid. */
export function validatePolicies(config: PoliciesConfig): string[] {
  const problems: string[] = [];
  for (const phase of ['download', 'install', 'reboot'] as const) {
    (config.maintenanceWindows?.[phase] ?? []).forEach((w, i) => {
      const at = `/policies/maintenanceWindows/${phase}/${i}`;
      if (w.cron.trim().split(/\s+/).length !== 5) problems.push(`${at}/cron: "${w.cron}" must have 5 fields (minute hour day-of-month month day-of-week)`);
      else if (!nodeCron().validate(w.cron)) problems.push(`${at}/cron: "${w.cron}" is not a valid cron expression`);
      if (w.timezone !== undefined && !isTimeZone(w.timezone)) problems.push(`${at}/timezone: "${w.timezone}" is not an IANA time zone`);
    });
  }
  return problems;
}

function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/** Runs `fn` with a matcher for `w`, then releases node-cron's registry entry. */
function withMatcher<T>(w: MaintenanceWindow, fn: (match: (ms: number) => boolean) => T): T {
  const task = nodeCron().createTask(w.cron, () => undefined, w.timezone ? { timezone: w.timezone } : {});
  try {
    return fn((ms) => task.match(new Date(ms)));
  } finally {
    void task.destroy();
  }
}

export interface WindowStatus {
  open: boolean;
  /** when open: the latest time any open window closes (ms). */
  closesAtMs?: number;
  /** when closed: the next opening within the horizon (ms), if any. */
  nextOpenMs?: number;
}

/**
 * Whether `nowMs` is inside one of `windows`. No windows (undefined or empty) means always open.
 * When closed, looks ahead `horizonMinutes` (default 8 days) for the next opening.
 */
export function windowStatus(windows: MaintenanceWindow[] | undefined, nowMs: number, horizonMinutes = 8 * 24 * 60): WindowStatus {
  if (!windows || windows.length === 0) return { open: true };
  const minute = Math.floor(nowMs / MINUTE) * MINUTE;
  let closesAtMs: number | undefined;
  for (const w of windows) {
    withMatcher(w, (match) => {
      for (let m = 0; m < w.durationMinutes; m++) {
        const start = minute - m * MINUTE;
        if (match(start)) {
          closesAtMs = Math.max(closesAtMs ?? 0, start + w.durationMinutes * MINUTE);
          return;
        }
      }
    });
  }
  if (closesAtMs !== undefined) return { open: true, closesAtMs };
  let nextOpenMs: number | undefined;
  for (const w of windows) {
    withMatcher(w, (match) => {
      for (let m = 1; m <= horizonMinutes; m++) {
        const t = minute + m * MINUTE;
        if (nextOpenMs !== undefined && t >= nextOpenMs) return;
        if (match(t)) {
          nextOpenMs = t;
          return;
        }
      }
    });
  }
  return nextOpenMs === undefined ? { open: false } : { open: false, nextOpenMs };
}

export interface LockStatus {
  held: boolean;
  holderPid?: number;
  detail: string;
}

export interface LockDeps {
  readFile?: (path: string) => Promise<string>;
  /** true when a process with this pid exists; default `process.kill(pid, 0)`. */
  isAlive?: (pid: number) => boolean;
  runner?: ToolRunner;
}

function defaultIsAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Whether an application holds the update lock at `path`: the file holds the pid of a live
 * process, or someone holds an flock(2) on it (probed with util-linux `flock --nonblock`). A missing
 * file, a dead pid with no flock, or an empty unlocked file is not held. Read-only; never creates the file.
 */
export async function readUpdateLock(path: string, deps: LockDeps = {}): Promise<LockStatus> {
  let text: string;
  try {
    text = await (deps.readFile ?? ((p) => readFile(p, 'utf8')))(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { held: false, detail: 'no lock file' };
    // unreadable lock file: assume an application means it
    return { held: true, detail: `lock file unreadable (${(e as NodeJS.ErrnoException).code ?? 'error'}); treated as held` };
  }
  const pidText = text.trim().slice(0, 32);
  if (/^[1-9][0-9]{0,9}$/.test(pidText)) {
    const pid = Number(pidText);
    if ((deps.isAlive ?? defaultIsAlive)(pid)) return { held: true, holderPid: pid, detail: `held by pid ${pid}` };
  }
  const r = await (deps.runner ?? execTool).run('flock', ['--nonblock', '--conflict-exit-code', '75', path, 'true'], { timeoutMs: 5000 }).catch(() => undefined);
  if (r?.code === 75) return { held: true, detail: 'flock held' };
  if (r === undefined) return { held: pidText === '', detail: 'flock tool unavailable; presence of an empty file treated as held' };
  return { held: false, detail: pidText ? `stale lock (pid ${pidText} not running)` : 'lock file present but not locked' };
}

export type RebootAction = 'proceed' | 'defer' | 'override';

/**
 * Reboot under the update lock: proceed when free; defer while held; override (reboot anyway, and
 * report it) once the lock has deferred the reboot for `maxDeferralMinutes`. The caller persists
 * `deferredSinceMs` across restarts so a daemon restart does not reset the clock.
 */
export function rebootDecision(input: { lockHeld: boolean; nowMs: number; deferredSinceMs?: number; maxDeferralMinutes: number }): { action: RebootAction; deferredSinceMs?: number; overrideAtMs?: number } {
  if (!input.lockHeld) return { action: 'proceed' };
  const since = input.deferredSinceMs ?? input.nowMs;
  const overrideAtMs = since + input.maxDeferralMinutes * MINUTE;
  if (input.nowMs >= overrideAtMs) return { action: 'override', deferredSinceMs: since, overrideAtMs };
  return { action: 'defer', deferredSinceMs: since, overrideAtMs };
}

export interface PolicyInput {
  nowMs: number;
  /** free MiB on the state/slot filesystem (download phase). */
  freeSpaceMiB?: number;
  /** current update-lock status (reboot phase). */
  lock?: LockStatus;
  /** persisted start of the current reboot deferral. */
  deferredSinceMs?: number;
}

export interface PolicyDecision {
  allowed: boolean;
  /** why not (or why allowed against a lock); empty when simply allowed. */
  reasons: string[];
  /** earliest time worth asking again, when known: nothing this decision depends on can change
   * before it (a maintenance window opens then). Absent when the answer may change any moment (an
   * update lock can be released at any time), so the caller keeps polling. */
  retryAtMs?: number;
  /** reboot phase, lock held: when the lock will be overridden (rebooting anyway) at the latest. */
  lockOverrideAtMs?: number;
  /** reboot phase: persist this while deferring. */
  deferredSinceMs?: number;
  /** reboot phase: the lock was overridden after the maximum deferral. */
  lockOverridden?: boolean;
}

/** May `phase` start now? Pure: the same input always gives the same decision. */
export function evaluatePolicies(phase: PolicyPhase, config: PoliciesConfig, input: PolicyInput): PolicyDecision {
  const reasons: string[] = [];
  let retryAtMs: number | undefined;
  const w = windowStatus(config.maintenanceWindows?.[phase], input.nowMs);
  if (!w.open) {
    reasons.push(`outside the ${phase} maintenance window`);
    retryAtMs = w.nextOpenMs;
  }
  if (phase === 'download' && config.minFreeSpaceMiB > 0) {
    if (input.freeSpaceMiB === undefined) reasons.push('free space unknown');
    else if (input.freeSpaceMiB < config.minFreeSpaceMiB) reasons.push(`only ${Math.floor(input.freeSpaceMiB)} MiB free, policy needs ${config.minFreeSpaceMiB} MiB`);
  }
  const out: PolicyDecision = { allowed: false, reasons };
  if (phase === 'reboot' && config.updateLock && input.lock) {
    const d = rebootDecision({ lockHeld: input.lock.held, nowMs: input.nowMs, maxDeferralMinutes: config.updateLock.maxDeferralMinutes, ...(input.deferredSinceMs === undefined ? {} : { deferredSinceMs: input.deferredSinceMs }) });
    if (d.action === 'defer') {
      reasons.push(`update lock ${config.updateLock.path} ${input.lock.detail}`);
      out.deferredSinceMs = d.deferredSinceMs;
      // not a retry time: the application may release the lock any moment (the caller polls); with
      // a closed window too, nothing changes before the window opens (retryAtMs stays the window's)
      if (d.overrideAtMs !== undefined) out.lockOverrideAtMs = d.overrideAtMs;
    } else if (d.action === 'override' && reasons.length === 0) {
      out.lockOverridden = true;
      out.deferredSinceMs = d.deferredSinceMs;
      reasons.push(`update lock still held after ${config.updateLock.maxDeferralMinutes} min; rebooting anyway`);
      out.allowed = true;
      return out;
    }
  }
  out.allowed = reasons.length === 0;
  if (!out.allowed && retryAtMs !== undefined) out.retryAtMs = retryAtMs;
  return out;
}

/** Where the start of a reboot deferral is kept, so a daemon restart does not reset the clock. */
export interface DeferralStore {
  get(): Promise<number | undefined>;
  /** undefined clears it. Should be durable (atomic write); the default keeps it in memory only. */
  set(ms: number | undefined): Promise<void>;
}

export interface UpdatePoliciesDeps {
  /** free MiB where the update's local state lives (resume file, trusted metadata). */
  freeSpaceMiB?: () => Promise<number | undefined>;
  lock?: LockDeps;
  deferral?: DeferralStore;
}

export type AgentPolicyDecision = { ok: true; note?: string } | { ok: false; reason: string; until?: number };

/**
 * The agent-facing policy object (`mayStart`, `mayReboot`, as daemon/agent.ts's `UpdatePolicies`
 * expects): an attempt needs both the download and the install window open (the payload streams
 * straight into the slot) and the free space; a reboot needs the reboot window and a free update
 * lock, or the lock's maximum deferral to have passed.
 */
export function createUpdatePolicies(config: PoliciesConfig, deps: UpdatePoliciesDeps = {}): {
  mayStart(release: unknown, now: number): Promise<AgentPolicyDecision>;
  mayReboot(now: number): Promise<AgentPolicyDecision>;
} {
  let memoryDeferral: number | undefined;
  const deferral: DeferralStore = deps.deferral ?? { get: async () => memoryDeferral, set: async (ms) => { memoryDeferral = ms; } };
  const toAgent = (d: PolicyDecision): AgentPolicyDecision =>
    d.allowed ? (d.reasons.length ? { ok: true, note: d.reasons.join('; ') } : { ok: true }) : { ok: false, reason: d.reasons.join('; '), ...(d.retryAtMs === undefined ? {} : { until: d.retryAtMs }) };
  return {
    async mayStart(_release, now) {
      const freeSpaceMiB = config.minFreeSpaceMiB > 0 ? await deps.freeSpaceMiB?.() : undefined;
      const dl = evaluatePolicies('download', config, { nowMs: now, ...(freeSpaceMiB === undefined ? {} : { freeSpaceMiB }) });
      if (!dl.allowed) return toAgent(dl);
      return toAgent(evaluatePolicies('install', config, { nowMs: now }));
    },
    async mayReboot(now) {
      const lock = config.updateLock ? await readUpdateLock(config.updateLock.path, deps.lock) : undefined;
      const since = await deferral.get();
      const d = evaluatePolicies('reboot', config, { nowMs: now, ...(lock ? { lock } : {}), ...(since === undefined ? {} : { deferredSinceMs: since }) });
      if (d.allowed) {
        if (since !== undefined) await deferral.set(undefined);
      } else if (d.deferredSinceMs !== undefined && d.deferredSinceMs !== since) {
        await deferral.set(d.deferredSinceMs);
      }
      return toAgent(d);
    },
  };
}

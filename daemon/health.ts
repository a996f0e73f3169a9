/**
 * Post-boot health checks (step 7 of the update): the `health` config fragment and
 * `runHealthChecks`: commands, systemd units, HTTP endpoints, broker reachability, resource
 * thresholds, greenboot-style `required.d` / `wanted.d` drop-ins, all within one deadline.
 *
 * Time is measured on a monotonic clock (`performance.now()`): on a board without an RTC, NTP steps
 * the wall clock forward by months in the middle of a boot, and a deadline computed from `Date.now`
 * would leave the checks after the step no time at all (a false rollback).
 *
 * Settling (`settle`): the daemon starts early in the boot (multi-user.target is ordered after it),
 * so its checks wait first for systemd to finish starting the system (`is-system-running` leaves
 * `initializing`/`starting`), then read boot-complete.target's verdict (greenboot's required checks
 * and slotflip-health.service are `RequiredBy=` it). `slotflip health` itself runs *before*
 * boot-complete.target as one of the boot's jobs, so it never settles (it would wait for itself).
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { execTool, type ToolRunner } from '../hal/exec.js';
import { codeOf } from '../hal/errors.js';
import { httpGet } from '../manifests/http-get.js';
import { performance } from '../hal/monotonic.js';

export type HealthCheckConfig =
  | { type: 'command'; name: string; argv: string[]; timeoutSeconds: number; expectExit?: number; required?: boolean }
  | { type: 'systemd-unit'; unit: string; name?: string; required?: boolean }
  | { type: 'http'; url: string; expectStatus: number; name?: string; timeoutSeconds?: number; required?: boolean }
  | { type: 'broker'; name?: string; required?: boolean }
  | {
      type: 'resources';
      name?: string;
      required?: boolean;
      minFreeMemoryMiB?: number;
      minFreeDiskMiB?: number;
      /** mount point / path whose filesystem `minFreeDiskMiB` applies to; default "/". */
      path?: string;
      maxTemperatureC?: number;
      maxLoad1?: number;
    };

export interface SettleConfig {
  /** how long to wait for the system to finish starting before the checks run; past it the boot is
   * judged unhealthy (a boot that never settles is not a good boot). */
  timeoutSeconds: number;
  /** then require boot-complete.target to be active (greenboot's and slotflip-health's verdict). */
  bootComplete?: boolean;
}

export interface HealthConfig {
  /** every check must finish within this many seconds in total; unfinished checks fail. */
  deadlineSeconds: number;
  checks: HealthCheckConfig[];
  /** greenboot-style drop-in dirs: executables in `required` must pass; `wanted` failures are only reported. */
  dropInDirs?: { required?: string; wanted?: string };
  /** wait for the system to settle before the checks (daemon only, never `slotflip health`). */
  settle?: SettleConfig;
  /** a config with nothing to check is refused (DAEMON_HEALTH_NO_CHECKS) unless this is true. */
  allowNoChecks?: boolean;
}

export const healthConfigDefaults = { deadlineSeconds: 300, checks: [] as HealthCheckConfig[] };

/** Does this health config judge anything? A trial boot committed on zero checks is a silent
 * rubber stamp, so the device-side commands refuse such a config unless `allowNoChecks` says so. */
export function healthHasChecks(h: HealthConfig): boolean {
  return h.checks.length > 0 || h.dropInDirs?.required !== undefined || h.settle?.bootComplete === true;
}

const nameProp = { type: 'string', minLength: 1, maxLength: 128 } as const;
const requiredProp = { type: 'boolean' } as const;

/** JSON Schema (ajv). Every check is required unless it says `required: false`. */
export const healthConfigSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    deadlineSeconds: { type: 'integer', minimum: 1, maximum: 3600, default: healthConfigDefaults.deadlineSeconds },
    checks: {
      type: 'array',
      default: [],
      items: {
        type: 'object',
        required: ['type'],
        properties: { type: { enum: ['command', 'systemd-unit', 'http', 'broker', 'resources'] } },
        // if/then per type (not oneOf): an error names only the branch the `type` selects.
        allOf: [
          {
            type: 'object',
            additionalProperties: false,
            required: ['type', 'name', 'argv', 'timeoutSeconds'],
            properties: {
              type: { const: 'command' },
              name: nameProp,
              required: requiredProp,
              argv: { type: 'array', minItems: 1, items: { type: 'string', minLength: 1 } },
              timeoutSeconds: { type: 'number', exclusiveMinimum: 0, maximum: 3600 },
              expectExit: { type: 'integer', minimum: 0, maximum: 255 },
            },
          },
          {
            type: 'object',
            additionalProperties: false,
            required: ['type', 'unit'],
            properties: {
              type: { const: 'systemd-unit' },
              name: nameProp,
              required: requiredProp,
              unit: { type: 'string', pattern: '^[A-Za-z0-9_][A-Za-z0-9:_.@\\-]*$', maxLength: 256 },
            },
          },
          {
            type: 'object',
            additionalProperties: false,
            required: ['type', 'url', 'expectStatus'],
            properties: {
              type: { const: 'http' },
              name: nameProp,
              required: requiredProp,
              url: { type: 'string', pattern: '^https?://[^\\s]+$' },
              expectStatus: { type: 'integer', minimum: 100, maximum: 599 },
              timeoutSeconds: { type: 'number', exclusiveMinimum: 0, maximum: 3600 },
            },
          },
          {
            type: 'object',
            additionalProperties: false,
            required: ['type'],
            properties: { type: { const: 'broker' }, name: nameProp, required: requiredProp },
          },
          {
            type: 'object',
            additionalProperties: false,
            required: ['type'],
            properties: {
              type: { const: 'resources' },
              name: nameProp,
              required: requiredProp,
              minFreeMemoryMiB: { type: 'number', minimum: 0 },
              minFreeDiskMiB: { type: 'number', minimum: 0 },
              path: { type: 'string', pattern: '^/' },
              maxTemperatureC: { type: 'number' },
              maxLoad1: { type: 'number', minimum: 0 },
            },
          },
        ].map((branch) => ({ if: { properties: { type: { const: branch.properties.type.const } } }, then: branch })),
      },
    },
    dropInDirs: {
      type: 'object',
      additionalProperties: false,
      properties: {
        required: { type: 'string', pattern: '^/' },
        wanted: { type: 'string', pattern: '^/' },
      },
    },
    settle: {
      type: 'object',
      additionalProperties: false,
      required: ['timeoutSeconds'],
      properties: {
        timeoutSeconds: { type: 'integer', minimum: 1, maximum: 3600 },
        bootComplete: { type: 'boolean' },
      },
    },
    allowNoChecks: { type: 'boolean' },
  },
} as const;

// ---------------------------------------------------------------------------------------------
// Runner
//
// Trade-off: checks from the config run concurrently (a slow HTTP endpoint does not starve a quick
// command of its budget); drop-ins run one at a time in name order, as greenboot runs them. Every
// check gets min(its own timeout, what is left of the overall deadline); a check still unfinished at
// the deadline is reported failed with "deadline exceeded". Results come back in a fixed order:
// config checks, then required.d, then wanted.d. systeminformation is only ever asked about this
// machine (memory, a configured path, sensors, load): nothing from the network or a manifest reaches it.

export type HealthCheckKind = HealthCheckConfig['type'] | 'drop-in' | 'settle';

export interface HealthCheckResult {
  name: string;
  kind: HealthCheckKind;
  /** a failing required check fails the boot; others are only reported. */
  required: boolean;
  ok: boolean;
  /** what the check printed or measured, capped (tail kept), for the rollback report. */
  output: string;
  durationMs: number;
}

export interface HealthReport {
  ok: boolean;
  results: HealthCheckResult[];
  deadlineExceeded: boolean;
}

/** Local resource readings; `systemResources()` is the real one. */
export interface ResourceProbe {
  freeMemoryMiB(): Promise<number>;
  /** free MiB on the filesystem holding `path`; undefined when no mount matches. */
  freeDiskMiB(path: string): Promise<number | undefined>;
  /** main CPU temperature; undefined when the machine has no readable sensor. */
  temperatureC(): Promise<number | undefined>;
  load1(): Promise<number>;
}

export interface HealthDeps {
  runner?: ToolRunner;
  /** HTTP GET for `http` checks (tests inject a double); default node:http/https. */
  httpGet?: typeof httpGet;
  /** broker reachability, e.g. `(ms) => transport.probe(ms)`. Without it a broker check fails. */
  brokerProbe?: (timeoutMs: number) => Promise<boolean>;
  resources?: ResourceProbe;
  /** systemctl executable; default "systemctl". */
  systemctl?: string;
  /** MONOTONIC milliseconds (default `performance.now()`), never the wall clock: an NTP step must
   * not eat the deadline. */
  clock?: () => number;
  /** waits `ms` (default setTimeout); the settle loop polls with it. */
  sleep?: (ms: number) => Promise<void>;
  /** run `config.settle` first (default true); false for `slotflip health`, which is itself one of
   * the jobs the system waits for. */
  settle?: boolean;
  /** settle poll interval, ms; default 2000. */
  settlePollMs?: number;
  /** cap on each result's output, characters; default 4096. */
  outputCap?: number;
}

const MIB = 1024 * 1024;

/** systeminformation, loaded on the first resource reading: only a trial boot's resource checks
 * need it, and an idle daemon should not carry it (issue 16, bench:memory). */
async function si(): Promise<typeof import('systeminformation')> {
  return (await import('systeminformation')).default;
}

/** Resource readings from systeminformation. */
export function systemResources(): ResourceProbe {
  return {
    async freeMemoryMiB() {
      return (await (await si()).mem()).available / MIB;
    },
    async freeDiskMiB(path) {
      const mounts = await (await si()).fsSize();
      const match = mounts
        .filter((m) => path === m.mount || path.startsWith(m.mount.endsWith('/') ? m.mount : `${m.mount}/`))
        .sort((a, b) => b.mount.length - a.mount.length)[0];
      return match ? match.available / MIB : undefined;
    },
    async temperatureC() {
      const t = await (await si()).cpuTemperature();
      return typeof t.main === 'number' && t.main > -273 ? t.main : undefined;
    },
    async load1() {
      return (await (await si()).currentLoad()).avgLoad;
    },
  };
}

function capTail(s: string, cap: number): string {
  return s.length <= cap ? s : `\u2026${s.slice(s.length - cap + 1)}`;
}

function checkName(c: HealthCheckConfig): string {
  if (c.name) return c.name;
  switch (c.type) {
    case 'systemd-unit': return `unit:${c.unit}`;
    case 'http': return `http:${c.url}`;
    case 'broker': return 'broker';
    case 'resources': return 'resources';
    case 'command': return c.argv.join(' ');
  }
}

class DeadlineExceeded extends Error {}

/**
 * Runs every configured check and drop-in within `config.deadlineSeconds`. Never throws for a failing
 * or misbehaving check: each becomes a result with `ok: false` and its output. Idempotent apart from
 * what the checked commands themselves do.
 */
export async function runHealthChecks(config: HealthConfig, deps: HealthDeps = {}): Promise<HealthReport> {
  const now = deps.clock ?? (() => performance.now());
  const runner = deps.runner ?? execTool;
  const cap = deps.outputCap ?? 4096;
  const settled = config.settle && deps.settle !== false
    ? await settle(config.settle, deps, now, runner).catch((e: unknown): HealthCheckResult[] => [
        { name: 'system settled', kind: 'settle', required: true, ok: false, output: `${codeOf(e, 'ERROR')}: ${(e as Error)?.message ?? String(e)}`, durationMs: 0 },
      ])
    : [];
  if (settled.some((r) => !r.ok)) return { ok: false, results: settled, deadlineExceeded: false };
  const start = now();
  const deadlineAt = start + config.deadlineSeconds * 1000;
  // whole ms: tools take integer timeouts, and performance.now() is fractional
  const remaining = (): number => Math.max(0, Math.floor(deadlineAt - now()));
  let deadlineExceeded = false;

  let deadlineTimer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    deadlineTimer = setTimeout(() => reject(new DeadlineExceeded()), config.deadlineSeconds * 1000);
  });
  deadline.catch(() => undefined);

  const timed = async (name: string, kind: HealthCheckKind, required: boolean, body: () => Promise<{ ok: boolean; output: string }>): Promise<HealthCheckResult> => {
    const t0 = now();
    let r: { ok: boolean; output: string };
    try {
      if (remaining() <= 0) throw new DeadlineExceeded();
      r = await Promise.race([body(), deadline]);
    } catch (e) {
      if (e instanceof DeadlineExceeded) {
        deadlineExceeded = true;
        r = { ok: false, output: `deadline of ${config.deadlineSeconds} s exceeded before this check finished` };
      } else {
        r = { ok: false, output: `${codeOf(e, 'ERROR')}: ${(e as Error)?.message ?? String(e)}` };
      }
    }
    return { name, kind, required, ok: r.ok, output: capTail(r.output, cap), durationMs: Math.max(0, Math.round(now() - t0)) };
  };

  const runArgv = async (argv: readonly string[], timeoutMs: number, expectExit: number): Promise<{ ok: boolean; output: string }> => {
    const budget = Math.max(1, Math.min(timeoutMs, remaining()));
    const res = await runner.run(argv[0]!, argv.slice(1), { timeoutMs: budget, maxOutputBytes: 1 << 20 });
    const text = [res.stdout, res.stderr].filter((s) => s.length > 0).join('\n').trimEnd();
    if (res.timedOut) return { ok: false, output: `timed out after ${budget} ms\n${text}`.trimEnd() };
    if (res.code === null) return { ok: false, output: `killed by ${res.signal ?? 'signal'}\n${text}`.trimEnd() };
    const ok = res.code === expectExit;
    return { ok, output: ok ? text : `exit ${res.code} (expected ${expectExit})\n${text}`.trimEnd() };
  };

  const one = (c: HealthCheckConfig): Promise<HealthCheckResult> => {
    const required = c.required !== false;
    const name = checkName(c);
    switch (c.type) {
      case 'command':
        return timed(name, 'command', required, () => runArgv(c.argv, c.timeoutSeconds * 1000, c.expectExit ?? 0));
      case 'systemd-unit':
        return timed(name, 'systemd-unit', required, async () => {
          const r = await runArgv([deps.systemctl ?? 'systemctl', 'is-active', '--', c.unit], 10_000, 0);
          return { ok: r.ok, output: r.output || (r.ok ? 'active' : 'not active') };
        });
      case 'http':
        return timed(name, 'http', required, () => httpCheck(c.url, c.expectStatus, Math.min((c.timeoutSeconds ?? 10) * 1000, remaining()), deps.httpGet ?? httpGet, cap));
      case 'broker':
        return timed(name, 'broker', required, async () => {
          if (!deps.brokerProbe) return { ok: false, output: 'no broker configured for this device' };
          const ok = await deps.brokerProbe(Math.min(30_000, remaining()));
          return { ok, output: ok ? 'broker connected' : 'broker not reachable' };
        });
      case 'resources':
        return timed(name, 'resources', required, () => resourcesCheck(c, deps.resources ?? systemResources()));
    }
  };

  const dropIns = async (dir: string | undefined, required: boolean): Promise<HealthCheckResult[]> => {
    if (!dir) return [];
    let names: string[];
    try {
      names = (await readdir(dir)).sort();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      return [await timed(dir, 'drop-in', required, async () => ({ ok: false, output: `cannot list ${dir}: ${(e as NodeJS.ErrnoException).code ?? 'error'}` }))];
    }
    const out: HealthCheckResult[] = [];
    for (const n of names) {
      const path = join(dir, n);
      const st = await stat(path).catch(() => undefined);
      if (!st?.isFile() || (st.mode & 0o111) === 0) continue; // greenboot runs executables only
      out.push(await timed(path, 'drop-in', required, () => runArgv([path], remaining(), 0)));
    }
    return out;
  };

  try {
    const [checks, req, wanted] = await Promise.all([
      Promise.all(config.checks.map(one)),
      dropIns(config.dropInDirs?.required, true),
      dropIns(config.dropInDirs?.wanted, false),
    ]);
    const results = [...settled, ...checks, ...req, ...wanted];
    return { ok: results.every((r) => r.ok || !r.required), results, deadlineExceeded };
  } finally {
    clearTimeout(deadlineTimer);
  }
}

const STARTING = new Set(['initializing', 'starting']);

/**
 * Waits until systemd has finished starting the system (`systemctl is-system-running` is no longer
 * `initializing`/`starting`, the same condition `--wait` blocks on) within `timeoutSeconds` on the
 * monotonic clock, then optionally reads boot-complete.target's verdict. Returns one result per step;
 * a failed one ends the health run (the checks would race a boot still in progress).
 */
async function settle(cfg: SettleConfig, deps: HealthDeps, now: () => number, runner: ToolRunner): Promise<HealthCheckResult[]> {
  const systemctl = deps.systemctl ?? 'systemctl';
  const sleep = deps.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const poll = deps.settlePollMs ?? 2000;
  const t0 = now();
  const until = t0 + cfg.timeoutSeconds * 1000;
  let state = '';
  let polls = 0;
  for (;;) {
    const r = await runner.run(systemctl, ['is-system-running'], { timeoutMs: 10_000, maxOutputBytes: 4096 });
    polls++;
    state = r.stdout.trim().split('\n')[0] ?? '';
    if (state !== '' && !STARTING.has(state)) break;
    const left = until - now();
    if (left <= 0) break;
    await sleep(Math.min(poll, left));
  }
  const ms = (): number => Math.max(0, Math.round(now() - t0));
  // running: all units up; degraded: some unit failed (the checks and boot-complete judge which)
  const settledOk = state === 'running' || state === 'degraded';
  const out: HealthCheckResult[] = [{
    name: 'system settled',
    kind: 'settle',
    required: true,
    ok: settledOk,
    output: STARTING.has(state) || state === ''
      ? `system still ${state || 'not answering'} after ${cfg.timeoutSeconds} s (${polls} polls of systemctl is-system-running); raise health.settle.timeoutSeconds if this board boots slowly`
      : `systemctl is-system-running: ${state}`,
    durationMs: ms(),
  }];
  if (!settledOk || !cfg.bootComplete) return out;
  const t1 = now();
  const r = await runner.run(systemctl, ['is-active', '--', 'boot-complete.target'], { timeoutMs: 10_000, maxOutputBytes: 4096 });
  const active = r.stdout.trim().split('\n')[0] ?? '';
  out.push({
    name: 'boot-complete.target',
    kind: 'settle',
    required: true,
    ok: active === 'active',
    output: active === 'active'
      ? 'boot-complete.target active'
      : `boot-complete.target is ${active || 'unknown'}: a unit RequiredBy= it failed (slotflip-health.service, greenboot-healthcheck.service, ...); see systemctl list-dependencies --reverse boot-complete.target`,
    durationMs: Math.max(0, Math.round(now() - t1)),
  });
  return out;
}

async function httpCheck(url: string, expectStatus: number, timeoutMs: number, get: typeof httpGet, cap: number): Promise<{ ok: boolean; output: string }> {
  const res = await get(url, { redirect: 'manual', signal: AbortSignal.timeout(Math.max(1, timeoutMs)), headers: { 'accept-encoding': 'identity' } });
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of res.body) {
      chunks.push(chunk);
      size += chunk.length;
      if (size >= cap) break;
    }
  } finally {
    res.cancel();
  }
  const body = Buffer.concat(chunks).toString('utf8').slice(0, cap);
  const ok = res.status === expectStatus;
  const head = `HTTP ${res.status}${ok ? '' : ` (expected ${expectStatus})`}`;
  // keep the status line whole; the body gets what is left of the cap
  const room = Math.max(0, cap - head.length - 2);
  return { ok, output: body ? `${head}\n${body.length > room ? `${body.slice(0, room)}\u2026` : body}` : head };
}

async function resourcesCheck(c: Extract<HealthCheckConfig, { type: 'resources' }>, probe: ResourceProbe): Promise<{ ok: boolean; output: string }> {
  const lines: string[] = [];
  let ok = true;
  const judge = (label: string, value: number | undefined, limit: number, kind: 'min' | 'max'): void => {
    if (value === undefined) {
      ok = false;
      lines.push(`${label}: unavailable on this machine (${kind} ${limit})`);
      return;
    }
    const pass = kind === 'min' ? value >= limit : value <= limit;
    if (!pass) ok = false;
    lines.push(`${label}=${Math.round(value * 100) / 100} (${kind} ${limit}) ${pass ? 'ok' : 'FAIL'}`);
  };
  if (c.minFreeMemoryMiB !== undefined) judge('freeMemoryMiB', await probe.freeMemoryMiB(), c.minFreeMemoryMiB, 'min');
  if (c.minFreeDiskMiB !== undefined) judge(`freeDiskMiB(${c.path ?? '/'})`, await probe.freeDiskMiB(c.path ?? '/'), c.minFreeDiskMiB, 'min');
  if (c.maxTemperatureC !== undefined) judge('temperatureC', await probe.temperatureC(), c.maxTemperatureC, 'max');
  if (c.maxLoad1 !== undefined) judge('load1', await probe.load1(), c.maxLoad1, 'max');
  if (lines.length === 0) lines.push('no thresholds configured');
  return { ok, output: lines.join('\n') };
}

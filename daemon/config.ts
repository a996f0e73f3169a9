/**
 * The daemon's config: one JSON file, validated once at start against one schema (ajv + ajv-formats),
 * with every default in ONE object (`configDefaults`). An invalid config is refused with every
 * problem listed by path (DAEMON_CONFIG_INVALID, `details.errors[] = { path, message }`); unknown
 * keys are errors, as in RAUC.
 *
 * Trade-off: the schema fragments of other modules (broker, health, policies, boot backend) are
 * imported and embedded, so each module owns its keys while the file is still checked in one pass.
 *
 * `hardware` is the board's compatible string, or `{ "path": FILE }` to read it (read-only, capped;
 * a device-tree `compatible` file is NUL-separated: the first, most specific entry is used).
 */
import type { ErrorObject, ValidateFunction } from 'ajv';
import { weakRequire } from '../hal/lazy.js';
import { readFileCapped } from '../hal/atomic-file.js';
import { SlotflipError } from '../hal/errors.js';
import { bootBackendSchema, type BootBackendConfig } from '../hal/registry.js';
import { brokerConfigSchema, type BrokerConfig } from './mqtt.js';
import { healthConfigSchema, healthConfigDefaults, healthHasChecks, type HealthConfig } from './health.js';
import { nodeCron } from './cron-local.js';
import { policiesConfigSchema, policiesConfigDefaults, validatePolicies, type PoliciesConfig } from './policies.js';

export type SourceConfig = { type: 'mqtt' } | { type: 'http'; url: string } | { type: 'dir'; path: string };

export interface SlotConfig {
  /** file or block device holding the slot. */
  path: string;
  /** capacity in bytes for a file slot; block devices report their own. */
  size?: number;
}

export interface Config {
  deviceId: string;
  /** resolved compatible string (read from `hardwarePath` when the file gave a path). */
  hardware: string;
  hardwarePath?: string;
  channel: string;
  stateDir: string;
  trust: {
    /** the root.json shipped inside the read-only OS image (trust anchor). */
    shippedRoot: string;
    sources: SourceConfig[];
    /** where payloads are fetched (target paths are appended); tried in order. */
    payloadBaseUrls: string[];
  };
  board: {
    slots: { A: SlotConfig; B: SlotConfig };
    boot: BootBackendConfig;
    /** trial boots before the bootloader falls back. */
    tries: number;
  };
  broker?: BrokerConfig;
  health: HealthConfig;
  policies: PoliciesConfig;
  poll: { cron: string };
  /** the wait before a failed or interrupted cycle is retried, doubling per further failure in a row
   * (with jitter) up to `maxDelaySeconds` (see UpdateService). Always set by `resolveConfig`;
   * optional for configs built in code (`configDefaults` then apply). */
  retry?: { delaySeconds: number; maxDelaySeconds: number };
  /** the download budget of one update attempt (see daemon/install/installer.ts `BudgetOptions`).
   * Always set by `resolveConfig`; optional for configs built in code (`configDefaults` apply). */
  download?: {
    /** verification or decompression failures of one chunk from one mirror before the next mirror
     * is tried; when every mirror failed it this often the attempt ends failed
     * (INSTALL_PAYLOAD_CORRUPT). */
    maxChunkFailures: number;
    /** payload bytes one attempt may receive, as a multiple of the payload's length (one chunk of
     * slack on top); past it the attempt ends failed (INSTALL_BUDGET_EXHAUSTED). */
    maxBytesFactor: number;
    /** time one attempt may spend downloading, minutes, summed over restarts; past it the attempt
     * ends failed (INSTALL_BUDGET_EXHAUSTED). */
    maxMinutes: number;
  };
  /** how an update reaches the inactive slot. Always set by `resolveConfig`; optional for configs
   * built in code (`configDefaults` apply). */
  install?: {
    /** 'auto': by delta when the release publishes one (format 2 `delta` section) and this Node has
     * zstd, copying what either slot already holds and fetching only the rest; the full payload
     * otherwise, or when the delta cannot be used (daemon/install/route.ts). 'off': always the full
     * payload. */
    delta: 'auto' | 'off';
  };
  reboot: {
    command: string[];
    /** how a backend's reboot argument (rpi-tryboot: `0 tryboot`) reaches the kernel: 'logind'
     * asks systemd-logind to store it (SetRebootParameter over D-Bus, `busctl`), then runs `command`
     * as is; 'append' appends it to `command`'s argv. Default: 'logind' when `command` is
     * systemctl (whose own `systemctl reboot ARG` writes /run/systemd/reboot-param itself, which
     * the unit's sandbox makes read-only), 'append' for any other command. */
    parameter?: 'logind' | 'append';
    /** how long the daemon waits, after `command` exited 0, for the shutdown to stop it; past that
     * the reboot step fails with DAEMON_REBOOT_DID_NOT_HAPPEN and is retried. */
    graceSeconds?: number;
  };
  log: { level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' };
  /** the data partition (README "Device state"): what `slotflip factory-reset` wipes at the next
   * boot. Always set by `resolveConfig`; optional for configs built in code. */
  data?: {
    /** where the data partition is mounted (it holds /var, the /etc overrides, slotflip's state). */
    dir: string;
    /** paths relative to `dir` that `factory-reset --keep-identity` keeps: the device's identity
     * (its config, client certificate) and slotflip's trust and anti-rollback state. */
    identity: string[];
    /** where the booted slot's root file system is: `/` on a device; a release's migration
     * (`custom.migration.path`) is looked up under it. Emulated boards and tests point it elsewhere. */
    imageRoot?: string;
    /** the size budget of the snapshot taken before a release's data migration (bytes). */
    snapshotMaxBytes?: number;
    /** the reset modes a signed fleet command may ask for (`slotflip fleet factory-reset`); empty:
     * the device refuses every fleet reset. Default `full` and `keep-identity`: both keep the
     * anti-rollback floor and trust anchors, which `as-shipped` forgets (opt in for refurbishing). */
    fleetResetModes?: ('full' | 'keep-identity' | 'as-shipped')[];
  };
  /** a data migration run on the first boot of every trial slot, before its health checks, after a
   * snapshot of `paths` (relative to data.dir); restored when the attempt does not commit
   * (daemon/migration.ts). Absent: no migration. */
  migration?: { argv: string[]; paths: string[]; maxBytes: number; timeoutSeconds: number };
}

/** Every default, in one place. */
export const configDefaults = {
  channel: 'stable',
  stateDir: '/var/lib/slotflip',
  trustSources: [{ type: 'mqtt' }] as SourceConfig[],
  tries: 3,
  poll: { cron: '17 */6 * * *' },
  retry: { delaySeconds: 60, maxDelaySeconds: 3600 },
  download: { maxChunkFailures: 3, maxBytesFactor: 3, maxMinutes: 24 * 60 },
  install: { delta: 'auto' as const },
  reboot: { command: ['systemctl', 'reboot'], graceSeconds: 300 },
  log: { level: 'info' as const },
  data: { dir: '/data', identity: ['etc/upper/slotflip', 'var/lib/slotflip'], fleetResetModes: ['full', 'keep-identity'] as ('full' | 'keep-identity' | 'as-shipped')[] },
  health: healthConfigDefaults,
  policies: policiesConfigDefaults,
} as const;

const idPattern = '^[A-Za-z0-9._:-]+$';
const absPath = { type: 'string', pattern: '^/', maxLength: 4096 } as const;
const httpUrl = { type: 'string', format: 'uri', pattern: '^https?://' } as const;
const slotSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['path'],
  properties: { path: absPath, size: { type: 'integer', minimum: 1 } },
} as const;

export const configSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['deviceId', 'hardware', 'trust', 'board'],
  properties: {
    deviceId: { type: 'string', minLength: 1, maxLength: 128, pattern: idPattern },
    hardware: {
      oneOf: [
        { type: 'string', minLength: 1, maxLength: 256 },
        { type: 'object', additionalProperties: false, required: ['path'], properties: { path: absPath } },
      ],
    },
    channel: { type: 'string', minLength: 1, maxLength: 64, pattern: idPattern, default: configDefaults.channel },
    stateDir: { ...absPath, default: configDefaults.stateDir },
    trust: {
      type: 'object',
      additionalProperties: false,
      required: ['shippedRoot'],
      properties: {
        shippedRoot: absPath,
        sources: {
          type: 'array',
          minItems: 1,
          default: configDefaults.trustSources,
          items: {
            type: 'object',
            required: ['type'],
            properties: { type: { enum: ['mqtt', 'http', 'dir'] } },
            allOf: [
              { if: { properties: { type: { const: 'mqtt' } } }, then: { additionalProperties: false, properties: { type: {} } } },
              { if: { properties: { type: { const: 'http' } } }, then: { additionalProperties: false, required: ['url'], properties: { type: {}, url: httpUrl } } },
              { if: { properties: { type: { const: 'dir' } } }, then: { additionalProperties: false, required: ['path'], properties: { type: {}, path: absPath } } },
            ],
          },
        },
        payloadBaseUrls: { type: 'array', items: httpUrl, default: [] },
      },
    },
    board: {
      type: 'object',
      additionalProperties: false,
      required: ['slots', 'boot'],
      properties: {
        slots: { type: 'object', additionalProperties: false, required: ['A', 'B'], properties: { A: slotSchema, B: slotSchema } },
        boot: bootBackendSchema,
        tries: { type: 'integer', minimum: 1, maximum: 10, default: configDefaults.tries },
      },
    },
    broker: brokerConfigSchema,
    health: { ...healthConfigSchema, default: {} },
    policies: { ...policiesConfigSchema, default: {} },
    poll: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: { cron: { type: 'string', minLength: 9, maxLength: 200, default: configDefaults.poll.cron } },
    },
    retry: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        delaySeconds: { type: 'integer', minimum: 1, maximum: 86_400, default: configDefaults.retry.delaySeconds },
        maxDelaySeconds: { type: 'integer', minimum: 1, maximum: 7 * 86_400, default: configDefaults.retry.maxDelaySeconds },
      },
    },
    download: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        maxChunkFailures: { type: 'integer', minimum: 1, maximum: 100, default: configDefaults.download.maxChunkFailures },
        maxBytesFactor: { type: 'number', minimum: 1.1, maximum: 1000, default: configDefaults.download.maxBytesFactor },
        maxMinutes: { type: 'integer', minimum: 1, maximum: 30 * 24 * 60, default: configDefaults.download.maxMinutes },
      },
    },
    install: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        delta: { enum: ['auto', 'off'], default: configDefaults.install.delta },
      },
    },
    reboot: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        command: { type: 'array', minItems: 1, items: { type: 'string', minLength: 1 }, default: configDefaults.reboot.command },
        parameter: { enum: ['logind', 'append'] },
        graceSeconds: { type: 'integer', minimum: 1, maximum: 86_400, default: configDefaults.reboot.graceSeconds },
      },
    },
    log: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: { level: { enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace'], default: configDefaults.log.level } },
    },
    data: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        dir: { ...absPath, default: configDefaults.data.dir },
        // relative to dir, no ".." segment (the reset must never reach outside the data partition)
        identity: {
          type: 'array',
          maxItems: 64,
          items: { type: 'string', minLength: 1, maxLength: 1024, pattern: '^(?!/)(?!.*(^|/)\\.\\.(/|$)).+$' },
          default: configDefaults.data.identity,
        },
        imageRoot: { ...absPath, default: '/' },
        snapshotMaxBytes: { type: 'integer', minimum: 0, default: 64 * 1024 * 1024 },
        fleetResetModes: { type: 'array', uniqueItems: true, maxItems: 3, items: { enum: ['full', 'keep-identity', 'as-shipped'] }, default: configDefaults.data.fleetResetModes },
      },
    },
    migration: {
      type: 'object',
      additionalProperties: false,
      required: ['argv', 'paths'],
      properties: {
        argv: { type: 'array', minItems: 1, items: { type: 'string', minLength: 1 } },
        paths: { type: 'array', minItems: 1, maxItems: 64, items: { type: 'string', minLength: 1, maxLength: 1024, pattern: '^(?!/)(?!.*(^|/)\\.\\.(/|$)).+$' } },
        maxBytes: { type: 'integer', minimum: 0, default: 64 * 1024 * 1024 },
        timeoutSeconds: { type: 'integer', minimum: 1, maximum: 86_400, default: 300 },
      },
    },
  },
} as const;

export interface ConfigProblem {
  /** JSON pointer into the config file (`/board/slots/A/path`); `/` for the root. */
  path: string;
  message: string;
}

// Ajv standalone code generated from `configSchema` (test/tools/gen-validators.ts, checked in):
// nothing compiles the schema at run time and Ajv's compiler is never loaded (issue 16: ~60 modules,
// and the compile at every start). Held weakly: a daemon validates its config once at start, and the
// validator's code (~250 KB of source, ~1.5 MiB of heap once run) would otherwise stay in an idle
// daemon's heap for good; loaded again if ever needed (a test's loop keeps it while in use).
const validatorModule = weakRequire<{ validateConfigSchema: ValidateFunction }>(new URL('./config-validate.generated.cjs', import.meta.url));

/** Validates a parsed config object (defaults filled in place of a deep copy). Pure: returns the
 * problems (empty when valid) and the defaulted value. `hardware` is left unresolved. */
export function validateConfig(input: unknown): { ok: true; value: Record<string, unknown> } | { ok: false; errors: ConfigProblem[] } {
  const value = structuredClone(input);
  const validator = validatorModule().validateConfigSchema;
  const valid = validator(value);
  // what the schema cannot say (cron expressions, time windows) is checked in the same run, on
  // whatever parts are well-formed, so one run lists every problem
  const errors = [...(valid ? [] : formatErrors(validator.errors ?? [])), ...semanticProblems(value)];
  if (valid && errors.length === 0) return { ok: true, value: value as Record<string, unknown> };
  return { ok: false, errors };
}

/** A `oneOf` over a discriminated union reports every branch; keep only the branch whose `type`
 * matched (its errors are the useful ones), or the oneOf summary when none did. */
function pruneBranches(errors: ErrorObject[]): ErrorObject[] {
  const branchOf = (e: ErrorObject): string | undefined => /^(.*\/oneOf\/\d+)\//.exec(e.schemaPath)?.[1];
  const wrong = new Set(errors.filter((e) => e.keyword === 'const' && e.instancePath.endsWith('/type')).map(branchOf).filter((b): b is string => b !== undefined));
  const kept = errors.filter((e) => {
    const b = branchOf(e);
    return b === undefined || !wrong.has(b);
  });
  const branchErrors = new Set(kept.map(branchOf).filter((b) => b !== undefined).map((b) => b!.replace(/\/\d+$/, '')));
  return kept.filter((e) => !(e.keyword === 'oneOf' && branchErrors.has(e.schemaPath)));
}

function formatErrors(all: ErrorObject[]): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  const seen = new Set<string>();
  for (const e of pruneBranches(all)) {
    // `if` wrappers repeat what their `then` branches said; the branch errors are the useful ones
    if (e.keyword === 'if') continue;
    let path = e.instancePath || '/';
    let message = e.message ?? 'is invalid';
    if (e.keyword === 'additionalProperties') {
      const key = (e.params as { additionalProperty: string }).additionalProperty;
      path = `${e.instancePath}/${key}`;
      message = 'unknown key (remove it, or check its spelling)';
    } else if (e.keyword === 'required') {
      path = `${e.instancePath}/${(e.params as { missingProperty: string }).missingProperty}`;
      message = 'is required';
    } else if (e.keyword === 'enum') {
      message = `must be one of ${JSON.stringify((e.params as { allowedValues: unknown[] }).allowedValues)}`;
    }
    const k = `${path}\0${message}`;
    if (seen.has(k)) continue;
    seen.add(k);
    out.push({ path, message });
  }
  return out;
}

export interface LoadConfigOptions {
  /** cap on the config file's size, bytes. */
  maxBytes?: number;
}

/** Reads, validates and resolves the config at `path`. Throws DAEMON_CONFIG_INVALID (with
 * `details.errors[]`) when it is not valid, DAEMON_CONFIG_READ when it cannot be read. */
export async function loadConfig(path: string, options: LoadConfigOptions = {}): Promise<Config> {
  let text: string;
  try {
    text = (await readFileCapped(path, options.maxBytes ?? 1 << 20)).toString('utf8');
  } catch (cause) {
    throw new SlotflipError('DAEMON_CONFIG_READ', `cannot read config ${path}; check the --config path and its permissions`, { cause, details: { path } });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (cause) {
    throw invalid(path, [{ path: '/', message: `not valid JSON: ${(cause as Error).message}` }]);
  }
  return resolveConfig(parsed, path);
}

/** Validates an already-parsed config and resolves `hardware` (reads the file it names). */
export async function resolveConfig(parsed: unknown, source = '<config>'): Promise<Config> {
  const r = validateConfig(parsed);
  if (!r.ok) throw invalid(source, r.errors);
  const v = r.value as unknown as Omit<Config, 'hardware'> & { hardware: string | { path: string } };
  if (typeof v.hardware === 'string') return v as Config;
  const hardwarePath = v.hardware.path;
  let hardware: string;
  try {
    const raw = (await readFileCapped(hardwarePath, 4096)).toString('utf8');
    hardware = raw.split('\0')[0]!.trim();
  } catch (cause) {
    throw invalid(source, [{ path: '/hardware/path', message: `cannot read ${hardwarePath}: ${(cause as NodeJS.ErrnoException).code ?? 'error'}` }]);
  }
  if (!hardware) throw invalid(source, [{ path: '/hardware/path', message: `${hardwarePath} holds no compatible string` }]);
  return { ...v, hardware, hardwarePath } as Config;
}

/** What a schema cannot say: cron expressions (poll schedule, maintenance windows), time zones,
 * the retry delays' order. Runs on a value the schema may have rejected: every part is checked only
 * where it has the right shape (the schema reports the rest). */
function semanticProblems(v: unknown): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  if (typeof v !== 'object' || v === null) return out;
  const o = v as Record<string, unknown>;
  const poll = o.poll as Record<string, unknown> | undefined;
  if (poll && typeof poll.cron === 'string' && poll.cron.length >= 9 && !nodeCron().validate(poll.cron)) {
    out.push({ path: '/poll/cron', message: `"${poll.cron}" is not a valid cron expression` });
  }
  const retry = o.retry as Record<string, unknown> | undefined;
  if (retry && typeof retry.delaySeconds === 'number' && typeof retry.maxDelaySeconds === 'number' && retry.maxDelaySeconds < retry.delaySeconds) {
    out.push({ path: '/retry/maxDelaySeconds', message: `must be at least /retry/delaySeconds (${retry.delaySeconds})` });
  }
  for (const p of validatePolicies(wellFormedWindows(o.policies))) {
    const i = p.indexOf(': ');
    out.push(i > 0 ? { path: p.slice(0, i), message: p.slice(i + 2) } : { path: '/policies', message: p });
  }
  return out;
}

/** The policies with only the maintenance windows whose `cron` is a string kept (a window the
 * schema rejects for its shape is reported there): what `validatePolicies` can read safely. The
 * windows' indexes are kept (others become placeholders), so the paths stay right. */
function wellFormedWindows(policies: unknown): PoliciesConfig {
  const mw = (policies as { maintenanceWindows?: unknown } | undefined)?.maintenanceWindows;
  if (typeof mw !== 'object' || mw === null) return {} as PoliciesConfig;
  const windows: Record<string, unknown[]> = {};
  for (const [phase, list] of Object.entries(mw)) {
    if (!Array.isArray(list)) continue;
    windows[phase] = list.map((w: unknown) => {
      const x = (typeof w === 'object' && w !== null ? w : {}) as { cron?: unknown; timezone?: unknown };
      if (typeof x.cron !== 'string') return { cron: '* * * * *', durationMinutes: 1 };
      return { cron: x.cron, durationMinutes: 1, ...(typeof x.timezone === 'string' ? { timezone: x.timezone } : {}) };
    });
  }
  return { maintenanceWindows: windows } as unknown as PoliciesConfig;
}

function invalid(source: string, errors: ConfigProblem[]): SlotflipError {
  const list = errors.map((e) => `  ${e.path}: ${e.message}`).join('\n');
  return new SlotflipError('DAEMON_CONFIG_INVALID', `config ${source} is invalid (${errors.length} problem${errors.length === 1 ? '' : 's'}); fix these and start again:\n${list}`, {
    details: { path: source, errors },
  });
}

/**
 * The device-side commands that judge a boot (`slotflip daemon`, `slotflip health`) refuse a health
 * config that checks nothing: a trial committed on zero checks is a rubber stamp nobody asked for.
 * `"health": { "allowNoChecks": true }` says it was meant. Throws DAEMON_HEALTH_NO_CHECKS naming the
 * config file and the field. (Not part of `loadConfig`: the manufacturer's and read-only commands
 * judge no boot and keep working on such a config.)
 */
export function requireHealthChecks(config: Pick<Config, 'health'>, source: string): void {
  if (config.health.allowNoChecks === true || healthHasChecks(config.health)) return;
  throw new SlotflipError(
    'DAEMON_HEALTH_NO_CHECKS',
    `config ${source}: /health configures no check (no checks, no dropInDirs.required, no settle.bootComplete), so every trial boot would be committed unjudged; add checks (e.g. "settle": { "timeoutSeconds": 600, "bootComplete": true }), or set "health": { "allowNoChecks": true } if that is really what you want`,
    { details: { path: source, field: '/health' } },
  );
}

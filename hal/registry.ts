/**
 * The one place boot-control backends are registered. Adding a bootloader touches the `backends` map
 * below, the config union, the schema, and one new file in hal/backends/.
 *
 * Every backend is wrapped by `withGuards` (hal/backends/core.ts): serialized calls, refusal to leave
 * the device without a good slot, tries clamped to what the mechanism can count.
 */
import { execTool, type ToolRunner } from './exec.js';
import { withGuards, type BackendCore, type GuardedBootControl } from './backends/core.js';
import { createEmulatedBackend, type EmulatedBackendConfig } from './backends/emulated.js';
import { createUbootBackend, type UbootBackendConfig } from './backends/uboot.js';
import { createGrubBackend, type GrubBackendConfig } from './backends/grub.js';
import { createRpiTrybootBackend, type RpiTrybootBackendConfig } from './backends/rpi-tryboot.js';
import { createSystemdBootBackend, type SystemdBootBackendConfig } from './backends/systemd-boot.js';
import { createCustomBackend, type CustomBackendConfig } from './backends/custom.js';

export type { EmulatedBackendConfig, UbootBackendConfig, GrubBackendConfig, RpiTrybootBackendConfig, SystemdBootBackendConfig, CustomBackendConfig, GuardedBootControl };
export type { BootControlExtras } from './backends/core.js';

export type BootBackendConfig = EmulatedBackendConfig | UbootBackendConfig | GrubBackendConfig | RpiTrybootBackendConfig | SystemdBootBackendConfig | CustomBackendConfig;
export type BootBackendType = BootBackendConfig['type'];

export interface BootControlDeps {
  /** runs fw_printenv/fw_setenv/grub-editenv/custom executables; default execTool. */
  runner?: ToolRunner;
}

type Factories = { [K in BootBackendType]: (cfg: Extract<BootBackendConfig, { type: K }>, runner: ToolRunner) => BackendCore };

const backends: Factories = {
  emulated: (cfg) => createEmulatedBackend(cfg),
  uboot: (cfg, runner) => createUbootBackend(cfg, runner),
  grub: (cfg, runner) => createGrubBackend(cfg, runner),
  'rpi-tryboot': (cfg) => createRpiTrybootBackend(cfg),
  'systemd-boot': (cfg) => createSystemdBootBackend(cfg),
  custom: (cfg, runner) => createCustomBackend(cfg, runner),
};

export const BOOT_BACKEND_TYPES = Object.keys(backends) as BootBackendType[];

/** Builds the boot control for a validated config (validate with `bootBackendSchema` first). */
export function createBootControl(config: BootBackendConfig, deps: BootControlDeps = {}): GuardedBootControl {
  const make = backends[config.type] as (cfg: BootBackendConfig, runner: ToolRunner) => BackendCore;
  return withGuards(make(config, deps.runner ?? execTool));
}

const str = { type: 'string', minLength: 1, maxLength: 4096 } as const;
const slotPair = (item: object) => ({ type: 'object', additionalProperties: false, required: ['A', 'B'], properties: { A: item, B: item } }) as const;
const partitionPair = slotPair({ type: 'integer', minimum: 1, maximum: 255 });
const cmdline = {
  type: 'object',
  additionalProperties: false,
  properties: { path: str, key: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,64}$' }, values: slotPair({ type: 'string', minLength: 1, maxLength: 256, pattern: '^\\S+$' }) },
} as const;
const varName = { type: 'string', pattern: '^[A-Za-z0-9_]{1,64}$' } as const;
const timeoutMs = { type: 'integer', minimum: 100, maximum: 600_000 } as const;

/** JSON schema (draft-07, ajv) of BootBackendConfig: a discriminated union on `type`, unknown keys
 * rejected. The daemon's config schema embeds it. */
export const bootBackendSchema = {
  type: 'object',
  required: ['type'],
  properties: { type: { enum: BOOT_BACKEND_TYPES } },
  oneOf: [
    { type: 'object', additionalProperties: false, required: ['type', 'stateFile'], properties: { type: { const: 'emulated' }, stateFile: str, cmdline } },
    {
      type: 'object',
      additionalProperties: false,
      required: ['type', 'convention', 'fwEnvConfig'],
      properties: { type: { const: 'uboot' }, convention: { enum: ['rauc', 'mender'] }, fwEnvConfig: str, fwPrintenv: str, fwSetenv: str, attempts: { type: 'integer', minimum: 1, maximum: 99 }, partitions: partitionPair, trialVariable: varName, cmdline, timeoutMs },
    },
    {
      type: 'object',
      additionalProperties: false,
      required: ['type', 'convention', 'envFile'],
      properties: { type: { const: 'grub' }, convention: { enum: ['greenboot', 'rauc'] }, envFile: str, grubEditenv: str, slotVariable: varName, trialVariable: varName, cmdline, timeoutMs },
    },
    {
      type: 'object',
      additionalProperties: false,
      required: ['type', 'bootDir'],
      properties: { type: { const: 'rpi-tryboot' }, bootDir: str, partitions: partitionPair, trybootFlagFile: str, cmdline },
    },
    {
      type: 'object',
      additionalProperties: false,
      required: ['type', 'esp'],
      properties: { type: { const: 'systemd-boot' }, esp: str, entries: slotPair({ type: 'string', pattern: '^[A-Za-z0-9_.@-]{1,64}$' }), cmdline },
    },
    {
      type: 'object',
      additionalProperties: false,
      required: ['type', 'command'],
      properties: { type: { const: 'custom' }, command: str, args: { type: 'array', maxItems: 32, items: { type: 'string', maxLength: 4096 } }, maxTries: { type: 'integer', minimum: 1, maximum: 99 }, timeoutMs },
    },
  ],
} as const;

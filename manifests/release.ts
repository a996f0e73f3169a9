/**
 * The slotflip custom block of a TUF target (manifests/types.ts ReleaseCustom), validated with ajv
 * before anything reads it, and the conversion of a verified TUF target into a Release.
 *
 * Two schemas, chosen by `custom.slotflip`: 1 (chunk list inline, what older daemons read; its
 * chunk entries allow no other field) and 2 (the payload names an index target; the chunk list is
 * in that file, parsed by chunk-index.ts).
 */
import type { ValidateFunction } from 'ajv';
import { weakRequire } from '../hal/lazy.js';
import type { TargetFile } from '@tufjs/models';
import type { Release, ReleaseCustom } from './types.js';
import { releaseMigrationSchema } from './migration.js';

const sha256 = { type: 'string', pattern: '^[0-9a-f]{64}$' } as const;
const nonNeg = { type: 'integer', minimum: 0 } as const;

const commonProperties = {
  hardware: { type: 'array', minItems: 1, maxItems: 256, items: { type: 'string', minLength: 1, maxLength: 256 } },
  version: { type: 'string', minLength: 1, maxLength: 128 },
  securityVersion: { type: 'integer', minimum: 0, maximum: 2 ** 31 - 1 },
  channel: { type: 'string', minLength: 1, maxLength: 128 },
  devices: { type: 'array', maxItems: 100000, items: { type: 'string', minLength: 1, maxLength: 256 } },
  migration: releaseMigrationSchema,
  rollout: {
    type: 'object',
    additionalProperties: false,
    required: ['percent'],
    properties: {
      percent: { type: 'number', minimum: 0, maximum: 100 },
      halted: { type: 'boolean' },
      waves: {
        type: 'array',
        maxItems: 100,
        items: {
          type: 'object',
          additionalProperties: false,
          required: ['at', 'percent'],
          properties: { at: { type: 'string', maxLength: 64 }, percent: { type: 'number', minimum: 0, maximum: 100 } },
        },
      },
    },
  },
} as const;

const required = ['slotflip', 'hardware', 'version', 'securityVersion', 'channel', 'payload'] as const;

export const releaseCustomSchema = {
  type: 'object',
  additionalProperties: false,
  required,
  properties: {
    slotflip: { const: 1 },
    ...commonProperties,
    payload: {
      type: 'object',
      additionalProperties: false,
      required: ['compression', 'size', 'sha256', 'chunkSize', 'chunks'],
      properties: {
        compression: { enum: ['zstd', 'gzip', 'none'] },
        size: nonNeg,
        sha256,
        chunkSize: { type: 'integer', minimum: 1 },
        chunks: {
          type: 'array',
          items: {
            type: 'object',
            additionalProperties: false,
            required: ['sha256', 'offset', 'length'],
            properties: { sha256, offset: nonNeg, length: nonNeg },
          },
        },
      },
    },
  },
} as const;

/** Format 2: the payload without its chunk list; `index.target` names the index target. */
export const releaseCustomV2Schema = {
  type: 'object',
  additionalProperties: false,
  required,
  properties: {
    slotflip: { const: 2 },
    ...commonProperties,
    payload: {
      type: 'object',
      additionalProperties: false,
      required: ['compression', 'size', 'sha256', 'chunkSize', 'index'],
      properties: {
        compression: { enum: ['zstd', 'gzip', 'none'] },
        size: nonNeg,
        sha256,
        chunkSize: { type: 'integer', minimum: 1 },
        index: {
          type: 'object',
          additionalProperties: false,
          required: ['target'],
          properties: { target: { type: 'string', minLength: 1, maxLength: 255 } },
        },
      },
    },
  },
} as const;

// Ajv standalone code generated from the two schemas above (test/tools/gen-validators.ts, checked in):
// no schema compiled and no Ajv compiler loaded at run time
// no schema compiled and no Ajv compiler loaded at run time; held weakly (hal/lazy.ts): loaded by a
// check that reads releases, freed in the idle time between checks
const validators = weakRequire<{ validateV1: ValidateFunction; validateV2: ValidateFunction }>(new URL('./release-validate.generated.cjs', import.meta.url));

export type ReleaseParse =
  | { kind: 'release'; release: Release }
  | { kind: 'not-slotflip' }
  | { kind: 'invalid'; message: string };

/** A verified TUF target → a Release, if its custom block is a slotflip release. Pure. */
export function releaseFromTarget(target: TargetFile): ReleaseParse {
  const custom = target.custom as Record<string, unknown> | undefined;
  if (!custom || typeof custom !== 'object' || !('slotflip' in custom)) return { kind: 'not-slotflip' };
  const { validateV1, validateV2 } = validators();
  const validate = custom['slotflip'] === 2 ? validateV2 : validateV1;
  if (!validate(custom)) {
    const e = validate.errors?.[0];
    const hint = custom['slotflip'] !== 1 && custom['slotflip'] !== 2 ? ` (format ${JSON.stringify(custom['slotflip'])} is newer than this daemon: update it with a format 1 or 2 release first)` : '';
    return { kind: 'invalid', message: `target ${target.path}: custom${e?.instancePath ?? ''} ${e?.message ?? 'invalid'}${hint}` };
  }
  const c = custom as unknown as ReleaseCustom;
  if (c.slotflip === 1) {
    const chunks = Math.ceil(c.payload.size / c.payload.chunkSize);
    if (c.payload.chunks.length !== chunks) {
      return { kind: 'invalid', message: `target ${target.path}: payload lists ${c.payload.chunks.length} chunks, size/chunkSize needs ${chunks}` };
    }
  }
  return { kind: 'release', release: { targetName: target.path, length: target.length, hashes: { ...target.hashes }, custom: c } };
}

/** The index target a format 2 release names (undefined for format 1). Pure. */
export function indexTargetOf(release: Release): string | undefined {
  return release.custom.slotflip === 2 ? release.custom.payload.index.target : undefined;
}

/** `release` with its index target's signed length and hashes attached (format 2), from the
 * TargetFile the TUF client found for that name (undefined: not listed, left for selection to refuse
 * with MANIFEST_INDEX_NOT_FOUND). Pure. */
export function withIndexTarget(release: Release, target: TargetFile | undefined): Release {
  if (!target || indexTargetOf(release) !== target.path) return release;
  return { ...release, index: { targetName: target.path, length: target.length, hashes: { ...target.hashes } } };
}

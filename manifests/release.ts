/**
 * The slotflip custom block of a TUF target (manifests/types.ts ReleaseCustom), validated with ajv
 * before anything reads it, and the conversion of a verified TUF target into a Release.
 */
import { Ajv } from 'ajv';
import type { TargetFile } from '@tufjs/models';
import type { Release, ReleaseCustom } from './types.js';
import { releaseMigrationSchema } from './migration.js';

const sha256 = { type: 'string', pattern: '^[0-9a-f]{64}$' } as const;
const nonNeg = { type: 'integer', minimum: 0 } as const;

export const releaseCustomSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['slotflip', 'hardware', 'version', 'securityVersion', 'channel', 'payload'],
  properties: {
    slotflip: { const: 1 },
    hardware: { type: 'array', minItems: 1, maxItems: 256, items: { type: 'string', minLength: 1, maxLength: 256 } },
    version: { type: 'string', minLength: 1, maxLength: 128 },
    securityVersion: { type: 'integer', minimum: 0, maximum: 2 ** 31 - 1 },
    channel: { type: 'string', minLength: 1, maxLength: 128 },
    devices: { type: 'array', maxItems: 100000, items: { type: 'string', minLength: 1, maxLength: 256 } },
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
    migration: releaseMigrationSchema,
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

const ajv = new Ajv({ allErrors: false, strict: true });
const validateCustom = ajv.compile(releaseCustomSchema);

export type ReleaseParse =
  | { kind: 'release'; release: Release }
  | { kind: 'not-slotflip' }
  | { kind: 'invalid'; message: string };

/** A verified TUF target → a Release, if its custom block is a slotflip release. Pure. */
export function releaseFromTarget(target: TargetFile): ReleaseParse {
  const custom = target.custom as Record<string, unknown> | undefined;
  if (!custom || typeof custom !== 'object' || !('slotflip' in custom)) return { kind: 'not-slotflip' };
  if (!validateCustom(custom)) {
    const e = validateCustom.errors?.[0];
    return { kind: 'invalid', message: `target ${target.path}: custom${e?.instancePath ?? ''} ${e?.message ?? 'invalid'}` };
  }
  const c = custom as unknown as ReleaseCustom;
  const chunks = Math.ceil(c.payload.size / c.payload.chunkSize);
  if (c.payload.chunks.length !== chunks) {
    return { kind: 'invalid', message: `target ${target.path}: payload lists ${c.payload.chunks.length} chunks, size/chunkSize needs ${chunks}` };
  }
  return { kind: 'release', release: { targetName: target.path, length: target.length, hashes: { ...target.hashes }, custom: c } };
}

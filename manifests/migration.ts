/**
 * A release's data migration (issue 18): `custom.migration` names an executable inside the signed
 * image and the data-partition paths it may change. The device runs it from the new slot's root on
 * the trial's first boot, before the health checks, with an argument array (never a shell) and
 * SLOTFLIP_DATA_DIR set; the named paths are snapshotted first and restored if the trial does not
 * commit (daemon/migration.ts).
 *
 * Trade-off: the rules are checked twice: by `release add` (a manufacturer never signs a migration
 * some device would refuse) and by the schema on the device (nothing unchecked reaches `execFile`).
 * The device adds what only it can see: the file is a regular executable on the root file system
 * of the booted slot, not on the data partition.
 */
import type { ReleaseMigration } from './types.js';

/** Trees a device writes (the data partition and its overlays, runtime and kernel file systems):
 * an executable there is not "inside the signed image". */
export const WRITABLE_TREES = ['/data', '/etc', '/var', '/tmp', '/run', '/home', '/root', '/srv', '/mnt', '/media', '/proc', '/sys', '/dev', '/boot'] as const;

const SEGMENT = '[A-Za-z0-9_+@-][A-Za-z0-9._+@-]*';
/** Absolute, normalized, a conservative alphabet; no segment starts with `.` (so no `.`/`..`), no
 * `//`, no trailing `/`. */
const IMAGE_PATH = new RegExp(`^(/${SEGMENT})+$`);
/** Relative to the data dir, no `..` segment (same rule as config `data.identity`). */
const DATA_PATH = '^(?!/)(?!.*(^|/)\\.\\.(/|$)).+$';

export const releaseMigrationSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['path', 'snapshot'],
  properties: {
    path: { type: 'string', minLength: 2, maxLength: 1024, pattern: IMAGE_PATH.source },
    timeoutSeconds: { type: 'integer', minimum: 1, maximum: 86_400 },
    snapshot: { type: 'array', minItems: 1, maxItems: 64, items: { type: 'string', minLength: 1, maxLength: 1024, pattern: DATA_PATH } },
  },
} as const;

/** Why `m` is not a migration a device would run, or null. Pure. */
export function migrationProblem(m: ReleaseMigration): string | null {
  if (typeof m.path !== 'string' || !IMAGE_PATH.test(m.path) || m.path.length > 1024) {
    return `migration path ${JSON.stringify(m.path)} must be an absolute, normalized path of an executable inside the image (letters, digits, "._+@-", no "." or ".." segment), e.g. /usr/lib/slotflip/migrate-1.2`;
  }
  const under = WRITABLE_TREES.find((w) => m.path === w || m.path.startsWith(`${w}/`));
  if (under) return `migration path ${m.path} is under ${under}, which a device writes (data partition, overlays, runtime): ship the executable in the image, e.g. under /usr/lib`;
  if (m.timeoutSeconds !== undefined && (!Number.isSafeInteger(m.timeoutSeconds) || m.timeoutSeconds < 1 || m.timeoutSeconds > 86_400)) {
    return `migration timeoutSeconds must be an integer 1..86400, got ${String(m.timeoutSeconds)}`;
  }
  if (!Array.isArray(m.snapshot) || m.snapshot.length === 0 || m.snapshot.length > 64) return 'migration needs 1..64 snapshot paths (relative to the data partition) that it may change';
  const bad = m.snapshot.find((p) => typeof p !== 'string' || p.length === 0 || p.length > 1024 || !new RegExp(DATA_PATH).test(p));
  if (bad !== undefined) return `migration snapshot path ${JSON.stringify(bad)} must be relative to the data partition, without ".."`;
  return null;
}

/**
 * Picking the release for one device: pure, no I/O. The filters run in a fixed order (hardware,
 * channel, device list, securityVersion, rollout) and a rejection names the last filter that emptied
 * the candidate list, with a stable code. Among the survivors the highest securityVersion wins, then
 * the highest semver. A securityVersion below the committed one is refused whatever its semver says.
 * The winner is then judged structurally (validate.ts: target name, chunk index, size against the
 * slot): everything that can be refused from metadata alone is refused here, before `preparing`
 * changes any device state. A malformed winner is refused (MANIFEST_TARGET_NAME /
 * MANIFEST_INDEX_INVALID), never silently replaced by an older release.
 */
import type { DeviceIdentity, Release } from './types.js';
import { rolloutAllows, rolloutBucket } from './rollout.js';
import type { ManifestCode } from './codes.js';
import { checkReleaseStructure } from './validate.js';

export type Selection =
  | { ok: true; release: Release }
  | { ok: false; code: ManifestCode; message: string };

interface Semver { core: number[]; pre: string[] }

function parseSemver(v: string): Semver | undefined {
  const m = /^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$/.exec(v);
  if (!m) return undefined;
  return { core: [Number(m[1]), Number(m[2]), Number(m[3])], pre: m[4] ? m[4].split('.') : [] };
}

/** semver precedence: <0, 0, >0. Unparseable versions sort below every valid one. */
export function compareSemver(a: string, b: string): number {
  const x = parseSemver(a);
  const y = parseSemver(b);
  if (!x || !y) return (x ? 1 : 0) - (y ? 1 : 0);
  for (let i = 0; i < 3; i++) if (x.core[i] !== y.core[i]) return x.core[i]! - y.core[i]!;
  if (x.pre.length === 0 || y.pre.length === 0) return y.pre.length - x.pre.length;
  for (let i = 0; i < Math.max(x.pre.length, y.pre.length); i++) {
    const p = x.pre[i];
    const q = y.pre[i];
    if (p === undefined) return -1;
    if (q === undefined) return 1;
    if (p === q) continue;
    const pn = /^\d+$/.test(p);
    const qn = /^\d+$/.test(q);
    if (pn && qn) return Number(p) - Number(q);
    if (pn !== qn) return pn ? -1 : 1;
    return p < q ? -1 : 1;
  }
  return 0;
}

/** Order for "better release first": highest securityVersion, then highest semver, then name. */
export function compareReleases(a: Release, b: Release): number {
  const s = b.custom.securityVersion - a.custom.securityVersion;
  if (s !== 0) return s;
  const v = compareSemver(b.custom.version, a.custom.version);
  if (v !== 0) return v;
  return a.targetName < b.targetName ? -1 : a.targetName > b.targetName ? 1 : 0;
}

/** Selects the release `device` should run at `now` (ms since epoch). Pure and deterministic. */
export function selectRelease(releases: readonly Release[], device: DeviceIdentity, now: number): Selection {
  if (releases.length === 0) return { ok: false, code: 'MANIFEST_NO_RELEASE', message: 'the repository lists no slotflip release' };
  let c = releases.filter((r) => r.custom.hardware.includes(device.hardware));
  if (c.length === 0) {
    return { ok: false, code: 'MANIFEST_HARDWARE_MISMATCH', message: `no release lists hardware "${device.hardware}"; check the device's compatible string and the release's --hardware` };
  }
  c = c.filter((r) => r.custom.channel === device.channel);
  if (c.length === 0) {
    return { ok: false, code: 'MANIFEST_CHANNEL_MISMATCH', message: `releases exist for hardware "${device.hardware}" but none on channel "${device.channel}"` };
  }
  c = c.filter((r) => r.custom.devices === undefined || r.custom.devices.includes(device.deviceId));
  if (c.length === 0) {
    return { ok: false, code: 'MANIFEST_DEVICE_NOT_TARGETED', message: `matching releases are restricted to other devices than "${device.deviceId}"` };
  }
  const secure = c.filter((r) => r.custom.securityVersion >= device.committedSecurityVersion);
  if (secure.length === 0) {
    const best = [...c].sort(compareReleases)[0]!;
    return {
      ok: false,
      code: 'MANIFEST_SECURITY_DOWNGRADE',
      message: `release ${best.custom.version} (${best.targetName}) has securityVersion ${best.custom.securityVersion}, below the committed ${device.committedSecurityVersion}; publish it with a securityVersion >= ${device.committedSecurityVersion}`,
    };
  }
  const allowed = secure.filter((r) => rolloutAllows(r.custom.rollout, rolloutBucket(device.deviceId, r.targetName), now));
  if (allowed.length === 0) {
    const best = [...secure].sort(compareReleases)[0]!;
    if (best.custom.rollout?.halted) {
      return { ok: false, code: 'MANIFEST_ROLLOUT_HALTED', message: `the rollout of ${best.targetName} is halted` };
    }
    return { ok: false, code: 'MANIFEST_ROLLOUT_PENDING', message: `device bucket ${rolloutBucket(device.deviceId, best.targetName)} is not yet within the rollout of ${best.targetName}` };
  }
  const best = [...allowed].sort(compareReleases)[0]!;
  // fail closed: a malformed winner is refused, never silently replaced by an older release
  const sound = checkReleaseStructure(best, device.slotSize);
  if (!sound.ok) return sound;
  return { ok: true, release: best };
}

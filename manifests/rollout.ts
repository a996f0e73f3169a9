/**
 * Staged rollouts without a server: a device buckets itself deterministically from its id and the
 * release's target name (sha256), so a percentage needs no coordination, and each release reshuffles
 * who goes first. Pure functions.
 */
import { createHash } from 'node:crypto';
import type { Rollout } from './types.js';

/** Deterministic bucket 0 ≤ b < 100 for (deviceId, targetName). */
export function rolloutBucket(deviceId: string, targetName: string): number {
  const digest = createHash('sha256').update(`slotflip-rollout\0${targetName}\0${deviceId}`, 'utf8').digest();
  return digest.readUInt32BE(0) % 100;
}

/** The percentage in force at `now` (ms since epoch): the latest wave whose `at` has passed, else `percent`. */
export function rolloutPercent(rollout: Rollout, now: number): number {
  let percent = rollout.percent;
  let latest = -Infinity;
  for (const wave of rollout.waves ?? []) {
    const at = Date.parse(wave.at);
    if (Number.isFinite(at) && at <= now && at >= latest) {
      latest = at;
      percent = wave.percent;
    }
  }
  return percent;
}

/** True when a device in `bucket` may install under `rollout` at `now`. No rollout = everyone; halted = nobody. */
export function rolloutAllows(rollout: Rollout | undefined, bucket: number, now: number): boolean {
  if (!rollout) return true;
  if (rollout.halted) return false;
  return bucket < rolloutPercent(rollout, now);
}

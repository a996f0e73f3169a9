/**
 * What an A/B updater needs from a release, carried in the TUF target's `custom` field.
 * Everything here is authenticated by the signed targets metadata, the chunk index included, so every
 * chunk can be verified before it is written.
 */
export type Compression = 'zstd' | 'gzip' | 'none';

export interface ChunkEntry {
  /** SHA-256 (hex) of the chunk's uncompressed bytes. */
  sha256: string;
  /** byte offset of the chunk's compressed frame in the payload file. */
  offset: number;
  /** length in bytes of the compressed frame. */
  length: number;
}

/** The payload: the uncompressed image cut into fixed-size chunks, each compressed independently
 * (one zstd frame or gzip member per chunk, concatenated), so a download can resume at any chunk. */
export interface PayloadInfo {
  compression: Compression;
  /** uncompressed image size in bytes. */
  size: number;
  /** SHA-256 (hex) of the whole uncompressed image. */
  sha256: string;
  /** uncompressed chunk size in bytes; the last chunk may be shorter. */
  chunkSize: number;
  chunks: ChunkEntry[];
}

export interface RolloutWave {
  /** ISO-8601 time from which this wave's percentage applies. */
  at: string;
  percent: number;
}

export interface Rollout {
  /** 0..100: devices whose bucket is below this install. */
  percent: number;
  /** optional schedule of percentages over time; the latest wave whose `at` has passed wins. */
  waves?: RolloutWave[];
  /** set by `fleet watch` when the failure rate crossed the threshold: nobody else installs. */
  halted?: boolean;
}

export interface ReleaseCustom {
  /** format version of this custom block. */
  slotflip: 1;
  /** exact compatible strings of boards that may install it (no wildcards). */
  hardware: string[];
  /** semver, for people. */
  version: string;
  /** anti-rollback counter: never install below the committed one. */
  securityVersion: number;
  channel: string;
  /** explicit targeting: when present, only these device ids. */
  devices?: string[];
  rollout?: Rollout;
  payload: PayloadInfo;
  /** a data migration shipped in the image (manifests/migration.ts, daemon/migration.ts). */
  migration?: ReleaseMigration;
}

/** `custom.migration`: run from the new slot's root on the trial's first boot, before its checks. */
export interface ReleaseMigration {
  /** absolute path of an executable inside the image (never under the data partition). */
  path: string;
  /** default and cap: the health deadline. */
  timeoutSeconds?: number;
  /** paths relative to the data partition it may change: snapshotted before, restored on rollback. */
  snapshot: string[];
}

/** A verified, applicable release as handed to the installer. */
export interface Release {
  /** TUF target path, e.g. `releases/1.1.0/image.zst`. */
  targetName: string;
  /** length and hashes of the payload file, from the signed targets metadata. */
  length: number;
  hashes: Record<string, string>;
  custom: ReleaseCustom;
}

export interface DeviceIdentity {
  deviceId: string;
  /** the device's own read-only compatible string. */
  hardware: string;
  channel: string;
  /** highest securityVersion this device has committed. */
  committedSecurityVersion: number;
  /** bytes the smaller of the two slots holds, when known: a larger image is refused at selection. */
  slotSize?: number;
}

/**
 * What an A/B updater needs from a release, carried in the TUF target's `custom` field.
 * Everything here is authenticated by the signed targets metadata, the chunk index included, so every
 * chunk can be verified before it is written.
 *
 * Two formats (manifests/README.md "Format v2"):
 * - v1 (`slotflip: 1`): the chunk list inline in the payload target's custom block (~190 bytes per
 *   chunk in targets.json, every release): what daemons before format v2 understand.
 * - v2 (`slotflip: 2`, the default): the custom block names an index target (`<payload>.index`), a
 *   TUF target file of its own (length and hashes in the signed targets metadata) holding the chunk
 *   list; targets.json stays a few hundred bytes per release whatever the image size.
 */
export type Compression = 'zstd' | 'gzip' | 'none';

export interface ChunkEntry {
  /** SHA-256 (hex) of the chunk's uncompressed bytes. */
  sha256: string;
  /** byte offset of the chunk's compressed frame in the payload file. */
  offset: number;
  /** length in bytes of the compressed frame. */
  length: number;
  /** SHA-256 (hex) of the chunk's compressed frame bytes (payload[offset, offset+length)): the
   * signed hash of what is fetched, checked before the frame is decoded. Present in format v2 index
   * files (required there); absent in v1 inline chunk lists (their schema forbids it). */
  packedSha256?: string;
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

/** Format v2: the payload described without its chunk list, which lives in the index target. */
export interface PayloadRef {
  compression: Compression;
  /** uncompressed image size in bytes. */
  size: number;
  /** SHA-256 (hex) of the whole uncompressed image. */
  sha256: string;
  /** uncompressed chunk size in bytes. */
  chunkSize: number;
  /** the TUF target holding the chunk index (ChunkIndexFile), e.g. `releases/1.1.0/image.zst.index`. */
  index: { target: string };
}

/** Format v2's index target file: canonical JSON, a signed TUF target of its own. */
export interface ChunkIndexFile {
  slotflip: 2;
  /** the payload target this index describes. */
  payloadTarget: string;
  compression: Compression;
  size: number;
  sha256: string;
  chunkSize: number;
  /** every chunk, with `packedSha256`. */
  chunks: ChunkEntry[];
  /** optional delta section (delta updates); validated by its own module, ignored here. */
  delta?: Record<string, unknown>;
}

interface ReleaseCustomBase {
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
  /** a data migration shipped in the image (manifests/migration.ts, daemon/migration.ts). */
  migration?: ReleaseMigration;
}

/** Format v1: the chunk list inline. */
export interface ReleaseCustomV1 extends ReleaseCustomBase {
  slotflip: 1;
  payload: PayloadInfo;
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

/** Format v2: the chunk list in the index target. */
export interface ReleaseCustomV2 extends ReleaseCustomBase {
  slotflip: 2;
  payload: PayloadRef;
}

export type ReleaseCustom = ReleaseCustomV1 | ReleaseCustomV2;

/** A signed TUF target as the device fetches it: name, length and hashes from the targets metadata. */
export interface TargetRef {
  targetName: string;
  length: number;
  hashes: Record<string, string>;
}

/** A verified, applicable release as handed to the installer. */
export interface Release {
  /** TUF target path, e.g. `releases/1.1.0/image.zst`. */
  targetName: string;
  /** length and hashes of the payload file, from the signed targets metadata. */
  length: number;
  hashes: Record<string, string>;
  custom: ReleaseCustom;
  /** format v2: the index target named by `custom.payload.index`, with its signed length and hashes
   * (looked up by the TUF client in the same signed metadata). Absent for v1. */
  index?: TargetRef;
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

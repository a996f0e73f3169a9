/**
 * Registry of every MANIFEST_* code: what it means, in one line. Codes are public API (status
 * reports and logs carry them): add new ones, never rename or reuse a retired one.
 */
export const MANIFEST_CODES = {
  MANIFEST_FETCH_FAILED: 'metadata or payload could not be fetched (network, I/O, HTTP error); retry later',
  MANIFEST_NOT_FOUND: 'a metadata file the TUF workflow requires is missing from the repository',
  MANIFEST_TOO_LARGE: 'a metadata document or target is larger than its cap; refused before parsing',
  MANIFEST_PARSE: 'a metadata document is not valid UTF-8 JSON',
  MANIFEST_INVALID: 'a metadata document is not well-formed TUF (missing fields, threshold < 1, duplicate signatures or key ids, bad spec_version)',
  MANIFEST_WRONG_ROLE: 'a metadata document has a different _type than the role it was fetched as',
  MANIFEST_SIGNATURE: 'a metadata document is not signed by a threshold of distinct trusted keys',
  MANIFEST_ROOT_VERSION: 'a new root in the rotation chain does not have version trusted+1',
  MANIFEST_ROLLBACK: 'a metadata version is lower than the trusted one (rollback/replay)',
  MANIFEST_VERSION_MISMATCH: 'snapshot or targets version differs from the version its parent lists (mix-and-match)',
  MANIFEST_HASH_MISMATCH: 'metadata length or hash differs from what its parent lists',
  MANIFEST_EXPIRED: 'metadata is expired against the trusted time (freeze attack or stale repository)',
  MANIFEST_NO_TRUSTED_ROOT: 'neither the stored root nor the root shipped in the image is usable',
  MANIFEST_ROOT_DAMAGED: 'the stored trusted root was unreadable or invalid; the shipped root was used instead (warning)',
  MANIFEST_DELEGATION_INVALID: 'a delegated role is malformed or not allowed (reserved name, too many delegations)',
  MANIFEST_TARGET_NOT_FOUND: 'no signed target with that name exists',
  MANIFEST_TARGET_MISMATCH: 'a downloaded target differs in length or hash from the signed metadata',
  MANIFEST_CUSTOM_INVALID: 'a target\'s slotflip custom block does not match the release schema',
  MANIFEST_NO_RELEASE: 'the repository holds no slotflip release at all',
  MANIFEST_HARDWARE_MISMATCH: 'no release lists this device\'s exact hardware compatible string',
  MANIFEST_CHANNEL_MISMATCH: 'releases for this hardware exist, none on this device\'s channel',
  MANIFEST_DEVICE_NOT_TARGETED: 'matching releases target an explicit device list that excludes this device',
  MANIFEST_SECURITY_DOWNGRADE: 'matching releases have a securityVersion below the committed one (even if their semver is newer)',
  MANIFEST_ROLLOUT_HALTED: 'the matching release\'s rollout is halted',
  MANIFEST_ROLLOUT_PENDING: 'this device\'s rollout bucket is not (yet) within the release\'s percentage',
  MANIFEST_BAD_ARGUMENT: 'a repository tool was called with a missing or invalid argument',
  MANIFEST_REPO_EXISTS: 'repo init refused: the directory already holds a repository',
  MANIFEST_REPO_INVALID: 'the repository directory is missing files or holds inconsistent metadata',
  MANIFEST_KEY_MISSING: 'a signing key file needed for this operation is missing or unreadable (keep offline keys offline; mount them for this step)',
  MANIFEST_PAYLOAD_BUILD: 'building a payload from an image failed (unreadable image, bad chunk size or compression, compressor error)',
  MANIFEST_PUBLISH_FAILED: 'publishing metadata to the broker failed',
} as const;

export type ManifestCode = keyof typeof MANIFEST_CODES;

/**
 * The image pairs the delta benches measure (bench:delta builds and caches them: delta-images.sh):
 * [pair name, OLD image, NEW image]. Built from scratch from Debian packages, and the -repro ones
 * reproducibly (fixed UUID and hash seed, clamped times).
 */
export const DELTA_PAIRS: readonly (readonly [string, string, string])[] = [
  ['config', 'old', 'config'],
  ['onepkg', 'old', 'onepkg'],
  ['rollup', 'old', 'rollup'],
  ['rebuild', 'old', 'rebuild'],
  ['kernel', 'old', 'kernel'],
  ['config-repro', 'old-repro', 'config-repro'],
  ['onepkg-repro', 'old-repro', 'onepkg-repro'],
  ['rebuild-repro', 'old-repro', 'rebuild-repro'],
];

/** pair name → [OLD, NEW]. */
export const PAIR_IMAGES: Readonly<Record<string, readonly [string, string]>> = Object.fromEntries(DELTA_PAIRS.map(([p, o, n]) => [p, [o, n] as const]));

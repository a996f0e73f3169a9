/**
 * Release selection and rollout bucketing: pure functions, table-driven, plus fast-check properties
 * (bucket range and determinism; a halted rollout admits nobody; selection never returns a release
 * below the committed securityVersion).
 */
import t from 'tap';
import fc from 'fast-check';
import { selectRelease, compareSemver } from '../../manifests/select.js';
import { rolloutAllows, rolloutBucket, rolloutPercent } from '../../manifests/rollout.js';
import { MANIFEST_CODES } from '../../manifests/codes.js';
import type { DeviceIdentity, Release, ReleaseCustomV1 } from '../../manifests/types.js';

const NOW = Date.parse('2026-06-01T00:00:00Z');
const sha = 'a'.repeat(64);

function rel(name: string, c: Partial<ReleaseCustomV1> = {}): Release {
  return {
    targetName: name,
    length: 1,
    hashes: { sha256: sha },
    custom: { slotflip: 1, hardware: ['acme,a'], version: '1.0.0', securityVersion: 1, channel: 'stable', payload: { compression: 'none', size: 1, sha256: sha, chunkSize: 4096, chunks: [{ sha256: sha, offset: 0, length: 1 }] }, ...c },
  };
}
const dev: DeviceIdentity = { deviceId: 'dev-1', hardware: 'acme,a', channel: 'stable', committedSecurityVersion: 1 };

t.test('selection table', async (t) => {
  const cases: { name: string; releases: Release[]; device?: Partial<DeviceIdentity>; want: string }[] = [
    { name: 'nothing published', releases: [], want: 'MANIFEST_NO_RELEASE' },
    { name: 'wrong hardware', releases: [rel('a', { hardware: ['acme,b'] })], want: 'MANIFEST_HARDWARE_MISMATCH' },
    { name: 'hardware is exact, no prefix match', releases: [rel('a', { hardware: ['acme,a-v2', 'acme'] })], want: 'MANIFEST_HARDWARE_MISMATCH' },
    { name: 'wrong channel', releases: [rel('a', { channel: 'beta' })], want: 'MANIFEST_CHANNEL_MISMATCH' },
    { name: 'device list excludes this device', releases: [rel('a', { devices: ['dev-2'] })], want: 'MANIFEST_DEVICE_NOT_TARGETED' },
    { name: 'securityVersion downgrade under a newer semver', releases: [rel('a', { version: '9.0.0', securityVersion: 0 })], want: 'MANIFEST_SECURITY_DOWNGRADE' },
    { name: 'rollout halted', releases: [rel('a', { rollout: { percent: 100, halted: true } })], want: 'MANIFEST_ROLLOUT_HALTED' },
    { name: 'rollout at 0 %', releases: [rel('a', { rollout: { percent: 0 } })], want: 'MANIFEST_ROLLOUT_PENDING' },
    { name: 'wave not reached yet', releases: [rel('a', { rollout: { percent: 0, waves: [{ at: '2026-07-01T00:00:00Z', percent: 100 }] } })], want: 'MANIFEST_ROLLOUT_PENDING' },
    { name: 'wave reached', releases: [rel('a', { rollout: { percent: 0, waves: [{ at: '2026-05-01T00:00:00Z', percent: 100 }] } })], want: 'a' },
    { name: 'device list includes this device', releases: [rel('a', { devices: ['dev-1'] })], want: 'a' },
    { name: 'equal securityVersion is allowed', releases: [rel('a')], want: 'a' },
    { name: 'highest securityVersion wins over semver', releases: [rel('a', { version: '2.0.0', securityVersion: 1 }), rel('b', { version: '1.5.0', securityVersion: 2 })], want: 'b' },
    { name: 'then highest semver', releases: [rel('a', { version: '1.10.0' }), rel('b', { version: '1.9.0' }), rel('c', { version: '1.10.0-rc.1' })], want: 'a' },
    { name: 'downgraded newest skipped, older allowed one chosen', releases: [rel('a', { version: '3.0.0', securityVersion: 0 }), rel('b', { version: '2.0.0', securityVersion: 1 })], want: 'b' },
    { name: 'held newest skipped for an allowed one', releases: [rel('a', { version: '3.0.0', securityVersion: 2, rollout: { percent: 0 } }), rel('b', { version: '2.0.0' })], want: 'b' },
    { name: 'multi-hardware release', releases: [rel('a', { hardware: ['acme,b', 'acme,a'] })], want: 'a' },
    // judged from metadata alone, before any device state changes (issue 15)
    ...['/etc/slotflip/img.zst', 'releases/../../../evil/img.zst', 'releases/./img', 'a\0b', 'a\\b', 'a\nb', 'a//b', 'x'.repeat(256)].map((n) => ({ name: `target name ${JSON.stringify(n.slice(0, 40))}`, releases: [rel(n)], want: 'MANIFEST_TARGET_NAME' })),
    { name: 'a bad name wins: refused, not replaced by an older release', releases: [rel('../a', { version: '2.0.0' }), rel('b')], want: 'MANIFEST_TARGET_NAME' },
    { name: 'overlapping chunks', releases: [{ ...rel('a', { payload: { compression: 'none', size: 2, sha256: sha, chunkSize: 1, chunks: [{ sha256: sha, offset: 0, length: 1 }, { sha256: sha, offset: 0, length: 1 }] } }), length: 2 }], want: 'MANIFEST_INDEX_INVALID' },
    { name: 'zero-length chunk', releases: [{ ...rel('a', { payload: { compression: 'none', size: 1, sha256: sha, chunkSize: 1, chunks: [{ sha256: sha, offset: 0, length: 0 }] } }), length: 0 }], want: 'MANIFEST_INDEX_INVALID' },
    { name: 'chunk count disagrees with size', releases: [rel('a', { payload: { compression: 'none', size: 9000, sha256: sha, chunkSize: 4096, chunks: [{ sha256: sha, offset: 0, length: 1 }] } })], want: 'MANIFEST_INDEX_INVALID' },
    { name: 'chunks do not add up to the signed length', releases: [{ ...rel('a'), length: 5 }], want: 'MANIFEST_INDEX_INVALID' },
    { name: 'non-integer offset', releases: [rel('a', { payload: { compression: 'none', size: 1, sha256: sha, chunkSize: 4096, chunks: [{ sha256: sha, offset: 0.5, length: 1 }] } })], want: 'MANIFEST_INDEX_INVALID' },
    { name: 'unknown compression', releases: [rel('a', { payload: { compression: 'xz' as never, size: 1, sha256: sha, chunkSize: 4096, chunks: [{ sha256: sha, offset: 0, length: 1 }] } })], want: 'MANIFEST_INDEX_INVALID' },
    { name: 'image larger than the slot', releases: [rel('a', { payload: { compression: 'none', size: 1, sha256: sha, chunkSize: 4096, chunks: [{ sha256: sha, offset: 0, length: 1 }] } })], device: { slotSize: 0 }, want: 'MANIFEST_INDEX_INVALID' },
  ];
  for (const c of cases) {
    const s = selectRelease(c.releases, { ...dev, ...c.device }, NOW);
    if (c.want.startsWith('MANIFEST_')) {
      t.match(s, { ok: false, code: c.want }, c.name);
      if (!s.ok) t.ok(s.code in MANIFEST_CODES && s.message.length > 10, `${c.name}: registered code with a message`);
    } else t.match(s, { ok: true, release: { targetName: c.want } }, c.name);
  }
});

t.test('semver ordering', async (t) => {
  const sorted = ['0.9.0', '1.0.0-alpha', '1.0.0-alpha.1', '1.0.0-alpha.beta', '1.0.0-beta', '1.0.0-beta.2', '1.0.0-beta.11', '1.0.0-rc.1', '1.0.0', '1.0.1', '1.10.0', '2.0.0'];
  for (let i = 0; i + 1 < sorted.length; i++) t.ok(compareSemver(sorted[i]!, sorted[i + 1]!) < 0, `${sorted[i]} < ${sorted[i + 1]}`);
  t.equal(compareSemver('1.0.0+build', '1.0.0'), 0);
  t.ok(compareSemver('garbage', '0.0.1') < 0, 'unparseable sorts lowest');
});

t.test('rollout buckets', async (t) => {
  t.equal(rolloutBucket('dev-1', 'releases/1/a'), rolloutBucket('dev-1', 'releases/1/a'), 'deterministic');
  fc.assert(fc.property(fc.string(), fc.string(), (d, n) => { const b = rolloutBucket(d, n); return Number.isInteger(b) && b >= 0 && b < 100; }));
  fc.assert(fc.property(fc.integer({ min: 0, max: 99 }), fc.integer({ min: 0, max: 100 }), (b, p) => !rolloutAllows({ percent: p, halted: true }, b, NOW) && rolloutAllows(undefined, b, NOW) && rolloutAllows({ percent: p }, b, NOW) === b < p));
  // roughly uniform: 2000 devices at 30 % admit 30 % ± 5
  let admitted = 0;
  for (let i = 0; i < 2000; i++) if (rolloutAllows({ percent: 30 }, rolloutBucket(`dev-${i}`, 'releases/2.0.0/img.zst'), NOW)) admitted++;
  t.ok(admitted > 500 && admitted < 700, `${admitted} of 2000 admitted at 30 %`);
  t.equal(rolloutPercent({ percent: 5, waves: [{ at: '2026-05-01T00:00:00Z', percent: 20 }, { at: '2026-05-20T00:00:00Z', percent: 50 }, { at: '2026-07-01T00:00:00Z', percent: 100 }] }, NOW), 50, 'latest passed wave wins');
});

t.test('property: never below the committed securityVersion', async (t) => {
  const arbRelease = fc.record({ sv: fc.integer({ min: 0, max: 5 }), major: fc.integer({ min: 0, max: 5 }), hw: fc.constantFrom('acme,a', 'acme,b'), ch: fc.constantFrom('stable', 'beta') });
  fc.assert(
    fc.property(fc.array(arbRelease, { maxLength: 8 }), fc.integer({ min: 0, max: 5 }), (rs, committed) => {
      const releases = rs.map((r, i) => rel(`r${i}`, { securityVersion: r.sv, version: `${r.major}.0.0`, hardware: [r.hw], channel: r.ch }));
      const s = selectRelease(releases, { ...dev, committedSecurityVersion: committed }, NOW);
      if (!s.ok) return true;
      const sameTrack = releases.filter((r) => r.custom.hardware.includes('acme,a') && r.custom.channel === 'stable' && r.custom.securityVersion >= committed);
      return s.release.custom.securityVersion >= committed && sameTrack.every((r) => r.custom.securityVersion <= s.release.custom.securityVersion);
    }),
  );
  t.pass('property held');
});

t.test('format 2: the index target must be in the signed metadata, a safe name, of sane length', async (t) => {
  const v2 = (index?: Release['index'], target = 'r/1.0.0/img.zst.index'): Release => ({
    targetName: 'r/1.0.0/img.zst',
    length: 10,
    hashes: { sha256: sha },
    custom: { slotflip: 2, hardware: ['acme,a'], version: '1.0.0', securityVersion: 1, channel: 'stable', payload: { compression: 'zstd', size: 8192, sha256: sha, chunkSize: 4096, index: { target } } },
    ...(index ? { index } : {}),
  });
  const idx = { targetName: 'r/1.0.0/img.zst.index', length: 300, hashes: { sha256: sha } };
  t.match(selectRelease([v2(idx)], dev, NOW), { ok: true }, 'with its index target');
  t.match(selectRelease([v2()], dev, NOW), { ok: false, code: 'MANIFEST_INDEX_NOT_FOUND' }, 'index target not listed');
  t.match(selectRelease([v2({ ...idx, length: 0 })], dev, NOW), { ok: false, code: 'MANIFEST_INDEX_INVALID' }, 'empty index');
  t.match(selectRelease([v2({ ...idx, length: 65 * 1024 * 1024 })], dev, NOW), { ok: false, code: 'MANIFEST_INDEX_INVALID' }, 'index over the 64 MiB cap');
  t.match(selectRelease([v2({ ...idx, hashes: {} })], dev, NOW), { ok: false, code: 'MANIFEST_INDEX_INVALID' }, 'no sha256 for the index');
  t.match(selectRelease([v2({ ...idx, targetName: '../x' }, '../x')], dev, NOW), { ok: false, code: 'MANIFEST_TARGET_NAME' }, 'unsafe index name');
});

/**
 * Malicious and malformed metadata, table-driven. Every case starts from a device that trusts
 * version 2 of everything, serves one bad repository state, and asserts:
 *   1. the refresh is rejected with the case's stable MANIFEST_* code;
 *   2. the trusted directory is byte-identical afterwards (hash of every file);
 *   3. once the repository serves valid metadata again, the next refresh is accepted.
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { RepoSim, type Json } from '../../manifests/sim.js';
import { TrustClient } from '../../manifests/client.js';
import { generateSigningKey, publicKeyJson } from '../../manifests/keys.js';
import type { ManifestCode } from '../../manifests/codes.js';
import { MANIFEST_CODES } from '../../manifests/codes.js';

const T0 = Date.parse('2026-06-01T00:00:00Z');
const DAY = 86_400_000;
const YEAR = 365 * DAY;

interface Ctx {
  sim: RepoSim;
  /** device clock offset from the repository's clock, ms. */
  skew: number;
  /** version-1 files as first published (for replays). */
  v1: Map<string, Uint8Array>;
}

interface Case {
  name: string;
  code: ManifestCode;
  init?: (sim: RepoSim) => void;
  opts?: ConstructorParameters<typeof RepoSim>[1];
  attack: (c: Ctx) => void;
}

async function hashDir(dir: string): Promise<string> {
  const h = createHash('sha256');
  for (const n of (await readdir(dir)).sort()) h.update(n + '\0').update(await readFile(join(dir, n)));
  return h.digest('hex');
}

function envelope(sim: RepoSim, name: string): { signed: Json; signatures: Json[] } {
  return JSON.parse(Buffer.from(sim.files.get(name)!).toString('utf8')) as { signed: Json; signatures: Json[] };
}

/** Re-serializes a published envelope after `fn` edits it, without re-signing. */
function tamper(sim: RepoSim, name: string, fn: (env: { signed: Json; signatures: Json[] }) => void): void {
  const env = envelope(sim, name);
  fn(env);
  sim.files.set(name, Buffer.from(JSON.stringify(env)));
}

/** New timestamp version whose signed part `fn` edits; signed by the timestamp keys. */
function badTimestamp(sim: RepoSim, fn: (signed: Json) => void): void {
  sim.bump('timestamp');
  sim.publishTimestamp();
  const env = envelope(sim, 'timestamp.json');
  fn(env.signed);
  sim.files.set('timestamp.json', sim.sign('timestamp', env.signed));
}

/** New root version whose JSON `fn` edits; signed by the current root keys. */
function badRoot(sim: RepoSim, fn: (root: RepoSim['root']) => void, extraSign: ReturnType<typeof generateSigningKey>[] = []): void {
  sim.bump('root');
  fn(sim.root);
  sim.files.set(`${sim.root.version}.root.json`, sim.sign('root', sim.root, [...(sim.signers.get('root') ?? []), ...extraSign]));
}

/** Publishes a new consistent set, then lets `fn` replace files. */
function update(sim: RepoSim, roles: string[] = ['targets']): void {
  sim.update(roles);
}

const cases: Case[] = [
  // --- signatures
  { name: 'unsigned timestamp', code: 'MANIFEST_SIGNATURE', attack: ({ sim }) => { update(sim); tamper(sim, 'timestamp.json', (e) => { e.signatures = []; }); } },
  { name: 'timestamp signed by an unknown key', code: 'MANIFEST_SIGNATURE', attack: ({ sim }) => { sim.signers.set('timestamp', [generateSigningKey()]); update(sim); } },
  { name: 'timestamp signature corrupted', code: 'MANIFEST_SIGNATURE', attack: ({ sim }) => { update(sim); tamper(sim, 'timestamp.json', (e) => { const s = e.signatures[0]!; s['sig'] = (s['sig'] as string).replace(/^./, (ch) => (ch === '0' ? '1' : '0')); }); } },
  { name: 'timestamp edited after signing', code: 'MANIFEST_SIGNATURE', attack: ({ sim }) => { update(sim); tamper(sim, 'timestamp.json', (e) => { e.signed['expires'] = '2099-01-01T00:00:00Z'; }); } },
  { name: 'timestamp signature not hex', code: 'MANIFEST_SIGNATURE', attack: ({ sim }) => { update(sim); tamper(sim, 'timestamp.json', (e) => { e.signatures[0]!['sig'] = 'zz'; }); } },
  { name: 'snapshot signed with the timestamp key', code: 'MANIFEST_SIGNATURE', attack: ({ sim }) => { sim.signers.set('snapshot', sim.signers.get('timestamp')!); update(sim); } },
  { name: 'targets signed with the snapshot key', code: 'MANIFEST_SIGNATURE', attack: ({ sim }) => { sim.signers.set('targets', sim.signers.get('snapshot')!); update(sim); } },
  { name: 'fast-forward timestamp (v999) signed by an untrusted key', code: 'MANIFEST_SIGNATURE', attack: ({ sim }) => { sim.signers.set('timestamp', [generateSigningKey()]); sim.timestamp.version = 998; update(sim); } },
  { name: 'delegated role signed by the wrong key', code: 'MANIFEST_SIGNATURE', init: (sim) => { sim.delegate('targets', 'vendor', { paths: ['vendor/*'] }); }, attack: ({ sim }) => { sim.signers.set('vendor', [generateSigningKey()]); update(sim, ['vendor']); } },
  { name: 'new root lists only a key of an unsupported type for itself', code: 'MANIFEST_SIGNATURE', attack: ({ sim }) => {
    badRoot(sim, (r) => { const id = 'a'.repeat(64); r.keys[id] = { keytype: 'rsa', scheme: 'rsassa-pss-sha256', keyval: { public: 'not a pem' } }; r.roles['root'] = { keyids: [id], threshold: 1 }; });
  } },
  // --- threshold tricks
  { name: 'duplicate signatures from one key', code: 'MANIFEST_INVALID', attack: ({ sim }) => { update(sim); tamper(sim, 'timestamp.json', (e) => { e.signatures.push({ ...e.signatures[0]! }); }); } },
  { name: 'one key under two key ids meets a threshold of 2', code: 'MANIFEST_SIGNATURE', attack: ({ sim }) => {
    const k = sim.signers.get('root')![0]!;
    const alias = 'b'.repeat(64);
    sim.bump('root');
    sim.root.keys[alias] = publicKeyJson(k.publicHex);
    sim.root.roles['root'] = { keyids: [k.keyid, alias], threshold: 2 };
    const bytes = sim.sign('root', sim.root, [k]);
    const env = JSON.parse(Buffer.from(bytes).toString()) as { signatures: Json[] };
    env.signatures.push({ keyid: alias, sig: env.signatures[0]!['sig'] });
    sim.files.set('2.root.json', Buffer.from(JSON.stringify(env)));
  } },
  { name: 'threshold 0 for root in a new root', code: 'MANIFEST_INVALID', attack: ({ sim }) => badRoot(sim, (r) => { r.roles['root']!.threshold = 0; }) },
  { name: 'threshold 0 for timestamp in a new root', code: 'MANIFEST_INVALID', attack: ({ sim }) => badRoot(sim, (r) => { r.roles['timestamp']!.threshold = 0; }) },
  { name: 'negative threshold', code: 'MANIFEST_INVALID', attack: ({ sim }) => badRoot(sim, (r) => { r.roles['snapshot']!.threshold = -1; }) },
  { name: 'fractional threshold (canonical JSON cannot even sign it)', code: 'MANIFEST_INVALID', attack: ({ sim }) => { badRoot(sim, () => undefined); tamper(sim, '2.root.json', (e) => { ((e.signed['roles'] as Json)['targets'] as Json)['threshold'] = 1.5; }); } },
  { name: 'duplicate key ids in a role', code: 'MANIFEST_INVALID', attack: ({ sim }) => badRoot(sim, (r) => { const ids = r.roles['timestamp']!.keyids; ids.push(ids[0]!); }) },
  { name: 'new root without a snapshot role', code: 'MANIFEST_INVALID', attack: ({ sim }) => badRoot(sim, (r) => { delete r.roles['snapshot']; }) },
  // --- keytype/scheme pairs (issue 15): exactly python-tuf's pairs, nothing else
  { name: 'timestamp key: ed25519 keytype with an ecdsa scheme', code: 'MANIFEST_KEY_UNSUPPORTED', attack: ({ sim }) => badRoot(sim, (r) => { (r.keys[r.roles['timestamp']!.keyids[0]!] as Json)['scheme'] = 'ecdsa-sha2-nistp256'; }) },
  { name: 'snapshot key: unknown scheme', code: 'MANIFEST_KEY_UNSUPPORTED', attack: ({ sim }) => badRoot(sim, (r) => { (r.keys[r.roles['snapshot']!.keyids[0]!] as Json)['scheme'] = 'ed25519-sha512'; }) },
  { name: 'targets key: unknown keytype', code: 'MANIFEST_KEY_UNSUPPORTED', attack: ({ sim }) => badRoot(sim, (r) => { (r.keys[r.roles['targets']!.keyids[0]!] as Json)['keytype'] = 'ed448'; }) },
  { name: 'ecdsa keytype with an rsa scheme', code: 'MANIFEST_KEY_UNSUPPORTED', attack: ({ sim }) => badRoot(sim, (r) => { const k = r.keys[r.roles['timestamp']!.keyids[0]!] as Json; k['keytype'] = 'ecdsa'; k['scheme'] = 'rsassa-pss-sha256'; }) },
  { name: 'delegation key with a mismatched scheme', code: 'MANIFEST_KEY_UNSUPPORTED', attack: ({ sim }) => { sim.delegate('targets', 'role-x'); const d = sim.targets.get('targets')!.delegations!; (Object.values(d.keys)[0] as Json)['scheme'] = 'rsassa-pss-sha256'; update(sim); } },
  // --- expiry and freeze
  { name: 'expired new timestamp', code: 'MANIFEST_EXPIRED', attack: ({ sim }) => badTimestamp(sim, (s) => { s['expires'] = '2026-05-01T00:00:00Z'; }) },
  { name: 'expired new snapshot', code: 'MANIFEST_EXPIRED', attack: ({ sim }) => { sim.periods['snapshot'] = -1; update(sim); } },
  { name: 'expired new targets', code: 'MANIFEST_EXPIRED', attack: ({ sim }) => { sim.periods['targets'] = -1; update(sim); } },
  { name: 'expired new root', code: 'MANIFEST_EXPIRED', attack: ({ sim }) => { sim.periods['root'] = -1; sim.bump('root'); sim.publishRoot(); } },
  { name: 'freeze: the repository stops updating for 30 days', code: 'MANIFEST_EXPIRED', attack: (c) => { c.sim.now += 30 * DAY; } },
  { name: 'clock set years back: metadata expired before the newest verified time', code: 'MANIFEST_EXPIRED', attack: (c) => {
    c.skew = -5 * YEAR;
    badTimestamp(c.sim, (s) => { s['expires'] = new Date(T0 - DAY).toISOString(); delete s['x-slotflip-issued']; });
  } },
  // --- rollback, replay, mix-and-match
  { name: 'replayed version-1 timestamp', code: 'MANIFEST_ROLLBACK', attack: (c) => { c.sim.files.set('timestamp.json', c.v1.get('timestamp.json')!); } },
  { name: 'timestamp points at an older snapshot', code: 'MANIFEST_ROLLBACK', attack: ({ sim }) => { sim.snapshot.version = 1; sim.publishSnapshot(); sim.bump('timestamp'); sim.publishTimestamp(); } },
  { name: 'snapshot lists an older targets', code: 'MANIFEST_ROLLBACK', attack: (c) => { c.sim.targets.get('targets')!.version = 1; c.sim.files.set('1.targets.json', c.v1.get('1.targets.json')!); c.sim.bump('snapshot'); c.sim.publishSnapshot(); c.sim.bump('timestamp'); c.sim.publishTimestamp(); } },
  { name: 'snapshot drops targets.json', code: 'MANIFEST_ROLLBACK', attack: ({ sim }) => { sim.targets.get('targets')!.version = 2; sim.files.delete('2.targets.json'); sim.bump('snapshot'); sim.publishSnapshot(); sim.bump('timestamp'); sim.publishTimestamp(); } },
  { name: 'mix-and-match: new timestamp, old snapshot bytes under the new name', code: 'MANIFEST_HASH_MISMATCH', attack: ({ sim }) => { const old = sim.files.get('2.snapshot.json')!; update(sim); sim.files.set('3.snapshot.json', old); } },
  { name: 'mix-and-match without hashes: snapshot version differs from timestamp', code: 'MANIFEST_VERSION_MISMATCH', init: (sim) => { sim.metaHashes = false; }, attack: ({ sim }) => { const old = sim.files.get('2.snapshot.json')!; update(sim); sim.files.set('3.snapshot.json', old); } },
  { name: 'mix-and-match: new snapshot, old targets bytes under the new name', code: 'MANIFEST_HASH_MISMATCH', attack: ({ sim }) => { const old = sim.files.get('2.targets.json')!; update(sim); sim.files.set('3.targets.json', old); } },
  { name: 'mix-and-match without hashes: targets version differs from snapshot', code: 'MANIFEST_VERSION_MISMATCH', init: (sim) => { sim.metaHashes = false; }, attack: ({ sim }) => { const old = sim.files.get('2.targets.json')!; update(sim); sim.files.set('3.targets.json', old); } },
  { name: 'unknown hash algorithm in timestamp meta', code: 'MANIFEST_HASH_MISMATCH', attack: ({ sim }) => { update(sim); badTimestamp(sim, (s) => { ((s['meta'] as Json)['snapshot.json'] as Json)['hashes'] = { md17: 'ab' }; }); } },
  // --- sizes
  { name: 'oversized timestamp (20 KiB)', code: 'MANIFEST_TOO_LARGE', attack: ({ sim }) => badTimestamp(sim, (s) => { s['x-pad'] = 'x'.repeat(20_000); }) },
  { name: 'oversized root (600 KiB)', code: 'MANIFEST_TOO_LARGE', attack: ({ sim }) => badRoot(sim, (r) => { r['x-pad'] = 'x'.repeat(600_000); }) },
  { name: 'snapshot longer than the length timestamp lists', code: 'MANIFEST_TOO_LARGE', attack: ({ sim }) => { update(sim); const b = sim.files.get('3.snapshot.json')!; sim.files.set('3.snapshot.json', Buffer.concat([b, Buffer.from('    ')])); } },
  { name: 'oversized targets without a listed length (9 MiB)', code: 'MANIFEST_TOO_LARGE', init: (sim) => { sim.metaHashes = false; }, attack: ({ sim }) => { sim.targets.get('targets')!['x-pad'] = 'x'.repeat(9 * 1024 * 1024); update(sim); } },
  // --- malformed documents
  { name: 'timestamp is not JSON', code: 'MANIFEST_PARSE', attack: ({ sim }) => { sim.files.set('timestamp.json', Buffer.from('{"signed": ')); } },
  { name: 'timestamp is not UTF-8', code: 'MANIFEST_PARSE', attack: ({ sim }) => { sim.files.set('timestamp.json', Buffer.from([0x7b, 0xff, 0xfe, 0x7d])); } },
  { name: 'timestamp is a JSON array', code: 'MANIFEST_INVALID', attack: ({ sim }) => { sim.files.set('timestamp.json', Buffer.from('[]')); } },
  { name: 'signatures is not an array', code: 'MANIFEST_INVALID', attack: ({ sim }) => { update(sim); tamper(sim, 'timestamp.json', (e) => { (e as Json)['signatures'] = {}; }); } },
  { name: 'signature without sig', code: 'MANIFEST_INVALID', attack: ({ sim }) => { update(sim); tamper(sim, 'timestamp.json', (e) => { delete e.signatures[0]!['sig']; }); } },
  { name: 'snapshot served as timestamp.json', code: 'MANIFEST_WRONG_ROLE', attack: ({ sim }) => { sim.files.set('timestamp.json', sim.files.get('2.snapshot.json')!); } },
  { name: 'missing spec_version', code: 'MANIFEST_INVALID', attack: ({ sim }) => badTimestamp(sim, (s) => { delete s['spec_version']; }) },
  { name: 'unsupported spec_version 2.0.0', code: 'MANIFEST_INVALID', attack: ({ sim }) => badTimestamp(sim, (s) => { s['spec_version'] = '2.0.0'; }) },
  { name: 'version 0', code: 'MANIFEST_INVALID', attack: ({ sim }) => badTimestamp(sim, (s) => { s['version'] = 0; }) },
  { name: 'version as a string', code: 'MANIFEST_INVALID', attack: ({ sim }) => badTimestamp(sim, (s) => { s['version'] = '3'; }) },
  { name: 'expires is not a date', code: 'MANIFEST_INVALID', attack: ({ sim }) => badTimestamp(sim, (s) => { s['expires'] = 'next tuesday'; }) },
  { name: 'delegated role named "targets"', code: 'MANIFEST_DELEGATION_INVALID', attack: ({ sim }) => { sim.delegate('targets', 'targets-x'); sim.targets.get('targets')!.delegations!.roles[0]!.name = 'targets'; update(sim); } },
  // --- root rotation chains
  { name: 'root chain: 2.root.json claims version 3', code: 'MANIFEST_ROOT_VERSION', attack: ({ sim }) => { sim.bump('root'); sim.root.version = 3; sim.files.set('2.root.json', sim.sign('root', sim.root)); } },
  { name: 'root chain: new root signed only by its new keys', code: 'MANIFEST_SIGNATURE', attack: ({ sim }) => { sim.bump('root'); sim.replaceKeys('root'); sim.publishRoot(); } },
  { name: 'root chain: new root signed only by the old keys', code: 'MANIFEST_SIGNATURE', attack: ({ sim }) => { const old = sim.signers.get('root')!; sim.bump('root'); sim.replaceKeys('root'); sim.files.set('2.root.json', sim.sign('root', sim.root, old)); } },
  { name: 'root chain: old threshold 2 met by one key', code: 'MANIFEST_SIGNATURE', opts: { rootKeys: 2, rootThreshold: 2 }, attack: ({ sim }) => { badRoot(sim, () => undefined); const env = envelope(sim, '2.root.json'); env.signatures = env.signatures.slice(0, 1); sim.files.set('2.root.json', Buffer.from(JSON.stringify(env))); } },
  // --- missing files
  { name: 'timestamp.json missing', code: 'MANIFEST_NOT_FOUND', attack: ({ sim }) => { sim.files.delete('timestamp.json'); } },
  { name: 'listed snapshot missing', code: 'MANIFEST_NOT_FOUND', attack: ({ sim }) => { update(sim); sim.files.delete('3.snapshot.json'); } },
  { name: 'listed targets missing', code: 'MANIFEST_NOT_FOUND', attack: ({ sim }) => { update(sim); sim.files.delete('3.targets.json'); } },
];

t.test('every case code is registered', async (t) => {
  for (const c of cases) t.ok(c.code in MANIFEST_CODES, c.code);
  t.ok(cases.length >= 40, `${cases.length} cases`);
});

for (const cs of cases) {
  t.test(cs.name, async (t) => {
    const dir = t.testdir();
    const sim = new RepoSim(T0, cs.opts);
    cs.init?.(sim);
    const shipped = join(dir, 'shipped-root.json');
    await writeFile(shipped, sim.publishAll());
    const ctx: Ctx = { sim, skew: 0, v1: new Map(sim.files) };
    const trusted = join(dir, 'trusted');
    const refresh = (): ReturnType<TrustClient['refresh']> => new TrustClient({ trustedDir: trusted, shippedRootPath: shipped, source: sim.source(), now: () => sim.now + ctx.skew }).refresh();
    await refresh();
    sim.update(cs.init ? [...sim.targets.keys()] : ['targets']);
    const base = await refresh();
    t.equal(base.targetsVersion, 2);

    // save the good repository state, attack, check, restore
    const saved = {
      now: sim.now,
      files: new Map(sim.files),
      root: structuredClone(sim.root),
      timestamp: structuredClone(sim.timestamp),
      snapshot: structuredClone(sim.snapshot),
      targets: new Map([...sim.targets].map(([k, v]) => [k, structuredClone(v)])),
      signers: new Map(sim.signers),
      periods: { ...sim.periods },
      metaHashes: sim.metaHashes,
    };
    const before = await hashDir(trusted);
    cs.attack(ctx);
    await t.rejects(refresh(), { code: cs.code }, `rejected with ${cs.code}`);
    t.equal(await hashDir(trusted), before, 'trusted state byte-identical');

    sim.now = saved.now;
    ctx.skew = 0;
    sim.files.clear();
    for (const [k, v] of saved.files) sim.files.set(k, v);
    sim.root = saved.root;
    sim.timestamp = saved.timestamp;
    sim.snapshot = saved.snapshot;
    sim.targets.clear();
    for (const [k, v] of saved.targets) sim.targets.set(k, v);
    sim.signers.clear();
    for (const [k, v] of saved.signers) sim.signers.set(k, v);
    Object.assign(sim.periods, saved.periods);
    sim.metaHashes = saved.metaHashes;
    sim.update([...sim.targets.keys()]);
    const next = await refresh();
    t.equal(next.targetsVersion, 3, 'the next valid metadata is accepted');
  });
}

t.test('a compromised timestamp key cannot push the trusted time beyond reach (issue 15)', async (t) => {
  const dir = t.testdir();
  const sim = new RepoSim(T0);
  const shipped = join(dir, 'shipped-root.json');
  await writeFile(shipped, sim.publishAll());
  const trusted = join(dir, 'trusted');
  let clock = T0;
  const refresh = (): ReturnType<TrustClient['refresh']> => new TrustClient({ trustedDir: trusted, shippedRootPath: shipped, source: sim.source(), now: () => clock }).refresh();
  await refresh();
  const floor = async (): Promise<number> => Date.parse((JSON.parse(await readFile(join(trusted, 'trusted-time.json'), 'utf8')) as { floor: string }).floor);
  // working clock: at most an hour ahead, and repeating the attack does not ratchet it
  for (let i = 0; i < 5; i++) {
    badTimestamp(sim, (s) => { s['x-slotflip-issued'] = '9999-01-01T00:00:00Z'; s['expires'] = '9999-01-02T00:00:00Z'; });
    await refresh();
  }
  t.ok((await floor()) <= T0 + 60 * 60_000, 'floor within an hour of the clock');
  sim.bump('timestamp');
  sim.publishTimestamp();
  t.ok(await refresh(), 'the next legitimate timestamp is accepted');
  // no usable clock (RTC reset): bounded by the trusted chain's earliest expiry, never beyond it
  clock = 0;
  badTimestamp(sim, (s) => { s['x-slotflip-issued'] = '9999-01-01T00:00:00Z'; s['expires'] = '9999-01-02T00:00:00Z'; });
  await refresh();
  const snapExpires = Date.parse(sim.snapshot.expires);
  t.ok((await floor()) < snapExpires, 'floor stays below the snapshot expiry');
  t.ok(await refresh(), 'the trusted metadata is still valid at the new floor');
});

/**
 * The TUF conformance test list (theupdateframework/tuf-conformance: basic, expiration, file
 * download, keys, rollback, key rotations, delegations), reproduced against the device client
 * through the in-memory repository simulator. Each refresh uses a fresh TrustClient, as the
 * conformance CLI does (one process per command).
 */
import t from 'tap';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { RepoSim } from '../../manifests/sim.js';
import { TrustClient, verifyTargetBytes } from '../../manifests/client.js';
import { generateSigningKey } from '../../manifests/keys.js';

const T0 = Date.parse('2026-06-01T00:00:00Z');
const DAY = 86_400_000;

interface Ctx {
  sim: RepoSim;
  trusted: string;
  client(): TrustClient;
  refresh(opts?: { delegations?: boolean }): ReturnType<TrustClient['refresh']>;
  version(role: string): Promise<number | undefined>;
}

async function setup(dir: string, opts: ConstructorParameters<typeof RepoSim>[1] = {}, init?: (sim: RepoSim) => void): Promise<Ctx> {
  const sim = new RepoSim(T0, opts);
  init?.(sim);
  const rootBytes = sim.publishAll();
  const shipped = join(dir, 'shipped-root.json');
  await writeFile(shipped, rootBytes);
  const trusted = join(dir, 'trusted');
  const client = (): TrustClient => new TrustClient({ trustedDir: trusted, shippedRootPath: shipped, source: sim.source(), now: () => sim.now });
  return {
    sim,
    trusted,
    client,
    refresh: (o) => client().refresh(o),
    async version(role) {
      try {
        return (JSON.parse(await readFile(join(trusted, `${role}.json`), 'utf8')) as { signed: { version: number } }).signed.version;
      } catch {
        return undefined;
      }
    },
  };
}


t.test('basic', async (t) => {
  t.test('init and refresh', async (t) => {
    const c = await setup(t.testdir());
    const r = await c.refresh();
    t.match(r, { rootVersion: 1, timestampVersion: 1, snapshotVersion: 1, targetsVersion: 1, updated: true });
    t.same((await readdir(c.trusted)).filter((n) => n !== 'trusted-time.json').sort(), ['root.json', 'snapshot.json', 'targets.json', 'timestamp.json']);
    t.same(c.sim.fetched, ['2.root.json', 'timestamp.json', '1.snapshot.json', '1.targets.json']);
  });
  t.test('second refresh with no change fetches only root and timestamp', async (t) => {
    const c = await setup(t.testdir());
    await c.refresh();
    c.sim.fetched.length = 0;
    const r = await c.refresh();
    t.equal(r.updated, false);
    t.same(c.sim.fetched, ['2.root.json', 'timestamp.json']);
  });
  t.test('new targets are picked up', async (t) => {
    const c = await setup(t.testdir());
    await c.refresh();
    c.sim.update();
    const r = await c.refresh();
    t.match(r, { timestampVersion: 2, snapshotVersion: 2, targetsVersion: 2 });
  });
  t.test('timestamp-only update keeps snapshot and targets', async (t) => {
    const c = await setup(t.testdir());
    await c.refresh();
    c.sim.bump('timestamp');
    c.sim.publishTimestamp();
    c.sim.fetched.length = 0;
    const r = await c.refresh();
    t.equal(r.timestampVersion, 2);
    t.same(c.sim.fetched, ['2.root.json', 'timestamp.json']);
  });
  t.test('metadata without length and hashes in meta (version only)', async (t) => {
    const c = await setup(t.testdir(), {}, (sim) => {
      sim.metaHashes = false;
    });
    t.match(await c.refresh(), { snapshotVersion: 1 });
  });
  t.test('non-consistent-snapshot repository uses plain file names', async (t) => {
    const c = await setup(t.testdir(), { consistentSnapshot: false });
    await c.refresh();
    t.same(c.sim.fetched, ['2.root.json', 'timestamp.json', 'snapshot.json', 'targets.json']);
  });
  t.test('invalid initial root is refused', async (t) => {
    const c = await setup(t.testdir());
    const bad = new TrustClient({ trustedDir: c.trusted, shippedRootPath: join(c.trusted, '..', 'nope.json'), source: c.sim.source(), now: () => c.sim.now });
    await t.rejects(bad.refresh(), { code: 'MANIFEST_NO_TRUSTED_ROOT' });
  });
  t.test('unsigned initial root is refused', async (t) => {
    const c = await setup(t.testdir());
    const path = join(c.trusted, '..', 'unsigned-root.json');
    await writeFile(path, JSON.stringify({ signatures: [], signed: c.sim.root }));
    const bad = new TrustClient({ trustedDir: c.trusted, shippedRootPath: path, source: c.sim.source(), now: () => c.sim.now });
    await t.rejects(bad.refresh(), { code: 'MANIFEST_NO_TRUSTED_ROOT' });
  });
  t.test('custom unrecognized fields are preserved and verified', async (t) => {
    const c = await setup(t.testdir(), {}, (sim) => {
      sim.targets.get('targets')!['x-vendor'] = { nested: [1, 'two'] };
    });
    t.match(await c.refresh(), { targetsVersion: 1 });
  });
});

t.test('expiration', async (t) => {
  t.test('expired root after rotation is refused', async (t) => {
    const c = await setup(t.testdir());
    await c.refresh();
    c.sim.bump('root');
    c.sim.root.expires = new Date(T0 - DAY).toISOString();
    c.sim.publishRoot();
    await t.rejects(c.refresh(), { code: 'MANIFEST_EXPIRED' });
  });
  t.test('expired initial root is allowed to start the chain', async (t) => {
    const c = await setup(t.testdir(), {}, (sim) => {
      sim.root.expires = new Date(T0 - DAY).toISOString().replace(/\.\d+Z/, 'Z');
    });
    c.sim.bump('root');
    c.sim.publishRoot();
    t.match(await c.refresh(), { rootVersion: 2 });
  });
  for (const role of ['timestamp', 'snapshot', 'targets']) {
    t.test(`expired ${role} is refused; a re-signed one is accepted`, async (t) => {
      const c = await setup(t.testdir());
      await c.refresh();
      c.sim.now += 100 * DAY;
      await t.rejects(c.refresh(), { code: 'MANIFEST_EXPIRED' });
      if (role === 'timestamp') {
        c.sim.bump('timestamp');
        c.sim.publishTimestamp();
        await t.rejects(c.refresh(), { code: 'MANIFEST_EXPIRED' }, 'snapshot is expired too');
      }
      c.sim.update();
      t.match(await c.refresh(), { targetsVersion: 2 });
    });
  }
  t.test('expired timestamp still protects against rollback of the new one', async (t) => {
    const c = await setup(t.testdir());
    c.sim.bump('timestamp');
    c.sim.bump('timestamp');
    c.sim.publishTimestamp();
    await c.refresh();
    c.sim.now += 10 * DAY;
    c.sim.timestamp.version = 2;
    c.sim.timestamp.expires = new Date(c.sim.now + DAY).toISOString();
    c.sim.publishTimestamp();
    await t.rejects(c.refresh(), { code: 'MANIFEST_ROLLBACK' });
  });
});

t.test('keys', async (t) => {
  t.test('threshold of distinct keys: 2-of-3 timestamp', async (t) => {
    const c = await setup(t.testdir(), {}, (sim) => {
      sim.root.roles['timestamp']!.threshold = 2;
      sim.addKey('timestamp');
      sim.addKey('timestamp');
    });
    t.match(await c.refresh(), { timestampVersion: 1 });
    c.sim.signers.set('timestamp', c.sim.signers.get('timestamp')!.slice(0, 1));
    c.sim.bump('timestamp');
    c.sim.publishTimestamp();
    await t.rejects(c.refresh(), { code: 'MANIFEST_SIGNATURE' });
  });
  t.test('extra signatures by unknown keys are ignored', async (t) => {
    const c = await setup(t.testdir());
    c.sim.signers.set('timestamp', [...c.sim.signers.get('timestamp')!, generateSigningKey()]);
    c.sim.publishTimestamp();
    t.match(await c.refresh(), { timestampVersion: 1 });
  });
  t.test('a key shared by two roles works', async (t) => {
    const c = await setup(t.testdir(), {}, (sim) => {
      const k = sim.signers.get('snapshot')![0]!;
      sim.replaceKeys('timestamp', k);
    });
    t.match(await c.refresh(), { timestampVersion: 1 });
  });
  t.test('root without keys for a role: that role is never trusted', async (t) => {
    const c = await setup(t.testdir());
    await c.refresh();
    c.sim.bump('root');
    c.sim.root.roles['snapshot']!.keyids = [];
    c.sim.publishRoot();
    c.sim.update();
    await t.rejects(c.refresh(), { code: 'MANIFEST_SIGNATURE' });
  });
});

t.test('rollback', async (t) => {
  t.test('timestamp version rollback', async (t) => {
    const c = await setup(t.testdir());
    c.sim.update();
    await c.refresh();
    c.sim.timestamp.version = 1;
    c.sim.publishTimestamp();
    await t.rejects(c.refresh(), { code: 'MANIFEST_ROLLBACK' });
    t.equal(await c.version('timestamp'), 2);
  });
  t.test('snapshot version rollback via timestamp meta', async (t) => {
    const c = await setup(t.testdir());
    c.sim.update();
    await c.refresh();
    c.sim.snapshot.version = 1;
    c.sim.publishSnapshot();
    c.sim.bump('timestamp');
    c.sim.publishTimestamp();
    await t.rejects(c.refresh(), { code: 'MANIFEST_ROLLBACK' });
  });
  t.test('targets version rollback via snapshot meta', async (t) => {
    const c = await setup(t.testdir());
    c.sim.update();
    await c.refresh();
    c.sim.targets.get('targets')!.version = 1;
    c.sim.bump('snapshot');
    c.sim.publishSnapshot();
    c.sim.bump('timestamp');
    c.sim.publishTimestamp();
    await t.rejects(c.refresh(), { code: 'MANIFEST_ROLLBACK' });
    t.equal(await c.version('snapshot'), 2);
  });
  t.test('snapshot version mismatch with timestamp meta', async (t) => {
    const c = await setup(t.testdir(), {}, (sim) => {
      sim.metaHashes = false;
    });
    await c.refresh();
    c.sim.bump('snapshot');
    c.sim.publishSnapshot();
    c.sim.files.set('2.snapshot.json', c.sim.files.get('2.snapshot.json')!);
    c.sim.snapshot.version = 3;
    const wrong = c.sim.sign('snapshot', c.sim.snapshot);
    c.sim.snapshot.version = 2;
    c.sim.bump('timestamp');
    c.sim.publishTimestamp();
    c.sim.files.set('2.snapshot.json', wrong);
    await t.rejects(c.refresh(), { code: 'MANIFEST_VERSION_MISMATCH' });
  });
  t.test('fast-forward recovery after timestamp key rotation', async (t) => {
    const c = await setup(t.testdir());
    c.sim.timestamp.version = 1000;
    c.sim.publishTimestamp();
    t.match(await c.refresh(), { timestampVersion: 1000 });
    c.sim.bump('root');
    c.sim.replaceKeys('timestamp');
    c.sim.publishRoot();
    c.sim.timestamp.version = 2;
    c.sim.publishTimestamp();
    t.match(await c.refresh(), { rootVersion: 2, timestampVersion: 2 }, 'the old fast-forwarded timestamp no longer verifies and is dropped');
  });
  t.test('fast-forward recovery after snapshot key rotation', async (t) => {
    const c = await setup(t.testdir());
    c.sim.snapshot.version = 500;
    c.sim.publishSnapshot();
    c.sim.bump('timestamp');
    c.sim.publishTimestamp();
    t.match(await c.refresh(), { snapshotVersion: 500 });
    c.sim.bump('root');
    c.sim.replaceKeys('snapshot');
    c.sim.publishRoot();
    c.sim.snapshot.version = 2;
    c.sim.publishSnapshot();
    c.sim.bump('root');
    c.sim.replaceKeys('timestamp');
    c.sim.publishRoot();
    c.sim.timestamp.version = 1;
    c.sim.publishTimestamp();
    t.match(await c.refresh(), { rootVersion: 3, snapshotVersion: 2, timestampVersion: 1 });
  });
});

t.test('key rotations', async (t) => {
  const cases: { name: string; steps: { n: number; threshold: number; signOld: number; signNew: number }[]; ok: boolean }[] = [
    { name: '1-of-1 to 1-of-1', steps: [{ n: 1, threshold: 1, signOld: 1, signNew: 1 }], ok: true },
    { name: '1-of-1 to 2-of-3', steps: [{ n: 3, threshold: 2, signOld: 1, signNew: 2 }], ok: true },
    { name: 'new root missing old signature', steps: [{ n: 1, threshold: 1, signOld: 0, signNew: 1 }], ok: false },
    { name: 'new root missing new signature', steps: [{ n: 1, threshold: 1, signOld: 1, signNew: 0 }], ok: false },
    { name: 'new root below new threshold', steps: [{ n: 3, threshold: 2, signOld: 1, signNew: 1 }], ok: false },
    { name: 'three rotations in a row', steps: [{ n: 1, threshold: 1, signOld: 1, signNew: 1 }, { n: 2, threshold: 2, signOld: 1, signNew: 2 }, { n: 1, threshold: 1, signOld: 2, signNew: 1 }], ok: true },
  ];
  for (const cs of cases) {
    t.test(cs.name, async (t) => {
      const c = await setup(t.testdir());
      await c.refresh();
      for (const s of cs.steps) {
        const old = c.sim.signers.get('root')!;
        c.sim.bump('root');
        c.sim.root.roles['root'] = { keyids: [], threshold: s.threshold };
        c.sim.signers.set('root', []);
        const fresh = Array.from({ length: s.n }, () => c.sim.addKey('root'));
        c.sim.files.set(`${c.sim.root.version}.root.json`, c.sim.sign('root', c.sim.root, [...old.slice(0, s.signOld), ...fresh.slice(0, s.signNew)]));
        c.sim.signers.set('root', fresh);
      }
      if (cs.ok) t.match(await c.refresh(), { rootVersion: 1 + cs.steps.length, rootsRotated: cs.steps.length });
      else {
        await t.rejects(c.refresh(), { code: 'MANIFEST_SIGNATURE' });
        t.equal(await c.version('root'), 1);
      }
    });
  }
  t.test('rotation limit: at most maxRootRotations per refresh', async (t) => {
    const c = await setup(t.testdir());
    for (let i = 0; i < 5; i++) c.sim.rotateRoot();
    const client = (): TrustClient => new TrustClient({ trustedDir: c.trusted, shippedRootPath: join(c.trusted, '..', 'shipped-root.json'), source: c.sim.source(), now: () => c.sim.now, limits: { maxRootRotations: 3 } });
    t.match(await client().refresh(), { rootVersion: 4, rootsRotated: 3 });
    t.match(await client().refresh(), { rootVersion: 6, rootsRotated: 2 });
  });
  t.test('root version gap is refused', async (t) => {
    const c = await setup(t.testdir());
    c.sim.root.version = 3;
    c.sim.files.set('2.root.json', c.sim.sign('root', c.sim.root));
    await t.rejects(c.refresh(), { code: 'MANIFEST_ROOT_VERSION' });
  });
  t.test('timestamp key rotation is followed', async (t) => {
    const c = await setup(t.testdir());
    await c.refresh();
    c.sim.bump('root');
    c.sim.replaceKeys('timestamp');
    c.sim.publishRoot();
    c.sim.bump('timestamp');
    c.sim.publishTimestamp();
    t.match(await c.refresh(), { rootVersion: 2, timestampVersion: 2 });
  });
  t.test('targets key rotation without new targets is refused, then accepted once re-signed', async (t) => {
    const c = await setup(t.testdir());
    await c.refresh();
    c.sim.bump('root');
    const old = c.sim.signers.get('targets')!;
    c.sim.replaceKeys('targets');
    c.sim.publishRoot();
    c.sim.signers.set('targets', old);
    c.sim.update();
    await t.rejects(c.refresh(), { code: 'MANIFEST_SIGNATURE' });
    c.sim.signers.set('targets', [c.sim.signers.get('targets')![0]!]);
    c.sim.replaceKeys('targets');
    c.sim.bump('root');
    c.sim.publishRoot();
    c.sim.update();
    t.match(await c.refresh(), { rootVersion: 3 });
  });
});

t.test('delegations', async (t) => {
  const build = (sim: RepoSim): void => {
    sim.delegate('targets', 'a', { paths: ['releases/a/*'] });
    sim.delegate('targets', 'b', { paths: ['releases/b/*'], terminating: true });
    sim.delegate('targets', 'c', { paths: ['releases/b/*', 'releases/*'] });
    sim.delegate('a', 'a1', { paths: ['releases/a/deep*'] });
    sim.addTarget('releases/a/x', Buffer.from('from a'), undefined, 'a');
    sim.addTarget('releases/a/deep1', Buffer.from('from a1'), undefined, 'a1');
    sim.addTarget('releases/b/y', Buffer.from('from b'), undefined, 'b');
    sim.addTarget('releases/b/y', Buffer.from('from c'), undefined, 'c');
    sim.addTarget('releases/b/z', Buffer.from('from c only'), undefined, 'c');
    sim.addTarget('releases/z', Buffer.from('c, not shadowed'), undefined, 'c');
    sim.addTarget('releases/a/x2', Buffer.from('outside a1 paths'), undefined, 'a1');
  };
  t.test('refresh without delegations fetches top-level metadata only', async (t) => {
    const c = await setup(t.testdir(), {}, build);
    await c.refresh({ delegations: false });
    t.same(c.sim.fetched, ['2.root.json', 'timestamp.json', '1.snapshot.json', '1.targets.json']);
  });
  t.test('lookup order, terminating roles and path patterns', async (t) => {
    const c = await setup(t.testdir(), {}, build);
    const client = c.client();
    await client.refresh({ delegations: false });
    c.sim.fetched.length = 0;
    const x = await client.findTarget('releases/a/x');
    t.equal(x?.length, 6);
    t.same(c.sim.fetched, ['1.a.json'], 'only the delegated role on the path is fetched');
    const deep = await client.findTarget('releases/a/deep1');
    t.equal(deep?.length, 7);
    t.equal((await client.findTarget('releases/b/y'))?.length, 6, 'b comes before c');
    t.equal(await client.findTarget('releases/b/z'), undefined, 'b is terminating: c is never consulted');
    t.equal((await client.findTarget('releases/z'))?.length, 15, 'b does not match: c is consulted');
    t.equal(await client.findTarget('releases/a/x2'), undefined, 'a1 may not sign outside its paths');
    t.equal(await client.findTarget('other/path'), undefined);
    const names = (await readdir(c.trusted)).sort();
    t.ok(names.includes('a.json') && names.includes('a1.json') && names.includes('b.json'));
  });
  t.test('target verification of downloaded bytes', async (t) => {
    const c = await setup(t.testdir(), {}, build);
    const client = c.client();
    await client.refresh();
    const x = (await client.findTarget('releases/a/x'))!;
    const file = [...c.sim.targetFiles.entries()].find(([k]) => k.endsWith('.x'))![1];
    t.doesNotThrow(() => verifyTargetBytes(x, file));
    const flipped = Buffer.from(file);
    flipped[0]! ^= 1;
    t.throws(() => verifyTargetBytes(x, flipped), { code: 'MANIFEST_TARGET_MISMATCH' });
  });
  t.test('a delegated role signed by the wrong key is refused', async (t) => {
    const c = await setup(t.testdir(), {}, build);
    const client = c.client();
    await client.refresh({ delegations: false });
    c.sim.signers.set('a', [generateSigningKey()]);
    c.sim.update(['a']);
    const client2 = c.client();
    await client2.refresh({ delegations: false });
    await t.rejects(client2.findTarget('releases/a/x'), { code: 'MANIFEST_SIGNATURE' });
  });
  t.test('delegation cycles terminate', async (t) => {
    const c = await setup(t.testdir(), {}, (sim) => {
      sim.delegate('targets', 'loop', { paths: ['*'] });
      const p = sim.targets.get('loop')!;
      p.delegations = { keys: sim.targets.get('targets')!.delegations!.keys, roles: [{ ...sim.targets.get('targets')!.delegations!.roles[0]! }] };
    });
    const client = c.client();
    await client.refresh();
    t.equal(await client.findTarget('nothing'), undefined);
  });
  t.test('max delegations bounds the walk', async (t) => {
    const c = await setup(t.testdir(), {}, (sim) => {
      let parent = 'targets';
      for (let i = 0; i < 6; i++) {
        sim.delegate(parent, `r${i}`, { paths: ['*'] });
        parent = `r${i}`;
      }
      sim.addTarget('deep', Buffer.from('deep'), undefined, 'r5');
    });
    const shallow = new TrustClient({ trustedDir: c.trusted, shippedRootPath: join(c.trusted, '..', 'shipped-root.json'), source: c.sim.source(), now: () => c.sim.now, limits: { maxDelegations: 3 } });
    await shallow.refresh({ delegations: false });
    // issue 19: running out of delegations is a coded failure, never a quiet "not found"
    await t.rejects(shallow.findTarget('deep'), { code: 'MANIFEST_DELEGATION_LIMIT', message: /limit reached: 3 delegated roles.*"r3"/ });
    const deep = c.client();
    await deep.refresh({ delegations: false });
    t.equal((await deep.findTarget('deep'))?.length, 4);
  });
});

t.test('as-verified persistence (the conformance CLI mode)', async (t) => {
  const asVerified = { persist: 'as-verified' as const, delegations: false };
  t.test('expired final root is persisted, nothing after it', async (t) => {
    const c = await setup(t.testdir());
    await c.client().refresh(asVerified);
    c.sim.bump('root');
    c.sim.publishRoot();
    await c.client().refresh(asVerified);
    c.sim.bump('root');
    c.sim.root.expires = new Date(T0 - DAY).toISOString();
    c.sim.publishRoot();
    c.sim.update();
    await t.rejects(c.client().refresh(asVerified), { code: 'MANIFEST_EXPIRED' });
    t.equal(await c.version('root'), 3);
    t.equal(await c.version('timestamp'), 1);
    t.equal(await c.version('snapshot'), 1);
  });
  t.test('root bumps even though the snapshot threshold is not met', async (t) => {
    const c = await setup(t.testdir());
    await c.client().refresh(asVerified);
    c.sim.bump('root');
    c.sim.root.roles['snapshot']!.threshold = 2;
    c.sim.publishRoot();
    c.sim.update();
    await t.rejects(c.client().refresh(asVerified), { code: 'MANIFEST_SIGNATURE' });
    t.equal(await c.version('root'), 2);
    t.equal(await c.version('timestamp'), 2, 'the verified timestamp stays');
    t.equal(await c.version('snapshot'), 1);
  });
  t.test('the same failures leave the directory untouched in the default at-end mode', async (t) => {
    const c = await setup(t.testdir());
    await c.client().refresh();
    c.sim.bump('root');
    c.sim.root.roles['snapshot']!.threshold = 2;
    c.sim.publishRoot();
    c.sim.update();
    await t.rejects(c.client().refresh(), { code: 'MANIFEST_SIGNATURE' });
    t.equal(await c.version('root'), 1);
    t.equal(await c.version('timestamp'), 1);
  });
});

t.test('unusual delegated role names are quoted in URLs and file names', async (t) => {
  for (const role of ['?', '#', '/delegatedrole', '../delegatedrole', "it's(1)*"]) {
    const c = await setup(t.testdir(), {}, (sim) => {
      sim.delegate('targets', role, { paths: ['*'] });
    });
    const client = c.client();
    await client.refresh({ delegations: false });
    t.equal(await client.findTarget('nonexistent target'), undefined, role);
    const quoted = encodeURIComponent(role).replace(/[!'()*]/g, (ch) => '%' + ch.charCodeAt(0).toString(16).toUpperCase());
    t.ok(c.sim.fetched.includes(`1.${quoted}.json`), `fetched 1.${quoted}.json`);
    const files = (await readdir(c.trusted)).filter((n) => n !== 'trusted-time.json');
    t.equal(files.length, 5, `${role}: five trusted roles, none outside the directory`);
    t.ok(files.includes(`${quoted}.json`));
  }
});

t.test('succinct hash-bin delegations', async (t) => {
  const key = generateSigningKey();
  const path = 'releases/binned.img';
  const { createHash } = await import('node:crypto');
  const bin = `bin-${(parseInt(createHash('sha256').update(path).digest('hex').slice(0, 2), 16) >> 7).toString(16)}`;
  const other = bin === 'bin-0' ? 'bin-1' : 'bin-0';
  const c = await setup(t.testdir(), {}, (sim) => {
    const top = sim.targets.get('targets')!;
    (top as Record<string, unknown>)['delegations'] = {
      keys: { [key.keyid]: { keytype: 'ed25519', scheme: 'ed25519', keyval: { public: key.publicHex } } },
      succinct_roles: { keyids: [key.keyid], threshold: 1, bit_length: 1, name_prefix: 'bin' },
    };
    for (const b of ['bin-0', 'bin-1']) {
      sim.targets.set(b, { _type: 'targets', spec_version: '1.0.31', version: 1, expires: new Date(T0 + 90 * DAY).toISOString(), targets: {} });
      sim.signers.set(b, [key]);
    }
    sim.addTarget('decoy', Buffer.from('in the wrong bin'), undefined, other);
    sim.addTarget(path, Buffer.from('binned'), undefined, bin);
  });
  const client = c.client();
  await client.refresh();
  t.equal((await client.findTarget(path))?.length, 6);
  const decoyBin = `bin-${(parseInt(createHash('sha256').update('decoy').digest('hex').slice(0, 2), 16) >> 7).toString(16)}`;
  const decoy = await client.findTarget('decoy');
  if (decoyBin === other) t.equal(decoy?.length, 16, 'decoy sits in its own bin: found');
  else t.equal(decoy, undefined, 'a target listed in a bin that does not own its hash is ignored');
  const names = (await readdir(c.trusted)).sort();
  t.ok(names.includes('bin-0.json') && names.includes('bin-1.json'), 'a full refresh visits every bin');
});

/**
 * Issue 15, proven from outside: hostile-but-signed repositories (crafted here with @tufjs-style
 * envelopes and the repository's OWN keys, not with slotflip's publishing code), driven through the
 * BUILT CLI (`node dist/daemon/cli.js`, run `npm run build` first) as a device owner would:
 * `verify`, `check`, `install`, `release export`. Each case asserts the exit code, the stable code
 * in the output, and, where nothing may change, that the emulated board (slot images and boot
 * environment) is byte-identical afterwards.
 */
import t from 'tap';
import type { Test } from 'tap';
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createBoard, makeTestImage } from '../../hal/board.js';
import { acquireStateLock } from '../../daemon/state-store.js';
import { addRelease, exportBundle, initRepo, resignTimestamp } from '../../manifests/repo.js';
import { canonicalJson, signBytes, signingKeyFromPem, type SigningKey } from '../../manifests/keys.js';

// SLOTFLIP_CLI: run the same cases against another build (e.g. main's, to see them fail there)
const CLI = process.env['SLOTFLIP_CLI'] ?? fileURLToPath(new URL('../../dist/daemon/cli.js', import.meta.url));
const SLOT_SIZE = 256 * 1024;
const DAY = 86_400_000;
const HW = 'acme,board';

if (!existsSync(CLI)) {
  t.fail(`${CLI} is missing: run \`npm run build\` first`);
  process.exit(1);
}

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

function cli(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...argv], { timeout: 60_000 }, (e, stdout, stderr) => {
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : -1) : 0, out: stdout, err: stderr });
    });
  });
}

async function hashTree(dir: string): Promise<string> {
  const h = createHash('sha256');
  const walk = async (d: string): Promise<void> => {
    for (const e of (await readdir(d, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else h.update(p + '\0').update(await readFile(p));
    }
  };
  await walk(dir);
  return h.digest('hex');
}

// ---------------------------------------------------------------- a hostile publisher's toolkit

const meta = (repo: string): string => join(repo, 'repository', 'metadata');
const key = async (repo: string, name: string): Promise<SigningKey> => signingKeyFromPem(await readFile(join(repo, 'keys', `${name}.pem`), 'utf8'));
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function envelope(signed: Json, keys: SigningKey[]): Buffer {
  const bytes = Buffer.from(canonicalJson(signed), 'utf8');
  return Buffer.from(JSON.stringify({ signatures: keys.map((k) => ({ keyid: k.keyid, sig: signBytes(k, bytes) })), signed }));
}

async function latest(repo: string, role: string): Promise<{ version: number; signed: Json }> {
  let v = 0;
  for (const n of await readdir(meta(repo))) {
    const m = new RegExp(`^(\\d+)\\.${role}\\.json$`).exec(n);
    if (m) v = Math.max(v, Number(m[1]));
  }
  return { version: v, signed: JSON.parse(await readFile(join(meta(repo), `${v}.${role}.json`), 'utf8')).signed };
}

/**
 * Publishes a new, validly signed set: optionally a new root (signed by every root key), new
 * targets (edited), snapshot and timestamp (edited), each signed with the repository's own keys.
 */
async function forge(repo: string, edit: { root?: (s: Json) => void; targets?: (s: Json) => void; timestamp?: (s: Json) => void; timestampKeys?: SigningKey[] }): Promise<void> {
  const rootKeys = await Promise.all((await readdir(join(repo, 'keys'))).filter((n) => /^root-\d+\.pem$/.test(n)).map((n) => key(repo, n.slice(0, -4))));
  if (edit.root) {
    const r = await latest(repo, 'root');
    r.signed['version'] = r.version + 1;
    edit.root(r.signed);
    const bytes = envelope(r.signed, rootKeys);
    await writeFile(join(meta(repo), `${r.version + 1}.root.json`), bytes);
    await writeFile(join(meta(repo), 'root.json'), bytes);
  }
  const tg = await latest(repo, 'targets');
  let targetsBytes: Buffer = await readFile(join(meta(repo), `${tg.version}.targets.json`));
  let targetsVersion = tg.version;
  if (edit.targets) {
    tg.signed['version'] = ++targetsVersion;
    edit.targets(tg.signed);
    targetsBytes = envelope(tg.signed, [await key(repo, 'targets')]);
    await writeFile(join(meta(repo), `${targetsVersion}.targets.json`), targetsBytes);
  }
  const sn = await latest(repo, 'snapshot');
  sn.signed['version'] = sn.version + 1;
  sn.signed['meta']['targets.json'] = { version: targetsVersion, length: targetsBytes.length, hashes: { sha256: sha(targetsBytes) } };
  const snapBytes = envelope(sn.signed, [await key(repo, 'snapshot')]);
  await writeFile(join(meta(repo), `${sn.version + 1}.snapshot.json`), snapBytes);
  const ts = JSON.parse(await readFile(join(meta(repo), 'timestamp.json'), 'utf8')).signed as Json;
  ts['version'] = ts['version'] + 1;
  ts['meta'] = { 'snapshot.json': { version: sn.version + 1, length: snapBytes.length, hashes: { sha256: sha(snapBytes) } } };
  edit.timestamp?.(ts);
  await writeFile(join(meta(repo), 'timestamp.json'), envelope(ts, edit.timestampKeys ?? [await key(repo, 'timestamp')]));
}

// ---------------------------------------------------------------- a device

interface Device {
  dir: string;
  repo: string;
  boardDir: string;
  cfg: string;
  trusted: string;
  c: string[];
}

async function device(dir: string, opts: { now?: number; release?: boolean; format?: 1 | 2 } = {}): Promise<Device> {
  const repo = join(dir, 'repo');
  const now = opts.now ?? Date.now();
  await initRepo(repo, { now: () => now });
  if (opts.release ?? true) {
    const image = join(dir, 'os.img');
    await writeFile(image, makeTestImage({ version: '1.1.0', size: 100 * 1024 }));
    await addRelease(repo, { image, version: '1.1.0', securityVersion: 1, hardware: [HW], channel: 'stable', compression: 'gzip', chunkSize: 16 * 1024, now: () => now, ...(opts.format ? { format: opts.format } : {}) });
  }
  const boardDir = join(dir, 'board');
  const board = await createBoard(boardDir, { backend: 'emulated', slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
  const cfg = join(dir, 'config.json');
  await writeFile(cfg, JSON.stringify({
    deviceId: 'dev-trust',
    hardware: HW,
    stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'dir', path: join(repo, 'repository') }] },
    board: { slots: { A: { path: board.slots.A, size: SLOT_SIZE }, B: { path: board.slots.B, size: SLOT_SIZE } }, boot: board.bootConfig, tries: 2 },
    reboot: { command: [process.execPath, '-e', '0'] },
    log: { level: 'error' },
  }));
  return { dir, repo, boardDir, cfg, trusted: join(dir, 'state', 'trusted'), c: ['--config', cfg, '--json'] };
}

const verifyArgs = (d: Device): string[] => ['verify', '--root', join(d.repo, 'repository/metadata/1.root.json'), '--repo', d.repo, '--hardware', HW, '--json'];

/** `install` of the device's repository must be refused with `exit` and `code`, changing nothing on the board. */
async function refusedInstall(t: Test, d: Device, exit: number, code: RegExp, source = join(d.repo, 'repository')): Promise<void> {
  const before = await hashTree(d.boardDir);
  const r = await cli(['install', source, ...d.c]);
  t.equal(r.code, exit, `install exits ${exit}: ${r.out}${r.err}`);
  t.match(JSON.parse(r.out), { phase: 'idle', rebooted: false, lastCheck: { detail: code } });
  t.equal(await hashTree(d.boardDir), before, 'slot images and boot environment byte-identical');
}

// ---------------------------------------------------------------- the findings

t.test('a timestamp issued in 9999 cannot carry the trusted time away', async (t) => {
  const d = await device(t.testdir());
  await forge(d.repo, { timestamp: (s) => { s['x-slotflip-issued'] = '9999-01-01T00:00:00Z'; s['expires'] = '9999-01-02T00:00:00Z'; } });
  const r1 = await cli(['check', ...d.c]);
  t.equal(r1.code, 0, `the forged timestamp itself verifies: ${r1.out}${r1.err}`);
  const floor = Date.parse(JSON.parse(await readFile(join(d.trusted, 'trusted-time.json'), 'utf8').catch(() => '{"floor":"1970-01-01T00:00:00Z"}')).floor);
  t.ok(floor <= Date.now() + 60 * 60_000, `floor stays within an hour of the clock: ${new Date(floor).toISOString()}`);
  // the legitimate timer re-signs; the device keeps updating
  await resignTimestamp(d.repo);
  const r2 = await cli(['install', join(d.repo, 'repository'), ...d.c]);
  t.equal(r2.code, 0, `valid metadata is still accepted and installed: ${r2.out}${r2.err}`);
  t.match(JSON.parse(r2.out), { rebooted: true });
});

t.test('a wrong floor is recovered by a root-signed time reset', async (t) => {
  const d = await device(t.testdir());
  t.equal((await cli(['check', ...d.c])).code, 0);
  await writeFile(join(d.trusted, 'trusted-time.json'), JSON.stringify({ floor: '9999-01-01T00:00:00.000Z' }));
  const stuck = await cli(['check', ...d.c]);
  t.equal(stuck.code, 5, 'a device whose floor is wrong refuses valid metadata with exit 5');
  t.match(stuck.err, /MANIFEST_EXPIRED/);
  const reset = await cli(['repo', 'time-reset', d.repo, '--json']);
  t.equal(reset.code, 0, reset.err);
  t.match(JSON.parse(reset.out), { rootVersion: 2 });
  const r = await cli(['check', ...d.c]);
  t.equal(r.code, 0, `recovered: ${r.out}${r.err}`);
  const floor = Date.parse(JSON.parse(await readFile(join(d.trusted, 'trusted-time.json'), 'utf8')).floor);
  t.ok(floor < Date.parse('2100-01-01'), 'the floor was set back by the root statement');
});

t.test("a key's declared scheme must match its key type", async (t) => {
  const d = await device(t.testdir());
  await forge(d.repo, {
    root: (s) => {
      const id = s['roles']['timestamp']['keyids'][0] as string;
      s['keys'][id]['scheme'] = 'ecdsa-sha2-nistp256';
    },
  });
  const v = await cli(verifyArgs(d));
  t.equal(v.code, 5, v.out);
  t.match(JSON.parse(v.out), { ok: false, code: 'MANIFEST_KEY_UNSUPPORTED' });
  await refusedInstall(t, d, 5, /MANIFEST_KEY_UNSUPPORTED/);
});

t.test('an unknown scheme is rejected', async (t) => {
  const d = await device(t.testdir());
  await forge(d.repo, { root: (s) => { const id = s['roles']['snapshot']['keyids'][0] as string; s['keys'][id]['scheme'] = 'ed25519-but-better'; } });
  t.match(JSON.parse((await cli(verifyArgs(d))).out), { ok: false, code: 'MANIFEST_KEY_UNSUPPORTED' });
});

for (const name of ['/etc/slotflip/img.zst', 'releases/../../../evil/img.zst', 'releases/a\u0000b/img.zst', 'releases\\..\\img.zst']) {
  t.test(`target name ${JSON.stringify(name)} is refused by verify and install`, async (t) => {
    const d = await device(t.testdir());
    await forge(d.repo, {
      targets: (s) => {
        const [orig, entry] = Object.entries(s['targets'] as Json)[0]!;
        delete s['targets'][orig];
        s['targets'][name] = entry;
      },
    });
    const v = await cli(verifyArgs(d));
    t.equal(v.code, 5, v.out);
    t.match(JSON.parse(v.out), { ok: false, code: 'MANIFEST_TARGET_NAME' });
    await refusedInstall(t, d, 5, /MANIFEST_TARGET_NAME/);
  });
}

t.test('release add refuses an unsafe name with its code', async (t) => {
  const d = await device(t.testdir(), { release: false });
  const image = join(d.dir, 'x.img');
  await writeFile(image, Buffer.alloc(1000, 1));
  for (const n of ['/abs/x', 'a/../x', 'a\\b']) {
    const r = await cli(['release', 'add', d.repo, '--image', image, '--version', '1.0.0', '--security-version', '1', '--hardware', HW, '--channel', 'stable', '--name', n]);
    t.not(r.code, 0, n);
    t.match(r.err, /MANIFEST_TARGET_NAME/, n);
  }
});

const indexAttacks: [string, (p: Json) => void][] = [
  ['overlapping chunks', (p) => { p['chunks'][1]['offset'] = 0; }],
  ['a zero-length chunk', (p) => { p['chunks'][2]['length'] = 0; }],
  ['an image larger than the slot', (p) => { p['size'] = SLOT_SIZE * 4; p['chunkSize'] = SLOT_SIZE * 4; p['chunks'] = [{ ...p['chunks'][0], length: p['chunks'].reduce((n: number, c: Json) => n + c['length'], 0) }]; }],
  ['a gap between chunks', (p) => { p['chunks'][1]['offset'] += 1; }],
];

/**
 * Format 2: the chunk list is in the index target. Rewrites the index file (mutated, canonical,
 * under its new hash-prefixed name) and signs targets listing its new length and hash, with the
 * payload's custom block mutated the same way for the fields it carries (size, chunkSize).
 */
async function forgeIndex(repo: string, mutate: (p: Json) => void): Promise<void> {
  const targets = (await latest(repo, 'targets')).signed['targets'] as Json;
  const [idxName, idxEntry] = Object.entries(targets).find(([n]) => n.endsWith('.index'))!;
  const dir = join(repo, 'repository/targets', idxName.split('/').slice(0, -1).join('/'));
  const base = idxName.split('/').at(-1)!;
  const index = JSON.parse(await readFile(join(dir, `${idxEntry['hashes']['sha256']}.${base}`), 'utf8')) as Json;
  mutate(index);
  const bytes = Buffer.from(canonicalJson(index), 'utf8');
  await writeFile(join(dir, `${sha(bytes)}.${base}`), bytes);
  await forge(repo, {
    targets: (s) => {
      s['targets'][idxName] = { length: bytes.length, hashes: { sha256: sha(bytes) } };
      const payload = (Object.entries(s['targets'] as Json).find(([n]) => !n.endsWith('.index'))![1] as Json)['custom']['payload'];
      payload['size'] = index['size'];
      payload['chunkSize'] = index['chunkSize'];
    },
  });
}

for (const [what, mutate] of indexAttacks) {
  t.test(`${what} (format 1, inline): refused at selection, before the slot is marked bad`, async (t) => {
    const d = await device(t.testdir(), { format: 1 });
    await forge(d.repo, { targets: (s) => { mutate((Object.values(s['targets'] as Json)[0] as Json)['custom']['payload']); } });
    if (!what.includes('slot')) {
      // verify knows no slot; everything else is judged from the metadata alone
      const v = await cli(verifyArgs(d));
      t.equal(v.code, 5, v.out);
      t.match(JSON.parse(v.out), { ok: false, code: 'MANIFEST_INDEX_INVALID' });
    }
    await refusedInstall(t, d, 5, /MANIFEST_INDEX_INVALID/);
  });
  t.test(`${what} (format 2, a signed index file): refused before the slot is marked bad`, async (t) => {
    const d = await device(t.testdir());
    await forgeIndex(d.repo, mutate);
    if (!what.includes('slot')) {
      // verify fetches and judges the index as a device does
      const v = await cli(verifyArgs(d));
      t.equal(v.code, 5, v.out);
      t.match(JSON.parse(v.out), { ok: false, code: 'MANIFEST_INDEX_INVALID' });
    }
    await refusedInstall(t, d, 5, /MANIFEST_INDEX_INVALID/);
  });
}

t.test('install exits non-zero whenever nothing was installed', async (t) => {
  const d = await device(t.testdir());
  const good = await readFile(join(meta(d.repo), 'timestamp.json'));
  // MANIFEST_SIGNATURE
  const env = JSON.parse(good.toString());
  env.signatures[0].sig = env.signatures[0].sig.replace(/^./, (c: string) => (c === '0' ? '1' : '0'));
  await writeFile(join(meta(d.repo), 'timestamp.json'), JSON.stringify(env));
  await refusedInstall(t, d, 5, /MANIFEST_SIGNATURE/);
  // MANIFEST_PARSE
  await writeFile(join(meta(d.repo), 'timestamp.json'), '{ not json');
  await refusedInstall(t, d, 5, /MANIFEST_PARSE/);
  await writeFile(join(meta(d.repo), 'timestamp.json'), good);
  // MANIFEST_NO_RELEASE
  const empty = await device(join(d.dir, 'empty'), { release: false });
  await refusedInstall(t, empty, 4, /MANIFEST_NO_RELEASE/);
  // another slotflip holds the device's lock: busy, exit 6, nothing touched
  const releaseLock = await acquireStateLock({ stateDir: join(d.dir, 'state') });
  const before = await hashTree(d.boardDir);
  const busy = await cli(['install', join(d.repo, 'repository'), ...d.c]);
  await releaseLock();
  t.equal(busy.code, 6, `busy exits 6: ${busy.err}`);
  t.match(busy.err, /DAEMON_LOCKED/);
  t.equal(await hashTree(d.boardDir), before);
  // a chunk-hash failure leaves the attempt pending: incomplete, exit 3
  const payloads = join(d.repo, 'repository/targets/releases/1.1.0');
  for (const f of (await readdir(payloads)).filter((n) => !n.endsWith('.index'))) {
    const b = await readFile(join(payloads, f));
    b[b.length - 10] ^= 0xff;
    await writeFile(join(payloads, f), b);
  }
  const r = await cli(['install', join(d.repo, 'repository'), ...d.c]);
  t.equal(r.code, 3, `chunk-hash failure exits 3: ${r.out}`);
  t.match(JSON.parse(r.out), { rebooted: false });
});

t.test('offline bundles: a week-old stick installs, an expired one is refused', async (t) => {
  const dir = t.testdir();
  // exported through the CLI, installed at once
  const fresh = await device(join(dir, 'fresh'));
  const stick = join(dir, 'fresh-stick');
  // only the release is named: its format 2 chunk index goes along (the stick could not install without it)
  const ex = await cli(['release', 'export', fresh.repo, '--out', stick, '--valid-days', '30', '--target', 'releases/1.1.0/os.img.gz', '--json']);
  t.equal(ex.code, 0, ex.err);
  t.same(JSON.parse(ex.out).targets, ['releases/1.1.0/os.img.gz', 'releases/1.1.0/os.img.gz.index']);
  t.ok((await readdir(join(stick, 'targets/releases/1.1.0'))).some((n) => n.endsWith('.os.img.gz.index')), 'the index file is on the stick');
  t.ok(existsSync(join(stick, 'metadata', 'offline.json')));
  const r0 = await cli(['install', stick, ...fresh.c]);
  t.equal(r0.code, 0, r0.out + r0.err);

  // a repository signed and exported 7 days ago: timestamp and snapshot long expired
  const week = await device(join(dir, 'week'), { now: Date.now() - 7 * DAY });
  const weekStick = join(dir, 'week-stick');
  await exportBundle(week.repo, weekStick, { now: () => Date.now() - 7 * DAY, validDays: 30 });
  const r1 = await cli(['install', weekStick, ...week.c]);
  t.equal(r1.code, 0, `7-day-old stick installs: ${r1.out}${r1.err}`);
  t.match(JSON.parse(r1.out), { rebooted: true });

  // the same stick without its offline statement: the freeze protection refuses it
  const bare = await device(join(dir, 'bare'), { now: Date.now() - 7 * DAY });
  const bareStick = join(dir, 'bare-stick');
  await exportBundle(bare.repo, bareStick, { now: () => Date.now() - 7 * DAY });
  await rm(join(bareStick, 'metadata', 'offline.json'));
  await refusedInstall(t, bare, 5, /MANIFEST_EXPIRED/, bareStick);

  // exported 40 days ago, valid for 30: past its own offline expiry
  const old = await device(join(dir, 'old'), { now: Date.now() - 40 * DAY });
  const oldStick = join(dir, 'old-stick');
  await exportBundle(old.repo, oldStick, { now: () => Date.now() - 40 * DAY, validDays: 30 });
  await refusedInstall(t, old, 5, /MANIFEST_OFFLINE_EXPIRED/, oldStick);

  // a statement not signed by the targets key is refused
  const forged = await device(join(dir, 'forged'), { now: Date.now() - 7 * DAY });
  const forgedStick = join(dir, 'forged-stick');
  await exportBundle(forged.repo, forgedStick, { now: () => Date.now() - 7 * DAY });
  const st = JSON.parse(await readFile(join(forgedStick, 'metadata', 'offline.json'), 'utf8'));
  const tsKey = await key(forged.repo, 'timestamp');
  await writeFile(join(forgedStick, 'metadata', 'offline.json'), envelope(st.signed, [tsKey]));
  await refusedInstall(t, forged, 5, /MANIFEST_OFFLINE_INVALID/, forgedStick);
});

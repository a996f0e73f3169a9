/**
 * Factory reset (issue 18, 2), driven from outside through the BUILT CLI (`npm run build` first):
 * - `factory-reset --config F [--keep-identity]` leaves the marker; `--apply DIR --defaults DIR`
 *   is what slotflip-factory-reset.service runs at boot.
 * - A power cut before every step of the apply (the process SIGKILLs itself there:
 *   SLOTFLIP_TEST_RESET_CUT), then a second cut at the first step, then a clean run: the tree ends
 *   exactly as an uninterrupted reset leaves it, and the marker is gone only then. One case also
 *   tears a step in the middle (a half-wiped tree, a half-built keep copy) by hand.
 * - After a full reset (slotflip's state dir wiped with the rest) the device still updates: a
 *   commit before the reset, another one after it, on an emulated board.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createBoard, powerCycle, makeTestImage } from '../../hal/board.js';
import { initRepo, addRelease, setRollout } from '../../manifests/repo.js';

const CLI = process.env['SLOTFLIP_CLI'] ?? fileURLToPath(new URL('../../dist/daemon/cli.js', import.meta.url));
const STEPS = ['keep', 'wipe', 'defaults', 'restore', 'dropKeep', 'dropMarker'];
const MARKER = '.slotflip-factory-reset';
// dozens of CLI runs (boot-time cost of a node process each) on shared cores
t.setTimeout(900_000);

function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; signal: string | null; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, timeout: 60_000 }, (e, out, err) => {
      const x = e as (Error & { code?: number | string; signal?: string }) | null;
      resolve({ code: x ? (typeof x.code === 'number' ? x.code : null) : 0, signal: x?.signal ?? null, out: String(out), err: String(err) });
    });
  });
}

/** every file under dir as `relative path → content` (directories as `path/ → ''`). */
async function tree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) {
        out[relative(dir, p) + '/'] = '';
        await walk(p);
      } else out[relative(dir, p)] = await readFile(p, 'utf8');
    }
  };
  await walk(dir);
  return out;
}

async function put(root: string, files: Record<string, string>): Promise<void> {
  for (const [p, text] of Object.entries(files)) {
    await mkdir(dirname(join(root, p)), { recursive: true });
    await writeFile(join(root, p), text);
  }
}

const USER_DATA = {
  'etc/upper/slotflip/config.json': '{"deviceId":"gw-7"}',
  'etc/upper/slotflip/client.key': 'device key',
  'etc/upper/hostname': 'renamed-by-owner',
  'var/lib/slotflip/trusted/root.json': 'root v3',
  'var/lib/slotflip/outbox/000041.json': '{"seq":41}',
  'var/lib/slotflip/update-record.json': JSON.stringify({ schema: 1, savedAt: 1, saves: 7, phase: 'idle', attempt: null, transitions: 9, attempts: 2, committedSecurityVersion: 4, rolledBack: [], installed: {}, history: [] }),
  'var/lib/app/db.sqlite': 'owner data',
  'var/log/app.log': 'logs',
};
const DEFAULTS = { 'etc/upper/hostname': 'factory-hostname', 'var/lib/app/README': 'empty database' };

/** A data dir with user data, the image's defaults dir and a config naming the data dir. */
async function fixture(dir: string): Promise<{ data: string; defaults: string; cfg: string }> {
  const data = join(dir, 'data');
  const defaults = join(dir, 'defaults');
  await put(data, USER_DATA);
  await put(defaults, DEFAULTS);
  const board = await createBoard(join(dir, 'board'), { backend: 'emulated', slotSize: 64 * 1024, factoryVersion: '1.0.0' });
  const cfg = join(dir, 'config.json');
  await writeFile(cfg, JSON.stringify({
    deviceId: 'gw-7', hardware: 'acme,board', stateDir: join(data, 'var/lib/slotflip'),
    trust: { shippedRoot: join(dir, '1.root.json') },
    board: { slots: { A: { path: board.slots.A }, B: { path: board.slots.B } }, boot: board.bootConfig },
    data: { dir: data },
  }));
  return { data, defaults, cfg };
}

type Mode = 'full' | 'keep-identity' | 'as-shipped';
const FLAGS: Record<Mode, string[]> = { full: [], 'keep-identity': ['--keep-identity'], 'as-shipped': ['--forget-security'] };
/** the record a reset that keeps the floor leaves: fresh and idle, floor 4 */
const FRESH_RECORD = { schema: 1, savedAt: 0, saves: 0, phase: 'idle', attempt: null, transitions: 0, attempts: 0, committedSecurityVersion: 4, rolledBack: [], installed: {}, history: [] };

async function expected(dir: string, mode: Mode): Promise<Record<string, string>> {
  const ref = join(dir, 'reference');
  const f = await fixture(ref);
  const req = await cli(['factory-reset', '--config', f.cfg, ...FLAGS[mode]]);
  const done = await cli(['factory-reset', '--apply', f.data, '--defaults', f.defaults]);
  if (req.code !== 0 || done.code !== 0) throw new Error(`reference reset failed: ${req.err}${done.err}`);
  return tree(f.data);
}

for (const mode of ['full', 'keep-identity', 'as-shipped'] as const) {
  const keeps = mode !== 'as-shipped';
  t.test(`${mode}: a power cut before each step, then ${keeps ? 'another, ' : ''}then a clean run`, async (t) => {
    const dir = t.testdir();
    const want = await expected(dir, mode);
    t.notOk(MARKER in want, 'the reference reset removed its marker');
    t.equal(want['var/lib/app/db.sqlite'], undefined, 'user data is gone');
    t.equal(want['etc/upper/hostname'], 'factory-hostname', "the image's defaults are back");
    t.equal(want['var/lib/slotflip/trusted/root.json'], keeps ? 'root v3' : undefined, `trust anchors ${keeps ? 'kept' : 'forgotten (--forget-security)'}`);
    t.equal(want['var/lib/slotflip/outbox/000041.json'], keeps ? '{"seq":41}' : undefined, `the outbox (undelivered events, their sequence) ${keeps ? 'kept' : 'forgotten'}`);
    const record = want['var/lib/slotflip/update-record.json'];
    if (mode === 'full') t.same(JSON.parse(record!), FRESH_RECORD, 'a fresh idle record that keeps the anti-rollback floor (4), nothing else');
    else if (mode === 'keep-identity') t.equal(record, USER_DATA['var/lib/slotflip/update-record.json'], 'the identity paths keep the whole record');
    else t.equal(record, undefined, 'no record: the floor starts again from the config');
    t.equal(want['etc/upper/slotflip/client.key'], mode === 'keep-identity' ? 'device key' : undefined);

    // as-shipped runs the same steps with nothing kept (the old full reset): two cuts are enough
    for (const step of keeps ? STEPS : ['wipe', 'defaults']) {
      const f = await fixture(join(dir, `cut-${step}`));
      const req = await cli(['factory-reset', '--config', f.cfg, ...FLAGS[mode], '--json']);
      t.match(JSON.parse(req.out), { mode, dataDir: f.data, ...(keeps ? { securityDir: 'var/lib/slotflip', floor: 4 } : {}) });
      if (!keeps) t.notOk('floor' in JSON.parse(req.out), 'as-shipped: no floor in the marker');
      t.match(await tree(f.data), USER_DATA, 'requesting wipes nothing');
      const cut = await cli(['factory-reset', '--apply', f.data, '--defaults', f.defaults], { SLOTFLIP_TEST_RESET_CUT: step });
      t.equal(cut.signal, 'SIGKILL', `power cut before ${step}`);
      t.ok(existsSync(join(f.data, MARKER)), `the marker survives a cut before ${step}`);
      if (keeps) {
        const again = await cli(['factory-reset', '--apply', f.data, '--defaults', f.defaults], { SLOTFLIP_TEST_RESET_CUT: 'keep' });
        t.equal(again.signal, 'SIGKILL', 'a second cut at the next boot');
      }
      const done = await cli(['factory-reset', '--apply', f.data, '--defaults', f.defaults, '--json']);
      t.equal(done.code, 0, done.err);
      t.match(JSON.parse(done.out), { applied: true, mode });
      t.same(await tree(f.data), want, `cut before ${step}: the same tree as an uninterrupted reset`);
      const idle = await cli(['factory-reset', '--apply', f.data, '--defaults', f.defaults, '--json']);
      t.same(JSON.parse(idle.out), { applied: false }, 'nothing pending afterwards: the next boot leaves the data alone');
    }
  });
}

t.test('full: the floor survives a torn record (the marker carries it) and is never lowered', async (t) => {
  const dir = t.testdir();
  const f = await fixture(dir);
  t.equal((await cli(['factory-reset', '--config', f.cfg])).code, 0);
  // after the request the record is torn (a foreign writer, a bad sector): the marker still has 4
  await writeFile(join(f.data, 'var/lib/slotflip/update-record.json'), '{"schema":1,"pha');
  t.equal((await cli(['factory-reset', '--apply', f.data, '--defaults', f.defaults])).code, 0);
  t.same(JSON.parse(await readFile(join(f.data, 'var/lib/slotflip/update-record.json'), 'utf8')), FRESH_RECORD, 'floor 4 from the marker');
  // a commit between the request and the reboot raised the floor to 6: the record's wins
  const g = await fixture(join(dir, 'raised'));
  t.equal((await cli(['factory-reset', '--config', g.cfg])).code, 0);
  await writeFile(join(g.data, 'var/lib/slotflip/update-record.json'), JSON.stringify({ ...FRESH_RECORD, committedSecurityVersion: 6, history: [{}] }));
  t.equal((await cli(['factory-reset', '--apply', g.data, '--defaults', g.defaults])).code, 0);
  t.same(JSON.parse(await readFile(join(g.data, 'var/lib/slotflip/update-record.json'), 'utf8')), { ...FRESH_RECORD, committedSecurityVersion: 6 });
  t.equal((await cli(['factory-reset', '--config', g.cfg, '--keep-identity', '--forget-security'])).code, 2, 'the two flags exclude each other');
});

t.test('keep-identity: a cut in the middle of the keep copy and in the middle of the wipe', async (t) => {
  const dir = t.testdir();
  const want = await expected(dir, 'keep-identity');
  // torn keep copy: `.keep.tmp` half built, live tree intact (the rename never happened)
  const a = await fixture(join(dir, 'torn-keep'));
  await cli(['factory-reset', '--config', a.cfg, '--keep-identity']);
  await put(join(a.data, `${MARKER}.keep.tmp`), { 'etc/upper/slotflip/config.json': '{"deviceId":"gw-' });
  t.equal((await cli(['factory-reset', '--apply', a.data, '--defaults', a.defaults])).code, 0);
  t.same(await tree(a.data), want, 'a torn keep copy is rebuilt from the live tree');
  // half-done wipe: keep copy complete, some live files already gone, including kept ones
  const b = await fixture(join(dir, 'torn-wipe'));
  await cli(['factory-reset', '--config', b.cfg, '--keep-identity']);
  t.equal((await cli(['factory-reset', '--apply', b.data, '--defaults', b.defaults], { SLOTFLIP_TEST_RESET_CUT: 'wipe' })).signal, 'SIGKILL');
  await rm(join(b.data, 'etc'), { recursive: true });
  await rm(join(b.data, 'var/lib/slotflip'), { recursive: true });
  t.equal((await cli(['factory-reset', '--apply', b.data, '--defaults', b.defaults])).code, 0);
  t.same(await tree(b.data), want, 'the identity comes back from the keep copy, not from the half-wiped tree');
});

t.test('refusals: --apply with --config, a keep path that leaves the data dir', async (t) => {
  const dir = t.testdir();
  const f = await fixture(dir);
  t.equal((await cli(['factory-reset', '--apply', f.data, '--config', f.cfg])).code, 2);
  t.equal((await cli(['factory-reset', '--apply', f.data], { SLOTFLIP_TEST_RESET_CUT: 'bogus' })).code, 2);
  const cfg = JSON.parse(await readFile(f.cfg, 'utf8')) as Record<string, unknown>;
  await writeFile(f.cfg, JSON.stringify({ ...cfg, data: { dir: f.data, identity: ['../etc/shadow'] } }));
  const r = await cli(['factory-reset', '--config', f.cfg, '--keep-identity']);
  t.equal(r.code, 1);
  t.match(r.err, /DAEMON_CONFIG_INVALID[\s\S]*\/data\/identity\/0/);
  t.notOk(existsSync(join(f.data, MARKER)), 'no marker');
  t.ok((await stat(join(f.data, 'var/log/app.log'))).isFile(), 'nothing touched');
});

t.test('after a full reset the device still updates, never below its floor; --forget-security forgets the floor', async (t) => {
  const dir = t.testdir();
  const SLOT = 256 * 1024;
  const boardDir = join(dir, 'board');
  const board = await createBoard(boardDir, { backend: 'emulated', slotSize: SLOT, factoryVersion: '1.0.0' });
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const publish = async (version: string, sv: number) => {
    const image = join(dir, `${version}.img`);
    await writeFile(image, makeTestImage({ version, size: 100 * 1024 }));
    await addRelease(repo, { image, version, securityVersion: sv, hardware: ['acme,board'], channel: 'stable', compression: 'gzip', chunkSize: 16 * 1024 });
  };
  const data = join(dir, 'data');
  const defaults = join(dir, 'defaults');
  await put(defaults, { 'var/lib/app/README': 'empty' });
  const cfg = join(dir, 'config.json'); // in the image's /etc: survives the reset
  await writeFile(cfg, JSON.stringify({
    deviceId: 'gw-8', hardware: 'acme,board', stateDir: join(data, 'var/lib/slotflip'),
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'dir', path: join(repo, 'repository') }] },
    board: { slots: { A: { path: board.slots.A, size: SLOT }, B: { path: board.slots.B, size: SLOT } }, boot: board.bootConfig, tries: 2 },
    reboot: { command: [process.execPath, '-e', '0'] },
    health: { allowNoChecks: true },
    data: { dir: data },
    log: { level: 'warn' },
  }));
  const cycle = async (version: string) => {
    let r = await cli(['update', '--once', '--config', cfg, '--json']);
    t.equal(r.code, 0, r.err);
    t.match(JSON.parse(r.out), { rebooted: true });
    await powerCycle(boardDir);
    r = await cli(['update', '--once', '--no-check', '--config', cfg, '--json']);
    t.equal(r.code, 0, r.err);
    t.match(JSON.parse(r.out), { phase: 'idle', finished: [{ outcome: 'succeeded', release: { version } }] });
  };
  await publish('1.1.0', 3);
  await cycle('1.1.0');
  t.ok(existsSync(join(data, 'var/lib/slotflip/trusted')), 'the state dir lives on the data partition');
  await put(data, { 'var/lib/app/db.sqlite': 'owner data' });

  t.equal((await cli(['factory-reset', '--config', cfg])).code, 0);
  await powerCycle(boardDir); // the reboot that applies it
  t.equal((await cli(['factory-reset', '--apply', data, '--defaults', defaults])).code, 0);
  const after = await tree(data);
  t.equal(after['var/lib/app/README'], 'empty', "the image's defaults");
  t.equal(after['var/lib/app/db.sqlite'], undefined, 'owner data gone');
  t.same(Object.keys(after).filter((p) => p.startsWith('var/lib/slotflip/') && p !== 'var/lib/slotflip/' && !/^var\/lib\/slotflip\/(trusted|outbox)\/./.test(p)).sort(), ['var/lib/slotflip/factory-reset-done.json', 'var/lib/slotflip/outbox/', 'var/lib/slotflip/trusted/', 'var/lib/slotflip/update-record.json'], 'of slotflip state only the trust anchors, the outbox and a fresh record stay (and the report the daemon sends once)');
  t.same(JSON.parse(after['var/lib/slotflip/factory-reset-done.json']!), { mode: 'full', kept: ['var/lib/slotflip/trusted', 'var/lib/slotflip/outbox', 'var/lib/slotflip/update-record.json'] }, 'the apply leaves what it did for the daemon to report');
  t.match(JSON.parse(after['var/lib/slotflip/update-record.json']!), { phase: 'idle', history: [], committedSecurityVersion: 3, installed: { B: { version: '1.1.0' } } }, 'the record keeps the floor and what the slots hold');

  let st = await cli(['status', '--config', cfg, '--json']);
  t.equal(st.code, 0, st.err);
  t.match(JSON.parse(st.out), { bootedSlot: 'B', phase: 'idle', committedSecurityVersion: 3 });
  // a signed release below the floor (a newer semver cut from an old, vulnerable branch) is still
  // refused after the reset; a device that forgot its floor would install it (1.1.0 is halted)
  await setRollout(repo, 'releases/1.1.0/1.1.0.img.gz', { percent: 100, halted: true });
  await publish('1.3.0', 2);
  const old = await cli(['update', '--once', '--config', cfg, '--json']);
  t.equal(old.code, 0, old.err);
  const oldOut = JSON.parse(old.out) as { rebooted: boolean; lastCheck?: { result: string; detail?: string } };
  t.match(oldOut, { rebooted: false, finished: [] });
  // without the floor 1.3.0 would be the one allowed release; with it the only secure one is the halted 1.1.0
  t.match(oldOut.lastCheck, { result: 'none', detail: /MANIFEST_ROLLOUT_HALTED.*1\.1\.0/ }, '1.3.0 (securityVersion 2 < floor 3) is not a candidate');
  await publish('1.2.0', 4);
  await cycle('1.2.0');

  t.equal((await cli(['factory-reset', '--config', cfg, '--forget-security'])).code, 0);
  await powerCycle(boardDir);
  t.equal((await cli(['factory-reset', '--apply', data, '--defaults', defaults])).code, 0);
  t.same(await tree(data), { 'var/': '', 'var/lib/': '', 'var/lib/app/': '', 'var/lib/app/README': 'empty', 'var/lib/slotflip/': '', 'var/lib/slotflip/factory-reset-done.json': '{"mode":"as-shipped","kept":[]}\n' }, 'as shipped: slotflip state wiped with the rest; only the report of the reset for the daemon');
  st = await cli(['status', '--config', cfg, '--json']);
  t.match(JSON.parse(st.out), { bootedSlot: 'A', phase: 'idle', committedSecurityVersion: 0 });
});

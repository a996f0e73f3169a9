/**
 * daemon/migration.ts in process: the image-path rule for a release's `custom.migration`, the
 * snapshot budget, and when `settle` keeps, restores or drops a snapshot.
 */
import t from 'tap';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { isImagePath, Migrations, type Exec } from '../../daemon/migration.js';
import type { HistoryEntry } from '../../daemon/machine.js';

t.test('custom.migration must be an absolute path inside the image, never a shell string', async (t) => {
  for (const ok of ['/usr/lib/app/migrate', '/opt/x']) t.ok(isImagePath(ok), ok);
  for (const bad of ['usr/lib/app/migrate', '/usr/../bin/sh', '/usr/lib/./x', '/', '', 'rm -rf /', '/a\nb', 42, undefined]) t.notOk(isImagePath(bad), JSON.stringify(bad));
});

const entry = (attempt: number, outcome: HistoryEntry['outcome']) => ({ attempt, outcome }) as HistoryEntry;

t.test('snapshot budget, settle: keep while the trial is judged, restore on another slot, drop after a commit', async (t) => {
  const dir = t.testdir();
  const data = join(dir, 'data');
  await mkdir(join(data, 'app'), { recursive: true });
  await writeFile(join(data, 'app/db'), 'v1');
  const ran: string[][] = [];
  const exec: Exec = async (argv, env) => {
    ran.push(argv);
    await writeFile(join(env['SLOTFLIP_DATA_DIR']!, 'app/db'), 'v2');
    return { code: 0, output: '' };
  };
  const make = (maxBytes: number) => new Migrations({ dataDir: data, snapshotDir: join(dir, 'snap'), config: { argv: ['/m'], paths: ['app'], maxBytes, timeoutSeconds: 5 }, exec });

  const tooSmall = await make(1).beforeChecks(1, 'r@1', 'B');
  t.match(tooSmall, { name: 'migration', output: /DAEMON_MIGRATION_SNAPSHOT_TOO_LARGE.*migration\.maxBytes/ });
  t.same(ran, [], 'nothing ran past the budget');
  t.notOk(existsSync(join(dir, 'snap')));

  const m = make(1024);
  t.equal(await m.beforeChecks(1, 'r@1', 'B'), undefined);
  t.equal(await m.beforeChecks(1, 'r@1', 'B'), undefined, 'a restart after the migration does not run it again');
  t.equal(ran.length, 1);
  t.equal(await m.settle('B', []), undefined, 'trial still judged: kept');
  t.equal(await readFile(join(data, 'app/db'), 'utf8'), 'v2');
  t.equal(await m.settle('A', []), 'restored', 'another slot booted: restored');
  t.equal(await readFile(join(data, 'app/db'), 'utf8'), 'v1');
  t.equal(await m.settle('A', []), undefined, 'idempotent');

  t.equal(await m.beforeChecks(2, 'r@2', 'B'), undefined);
  t.equal(await m.settle('B', [entry(2, 'succeeded')]), 'dropped');
  t.equal(await readFile(join(data, 'app/db'), 'utf8'), 'v2', 'a commit keeps the migrated data');
  t.notOk(existsSync(join(dir, 'snap')));
});

// ---- a release's own migration (custom.migration) --------------------------------------------

import { chmod, open, readdir, readlink, rm, symlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { migrationProblem } from '../../manifests/migration.js';
import type { MigrationStep } from '../../daemon/migration.js';

t.test('release add and the device refuse a migration outside the image or with a shell in it', async (t) => {
  const ok = { path: '/usr/lib/slotflip/migrate-1.2', snapshot: ['var/lib/app'] };
  t.equal(migrationProblem(ok), null);
  t.equal(migrationProblem({ ...ok, timeoutSeconds: 60 }), null);
  for (const path of ['/data/migrate', '/etc/migrate', '/var/lib/x', '/tmp/m', '/usr/lib/../../data/m', 'usr/lib/m', '/usr/lib/m; rm -rf /', '/usr/lib/$(id)', '/usr/./lib/m', '/usr//lib/m', '/usr/lib/m/']) {
    t.match(migrationProblem({ ...ok, path }), /migration path/, path);
  }
  t.match(migrationProblem({ ...ok, snapshot: [] }), /1\.\.64 snapshot paths/);
  t.match(migrationProblem({ ...ok, snapshot: ['/var/lib/app'] }), /relative to the data partition/);
  t.match(migrationProblem({ ...ok, snapshot: ['var/../../etc'] }), /without "\.\."/);
  t.match(migrationProblem({ ...ok, timeoutSeconds: 0 }), /timeoutSeconds/);
});

/** data dir, image root with the named executable (a node script: argument array, no shell). */
async function releaseDevice(dir: string, script: string) {
  const data = join(dir, 'data');
  const root = join(dir, 'slot-b-root');
  await put(data, { 'var/lib/app/db': 'v1', 'var/lib/app/sub/index': 'i1', 'etc/upper/app.conf': 'conf1', 'var/log/app.log': 'log' });
  const exe = join(root, 'usr/lib/app/migrate-2');
  await mkdir(dirname(exe), { recursive: true });
  // the script has no extension and the project is "type": "module": say how Node should read it
  await writeFile(join(root, 'package.json'), '{"type":"commonjs"}\n');
  await writeFile(exe, `#!${process.execPath}\n${script}`);
  await chmod(exe, 0o755);
  const named = { path: '/usr/lib/app/migrate-2', snapshot: ['var/lib/app', 'etc/upper/app.conf', 'var/lib/app2'] };
  const make = (o: { onStep?: (s: MigrationStep) => void; deadlineSeconds?: number } = {}) =>
    new Migrations({ dataDir: data, snapshotDir: join(data, 'var/lib/slotflip/migration-snapshot'), imageRoot: root, maxBytes: 1 << 20, deadlineSeconds: o.deadlineSeconds ?? 30, ...(o.onStep ? { onStep: o.onStep } : {}) });
  return { data, root, exe, named, make };
}

async function put(root: string, files: Record<string, string>): Promise<void> {
  for (const [p, text] of Object.entries(files)) {
    await mkdir(dirname(join(root, p)), { recursive: true });
    await writeFile(join(root, p), text);
  }
}

/** files under dir (snapshot dir excluded) as `path → content`. */
async function tree(dir: string, skip = 'var/lib/slotflip'): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string, rel: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (r === skip) continue;
      if (e.isDirectory()) await walk(join(d, e.name), r);
      else out[r] = await readFile(join(d, e.name), 'utf8');
    }
  };
  await walk(dir, '');
  return out;
}

// migrates v1 → v2 (refusing anything else), adds var/lib/app2, rewrites the config, appends a log
const MIGRATE = `
const fs = process.getBuiltinModule('node:fs');
const d = process.env.SLOTFLIP_DATA_DIR;
if (fs.readFileSync(d + '/var/lib/app/db', 'utf8') !== 'v1') { console.log('unknown data'); process.exit(3); }
fs.writeFileSync(d + '/var/lib/app/db', 'half');
if (process.argv.length > 2) process.exit(9);
if (fs.existsSync(d + '/fail')) { console.log('broke halfway'); process.exit(1); }
if (fs.existsSync(d + '/hang')) setInterval(() => {}, 1000);
else {
  fs.rmSync(d + '/var/lib/app/sub', { recursive: true });
  fs.mkdirSync(d + '/var/lib/app2');
  fs.writeFileSync(d + '/var/lib/app2/new', 'by 2');
  fs.writeFileSync(d + '/etc/upper/app.conf', 'conf2');
  fs.appendFileSync(d + '/var/log/app.log', '+2');
  fs.writeFileSync(d + '/var/lib/app/db', 'v2');
  console.log('migrated to 2 for ' + process.env.SLOTFLIP_RELEASE_ID);
}
`;
const V1 = { 'var/lib/app/db': 'v1', 'var/lib/app/sub/index': 'i1', 'etc/upper/app.conf': 'conf1', 'var/log/app.log': 'log' };
const V2 = { 'var/lib/app/db': 'v2', 'var/lib/app2/new': 'by 2', 'etc/upper/app.conf': 'conf2', 'var/log/app.log': 'log+2' };

t.test("a release's migration runs from the booted image; a rollback restores exactly its snapshot paths", async (t) => {
  const d = await releaseDevice(t.testdir(), MIGRATE);
  // held open as a bind mount holds its source: if the restore replaced the directory, this
  // handle points at a deleted one (Linux: /proc/self/fd/N ends in " (deleted)")
  const held = await open(join(d.data, 'var/lib/app'), 'r');
  t.teardown(() => held.close());
  const m = d.make();
  t.equal(await m.beforeChecks(1, 'r2@1', 'B', d.named), undefined);
  t.same(await tree(d.data), V2);
  t.equal(await d.make().beforeChecks(1, 'r2@1', 'B', d.named), undefined, 'a restart does not run it again');
  // the old slot settles without knowing the release: the snapshot names its own paths
  const old = new Migrations({ dataDir: d.data, snapshotDir: join(d.data, 'var/lib/slotflip/migration-snapshot') });
  t.equal(await old.settle('A', []), 'restored');
  t.same(await tree(d.data), { ...V1, 'var/log/app.log': 'log+2' }, 'named paths back as they were (app2 removed); the unnamed log keeps its line');
  t.equal(await readlink(`/proc/self/fd/${held.fd}`), join(d.data, 'var/lib/app'), 'var/lib/app restored in place: the same directory, so a bind mount of it (/var/lib/app from /data/var/lib/app) sees the restored data');
  t.notOk(existsSync(join(d.data, 'var/lib/slotflip/migration-snapshot')));
});

t.test("a release's migration that fails or hangs fails the check; one that is not in the image never runs", async (t) => {
  const d = await releaseDevice(t.testdir(), MIGRATE);
  await writeFile(join(d.data, 'fail'), '');
  t.match(await d.make().beforeChecks(1, 'r2@1', 'B', d.named), { name: 'migration', required: true, output: /migrate-2 exited 1: broke halfway/ });
  t.equal(await d.make().settle('A', []), 'restored');
  t.equal(await readFile(join(d.data, 'var/lib/app/db'), 'utf8'), 'v1');

  await rm(join(d.data, 'fail'));
  await writeFile(join(d.data, 'hang'), '');
  const started = Date.now();
  t.match(await d.make({ deadlineSeconds: 1 }).beforeChecks(2, 'r2@2', 'B', { ...d.named, timeoutSeconds: 600 }), { output: /DAEMON_MIGRATION_TIMEOUT: .* within 1 s/ }, 'timeoutSeconds is capped by the health deadline');
  t.ok(Date.now() - started < 10_000, 'killed at the deadline');
  t.equal(await d.make().settle('A', []), 'restored');
  await rm(join(d.data, 'hang'));

  t.match(await d.make().beforeChecks(3, 'r@3', 'B', { ...d.named, path: '/usr/lib/app/missing' }), { output: /DAEMON_MIGRATION_NOT_IN_IMAGE: .*no such file \(ENOENT\)/ });
  // a symlink in the image that points into the data partition is not "in the image"
  await put(d.data, { 'evil': '#!/bin/sh\n' });
  await chmod(join(d.data, 'evil'), 0o755);
  await symlink(join(d.data, 'evil'), join(d.root, 'usr/lib/app/evil'));
  t.match(await d.make().beforeChecks(3, 'r@3', 'B', { ...d.named, path: '/usr/lib/app/evil' }), { output: /DAEMON_MIGRATION_NOT_IN_IMAGE: .*not on the booted slot's root/ });
  await chmod(d.exe, 0o644);
  t.match(await d.make().beforeChecks(3, 'r@3', 'B', d.named), { output: /not an executable file/ });
  t.match(await d.make().beforeChecks(3, 'r@3', 'B', { ...d.named, path: '/etc/x' }), { output: /DAEMON_MIGRATION_INVALID: .*under \/etc/ });
  t.notOk(existsSync(join(d.data, 'var/lib/slotflip/migration-snapshot')), 'nothing snapshotted for a migration that cannot run');
  t.same(await tree(d.data), { ...V1, evil: '#!/bin/sh\n' });
});

class Cut extends Error {}
// (matched by message: tap compares a rejection to a class structurally)

t.test('a power cut at every step of snapshot, migration and restore ends consistent', async (t) => {
  const before: MigrationStep[] = ['snapshot', 'snapshotCopied', 'migrate'];
  for (const at of [...before, 'inside the migration' as const]) {
    const d = await releaseDevice(join(t.testdir(), at.replace(/ /g, '-')), MIGRATE);
    const cutting = d.make({ onStep: (s) => { if (s === at) throw new Cut(at); } });
    if (at === 'inside the migration') {
      // the executable dies after writing half its work, as a cut would leave it
      const half = { ...d.named };
      await writeFile(d.exe, `#!${process.execPath}\nprocess.argv.push('cut');\n${MIGRATE}`);
      t.match(await cutting.beforeChecks(1, 'r2@1', 'B', half), { output: /exited 9/ });
      await writeFile(d.exe, `#!${process.execPath}\n${MIGRATE}`);
      // the record still says the trial is being judged (a cut, not a judged failure): run again
    } else {
      await t.rejects(cutting.beforeChecks(1, 'r2@1', 'B', d.named), { message: at }, `cut before ${at}`);
      if (at !== 'migrate') t.same(await tree(d.data), V1, `cut before ${at}: the data is untouched`);
    }
    // the next boot of the trial slot: settle keeps the snapshot, the migration runs (again)
    t.equal(await d.make().settle('B', []), undefined, `after a cut before ${at}: the snapshot stays while the trial is judged`);
    t.equal(await d.make().beforeChecks(1, 'r2@1', 'B', d.named), undefined, `after a cut before ${at}: migrated on the next start`);
    t.same(await tree(d.data), V2, `after a cut before ${at}: exactly the migrated data`);
    t.equal(await d.make().settle('A', []), 'restored');
    t.same(await tree(d.data), { ...V1, 'var/log/app.log': 'log+2' }, `after a cut before ${at}: the rollback restores the data as before the first try`);
  }
  for (const at of ['restore', 'restoredPath', 'drop'] as const) {
    const d = await releaseDevice(join(t.testdir(), `settle-${at}`), MIGRATE);
    t.equal(await d.make().beforeChecks(1, 'r2@1', 'B', d.named), undefined);
    await t.rejects(d.make({ onStep: (s) => { if (s === at) throw new Cut(at); } }).settle('A', []), { message: at }, `cut before ${at}`);
    t.equal(await d.make().settle('A', []), 'restored', `after a cut before ${at}: restored again`);
    t.same(await tree(d.data), { ...V1, 'var/log/app.log': 'log+2' }, `after a cut before ${at}: the old slot's data`);
    t.notOk(existsSync(join(d.data, 'var/lib/slotflip/migration-snapshot')));
    t.equal(await d.make().settle('A', []), undefined, 'idempotent');
  }
});

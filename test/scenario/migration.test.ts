/**
 * Data migrations that roll back with the slot (issue 18, 3), driven through the BUILT CLI
 * (`npm run build` first) on an emulated board: `slotflip update --once` across power-cycles.
 * The migration (config `migration.argv`) turns `app/db.txt` from "v1" into "v2" and adds
 * `app/new.txt`; it refuses data it does not know, so a re-run on half-migrated data fails.
 * - it succeeds: the trial commits on migrated data, the snapshot is dropped;
 * - it fails after writing half its work: the health check fails, the device rolls back, and on the
 *   old slot the snapshot is restored (db "v1", no new.txt) and deleted;
 *   (`slotflip migration settle`, the early-boot unit, does it before the daemon runs);
 * - the power goes in the middle of it (the migration SIGKILLs slotflip, then the board is
 *   power-cycled): the next start restores the snapshot and runs it again, and the trial commits;
 *   a torn snapshot (`migration-snapshot.tmp` left by a cut during the copy) is discarded.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createBoard, powerCycle, makeTestImage } from '../../hal/board.js';
import { initRepo, addRelease } from '../../manifests/repo.js';

t.setTimeout(900_000);
const CLI = process.env['SLOTFLIP_CLI'] ?? fileURLToPath(new URL('../../dist/daemon/cli.js', import.meta.url));
const SLOT = 256 * 1024;
type Tap = Pick<typeof t, 'equal' | 'match'>;

// MODE file: ok | fail | cut-once (kill the slotflip process mid-migration the first time)
const MIGRATE = `
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
const data = process.env.SLOTFLIP_DATA_DIR;
const [modeFile] = process.argv.slice(2);
const mode = readFileSync(modeFile, 'utf8').trim();
const db = readFileSync(data + '/app/db.txt', 'utf8');
if (db !== 'v1') { console.log('unknown data: ' + JSON.stringify(db)); process.exit(3); }
writeFileSync(data + '/app/db.txt', 'half');
if (mode === 'fail') { console.log('migration broke halfway'); process.exit(1); }
if (mode === 'cut-once' && !existsSync(modeFile + '.cut')) { writeFileSync(modeFile + '.cut', ''); process.kill(process.ppid, 'SIGKILL'); setTimeout(() => process.exit(9), 5000); }
else { writeFileSync(data + '/app/new.txt', 'added by 2'); writeFileSync(data + '/app/db.txt', 'v2'); console.log('migrated'); }
`;

function cli(args: string[]): Promise<{ code: number | null; signal: string | null; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 120_000 }, (e, out, err) => {
      const x = e as (Error & { code?: number | string; signal?: string }) | null;
      resolve({ code: x ? (typeof x.code === 'number' ? x.code : null) : 0, signal: x?.signal ?? null, out: String(out), err: String(err) });
    });
  });
}

/** `named`: the release names the migration (custom.migration: an executable in the image root,
 * data.imageRoot) instead of the device config. */
async function device(t: Tap, dir: string, mode: string, named = false) {
  const boardDir = join(dir, 'board');
  const board = await createBoard(boardDir, { backend: 'emulated', slotSize: SLOT, factoryVersion: '1.0.0' });
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const image = join(dir, '2.0.0.img');
  await writeFile(image, makeTestImage({ version: '2.0.0', size: 100 * 1024 }));
  // the new slot's root file system as the daemon sees it on its trial boot (an emulated board's
  // slot holds no file system): the migration the release names is an executable in it
  const imageRoot = join(dir, 'slot-root');
  await mkdir(join(imageRoot, 'usr/lib/app'), { recursive: true });
  // the script has no extension and the project is "type": "module": say how Node should read it
  await writeFile(join(imageRoot, 'package.json'), '{"type":"commonjs"}\n');
  await writeFile(join(imageRoot, 'usr/lib/app/migrate-2'), `#!${process.execPath}\nprocess.argv.push(${JSON.stringify(join(dir, 'mode'))});\n${MIGRATE.replace("import { readFileSync, writeFileSync, existsSync } from 'node:fs';", "const { readFileSync, writeFileSync, existsSync } = process.getBuiltinModule('node:fs');")}`, { mode: 0o755 });
  await addRelease(repo, { image, version: '2.0.0', securityVersion: 1, hardware: ['acme,board'], channel: 'stable', compression: 'gzip', chunkSize: 16 * 1024, ...(named ? { migration: { path: '/usr/lib/app/migrate-2', snapshot: ['app'] } } : {}) });
  const data = join(dir, 'data');
  await mkdir(join(data, 'app'), { recursive: true });
  await writeFile(join(data, 'app/db.txt'), 'v1');
  await writeFile(join(dir, 'migrate.mjs'), MIGRATE);
  await writeFile(join(dir, 'mode'), mode);
  const cfg = join(dir, 'config.json');
  const stateDir = join(data, 'var/lib/slotflip');
  await writeFile(cfg, JSON.stringify({
    deviceId: 'gw-m', hardware: 'acme,board', stateDir,
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'dir', path: join(repo, 'repository') }] },
    board: { slots: { A: { path: board.slots.A, size: SLOT }, B: { path: board.slots.B, size: SLOT } }, boot: board.bootConfig, tries: 3 },
    reboot: { command: [process.execPath, '-e', '0'] },
    health: { deadlineSeconds: 60, checks: [{ type: 'command', name: 'app', argv: [process.execPath, CLI, 'board', 'probe', boardDir, '--health'], timeoutSeconds: 30 }] },
    data: { dir: data, imageRoot, snapshotMaxBytes: 1 << 20 },
    ...(named ? {} : { migration: { argv: [process.execPath, join(dir, 'migrate.mjs'), join(dir, 'mode')], paths: ['app'], maxBytes: 1 << 20, timeoutSeconds: 30 } }),
    log: { level: 'warn' },
  }));
  const c = ['--config', cfg, '--json'];
  const db = () => readFile(join(data, 'app/db.txt'), 'utf8');
  const snapshot = join(stateDir, 'migration-snapshot');
  // install 2.0.0 and reboot into its trial
  const r = await cli(['update', '--once', ...c]);
  t.equal(r.code, 0, r.err);
  t.match(JSON.parse(r.out), { rebooted: true });
  await powerCycle(boardDir);
  return { c, data, db, snapshot, boardDir };
}

t.test('a migration that succeeds: commit on migrated data, snapshot dropped', async (t) => {
  const d = await device(t, t.testdir(), 'ok');
  const r = await cli(['update', '--once', '--no-check', ...d.c]);
  t.equal(r.code, 0, r.err);
  t.match(JSON.parse(r.out), { finished: [{ outcome: 'succeeded', release: { version: '2.0.0' } }] });
  t.equal(await d.db(), 'v2');
  t.equal(await readFile(join(d.data, 'app/new.txt'), 'utf8'), 'added by 2');
  t.notOk(existsSync(d.snapshot), 'snapshot dropped after the commit');
});

t.test('a migration that fails halfway: failed health check, rollback, snapshot restored on the old slot', async (t) => {
  const d = await device(t, t.testdir(), 'fail');
  let r = await cli(['update', '--once', '--no-check', ...d.c]);
  t.match(JSON.parse(r.out), { phase: 'rollingBack', rebooted: true });
  t.equal(await d.db(), 'half', 'the trial slot left half-migrated data behind');
  t.ok(existsSync(join(d.snapshot, 'meta.json')), 'the snapshot waits for the old slot');
  await powerCycle(d.boardDir);
  // early at the old slot's boot, before the apps (slotflip-migration-settle.service)
  r = await cli(['migration', 'settle', ...d.c]);
  t.equal(r.code, 0, r.err);
  t.same(JSON.parse(r.out), { bootedSlot: 'A', snapshot: 'restored' });
  t.equal(await d.db(), 'v1', 'restored before the daemon resumed the record');
  r = await cli(['update', '--once', '--no-check', ...d.c]);
  t.equal(r.code, 3, 'a rolled-back attempt exits 3');
  const out = JSON.parse(r.out) as { finished: { outcome: string; failures?: { name: string; output: string }[] }[]; bootedSlot: string };
  t.match(out, { bootedSlot: 'A', finished: [{ outcome: 'rolledBack', failures: [{ name: 'migration', output: /exited 1: migration broke halfway/ }] }] });
  t.equal(await d.db(), 'v1', 'the old slot runs on the data it knows');
  t.notOk(existsSync(join(d.data, 'app/new.txt')));
  t.notOk(existsSync(d.snapshot), 'snapshot deleted after the restore');
});

t.test("a release's own migration (custom.migration, in the image) that fails halfway: rollback, the old slot restores it without a config migration", async (t) => {
  const d = await device(t, t.testdir(), 'fail', true);
  let r = await cli(['update', '--once', '--no-check', ...d.c]);
  t.match(JSON.parse(r.out), { phase: 'rollingBack', rebooted: true });
  t.equal(await d.db(), 'half', "the release's migration ran on the trial slot");
  await powerCycle(d.boardDir);
  r = await cli(['migration', 'settle', ...d.c]);
  t.same(JSON.parse(r.out), { bootedSlot: 'A', snapshot: 'restored' });
  t.equal(await d.db(), 'v1');
  r = await cli(['update', '--once', '--no-check', ...d.c]);
  t.equal(r.code, 3);
  t.match(JSON.parse(r.out), { finished: [{ outcome: 'rolledBack', failures: [{ name: 'migration', output: /migrate-2 exited 1: migration broke halfway/ }] }] });
  t.notOk(existsSync(d.snapshot));
});

t.test("a release's own migration that succeeds commits on migrated data", async (t) => {
  const d = await device(t, t.testdir(), 'ok', true);
  const r = await cli(['update', '--once', '--no-check', ...d.c]);
  t.equal(r.code, 0, r.err);
  t.match(JSON.parse(r.out), { finished: [{ outcome: 'succeeded', release: { version: '2.0.0' } }] });
  t.equal(await d.db(), 'v2');
  t.notOk(existsSync(d.snapshot));
});

t.test('a power cut in the middle of the migration (and a torn snapshot): restored, run again, committed', async (t) => {
  const d = await device(t, t.testdir(), 'cut-once');
  // a cut during an earlier snapshot copy left its temp dir: it is discarded, never used
  await mkdir(`${d.snapshot}.tmp/data/app`, { recursive: true });
  await writeFile(`${d.snapshot}.tmp/data/app/db.txt`, 'torn');
  let r = await cli(['update', '--once', '--no-check', ...d.c]);
  t.equal(r.signal, 'SIGKILL', 'slotflip died in the middle of the migration');
  t.equal(await d.db(), 'half');
  await powerCycle(d.boardDir);
  r = await cli(['migration', 'settle', ...d.c]);
  t.same(JSON.parse(r.out), { bootedSlot: 'B', snapshot: null }, 'the trial slot booted again: the snapshot stays for the re-run');
  r = await cli(['update', '--once', '--no-check', ...d.c]);
  t.equal(r.code, 0, r.err);
  t.match(JSON.parse(r.out), { bootedSlot: 'B', finished: [{ outcome: 'succeeded' }] });
  t.equal(await d.db(), 'v2', 're-run from the restored snapshot (the script refuses half-migrated data)');
  t.notOk(existsSync(d.snapshot));
  t.notOk(existsSync(`${d.snapshot}.tmp`));
});

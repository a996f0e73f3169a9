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

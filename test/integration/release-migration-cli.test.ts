/**
 * `slotflip release add --migration PATH --migration-snapshot P [--migration-timeout S]` through the
 * BUILT CLI (`npm run build` first): the signed target's custom block names the migration; paths a
 * device would refuse (outside the image, a shell string, `..`) are refused before anything is built
 * or signed (exit 2, MANIFEST_BAD_ARGUMENT).
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeTestImage } from '../../hal/board.js';
import { initRepo } from '../../manifests/repo.js';

const CLI = process.env['SLOTFLIP_CLI'] ?? fileURLToPath(new URL('../../dist/daemon/cli.js', import.meta.url));

function cli(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...argv], { timeout: 60_000 }, (e, out, err) => {
      const x = e as (Error & { code?: number }) | null;
      resolve({ code: x ? (typeof x.code === 'number' ? x.code : -1) : 0, out: String(out), err: String(err) });
    });
  });
}

t.test('release add names the migration in the signed custom block, and refuses one a device would refuse', async (t) => {
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const image = join(dir, 'rootfs.img');
  await writeFile(image, makeTestImage({ version: '1.2.0', size: 64 * 1024 }));
  const base = ['release', 'add', repo, '--image', image, '--version', '1.2.0', '--security-version', '2', '--hardware', 'acme,gw', '--channel', 'stable', '--compression', 'gzip', '--chunk-size', '16384'];
  const targetsFiles = async () => (await readdir(join(repo, 'repository/metadata'))).filter((f) => f.endsWith('.targets.json')).sort();
  const before = await targetsFiles();

  for (const [args, why] of [
    [['--migration', '/data/migrate'], /under \/data/],
    [['--migration', '/usr/lib/app/migrate; reboot', '--migration-snapshot', 'var/lib/app'], /absolute, normalized path/],
    [['--migration', '/usr/lib/../../data/m', '--migration-snapshot', 'var/lib/app'], /absolute, normalized path/],
    [['--migration', '/usr/lib/app/migrate'], /1\.\.64 snapshot paths/],
    [['--migration', '/usr/lib/app/migrate', '--migration-snapshot', '../etc'], /without "\.\."/],
    [['--migration-snapshot', 'var/lib/app'], /need --migration PATH/],
    [['--migration', '/usr/lib/app/migrate', '--migration-snapshot', 'var/lib/app', '--migration-timeout', 'soon'], /--migration-timeout must be a non-negative integer/],
  ] as const) {
    const r = await cli([...base, ...args]);
    t.equal(r.code, 2, `${args.join(' ')}: usage error`);
    t.match(r.err, /MANIFEST_BAD_ARGUMENT/);
    t.match(r.err, why);
  }
  t.same(await targetsFiles(), before, 'nothing signed for a refused migration');

  const ok = await cli([...base, '--migration', '/usr/lib/app/migrate-1.2', '--migration-snapshot', 'var/lib/app', '--migration-snapshot', 'etc/upper/app.conf', '--migration-timeout', '120', '--json']);
  t.equal(ok.code, 0, ok.err);
  const files = await targetsFiles();
  const targets = JSON.parse(await readFile(join(repo, 'repository/metadata', files[files.length - 1]!), 'utf8')) as { signed: { targets: Record<string, { custom: { migration?: unknown } }> } };
  t.same(targets.signed.targets['releases/1.2.0/rootfs.img.gz']?.custom.migration, { path: '/usr/lib/app/migrate-1.2', timeoutSeconds: 120, snapshot: ['var/lib/app', 'etc/upper/app.conf'] }, 'custom.migration in the signed targets');
});

// The .deb: `systemd/packaging/debian/build-deb.sh` builds it from the built dist/ (npm test's pretest
// builds it), dpkg-deb reads it back, it unpacks into a temporary root, and `slotflip` runs from there
// with the production node_modules only.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';

// npm ci --omit=dev and xz under a loaded 2-core CI machine: ~90 s seen, past the suite's 180 s default is possible
t.setTimeout(600_000);

const hasDpkg = spawnSync('dpkg-deb', ['--version']).status === 0;

t.test('the .deb builds, carries files.list and the app, installs into a temporary root and runs', { skip: hasDpkg ? false : 'no dpkg-deb' }, async (t) => {
  const dir = t.testdir({ out: {}, control: {}, root: {} });
  const out = join(dir, 'out');
  const args = existsSync('dist/daemon/cli.js') ? ['--no-build'] : [];
  const deb = execFileSync('bash', ['systemd/packaging/debian/build-deb.sh', '--out', out, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
    .trim()
    .split('\n')
    .pop()!;
  const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { version: string; devDependencies: Record<string, string> };
  t.match(deb, new RegExp(`/slotflip_${pkg.version.replace(/\./g, '\\.')}_[a-z0-9]+\\.deb$`));

  const info = execFileSync('dpkg-deb', ['-I', deb], { encoding: 'utf8' });
  t.match(info, /^ Package: slotflip$/m);
  t.match(info, new RegExp(`^ Version: ${pkg.version}$`, 'm'));
  t.match(info, /^ Depends: nodejs \(>= 22\)$/m, 'names the Node it needs');
  t.match(info, /Debian 12 ships 18/, 'says how a Debian 12 device gets Node 22+');
  t.equal(execFileSync('dpkg-deb', ['-f', deb, 'Package']).toString().trim(), 'slotflip');

  const listing = execFileSync('dpkg-deb', ['-c', deb], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const paths = new Set(listing.split('\n').map((l) => /\s\.(\/\S*)/.exec(l)?.[1]).filter((p): p is string => !!p));
  const manifest = readFileSync('systemd/packaging/files.list', 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.startsWith('#'))
    .map((l) => l.trim().split(/\s+/));
  for (const [mode, dest] of manifest) {
    t.ok(paths.has(dest!), `${dest} is in the .deb`);
    t.match(listing, new RegExp(`^${mode === '0755' ? '-rwxr-xr-x' : '-rw-r--r--'} root/root .* \\.${dest!.replace(/\./g, '\\.')}$`, 'm'), `${dest}: mode ${mode}, owned by root`);
  }
  for (const p of ['/usr/lib/slotflip/dist/daemon/cli.js', '/usr/lib/slotflip/package.json', '/usr/lib/slotflip/node_modules/mqtt/package.json']) t.ok(paths.has(p), `${p} is in the .deb`);
  for (const dev of Object.keys(pkg.devDependencies).filter((d) => !d.startsWith('@types/'))) t.notOk(paths.has(`/usr/lib/slotflip/node_modules/${dev}/package.json`), `no devDependency ${dev}`);
  t.notOk([...paths].some((p) => p.endsWith('.map') || p.startsWith('/usr/lib/slotflip/dist/test')), 'no source maps, no tests');

  const control = join(dir, 'control');
  execFileSync('dpkg-deb', ['-e', deb, control]);
  t.same(readFileSync(join(control, 'conffiles'), 'utf8').trim().split('\n'), manifest.filter(([, d]) => d!.startsWith('/etc/')).map(([, d]) => d), 'the files under /etc are conffiles');

  const root = join(dir, 'root');
  execFileSync('dpkg', ['-x', deb, root]);
  const help = spawnSync(join(root, 'usr/bin/slotflip'), ['--help'], { encoding: 'utf8' });
  t.equal(help.status, 0, help.stderr);
  t.match(help.stdout, /usage: slotflip <command>/);
  t.match(help.stdout, /daemon\s+run on a device/);
  // a command that loads the daemon's dependencies (ajv schemas, pino) from the unpacked tree
  const check = spawnSync(join(root, 'usr/bin/slotflip'), ['daemon', '--config', join(root, 'etc/slotflip/nope.json')], { encoding: 'utf8' });
  t.not(check.status, 0);
  t.match(check.stderr + check.stdout, /nope\.json/, 'a missing config is named');
});

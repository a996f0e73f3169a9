// systemd/packaging/files.list is what a device carries besides the application tree; the .deb script
// reads it, and the Yocto recipe and the Buildroot package (not buildable here) must install exactly
// the same files, from the same sources, with the same modes.
import { existsSync, readFileSync, statSync } from 'node:fs';
import t from 'tap';

const PKG = 'systemd/packaging';
type Entry = { mode: string; dest: string; src: string };
const key = (e: Entry): string => `${e.mode} ${e.dest} ${e.src}`;

const manifest: Entry[] = readFileSync(`${PKG}/files.list`, 'utf8')
  .split('\n')
  .filter((l) => l.trim() !== '' && !l.startsWith('#'))
  .map((l) => {
    const [mode, dest, src, ...rest] = l.trim().split(/\s+/);
    if (!mode || !dest || !src || rest.length) throw new Error(`files.list: bad line ${l}`);
    return { mode, dest, src };
  });

/** `install -D -m MODE SRC DEST` lines of a recipe, with its variables replaced by the paths they
 * stand for on a usrmerge'd image. */
function installLines(file: string, vars: Record<string, string>): Entry[] {
  const out: Entry[] = [];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const m = /^\s*(?:install|\$\(INSTALL\))\s+-D\s+-m\s+(\d{4})\s+(\S+)\s+(\S+)\s*$/.exec(line);
    if (!m) continue;
    const sub = (s: string): string => Object.entries(vars).reduce((acc, [k, v]) => acc.split(k).join(v), s);
    out.push({ mode: m[1]!, src: sub(m[2]!).replace(/^\/+/, ''), dest: sub(m[3]!) });
  }
  return out;
}

t.test('files.list: every source exists with the mode it is installed with', async (t) => {
  t.ok(manifest.length >= 7, `${manifest.length} entries`);
  for (const e of manifest) {
    t.ok(existsSync(e.src), `${e.src} exists`);
    if (e.mode === '0755') t.ok(statSync(e.src).mode & 0o100, `${e.src} is executable in the repository`);
  }
  t.same(new Set(manifest.map((e) => e.dest)).size, manifest.length, 'no path twice');
});

t.test('the .deb script installs files.list', async (t) => {
  t.match(readFileSync(`${PKG}/debian/build-deb.sh`, 'utf8'), /done < systemd\/packaging\/files\.list/);
});

t.test('the Yocto recipe installs exactly files.list', async (t) => {
  const version = (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version;
  const recipe = `${PKG}/yocto/slotflip_${version}.bb`;
  t.ok(existsSync(recipe), `${recipe}: named after package.json's version`);
  const got = installLines(recipe, {
    '${S}/': '',
    '${D}': '',
    '${bindir}': '/usr/bin',
    '${systemd_system_unitdir}': '/usr/lib/systemd/system',
    '${systemd_unitdir}': '/usr/lib/systemd',
    '${nonarch_libdir}': '/usr/lib',
    '${sysconfdir}': '/etc',
    '${docdir}': '/usr/share/doc',
  });
  t.same(got.map(key).sort(), manifest.map(key).sort());
  for (const e of manifest.filter((x) => x.dest.startsWith('/etc/'))) t.match(readFileSync(recipe, 'utf8'), `CONFFILES:\${PN} = "\${sysconfdir}${e.dest.slice(4)}"`);
});

t.test('the Buildroot package installs exactly files.list', async (t) => {
  const version = (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version;
  const mk = `${PKG}/buildroot/slotflip/slotflip.mk`;
  t.match(readFileSync(mk, 'utf8'), `SLOTFLIP_VERSION = ${version}\n`);
  const got = installLines(mk, { '$(@D)/': '', '$(TARGET_DIR)': '' });
  t.same(got.map(key).sort(), manifest.map(key).sort());
});

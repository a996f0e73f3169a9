/**
 * /usr/bin/slotflip (systemd/packaging/slotflip.sh), run from a tree laid out as the .deb installs
 * it (bin/slotflip beside lib/slotflip/{dist,node_modules}): `slotflip daemon`, `install` and
 * `update` start Node with V8's optimizing compilers off from the first line (issue 16: they would
 * otherwise compile what gets hot while the daemon loads, and their code stays resident; a delta
 * install turns them on for its chunking), every other command with them on, all with the young
 * generation capped; and Node's compile cache in /var/cache/slotflip. Node's
 * own view of its flags (`process.execArgv`, recorded by a module preloaded through NODE_OPTIONS) are what count. That a daemon started with these flags still turns the compilers on for an
 * install: test/unit/daemon-footprint.test.ts.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT, requireBuilt } from '../e2e/harness.js';

requireBuilt();

const RECORD = `
import { writeFileSync } from 'node:fs';
writeFileSync(process.env.SLOTFLIP_TEST_ARGV_OUT, JSON.stringify(process.execArgv));
`;

function run(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => execFile(file, args, { env: { ...process.env, ...env }, timeout: 60_000 }, (e, stdout, stderr) => resolve({ code: e ? Number((e as { code?: number }).code ?? 1) : 0, stdout: String(stdout), stderr: String(stderr) })));
}

/** The installed layout in `dir`: /usr/bin/slotflip finds /usr/lib/slotflip relative to itself; Node
 * from PATH. Returns the launcher's path and that PATH. */
function installedTree(dir: string): { bin: string; PATH: string } {
  mkdirSync(join(dir, 'bin'));
  mkdirSync(join(dir, 'lib', 'slotflip'), { recursive: true });
  copyFileSync(join(ROOT, 'systemd', 'packaging', 'slotflip.sh'), join(dir, 'bin', 'slotflip'));
  symlinkSync(join(ROOT, 'dist'), join(dir, 'lib', 'slotflip', 'dist'));
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'lib', 'slotflip', 'node_modules'));
  return { bin: join(dir, 'bin', 'slotflip'), PATH: `${join(process.execPath, '..')}:${process.env.PATH ?? ''}` };
}

t.test('the launcher starts `slotflip daemon` and `install` interpreted-only and every other command with the compilers on', async (t) => {
  const dir = t.testdir();
  const { bin, PATH } = installedTree(dir);
  await writeFile(join(dir, 'record.mjs'), RECORD);
  const argvOf = async (args: string[]): Promise<{ execArgv: string[]; code: number; stderr: string }> => {
    const out = join(dir, `argv-${args[0]}.json`);
    const r = await run('/bin/sh', [bin, ...args], { PATH, NODE_OPTIONS: `--import ${pathToFileURL(join(dir, 'record.mjs')).href}`, SLOTFLIP_TEST_ARGV_OUT: out });
    return { execArgv: JSON.parse(readFileSync(out, 'utf8')) as string[], ...r };
  };
  // a config that does not exist: the daemon starts, records its flags, and refuses the config
  const daemon = await argvOf(['daemon', '--config', join(dir, 'missing.json')]);
  t.not(daemon.code, 0, `the daemon refused the missing config: ${daemon.stderr.trim()}`);
  t.match(daemon.stderr, /missing\.json/, 'and said which file');
  t.same(daemon.execArgv, ['--max-semi-space-size=1', '--no-turbofan', '--no-maglev', '--expose-gc'], 'slotflip daemon: compilers off from the start, young generation capped, gc() for the idle reclaim');
  const status = await argvOf(['status', '--config', join(dir, 'missing.json')]);
  t.same(status.execArgv, ['--max-semi-space-size=1'], 'slotflip status: compilers on (the default), young generation capped');
  // an install from the CLI: interpreted too (only a delta install's chunking turns them on)
  const install = await argvOf(['install', join(dir, 'no-repo'), '--config', join(dir, 'missing.json')]);
  t.match(install.stderr, /missing\.json/, `slotflip install refused the missing config: ${install.stderr.trim()}`);
  t.same(install.execArgv, ['--max-semi-space-size=1', '--no-turbofan', '--no-maglev', '--expose-gc'], 'slotflip install: compilers off from the start, gc() for the reclaim before the stream');
});

t.test("the launcher keeps Node's compile cache in /var/cache/slotflip; reused, and a damaged or unwritable cache changes nothing", async (t) => {
  const dir = t.testdir();
  const { bin, PATH } = installedTree(dir);
  // Node reports each cache read and V8's verdict on stderr with NODE_DEBUG_NATIVE=COMPILE_CACHE
  const help = (cache: string, debug = false): Promise<{ code: number; stdout: string; stderr: string }> =>
    run('/bin/sh', [bin, 'install', '--help'], { PATH, NODE_COMPILE_CACHE: cache, ...(debug ? { NODE_DEBUG_NATIVE: 'COMPILE_CACHE' } : {}) });
  const cache = join(dir, 'cache');
  const first = await help(cache);
  t.equal(first.code, 0, first.stderr);
  t.match(first.stdout, /^usage: slotflip install SOURCE/, 'the help');
  t.equal(first.stderr, '', 'nothing on stderr');
  const versions = readdirSync(cache);
  t.equal(versions.length, 1, `one subdirectory for this Node and flag set: ${versions.join(', ')}`);
  const entries = readdirSync(join(cache, versions[0]!));
  t.ok(entries.length > 20, `an entry per module loaded (${entries.length})`);

  const again = await help(cache, true);
  t.equal(again.stdout, first.stdout, 'the same help from the cache');
  const accepted = (again.stderr.match(/V8 code cache for \S+ \S+ was accepted/g) ?? []).length;
  t.ok(accepted >= entries.length - 2, `the second run read the modules' code from the cache (${accepted} accepted)`);
  t.notMatch(again.stderr, /was rejected/, 'none rejected');

  // every entry damaged in its middle (a power cut, a bad block): Node checks each entry and compiles
  for (const e of entries) {
    const f = join(cache, versions[0]!, e);
    const b = readFileSync(f);
    b.fill(0x5a, 40, Math.min(b.length, 80));
    writeFileSync(f, b);
  }
  const damaged = await help(cache, true);
  t.equal(damaged.code, 0, 'a damaged cache: exit 0');
  t.equal(damaged.stdout, first.stdout, 'the same help');
  t.match(damaged.stderr, /cache hash mismatch/, 'Node found the entries damaged');
  t.notMatch(damaged.stderr, /reading cache from [^\n]*\.\.\. ?success/, 'and read none of them');
  const repaired = await help(cache, true);
  t.ok((repaired.stderr.match(/was accepted/g) ?? []).length >= entries.length - 2, 'and the entries were rewritten for the next run');

  // a cache that cannot be created (its parent is a file): no cache, no error
  writeFileSync(join(dir, 'a-file'), '');
  const unwritable = await help(join(dir, 'a-file', 'cache'));
  t.equal(unwritable.code, 0, 'an unwritable cache: exit 0');
  t.equal(unwritable.stdout, first.stdout, 'the same help');
  t.equal(unwritable.stderr, '', 'and nothing on stderr');

  // unset, the launcher points Node at /var/cache/slotflip (slotflip.service's CacheDirectory=);
  // NODE_DISABLE_COMPILE_CACHE keeps this test from writing there
  const envOut = join(dir, 'env.json');
  await writeFile(join(dir, 'record-env.mjs'), `import { writeFileSync } from 'node:fs'; writeFileSync(${JSON.stringify(envOut)}, JSON.stringify(process.env.NODE_COMPILE_CACHE ?? null));`);
  const env: NodeJS.ProcessEnv = { ...process.env, PATH, NODE_DISABLE_COMPILE_CACHE: '1', NODE_OPTIONS: `--import ${pathToFileURL(join(dir, 'record-env.mjs')).href}` };
  delete env.NODE_COMPILE_CACHE;
  const r = await new Promise<number>((resolve) => execFile('/bin/sh', [bin, '--help'], { env, timeout: 60_000 }, (e) => resolve(e ? 1 : 0)));
  t.equal(r, 0);
  t.equal(JSON.parse(readFileSync(envOut, 'utf8')), '/var/cache/slotflip', 'NODE_COMPILE_CACHE defaults to /var/cache/slotflip');
});

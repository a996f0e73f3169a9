/**
 * The shipped unit files against systemd's own tools (Debian package `systemd`):
 * - `systemd-analyze verify --root=ROOT`: ROOT is a temp tree holding the units where an image puts
 *   them (/etc/systemd/system), an executable /usr/bin/slotflip (verify refuses an ExecStart= that is
 *   not executable) and the host's unit files (copied as regular files: the host's absolute symlinks
 *   would resolve inside ROOT and loop). Any warning about our files fails the test, not only a
 *   non-zero exit: verify exits 0 on unknown keys and unparsable values.
 * - `systemd-analyze security --offline=yes`: the exposure figure of slotflip.service, alone and with
 *   each board example's drop-in, must stay at or under 2.0 (printed as a test comment).
 * - `systemd-tmpfiles --create --root=ROOT`: the state directory comes out root-only.
 * - every example config is a valid slotflip config.
 * - the trial guard (issue 22, 4): slotflip-trial-failed@.service, slotflip-trial-deadline.timer and
 *   the hooks into the two services verify and stay sandboxed; the preset enables the timer.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { copyFileSync, chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { Ajv } from 'ajv';
import { validateConfig } from '../../daemon/config.js';
import { bootBackendSchema } from '../../hal/registry.js';

const execFileP = promisify(execFile);
const SYSTEMD_DIR = join(import.meta.dirname, '../../systemd');
const EXAMPLES_DIR = join(SYSTEMD_DIR, 'examples');
// issue 18: the factory reset and the reference data-partition layout (systemd/state/) load together
// (an ordering cycle between the reset and the mounts it must precede is a warning about our unit)
const STATE_UNITS = ['slotflip-factory-reset.service', 'slotflip-migration-settle.service', 'state/data.mount', 'state/var.mount', 'state/etc.mount', 'state/etc-slotflip.mount'];
const UNITS = ['slotflip.service', 'slotflip-health.service', 'slotflip-trial-failed@.service', 'slotflip-trial-deadline.timer', ...STATE_UNITS];
/** what verify loads (a template only as an instance). */
const VERIFY = ['slotflip.service', 'slotflip-health.service', 'slotflip-trial-failed@daemon.service', 'slotflip-trial-failed@health.service', 'slotflip-trial-failed@deadline.service', 'slotflip-trial-deadline.timer', ...STATE_UNITS.map((u) => basename(u))];
const HOST_UNITS = '/usr/lib/systemd/system';
const MAX_EXPOSURE = 2.0;

async function run(cmd: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await execFileP(cmd, args, { timeout: 20_000, maxBuffer: 4 << 20 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const err = e as { code?: number | string; stdout?: string; stderr?: string };
    if (err.code === 'ENOENT') throw new Error(`${cmd} not found: install Debian's systemd package`);
    return { code: typeof err.code === 'number' ? err.code : -1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

/** A filesystem root with our units installed as on a device and the host's units beside them. */
function makeRoot(dir: string, opts: { dropIn?: string; binary?: boolean; unitText?: Record<string, string> } = {}): string {
  const root = join(dir, 'root');
  rmSync(root, { recursive: true, force: true });
  const etc = join(root, 'etc/systemd/system');
  mkdirSync(etc, { recursive: true });
  for (const u of UNITS) writeFileSync(join(etc, basename(u)), opts.unitText?.[u] ?? readFileSync(join(SYSTEMD_DIR, u)));
  if (opts.dropIn) {
    mkdirSync(join(etc, 'slotflip.service.d'), { recursive: true });
    copyFileSync(opts.dropIn, join(etc, 'slotflip.service.d/board.conf'));
  }
  const lib = join(root, 'usr/lib/systemd/system');
  mkdirSync(lib, { recursive: true });
  for (const f of readdirSync(HOST_UNITS)) {
    const p = join(HOST_UNITS, f);
    if (statSync(p, { throwIfNoEntry: false })?.isFile()) copyFileSync(p, join(lib, f));
  }
  if (opts.binary ?? true) {
    mkdirSync(join(root, 'usr/bin'), { recursive: true });
    writeFileSync(join(root, 'usr/bin/slotflip'), '#!/bin/sh\nexit 0\n');
    chmodSync(join(root, 'usr/bin/slotflip'), 0o755);
  }
  mkdirSync(join(root, 'usr/lib/slotflip'), { recursive: true });
  copyFileSync(join(SYSTEMD_DIR, 'slotflip-trial-reboot'), join(root, 'usr/lib/slotflip/slotflip-trial-reboot'));
  return root;
}

const ourWarnings = (stderr: string): string[] => stderr.split('\n').filter((l) => /slotflip/.test(l));

async function verify(root: string): Promise<{ code: number; warnings: string[]; stderr: string }> {
  const r = await run('systemd-analyze', ['verify', `--root=${root}`, ...VERIFY]);
  return { code: r.code, warnings: ourWarnings(r.stderr), stderr: r.stderr };
}

async function exposure(root: string, unit: string): Promise<number> {
  const r = await run('systemd-analyze', ['security', '--offline=yes', `--root=${root}`, '--no-pager', unit]);
  const m = /Overall exposure level for \S+: (\d+(?:\.\d+)?)/.exec(r.stdout + r.stderr);
  if (!m) throw new Error(`no exposure figure in systemd-analyze security output:\n${r.stdout}\n${r.stderr}`);
  return Number(m[1]);
}

const checkBoot = new Ajv({ allErrors: true, strict: false }).compile(bootBackendSchema);
const boards = readdirSync(EXAMPLES_DIR).filter((d) => statSync(join(EXAMPLES_DIR, d)).isDirectory()).sort();

t.test('systemd-analyze verify accepts both units, and would catch a broken one', async (t) => {
  const dir = t.testdir();
  const good = await verify(makeRoot(dir));
  t.equal(good.code, 0, `verify exits 0: ${good.stderr}`);
  t.same(good.warnings, [], 'no warning about slotflip units');

  const typo = readFileSync(join(SYSTEMD_DIR, 'slotflip.service'), 'utf8').replace('WatchdogSec=30s', 'WatchdogSec=30 seconds please');
  const bad = await verify(makeRoot(dir, { unitText: { 'slotflip.service': typo } }));
  t.ok(bad.warnings.some((l) => /WatchdogSec|parse/i.test(l)), 'a bad value shows up as a warning about our unit');

  const missing = await verify(makeRoot(dir, { binary: false }));
  t.not(missing.code, 0, 'a missing /usr/bin/slotflip fails verify');
  t.ok(missing.warnings.some((l) => /not executable/.test(l)), 'and says why');
});

t.test(`systemd-analyze security: slotflip.service exposure <= ${MAX_EXPOSURE}`, async (t) => {
  const dir = t.testdir();
  const root = makeRoot(dir);
  const figure = await exposure(root, 'slotflip.service');
  t.comment(`slotflip.service exposure: ${figure}`);
  t.ok(figure <= MAX_EXPOSURE, `slotflip.service exposure ${figure} <= ${MAX_EXPOSURE}`);
  const health = await exposure(root, 'slotflip-health.service');
  t.comment(`slotflip-health.service exposure: ${health}`);
  t.ok(health <= MAX_EXPOSURE, `slotflip-health.service exposure ${health} <= ${MAX_EXPOSURE}`);
  const guard = await exposure(root, 'slotflip-trial-failed@daemon.service');
  t.comment(`slotflip-trial-failed@.service exposure: ${guard}`);
  t.ok(guard <= 1.0, `slotflip-trial-failed@.service exposure ${guard} <= 1.0 (a shell script, systemctl, no network)`);

  // the figure really depends on the sandbox: without it the unit scores far worse
  const bare = '[Unit]\nDescription=x\n[Service]\nType=notify\nExecStart=/usr/bin/slotflip daemon\n';
  const loose = await exposure(makeRoot(dir, { unitText: { 'slotflip.service': bare } }), 'slotflip.service');
  t.ok(loose > 5, `an unsandboxed unit scores ${loose}`);
});

t.test('the unit carries the directives the README promises', async (t) => {
  const unit = readFileSync(join(SYSTEMD_DIR, 'slotflip.service'), 'utf8');
  const has = (line: string): boolean => unit.split('\n').some((l) => l.trim() === line);
  for (const line of [
    'Type=notify',
    'NotifyAccess=main',
    'ExecStart=/usr/bin/slotflip daemon --config /etc/slotflip/config.json',
    // bench:memory measures the daemon with these NODE_OPTIONS (it reads them from this unit)
    'Environment="NODE_OPTIONS=--max-semi-space-size=1 --expose-gc"',
    'Wants=network-online.target',
    'Restart=on-failure',
    'ProtectSystem=strict',
    'ReadWritePaths=-/data',
    // Node's compile cache: /usr/bin/slotflip points NODE_COMPILE_CACHE at /var/cache/slotflip
    'CacheDirectory=slotflip',
    'NoNewPrivileges=yes',
    'PrivateTmp=yes',
    'CapabilityBoundingSet=',
    'SystemCallFilter=@system-service @pkey',
  ]) {
    t.ok(has(line), line);
  }
  t.notOk(/^Requires=.*network/m.test(unit), 'never Requires= the network: a dead network must not block a rollback');
  t.ok(/^WatchdogSec=\d+s$/m.test(unit), 'a watchdog');
  const health = readFileSync(join(SYSTEMD_DIR, 'slotflip-health.service'), 'utf8');
  t.match(health, /^Before=boot-complete\.target$/m);
  t.match(health, /^RequiredBy=boot-complete\.target$/m);
  t.match(health, /^ExecStart=\/usr\/bin\/slotflip health --config \/etc\/slotflip\/config\.json$/m);
});

t.test('the trial guard is wired as the README says (issue 22, 4)', async (t) => {
  const read = (f: string): string => readFileSync(join(SYSTEMD_DIR, f), 'utf8');
  const lines = (f: string): string[] => read(f).split('\n').map((l) => l.trim());
  t.ok(lines('slotflip.service').includes('OnFailure=slotflip-trial-failed@daemon.service'), 'a daemon systemd gave up on triggers the guard');
  t.ok(lines('slotflip.service').some((l) => /^WatchdogSec=\d+s$/.test(l)), 'a hung daemon is killed (and counts towards the start limit)');
  t.ok(lines('slotflip.service').includes('Restart=on-failure') && lines('slotflip.service').includes('StartLimitBurst=5'), 'crash loops end in "failed" (start limit)');
  t.notOk(lines('slotflip.service').some((l) => /^(FailureAction|StartLimitAction)=/.test(l)), 'no unconditional reboot: a committed device must not be reboot-looped');
  t.ok(lines('slotflip-health.service').includes('OnFailure=slotflip-trial-failed@health.service'), 'a failed verdict triggers the guard');
  const guard = lines('slotflip-trial-failed@.service');
  t.ok(guard.includes('ConditionPathExists=/var/lib/slotflip/trial/armed'), 'only while a trial is armed');
  t.ok(guard.includes('ExecStart=/usr/lib/slotflip/slotflip-trial-reboot %i /var/lib/slotflip/trial'), 'the script decides, given why');
  t.ok(guard.includes('SuccessAction=reboot'), 'PID 1 reboots when the script exits 0');
  // systemd runs SuccessAction= after an ExecCondition= skip as well (systemd#42035): a script there
  // could say "not rebooting" and the device rebooted anyway (full-OS lane, late-restart scenario)
  t.notOk(guard.some((l) => l.startsWith('ExecCondition=')), 'the decision is not an ExecCondition= (its skip would reboot too)');
  t.notOk(guard.some((l) => /^(FailureAction|SuccessExitStatus)=/.test(l)), 'a decline (exit 1) fails the unit and nothing reboots');
  t.notOk(guard.some((l) => /^ExecStart=.*slotflip (daemon|health)/.test(l)), 'no slotflip (Node) code in the decision');
  const timer = lines('slotflip-trial-deadline.timer');
  t.ok(timer.includes('Unit=slotflip-trial-failed@deadline.service'));
  const onBoot = timer.find((l) => l.startsWith('OnBootSec='));
  t.match(onBoot, /^OnBootSec=\d+min$/);
  // the deadline must leave the examples' settle + checks their time
  for (const board of boards) {
    const h = (JSON.parse(read(`examples/${board}/config.json`)) as { health: { deadlineSeconds?: number; settle?: { timeoutSeconds: number } } }).health;
    const need = (h.settle?.timeoutSeconds ?? 0) + (h.deadlineSeconds ?? 300);
    t.ok(Number(/\d+/.exec(onBoot!)![0]) * 60 > need, `${board}: deadline ${onBoot} > settle + checks (${need} s)`);
  }
  t.match(read('80-slotflip.preset'), /^enable slotflip-trial-deadline\.timer$/m, 'the preset enables the deadline timer');
  t.ok((statSync(join(SYSTEMD_DIR, 'slotflip-trial-reboot')).mode & 0o111) !== 0, 'the script is executable');
});

t.test('tmpfiles.d creates a root-only state directory', async (t) => {
  const root = join(t.testdir(), 'root');
  mkdirSync(join(root, 'usr/lib/tmpfiles.d'), { recursive: true });
  copyFileSync(join(SYSTEMD_DIR, 'slotflip.tmpfiles.conf'), join(root, 'usr/lib/tmpfiles.d/slotflip.conf'));
  const r = await run('systemd-tmpfiles', ['--create', `--root=${root}`, 'slotflip.conf']);
  t.equal(r.code, 0, r.stderr);
  const st = statSync(join(root, 'var/lib/slotflip'));
  t.ok(st.isDirectory(), '/var/lib/slotflip exists');
  t.equal(st.mode & 0o777, 0o700, 'mode 0700');
  t.equal(st.uid, 0, 'owned by root');
  const cache = statSync(join(root, 'var/cache/slotflip'));
  t.ok(cache.isDirectory() && (cache.mode & 0o777) === 0o700 && cache.uid === 0, '/var/cache/slotflip (Node compile cache) exists, root-only');

  // --clean (systemd-tmpfiles-clean.timer): a compile-cache subdirectory of a Node no longer installed
  // (untouched for 100 days) goes; today's stays; the state directory is never cleaned by age
  const old = new Date(Date.now() - 100 * 86_400_000);
  const entries = { 'var/cache/slotflip/node-22-old/entry': old, 'var/cache/slotflip/node-24-now/entry': new Date(), 'var/lib/slotflip/update.json': old };
  for (const [rel, when] of Object.entries(entries)) {
    mkdirSync(join(root, rel, '..'), { recursive: true });
    writeFileSync(join(root, rel), 'x');
    utimesSync(join(root, rel), when, when);
  }
  utimesSync(join(root, 'var/cache/slotflip/node-22-old'), old, old);
  const c = await run('systemd-tmpfiles', ['--clean', `--root=${root}`, 'slotflip.conf']);
  t.equal(c.code, 0, c.stderr);
  t.notOk(existsSync(join(root, 'var/cache/slotflip/node-22-old/entry')), 'clean: a compile cache unused for 100 days is removed');
  t.ok(existsSync(join(root, 'var/cache/slotflip/node-24-now/entry')), 'clean: the one in use stays');
  t.ok(existsSync(join(root, 'var/lib/slotflip/update.json')), 'clean: the state directory is never cleaned by age');
});

t.test('board examples: drop-ins verify and keep the exposure low; configs are valid', async (t) => {
  t.ok(boards.length >= 4, `examples present: ${boards.join(', ')}`);
  const dir = t.testdir();
  for (const board of boards) {
    const base = join(EXAMPLES_DIR, board);
    const dropIn = join(base, 'slotflip.service.d/board.conf');
    t.ok(existsSync(dropIn), `${board}: has a drop-in`);
    const root = makeRoot(dir, { dropIn });
    const v = await verify(root);
    t.equal(v.code, 0, `${board}: verify exits 0`);
    t.same(v.warnings, [], `${board}: no warnings`);
    const figure = await exposure(root, 'slotflip.service');
    t.comment(`${board}: slotflip.service exposure with its drop-in: ${figure}`);
    t.ok(figure <= MAX_EXPOSURE, `${board}: exposure ${figure} <= ${MAX_EXPOSURE}`);

    const config = JSON.parse(readFileSync(join(base, 'config.json'), 'utf8')) as unknown;
    const r = validateConfig(config);
    t.ok(r.ok, `${board}: config.json is valid${r.ok ? '' : ': ' + JSON.stringify(r.errors)}`);
    const boot = (config as { board: { boot: unknown } }).board.boot;
    t.ok(checkBoot(boot), `${board}: board.boot is a valid ${(boot as { type: string }).type} backend config ${JSON.stringify(checkBoot.errors ?? [])}`);
  }
});

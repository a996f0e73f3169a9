/**
 * The trial guard (issue 22, 4), from outside: the marker the daemon's boot-control wrapper writes
 * (daemon/trial-guard.ts) is read by the real shell script systemd runs
 * (systemd/slotflip-trial-reboot, ExecStart= of slotflip-trial-failed@.service), with a fake
 * `systemctl` on PATH standing in for PID 1's answers. Exit 0 = systemd reboots (SuccessAction=),
 * 1 = it does not. What a user relies on:
 * - a trial boot whose daemon systemd gave up on, or that is still unjudged at the deadline, reboots;
 * - it reboots at most `tries` times per trial (enough for every bootloader to fall back), so a
 *   daemon that also crash-loops on the committed slot never reboot-loops the device;
 * - nothing happens on a committed device (no marker), in the boot that armed the trial, while the
 *   daemon is only restarting, or when a running daemon can roll back itself.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import type { BootControl, SlotName } from '../../hal/boot-control.js';
import { guardTrials, readTrialMarker, kernelBootId } from '../../daemon/trial-guard.js';

const SCRIPT = join(import.meta.dirname, '../../systemd/slotflip-trial-reboot');
const OTHER_BOOT = '00000000-1111-2222-3333-444444444444';

/** What PID 1 says about slotflip.service: (ActiveState, SubState) as systemd's service state table
 * maps them (src/core/service.c: start-pre/start/auto-restart are `activating`, stop-* `deactivating`). */
interface UnitState { activeState: string; subState: string }
const RUNNING: UnitState = { activeState: 'active', subState: 'running' };

function script(why: string, dir: string, env: { unit?: UnitState | 'no-answer'; bootIdFile?: string } = {}, binDir?: string): Promise<{ code: number; out: string }> {
  const unit = env.unit ?? RUNNING;
  return new Promise((resolve) => {
    execFile('/bin/sh', [SCRIPT, why, dir], {
      env: {
        PATH: `${binDir ?? ''}:/usr/bin:/bin`,
        ...(unit === 'no-answer' ? { FAKE_NO_ANSWER: '1' } : { FAKE_ACTIVESTATE: unit.activeState, FAKE_SUBSTATE: unit.subState }),
        ...(env.bootIdFile ? { SLOTFLIP_BOOT_ID_FILE: env.bootIdFile } : {}),
      },
      timeout: 10_000,
    }, (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code) : 0, out: stdout + stderr }));
  });
}

/**
 * A `systemctl` that answers like systemd's for one unit state, in every form the script might ask:
 * `show [--value] -p P [-p P]... UNIT` prints `P=value` lines (or bare values with --value) in
 * systemd's property order (ActiveState before SubState); `is-active [-q] UNIT` prints the
 * ActiveState (unless -q) and exits 0 only for `active` / `reloading`, 3 otherwise (systemctl(1)).
 * With FAKE_NO_ANSWER it fails as systemctl does when PID 1 cannot be reached (exit 1, stderr).
 */
async function fakeSystemctl(dir: string): Promise<string> {
  const bin = join(dir, 'bin');
  await mkdir(bin, { recursive: true });
  await writeFile(join(bin, 'systemctl'), [
    '#!/bin/sh',
    'if [ -n "${FAKE_NO_ANSWER:-}" ]; then echo "Failed to connect to bus: No such file or directory" >&2; exit 1; fi',
    'verb=; value=; quiet=; props=; unit=',
    'while [ $# -gt 0 ]; do',
    '  case $1 in',
    '    --value) value=1 ;;',
    '    -q | --quiet) quiet=1 ;;',
    '    -p) shift; props="$props $1" ;;',
    '    -p*) props="$props ${1#-p}" ;;',
    '    --property=*) props="$props ${1#--property=}" ;;',
    '    -*) echo "fake systemctl: unexpected option $1" >&2; exit 9 ;;',
    '    *) if [ -z "$verb" ]; then verb=$1; else unit=$1; fi ;;',
    '  esac',
    '  shift',
    'done',
    '[ "$unit" = slotflip.service ] || { echo "fake systemctl: unexpected unit $unit" >&2; exit 9; }',
    'case $verb in',
    '  show)',
    '    for p in ActiveState SubState; do',
    '      case " $props " in *" $p "*) ;; *) continue ;; esac',
    '      if [ "$p" = ActiveState ]; then v=$FAKE_ACTIVESTATE; else v=$FAKE_SUBSTATE; fi',
    '      if [ -n "$value" ]; then echo "$v"; else echo "$p=$v"; fi',
    '    done',
    '    ;;',
    '  is-active)',
    '    [ -n "$quiet" ] || echo "$FAKE_ACTIVESTATE"',
    '    case $FAKE_ACTIVESTATE in active | reloading) exit 0 ;; *) exit 3 ;; esac',
    '    ;;',
    '  *) echo "fake systemctl: unexpected verb $verb" >&2; exit 9 ;;',
    'esac',
    '',
  ].join('\n'));
  await chmod(join(bin, 'systemctl'), 0o755);
  return bin;
}

/** A boot backend that records calls; `booted` is settable. */
function fakeBoot(): BootControl & { booted: SlotName; calls: string[]; rebootArgument(): Promise<string | undefined> } {
  const b = {
    backend: 'fake',
    booted: 'A' as SlotName,
    calls: [] as string[],
    async bootedSlot() { return b.booted; },
    async slotState() { return { state: 'good' as const, primary: true }; },
    async markBad(s: SlotName) { b.calls.push(`markBad ${s}`); },
    async armTrial(s: SlotName, n: number) { b.calls.push(`armTrial ${s} ${n}`); },
    async commit(s: SlotName) { b.calls.push(`commit ${s}`); },
    async rebootArgument() { return '0 tryboot'; },
  };
  return b;
}

const log = pino({ level: 'silent' });

t.test('the daemon side: armed before the trial, cleared at commit or when the trial is over', async (t) => {
  const dir = join(t.testdir(), 'trial');
  let bootId = OTHER_BOOT;
  const inner = fakeBoot();
  const bc = guardTrials(inner, { dir, bootId: async () => bootId, log });
  t.equal(await bc.rebootArgument(), '0 tryboot', 'backend extras survive the wrapper');

  await bc.armTrial('B', 3);
  t.same(inner.calls, ['armTrial B 3']);
  t.same(await readTrialMarker(dir), { slot: 'B', limit: 3, armedBootId: OTHER_BOOT });

  await bc.bootedSlot(); // same boot, still on A: armed, not started
  t.ok(existsSync(join(dir, 'armed')), 'kept while the trial has not started');
  bootId = 'aaaaaaaa-1111-2222-3333-444444444444';
  inner.booted = 'B';
  await bc.bootedSlot(); // the trial boot
  t.ok(existsSync(join(dir, 'armed')), 'kept during the trial boot');
  await bc.markBad('B');
  t.ok(existsSync(join(dir, 'armed')), 'kept after a rollback\'s markBad: the device still runs the bad slot until it reboots');
  bootId = 'bbbbbbbb-1111-2222-3333-444444444444';
  inner.booted = 'A';
  await bc.bootedSlot();
  t.notOk(existsSync(join(dir, 'armed')), 'cleared once a later boot runs the other slot (rolled back / fell back)');

  await bc.armTrial('B', 2);
  await writeFile(join(dir, 'reboots'), '1\n');
  await bc.commit('B');
  t.notOk(existsSync(join(dir, 'armed')), 'cleared at commit');
  t.notOk(existsSync(join(dir, 'reboots')), 'and the count with it');

  const failing: BootControl = { ...fakeBoot(), armTrial: async () => Promise.reject(new Error('fw_setenv failed')) };
  const bc2 = guardTrials(failing, { dir, bootId: async () => bootId, log });
  await t.rejects(bc2.armTrial('B', 3), /fw_setenv/);
  t.ok(existsSync(join(dir, 'armed')), 'written before the arm: an armed trial is never unguarded');
});

t.test('the systemd side: the script reads the daemon\'s marker and decides', async (t) => {
  const root = t.testdir();
  const dir = join(root, 'trial');
  const bin = await fakeSystemctl(root);
  const thisBoot = await kernelBootId();
  t.ok(thisBoot, 'this kernel has a boot id');

  t.match(await script('daemon', dir, { unit: { activeState: 'failed', subState: 'failed' } }, bin), { code: 1, out: /no trial armed/ }, 'committed device (no marker): never reboots');

  // armed in THIS boot (reboot deferred by policy): the trial has not started
  await guardTrials(fakeBoot(), { dir, bootId: async () => thisBoot, log }).armTrial('B', 3);
  t.match(await script('deadline', dir, {}, bin), { code: 1, out: /armed in this boot/ });

  // armed in an earlier boot: this boot is the trial (or what the bootloader fell back to)
  await guardTrials(fakeBoot(), { dir, bootId: async () => OTHER_BOOT, log }).armTrial('B', 3);
  t.match(await script('daemon', dir, { unit: { activeState: 'activating', subState: 'auto-restart' } }, bin), { code: 1, out: /auto-restart, not given up on/ }, 'one crash is not a verdict: the daemon gets its restart');
  t.match(await script('health', dir, { unit: RUNNING }, bin), { code: 1, out: /rolls the trial back itself/ }, 'a running daemon rolls back itself (markBad + reboot)');
  // the full-OS lane's failure (fleetreset-logs/hil3.log, power-on 4): the verdict failed while the
  // daemon was restarting, the guard took `is-active` = false for "no daemon" and rebooted the trial
  // unjudged. A daemon that is starting or restarting judges the trial itself once it is up.
  for (const unit of [
    { activeState: 'activating', subState: 'auto-restart' }, // crashed or watchdog-killed, RestartSec= pending
    { activeState: 'activating', subState: 'start' }, // Type=notify, READY=1 not sent yet
    { activeState: 'activating', subState: 'start-pre' },
    { activeState: 'deactivating', subState: 'stop-watchdog' }, // being killed, restart to follow
    { activeState: 'reloading', subState: 'reload' },
  ]) {
    t.match(await script('health', dir, { unit }, bin), { code: 1, out: new RegExp(`slotflip.service is ${unit.activeState} \\(${unit.subState}\\), not down`) }, `failed verdict while the daemon is ${unit.activeState}/${unit.subState}: not rebooting an unjudged trial`);
  }
  t.match(await script('health', dir, { unit: 'no-answer' }, bin), { code: 1, out: /slotflip.service is unknown \(unknown\), not down/ }, 'systemctl cannot answer: not rebooting (the deadline still can)');
  t.equal(existsSync(join(dir, 'reboots')), false, 'nothing counted for skipped runs');

  // play several boots: the script reads the boot id from this file
  const bootIdFile = join(root, 'boot_id');
  const boot = (n: number) => writeFile(bootIdFile, `${String(n).padStart(8, '0')}-1111-2222-3333-444444444444\n`);
  await boot(1);
  t.match(await script('daemon', dir, { unit: { activeState: 'failed', subState: 'failed' }, bootIdFile }, bin), { code: 0, out: /rebooting \(1 of 3\)/ }, 'daemon given up on: reboot');
  t.match(await script('deadline', dir, { bootIdFile }, bin), { code: 0, out: /already counted: rebooting/ }, 'a second trigger in the same boot shares that reboot');
  await boot(2);
  t.match(await script('health', dir, { unit: { activeState: 'inactive', subState: 'dead' }, bootIdFile }, bin), { code: 0, out: /rebooting \(2 of 3\)/ }, 'failed verdict, no daemon: reboot');
  await boot(3);
  t.match(await script('deadline', dir, { bootIdFile }, bin), { code: 0, out: /rebooting \(3 of 3\)/ }, 'unjudged at the deadline: reboot');
  t.equal((await readFile(join(dir, 'reboots'), 'utf8')).trim(), '3', 'every reboot counted (synced before it happens), once per boot');
  for (let i = 4; i < 7; i++) {
    await boot(i);
    t.match(await script('daemon', dir, { unit: { activeState: 'failed', subState: 'failed' }, bootIdFile }, bin), { code: 1, out: /already rebooted 3 of 3/ }, 'bounded: no reboot loop, whatever keeps failing');
  }

  // a fresh arm resets the count
  await guardTrials(fakeBoot(), { dir, bootId: async () => OTHER_BOOT, log }).armTrial('A', 1);
  t.match(await script('deadline', dir, {}, bin), { code: 0, out: /slot A .*\(1 of 1\)/ });

  t.match(await script('whatever', dir, {}, bin), { code: 2, out: /usage/ });
  await writeFile(join(dir, 'armed'), 'slot=C\nlimit=x\n');
  t.match(await script('deadline', dir, {}, bin), { code: 1, out: /does not parse/ }, 'a garbled marker never reboots');
});

t.test('no count, no reboot: a count that cannot be written never reboots', async (t) => {
  const root = t.testdir();
  const dir = join(root, 'trial');
  const bin = await fakeSystemctl(root);
  await guardTrials(fakeBoot(), { dir, bootId: async () => OTHER_BOOT, log }).armTrial('B', 3);
  await mkdir(join(dir, 'reboots.tmp')); // `echo > reboots.tmp` fails on a directory, even for root
  t.match(await script('deadline', dir, {}, bin), { code: 1, out: /cannot record the reboot count/ });
});

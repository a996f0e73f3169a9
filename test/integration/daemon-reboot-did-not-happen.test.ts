/**
 * A reboot command that exits 0 but the machine never goes down, from outside: the built CLI's
 * `slotflip daemon` on an emulated board, whose `reboot.command` is a script that only records that
 * it ran. A shutdown (SIGTERM) during the grace period is the reboot happening: the daemon exits 0 at
 * once, the record still `rebooting`. Past `reboot.graceSeconds` the daemon logs an error
 * DAEMON_REBOOT_DID_NOT_HAPPEN, `status` shows the reboot step failed with that code, and the
 * reboot is issued again after the backoff.
 */
import t from 'tap';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
const CLI = fileURLToPath(new URL('../../dist/daemon/cli.js', import.meta.url));

async function must(args: string[]): Promise<string> {
  const r = await execFileP(process.execPath, [CLI, ...args], { timeout: 60_000 });
  return r.stdout;
}

interface Daemon {
  proc: ChildProcess;
  lines: Array<Record<string, unknown>>;
  waitFor(pred: (l: Record<string, unknown>) => boolean, what: string, ms: number): Promise<Record<string, unknown>>;
  exited: Promise<number | null>;
}

function daemon(config: string): Daemon {
  const proc = spawn(process.execPath, [CLI, 'daemon', '--config', config], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: Array<Record<string, unknown>> = [];
  let buf = '';
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(buf.slice(0, i)) as Record<string, unknown>);
      buf = buf.slice(i + 1);
    }
  });
  const exited = once(proc, 'exit').then(([c]) => c as number | null);
  return {
    proc,
    lines,
    exited,
    async waitFor(pred, what, ms) {
      const until = Date.now() + ms;
      for (;;) {
        const hit = lines.find(pred);
        if (hit) return hit;
        if (Date.now() > until) throw new Error(`no log line "${what}" in ${ms} ms; last: ${JSON.stringify(lines.slice(-5))}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
  };
}

t.test('reboot command exits 0, the machine stays up: error, step failed, reboot re-issued', async (t) => {
  const dir = t.testdir();
  const board = join(dir, 'board');
  const repo = join(dir, 'repo');
  await must(['board', 'create', board, '--backend', 'emulated', '--slot-size', '256K']);
  await must(['repo', 'init', repo]);
  await must(['board', 'image', join(dir, 'rootfs.img'), '--version', '1.1.0', '--size', '128K']);
  await must(['release', 'add', repo, '--image', join(dir, 'rootfs.img'), '--version', '1.1.0', '--security-version', '1', '--hardware', 'acme,e2e', '--channel', 'stable', '--chunk-size', '32768']);
  const desc = JSON.parse(await readFile(join(board, 'board.json'), 'utf8')) as { slots: { A: string; B: string }; bootConfig: unknown };
  const rebootLog = join(dir, 'reboots');
  const script = join(dir, 'reboot.sh');
  // a reboot command that "succeeds" and does nothing (a wrapper that only schedules, an inhibitor)
  await writeFile(script, `#!/bin/sh\necho reboot >> '${rebootLog}'\nexit 0\n`);
  await chmod(script, 0o755);
  await writeFile(rebootLog, '');
  const reboots = async () => (await readFile(rebootLog, 'utf8')).split('\n').filter(Boolean).length;
  const config = (graceSeconds: number) => JSON.stringify({
    deviceId: 'dev-1', hardware: 'acme,e2e', stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'dir', path: join(repo, 'repository') }] },
    board: { slots: { A: { path: desc.slots.A, size: 262144 }, B: { path: desc.slots.B, size: 262144 } }, boot: desc.bootConfig, tries: 2 },
    health: { checks: [{ type: 'command', name: 'application', argv: [process.execPath, CLI, 'board', 'probe', board, '--health'], timeoutSeconds: 30 }] },
    reboot: { command: [script], graceSeconds },
    log: { level: 'info' },
  });
  const cfg = join(dir, 'config.json');
  const status = async () => JSON.parse(await must(['status', '--config', cfg, '--json'])) as { phase: string; attempt?: { stepFailures?: number; lastError?: { code: string } } };

  // 1. a shutdown inside the grace period is the reboot happening: prompt, clean exit
  await writeFile(cfg, config(600));
  const d1 = daemon(cfg);
  t.teardown(() => { d1.proc.kill('SIGKILL'); });
  for (let i = 0; (await reboots()) === 0; i++) {
    if (i > 900) throw new Error('the reboot command never ran');
    await new Promise((r) => setTimeout(r, 100));
  }
  const t0 = Date.now();
  d1.proc.kill('SIGTERM');
  t.equal(await d1.exited, 0, 'SIGTERM during the grace period: exit 0');
  t.ok(Date.now() - t0 < 15_000, `and promptly (${Date.now() - t0} ms), not after the grace period`);
  t.notOk(d1.lines.some((l) => l.msg === 'reboot did not happen'), 'no error: the shutdown came');
  let s = await status();
  t.equal(s.phase, 'rebooting', 'the record still says rebooting');
  t.notOk(s.attempt?.stepFailures, 'no step failure');

  // 2. the system stays up past reboot.graceSeconds
  await writeFile(cfg, config(2));
  const d2 = daemon(cfg);
  t.teardown(() => { d2.proc.kill('SIGKILL'); });
  const err = await d2.waitFor((l) => l.msg === 'reboot did not happen', 'reboot did not happen', 90_000);
  t.equal(err.level, 50, 'logged at error');
  t.match(err.err, { code: 'DAEMON_REBOOT_DID_NOT_HAPPEN', retryable: true, details: { graceMs: 2000 } });
  t.equal(await reboots(), 2, 'the restarted daemon issued the reboot again, then waited');
  for (let i = 0; !(s = await status()).attempt?.stepFailures && i < 50; i++) await new Promise((r) => setTimeout(r, 200));
  t.equal(s.phase, 'rebooting', 'the attempt stays in rebooting, the trial armed');
  t.match(s.attempt, { stepFailures: 1, lastError: { code: 'DAEMON_REBOOT_DID_NOT_HAPPEN' } }, 'status shows the failed reboot step and its code');
  const text = await must(['status', '--config', cfg]);
  t.match(text, /rebooting failed 1 time \(DAEMON_REBOOT_DID_NOT_HAPPEN: .*\); retried at/, 'status (text) says when it is retried');

  // the machine's backoff (30 s for the first failure) re-issues the reboot
  for (let i = 0; (await reboots()) < 3; i++) {
    if (i > 900) throw new Error('the reboot was not re-issued within 90 s');
    await new Promise((r) => setTimeout(r, 100));
  }
  t.pass('the reboot command ran again after the backoff');
  d2.proc.kill('SIGTERM');
  t.equal(await d2.exited, 0);
});

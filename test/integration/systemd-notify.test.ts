/**
 * sd_notify end to end against a real unix datagram socket: a python3 receiver plays systemd's side
 * (SO_PASSCRED, so every datagram carries the sender's pid as the kernel saw it), a child Node process
 * runs the notifier. Proves READY=1 and WATCHDOG=1 arrive from the child's own pid (what
 * NotifyAccess=main requires), at the expected interval, and that a hung event loop stops the pings
 * long enough for systemd's watchdog to fire.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const NOTIFY_MODULE = pathToFileURL(join(import.meta.dirname, '../../daemon/sd-notify.ts')).href;

// systemd's side: bind, SO_PASSCRED, print one JSON line per datagram with the sender pid.
const RECEIVER = `
import json, socket, struct, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind(sys.argv[1])
print(json.dumps({"listening": True}), flush=True)
while True:
    msg, anc, flags, addr = s.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = None
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", data[:12])[0]
    print(json.dumps({"t": time.monotonic(), "pid": pid, "msg": msg.decode()}), flush=True)
`;

// The daemon's side: ready, watchdog on, then a hung event loop for HANG_MS, then a clean stop.
const CHILD = `
const { createNotifier } = await import(${JSON.stringify(NOTIFY_MODULE)});
const [socketPath, usec, hangMs, beforeMs, afterMs] = process.argv.slice(1);
const n = createNotifier({ socketPath, watchdogUsec: Number(usec), onError: (e) => { console.error(e.code, e.message); process.exitCode = 3; } });
await n.ready('starting');
n.startWatchdog();
// keep the loop alive while pinging (the pinger itself is unref'd)
const keep = setInterval(() => {}, 1000);
await new Promise((r) => setTimeout(r, Number(beforeMs)));
await n.status('hanging');
const end = Date.now() + Number(hangMs);
while (Date.now() < end) { /* busy: the event loop is stuck */ }
await n.status('recovered');
await new Promise((r) => setTimeout(r, Number(afterMs)));
n.stop();
await n.stopping();
clearInterval(keep);
`;

interface Received {
  t: number;
  pid: number | null;
  msg: string;
}

function startReceiver(socketPath: string): Promise<{ proc: ChildProcess; messages: Received[] }> {
  const proc = spawn('python3', ['-c', RECEIVER, socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
  const messages: Received[] = [];
  return new Promise((resolve, reject) => {
    proc.once('error', reject);
    proc.once('exit', (code) => reject(new Error(`receiver exited early with ${code}`)));
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      const v = JSON.parse(line) as Received & { listening?: boolean };
      if (v.listening) resolve({ proc, messages });
      else messages.push(v);
    });
  });
}

function runChild(args: string[]): Promise<{ pid: number; code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [...process.execArgv, '--input-type=module', '-e', CHILD, ...args], {
    stdio: ['ignore', 'inherit', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => resolve({ pid: child.pid!, code, stderr }));
  });
}

const waitFor = async (cond: () => boolean, ms: number): Promise<void> => {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
};

t.test('READY=1 and WATCHDOG=1 reach the socket from the child pid; a hung loop stops the pings', async (t) => {
  // t.testdir() paths are longer than a unix socket path may be (108 bytes).
  const dir = mkdtempSync(join(tmpdir(), 'slotflip-notify-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socketPath = join(dir, 'notify');
  const { proc, messages } = await startReceiver(socketPath);
  t.teardown(() => {
    proc.removeAllListeners('exit');
    proc.kill('SIGKILL');
  });

  const watchdogUsec = 1_000_000; // systemd would kill after 1 s without a ping
  const hangMs = 2500;
  const child = await runChild([socketPath, String(watchdogUsec), String(hangMs), '2000', '1200']);
  t.equal(child.code, 0, `child exits cleanly: ${child.stderr}`);
  await waitFor(() => messages.some((m) => m.msg === 'STOPPING=1\n'), 5000);

  t.ok(messages.length > 0, 'datagrams arrived');
  t.same(
    messages.filter((m) => m.pid !== child.pid),
    [],
    'every datagram carries the child process pid (NotifyAccess=main accepts them)',
  );
  t.equal(messages[0]!.msg, 'READY=1\nSTATUS=starting\n', 'first message is READY=1 with the status');

  const idx = (s: string): number => messages.findIndex((m) => m.msg === s);
  const iHang = idx('STATUS=hanging\n');
  const iBack = idx('STATUS=recovered\n');
  t.ok(iHang > 0 && iBack > iHang, 'hang markers arrived in order');
  const pings = (from: number, to: number): Received[] => messages.slice(from, to).filter((m) => m.msg === 'WATCHDOG=1\n');

  const before = pings(0, iHang);
  // 2000 ms at a 500 ms interval: ~5 pings (the first at once); allow for a slow machine.
  t.ok(before.length >= 3, `pings while the loop turns (${before.length})`);
  const gapsBefore = before.slice(1).map((m, i) => (m.t - before[i]!.t) * 1000);
  t.ok(
    gapsBefore.every((g) => g < watchdogUsec / 1000),
    `no gap before the hang reaches WATCHDOG_USEC (gaps ${gapsBefore.map((g) => g.toFixed(0)).join(',')} ms)`,
  );

  t.same(pings(iHang, iBack), [], 'no ping while the event loop is hung');
  const lastBefore = before[before.length - 1]!;
  const after = pings(iBack, messages.length);
  t.ok(after.length >= 2, `pings resume once the loop turns again (${after.length})`);
  const silence = (after[0]!.t - lastBefore.t) * 1000;
  t.ok(silence >= hangMs - 50, `silence ${silence.toFixed(0)} ms covers the ${hangMs} ms hang`);
  t.ok(silence > watchdogUsec / 1000, 'the silence is longer than WATCHDOG_USEC: systemd would have restarted the service');
  t.equal(messages[messages.length - 1]!.msg, 'STOPPING=1\n', 'STOPPING=1 last; no ping after stop()');
});

t.test('no receiver on the path: sends fail with DAEMON_NOTIFY_SEND, watchdog pings go to onError', async (t) => {
  const { createNotifier } = (await import(NOTIFY_MODULE)) as typeof import('../../daemon/sd-notify.js');
  const dir = mkdtempSync(join(tmpdir(), 'slotflip-notify-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const errors: string[] = [];
  const n = createNotifier({ socketPath: join(dir, 'absent'), watchdogUsec: 100_000, onError: (e) => errors.push(e.code) });
  await t.rejects(n.ready(), { code: 'DAEMON_NOTIFY_SEND', retryable: true });
  n.startWatchdog();
  await waitFor(() => errors.length >= 2, 2000);
  n.stop();
  t.ok(errors.length >= 2 && errors.every((c) => c === 'DAEMON_NOTIFY_SEND'), `failed pings reported, pinger kept going (${errors.length})`);
});

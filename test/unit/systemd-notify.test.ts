/**
 * sd-notify without a socket: environment parsing, message framing, path checks and the watchdog
 * pinger's schedule, through an injected sender. The real socket is in
 * test/integration/systemd-notify.test.ts.
 */
import t from 'tap';
import { createNotifier, notifyOptionsFromEnv, type DatagramSender } from '../../daemon/sd-notify.js';

function recorder(): { send: DatagramSender; sent: { path: string; text: string }[] } {
  const sent: { path: string; text: string }[] = [];
  return {
    sent,
    send: async (path, msg) => {
      sent.push({ path, text: msg.toString('utf8') });
    },
  };
}

t.test('notifyOptionsFromEnv', async (t) => {
  t.same(notifyOptionsFromEnv({}, 42), { socketPath: undefined, watchdogUsec: undefined }, 'not under systemd');
  t.same(notifyOptionsFromEnv({ NOTIFY_SOCKET: '/run/systemd/notify' }, 42), { socketPath: '/run/systemd/notify', watchdogUsec: undefined });
  t.same(notifyOptionsFromEnv({ NOTIFY_SOCKET: '/run/systemd/notify', WATCHDOG_USEC: '30000000' }, 42).watchdogUsec, 30_000_000);
  t.same(notifyOptionsFromEnv({ NOTIFY_SOCKET: '/s', WATCHDOG_USEC: '30000000', WATCHDOG_PID: '42' }, 42).watchdogUsec, 30_000_000, 'watchdog for this pid');
  t.equal(notifyOptionsFromEnv({ NOTIFY_SOCKET: '/s', WATCHDOG_USEC: '30000000', WATCHDOG_PID: '7' }, 42).watchdogUsec, undefined, 'watchdog for another pid is not ours');
  t.equal(notifyOptionsFromEnv({ NOTIFY_SOCKET: '/s', WATCHDOG_USEC: 'soon' }, 42).watchdogUsec, undefined, 'garbage ignored');
  t.equal(notifyOptionsFromEnv({ NOTIFY_SOCKET: '/s', WATCHDOG_USEC: '0' }, 42).watchdogUsec, undefined, 'zero means off');
  t.equal(notifyOptionsFromEnv({ NOTIFY_SOCKET: '' }, 42).socketPath, undefined, 'empty is unset');
});

t.test('messages are sd_notify lines, sent to the given path', async (t) => {
  const r = recorder();
  const n = createNotifier({ socketPath: '/run/systemd/notify', send: r.send });
  t.equal(n.enabled, true);
  await n.ready();
  await n.ready('serving');
  await n.status('installing\nchunk 3/9');
  await n.ping();
  await n.stopping();
  t.same(r.sent.map((m) => m.path), Array(5).fill('/run/systemd/notify'));
  t.same(r.sent.map((m) => m.text), [
    'READY=1\n',
    'READY=1\nSTATUS=serving\n',
    'STATUS=installing chunk 3/9\n',
    'WATCHDOG=1\n',
    'STOPPING=1\n',
  ]);
});

t.test('without a socket everything is a no-op', async (t) => {
  const r = recorder();
  const n = createNotifier({ socketPath: undefined, watchdogUsec: 1000, send: r.send });
  t.equal(n.enabled, false);
  t.equal(n.watchdogIntervalMs, undefined);
  await n.ready('x');
  await n.status('y');
  n.startWatchdog();
  n.stop();
  t.same(r.sent, []);
});

t.test('socket paths slotflip cannot address are refused up front', async (t) => {
  t.throws(() => createNotifier({ socketPath: '@/org/freedesktop/systemd1/notify' }), { code: 'DAEMON_NOTIFY_SOCKET' }, 'abstract');
  t.throws(() => createNotifier({ socketPath: 'run/notify' }), { code: 'DAEMON_NOTIFY_SOCKET' }, 'relative');
  t.throws(() => createNotifier({ socketPath: '/' + 'x'.repeat(107) }), { code: 'DAEMON_NOTIFY_SOCKET' }, 'too long');
  t.doesNotThrow(() => createNotifier({ socketPath: '/' + 'x'.repeat(106) }), '107 bytes fit');
});

t.test('send errors become DAEMON_NOTIFY_SEND', async (t) => {
  const n = createNotifier({
    socketPath: '/run/systemd/notify',
    send: async () => {
      throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
    },
  });
  await t.rejects(n.ready(), { code: 'DAEMON_NOTIFY_SEND', retryable: true, details: { socketPath: '/run/systemd/notify', lines: ['READY'] } });
});

t.test('watchdog: half of WATCHDOG_USEC, first ping at once, idempotent start, stop stops', async (t) => {
  const r = recorder();
  const n = createNotifier({ socketPath: '/s', watchdogUsec: 60_000, send: r.send });
  t.equal(n.watchdogIntervalMs, 30);
  n.startWatchdog();
  n.startWatchdog();
  await new Promise((res) => setImmediate(res));
  t.equal(r.sent.length, 1, 'one ping at once, not two');
  await new Promise((res) => setTimeout(res, 200));
  n.stop();
  const count = r.sent.length;
  t.ok(count >= 3 && count <= 9, `about every 30 ms (${count} in ~200 ms)`);
  t.ok(r.sent.every((m) => m.text === 'WATCHDOG=1\n'));
  await new Promise((res) => setTimeout(res, 100));
  t.equal(r.sent.length, count, 'no ping after stop()');
  n.stop();

  const quiet = createNotifier({ socketPath: '/s', send: r.send });
  t.equal(quiet.watchdogIntervalMs, undefined, 'no WATCHDOG_USEC, no pinger');
  quiet.startWatchdog();
  await new Promise((res) => setTimeout(res, 50));
  t.equal(r.sent.length, count);
});

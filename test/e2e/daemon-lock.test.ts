/**
 * One daemon per state directory (issue 14): a second `slotflip daemon` on the same config exits
 * non-zero at start with DAEMON_LOCKED naming the first one's pid, without ever connecting to the
 * broker (the first keeps its one connection: the same client id is never kicked off); read-only
 * `slotflip status` works beside the daemon; `slotflip update --once` beside it refuses with
 * DAEMON_LOCKED; a lock left by a SIGKILLed daemon is taken over by the next one.
 */
import t from 'tap';
import { startMosquitto } from '../harness/mosquitto.js';
import { deviceStatus, msg, slotflip, startDaemon } from './harness.js';
import { setupDownload } from './scenarios.js';
import { within } from '../harness/wait.js';

const broker = await startMosquitto();
t.teardown(() => broker.stop());

t.test('a second daemon on one state directory exits DAEMON_LOCKED; update --once refuses; a dead daemon\'s lock is taken over', async (t) => {
  const dir = t.testdir();
  const env = await setupDownload(dir, { brokerUrl: broker.url, deviceId: 'dev-lock', bytesPerSecond: 64 << 20 });
  t.teardown(() => env.srv.stop());

  const first = startDaemon(env.configPath);
  t.teardown(() => first.kill());
  await first.waitFor(msg('broker connected'), 20_000, 'first daemon connected');
  await first.waitFor(msg('cycle done'), 30_000, 'first daemon cycle');

  const started = Date.now();
  const second = startDaemon(env.configPath);
  t.teardown(() => second.kill());
  const code = await within(second.exited, 15_000, () => 'still running' as const);
  t.not(code, 'still running', 'the second daemon did not keep running');
  t.not(code, 0, `the second daemon exited non-zero (${String(code)})`);
  t.ok(Date.now() - started < 10_000, 'at start, not after some cycles');
  t.match(second.stderr(), /DAEMON_LOCKED/, 'says DAEMON_LOCKED');
  t.match(second.stderr(), new RegExp(`process ${first.pid}\\b`), 'and which pid holds the lock');
  t.notOk(second.lines.some((l) => l.msg === 'broker connected' || l.msg === 'cycle done'), 'it never connected to the broker nor ran a cycle');
  t.equal(first.lines.filter((l) => l.msg === 'broker connected').length, 1, 'the first daemon was never kicked off the broker');
  t.equal(first.child.exitCode, null, 'the first daemon still runs');

  t.match(await deviceStatus(env.configPath), { bootedSlot: 'A' }, 'slotflip status works beside the daemon');
  const once = await slotflip(['update', '--once', '--config', env.configPath, '--json']);
  t.not(once.code, 0, `update --once beside the daemon exits non-zero (${once.code})`);
  t.match(once.stderr, /DAEMON_LOCKED/, 'update --once says DAEMON_LOCKED');

  // power cut of the process: its lock stays behind, stale
  await first.kill();
  const third = startDaemon(env.configPath);
  t.teardown(() => third.stop());
  await third.waitFor(msg('cycle done'), 30_000, 'a new daemon takes the stale lock over and runs');
  t.equal(third.child.exitCode, null, 'and keeps running');
  t.equal(await third.stop(), 0, 'SIGTERM stops it cleanly (exit 0)');

  // a clean stop releases the lock: update --once works again
  const after = await slotflip(['update', '--once', '--no-check', '--config', env.configPath, '--json']);
  t.equal(after.code, 0, `update --once after the daemon stopped exits 0 (${after.stderr})`);
});

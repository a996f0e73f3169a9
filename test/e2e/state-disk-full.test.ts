/**
 * A full state disk: the daemon's state directory is a tiny tmpfs filled to the last byte before the
 * daemon starts. The daemon must stay up (no crash, no exit), say why each cycle failed with a code,
 * back off between tries (the configured delay, doubling), and finish the update by itself once
 * space is freed. Needs `mount -t tmpfs` (root); skipped where that is not allowed.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startMosquitto } from '../harness/mosquitto.js';
import { slotSha256, startDaemon, until } from './harness.js';
import { setupDownload } from './scenarios.js';

const run = promisify(execFile);

async function fill(dir: string): Promise<string> {
  const path = join(dir, 'filler');
  const fh = await open(path, 'w');
  const block = Buffer.alloc(4096, 1);
  try {
    for (;;) await fh.write(block);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
  } finally {
    await fh.close().catch(() => undefined);
  }
  return path;
}

t.test('a full state disk: the daemon stays up, backs off, reports a code, and recovers when space is freed', async (t) => {
  const dir = t.testdir();
  // the mount point lives outside the test dir: it is unmounted before anything is removed
  const stateDir = await mkdtemp(join(tmpdir(), 'slotflip-e2e-state-'));
  const cleanup: Array<() => Promise<unknown>> = [];
  t.teardown(async () => {
    for (const f of cleanup.reverse()) await f().catch(() => undefined);
    await run('umount', [stateDir]).catch(() => run('umount', ['-l', stateDir])).catch(() => undefined);
    await rm(stateDir, { recursive: true, force: true }).catch(() => undefined);
  });
  try {
    await run('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', stateDir]);
  } catch (e) {
    t.comment(`skipped: cannot mount a tmpfs here (${(e as Error).message.split('\n')[0]}); needs root`);
    t.pass('skipped: no tmpfs mount allowed');
    return;
  }

  const broker = await startMosquitto();
  cleanup.push(() => broker.stop());
  const env = await setupDownload(dir, { brokerUrl: broker.url, deviceId: 'dev-full', stateDir, extra: { retry: { delaySeconds: 1, maxDelaySeconds: 4 } } });
  cleanup.push(() => env.srv.stop());
  const filler = await fill(stateDir);

  const d = startDaemon(env.configPath);
  cleanup.push(() => d.kill());
  await until(() => d.lines.filter((l) => l.msg === 'cycle failed').length >= 3, 30_000, 'three failed cycles');
  t.equal(d.child.exitCode, null, 'the daemon is still running');
  const failed = d.lines.filter((l) => l.msg === 'cycle failed').map((l) => (l.err as { code?: string }).code);
  t.ok(failed.every((c) => typeof c === 'string' && /^(DAEMON|HAL)_[A-Z_]+$/.test(c)), `each failure has a code (${[...new Set(failed)].join(', ')})`);
  const delays = d.lines.filter((l) => l.msg === 'retry scheduled').map((l) => Number(l.delayMs));
  t.ok(delays.length >= 2 && delays.every((ms) => ms >= 500 && ms <= 4000), `retries wait the configured 1 s, doubling up to 4 s (${delays.join(', ')} ms)`);
  t.ok(delays.at(-1)! > 1000, 'and the wait grew');

  await rm(filler);
  await d.waitFor((l) => l.msg === 'install verified', 60_000, 'the install, once space is free');
  await d.waitFor((l) => l.msg === 'cycle done' && l.phase === 'rebooting', 30_000, 'the cycle reaching the reboot');
  t.equal(await slotSha256(env.board.slots.B, env.rel.size), env.rel.imageSha256, 'slot B holds the image');
  t.equal(await d.stop(), 0, 'stops cleanly');
});

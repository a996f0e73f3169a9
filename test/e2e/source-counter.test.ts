/**
 * Power cuts during one long install must not cost the committed slot (issue 22's class: sequences
 * that cost the last good slot). A RAUC-convention U-Boot counts BOOT_x_LEFT down at every boot,
 * the committed slot's too; the OS confirms the slot it runs at every boot. A device cut off several
 * times while it downloads a release boots its committed slot A each time — and if the resumed
 * attempt did not confirm A, A drained to 0 and the arm found no fallback (HAL_NO_FALLBACK: found by
 * the power-cut harness, seed 1456040105; on a real board U-Boot then finds no slot to boot).
 * Driven from outside: a real U-Boot environment (fw_setenv/fw_printenv), `slotflip board
 * power-cycle` running U-Boot's own selection, the built daemon SIGKILLed mid-download (the process
 * side of a power cut), the payload over HTTP.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startMosquitto } from '../harness/mosquitto.js';
import { bytesServed, slotflip, slotSha256, startDaemon, until } from './harness.js';
import { setupDownload } from './scenarios.js';

const run = promisify(execFile);
const broker = await startMosquitto();
t.teardown(() => broker.stop());

t.test('power cuts during a long install keep the committed slot\'s boot counter full (U-Boot, RAUC convention)', async (t) => {
  const dir = t.testdir();
  const env = await setupDownload(dir, { brokerUrl: broker.url, deviceId: 'dev-source-counter', backend: 'uboot', bytesPerSecond: 2 * 1024 * 1024 });
  t.teardown(() => env.srv.stop());
  const envVar = async (name: string): Promise<string> => (await run('fw_printenv', ['-n', '-c', join(env.board.dir, 'fw_env.config'), name])).stdout.trim();
  const powerOn = async (what: string): Promise<void> => {
    const r = await slotflip(['board', 'power-cycle', env.board.dir, '--json']);
    t.equal(r.code, 0, `${what}: a slot booted`);
    t.match(JSON.parse(r.stdout), { booted: 'A' }, `${what}: U-Boot booted the committed slot A`);
  };
  await powerOn('power-on 1');
  // four cuts during the download: each a boot of A that U-Boot counts down, each time confirmed
  // again by the daemon that runs in it
  let full = '';
  for (let i = 1; i <= 4; i++) {
    const drained = Number(await envVar('BOOT_A_LEFT'));
    const d = startDaemon(env.configPath);
    try {
      await until(() => bytesServed(env.srv, env.rel.urlPath) >= (i / 6) * env.rel.length || d.child.exitCode !== null, 30_000, `${i}/6 of the payload served`, 5);
    } finally {
      await d.kill();
    }
    const record = JSON.parse(await readFile(join(env.stateDir, 'update-record.json'), 'utf8')) as { phase: string };
    t.not(record.phase, 'idle', `cut ${i}: the install was in flight (${record.phase})`);
    const left = await envVar('BOOT_A_LEFT');
    t.ok(Number(left) > drained, `cut ${i}: the daemon confirmed slot A at this boot (BOOT_A_LEFT ${drained} after U-Boot counted it down, ${left} after the daemon)`);
    if (i === 1) full = left;
    else t.equal(left, full, `cut ${i}: A is back to the count the first confirmation gave it (${full})`);
    await powerOn(`power-on ${i + 1}`);
  }
  const d = startDaemon(env.configPath);
  try {
    await d.waitFor((l) => l.msg === 'install verified', 60_000, 'install verified');
    await d.waitFor((l) => l.msg === 'cycle done', 60_000, 'cycle done');
  } finally {
    await d.stop();
  }
  const record = JSON.parse(await readFile(join(env.stateDir, 'update-record.json'), 'utf8')) as { phase: string; attempt?: { lastError?: { code: string } } };
  t.equal(record.phase, 'rebooting', `the trial of B is armed (phase ${record.phase}${record.attempt?.lastError ? `, ${record.attempt.lastError.code}` : ''})`);
  t.equal(await envVar('BOOT_ORDER'), 'B A', 'U-Boot tries B next, with A as its fallback');
  t.equal(await envVar('BOOT_A_LEFT'), full, 'and A keeps its full count');
  t.equal(await slotSha256(env.board.slots.B, env.rel.size), env.rel.imageSha256, 'slot B holds the image');
});

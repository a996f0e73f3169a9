// `slotflip board` end to end through the command module (what the CLI registry loads).
import t from 'tap';
import { PassThrough } from 'node:stream';
import { join } from 'node:path';
import { command } from '../../daemon/commands/board.js';
import { createBootControl } from '../../hal/registry.js';
import { loadBoard, makeTestImage, writeSlotImage } from '../../hal/board.js';

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (d) => (out += d));
  stderr.on('data', (d) => (err += d));
  const code = await command.run(argv, { stdout, stderr, env: {} });
  return { code, out, err };
}

t.test('create, power-cycle, status, probe on a uboot/rauc board', async (t) => {
  const dir = join(t.testdir(), 'board');
  const c = await run(['create', dir, '--backend', 'uboot', '--convention', 'rauc', '--slot-size', '256K', '--json']);
  t.equal(c.code, 0, c.err);
  const desc = JSON.parse(c.out);
  t.match(desc, { backend: 'uboot', convention: 'rauc', slotSize: 256 * 1024, bootConfig: { type: 'uboot', convention: 'rauc' } });
  const p = await run(['power-cycle', dir, '--json']);
  t.equal(p.code, 0);
  t.match(JSON.parse(p.out), { booted: 'A', version: '0.0.0', healthy: true });
  t.equal((await run(['probe', dir, '--health'])).code, 0, 'factory image is healthy');

  // install an unhealthy image into B through the real backend, trial-boot it
  const bc = createBootControl((await loadBoard(dir)).bootConfig);
  await bc.commit('A');
  await bc.markBad('B');
  await writeSlotImage(dir, 'B', makeTestImage({ version: '5.0.0', size: 100_000, healthy: false }));
  await bc.armTrial('B', 1);
  const p2 = await run(['power-cycle', dir]);
  t.match(p2.out, /booted slot B \(5\.0\.0\)/);
  const probe = await run(['probe', dir, '--health']);
  t.equal(probe.code, 1, 'unhealthy image fails the health probe');
  const s = await run(['status', dir, '--json']);
  t.match(JSON.parse(s.out), { booted: 'B', images: { A: { version: '0.0.0' }, B: { version: '5.0.0', healthy: false } } });
  t.match((await run(['status', dir])).out, /booted: B/);
  t.match((await run(['power-cycle', dir])).out, /booted slot A/, 'unconfirmed trial falls back');
});

t.test('rpi-tryboot: --tryboot starts the trial', async (t) => {
  const dir = join(t.testdir(), 'pi');
  t.equal((await run(['create', dir, '--backend', 'rpi-tryboot', '--slot-size', '64K'])).code, 0);
  const bc = createBootControl((await loadBoard(dir)).bootConfig);
  await bc.markBad('B');
  await writeSlotImage(dir, 'B', makeTestImage({ version: '2.0.0', size: 50_000 }));
  await bc.armTrial('B', 1);
  t.equal(await bc.rebootArgument(), '0 tryboot');
  t.match((await run(['power-cycle', dir])).out, /booted slot A/, 'a plain power cycle ignores the trial');
  const r = JSON.parse((await run(['power-cycle', dir, '--tryboot', '--json'])).out);
  t.match(r, { booted: 'B', tryboot: true });
});

t.test('usage errors', async (t) => {
  const dir = t.testdir();
  t.equal((await run([])).code, 2);
  t.equal((await run(['create', dir, '--backend', 'lilo', '--slot-size', '1M'])).code, 2);
  t.equal((await run(['create', dir, '--backend', 'grub'])).code, 2);
  t.equal((await run(['create', dir, '--bogus'])).code, 2);
  t.equal((await run(['frobnicate', dir])).code, 2);
  t.equal((await run(['probe', dir])).code, 2);
  await t.rejects(run(['status', join(dir, 'none')]), { code: 'HAL_BOARD_MISSING' });
  await t.rejects(run(['power-cycle', dir, '--health']), { code: 'DAEMON_BAD_ARGUMENT' });
  await t.rejects(run(['create', join(dir, 'b'), '--backend', 'grub', '--slot-size', 'lots']), { code: 'DAEMON_BAD_ARGUMENT' });
  const h = await run(['--help']);
  t.equal(h.code, 0);
  t.match(h.out, /power-cycle DIR/);
});

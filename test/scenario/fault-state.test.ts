/**
 * State-directory faults:
 * - disk full: the state directory on a 64 KiB tmpfs (mounted here; we run as root), filled to
 *   leave 0–16 KiB; whatever the daemon does must end in a coded error or a failed attempt, never a
 *   torn record, a temp file left behind, or a touched committed slot; once space is freed the
 *   update completes;
 * - two daemons started at once on the same device: exactly one may install (a lock in the state
 *   directory); the other must refuse with a clear code.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { boardStatus, createBoard, powerCycle } from '../../hal/board.js';
import { isCoded } from '../../hal/errors.js';
import { createAgent } from '../../daemon/compose.js';
import { runUpdateCycle } from '../../daemon/agent.js';
import { FileStateStore } from '../../daemon/state-store.js';
import { boardHealth } from '../powercut/driver.js';
import { startHttpServer } from '../harness/http-server.js';
import { buildFixtures, defaultDriverPath, readJournal, runDriver, SLOT_SIZE, writeConfig } from '../powercut/harness.js';

t.test('state directory faults', async (t) => {
  const fx = await buildFixtures(join(t.testdir(), 'fx'));
  t.teardown(() => fx.stop());

  for (const free of [0, 8192, 12288, 16384]) {
    t.test(`disk full in the state directory (${free} bytes left)`, async (t) => {
      const dir = t.testdir();
      const boardDir = join(dir, 'board');
      const board = await createBoard(boardDir, { backend: 'emulated', slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
      // outside the test dir: tap removes that before teardowns run
      const mnt = await mkdtemp(join(tmpdir(), 'slotflip-full-'));
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt]);
      t.teardown(async () => { execFileSync('umount', [mnt]); await rm(mnt, { recursive: true, force: true }); });
      const stateDir = join(mnt, 'state');
      const config = await writeConfig(join(dir, 'config.json'), { deviceId: 'full-1', stateDir, root: fx.roots.good, url: `${fx.server.url}good/stage1/`, board, tries: 2 });
      const agent = () => createAgent(config, { reboot: async () => { await powerCycle(boardDir); }, health: boardHealth(boardDir) });
      await (await agent()).check(); // trusted metadata written while there is room
      const b0 = await readFile(board.slots.A);
      // fill the file system, then give back `free` bytes
      const filler = join(mnt, 'filler');
      await writeFile(filler, Buffer.alloc(64 * 1024)).catch(() => undefined);
      const big = (await readFile(filler)).length;
      await rm(filler);
      await writeFile(filler, Buffer.alloc(Math.max(0, big - free)));
      let outcome: string;
      let succeeded = false;
      try {
        const r = await runUpdateCycle(agent);
        outcome = JSON.stringify(r.finished.map((f) => [f.outcome, f.reason?.code]));
        succeeded = r.finished.some((f) => f.outcome === 'succeeded');
      } catch (e) {
        t.ok(isCoded(e), `a coded error, not a crash: ${String(e)}`);
        outcome = String((e as { code?: string }).code);
      }
      t.pass(`outcome with ${free} bytes free: ${outcome}`);
      const rec = await new FileStateStore({ stateDir, now: Date.now }).load();
      t.ok(rec, 'the record still parses (old or new, never torn)');
      const temps = (await readdir(stateDir, { recursive: true })).filter((f) => String(f).endsWith('.tmp'));
      t.same(temps, [], 'no temp files left behind');
      t.same(await readFile(board.slots.A), b0, 'the committed slot A untouched');
      const pc = await powerCycle(boardDir);
      t.equal(pc.booted, succeeded ? 'B' : 'A', 'the device boots its committed slot');
      // space comes back: the update completes
      await rm(filler);
      const r2 = await runUpdateCycle(agent);
      if (!succeeded) t.match(r2.finished.at(-1), { outcome: 'succeeded', release: { version: '1.1.0' } }, 'completes once space is freed');
      t.equal((await boardStatus(boardDir)).booted, 'B');
      t.equal((await boardStatus(boardDir)).images.B.version, '1.1.0');
    });
  }

  t.test('two daemons started at once: only one installs', async (t) => {
    const dir = t.testdir();
    const boardDir = join(dir, 'board');
    const board = await createBoard(boardDir, { backend: 'emulated', slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
    const cfgPath = join(dir, 'config.json');
    // a slow server (~7 s per payload) so the two runs overlap whatever the machine's load
    const srv = await startHttpServer({ root: fx.served, faults: { bytesPerSecond: 20_000 } });
    t.teardown(() => srv.stop());
    await writeConfig(cfgPath, { deviceId: 'twin-1', stateDir: join(dir, 'state'), root: fx.roots.good, url: `${srv.url}good/stage1/`, board, tries: 2 });
    const driver = defaultDriverPath();
    const first = runDriver(driver, ['--config', cfgPath, '--board', boardDir, '--journal', join(dir, 'j0.jsonl')]);
    // the second starts once the first has begun its attempt (target marked bad, download starting)
    for (let i = 0; i < 600 && !(await readJournal(join(dir, 'j0.jsonl'))).some((e) => e.op === 'boot-markBad'); i++) await new Promise((r) => setTimeout(r, 50));
    const second = runDriver(driver, ['--config', cfgPath, '--board', boardDir, '--journal', join(dir, 'j1.jsonl')]);
    const runs = await Promise.all([first, second]);
    const writers: number[] = [];
    for (const i of [0, 1]) if ((await readJournal(join(dir, `j${i}.jsonl`))).some((e) => e.op === 'slot-write')) writers.push(i);
    t.equal(writers.length, 1, `exactly one daemon wrote the slot (writers: ${JSON.stringify(writers)}; exit codes ${runs.map((r) => r.code).join(',')}; stderr ${runs.map((r) => r.stderr.split('\n').find((l) => /driver:/.test(l)) ?? '').join(' | ')})`);
    const loser = runs.find((_, i) => !writers.includes(i));
    t.match(loser?.stderr ?? '', /DAEMON_[A-Z_]*LOCK/, 'the other refused with a lock code');
    const rec = await new FileStateStore({ stateDir: join(dir, 'state'), now: Date.now }).load();
    t.ok(rec.history.length <= 1, `one attempt recorded (history ${rec.history.length})`);
    const pc = await powerCycle(boardDir);
    t.ok(pc.booted, 'the device boots');
  });
});

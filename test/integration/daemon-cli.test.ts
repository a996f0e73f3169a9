/**
 * The device commands as a user runs them: `check`, `update --once`, `status`, `history`,
 * `mark-good`, `rollback`, `install SOURCE`, against an emulated board and a repository directory.
 * The configured reboot command only records the request; the test power-cycles the board, as the
 * machine would after the reboot.
 */
import t from 'tap';
import { writeFile, readFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Writable } from 'node:stream';
import { createBoard, powerCycle, boardStatus, makeTestImage } from '../../hal/board.js';
import { initRepo, addRelease } from '../../manifests/repo.js';
import type { Command } from '../../daemon/commands/command.js';

const execFileP = promisify(execFile);
const CLI = fileURLToPath(new URL('../../daemon/cli.ts', import.meta.url));
const SLOT_SIZE = 256 * 1024;

async function run(name: string, argv: string[]): Promise<{ code: number; out: string }> {
  const { command } = (await import(`../../daemon/commands/${name}.js`)) as { command: Command };
  let out = '';
  const stdout = new Writable({ write(c, _e, cb) { out += String(c); cb(); } });
  const stderr = new Writable({ write(_c, _e, cb) { cb(); } });
  const code = await command.run(argv, { stdout, stderr, env: {} });
  return { code, out };
}

t.test('check, update --once across a reboot, status, history, mark-good, rollback, install', async (t) => {
  const dir = t.testdir();
  const boardDir = join(dir, 'board');
  const board = await createBoard(boardDir, { backend: 'emulated', slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const publish = async (version: string, sv: number) => {
    const image = join(dir, `${version}.img`);
    await writeFile(image, makeTestImage({ version, size: 100 * 1024 }));
    await addRelease(repo, { image, version, securityVersion: sv, hardware: ['acme,board'], channel: 'stable', compression: 'gzip', chunkSize: 16 * 1024 });
  };
  const rebootLog = join(dir, 'reboots');
  const cfgPath = join(dir, 'config.json');
  await writeFile(cfgPath, JSON.stringify({
    deviceId: 'dev-cli',
    hardware: 'acme,board',
    stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'dir', path: join(repo, 'repository') }] },
    board: { slots: { A: { path: board.slots.A, size: SLOT_SIZE }, B: { path: board.slots.B, size: SLOT_SIZE } }, boot: board.bootConfig, tries: 2 },
    reboot: { command: [process.execPath, '-e', `require('fs').appendFileSync(${JSON.stringify(rebootLog)}, 'reboot\\n')`] },
    log: { level: 'warn' },
  }));
  const c = ['--config', cfgPath, '--json'];
  const reboots = async () => (await readFile(rebootLog, 'utf8').catch(() => '')).split('\n').filter(Boolean).length;

  let r = await run('check', c);
  t.equal(r.code, 4, 'nothing to install yet');
  t.match(JSON.parse(r.out), { available: false, reason: /MANIFEST_NO_RELEASE/ });

  await publish('1.1.0', 1);
  r = await run('check', c);
  t.equal(r.code, 0);
  t.match(JSON.parse(r.out), { available: true, version: '1.1.0', securityVersion: 1 });

  r = await run('update', ['--once', ...c]);
  t.equal(r.code, 0);
  t.match(JSON.parse(r.out), { phase: 'rebooting', rebooted: true, finished: [] });
  t.equal(await reboots(), 1, 'the configured reboot command ran');
  await powerCycle(boardDir);

  r = await run('status', c);
  t.match(JSON.parse(r.out), { phase: 'rebooting', bootedSlot: 'B', attempt: { version: '1.1.0', source: 'A', target: 'B' } });

  r = await run('update', ['--once', '--no-check', ...c]);
  t.equal(r.code, 0);
  t.match(JSON.parse(r.out), { phase: 'idle', finished: [{ outcome: 'succeeded', release: { version: '1.1.0' } }] });

  r = await run('history', c);
  t.match(JSON.parse(r.out), [{ outcome: 'succeeded', source: 'A', target: 'B' }]);
  r = await run('history', ['--config', cfgPath]);
  t.match(r.out, /#1 .* succeeded 1\.1\.0/);
  r = await run('status', ['--config', cfgPath]);
  t.match(r.out, /booted slot B; phase idle; committed securityVersion 1/);
  t.match(r.out, /slot B \(booted\): good, primary; 1\.1\.0/);

  r = await run('mark-good', c);
  t.match(JSON.parse(r.out), { bootedSlot: 'B', finished: [] });
  await t.rejects(run('rollback', c), { code: 'DAEMON_NOTHING_TO_ROLL_BACK' });
  await t.rejects(run('update', c), { code: 'DAEMON_USAGE' }, '--once is required');
  await t.rejects(run('status', ['--config', cfgPath, '--bogus']), { code: 'DAEMON_USAGE' });

  // install from the repository directory given on the command line, then an operator rollback
  await publish('1.2.0', 2);
  r = await run('install', [join(repo, 'repository'), ...c]);
  t.match(JSON.parse(r.out), { phase: 'rebooting', rebooted: true });
  await powerCycle(boardDir);
  t.equal((await boardStatus(boardDir)).booted, 'A', 'trial of 1.2.0 in slot A');
  r = await run('rollback', ['--reason', 'operator saw a problem', ...c]);
  t.match(JSON.parse(r.out), { phase: 'rollingBack', rebooted: true });
  await powerCycle(boardDir);
  t.equal((await boardStatus(boardDir)).booted, 'B', 'back on 1.1.0');
  r = await run('update', ['--once', '--no-check', ...c]);
  t.equal(r.code, 3, 'a rolled-back attempt exits 3');
  t.match(JSON.parse(r.out), { finished: [{ outcome: 'rolledBack', reason: { code: 'DAEMON_ROLLBACK_REQUESTED', message: 'operator saw a problem' } }] });
  t.equal(await reboots(), 3);

  // mark-good during a trial commits without health checks
  await publish('1.3.0', 3);
  r = await run('update', ['--once', ...c]);
  t.match(JSON.parse(r.out), { rebooted: true });
  await powerCycle(boardDir);
  r = await run('mark-good', c);
  t.match(JSON.parse(r.out), { phase: 'idle', finished: [{ outcome: 'succeeded', release: { version: '1.3.0' } }] });
  r = await run('status', c);
  t.match(JSON.parse(r.out), { bootedSlot: 'A', committedSecurityVersion: 3, phase: 'idle' });
});

t.test('every command has --help; the CLI entry reports config errors', async (t) => {
  for (const name of ['daemon', 'update', 'status', 'history', 'check', 'mark-good', 'rollback', 'install']) {
    const { command } = (await import(`../../daemon/commands/${name}.js`)) as { command: Command };
    t.match(command.help, new RegExp(`^usage: slotflip ${name} `), `${name} help`);
    t.match(command.help, /--config FILE/);
  }
  // through the real entry, as a separate process (transpile only: the type check ran already)
  const env = { ...process.env, TS_NODE_TRANSPILE_ONLY: '1' };
  const err = await execFileP(process.execPath, [...process.execArgv, CLI, 'status', '--config', '/nonexistent/config.json'], { env }).catch((e: { code: number; stderr: string }) => e);
  t.match(err, { code: 1, stderr: /DAEMON_CONFIG_READ/ });
});

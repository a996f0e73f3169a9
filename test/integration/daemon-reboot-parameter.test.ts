/**
 * Issue 22, sequence 7: the rpi-tryboot trial reboot under slotflip.service's sandbox. `systemctl
 * reboot "0 tryboot"` writes /run/systemd/reboot-param from the calling process, read-only in the
 * sandbox, so every trial reboot failed. With the default `systemctl reboot` command the daemon now
 * asks logind to store the parameter (`busctl call ... SetRebootParameter s "0 tryboot"`), then runs
 * `systemctl reboot` unchanged. Real processes: `busctl` and `systemctl` are recorder scripts that
 * log their argv (one JSON line each) and fail on demand.
 */
import t from 'tap';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { createBoard } from '../../hal/board.js';
import type { BootControl } from '../../hal/boot-control.js';
import { execTool, type ToolRunner } from '../../hal/exec.js';
import { codeOf } from '../../hal/errors.js';
import { resolveConfig, type Config } from '../../daemon/config.js';
import { createAgent, rebootParameterMode } from '../../daemon/compose.js';
import { FileStateStore } from '../../daemon/state-store.js';

const SLOT_SIZE = 64 * 1024;

async function setup(dir: string, reboot?: Config['reboot']): Promise<Config> {
  const board = await createBoard(join(dir, 'board'), { backend: 'emulated', slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
  await writeFile(join(dir, 'root.json'), '{}');
  return resolveConfig({
    deviceId: 'pi-1',
    hardware: 'acme,board',
    stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(dir, 'root.json'), sources: [{ type: 'dir', path: join(dir, 'repo') }] },
    board: { slots: { A: { path: board.slots.A, size: SLOT_SIZE }, B: { path: board.slots.B, size: SLOT_SIZE } }, boot: board.bootConfig, tries: 1 },
    health: { deadlineSeconds: 5, checks: [] },
    ...(reboot ? { reboot } : {}),
  });
}

/** Recorder scripts for busctl and systemctl in DIR/bin; `fail` makes one exit 1. */
async function recorders(dir: string, fail?: 'busctl'): Promise<{ runner: ToolRunner; calls: () => Promise<string[][]> }> {
  const bin = join(dir, 'bin');
  const log = join(dir, 'calls.jsonl');
  await mkdir(bin, { recursive: true });
  for (const tool of ['busctl', 'systemctl']) {
    const src = `#!${process.execPath}\nrequire('fs').appendFileSync(${JSON.stringify(log)}, JSON.stringify([${JSON.stringify(tool)}, ...process.argv.slice(2)]) + '\\n');\nprocess.exit(${fail === tool ? 1 : 0});\n`;
    await writeFile(join(bin, tool), src);
    await chmod(join(bin, tool), 0o755);
  }
  // the composition runs tools by name; resolve them to the recorders (real exec, argv arrays)
  const runner: ToolRunner = { run: (cmd, args, o) => execTool.run(join(bin, basename(cmd)), args, o) };
  const calls = async (): Promise<string[][]> => (await readFile(log, 'utf8').catch(() => '')).split('\n').filter(Boolean).map((l) => JSON.parse(l) as string[]);
  return { runner, calls };
}

function trialBackend(arg: string | undefined): BootControl & { rebootArgument(): Promise<string | undefined> } {
  return {
    backend: 'fake',
    bootedSlot: async () => 'A',
    slotState: async (s) => (s === 'B' ? { state: 'trial', triesLeft: 1, primary: true } : { state: 'good', primary: false }),
    markBad: async () => undefined,
    armTrial: async () => undefined,
    commit: async () => undefined,
    rebootArgument: async () => arg,
  };
}

async function pendingReboot(config: Config): Promise<void> {
  await mkdir(config.stateDir, { recursive: true, mode: 0o700 });
  const store = new FileStateStore({ stateDir: config.stateDir, now: Date.now });
  const rec = await store.load();
  const release = { targetName: 'r/1.1.0', length: 1, hashes: { sha256: 'aa'.repeat(32) }, custom: { slotflip: 1, hardware: ['acme,board'], version: '1.1.0', securityVersion: 1, channel: 'stable', payload: { compression: 'none', size: 1, sha256: 'bb'.repeat(32), chunkSize: 1, chunks: [] } } } as never;
  await store.save({ ...rec, phase: 'rebooting', attempts: 1, attempt: { number: 1, release, ref: { id: 'r@bb', targetName: 'r/1.1.0', version: '1.1.0', securityVersion: 1 }, source: 'A', target: 'B', startedAt: 0 } });
}

const noReleases = { releases: async () => [] };
const SET_PARAM = ['busctl', 'call', 'org.freedesktop.login1', '/org/freedesktop/login1', 'org.freedesktop.login1.Manager', 'SetRebootParameter', 's', '0 tryboot'];

t.test('default systemctl reboot: logind stores "0 tryboot", then a plain systemctl reboot', async (t) => {
  const dir = t.testdir();
  const config = await setup(dir);
  t.equal(rebootParameterMode(config.reboot), 'logind');
  const rec = await recorders(dir);
  await pendingReboot(config);
  const agent = await createAgent(config, { releases: noReleases, outbox: null, bootControl: trialBackend('0 tryboot'), runner: rec.runner });
  const r = await agent.runOnce({ check: false });
  t.equal(r.rebooted, true);
  t.same(await rec.calls(), [SET_PARAM, ['systemctl', 'reboot']], 'parameter through logind first, then systemctl without it (it would write /run/systemd itself)');
});

t.test('logind refuses the parameter: no reboot at all (a plain one would not start the trial)', async (t) => {
  const dir = t.testdir();
  const config = await setup(dir);
  const rec = await recorders(dir, 'busctl');
  await pendingReboot(config);
  const agent = await createAgent(config, { releases: noReleases, outbox: null, bootControl: trialBackend('0 tryboot'), runner: rec.runner });
  const r = await agent.runOnce({ check: false }).then((x) => x, (e: unknown) => e);
  t.same(await rec.calls(), [SET_PARAM], 'systemctl reboot never ran');
  // how the machine retries a failed reboot is the state machine's business; here: it did not reboot
  if (r instanceof Error) t.equal(codeOf(r, ''), 'DAEMON_REBOOT_FAILED');
  else t.equal((r as { rebooted: boolean }).rebooted, false, 'not reported as rebooted');
});

t.test('no argument (a rollback, or any other backend): just the command', async (t) => {
  const dir = t.testdir();
  const config = await setup(dir);
  const rec = await recorders(dir);
  await pendingReboot(config);
  const agent = await createAgent(config, { releases: noReleases, outbox: null, bootControl: trialBackend(undefined), runner: rec.runner });
  await agent.runOnce({ check: false });
  t.same(await rec.calls(), [['systemctl', 'reboot']]);
});

t.test('reboot.parameter "append" (or a custom command): the argument is one appended argv element', async (t) => {
  for (const reboot of [{ command: ['systemctl', 'reboot'], parameter: 'append' as const }, { command: ['/usr/local/sbin/board-reboot'] }]) {
    const dir = t.testdir();
    const config = await setup(join(dir, String(reboot.command.length)), reboot);
    t.equal(rebootParameterMode(config.reboot), 'append');
  }
  const dir = t.testdir();
  const config = await setup(dir, { command: ['systemctl', 'reboot'], parameter: 'append' });
  const rec = await recorders(dir);
  await pendingReboot(config);
  const agent = await createAgent(config, { releases: noReleases, outbox: null, bootControl: trialBackend('0 tryboot'), runner: rec.runner });
  await agent.runOnce({ check: false });
  t.same(await rec.calls(), [['systemctl', 'reboot', '0 tryboot']]);
});

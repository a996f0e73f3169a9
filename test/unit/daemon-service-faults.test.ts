/**
 * The long-running service and the composition under faults, in-process on an emulated board:
 * - a cycle that throws (the record cannot be saved: HAL_ATOMIC_WRITE, as on a full disk) does not
 *   end the daemon: it is logged, reported through onCycle and retried after `retryMs`;
 * - a second process's lock in the state directory makes a cycle refuse (DAEMON_LOCKED) until it
 *   is gone; read-only `status` works meanwhile;
 * - the boot backend's reboot argument reaches the injected reboot, and the real `reboot.command`
 *   (a recorder process standing in for `systemctl reboot`) as one appended argv element.
 */
import t from 'tap';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { createBoard } from '../../hal/board.js';
import { SlotflipError } from '../../hal/errors.js';
import type { BootControl } from '../../hal/boot-control.js';
import { resolveConfig, type Config } from '../../daemon/config.js';
import { createAgent } from '../../daemon/compose.js';
import { UpdateService } from '../../daemon/service.js';
import { FileStateStore } from '../../daemon/state-store.js';
import type { MachineState } from '../../daemon/machine.js';
import type { CycleResult } from '../../daemon/agent.js';

const SLOT_SIZE = 64 * 1024;

async function setup(dir: string): Promise<Config> {
  const board = await createBoard(join(dir, 'board'), { backend: 'emulated', slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
  await writeFile(join(dir, 'root.json'), '{}');
  return resolveConfig({
    deviceId: 'svc-1',
    hardware: 'acme,board',
    stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(dir, 'root.json'), sources: [{ type: 'dir', path: join(dir, 'repo') }] },
    board: { slots: { A: { path: board.slots.A, size: SLOT_SIZE }, B: { path: board.slots.B, size: SLOT_SIZE } }, boot: board.bootConfig, tries: 2 },
    health: { deadlineSeconds: 5, checks: [] },
  });
}

const noReleases = { releases: async () => [] };

t.test('a cycle that cannot save its record is retried; the service stays up', async (t) => {
  const dir = t.testdir();
  const config = await setup(dir);
  let full = true;
  const real = new FileStateStore({ stateDir: config.stateDir, now: Date.now });
  const store = {
    load: () => real.load(),
    save: async (s: MachineState) => {
      if (full) throw new SlotflipError('HAL_ATOMIC_WRITE', 'no space left on device', { retryable: true });
      return real.save(s);
    },
  };
  const seen: Array<CycleResult | { error: string }> = [];
  let wake: () => void = () => undefined;
  const svc = new UpdateService({
    config, log: pino({ level: 'silent' }), schedule: false, transport: null, retryMs: 30,
    overrides: { store, releases: noReleases, outbox: null, reboot: async () => undefined },
    onCycle: (r) => { seen.push(r); if ('error' in r) full = false; wake(); },
  });
  await svc.start();
  const until = Date.now() + 10_000;
  while (seen.length < 2 && Date.now() < until) await new Promise<void>((r) => { wake = r; setTimeout(r, 200); });
  await svc.stop();
  t.match(seen[0], { error: /^HAL_ATOMIC_WRITE/ }, 'the first cycle failed with the coded error');
  t.match(seen[1], { phase: 'idle', lastCheck: { result: 'none' } }, 'retried without a trigger, and it worked');
});

t.test('the state lock: a held lock refuses a cycle, status still works; reboot argument wired', async (t) => {
  const dir = t.testdir();
  const config = await setup(dir);
  const agent = await createAgent(config, { releases: noReleases, outbox: null, reboot: async () => undefined });
  // pid 1 is alive: another process holds the lock
  await writeFile(join(config.stateDir, 'lock'), JSON.stringify({ pid: 1, nonce: 'n', at: 0 }));
  await t.rejects(agent.runOnce(), { code: 'DAEMON_LOCKED', message: /process 1/ });
  t.match(await agent.status(), { phase: 'idle', bootedSlot: 'A' }, 'status needs no lock');
  await writeFile(join(config.stateDir, 'lock'), JSON.stringify({ pid: 2 ** 22 + 12345, nonce: 'n', at: 0 })); // no such pid
  t.match(await agent.runOnce(), { phase: 'idle' }, 'a dead holder\'s lock is taken over');

  // the reboot carries the backend's argument (rpi-tryboot: '0 tryboot')
  const args: Array<string | undefined> = [];
  const bc: BootControl & { rebootArgument(): Promise<string | undefined> } = {
    backend: 'fake',
    bootedSlot: async () => 'A',
    slotState: async () => ({ state: 'good', primary: true }),
    markBad: async () => undefined,
    armTrial: async () => undefined,
    commit: async () => undefined,
    rebootArgument: async () => '0 tryboot',
  };
  // drive a reboot through the machine: a pending trial in phase rebooting resumes with a reboot
  const store = new FileStateStore({ stateDir: config.stateDir, now: Date.now });
  const rec = await store.load();
  const release = { targetName: 'r/1.1.0', length: 1, hashes: { sha256: 'aa'.repeat(32) }, custom: { slotflip: 1, hardware: ['acme,board'], version: '1.1.0', securityVersion: 1, channel: 'stable', payload: { compression: 'none', size: 1, sha256: 'bb'.repeat(32), chunkSize: 1, chunks: [] } } } as never;
  await store.save({ ...rec, phase: 'rebooting', attempts: 1, attempt: { number: 1, release, ref: { id: 'r@bb', targetName: 'r/1.1.0', version: '1.1.0', securityVersion: 1 }, source: 'A', target: 'B', startedAt: 0 } });
  const bcTrial = { ...bc, slotState: async (s: 'A' | 'B') => (s === 'B' ? { state: 'trial' as const, triesLeft: 2, primary: true } : { state: 'good' as const, primary: false }) };
  const trialAgent = await createAgent(config, { releases: noReleases, outbox: null, bootControl: bcTrial, reboot: async (arg) => { args.push(arg); } });
  const r = await trialAgent.runOnce({ check: false });
  t.equal(r.rebooted, true);
  t.same(args, ['0 tryboot'], 'the reboot carried the backend\'s argument');
});

t.test('the real reboot command: the backend\'s argument is appended as ONE argv element, no shell', async (t) => {
  const dir = t.testdir();
  const base = await setup(dir);
  const out = join(dir, 'reboot-argv.json');
  // stands in for `systemctl reboot`: records the argv it was started with
  const recorder = "const [out, ...rest] = process.argv.slice(1); require('fs').writeFileSync(out, JSON.stringify(rest))";
  const config: Config = { ...base, reboot: { command: [process.execPath, '-e', recorder, out, 'reboot'] } };
  const bcTrial: BootControl & { rebootArgument(): Promise<string | undefined> } = {
    backend: 'fake',
    bootedSlot: async () => 'A',
    slotState: async (s) => (s === 'B' ? { state: 'trial', triesLeft: 2, primary: true } : { state: 'good', primary: false }),
    markBad: async () => undefined,
    armTrial: async () => undefined,
    commit: async () => undefined,
    rebootArgument: async () => '0 tryboot',
  };
  await mkdir(config.stateDir, { recursive: true, mode: 0o700 });
  const store = new FileStateStore({ stateDir: config.stateDir, now: Date.now });
  const rec = await store.load();
  const release = { targetName: 'r/1.1.0', length: 1, hashes: { sha256: 'aa'.repeat(32) }, custom: { slotflip: 1, hardware: ['acme,board'], version: '1.1.0', securityVersion: 1, channel: 'stable', payload: { compression: 'none', size: 1, sha256: 'bb'.repeat(32), chunkSize: 1, chunks: [] } } } as never;
  await store.save({ ...rec, phase: 'rebooting', attempts: 1, attempt: { number: 1, release, ref: { id: 'r@bb', targetName: 'r/1.1.0', version: '1.1.0', securityVersion: 1 }, source: 'A', target: 'B', startedAt: 0 } });
  const agent = await createAgent(config, { releases: noReleases, outbox: null, bootControl: bcTrial });
  const r = await agent.runOnce({ check: false });
  t.equal(r.rebooted, true, 'the pending trial was rebooted into');
  t.same(JSON.parse(await readFile(out, 'utf8')), ['reboot', '0 tryboot'], 'config.reboot.command ran with the tryboot argument appended as one element');
});

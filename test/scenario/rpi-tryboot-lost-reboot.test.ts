/**
 * Raspberry Pi tryboot: the trial starts only with `reboot "0 tryboot"`, a one-shot flag in the
 * firmware, and nothing on disk says whether a tryboot boot happened. A power cut between arming
 * the trial and the reboot (or a reset before the firmware read the flag) therefore comes back in the
 * committed slot with the trial still armed. Before, the daemon read that as "the trial never
 * confirmed" and rolled back a good release (power-cut harness, seed 44). Now the tryboot reboot is
 * re-issued, a bounded number of times (MAX_ONE_SHOT_TRIAL_REBOOTS): a trial kernel that hangs before
 * the daemon runs looks the same, and must still roll back.
 *
 * Real agent, runner and machine; the emulated Pi firmware (hal/board.ts) reads autoboot.txt as the
 * documented firmware does; the rpi-tryboot backend writes it.
 */
import t from 'tap';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createBoard, powerCycle, boardStatus, makeTestImage } from '../../hal/board.js';
import { createBootControl } from '../../hal/registry.js';
import { createSlotWriter } from '../../hal/file-slot.js';
import { initRepo, addRelease } from '../../manifests/repo.js';
import { TrustClient, dirSource } from '../../manifests/client.js';
import { resolveConfig } from '../../daemon/config.js';
import { sourceFor } from '../../daemon/compose.js';
import { installPayload } from '../../daemon/install/index.js';
import { Agent, runUpdateCycle, verifySlotImage } from '../../daemon/agent.js';
import { FileStateStore } from '../../daemon/state-store.js';
import { silentLogger } from '../../daemon/logger.js';
import { MAX_ONE_SHOT_TRIAL_REBOOTS } from '../../daemon/machine.js';

const SLOT_SIZE = 128 * 1024;

/** An rpi-tryboot device with release 1.1.0 published; `reboot` decides what each reboot request does. */
async function device(dir: string, opts: { boots: boolean }) {
  const boardDir = join(dir, 'board');
  const board = await createBoard(boardDir, { backend: 'rpi-tryboot', slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const image = join(dir, 'image.img');
  await writeFile(image, makeTestImage({ version: '1.1.0', size: 40 * 1024, ...(opts.boots ? {} : { boots: false }) }));
  await addRelease(repo, { image, version: '1.1.0', securityVersion: 1, hardware: ['acme,pi'], channel: 'stable', compression: 'gzip', chunkSize: 8 * 1024 });
  const config = await resolveConfig({
    deviceId: 'pi-1', hardware: 'acme,pi', stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'dir', path: join(repo, 'repository') }] },
    board: { slots: { A: { path: board.slots.A, size: SLOT_SIZE }, B: { path: board.slots.B, size: SLOT_SIZE } }, boot: board.bootConfig, tries: 1 },
  });
  await mkdir(config.stateDir, { recursive: true });
  await mkdir(join(dir, 'trusted'), { recursive: true });
  const boot = { id: 1 };
  const src = sourceFor(config.trust.sources[0]!, config);
  const control = createBootControl(config.board.boot) as ReturnType<typeof createBootControl> & { rebootArgument(): Promise<string | undefined> };
  const agent = (reboot: (arg: string | undefined) => Promise<void>) => {
    const trust = new TrustClient({ trustedDir: join(dir, 'trusted'), shippedRootPath: config.trust.shippedRoot, source: dirSource(join(repo, 'repository', 'metadata')), now: Date.now });
    return new Agent({
      identity: { deviceId: config.deviceId, hardware: config.hardware, channel: config.channel },
      bootControl: control,
      slots: { A: createSlotWriter('A', config.board.slots.A), B: createSlotWriter('B', config.board.slots.B) },
      releases: { releases: async () => (await trust.refresh()).releases },
      installer: {
        write: async (release, slot) => { await installPayload({ payload: release.custom.payload, source: src.payload(release), slot, resumeStatePath: join(dir, 'state', 'resume.json'), length: release.length }); },
        verify: (release, slot) => verifySlotImage(slot, release.custom.payload),
      },
      health: { run: async () => ({ ok: true, failures: [] }) },
      store: new FileStateStore({ stateDir: config.stateDir, now: Date.now }),
      reboot: async () => { boot.id++; await reboot(await control.rebootArgument()); },
      now: Date.now,
      log: silentLogger(),
      tries: 1,
      bootId: async () => `0000000${boot.id}-0000-4000-8000-000000000000`,
    });
  };
  const trybootBoots = async () => (await readFile(join(boardDir, 'boot.log'), 'utf8')).split('\n').filter((l) => l.includes('"slot":"B"')).length;
  return { boardDir, agent, trybootBoots };
}

t.test('a power cut before the tryboot reboot: the reboot is issued again and the good release commits', async (t) => {
  const d = await device(t.testdir(), { boots: true });
  let cuts = 1;
  const reboot = async (arg: string | undefined) => {
    // the first reboot request never happens: the power fails first, the next power-on is normal
    if (cuts-- > 0) await powerCycle(d.boardDir);
    else await powerCycle(d.boardDir, { rebootArgument: arg ?? '' });
  };
  const r = await runUpdateCycle(() => d.agent(reboot));
  t.match(r.finished, [{ outcome: 'succeeded', release: { version: '1.1.0' } }], 'not rolled back: the lost tryboot reboot was re-issued');
  t.equal((await boardStatus(d.boardDir)).booted, 'B', 'the Pi runs 1.1.0 from B');
  t.equal(await d.trybootBoots(), 1, 'B was booted once, by the re-issued tryboot reboot');
});

t.test('a trial kernel that never comes up still rolls back after a bounded number of tryboot boots', async (t) => {
  const d = await device(t.testdir(), { boots: false });
  const r = await runUpdateCycle(() => d.agent((arg) => powerCycle(d.boardDir, { rebootArgument: arg ?? '' }).then(() => undefined)), { maxReboots: 8 });
  t.match(r.finished, [{ outcome: 'rolledBack', release: { version: '1.1.0' }, reason: { code: 'DAEMON_TRIAL_NOT_CONFIRMED' } }], 'rolled back');
  t.equal((await boardStatus(d.boardDir)).booted, 'A', 'the Pi runs the committed 1.0.0');
  t.equal(await d.trybootBoots(), MAX_ONE_SHOT_TRIAL_REBOOTS, `the hanging trial got exactly ${MAX_ONE_SHOT_TRIAL_REBOOTS} tryboot boots, never a loop`);
});

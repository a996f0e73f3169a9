/**
 * An emulated device for scenario tests that drive the REAL agent, runner and machine through
 * reboots: an emulated board (hal/board.ts: each bootloader's selection logic, the real backends on
 * the OS side), a signed repository with release 1.1.0, and an `agent(reboot)` factory whose reboot
 * the test scripts (a real power-cycle, a reboot the bootloader ignores, a power cut first ...).
 *
 * The kernel boot id is the test's: `boot.id` changes only when the test's reboot says the machine
 * really rebooted (the host's boot id never changes under an emulated power-cycle).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createBoard, makeTestImage, type BoardBackend } from '../../hal/board.js';
import { createBootControl } from '../../hal/registry.js';
import { createSlotWriter } from '../../hal/file-slot.js';
import { initRepo, addRelease } from '../../manifests/repo.js';
import { TrustClient, dirSource } from '../../manifests/client.js';
import { resolveConfig, type Config } from '../../daemon/config.js';
import { sourceFor } from '../../daemon/compose.js';
import { installPayload } from '../../daemon/install/index.js';
import { IndexResolver, indexCacheDir } from '../../daemon/install/index-file.js';
import { Agent } from '../../daemon/agent.js';
import { verifySlotImage } from '../../daemon/install/read-back.js';
import { FileStateStore } from '../../daemon/state-store.js';
import { silentLogger } from '../../daemon/logger.js';

export const AGENT_DEVICE_SLOT_SIZE = 128 * 1024;

export interface AgentDevice {
  config: Config;
  boardDir: string;
  /** the kernel's boot id: changes only when the test says the machine really rebooted. */
  boot: { id: number };
  /** events the agent appended to its outbox. */
  events: { type: string; [k: string]: unknown }[];
  /** a fresh agent (as after a daemon start); `reboot` gets the backend's reboot argument, if any. */
  agent: (reboot: (rebootArgument?: string) => Promise<void>) => Agent;
}

export interface AgentDeviceOptions {
  convention?: string;
  /** false: release 1.1.0's kernel never comes up. */
  boots?: boolean;
  /** trial boots armed (config board.tries), default 3. */
  tries?: number;
}

export async function agentDevice(dir: string, backend: BoardBackend, opts: AgentDeviceOptions = {}): Promise<AgentDevice> {
  const boardDir = join(dir, 'board');
  const board = await createBoard(boardDir, { backend, slotSize: AGENT_DEVICE_SLOT_SIZE, factoryVersion: '1.0.0', ...(opts.convention ? { convention: opts.convention } : {}) });
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const image = join(dir, 'image.img');
  await writeFile(image, makeTestImage({ version: '1.1.0', size: 40 * 1024, ...(opts.boots === false ? { boots: false } : {}) }));
  await addRelease(repo, { image, version: '1.1.0', securityVersion: 1, hardware: ['acme,board'], channel: 'stable', compression: 'gzip', chunkSize: 8 * 1024 });
  const tries = opts.tries ?? 3;
  const config = await resolveConfig({
    deviceId: 'dev-1', hardware: 'acme,board', stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'dir', path: join(repo, 'repository') }] },
    board: { slots: { A: { path: board.slots.A, size: AGENT_DEVICE_SLOT_SIZE }, B: { path: board.slots.B, size: AGENT_DEVICE_SLOT_SIZE } }, boot: board.bootConfig, tries },
  });
  await mkdir(config.stateDir, { recursive: true });
  await mkdir(join(dir, 'trusted'), { recursive: true });
  const boot = { id: 1 };
  const events: AgentDevice['events'] = [];
  const src = sourceFor(config.trust.sources[0]!, config);
  const index = new IndexResolver({ locate: (target) => src.payload(target), cacheDir: indexCacheDir(config.stateDir) });
  const agent = (reboot: (rebootArgument?: string) => Promise<void>) => {
    const trust = new TrustClient({ trustedDir: join(dir, 'trusted'), shippedRootPath: config.trust.shippedRoot, source: dirSource(join(repo, 'repository', 'metadata')), now: Date.now });
    const control = createBootControl(config.board.boot) as ReturnType<typeof createBootControl> & { rebootArgument?: () => Promise<string | undefined> };
    return new Agent({
      identity: { deviceId: config.deviceId, hardware: config.hardware, channel: config.channel },
      bootControl: control,
      slots: { A: createSlotWriter('A', config.board.slots.A), B: createSlotWriter('B', config.board.slots.B) },
      releases: { releases: async () => (await trust.refresh()).releases },
      installer: {
        write: async (release, slot) => { await installPayload({ payload: await index.payloadOf(release), source: src.payload(release), slot, resumeStatePath: join(dir, 'state', 'resume.json'), length: release.length }); },
        verify: async (release, slot) => verifySlotImage(slot, await index.payloadOf(release)),
      },
      health: { run: async () => ({ ok: true, failures: [] }) },
      store: new FileStateStore({ stateDir: config.stateDir, now: Date.now }),
      outbox: { append: async (e) => { events.push(e); } },
      reboot: async () => reboot(control.rebootArgument ? await control.rebootArgument() : undefined),
      now: Date.now,
      log: silentLogger(),
      tries,
      bootId: async () => `0000000${boot.id}-0000-4000-8000-000000000000`,
    });
  };
  return { config, boardDir, boot, events, agent };
}

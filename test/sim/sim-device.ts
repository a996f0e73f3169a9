/**
 * One lightweight emulated device for the fleet simulator and the fleet integration tests: the REAL
 * device logic — `createAgent` (compose.ts: TUF trust client over retained MQTT metadata, the
 * streaming installer over HTTP, the file-backed state record, the pure machine and its runner), the
 * real `MqttTransport` with its persisted `Outbox` — on an emulated board (hal/board.ts: emulated
 * boot backend, two small file slots, `powerCycle` as the reboot). Health is the booted test image's
 * own `healthy` flag, as `slotflip board probe --health` reports it.
 *
 * What the daemon process would add and this leaves out: the poll schedule (devices here check when
 * new metadata arrives and on `cmd/check`), sd_notify, and a real process restart per reboot (a new
 * Agent is built after each power cycle, as `runUpdateCycle` does; the broker connection stays up).
 *
 * Thundering herd: a device that sees a new `timestamp.json` waits a uniform random delay in
 * [0, jitterMs) before checking, so a publish does not make the whole fleet hit the HTTP server in
 * the same second. `cmd/check` checks at once (an operator asked).
 */
import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { boardStatus, createBoard, loadBoard, powerCycle, type BoardDescription } from '../../hal/board.js';
import type { Agent, AgentStatus, HealthRunner } from '../../daemon/agent.js';
import { createAgent, type ComposeOverrides } from '../../daemon/compose.js';
import type { Config } from '../../daemon/config.js';
import { MqttTransport, brokerConfigDefaults, type BrokerConfig } from '../../daemon/mqtt.js';
import { Outbox } from '../../daemon/outbox.js';
import { policiesConfigDefaults } from '../../daemon/policies.js';
import { toErrorInfo } from '../../daemon/runner.js';

export interface SimEnv {
  brokerUrl: string;
  /** payload base URL for this device (target paths are appended). */
  payloadBaseUrl: (deviceId: string) => string;
  /** root.json shipped in the factory image (trust anchor). */
  shippedRoot: string;
  hardware: string;
  channel: string;
  /** bytes per slot; the factory image is 4 KiB smaller. */
  slotSize: number;
  /** upper bound of the random delay before a metadata-triggered check, ms. */
  jitterMs: number;
  now: () => number;
  random: () => number;
  log: Logger;
  /** factory image version written to slot A. */
  factoryVersion?: string;
  /** trial boots before the bootloader falls back (default 2). */
  tries?: number;
}

export interface SimCounters {
  /** metadata messages the broker delivered to this device. */
  metadataIn: number;
  checks: number;
  cycles: number;
  reboots: number;
  cycleErrors: number;
  /** wall time spent in update cycles that installed something, ms (sum and max). */
  installCycleMs: number;
  maxInstallCycleMs: number;
}

/** The state the device publishes retained: the agent's status plus the running version and a time. */
export type SimState = AgentStatus & { version?: string; at: string };

export class SimDevice {
  readonly counters: SimCounters = { metadataIn: 0, checks: 0, cycles: 0, reboots: 0, cycleErrors: 0, installCycleMs: 0, maxInstallCycleMs: 0 };
  readonly transport: MqttTransport;
  readonly outbox: Outbox;
  /** last state published. */
  state: SimState | undefined;
  private board: BoardDescription | undefined;
  private readonly boardDir: string;
  private readonly stateDir: string;
  private timer: NodeJS.Timeout | undefined;
  private busy: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private factory: { reboots: number; version: string | undefined } | undefined;
  private readonly log: Logger;

  constructor(readonly id: string, readonly dir: string, private readonly env: SimEnv) {
    this.boardDir = join(dir, 'board');
    this.stateDir = join(dir, 'state');
    this.log = env.log.child({ deviceId: id });
    this.outbox = new Outbox({ dir: join(this.stateDir, 'outbox'), now: env.now });
    const config: BrokerConfig = { ...brokerConfigDefaults, urls: [env.brokerUrl], reconnect: { minMs: 500, maxMs: 10_000 } } as BrokerConfig;
    this.transport = new MqttTransport({ config, deviceId: id, outbox: this.outbox, random: env.random, logger: this.log });
    this.transport.on('metadata', (m) => {
      this.counters.metadataIn++;
      // timestamp.json is published last: everything it references is already retained
      if (m.file === 'timestamp.json' && m.bytes !== undefined) this.schedule(Math.floor(env.random() * env.jitterMs));
    });
    this.transport.on('command', () => this.schedule(0));
  }

  /** Creates the board on first use (slot A: factory image, committed), connects, publishes state.
   * Resolves once connected. */
  async start(timeoutMs = 30_000): Promise<void> {
    await mkdir(this.stateDir, { recursive: true });
    const exists = await stat(join(this.boardDir, 'board.json')).then(() => true, () => false);
    this.board = exists
      ? await loadBoard(this.boardDir)
      : await createBoard(this.boardDir, { backend: 'emulated', slotSize: this.env.slotSize, factoryVersion: this.env.factoryVersion ?? '1.0.0', factoryImageSize: this.env.slotSize - 4096, now: this.env.now });
    this.transport.start();
    if (!(await this.transport.probe(timeoutMs))) throw new Error(`sim device ${this.id}: not connected to ${this.env.brokerUrl} within ${timeoutMs} ms`);
    await this.publishState(await this.agent());
  }

  /** Stops checking, waits for a running cycle, disconnects (publishing `offline`). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.busy;
    await this.transport.stop();
  }

  /** Runs a check now (or after the running cycle) and resolves when it is done. */
  checkNow(): Promise<void> {
    this.schedule(0);
    return this.idle();
  }

  /** Resolves when no cycle is running or scheduled. */
  async idle(): Promise<void> {
    while (this.busy || this.timer) {
      if (this.busy) await this.busy;
      else await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** The device's HTTP payload base (for assertions). */
  get payloadBase(): string {
    return this.env.payloadBaseUrl(this.id);
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    if (this.busy) {
      this.again = true;
      return;
    }
    if (this.timer) {
      if (delayMs > 0) return; // a check is already due
      clearTimeout(this.timer);
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.busy = this.cycle().finally(() => {
        this.busy = undefined;
        if (this.again && !this.stopped) {
          this.again = false;
          this.schedule(Math.floor(this.env.random() * Math.min(this.env.jitterMs, 1000)));
        }
      });
    }, delayMs);
  }

  private config(): Config {
    const b = this.board!;
    return {
      deviceId: this.id,
      hardware: this.env.hardware,
      channel: this.env.channel,
      stateDir: this.stateDir,
      trust: { shippedRoot: this.env.shippedRoot, sources: [{ type: 'mqtt' }], payloadBaseUrls: [this.env.payloadBaseUrl(this.id)] },
      board: { slots: { A: { path: b.slots.A, size: b.slotSize }, B: { path: b.slots.B, size: b.slotSize } }, boot: b.bootConfig, tries: this.env.tries ?? 2 },
      health: { deadlineSeconds: 30, checks: [] },
      policies: { ...policiesConfigDefaults },
      poll: { cron: '17 */6 * * *' },
      reboot: { command: ['false'] },
      log: { level: 'warn' },
    };
  }

  private agent(): Promise<Agent> {
    const boardDir = this.boardDir;
    const health: HealthRunner = {
      async run() {
        const st = await boardStatus(boardDir);
        const img = st.booted ? st.images[st.booted] : undefined;
        if (img?.healthy) return { ok: true, failures: [] };
        return { ok: false, failures: [{ name: 'image-health', output: `booted image ${img?.version ?? '?'} reports itself unhealthy`, required: true }] };
      },
    };
    const overrides: ComposeOverrides = {
      now: this.env.now,
      log: this.log,
      metadata: this.transport.metadata,
      outbox: this.outbox,
      health,
      reboot: async () => {
        this.counters.reboots++;
        await powerCycle(boardDir, { now: this.env.now });
      },
    };
    return createAgent(this.config(), overrides);
  }

  /** One update cycle across emulated reboots (like `runUpdateCycle`), publishing state after each boot. */
  private async cycle(): Promise<void> {
    this.counters.cycles++;
    const started = Date.now();
    const reboots = this.counters.reboots;
    try {
      let agent = await this.agent();
      this.counters.checks++;
      let r = await agent.runOnce({ check: true });
      for (let reboots = 0; r.rebooted && reboots < 6; reboots++) {
        await this.publishState(agent);
        agent = await this.agent();
        r = await agent.runOnce({ check: false });
      }
      await this.publishState(agent);
      if (this.counters.reboots > reboots) {
        const ms = Date.now() - started;
        this.counters.installCycleMs += ms;
        this.counters.maxInstallCycleMs = Math.max(this.counters.maxInstallCycleMs, ms);
      }
    } catch (e) {
      this.counters.cycleErrors++;
      this.log.error({ err: toErrorInfo(e) }, 'sim cycle failed');
    }
  }

  private async publishState(agent: Agent): Promise<void> {
    const s = await agent.status();
    let version = s.slots.find((x) => x.booted)?.release?.version;
    if (!version) {
      // no release record for the booted slot: the factory image runs; its header says which (read
      // once per boot, not per publish: hashing both slots for every state would dominate the sim)
      if (this.factory?.reboots !== this.counters.reboots) {
        const st = await boardStatus(this.boardDir);
        this.factory = { reboots: this.counters.reboots, version: st.booted ? st.images[st.booted].version : undefined };
      }
      version = this.factory.version;
    }
    this.state = { ...s, ...(version ? { version } : {}), at: new Date(this.env.now()).toISOString() };
    await this.transport.publishState(this.state);
  }
}

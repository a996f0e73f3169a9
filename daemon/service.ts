/**
 * The long-running daemon (`slotflip daemon`): one update cycle at start (which resumes whatever the
 * record says is in flight, post-boot validation included), then a cycle on every trigger — the poll
 * schedule (node-cron through the Poller, with jitter), a new retained `timestamp.json` on the broker, a `check` command on the
 * device's command topic. Cycles never overlap: a trigger during a cycle queues exactly one more.
 * After every cycle the device's state (status + inventory when given) is published, retained.
 *
 * Trade-off: the MQTT transport is optional and never on the update's critical path: metadata from
 * the broker lands in a map the trust layer reads, events go through the persisted outbox, so a
 * broker that is down delays reports and push-triggers but breaks nothing; the poll schedule and
 * HTTP/dir sources keep working.
 *
 * A cycle that throws (disk full: HAL_ATOMIC_WRITE; another process holds the state lock:
 * DAEMON_LOCKED), or ends with its download interrupted, is logged and retried after `retryMs`
 * (config `retry.delaySeconds`, default 60 s), doubling with every further such cycle in a row up to
 * `retryMaxMs` (`retry.maxDelaySeconds`, default 1 h), with jitter (each wait is drawn from [½, 1] of
 * the doubled delay), so a device whose server keeps failing does not pull the same bytes every
 * minute; the daemon never exits for it. A reboot a
 * policy deferred (maintenance window, update lock) is retried at the policy's `until`, clamped to
 * [retryBounds.minMs, retryBounds.maxMs] (default 10 s – 1 h, so a wall clock that jumps cannot stall
 * it or make it spin); without an `until`, after `retryMs` (no doubling: nothing failed). Nothing
 * about the deferral is kept: after a restart the first cycle asks the policy again and schedules
 * from its answer.
 *
 * The state lock (`<stateDir>/lock`): with `processLock` (what `slotflip daemon` uses) it is taken in
 * `start()` BEFORE the broker is contacted and held until `stop()`, so a second daemon on the same
 * state directory refuses to start (DAEMON_LOCKED naming the holder's pid) instead of running
 * cycles and fighting over the MQTT client id; without it, per cycle (inside `Agent.runOnce`).
 * A lock that cannot be CREATED (a full or read-only state disk: DAEMON_LOCK_FAILED; no live holder)
 * does not stop the daemon: it runs and reports, and each cycle tries to take the lock first.
 * Either way `slotflip status` and other read-only commands work while the daemon runs, and
 * `update --once` beside it refuses with DAEMON_LOCKED.
 *
 * Idle work (`idleWork`: the daemon builds missing delta seed indexes, install/idle-index.ts) runs
 * `idleAfterMs` after a cycle that ended idle, never beside a cycle: a trigger aborts it and the
 * cycle starts only once it has stopped; so does `stop()`.
 *
 * INVARIANTS: at most one cycle runs at a time, and no idle work while one does; `stop()` waits for
 * the running cycle to finish its current effect chain (it is never interrupted mid-write: the
 * record makes that safe anyway).
 */
import type { Logger } from 'pino';
import { Outbox } from './outbox.js';
import { Poller } from './poller.js';
import { collectInventory } from './inventory.js';
import { mkdir } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { MqttTransport, type TimerApi } from './mqtt.js';
import { createAgent, statePaths, type ComposeOverrides } from './compose.js';
import { acquireStateLock, type ReleaseLock } from './state-store.js';
import { configDefaults, type Config } from './config.js';
import type { CycleResult } from './agent.js';
import { toErrorInfo } from './runner.js';
import { isCoded } from '../hal/errors.js';
import { deviceTopics, stateLastResult } from './topics.js';
import { fileProtocolMemory, writeBrokerReport } from './broker-state.js';
import { SlotflipError } from '../hal/errors.js';
import { isoTime } from '../hal/iso-time.js';

export interface ServiceOptions {
  config: Config;
  log: Logger;
  overrides?: ComposeOverrides;
  /** extra fields for the published state (inventory). */
  inventory?: () => Promise<Record<string, unknown>>;
  /** disable the cron schedule (tests trigger cycles themselves). */
  schedule?: boolean;
  /** upper bound of the random delay after each scheduled tick, seconds (default 300), so a fleet
   * sharing one schedule does not hit the server in the same second. */
  jitterSeconds?: number;
  /** called after each cycle (tests, sd-notify STATUS=). */
  onCycle?: (r: CycleResult | { error: string }) => void;
  /** injected MQTT transport factory (tests); default builds one from config.broker. */
  transport?: MqttTransport | null;
  /** when a cycle leaves work pending (download interrupted, a reboot deferred without an `until`)
   * or fails, try again after this long without waiting for the poll schedule; default the config's
   * `retry.delaySeconds` (60 s). Doubles (with jitter) for each further failed or interrupted cycle
   * in a row, up to `retryMaxMs`. */
  retryMs?: number;
  /** cap of the doubled retry delay; default the config's `retry.maxDelaySeconds` (1 h). */
  retryMaxMs?: number;
  /** randomness for the retry jitter (tests); default Math.random. */
  random?: () => number;
  /** hold the state lock from `start()` to `stop()` (the daemon) instead of per cycle. */
  processLock?: boolean;
  /** bounds of the wait for a policy's `until` (default 10 s and 1 h): see `retryDelay`. */
  retryBounds?: RetryBounds;
  /** after the reboot command exited 0, how long to wait for the shutdown to stop the daemon before
   * the reboot step fails with DAEMON_REBOOT_DID_NOT_HAPPEN; default config.reboot.graceSeconds. */
  rebootGraceMs?: number;
  /** timers for the retry (tests inject a fake); default the global ones. */
  timers?: TimerApi;
  /** called once no cycle has run or been queued for `reclaimAfterMs` (default 2 s): the daemon
   * hands the heap's free pages back to the OS there (daemon/footprint.ts). Not called after stop(). */
  reclaim?: () => void;
  reclaimAfterMs?: number;
  /** low-priority work for when the device is idle (after a cycle that ended in phase idle, once
   * `idleAfterMs` (default 5 s) passed with no cycle): must stop soon after `signal` aborts, which
   * happens before any cycle starts and on stop(). Errors are logged. */
  idleWork?: (signal: AbortSignal) => Promise<unknown>;
  idleAfterMs?: number;
}

export interface RetryBounds {
  minMs: number;
  maxMs: number;
}

export const DEFAULT_RETRY_BOUNDS: RetryBounds = { minMs: 10_000, maxMs: 3_600_000 };

/**
 * How long to wait before retrying a reboot a policy deferred until `until` (ms since epoch): until
 * then, but never less than `minMs` (a window that opens "now", or a clock that jumped forward past
 * it, must not make the daemon spin) nor more than `maxMs` (a clock that jumped backward, or a
 * far-off `until`, is re-evaluated at least that often). Pure.
 */
export function retryDelay(until: number, now: number, bounds: RetryBounds = DEFAULT_RETRY_BOUNDS): number {
  const wait = until - now;
  if (!Number.isFinite(wait)) return bounds.maxMs;
  return Math.min(bounds.maxMs, Math.max(bounds.minMs, Math.ceil(wait)));
}

/**
 * The wait before retrying after `streak` failed (or download-interrupted) cycles in a row: `baseMs`
 * doubled per further failure, capped at `maxMs`, then jittered into [½, 1] of that (`random` in
 * [0, 1)), so a fleet that failed together does not come back together. Streak 0 (nothing failed,
 * e.g. a reboot deferred without an `until`) is `baseMs` exactly. Pure.
 */
export function backoffDelay(streak: number, baseMs: number, maxMs: number, random: number): number {
  if (streak <= 0) return baseMs;
  const d = Math.min(maxMs, baseMs * 2 ** Math.min(streak - 1, 30));
  return Math.max(1, Math.round(d / 2 + (d / 2) * Math.min(Math.max(random, 0), 1)));
}

const defaultTimers: TimerApi = {
  setTimeout: (fn, ms) => {
    const h = setTimeout(fn, ms);
    h.unref();
    return h;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** fleet commands waiting for the running cycle to end, at most. */
const MAX_QUEUED_COMMANDS = 4;
/** how long an accepted reset waits for its report to reach the broker before rebooting. */
const COMMAND_REPORT_WAIT_MS = 10_000;
/** how many refused commands one process remembers so as not to report them twice. */
const MAX_REFUSALS_REMEMBERED = 64;

export class UpdateService {
  private readonly log: Logger;
  /** fleet commands received, judged between cycles. */
  private readonly commands: Uint8Array[] = [];
  /** a command refused as busy, tried again after the next cycle. */
  private busyCommand: Uint8Array | undefined;
  /** refusals already reported by this process (a digest of the command's bytes → the code): a
   * refused command that stays retained on the broker comes again at every reconnect, and is then
   * logged again but not reported again. Bounded: the oldest go first. */
  private readonly refusalsReported = new Map<string, string>();
  /** a fleet command requested a reset in this process: no more cycles until the reboot. */
  private resetRequested = false;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private poller: Poller | undefined;
  private retryTimer: unknown;
  private reclaimTimer: unknown;
  private idleTimer: unknown;
  private idleRun: { abort: AbortController; done: Promise<void> } | undefined;
  /** the phase the last cycle ended in ('failed' when it threw). */
  private lastPhase: string | undefined;
  private readonly timers: TimerApi;
  private readonly now: () => number;
  /** when the scheduled retry is due (ms since epoch), for tests and logs. */
  retryDueAt: number | undefined;
  private markedGood = false;
  private lastPushAt = 0;
  private refreshTimer: unknown;
  /** failed or download-interrupted cycles in a row (the retry backoff's exponent). */
  private failureStreak = 0;
  private releaseLock: ReleaseLock | undefined;
  /** the detail of the failed check last logged at warn (see warnFailedCheck). */
  private warnedCheck: string | undefined;
  /** waits for a shutdown after a reboot command (see awaitShutdown): released by stop(). */
  private readonly shutdownWaiters = new Set<() => void>();
  readonly outbox: Outbox;
  readonly transport: MqttTransport | undefined;
  readonly metadata = new Map<string, Uint8Array>();
  cycles = 0;

  constructor(private readonly o: ServiceOptions) {
    this.log = o.log.child({ module: 'daemon.service' });
    const now = o.overrides?.now ?? Date.now;
    this.now = now;
    this.timers = o.timers ?? defaultTimers;
    this.outbox = new Outbox({ dir: statePaths(o.config.stateDir).outbox, now });
    if (o.transport !== undefined) this.transport = o.transport ?? undefined;
    else if (o.config.broker) {
      this.transport = new MqttTransport({ config: o.config.broker, deviceId: o.config.deviceId, outbox: this.outbox, metadata: this.metadata, logger: o.log, protocolMemory: fileProtocolMemory(o.config.stateDir) });
    }
  }

  /** Takes the process-lifetime lock (with `processLock`; throws DAEMON_LOCKED when another live
   * process holds it), then starts the transport and the schedule, and triggers the first cycle
   * (await `idle()` for it). */
  async start(): Promise<void> {
    if (this.o.processLock) {
      // before the broker: a second daemon must not connect with the same client id at all
      try {
        await mkdir(this.o.config.stateDir, { recursive: true, mode: 0o700 });
        this.releaseLock = await acquireStateLock({ stateDir: this.o.config.stateDir, now: this.now });
      } catch (e) {
        if (isCoded(e, 'DAEMON_LOCKED')) throw e;
        // the lock cannot be created (a full or read-only state disk): no other daemon holds it, so
        // run and report; each cycle tries to take it first and fails (and is retried) until it can
        this.log.error({ err: toErrorInfo(e) }, 'cannot take the state lock; every cycle will try again');
      }
    }
    const t = this.transport;
    if (t) {
      t.on('metadata', (m) => {
        if (m.file === 'timestamp.json') {
          this.lastPushAt = this.now();
          this.trigger('metadata');
        }
      });
      // a reconnect may have missed a release (a cluster node that replicates nothing retained):
      // check, which reads timestamp.json from the repository too
      let connects = 0;
      t.on('connected', () => {
        if (connects++ > 0) this.trigger('connected');
      });
      t.on('report', () => void writeBrokerReport(this.o.config.stateDir, t.brokerReport()).catch(() => undefined));
      this.scheduleHttpRefresh();
      t.on('command', (c) => {
        if (c.name === 'check') this.trigger('command');
        if (c.name === 'factory-reset') {
          // judged between cycles (loop); a flood cannot grow the queue
          if (this.commands.length < MAX_QUEUED_COMMANDS) this.commands.push(c.payload);
          this.trigger('fleet-command');
        }
      });
      t.on('problem', (e) => this.log.warn({ err: e.toJSON() }, 'transport problem'));
      t.start();
    }
    if (this.o.schedule ?? true) {
      this.poller = new Poller({
        cron: this.o.config.poll.cron,
        jitterSeconds: this.o.jitterSeconds ?? 300,
        poll: async () => {
          this.trigger('schedule');
          await this.idle();
        },
        onError: (e) => this.log.warn({ err: toErrorInfo(e) }, 'poll failed'),
      });
      this.poller.start();
    }
    await this.reportAppliedReset().catch((e: unknown) => this.log.warn({ err: toErrorInfo(e) }, 'cannot report the factory reset applied at this boot'));
    this.trigger('start');
  }

  /** Requests a cycle; coalesces with a running one (at most one more runs after it). */
  trigger(reason: string): void {
    if (this.stopped) return;
    if (this.running) {
      // a fleet command waits in `commands` for the loop; it asks for no cycle of its own
      if (reason !== 'fleet-command') this.again = true;
      return;
    }
    this.cancelReclaim();
    // idle work stops (and has stopped) before a cycle begins
    this.running = this.quietIdleWork().then(() => this.loop(reason)).finally(() => {
      this.running = undefined;
      this.scheduleIdleWork();
      this.scheduleReclaim();
    });
  }

  private scheduleIdleWork(): void {
    const work = this.o.idleWork;
    if (!work || this.stopped || this.lastPhase !== 'idle') return;
    if (this.idleTimer !== undefined) this.timers.clearTimeout(this.idleTimer);
    this.idleTimer = this.timers.setTimeout(() => {
      this.idleTimer = undefined;
      if (this.running || this.stopped || this.idleRun) return;
      this.cancelReclaim();
      const abort = new AbortController();
      const done = work(abort.signal)
        .then(() => undefined, (e: unknown) => this.log.warn({ err: toErrorInfo(e) }, 'idle work failed'))
        .finally(() => {
          this.idleRun = undefined;
          this.scheduleReclaim();
        });
      this.idleRun = { abort, done };
    }, this.o.idleAfterMs ?? 5000);
  }

  /** Cancels idle work due and stops the one running; resolves once it has stopped. */
  private async quietIdleWork(): Promise<void> {
    if (this.idleTimer !== undefined) this.timers.clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    const run = this.idleRun;
    if (!run) return;
    run.abort.abort();
    await run.done;
  }

  private scheduleReclaim(): void {
    const reclaim = this.o.reclaim;
    if (!reclaim || this.stopped) return;
    this.cancelReclaim();
    this.reclaimTimer = this.timers.setTimeout(() => {
      this.reclaimTimer = undefined;
      if (!this.running && !this.stopped && !this.idleRun) reclaim();
    }, this.o.reclaimAfterMs ?? 2000);
  }

  private cancelReclaim(): void {
    if (this.reclaimTimer !== undefined) this.timers.clearTimeout(this.reclaimTimer);
    this.reclaimTimer = undefined;
  }

  /** Resolves when no cycle is running or queued. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    // a shutdown after our reboot command: the reboot is happening, the cycle ends without waiting
    for (const release of [...this.shutdownWaiters]) release();
    if (this.retryTimer !== undefined) this.timers.clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.retryDueAt = undefined;
    if (this.refreshTimer !== undefined) this.timers.clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    this.cancelReclaim();
    await this.quietIdleWork();
    await this.poller?.stop();
    await this.idle();
    await this.transport?.stop();
    await this.releaseLock?.();
    this.releaseLock = undefined;
  }

  private async loop(reason: string): Promise<void> {
    // fleet commands run before the cycle, never during one; a command alone runs no cycle (a
    // refused command must change nothing, not even the record a check rewrites)
    let cycleWanted = reason !== 'fleet-command';
    for (;;) {
      this.again = false;
      await this.runFleetCommands();
      if (cycleWanted && !(await this.resetPending(reason))) {
        await this.cycle(reason);
        // a command refused as busy is tried again once a cycle has moved the attempt on
        if (this.busyCommand && this.commands.length === 0) {
          this.commands.push(this.busyCommand);
          this.busyCommand = undefined;
          await this.runFleetCommands();
        }
      }
      if (this.stopped) return;
      if (this.again) {
        cycleWanted = true;
        reason = 'queued';
      } else if (this.commands.length > 0) {
        cycleWanted = false;
        reason = 'fleet-command';
      } else return;
    }
  }

  /**
   * True (and the cycle is skipped) when a factory reset waits for the next boot: an update now
   * would arm a trial whose record the reset then forgets. Requested by a fleet command in this
   * process, or by `slotflip factory-reset` (the marker in the data dir).
   */
  private async resetPending(reason: string): Promise<boolean> {
    let pending = this.resetRequested;
    if (!pending) {
      const { readResetMarker } = await import('./factory-reset.js');
      const { dataOf } = await import('./reset-request.js');
      pending = (await readResetMarker(dataOf(this.o.config).dir).catch(() => undefined)) !== undefined;
    }
    if (pending) this.log.info({ reason }, 'factory reset pending: no update cycle until it is applied at the next boot');
    return pending;
  }

  /** Judges and runs the queued fleet commands (daemon/fleet-command.ts), reporting each verdict. */
  private async runFleetCommands(): Promise<void> {
    while (this.commands.length > 0 && !this.stopped) {
      const bytes = this.commands.shift()!;
      try {
        await this.runFleetCommand(bytes);
      } catch (e) {
        // an I/O failure writing the marker or the replay memory: the retained command comes again
        this.log.error({ err: toErrorInfo(e) }, 'fleet command failed');
      }
    }
  }

  private async runFleetCommand(bytes: Uint8Array): Promise<void> {
    const { runFleetCommand } = await import('./fleet-command.js');
    const { TrustClient, memorySource } = await import('../manifests/client.js');
    const config = this.o.config;
    const trust = new TrustClient({ trustedDir: statePaths(config.stateDir).trusted, shippedRootPath: config.trust.shippedRoot, source: memorySource(new Map()), now: this.now });
    const where = this.transport ? `command on ${deviceTopics(config.deviceId).cmdFactoryReset}` : 'fleet command';
    const r = await runFleetCommand(bytes, { config, now: this.now, where, trust: async () => {
      const c = await trust.currentTrust();
      return { root: c.root.signed, trustedTime: c.trustedTime };
    } });
    if (!r.accepted) {
      if (r.code === 'DAEMON_COMMAND_BUSY') this.busyCommand = bytes;
      const digest = createHash('sha256').update(bytes).digest('hex');
      if (this.refusalsReported.get(digest) === r.code) {
        this.log.debug({ code: r.code, commandId: r.id }, 'fleet command refused again (already reported)');
        return;
      }
      this.refusalsReported.delete(digest);
      this.refusalsReported.set(digest, r.code);
      if (this.refusalsReported.size > MAX_REFUSALS_REMEMBERED) this.refusalsReported.delete(this.refusalsReported.keys().next().value!);
      this.log.warn({ code: r.code, commandId: r.id, problem: r.message }, 'fleet command refused');
      await this.outbox.append({ type: 'FleetCommandRejected', command: 'factory-reset', ...(r.id ? { commandId: r.id } : {}), ...(r.command?.nonce ? { nonce: r.command.nonce } : {}), reason: { code: r.code, message: r.message } });
      return;
    }
    this.resetRequested = true;
    const { command, id } = r;
    this.log.warn({ commandId: id, mode: command.mode, reboot: command.reboot, dataDir: r.marker.dataDir }, 'factory reset requested by a signed fleet command');
    const seq = await this.outbox.append({ type: 'FactoryResetRequested', via: 'fleet', commandId: id, nonce: command.nonce, mode: command.mode, reboot: command.reboot });
    const t = this.transport;
    if (t) {
      // the report first (the reset may wipe the outbox: `as-shipped`), then the retained command
      await this.delivered(t, seq, COMMAND_REPORT_WAIT_MS);
      await t.clearFactoryResetCommand();
    }
    if (!command.reboot) return;
    const [cmd, ...args] = config.reboot.command;
    try {
      const { execTool, runChecked } = await import('../hal/exec.js');
      this.log.warn({ command: config.reboot.command }, 'rebooting to apply the factory reset');
      await runChecked(execTool, 'DAEMON_REBOOT_FAILED', cmd!, args);
      await this.awaitShutdown();
    } catch (e) {
      // the marker stays: the reset is applied at whichever boot comes next
      this.log.error({ err: toErrorInfo(e) }, 'reboot for the factory reset failed; it is applied at the next boot');
    }
  }

  /** Resolves when the outbox entry `seq` was delivered, or after `ms`. */
  private delivered(t: MqttTransport, seq: number, ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        t.off('delivered', onDelivered);
        resolve();
      };
      const onDelivered = (d: { seq: number }): void => {
        if (d.seq >= seq) done();
      };
      const timer = setTimeout(done, ms);
      t.on('delivered', onDelivered);
    });
  }

  /** After a boot that applied a factory reset: report it once (daemon/reset-report.ts). */
  private async reportAppliedReset(): Promise<void> {
    const { reportAppliedReset } = await import('./reset-report.js');
    await reportAppliedReset(this.o.config.stateDir, this.outbox, this.log);
  }

  private async cycle(reason: string): Promise<void> {
    this.cycles++;
    const log = this.log;
    try {
      if (this.o.processLock && !this.releaseLock) this.releaseLock = await acquireStateLock({ stateDir: this.o.config.stateDir, now: this.now });
      const t = this.transport;
      const healthDeps = t ? { brokerProbe: (ms: number) => t.probe(ms), ...this.o.overrides?.healthDeps } : this.o.overrides?.healthDeps;
      const agent = await createAgent(this.o.config, { log: this.o.log, metadata: this.metadata, outbox: this.outbox, awaitShutdown: () => this.awaitShutdown(), ...(t ? { brokerMeta: t } : {}), ...(this.o.processLock ? { lock: null } : {}), ...this.o.overrides, ...(healthDeps ? { healthDeps } : {}) });
      // the booted committed slot is confirmed once per boot (this process lives for one boot):
      // on the first cycle that ends idle (see Agent.markBootedGood)
      // whether the retained metadata had arrived when this cycle's check began (it may arrive
      // while the check fails: see warnFailedCheck)
      const hadMetadata = this.metadata.has('timestamp.json');
      const r = await agent.runOnce({ markGood: !this.markedGood });
      this.lastPhase = r.rebooted ? 'rebooting' : r.phase;
      if (!r.rebooted && r.phase === 'idle') this.markedGood = true;
      log.info({ reason, phase: r.phase, rebooted: r.rebooted, finished: r.finished.map((h) => h.outcome), lastCheck: r.lastCheck?.result }, 'cycle done');
      this.warnFailedCheck(r.lastCheck, reason, hadMetadata);
      this.o.onCycle?.(r);
      // a download that stopped short (server, network, budget) counts as a failure for the backoff
      this.failureStreak = !r.rebooted && r.phase === 'downloading' ? this.failureStreak + 1 : 0;
      if (!r.rebooted && r.phase !== 'idle') this.scheduleRetry(r.retryAt);
      if (this.transport) {
        const status = await agent.status();
        const last = status.lastResult;
        // the last result is published once, at the top level, in the shape fleet watch reads
        // (topics.ts StateLastResult); the inventory no longer carries a second, flat copy
        const inventory = await collectInventory({
          deviceId: status.deviceId,
          hardware: status.hardware,
          bootedSlot: status.bootedSlot,
          slots: Object.fromEntries(status.slots.map((x) => [x.slot, { ...(x.release ? { version: x.release.version } : {}), ...('error' in x.boot ? {} : { boot: x.boot }) }])),
        }, { dataPath: this.o.config.stateDir }).catch(() => ({}));
        const extra = this.o.inventory ? await this.o.inventory().catch(() => ({})) : {};
        // `at`: when this state was true, so a watcher that only sees the retained copy can tell a
        // device that reported a minute ago from one silent for a week
        const broker = this.transport.brokerReport();
        await writeBrokerReport(this.o.config.stateDir, broker).catch(() => undefined);
        await this.transport.publishState({ ...status, at: isoTime(this.now()), ...(last ? { lastResult: stateLastResult(last) } : {}), broker, inventory, ...extra }).catch(() => false);
      }
    } catch (e) {
      // e.g. HAL_ATOMIC_WRITE (disk full: the record cannot be saved) or DAEMON_LOCKED (an
      // `update --once` holds the state lock): the daemon stays up and tries again later
      const err = toErrorInfo(e);
      log.error({ reason, err }, 'cycle failed');
      this.o.onCycle?.({ error: `${err.code}: ${err.message}` });
      this.lastPhase = 'failed';
      this.failureStreak++;
      this.scheduleRetry();
    }
  }

  /** When MQTT has pushed no new timestamp for `broker.httpRefreshSeconds`, a cycle (which reads
   * timestamp.json from the repository as well): MQTT is the fast path, never the only one. */
  private scheduleHttpRefresh(): void {
    const every = (this.o.config.broker?.httpRefreshSeconds ?? 900) * 1000;
    this.refreshTimer = this.timers.setTimeout(() => {
      this.refreshTimer = undefined;
      if (this.stopped) return;
      if (this.now() - this.lastPushAt >= every) this.trigger('http-refresh');
      this.scheduleHttpRefresh();
    }, every);
  }

  /**
   * After `reboot.command` exited 0 the system should go down and stop this process (SIGTERM: stop()
   * releases the wait, the record already says `rebooting`, the next boot resumes). When it is still
   * up after the grace period (a command that only schedules, a shutdown an inhibitor blocked, a
   * wrapper that exits 0 without rebooting), the reboot did not happen: log it at error and fail the
   * step, so the machine retries the reboot with backoff and, when it keeps not happening, disarms
   * the trial and ends the attempt `failed` (README "What a failed step does").
   */
  private awaitShutdown(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    const graceMs = this.o.rebootGraceMs ?? (this.o.config.reboot.graceSeconds ?? configDefaults.reboot.graceSeconds) * 1000;
    return new Promise<void>((resolve, reject) => {
      const release = (): void => {
        this.timers.clearTimeout(timer);
        this.shutdownWaiters.delete(release);
        resolve();
      };
      const timer = this.timers.setTimeout(() => {
        this.shutdownWaiters.delete(release);
        const command = this.o.config.reboot.command;
        const err = new SlotflipError('DAEMON_REBOOT_DID_NOT_HAPPEN', `the reboot command ${JSON.stringify(command)} exited 0 but the system was still up ${Math.round(graceMs / 1000)} s later; the reboot is retried. Check that the command reboots (not only schedules) and that no shutdown inhibitor blocks it (systemd-inhibit --list); reboot.graceSeconds sets the wait`, { retryable: true, details: { command, graceMs } });
        this.log.error({ err: err.toJSON() }, 'reboot did not happen');
        reject(err);
      }, graceMs);
      this.shutdownWaiters.add(release);
    });
  }

  /**
   * A check that failed (metadata unparseable, unverifiable, expired, unreachable) is a `warn` line
   * in the journal, not only in `slotflip status`: once per distinct detail (the `MANIFEST_*` code and
   * message), so a device polling against the same broken repository does not repeat it every cycle.
   * A check that succeeds again re-arms it. The start cycle of an MQTT device usually runs before the
   * broker delivered the retained metadata: that MANIFEST_NOT_FOUND is normal (the arrival triggers
   * the next check) and stays at info; a later one is a warning. Judged by what the cycle began with:
   * the metadata often arrives while that check is failing.
   */
  private warnFailedCheck(check: CycleResult['lastCheck'], reason: string, hadMetadata: boolean): void {
    if (check?.result !== 'failed') {
      if (check) this.warnedCheck = undefined;
      return;
    }
    const detail = check.detail ?? '';
    if (reason === 'start' && this.transport && this.o.config.trust.sources[0]?.type === 'mqtt' && detail.startsWith('MANIFEST_NOT_FOUND:') && !hadMetadata) {
      this.log.info({ detail }, 'check before the retained metadata arrived');
      return;
    }
    if (detail === this.warnedCheck) return;
    this.warnedCheck = detail;
    const code = /^([A-Z][A-Z0-9_]+):/.exec(detail)?.[1];
    this.log.warn({ ...(code ? { code } : {}), detail, at: isoTime(check.at) }, 'check failed');
  }

  /** One more cycle without waiting for the poll schedule: at `at` (a policy's `until`, bounded by
   * `retryDelay`) when given, else after `backoffDelay` of the failure streak. Replaces a retry
   * already due. */
  private scheduleRetry(at?: number): void {
    if (this.stopped) return;
    if (this.retryTimer !== undefined) this.timers.clearTimeout(this.retryTimer);
    const now = this.now();
    const base = this.o.retryMs ?? (this.o.config.retry?.delaySeconds ?? 60) * 1000;
    const cap = this.o.retryMaxMs ?? (this.o.config.retry?.maxDelaySeconds ?? 3600) * 1000;
    const delay = at === undefined ? backoffDelay(this.failureStreak, base, cap, (this.o.random ?? Math.random)()) : retryDelay(at, now, this.o.retryBounds);
    if (at !== undefined) this.log.info({ until: at, delayMs: delay }, 'retry scheduled at a set time (a policy deferral or a failed step)');
    else if (this.failureStreak > 0) this.log.info({ failuresInARow: this.failureStreak, delayMs: delay }, 'retry scheduled');
    this.retryDueAt = now + delay;
    this.retryTimer = this.timers.setTimeout(() => {
      this.retryTimer = undefined;
      this.retryDueAt = undefined;
      this.trigger('retry');
    }, delay);
  }
}

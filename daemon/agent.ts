/**
 * The update agent: builds the executor table over injected collaborators (boot control, slot
 * writers, release finder, installer, health checks, outbox, policies, reboot, clock, store, logger)
 * and drives the pure machine through the runner. One `Agent` per boot: after a reboot a new one is
 * built and `runOnce()` resumes from the saved record and the slot that actually booted.
 *
 * Trade-off: the collaborators are narrow interfaces defined here (what the agent needs, nothing
 * more); the real modules (hal, manifests, install, health, outbox, policies) satisfy them and are
 * wired in one place (`compose.ts` / the CLI), so tests hand in simulations without module mocking.
 *
 * Programmatic use (what `slotflip update --once` and the demo do):
 *
 *   const result = await runUpdateCycle(() => new Agent({...deps}), { maxReboots: 4 });
 *   // result.finished: history entries of attempts that ended (succeeded | rolledBack | failed)
 *
 * where `deps.reboot` power-cycles the emulated board (in production it asks the OS to reboot and
 * the process ends; systemd starts a new daemon, which resumes).
 */
import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import { otherSlot, type BootControl, type SlotBootState, type SlotName } from '../hal/boot-control.js';
import { SlotflipError } from '../hal/errors.js';
import type { SlotWriter } from '../hal/slot-writer.js';
import { selectRelease } from '../manifests/select.js';
import type { Release, ReleaseMigration } from '../manifests/types.js';
import { forgetFailed, releaseIdOf, releaseRefOf, resume, startRefusal, type ArmedTrial, type ErrorInfo, type Event, type HealthFailure, type HistoryEntry, type InstallTransfer, type MachineState, type Phase, type Report, type TransitionOptions } from './machine.js';
import { Runner, toErrorInfo, type DriveResult, type Executors } from './runner.js';
import type { StateStore } from './state-store.js';
import { isoTime } from '../hal/iso-time.js';

/** Fetches and verifies release metadata (TUF). */
export interface ReleaseFinder {
  /** Refreshes trusted metadata and returns every verified slotflip release it lists. Never touches
   * a slot. Throws coded errors (MANIFEST_*), `retryable` for transport problems. */
  releases(): Promise<Release[]>;
}

/** Streams a payload into a slot. */
export interface Installer {
  /** Writes `release`'s image into `slot`, verifying every chunk before it is written. Resumable:
   * calling it again after a crash re-hashes what is on the slot and continues. Not durable until it
   * resolves (it flushes). Throws INSTALL_* errors, `retryable` for network problems. */
  write(release: Release, slot: SlotWriter): Promise<void | InstallTransfer>;
  /** Reads the slot back and checks the whole image's length and SHA-256. Read-only. Throws
   * DAEMON_VERIFY_MISMATCH (or the installer's own code) when it does not match. */
  verify(release: Release, slot: SlotWriter): Promise<void>;
  /** Checks what can be checked without touching the device — the payload is there with the signed
   * length, its first chunk decodes to the signed hash — BEFORE the target is marked bad (it usually
   * holds the previous good release). Throws INSTALL_* errors; never writes. Optional. */
  preflight?(release: Release): Promise<void>;
  /** Drops what was kept for attempts no longer in flight (a format 2 release's cached chunk index),
   * keeping `inFlight`'s. Idempotent; never throws. Called at the end of every cycle. Optional. */
  settle?(inFlight: Release | undefined): Promise<void>;
}

export interface HealthResult {
  ok: boolean;
  /** failing checks (required ones make `ok` false; wanted ones are reported only). */
  failures: HealthFailure[];
}

/** Post-boot health checks. */
export interface HealthRunner {
  /** Runs every configured check within the configured deadline. Never throws for a failing check
   * (that is a result); throws only when the checks could not be run at all. */
  run(): Promise<HealthResult>;
}

/** Where reports go (the persisted outbox). */
export interface EventSink {
  /** Appends durably (at-least-once delivery happens elsewhere). */
  append(event: { type: string; [key: string]: unknown }): Promise<unknown>;
}

export type PolicyDecision = { ok: true } | { ok: false; reason: string; until?: number };

/** Update policies (maintenance windows, update lock, free space). */
export interface UpdatePolicies {
  /** May an attempt at `release` start now (download/install windows, free space)? Read-only. */
  mayStart(release: Release, now: number): Promise<PolicyDecision>;
  /** May the device reboot into the trial now (reboot window, update lock)? Read-only. */
  mayReboot(now: number): Promise<PolicyDecision>;
}

export interface AgentIdentity {
  deviceId: string;
  hardware: string;
  channel: string;
  /** bytes the smaller slot holds, when the config says: a larger image is refused at selection. */
  slotSize?: number;
}

export interface AgentDeps {
  identity: AgentIdentity;
  bootControl: BootControl;
  slots: Record<SlotName, SlotWriter>;
  releases: ReleaseFinder;
  installer: Installer;
  health: HealthRunner;
  store: StateStore;
  /** Reboots the device. In production the process ends soon after; in tests and the demo it
   * power-cycles the emulated board and resolves. */
  reboot: () => Promise<void>;
  now: () => number;
  log: Logger;
  outbox?: EventSink;
  policies?: UpdatePolicies;
  /** trial boots before the bootloader falls back (config board.tries). */
  tries?: number;
  machine?: TransitionOptions;
  /** Takes the device's exclusive update lock (compose: `<stateDir>/lock`); resolves to its release.
   * Throws DAEMON_LOCKED when another process holds it. Every mutating entry point (`runOnce`,
   * `markGood`, `rollback`) holds it while it runs; read-only ones (`status`, `check`, `history`)
   * never take it. Absent: no locking (tests with a single in-memory agent). */
  lock?: () => Promise<() => Promise<void>>;
  /** The kernel's boot id (changes on every boot, never within one); undefined when unreadable.
   * Default: reads /proc/sys/kernel/random/boot_id. Recorded when a trial is armed, so the next
   * start can tell a real reboot from a daemon restart (see machine.ts `bootloaderIgnoredTrial`). */
  bootId?: () => Promise<string | undefined>;
  /** Whether this board's bootloader visibly consumes a try of an armed trial on each boot attempt.
   * Default: per backend name (`TRIES_VISIBLE`); an unknown backend counts as not visible. */
  triesVisible?: boolean;
  /** An operator's request to try failed releases again (`slotflip check --retry` leaves it in the
   * state directory, since a running daemon holds the lock): taken, applied (`forgetFailed`) and
   * cleared at the start of the next cycle. Absent: no such requests. */
  retryRequest?: { pending(): Promise<boolean>; clear(): Promise<void> };
  /** A data migration (daemon/migration.ts): the release's own (`custom.migration`, passed as
   * `named`) or the config's. `beforeChecks` runs on the trial's boot before its
   * health checks (a returned failure fails them); `settle` runs after each cycle and restores or
   * drops the snapshot of an attempt that ended. Both idempotent. Absent: no migration. */
  migration?: {
    beforeChecks(attempt: number, releaseId: string, slot: SlotName, named?: ReleaseMigration): Promise<HealthFailure | undefined>;
    settle(bootedSlot: SlotName, history: HistoryEntry[]): Promise<unknown>;
  };
}

/**
 * Per boot backend (BootControl.backend): does every boot attempt of an armed trial change what
 * `slotState(target)` reads? Only then can "the trial is exactly as armed after a real reboot" mean
 * "the bootloader never read the environment".
 * - uboot: RAUC's script counts BOOT_x_LEFT down, Mender's bootcount counts up (saved before booting);
 * - grub: RAUC's grub.cfg sets x_TRY=1, greenboot counts boot_counter down (save_env);
 * - systemd-boot: renames the entry `+N` → `+(N-1)-1` before booting it;
 * - emulated: the board model counts triesLeft down;
 * - rpi-tryboot: the tryboot flag is one-shot in the firmware, nothing on disk changes: never;
 * - custom: the protocol says nothing about counting: never.
 */
export const TRIES_VISIBLE: Readonly<Record<string, boolean>> = {
  uboot: true,
  grub: true,
  'systemd-boot': true,
  emulated: true,
  'rpi-tryboot': false,
  custom: false,
};

/** phases of an attempt before its trial is armed (the arm itself included: its target is checked). */
const BEFORE_TRIAL: ReadonlySet<Phase> = new Set<Phase>(['checking', 'preparing', 'downloading', 'verifying', 'arming']);
const BOOT_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Reads the kernel's boot id; undefined when missing or not a UUID. Never throws. */
async function procBootId(): Promise<string | undefined> {
  try {
    const id = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
    return BOOT_ID_RE.test(id) ? id : undefined;
  } catch {
    return undefined;
  }
}

export interface CycleResult {
  /** phase when this run stopped ('idle' unless a reboot is pending or a retry is due). */
  phase: Phase;
  /** true when a reboot was issued (resume with a new Agent after it). */
  rebooted: boolean;
  /** attempts that ended during this run. */
  finished: HistoryEntry[];
  /** last check's result. */
  lastCheck?: MachineState['lastCheck'];
  events: Event['type'][];
  bootedSlot: SlotName;
  /** the reboot into the trial was deferred by a policy that said until when (ms since epoch): try
   * again then, not sooner (see service.ts). Absent otherwise. */
  retryAt?: number;
}

export interface SlotStatus {
  slot: SlotName;
  booted: boolean;
  boot: SlotBootState | { error: string };
  release?: { id: string; version: string; securityVersion: number };
}

export interface AgentStatus {
  deviceId: string;
  hardware: string;
  channel: string;
  phase: Phase;
  bootedSlot: SlotName;
  committedSecurityVersion: number;
  slots: SlotStatus[];
  attempt?: {
    number: number; releaseId: string; version: string; source: SlotName; target: SlotName; startedAt: number; transitions: number;
    /** a failed step being retried: how often it failed, its last error, when it is tried again. */
    stepFailures?: number; lastError?: ErrorInfo; retryAt?: number;
  };
  lastCheck?: MachineState['lastCheck'];
  lastResult?: HistoryEntry;
}

const REPORT_TYPES: Record<Report['kind'], string> = {
  updateStarted: 'UpdateStarted',
  downloadInterrupted: 'DownloadInterrupted',
  installed: 'UpdateInstalled',
  rebooting: 'RebootStarted',
  succeeded: 'UpdateCommitted',
  rolledBack: 'UpdateRolledBack',
  failed: 'UpdateFailed',
};

export class Agent {
  private readonly runner: Runner;
  private readonly log: Logger;

  constructor(private readonly d: AgentDeps) {
    this.log = d.log.child({ module: 'daemon.agent' });
    this.runner = new Runner({ store: d.store, executors: this.executors(), now: d.now, log: d.log.child({ module: 'daemon.runner' }), ...(d.machine ? { machine: d.machine } : {}) });
  }

  /**
   * One cycle: resume whatever the record says is in flight (post-boot validation included), then,
   * when `check` is true and the machine is idle, look for a release and install it. Stops at a
   * reboot (`rebooted: true`) or when nothing is left to do.
   */
  async runOnce(options: { check?: boolean; markGood?: boolean } = {}): Promise<CycleResult> {
    return this.locked(() => this.runOnceLocked(options));
  }

  private async bootId(): Promise<string | undefined> {
    return (this.d.bootId ?? procBootId)().catch(() => undefined);
  }

  /** True when the boot backend has a one-shot reboot argument pending (rpi-tryboot: an armed trial
   * that only `reboot "0 tryboot"` starts). Never throws. */
  private async oneShotPending(): Promise<boolean> {
    const bc = this.d.bootControl as BootControl & { rebootArgument?: () => Promise<string | undefined> };
    if (!bc.rebootArgument) return false;
    return (await bc.rebootArgument().catch(() => undefined)) !== undefined;
  }

  private triesVisible(): boolean {
    return this.d.triesVisible ?? TRIES_VISIBLE[this.d.bootControl.backend] ?? false;
  }

  /** Runs `fn` holding the device's update lock (when one is configured). */
  private async locked<T>(fn: () => Promise<T>): Promise<T> {
    const release = this.d.lock ? await this.d.lock() : undefined;
    try {
      return await fn();
    } finally {
      await release?.();
    }
  }

  private async runOnceLocked(options: { check?: boolean; markGood?: boolean }): Promise<CycleResult> {
    let loaded = await this.d.store.load();
    if (this.d.retryRequest && (await this.d.retryRequest.pending())) {
      const { state, cleared } = forgetFailed(loaded);
      if (cleared.length > 0) loaded = await this.d.store.save(state);
      await this.d.retryRequest.clear();
      this.log.info({ cleared }, 'operator asked to retry failed releases');
    }
    const bootedSlot = await this.d.bootControl.bootedSlot();
    // final reports a power cut kept from the outbox go out before anything else
    const start = await this.runner.flushReports(loaded, this.log);
    let state: MachineState = start;
    const events: Event['type'][] = [];
    let rebooted = false;
    let retryAt: number | undefined;
    const run = async (event: Event): Promise<DriveResult> => {
      const r = await this.runner.drive(state, event);
      state = r.state;
      events.push(...r.events);
      rebooted = r.rebooted;
      retryAt = r.deferredUntil;
      return r;
    };
    if (start.phase !== 'idle') {
      const target = start.attempt?.target;
      const targetState = target ? await this.d.bootControl.slotState(target).catch(() => undefined) : undefined;
      // an attempt that has not armed its trial yet, resumed on the slot it started from: confirm
      // that slot first, as at every boot (settleBootedSlot). RAUC-convention bootloaders count the
      // committed slot down on every boot; a few power cuts during one long install would otherwise
      // drain it, and the arm then finds no fallback (HAL_NO_FALLBACK) — or the bootloader finds no
      // slot at all. Not once the target reads `trial`: confirming the source then cancels the trial.
      if ((options.markGood ?? true) && start.attempt?.source === bootedSlot && BEFORE_TRIAL.has(start.phase) && targetState?.state !== 'trial') await this.confirmSource(bootedSlot);
      const bootId = await this.bootId();
      const oneShotPending = await this.oneShotPending();
      const event = resume(start, bootedSlot, targetState, { ...(bootId !== undefined ? { bootId } : {}), triesVisible: this.triesVisible(), ...(oneShotPending ? { oneShotPending } : {}) });
      this.log.info({ phase: start.phase, bootedSlot, event: event?.type ?? null, ...(event?.type === 'BootedInto' && event.evidence ? { bootloaderIgnoredTrial: true } : {}) }, 'resuming');
      if (event) await run(event);
    }
    // settle the running slot before a new attempt: a trial nobody is validating is validated now,
    // and the committed slot is confirmed (the trial needs it as a good fallback)
    if (!rebooted && state.phase === 'idle') rebooted = await this.settleBootedSlot(bootedSlot, options.markGood ?? true);
    if (!rebooted && state.phase === 'idle' && (options.check ?? true)) await run({ type: 'CheckRequested' });
    // a failed step (arming, rebooting, committing, rolling back) is retried when the machine said
    if (retryAt === undefined && !rebooted && state.attempt?.retryAt !== undefined) retryAt = state.attempt.retryAt;
    // issue 18: the snapshot of an attempt that ended goes now: restored first unless it committed
    // (the old slot must run on the data it knows); one still in flight stays
    if (this.d.migration && !rebooted) {
      const done = await this.d.migration.settle(bootedSlot, state.history);
      if (done) this.log.info({ snapshot: done }, 'migration snapshot settled');
    }
    // what the installer kept for an attempt that ended (the cached chunk index) goes now
    if (!rebooted) await this.d.installer.settle?.(state.phase === 'idle' ? undefined : state.attempt?.release);
    const before = new Set(start.history.map((h) => h.attempt));
    return {
      phase: state.phase,
      rebooted,
      finished: state.history.filter((h) => !before.has(h.attempt)),
      ...(state.lastCheck ? { lastCheck: state.lastCheck } : {}),
      events,
      bootedSlot,
      ...(retryAt !== undefined && !rebooted && state.phase !== 'idle' ? { retryAt } : {}),
    };
  }

  /**
   * Nothing is in flight: make the running slot a safe source before anything else happens.
   *
   * - A booted slot in `trial` with no attempt in flight (the record was lost, or someone else armed
   *   it) is validated like a trial: health checks, then commit, or — when the other slot reads good —
   *   mark it bad and reboot into the good one. It is never the source of an update (machine.ts).
   * - With `markGood`, the committed slot is confirmed again, like RAUC's `rauc status mark-good` on
   *   every boot: RAUC-convention bootloaders count BOOT_x_LEFT down on every boot, also of the
   *   committed slot; without this, a few ordinary reboots drain it and the next update has no
   *   fallback. `commit` is idempotent and the backends write only when something changes.
   * - A booted slot that reads `bad` is confirmed ONLY when the other slot is not good: then it is the
   *   slot the bootloader fell back to after its counter drained, the only working slot. When the other
   *   slot reads good, the running slot was marked bad on purpose (a failed release whose reboot did
   *   not happen): committing it would make a failed release permanent, so it is left alone and the
   *   bootloader takes the good slot on the next boot.
   * Returns true when it rebooted. Never fails the cycle: an unreadable environment is logged.
   */
  private async settleBootedSlot(booted: SlotName, markGood: boolean): Promise<boolean> {
    try {
      const { state, otherGood } = await this.runningSlot(booted);
      if (state === 'trial') return await this.validateStrayTrial(booted, otherGood);
      if (markGood) await this.confirmRunning(booted, state, otherGood);
    } catch (e) {
      this.log.warn({ slot: booted, err: toErrorInfo(e) }, 'mark-good of the booted slot failed');
    }
    return false;
  }

  /** The running source slot of an attempt in flight, before its trial is armed: confirmed like the
   * committed slot at every boot (settleBootedSlot's rule, confirmRunning); a `trial` is left alone.
   * Never fails the cycle. */
  private async confirmSource(booted: SlotName): Promise<void> {
    try {
      const { state, otherGood } = await this.runningSlot(booted);
      if (state !== 'trial') await this.confirmRunning(booted, state, otherGood);
    } catch (e) {
      this.log.warn({ slot: booted, err: toErrorInfo(e) }, 'mark-good of the booted source slot failed');
    }
  }

  /** The running slot's state and whether the other slot reads good (unreadable: not good). */
  private async runningSlot(booted: SlotName): Promise<{ state: SlotBootState['state']; otherGood: boolean }> {
    const boot = this.d.bootControl;
    const { state } = await boot.slotState(booted);
    const otherGood = (await boot.slotState(otherSlot(booted)).catch(() => undefined))?.state === 'good';
    return { state, otherGood };
  }

  /** The one rule for confirming a running slot that is not a trial (mark-good at every boot): a `bad`
   * slot is confirmed only when the other slot is not good (it is then the only working slot); when the
   * other slot is good it was marked bad on purpose and is left for the bootloader to leave. */
  private async confirmRunning(booted: SlotName, state: SlotBootState['state'], otherGood: boolean): Promise<void> {
    if (state === 'bad' && otherGood) {
      this.log.warn({ slot: booted, fallback: otherSlot(booted) }, 'the running slot is marked bad and the other slot is good: not confirming it; the bootloader boots the good slot next time');
      return;
    }
    await this.d.bootControl.commit(booted);
  }

  /** A booted trial with no attempt in flight: health checks decide, as for a trial slotflip armed. */
  private async validateStrayTrial(booted: SlotName, otherGood: boolean): Promise<boolean> {
    const log = this.log.child({ slot: booted });
    log.warn('booted slot is an unconfirmed trial with no update in flight: validating it');
    const r = await this.d.health.run().catch((e: unknown) => ({ ok: false, failures: [{ name: 'health', output: toErrorInfo(e).message }] }));
    if (r.ok) {
      await this.d.bootControl.commit(booted);
      log.info('unconfirmed trial passed its health checks: committed');
      return false;
    }
    if (!otherGood) {
      log.error({ failures: r.failures.map((f) => f.name) }, 'unconfirmed trial failed its health checks, but the other slot is not good: left as it is');
      return false;
    }
    await this.d.bootControl.markBad(booted);
    log.warn({ failures: r.failures.map((f) => f.name) }, 'unconfirmed trial failed its health checks: marked bad, rebooting into the good slot');
    await this.d.reboot();
    return true;
  }

  /** What would be installed now, without changing anything. */
  async check(options: { retryFailed?: boolean } = {}): Promise<{ release: Release | null; reason?: string; releaseId?: string }> {
    const loaded = await this.d.store.load();
    // with --retry the request is already on disk: answer as the next cycle will see it
    const state = options.retryFailed ? forgetFailed(loaded).state : loaded;
    const event = await this.findRelease(state.committedSecurityVersion);
    if (event.type === 'ReleaseFound') {
      const id = releaseIdOf(event.release);
      // the machine's own rule, so `check` says exactly what the next cycle will do
      const refusal = startRefusal(state, releaseRefOf(event.release), event.bootedSlot, event.bootedState);
      return refusal ? { release: null, reason: refusal.detail, releaseId: id } : { release: event.release, releaseId: id };
    }
    if (event.type === 'NoReleaseFound') return { release: null, reason: event.reason };
    if (event.type === 'CheckFailed') throw new SlotflipError(event.error.code, event.error.message, { retryable: event.error.retryable ?? false });
    return { release: null };
  }

  async status(): Promise<AgentStatus> {
    const s = await this.d.store.load();
    const bootedSlot = await this.d.bootControl.bootedSlot();
    const slots: SlotStatus[] = [];
    for (const slot of ['A', 'B'] as const) {
      const boot = await this.d.bootControl.slotState(slot).catch((e: unknown) => ({ error: toErrorInfo(e).message }));
      const rel = s.installed[slot];
      slots.push({ slot, booted: slot === bootedSlot, boot, ...(rel ? { release: { id: rel.id, version: rel.version, securityVersion: rel.securityVersion } } : {}) });
    }
    const a = s.attempt;
    const last = s.history[s.history.length - 1];
    return {
      ...this.d.identity,
      phase: s.phase,
      bootedSlot,
      committedSecurityVersion: s.committedSecurityVersion,
      slots,
      ...(a ? {
        attempt: {
          number: a.number, releaseId: a.ref.id, version: a.ref.version, source: a.source, target: a.target, startedAt: a.startedAt, transitions: s.transitions,
          ...(a.stepFailures !== undefined ? { stepFailures: a.stepFailures } : {}), ...(a.lastError ? { lastError: a.lastError } : {}), ...(a.retryAt !== undefined ? { retryAt: a.retryAt } : {}),
        },
      } : {}),
      ...(s.lastCheck ? { lastCheck: s.lastCheck } : {}),
      ...(last ? { lastResult: last } : {}),
    };
  }

  async history(): Promise<HistoryEntry[]> {
    return (await this.d.store.load()).history;
  }

  /**
   * Confirm the running slot now, without waiting for health checks (like `rauc status mark-good`).
   * With a trial pending and the target booted, the attempt commits through the machine (and is
   * reported as succeeded); with nothing pending, the booted slot is committed (idempotent).
   */
  async markGood(): Promise<CycleResult> {
    return this.locked(() => this.markGoodLocked());
  }

  private async markGoodLocked(): Promise<CycleResult> {
    const s = await this.d.store.load();
    const booted = await this.d.bootControl.bootedSlot();
    const a = s.attempt;
    if (a && booted === a.target && (s.phase === 'rebooting' || s.phase === 'arming' || s.phase === 'validating')) {
      const events: Event['type'][] = [];
      // commit as if the checks had passed: the operator vouches for this boot
      const r = await this.runner.drive({ ...s, phase: 'validating' }, { type: 'HealthChecksPassed', manual: true });
      events.push(...r.events);
      const before = new Set(s.history.map((h) => h.attempt));
      return { phase: r.state.phase, rebooted: r.rebooted, finished: r.state.history.filter((h) => !before.has(h.attempt)), events, bootedSlot: booted };
    }
    if (s.phase !== 'idle') {
      throw new SlotflipError('DAEMON_BUSY', `an update is in phase ${s.phase} and slot ${booted} is not its trial slot; wait for it or run \`slotflip rollback\``, { details: { phase: s.phase } });
    }
    await this.d.bootControl.commit(booted);
    this.log.info({ slot: booted }, 'marked good');
    return { phase: 'idle', rebooted: false, finished: [], events: [], bootedSlot: booted };
  }

  /** Abandon a pending trial: mark the trial slot bad and reboot into the committed one. Refuses
   * (DAEMON_NOTHING_TO_ROLL_BACK) when no trial is pending. */
  async rollback(reason = 'rollback requested by operator'): Promise<CycleResult> {
    return this.locked(() => this.rollbackLocked(reason));
  }

  private async rollbackLocked(reason: string): Promise<CycleResult> {
    const s = await this.d.store.load();
    const booted = await this.d.bootControl.bootedSlot();
    if (!s.attempt || (s.phase !== 'validating' && s.phase !== 'rebooting')) {
      throw new SlotflipError('DAEMON_NOTHING_TO_ROLL_BACK', `no trial boot is pending (phase ${s.phase}); the booted slot ${booted} is the committed one`, { details: { phase: s.phase } });
    }
    const r = await this.runner.drive(s, { type: 'RollbackRequested', reason });
    const before = new Set(s.history.map((h) => h.attempt));
    return { phase: r.state.phase, rebooted: r.rebooted, finished: r.state.history.filter((h) => !before.has(h.attempt)), events: r.events, bootedSlot: booted };
  }

  private async findRelease(committedSecurityVersion: number): Promise<Event> {
    let list: Release[];
    try {
      list = await this.d.releases.releases();
    } catch (e) {
      return { type: 'CheckFailed', error: toErrorInfo(e) };
    }
    const sel = selectRelease(list, { ...this.d.identity, committedSecurityVersion }, this.d.now());
    if (!sel.ok) return { type: 'NoReleaseFound', reason: `${sel.code}: ${sel.message}` };
    const bootedSlot = await this.d.bootControl.bootedSlot();
    // an environment that cannot be read refuses the check itself (its HAL code says why): an attempt
    // never starts from a slot it cannot vouch for, and nothing is touched
    let bootedState: SlotBootState['state'];
    try {
      bootedState = (await this.d.bootControl.slotState(bootedSlot)).state;
    } catch (e) {
      return { type: 'CheckFailed', error: toErrorInfo(e) };
    }
    return { type: 'ReleaseFound', release: sel.release, bootedSlot, bootedState };
  }

  private executors(): Executors {
    const d = this.d;
    const boot = d.bootControl;
    return {
      check: async () => {
        const state = await d.store.load();
        const found = await this.findRelease(state.committedSecurityVersion);
        if (found.type !== 'ReleaseFound') return found;
        if (d.policies) {
          const ok = await d.policies.mayStart(found.release, d.now());
          if (!ok.ok) return { type: 'NoReleaseFound', reason: `policy: ${ok.reason}` };
        }
        // only for a release the machine would start: then prove the payload before the target
        // (the device's fallback) is marked bad
        if (d.installer.preflight && startRefusal(state, releaseRefOf(found.release), found.bootedSlot, found.bootedState) === null) {
          try {
            await d.installer.preflight(found.release);
          } catch (e) {
            return { type: 'CheckFailed', error: toErrorInfo(e) };
          }
        }
        return found;
      },
      markBad: async (e) => {
        await boot.markBad(e.slot);
        return { type: 'SlotMarkedBad' };
      },
      writeSlot: async (e) => {
        try {
          const transfer = await d.installer.write(e.release, d.slots[e.slot]);
          return transfer ? { type: 'DownloadCompleted', transfer } : { type: 'DownloadCompleted' };
        } catch (err) {
          return { type: 'DownloadFailed', error: toErrorInfo(err) };
        }
      },
      verifySlot: async (e) => {
        try {
          await d.installer.verify(e.release, d.slots[e.slot]);
          return { type: 'SlotVerified' };
        } catch (err) {
          return { type: 'VerificationFailed', error: toErrorInfo(err) };
        }
      },
      armTrial: async (e) => {
        await boot.armTrial(e.slot, d.tries ?? 3);
        // what the trial looks like as armed, and in which boot: after the reboot, the same state in
        // a different boot means the bootloader never read it (machine.ts bootloaderIgnoredTrial).
        // Best effort: without it nothing is claimed later.
        const target = await boot.slotState(e.slot).catch(() => undefined);
        const bootId = await this.bootId();
        const armed: ArmedTrial | undefined = target ? { target, ...(bootId !== undefined ? { bootId } : {}) } : undefined;
        return armed ? { type: 'TrialArmed', armed } : { type: 'TrialArmed' };
      },
      reboot: async () => {
        if (d.policies) {
          const ok = await d.policies.mayReboot(d.now());
          if (!ok.ok) return { type: 'RebootDeferred', reason: ok.reason, ...(ok.until !== undefined ? { until: ok.until } : {}) };
        }
        await d.reboot();
        return { type: 'RebootIssued' };
      },
      runHealthChecks: async (e) => {
        // confirm the expected slot really booted before judging it
        const booted = await boot.bootedSlot();
        if (booted !== e.slot) return { type: 'HealthCheckFailed', failures: [{ name: 'booted-slot', output: `expected slot ${e.slot} to be booted, found ${booted}`, required: true }] };
        // issue 18: the data migration first (snapshot, then run); a failed one is a failed check
        const attempt = d.migration ? (await d.store.load()).attempt : undefined;
        if (d.migration && attempt) {
          const failed = await d.migration.beforeChecks(attempt.number, attempt.ref.id, e.slot, attempt.release.custom.migration);
          if (failed) return { type: 'HealthCheckFailed', failures: [failed] };
        }
        const r = await d.health.run();
        if (!r.ok) return { type: 'HealthCheckFailed', failures: r.failures };
        // the boot passed: whatever failed is a wanted check (required: false, wanted.d), reported
        // with the commit instead of dropped
        const warnings = r.failures.map((f) => ({ name: f.name, output: f.output }));
        return warnings.length > 0 ? { type: 'HealthChecksPassed', warnings } : { type: 'HealthChecksPassed' };
      },
      commit: async (e) => {
        await boot.commit(e.slot);
        return { type: 'Committed' };
      },
      markBadAndReboot: async (e) => {
        // mark the trial slot bad first: whatever happens to the reboot, the bootloader then
        // chooses the committed slot
        await boot.markBad(e.slot);
        await d.reboot();
        return { type: 'RebootIssued' };
      },
      abandon: async (e) => {
        const booted = await boot.bootedSlot().catch(() => undefined);
        if (booted !== undefined && booted !== e.slot) await boot.markBad(e.slot).catch((err: unknown) => this.log.warn({ err: toErrorInfo(err) }, 'abandon: markBad failed'));
        return { type: 'Reported' };
      },
      report: async (e) => {
        const r = e.report;
        if (d.outbox) {
          await d.outbox.append({
            type: REPORT_TYPES[r.kind],
            deviceId: d.identity.deviceId,
            attempt: r.attempt,
            releaseId: r.release.id,
            version: r.release.version,
            securityVersion: r.release.securityVersion,
            at: isoTime(r.at),
            ...(r.reason ? { reason: r.reason } : {}),
            ...(r.failures ? { failures: r.failures } : {}),
            ...(r.warnings ? { warnings: r.warnings } : {}),
            ...(r.transfer ? { transfer: r.transfer } : {}),
          });
        }
        this.log.info({ report: REPORT_TYPES[r.kind], releaseId: r.release.id, attempt: r.attempt, reason: r.reason?.code, ...(r.warnings ? { warnings: r.warnings.map((w) => w.name) } : {}), ...(r.transfer ? { transfer: r.transfer } : {}) }, 'report');
        return { type: 'Reported' };
      },
    };
  }
}

/**
 * Runs one full update cycle across reboots: builds an Agent (one per boot), `runOnce()`, and while
 * a reboot was issued (the `reboot` dependency has already power-cycled the emulated board), builds
 * a new one and resumes. Returns when nothing is pending. `maxReboots` bounds the loop.
 */
export async function runUpdateCycle(makeAgent: () => Agent | Promise<Agent>, options: { maxReboots?: number; check?: boolean } = {}): Promise<CycleResult> {
  const max = options.maxReboots ?? 6;
  let agent = await makeAgent();
  let r = await agent.runOnce({ check: options.check ?? true });
  const finished = [...r.finished];
  const events = [...r.events];
  for (let reboots = 0; r.rebooted && reboots < max; reboots++) {
    agent = await makeAgent();
    r = await agent.runOnce({ check: false });
    finished.push(...r.finished);
    events.push(...r.events);
  }
  return { ...r, finished, events };
}


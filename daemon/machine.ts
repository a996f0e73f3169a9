/**
 * The update state machine: pure. `transition(state, event, now) → { state, effects }` decides; the
 * runner (runner.ts) executes the effects and turns their outcomes back into events. No I/O, no logger,
 * no clock of its own: `now` is an argument, so every decision is a table entry a test can state.
 *
 * Trade-off: the whole persisted record (phase, attempt, committed securityVersion, rolled-back
 * releases, installed releases per slot, history) is the machine's state. One atomic file write
 * therefore keeps all of it consistent, at the cost of rewriting the (bounded) history on every save.
 *
 * Phases, in order: idle → checking → preparing (mark target bad) → downloading → verifying → arming
 * → rebooting (awaiting reboot per policy) → validating (trial boot: health checks) → committing
 * → idle. Failure before the trial boot ends in `failed` (target stays marked bad, booted slot never
 * touched); failure after it goes through rollingBack (mark target bad, reboot) to `rolledBack`.
 * One failure after the reboot is not the release's: the device came back in the source slot after a
 * real reboot and the target's boot state is exactly as armed (no try consumed) — the bootloader never
 * read what slotflip wrote (a misconfigured fw_env.config, say). That attempt also marks the target
 * bad through rollingBack, but ends `failed` with DAEMON_BOOTLOADER_IGNORED_ENV (a device fault).
 * The outcome (succeeded | rolledBack | failed) is recorded in history and the machine returns to idle.
 * A boot whose required checks passed commits even when `required: false` (wanted) checks failed;
 * those ride along as `warnings` into history and the commit's report.
 *
 * INVARIANTS
 * - An update starts only from a booted slot that reads `good`. A booted `trial` with no attempt in
 *   flight (a lost record, a trial armed by someone else) is validated by the agent — health checks,
 *   then commit or roll back — and is never the source of an attempt; a booted `bad` slot is never
 *   a source either (`ReleaseFound` with any other `bootedState` ends the check: DAEMON_SOURCE_NOT_GOOD).
 * - Once the target may be armed (arming, rebooting, committing, rollingBack) a failed step never
 *   ends the attempt with the trial still armed: the step is retried with backoff (`StepFailed` keeps
 *   the attempt, `retryAt` says when; a restart retries it too). Past `maxStepRetries` an attempt that
 *   has not booted its target disarms it (mark bad) before it ends `failed`; a commit that keeps failing
 *   rolls back; a rollback never gives up (the transition bound is its only end). Nothing here commits
 *   a slot that reads `bad` (see Agent.markBootedGood for the one exception: the running slot when
 *   no slot reads good, i.e. a counter the bootloader drained).
 * - A release whose attempt failed at or after arming (the image was installed: the trial was armed
 *   or could have been) joins the no-retry list like a rolled-back one: no arm/reboot loops.
 * - The committed slot (the one booted when the attempt started, `attempt.source`) is never written,
 *   marked bad or re-armed by an attempt.
 * - The target is marked bad before any byte of it changes, and armed only after it verified.
 * - `committedSecurityVersion` is raised only on `Committed`, never lowered.
 * - A release that rolled back, or whose trial the bootloader ignored, is never started again (it is
 *   in `rolledBack`) until a newer one appears (a different release id): no reboot loops.
 * - "The bootloader ignored the environment" is claimed only on unambiguous evidence (see
 *   `bootloaderIgnoredTrial`): a boot id that changed since the trial was armed, a backend whose
 *   consumed tries are visible, and the target's state still exactly as read right after arming.
 * - Every transition of an attempt that changes phase or follows a restart counts; past
 *   `maxTransitions` the attempt is abandoned (DAEMON_STATE_LOOP) and the committed slot left alone.
 */
import type { SlotName, SlotBootState } from '../hal/boot-control.js';
import type { Release } from '../manifests/types.js';

export type Phase =
  | 'idle'
  | 'checking'
  | 'preparing'
  | 'downloading'
  | 'verifying'
  | 'arming'
  | 'rebooting'
  | 'validating'
  | 'committing'
  | 'rollingBack';

export const PHASES: readonly Phase[] = [
  'idle', 'checking', 'preparing', 'downloading', 'verifying', 'arming', 'rebooting', 'validating', 'committing', 'rollingBack',
];

export type Outcome = 'succeeded' | 'rolledBack' | 'failed';

/** An error as the machine and the reports see it: coded, without stack or cause. */
export interface ErrorInfo {
  code: string;
  message: string;
  retryable?: boolean;
}

/** One failed health check, with its (capped) output for the rollback report. */
export interface HealthFailure {
  name: string;
  output: string;
  required?: boolean;
}

/** A failed `required: false` check of a boot that passed: not a failure of the release, but the
 * fleet should know (output capped by the health runner, like a failure's). */
export interface HealthWarning {
  name: string;
  output: string;
}

/** Warnings kept per attempt (the record and every report carry them). */
export const MAX_WARNINGS = 16;

/** What the history and reports say about a release. */
export interface ReleaseRef {
  /** stable id: `targetName@sha256-prefix` (see `releaseIdOf`). */
  id: string;
  targetName: string;
  version: string;
  securityVersion: number;
}

/** What the agent read right after arming the trial (saved with the `rebooting` phase, before the
 * reboot): the boot it was armed in and the target's boot state as armed. */
export interface ArmedTrial {
  /** kernel boot id when the trial was armed; absent when it could not be read. */
  bootId?: string;
  /** the target's boot state read back right after arming. */
  target: SlotBootState;
}

/** Facts the agent gathered after a boot, for telling "the bootloader ignored the trial" apart from
 * "the bootloader fell back" and "the daemon restarted without a reboot". Raw facts only: the machine
 * decides (`bootloaderIgnoredTrial`). */
export interface BootEvidence {
  /** kernel boot id now; absent when it could not be read. */
  bootId?: string;
  /** the target's boot state now; absent when it could not be read. */
  target?: SlotBootState;
  /** true when this backend's bootloader visibly consumes a try of an armed trial on every boot
   * attempt (RAUC BOOT_x_LEFT, Mender bootcount, grub x_TRY / boot_counter, systemd-boot +N-M, the
   * emulated model); false when it cannot be seen (rpi-tryboot's one-shot firmware flag, custom). */
  triesVisible: boolean;
  /** true when the armed trial starts only with a one-shot reboot argument that is still pending
   * (rpi-tryboot's `0 tryboot`): a normal boot, such as after a power cut before the reboot, never
   * tries it, and nothing on disk tells whether it was tried. */
  oneShotPending?: boolean;
}

/** What the install of an attempt cost (the `UpdateInstalled` report carries it): how the image
 * arrived, what was reused from the slots and what was downloaded. */
export interface InstallTransfer {
  method: 'delta' | 'full';
  imageBytes: number;
  /** image bytes taken from a slot (copied, or already in place) instead of downloaded. */
  reusedBytes: number;
  /** bytes received by the run that finished the install. */
  downloadedBytes: number;
  /** HTTP requests of a delta run (its index included). */
  requests?: number;
  /** local copies that did not match the signed index and were fetched instead. */
  seedMismatches?: number;
  /** delta: how each slot's chunks were found (`kept`: from the slot's kept seed index, no slot byte
   * read; `built`: from the index the idle daemon built of a slot it never wrote; `published`: from
   * the signed delta index the booted slot's committed release still publishes; `probed`: the target
   * read once, each new chunk hashed at the offset it goes to, no chunker; `cut`: the slot was read
   * and cut into chunks; `none`: no such slot), the slot bytes read to cut and to probe, and the ms
   * that step took. */
  seedLookup?: { target: SeedLookupKind; running: SeedLookupKind; cutBytes: number; probedBytes?: number; sampledBytes?: number; lookupMs: number };
  /** why the release's delta was not used (the full payload was installed instead). */
  fallback?: { code: string; message: string };
}

/** How a delta install found a slot's chunks (see InstallTransfer.seedLookup; install/delta.ts
 * SeedLookup is this type, SeedOrigin the first three). */
export type SeedLookupKind = 'kept' | 'built' | 'published' | 'probed' | 'cut' | 'none';

export interface Attempt {
  /** sequence number of this attempt on this device (1, 2, ...). */
  number: number;
  release: Release;
  ref: ReleaseRef;
  /** the slot booted (and committed) when the attempt started: never touched. */
  source: SlotName;
  /** the slot being written. */
  target: SlotName;
  startedAt: number;
  /** why the attempt is rolling back (set on entering rollingBack). */
  reason?: ErrorInfo;
  failures?: HealthFailure[];
  /** failed `required: false` checks (greenboot's wanted.d) of a boot that passed: reported with the
   * outcome, never a reason to roll back. Set on HealthChecksPassed. */
  warnings?: HealthWarning[];
  /** what the install cost (set on DownloadCompleted, reported with `installed`). */
  transfer?: InstallTransfer;
  /** set on entering rebooting: what the trial looked like when armed (see ArmedTrial). */
  armed?: ArmedTrial;
  /** reboots into the trial requested so far (saved before each is issued); bounds re-issuing a
   * one-shot trial reboot (MAX_ONE_SHOT_TRIAL_REBOOTS). */
  trialReboots?: number;
  /** outcome once the target is marked bad in rollingBack; absent means `rolledBack`. */
  endsAs?: Outcome;
  /** failed tries of the current phase's step (arming, rebooting, committing, rollingBack): the step
   * is retried, not the attempt ended (see INVARIANTS). Cleared when the phase changes. */
  stepFailures?: number;
  /** the last failed step's error (for `status` and the give-up reason). */
  lastError?: ErrorInfo;
  /** when the failed step should be tried again (ms since epoch; the service schedules it). */
  retryAt?: number;
}

export interface HistoryEntry {
  attempt: number;
  release: ReleaseRef;
  source: SlotName;
  target: SlotName;
  outcome: Outcome;
  startedAt: number;
  endedAt: number;
  reason?: ErrorInfo;
  failures?: HealthFailure[];
  /** failed wanted checks of the boot that passed (see Attempt.warnings). */
  warnings?: HealthWarning[];
}

export interface MachineState {
  phase: Phase;
  attempt: Attempt | null;
  /** transitions counted for the current attempt (see INVARIANTS). */
  transitions: number;
  /** number of the last attempt started (attempt numbers never repeat). */
  attempts: number;
  /** highest securityVersion committed on this device. */
  committedSecurityVersion: number;
  /** ids of releases that rolled back (bounded, newest last). */
  rolledBack: string[];
  /** release known to be in each slot: set at commit, cleared when the slot is marked bad for writing. */
  installed: Partial<Record<SlotName, ReleaseRef>>;
  /** finished attempts, newest last, bounded. */
  history: HistoryEntry[];
  /** final reports of finished attempts not yet appended to the outbox. `finish()` puts the report
   * here, in the same record that ends the attempt, so a power cut between that save and the outbox
   * append cannot lose it: the runner appends these on every start/drive and then clears them
   * (at-least-once: a cut after the append but before the clearing save appends it again; outbox
   * consumers de-duplicate by seq). Optional: records written before this field existed lack it. */
  pendingReports?: Report[];
  /** result of the last check (for `status`). */
  lastCheck?: { at: number; result: 'found' | 'none' | 'failed'; detail?: string };
}

/** The bootloader never acted on the trial slotflip armed (a device configuration fault, not the
 * release's): see the module header and `bootloaderIgnoredTrial`. */
export const BOOTLOADER_IGNORED_ENV = 'DAEMON_BOOTLOADER_IGNORED_ENV';

/** Reason codes that say the DEVICE is misconfigured, not that the release is bad: fleet views count
 * them apart from release failures (daemon/fleet/watch.ts). HAL_BOOTENV_CONFIG: the uboot backend
 * refused a fw_env.config U-Boot cannot see (hal/uboot-env.ts `fwEnvConfigProblem`). */
export const DEVICE_FAULT_CODES: readonly string[] = [BOOTLOADER_IGNORED_ENV, 'HAL_BOOTENV_CONFIG'];

/** A one-shot trial (rpi tryboot) whose reboot may have been lost (a power cut before it, a reset
 * before the firmware read the flag) is re-issued until this many trial reboots were requested: a
 * trial kernel that hangs before the daemon runs looks the same, so it gets at most this many boots. */
export const MAX_ONE_SHOT_TRIAL_REBOOTS = 2;

export const MAX_TRANSITIONS = 100;
/** Failed tries of an arming, rebooting or committing step before the attempt gives up on it. */
export const MAX_STEP_RETRIES = 5;
/** Backoff of a failed step: base, doubled per failure, capped. */
export const STEP_RETRY_BASE_MS = 30_000;
export const STEP_RETRY_MAX_MS = 30 * 60_000;

/** Delay before the `n`th retry (n ≥ 1) of a failed step: base · 2^(n-1), capped. Pure. */
export function stepRetryDelay(n: number, baseMs = STEP_RETRY_BASE_MS, maxMs = STEP_RETRY_MAX_MS): number {
  return Math.min(maxMs, baseMs * 2 ** Math.max(0, Math.min(30, n - 1)));
}

/** Failure codes of an attempt that ended before arming and still keep its release out of later
 * checks: the payload is corrupt at every mirror (retrying downloads it again for nothing). An
 * operator clears them with `slotflip check --retry` (see `forgetFailed`). */
export const NO_RETRY_FAILURE_CODES: readonly string[] = ['INSTALL_PAYLOAD_CORRUPT'];

/** Boot states a slot may be in to be the source of an attempt: only `good`. */
export const SOURCE_NOT_GOOD = 'DAEMON_SOURCE_NOT_GOOD';
export const MAX_HISTORY = 50;
export const MAX_ROLLED_BACK = 50;

export function initialState(committedSecurityVersion = 0): MachineState {
  return { phase: 'idle', attempt: null, transitions: 0, attempts: 0, committedSecurityVersion, rolledBack: [], installed: {}, history: [] };
}

/** A stable id for a release: the TUF target name plus a prefix of the image hash. */
export function releaseIdOf(release: Release): string {
  return `${release.targetName}@${release.custom.payload.sha256.slice(0, 16)}`;
}

export function releaseRefOf(release: Release): ReleaseRef {
  return { id: releaseIdOf(release), targetName: release.targetName, version: release.custom.version, securityVersion: release.custom.securityVersion };
}

// ---------------------------------------------------------------------------------------------
// Events: past-tense facts.

export type Event =
  | { type: 'CheckRequested' }
  /** `bootedState`: the booted slot's boot state when the release was found; only `good` may be a source. */
  | { type: 'ReleaseFound'; release: Release; bootedSlot: SlotName; bootedState: SlotBootState['state'] }
  | { type: 'NoReleaseFound'; reason: string }
  | { type: 'CheckFailed'; error: ErrorInfo }
  | { type: 'SlotMarkedBad' }
  | { type: 'DownloadCompleted'; transfer?: InstallTransfer }
  | { type: 'DownloadFailed'; error: ErrorInfo }
  | { type: 'SlotVerified' }
  | { type: 'VerificationFailed'; error: ErrorInfo }
  /** `armed`: the boot id and the target's state read right after arming (absent when unreadable). */
  | { type: 'TrialArmed'; armed?: ArmedTrial }
  | { type: 'RebootIssued' }
  | { type: 'RebootDeferred'; reason: string; until?: number }
  /** `evidence`: what the agent saw after the boot (see BootEvidence); absent means none. */
  | { type: 'BootedInto'; slot: SlotName; evidence?: BootEvidence }
  /** `warnings`: failed `required: false` checks; the boot still passed. */
  | { type: 'HealthChecksPassed'; manual?: boolean; warnings?: HealthWarning[] }
  | { type: 'HealthCheckFailed'; failures: HealthFailure[] }
  | { type: 'Committed' }
  | { type: 'RollbackRequested'; reason: string }
  | { type: 'Restarted' }
  | { type: 'StepFailed'; error: ErrorInfo }
  | { type: 'Reported' };

export type EventType = Event['type'];

// ---------------------------------------------------------------------------------------------
// Effects: imperatives for the runner.

export type ReportKind = 'updateStarted' | 'downloadInterrupted' | 'installed' | 'rebooting' | 'succeeded' | 'rolledBack' | 'failed';

export interface Report {
  kind: ReportKind;
  attempt: number;
  release: ReleaseRef;
  at: number;
  reason?: ErrorInfo;
  failures?: HealthFailure[];
  warnings?: HealthWarning[];
  /** `installed`: how the image arrived and what it cost (see InstallTransfer). */
  transfer?: InstallTransfer;
}

export type Effect =
  | { type: 'check' }
  | { type: 'markBad'; slot: SlotName }
  | { type: 'writeSlot'; slot: SlotName; release: Release }
  | { type: 'verifySlot'; slot: SlotName; release: Release }
  | { type: 'armTrial'; slot: SlotName }
  | { type: 'reboot' }
  | { type: 'runHealthChecks'; slot: SlotName }
  | { type: 'commit'; slot: SlotName }
  | { type: 'markBadAndReboot'; slot: SlotName }
  /** leave the committed slot alone; make the target unbootable unless it is the booted one. */
  | { type: 'abandon'; slot: SlotName }
  | { type: 'report'; report: Report };

export type EffectType = Effect['type'];

export interface TransitionResult {
  state: MachineState;
  effects: Effect[];
  /** true when the event does not apply in this phase: state unchanged, nothing to do. */
  ignored?: boolean;
}

export interface TransitionOptions {
  maxTransitions?: number;
  maxHistory?: number;
  /** failed tries of an arming/rebooting/committing step before giving up (default MAX_STEP_RETRIES). */
  maxStepRetries?: number;
  /** backoff of a failed step (defaults STEP_RETRY_BASE_MS, STEP_RETRY_MAX_MS). */
  stepRetryBaseMs?: number;
  stepRetryMaxMs?: number;
}

// ---------------------------------------------------------------------------------------------

/** The one decision function. Pure and total: every (phase, event) pair has an answer. */
export function transition(state: MachineState, event: Event, now: number, options: TransitionOptions = {}): TransitionResult {
  const max = options.maxTransitions ?? MAX_TRANSITIONS;
  let r = decide(state, event, now, options);
  if (r.ignored || !state.attempt || !r.state.attempt) return r;
  if (r.state.phase !== state.phase && r.state.attempt.stepFailures !== undefined) {
    // a new phase starts with a clean step-retry count
    const { stepFailures: _n, lastError: _e, retryAt: _t, ...attempt } = r.state.attempt;
    r = { ...r, state: { ...r.state, attempt } };
  }
  // Count transitions of a running attempt that move it or that follow a restart; a deferral does not.
  const counts = r.state.phase !== state.phase || event.type === 'Restarted' || event.type === 'BootedInto';
  if (!counts) return r;
  const transitions = state.transitions + 1;
  if (transitions > max) return abandon(state, now, options);
  return { ...r, state: { ...r.state, transitions } };
}

function decide(s: MachineState, e: Event, now: number, o: TransitionOptions): TransitionResult {
  const a = s.attempt;
  switch (e.type) {
    case 'CheckRequested':
      if (s.phase !== 'idle') return ignore(s);
      return { state: { ...s, phase: 'checking' }, effects: [{ type: 'check' }] };

    case 'ReleaseFound': {
      if (s.phase !== 'checking') return ignore(s);
      const ref = releaseRefOf(e.release);
      const refusal = startRefusal(s, ref, e.bootedSlot, e.bootedState);
      if (refusal) return { state: { ...s, phase: 'idle', lastCheck: { at: now, ...refusal } }, effects: [] };
      const attempt: Attempt = {
        number: s.attempts + 1, release: e.release, ref, source: e.bootedSlot, target: other(e.bootedSlot), startedAt: now,
      };
      const installed = { ...s.installed };
      delete installed[attempt.target]; // about to be overwritten
      return {
        state: { ...s, phase: 'preparing', attempt, attempts: attempt.number, transitions: 0, installed, lastCheck: { at: now, result: 'found', detail: ref.id } },
        // mark bad before write: a half-written slot must never be bootable
        effects: [report('updateStarted', attempt, now), { type: 'markBad', slot: attempt.target }],
      };
    }

    case 'NoReleaseFound':
      if (s.phase !== 'checking') return ignore(s);
      return { state: { ...s, phase: 'idle', lastCheck: { at: now, result: 'none', detail: e.reason } }, effects: [] };

    case 'CheckFailed':
      if (s.phase !== 'checking') return ignore(s);
      return { state: { ...s, phase: 'idle', lastCheck: { at: now, result: 'failed', detail: `${e.error.code}: ${e.error.message}` } }, effects: [] };

    case 'SlotMarkedBad':
      if (s.phase === 'rollingBack' && a) return finish(s, a.endsAs ?? 'rolledBack', now, a.reason ?? { code: 'DAEMON_ROLLED_BACK', message: 'rolled back' }, a.failures, o);
      if (s.phase !== 'preparing' || !a) return ignore(s);
      return { state: { ...s, phase: 'downloading' }, effects: [{ type: 'writeSlot', slot: a.target, release: a.release }] };

    case 'DownloadCompleted':
      if (s.phase !== 'downloading' || !a) return ignore(s);
      return { state: { ...s, phase: 'verifying', ...(e.transfer ? { attempt: { ...a, transfer: e.transfer } } : {}) }, effects: [{ type: 'verifySlot', slot: a.target, release: a.release }] };

    case 'DownloadFailed':
      if (s.phase !== 'downloading' || !a) return ignore(s);
      // A retryable failure (network, server) keeps the attempt: the next cycle resumes the
      // download, re-hashing what is already written. The transition counter bounds the retries.
      if (e.error.retryable) return { state: s, effects: [report('downloadInterrupted', a, now, e.error)] };
      return fail(s, e.error, now, o);

    case 'SlotVerified':
      if (s.phase !== 'verifying' || !a) return ignore(s);
      return { state: { ...s, phase: 'arming' }, effects: [{ type: 'armTrial', slot: a.target }] };

    case 'VerificationFailed':
      if (s.phase !== 'verifying') return ignore(s);
      return fail(s, e.error, now, o);

    case 'TrialArmed':
      if (s.phase !== 'arming' || !a) return ignore(s);
      {
        // saved with the rebooting phase, before the reboot: the post-boot evidence is compared to it
        const { armed: _old, ...rest } = a;
        const attempt: Attempt = { ...(e.armed ? { ...rest, armed: e.armed } : rest), trialReboots: 1 };
        return { state: { ...s, phase: 'rebooting', attempt }, effects: [report('installed', attempt, now), report('rebooting', attempt, now), { type: 'reboot' }] };
      }

    case 'RebootIssued':
      // The machine is going down; the record already says where to resume.
      if (s.phase !== 'rebooting' && s.phase !== 'rollingBack') return ignore(s);
      return { state: s, effects: [] };

    case 'RebootDeferred':
      if (s.phase !== 'rebooting' || !a) return ignore(s);
      // the reboot counted before it was requested did not happen: give it back (a crash between
      // the two keeps it counted, the safe direction)
      return { state: { ...s, attempt: { ...a, trialReboots: Math.max(0, (a.trialReboots ?? 1) - 1) } }, effects: [] };

    case 'BootedInto': {
      if (!a) return ignore(s);
      switch (s.phase) {
        case 'arming': // a power cut right after the trial was armed: same as a reboot
        case 'rebooting':
        case 'validating':
          if (e.slot === a.target) return { state: { ...s, phase: 'validating' }, effects: [{ type: 'runHealthChecks', slot: a.target }] };
          if (s.phase === 'rebooting' && bootloaderIgnoredTrial(a, e.slot, e.evidence)) return ignoredEnv(s, e.slot);
          return fellBack(s, { code: 'DAEMON_TRIAL_NOT_CONFIRMED', message: `trial boot never confirmed: the bootloader fell back to slot ${e.slot}` });
        case 'committing':
          if (e.slot === a.target) return { state: s, effects: [{ type: 'commit', slot: a.target }] };
          return fellBack(s, { code: 'DAEMON_COMMIT_INTERRUPTED', message: `commit was interrupted and the bootloader fell back to slot ${e.slot}` });
        case 'rollingBack':
          // back on the committed slot: make sure the failed target is marked bad (idempotent)
          // before the attempt ends, so no later boot can pick it again
          if (e.slot === a.source) return { state: s, effects: [{ type: 'markBad', slot: a.target }] };
          return { state: s, effects: [{ type: 'markBadAndReboot', slot: a.target }] };
        default:
          return ignore(s);
      }
    }

    case 'HealthChecksPassed': {
      if (s.phase !== 'validating' || !a) return ignore(s);
      // wanted checks that failed ride in the record to the commit's report: a passing boot must
      // not lose them (a re-validation after a restart replaces them with its own)
      const { warnings: _old, ...rest } = a;
      const warnings = (e.warnings ?? []).slice(0, MAX_WARNINGS).map((w) => ({ name: w.name, output: w.output }));
      const attempt: Attempt = warnings.length > 0 ? { ...rest, warnings } : rest;
      return { state: { ...s, phase: 'committing', attempt }, effects: [{ type: 'commit', slot: a.target }] };
    }

    case 'HealthCheckFailed':
      if (s.phase !== 'validating' || !a) return ignore(s);
      return rollBack(s, {
        code: 'DAEMON_HEALTH_CHECK_FAILED',
        message: `health checks failed: ${e.failures.map((f) => f.name).join(', ') || 'unknown'}`,
      }, e.failures);

    case 'Committed': {
      if (s.phase !== 'committing' || !a) return ignore(s);
      // raise the anti-rollback counter only now, after the slot is permanent; never lower it
      const committedSecurityVersion = Math.max(s.committedSecurityVersion, a.ref.securityVersion);
      const next = { ...s, committedSecurityVersion, installed: { ...s.installed, [a.target]: a.ref } };
      return finish(next, 'succeeded', now, undefined, undefined, o);
    }

    case 'RollbackRequested':
      if (!a || (s.phase !== 'validating' && s.phase !== 'rebooting')) return ignore(s);
      return rollBack(s, { code: 'DAEMON_ROLLBACK_REQUESTED', message: e.reason });

    case 'Restarted':
      // The daemon restarted in the same boot (or the power cut came before the target could
      // boot): redo the phase's work. Every effect here is idempotent or resumes by re-hashing.
      if (!a) return s.phase === 'checking' ? { state: { ...s, phase: 'idle' }, effects: [] } : ignore(s);
      switch (s.phase) {
        case 'preparing': return { state: s, effects: [{ type: 'markBad', slot: a.target }] };
        case 'downloading': return { state: s, effects: [{ type: 'writeSlot', slot: a.target, release: a.release }] };
        case 'verifying': return { state: s, effects: [{ type: 'verifySlot', slot: a.target, release: a.release }] };
        case 'arming': return { state: s, effects: [{ type: 'armTrial', slot: a.target }] };
        case 'rebooting': return { state: { ...s, attempt: { ...a, trialReboots: (a.trialReboots ?? 1) + 1 } }, effects: [{ type: 'reboot' }] };
        case 'rollingBack': return { state: s, effects: [{ type: 'markBadAndReboot', slot: a.target }] };
        default: return ignore(s);
      }

    case 'StepFailed':
      if (!a) return ignore(s);
      return stepFailed(s, e.error, now, o);

    case 'Reported':
      return ignore(s);
  }
}

/**
 * Why a found release is not started, or null to start it: the one rule the machine (`ReleaseFound`),
 * the agent's preflight and the read-only `check` all ask. A source that is not `good` is a failed
 * check (the device cannot update now); the other refusals are "nothing to do". Pure.
 */
export function startRefusal(s: MachineState, ref: ReleaseRef, booted: SlotName, bootedState: SlotBootState['state']): { result: 'failed' | 'none'; detail: string } | null {
  if (bootedState !== 'good') {
    // the source must be a confirmed slot: an attempt marks the other slot bad, and the booted one is
    // then the device's only way back
    return { result: 'failed', detail: `${SOURCE_NOT_GOOD}: booted slot ${booted} reads ${bootedState}; an update starts only from a good (committed) slot, so ${ref.id} waits until this boot is validated or rolled back` };
  }
  const skip = skipReason(s, ref, booted);
  return skip ? { result: 'none', detail: skip } : null;
}

function skipReason(s: MachineState, ref: ReleaseRef, booted: SlotName): string | null {
  if (s.installed[booted]?.id === ref.id) return `up to date: ${ref.id} is running`;
  if (s.rolledBack.includes(ref.id)) return noRetryReason(s, ref.id);
  if (ref.securityVersion < s.committedSecurityVersion) {
    return `${ref.id} has securityVersion ${ref.securityVersion}, below the committed ${s.committedSecurityVersion}`;
  }
  return null;
}

/** Why a release in the no-retry list (`rolledBack`) is not started again. Pure. */
export function noRetryReason(s: Pick<MachineState, 'history'>, id: string): string {
  const last = [...s.history].reverse().find((h) => h.release.id === id);
  if (last?.reason?.code === BOOTLOADER_IGNORED_ENV) {
    return `the bootloader ignored ${id}'s trial before (${BOOTLOADER_IGNORED_ENV}); fix the boot configuration (run \`slotflip doctor\`); waiting for a newer release`;
  }
  if (last?.outcome === 'failed') {
    return `${id} failed before (${last.reason?.code ?? 'unknown'}); waiting for a newer release, or run \`slotflip check --retry\` once the cause is fixed`;
  }
  return `${id} rolled back before; waiting for a newer release`;
}

/**
 * The operator asked to try failed releases again (`slotflip check --retry`): releases whose last
 * attempt ended `failed` leave the no-retry list; rolled-back ones (their trial failed its health
 * checks) stay until a newer release appears. Pure.
 */
export function forgetFailed(s: MachineState): { state: MachineState; cleared: string[] } {
  const lastOutcome = (id: string) => [...s.history].reverse().find((h) => h.release.id === id)?.outcome;
  const cleared = s.rolledBack.filter((id) => lastOutcome(id) === 'failed');
  if (cleared.length === 0) return { state: s, cleared };
  return { state: { ...s, rolledBack: s.rolledBack.filter((id) => !cleared.includes(id)) }, cleared };
}

/**
 * A step's executor threw. Before anything was armed (checking … verifying) the attempt fails as
 * before (the target stays marked bad; the booted slot was never touched). From arming on, the trial
 * may be armed, so ending the attempt would leave it armed for the next power cut: the step is kept
 * and retried with backoff (see INVARIANTS). Pure.
 */
function stepFailed(s: MachineState, error: ErrorInfo, now: number, o: TransitionOptions): TransitionResult {
  const a = s.attempt!;
  switch (s.phase) {
    case 'arming':
    case 'rebooting':
    case 'committing':
    case 'rollingBack': {
      const n = (a.stepFailures ?? 0) + 1;
      const max = o.maxStepRetries ?? MAX_STEP_RETRIES;
      if (n <= max || s.phase === 'rollingBack') {
        const attempt: Attempt = {
          ...a, stepFailures: n, lastError: error, retryAt: now + stepRetryDelay(n, o.stepRetryBaseMs, o.stepRetryMaxMs),
          // a reboot that failed did not happen: give back the trial reboot counted before it
          ...(s.phase === 'rebooting' ? { trialReboots: Math.max(0, (a.trialReboots ?? 1) - 1) } : {}),
        };
        return { state: { ...s, attempt }, effects: [] };
      }
      const reason: ErrorInfo = { code: error.code, message: `${s.phase} failed ${n} times, last: ${error.message}`, ...(error.retryable !== undefined ? { retryable: error.retryable } : {}) };
      // the target booted and passed its checks, but cannot be made permanent: roll it back
      if (s.phase === 'committing') return rollBack(s, reason);
      // arming / rebooting: the booted slot is still the source; disarm the target before the attempt
      // ends, so no later power cut boots an unvalidated trial
      return { state: { ...s, phase: 'rollingBack', attempt: { ...a, reason, endsAs: 'failed' } }, effects: [{ type: 'markBad', slot: a.target }] };
    }
    default:
      return fail(s, error, now, o);
  }
}

/** The shared failure path: before the trial boot the attempt simply fails (the target stays
 * marked bad); once the target may have booted, roll back. */
function fail(s: MachineState, error: ErrorInfo, now: number, o: TransitionOptions): TransitionResult {
  switch (s.phase) {
    case 'validating':
    case 'committing':
      return rollBack(s, error);
    default:
      return finish(s, 'failed', now, error, undefined, o);
  }
}

/**
 * The bootloader already fell back to the committed slot: no reboot is needed, but the failed target
 * must be marked bad before the attempt ends. Counting conventions (grub/rauc's TRY reset, RAUC's
 * "no slot left: reset tries") would otherwise boot the unconfirmed trial again later.
 */
function fellBack(s: MachineState, reason: ErrorInfo): TransitionResult {
  const a = s.attempt!;
  return { state: { ...s, phase: 'rollingBack', attempt: { ...a, reason } }, effects: [{ type: 'markBad', slot: a.target }] };
}

/**
 * True only on unambiguous evidence that the bootloader never acted on the armed trial: the device
 * came back in the source slot after a REAL reboot (the boot id differs from the one the trial was
 * armed in; a daemon restart in the same boot keeps it), on a backend whose bootloader visibly
 * consumes a try on every boot attempt, and the target's boot state is still exactly what was read
 * right after arming — a trial, primary, with every try left. Anything unknown (no boot id, no armed
 * record, an unreadable state, a one-shot mechanism) is not evidence. Pure.
 */
export function bootloaderIgnoredTrial(a: Attempt, booted: SlotName, ev: BootEvidence | undefined): boolean {
  const armed = a.armed;
  if (!ev || !armed || booted !== a.source || !ev.triesVisible) return false;
  if (armed.bootId === undefined || ev.bootId === undefined || armed.bootId === ev.bootId) return false;
  const was = armed.target;
  const now = ev.target;
  if (!now || was.state !== 'trial' || !was.primary || was.triesLeft === undefined || was.triesLeft < 1) return false;
  return now.state === 'trial' && now.primary && now.triesLeft === was.triesLeft;
}

/**
 * The bootloader ignored the trial (see `bootloaderIgnoredTrial`): the release was never run, so this
 * is the device's fault, not the release's. As after a fallback, the target is marked bad before the
 * attempt ends (the bootloader may start reading the environment after a fix, and must not then boot
 * an unconfirmed trial); the attempt then ends `failed` with DAEMON_BOOTLOADER_IGNORED_ENV.
 */
function ignoredEnv(s: MachineState, booted: SlotName): TransitionResult {
  const a = s.attempt!;
  const tries = a.armed?.target.triesLeft;
  const reason: ErrorInfo = {
    code: BOOTLOADER_IGNORED_ENV,
    message: `the bootloader did not read the boot environment slotflip wrote: the device rebooted into slot ${booted} with slot ${a.target}'s trial untouched (${tries} ${tries === 1 ? 'try' : 'tries'} left, none consumed); `
      + 'this is a device configuration fault, not a bad release: check fw_env.config (number of copies, offsets, sizes; /dev/mtdN, not /dev/mtdblockN, for a NOR-flash environment) or the grubenv / ESP path against the bootloader build, then run `slotflip doctor`',
  };
  return { state: { ...s, phase: 'rollingBack', attempt: { ...a, reason, endsAs: 'failed' } }, effects: [{ type: 'markBad', slot: a.target }] };
}

function rollBack(s: MachineState, reason: ErrorInfo, failures?: HealthFailure[]): TransitionResult {
  const a = s.attempt!;
  const attempt: Attempt = { ...a, reason, ...(failures ? { failures } : {}) };
  return { state: { ...s, phase: 'rollingBack', attempt }, effects: [{ type: 'markBadAndReboot', slot: a.target }] };
}

/** Abandon a looping attempt: record failure, leave the committed slot alone. */
function abandon(s: MachineState, now: number, o: TransitionOptions): TransitionResult {
  const a = s.attempt!;
  const reason = { code: 'DAEMON_STATE_LOOP', message: `attempt ${a.number} passed ${o.maxTransitions ?? MAX_TRANSITIONS} transitions in phase ${s.phase}; abandoned` };
  const r = finish(s, 'failed', now, reason, undefined, o);
  return { state: r.state, effects: [{ type: 'abandon', slot: a.target }, ...r.effects] };
}

function finish(s: MachineState, outcome: Outcome, now: number, reason: ErrorInfo | undefined, failures: HealthFailure[] | undefined, o: TransitionOptions): TransitionResult {
  const a = s.attempt!;
  const warnings = a.warnings && a.warnings.length > 0 ? a.warnings : undefined;
  const entry: HistoryEntry = {
    attempt: a.number, release: a.ref, source: a.source, target: a.target, outcome, startedAt: a.startedAt, endedAt: now,
    ...(reason ? { reason } : {}), ...(failures ? { failures } : {}), ...(warnings ? { warnings } : {}),
  };
  const history = [...s.history, entry].slice(-(o.maxHistory ?? MAX_HISTORY));
  // not retried automatically: a rollback, and a trial the bootloader ignored (retrying it would only
  // download, arm and reboot again, ignored again, on every check)
  // nor an attempt that failed once its image was installed (arming on): it would download, arm and
  // fail the same way on every check
  const installed = s.phase === 'arming' || s.phase === 'rebooting' || s.phase === 'validating' || s.phase === 'committing' || s.phase === 'rollingBack';
  const noRetry = outcome === 'rolledBack' || reason?.code === BOOTLOADER_IGNORED_ENV || (outcome === 'failed' && (installed || NO_RETRY_FAILURE_CODES.includes(reason?.code ?? '')));
  const rolledBack = noRetry && !s.rolledBack.includes(a.ref.id) ? [...s.rolledBack, a.ref.id].slice(-MAX_ROLLED_BACK) : s.rolledBack;
  const r: Report = { kind: outcome, attempt: a.number, release: a.ref, at: now, ...(reason ? { reason } : {}), ...(failures ? { failures } : {}), ...(warnings ? { warnings } : {}) };
  // the report rides in the record that ends the attempt (see MachineState.pendingReports); the
  // effect names the same object, and the runner delivers it through the pending list
  return {
    state: { ...s, phase: 'idle', attempt: null, transitions: 0, history, rolledBack, pendingReports: [...(s.pendingReports ?? []), r] },
    effects: [{ type: 'report', report: r }],
  };
}

function report(kind: ReportKind, a: Attempt, now: number, reason?: ErrorInfo): Effect {
  return { type: 'report', report: { kind, attempt: a.number, release: a.ref, at: now, ...(reason ? { reason } : {}), ...(kind === 'installed' && a.transfer ? { transfer: a.transfer } : {}) } };
}

function ignore(s: MachineState): TransitionResult {
  return { state: s, effects: [], ignored: true };
}

function other(slot: SlotName): SlotName {
  return slot === 'A' ? 'B' : 'A';
}

// ---------------------------------------------------------------------------------------------

/**
 * Where to continue after the daemon starts, from the saved record and the slot that actually booted
 * (and, while a trial is pending, the target's boot state: it tells "not rebooted yet" apart from
 * "the bootloader fell back"; with `boot` — the current boot id and whether the backend shows consumed
 * tries — also "rebooted, but the bootloader ignored the trial"). Returns null when there is nothing to
 * resume.
 *
 * | saved phase                          | booted  | target state             | event                          |
 * | idle                                 | any     | -                        | null                           |
 * | checking                             | any     | -                        | Restarted (→ idle)             |
 * | preparing, downloading, verifying    | source  | -                        | Restarted (redo the phase)     |
 * | arming                               | source  | -                        | Restarted (re-arm, idempotent) |
 * | arming, rebooting, validating        | target  | -                        | BootedInto target (validate)   |
 * | rebooting                            | source  | exactly as armed, after a real reboot, tries visible | BootedInto source + evidence (bootloader ignored the env: failed) |
 * | rebooting                            | source  | trial + primary, tries>0 | Restarted (reboot again)       |
 * | rebooting                            | source  | trial, one-shot reboot pending, fewer than MAX_ONE_SHOT_TRIAL_REBOOTS requested | Restarted (re-issue the tryboot reboot) |
 * | rebooting, validating                | source  | otherwise                | BootedInto source (rolled back: never confirmed) |
 * | committing                           | target  | -                        | BootedInto target (re-commit)  |
 * | committing                           | source  | -                        | BootedInto source (rolled back) |
 * | rollingBack                          | source  | -                        | BootedInto source (rolled back) |
 * | rollingBack                          | target  | -                        | Restarted (mark bad, reboot)   |
 */
export function resume(record: MachineState, bootedSlot: SlotName, targetState?: SlotBootState, boot?: Omit<BootEvidence, 'target'>): Event | null {
  const a = record.attempt;
  if (record.phase === 'idle') return null;
  if (!a) return { type: 'Restarted' };
  switch (record.phase) {
    case 'checking':
      return { type: 'Restarted' };
    case 'preparing':
    case 'downloading':
    case 'verifying':
      return { type: 'Restarted' };
    case 'arming':
      return bootedSlot === a.target ? { type: 'BootedInto', slot: bootedSlot } : { type: 'Restarted' };
    case 'rebooting': {
      // a real reboot the bootloader did not act on: checked before the "not rebooted yet" rule,
      // which the same untouched state would otherwise match (rebooting again and again until the
      // transition bound abandons the attempt as DAEMON_STATE_LOOP)
      const evidence: BootEvidence | undefined = boot ? { ...boot, ...(targetState ? { target: targetState } : {}) } : undefined;
      if (bootloaderIgnoredTrial(a, bootedSlot, evidence)) return { type: 'BootedInto', slot: bootedSlot, evidence: evidence! };
      if (bootedSlot === a.source) {
        if (targetState?.state === 'trial' && targetState.primary && (targetState.triesLeft ?? 1) > 0) return { type: 'Restarted' };
        // a one-shot trial (rpi tryboot) a normal boot never tries: re-issue its reboot, a bounded
        // number of times (a trial kernel that hung before the daemon ran looks the same)
        if (boot?.oneShotPending && targetState?.state === 'trial' && (targetState.triesLeft ?? 0) > 0 && (a.trialReboots ?? 1) < MAX_ONE_SHOT_TRIAL_REBOOTS) return { type: 'Restarted' };
      }
      return { type: 'BootedInto', slot: bootedSlot };
    }
    case 'validating':
    case 'committing':
      return { type: 'BootedInto', slot: bootedSlot };
    case 'rollingBack':
      return bootedSlot === a.source ? { type: 'BootedInto', slot: bootedSlot } : { type: 'Restarted' };
  }
}

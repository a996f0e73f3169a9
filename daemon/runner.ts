/**
 * The effect runner: feeds events to the pure machine, saves the record BEFORE the new phase's work
 * starts, then executes the effects through an exhaustive executor table and turns each outcome back
 * into an event. The mapped `Executors` type makes the compiler prove every effect has exactly one
 * executor.
 *
 * Trade-off: effects run one at a time, in order (FIFO). An update is a sequence; parallelism would
 * buy nothing and cost the simple crash story ("the record names the one step in flight").
 *
 * An executor that throws becomes `StepFailed` with the error's code (the machine's shared failure
 * path decides). A `RebootIssued` ends the drive: the machine is going down, and whoever restarts
 * the daemon resumes from the saved record.
 */
import type { Logger } from 'pino';
import { codeOf, isCoded } from '../hal/errors.js';
import { transition, type Effect, type ErrorInfo, type Event, type MachineState, type Report, type TransitionOptions } from './machine.js';
import type { StateStore } from './state-store.js';

export type Executors = { [K in Effect['type']]: (effect: Extract<Effect, { type: K }>) => Promise<Event> };

export interface RunnerOptions {
  store: StateStore;
  executors: Executors;
  now: () => number;
  log: Logger;
  machine?: TransitionOptions;
}

export interface DriveResult {
  state: MachineState;
  /** true when a reboot was issued: stop, and resume after the (emulated) power cycle. */
  rebooted: boolean;
  /** events handled, in order (for tests and `--json` output). */
  events: Event['type'][];
  /** when the drive ended on a reboot a policy deferred: the policy's `until` (ms since epoch), if
   * it named one. The caller schedules the next try then (service.ts `retryDelay`); nothing else
   * depends on it, so a restart simply asks the policy again. */
  deferredUntil?: number;
}

/** Safety net against a machine bug looping inside one drive (the persisted counter catches loops
 * across restarts). */
const MAX_STEPS_PER_DRIVE = 1000;

export class Runner {
  constructor(private readonly o: RunnerOptions) {}

  /**
   * Applies `event` to `state` and runs until no effect is left or a reboot is issued. Saves the
   * record whenever the state changes, before executing that transition's effects. Returns the
   * final state; it is also what the store holds.
   */
  async drive(start: MachineState, first: Event): Promise<DriveResult> {
    // reports a previous run saved but may not have appended (power cut) go out first
    let state = await this.flushReports(start, this.o.log);
    const queue: Event[] = [first];
    const events: Event['type'][] = [];
    let rebooted = false;
    let deferredUntil: number | undefined;
    let log = this.attemptLog(state);
    for (let steps = 0; queue.length > 0; steps++) {
      if (steps >= MAX_STEPS_PER_DRIVE) throw new Error(`runner: more than ${MAX_STEPS_PER_DRIVE} steps in one drive`);
      const event = queue.shift()!;
      events.push(event.type);
      if (event.type === 'RebootDeferred') deferredUntil = event.until;
      const r = transition(state, event, this.o.now(), this.o.machine);
      if (r.ignored) {
        if (event.type !== 'Reported') log.warn({ phase: state.phase, event: event.type }, 'event ignored');
        continue;
      }
      if (r.state !== state) {
        if (r.state.attempt && r.state.attempt !== state.attempt) log = this.attemptLog(r.state);
        // save before the phase's work: a crash from here on resumes in the new phase
        await this.o.store.save(r.state);
        if (r.state.phase !== state.phase || event.type === 'Restarted' || event.type === 'BootedInto') {
          log.info({ from: state.phase, to: r.state.phase, event: event.type, transitions: r.state.transitions }, 'state transition');
        }
        if (!r.state.attempt) log = this.o.log;
        state = r.state;
      }
      if (event.type === 'RebootIssued') {
        rebooted = true;
        break;
      }
      const pending = new Set<Report>(r.state.pendingReports ?? []);
      for (const effect of r.effects) {
        // a report kept in the record is delivered by flushReports below, after the other effects
        if (effect.type === 'report' && pending.has(effect.report)) continue;
        const next = await this.execute(effect, log);
        if (next.type === 'Reported') continue;
        queue.push(next);
      }
      if (pending.size > 0) state = await this.flushReports(state, log);
    }
    return { state, rebooted, events, ...(deferredUntil !== undefined && !rebooted && state.phase === 'rebooting' ? { deferredUntil } : {}) };
  }

  /**
   * Appends the record's `pendingReports` to the outbox (through the `report` executor), in order,
   * then saves the record without the ones appended. At-least-once: a crash between an append and
   * that save appends the report again on the next start (outbox consumers de-duplicate by seq). A
   * report that cannot be appended stays pending (with the ones after it, to keep the order) and is
   * retried on the next drive; it never fails the update. Returns the state the store now holds.
   */
  async flushReports(state: MachineState, log: Logger): Promise<MachineState> {
    const pending = state.pendingReports;
    if (!pending || pending.length === 0) return state;
    const run = this.o.executors.report;
    let sent = 0;
    for (const report of pending) {
      try {
        await run({ type: 'report', report });
        sent++;
      } catch (e) {
        log.error({ effect: 'report', err: toErrorInfo(e), kept: pending.length - sent }, 'report kept pending');
        break;
      }
    }
    if (sent === 0) return state;
    const { pendingReports: _sent, ...rest } = state;
    const next: MachineState = sent < pending.length ? { ...rest, pendingReports: pending.slice(sent) } : rest;
    await this.o.store.save(next);
    return next;
  }

  private attemptLog(state: MachineState): Logger {
    const a = state.attempt;
    return a ? this.o.log.child({ releaseId: a.ref.id, attempt: a.number }) : this.o.log;
  }

  private async execute(effect: Effect, log: Logger): Promise<Event> {
    const started = this.o.now();
    try {
      const run = this.o.executors[effect.type] as (e: Effect) => Promise<Event>;
      const event = await run(effect);
      if (effect.type !== 'report') log.info({ effect: effect.type, outcome: event.type, ms: this.o.now() - started }, 'effect done');
      return event;
    } catch (e) {
      const error = toErrorInfo(e);
      log.error({ effect: effect.type, err: error }, 'effect failed');
      // a report that cannot be queued must not fail the update: the outbox is best effort here
      if (effect.type === 'report') return { type: 'Reported' };
      return { type: 'StepFailed', error };
    }
  }
}

/** An error as the machine records it: code, message, retryable. Never a stack or cause. */
export function toErrorInfo(e: unknown): ErrorInfo {
  if (isCoded(e)) return { code: e.code, message: e.message, retryable: e.retryable ?? false };
  return { code: codeOf(e, 'DAEMON_UNEXPECTED'), message: e instanceof Error ? e.message : String(e), retryable: false };
}

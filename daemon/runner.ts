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
import { transition, type Effect, type ErrorInfo, type Event, type MachineState, type TransitionOptions } from './machine.js';
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
    let state = start;
    const queue: Event[] = [first];
    const events: Event['type'][] = [];
    let rebooted = false;
    let log = this.attemptLog(state);
    for (let steps = 0; queue.length > 0; steps++) {
      if (steps >= MAX_STEPS_PER_DRIVE) throw new Error(`runner: more than ${MAX_STEPS_PER_DRIVE} steps in one drive`);
      const event = queue.shift()!;
      events.push(event.type);
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
      for (const effect of r.effects) {
        const next = await this.execute(effect, log);
        if (next.type === 'Reported') continue;
        queue.push(next);
      }
    }
    return { state, rebooted, events };
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

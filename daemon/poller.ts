/**
 * Scheduled polling: the fallback when no broker pushes metadata, and the only trigger on
 * brokerless devices. A node-cron schedule fires; the poll then waits a random jitter so a fleet
 * sharing one schedule does not hit the server in the same second. Polls never overlap: a tick while
 * a poll is still running (or waiting out its jitter) is skipped. `trigger()` polls now (the MQTT
 * `cmd/check` command, `slotflip check`), without jitter.
 */
import { nodeCron, parseLocalCron, type LocalCron } from './cron-local.js';

export interface Schedule {
  stop(): void;
}

/** Calls `fn` at each match of `cron`; the real one is node-cron. */
export type Scheduler = (cron: string, fn: () => void, opts: { timezone?: string }) => Schedule;

export const cronScheduler: Scheduler = (cron, fn, opts) => {
  // a plain numeric expression in local time needs no Intl (daemon/cron-local.ts: ~6 MiB idle)
  const local = opts.timezone ? undefined : parseLocalCron(cron);
  if (local) return localScheduler(local, fn);
  const task = nodeCron().createTask(cron, () => fn(), { ...(opts.timezone ? { timezone: opts.timezone } : {}), noOverlap: false });
  void task.start();
  return { stop: () => void task.destroy() };
};

export interface SchedulerClock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const systemClock: SchedulerClock = { now: Date.now, setTimeout: (fn, ms) => setTimeout(fn, ms), clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout) };
/** the longest single wait: a wall clock that jumps (NTP setting a board without an RTC) is noticed
 * within this long, in either direction. */
const RECHECK_MS = 3_600_000;

/** Calls `fn` at each match of `cron` (local time). Timers are not unref'd: on a brokerless device
 * the schedule is what keeps the process alive, as node-cron's does. */
export function localScheduler(cron: LocalCron, fn: () => void, clock: SchedulerClock = systemClock): Schedule {
  let timer: unknown;
  let stopped = false;
  const wait = (target: number | undefined): void => {
    if (target === undefined || stopped) return;
    timer = clock.setTimeout(() => wake(target), Math.min(Math.max(0, target - clock.now()), RECHECK_MS));
  };
  const wake = (target: number): void => {
    const now = clock.now();
    if (now >= target) {
      fn();
      wait(cron.next(Math.max(now, target)));
    } else {
      // early (the periodic re-check) or the clock went back: the next match from now
      wait(cron.next(now));
    }
  };
  wait(cron.next(clock.now()));
  return {
    stop: () => {
      stopped = true;
      clock.clearTimeout(timer);
    },
  };
}

export interface PollerOptions {
  /** node-cron expression, e.g. "0 *\/6 * * *". */
  cron: string;
  timezone?: string;
  /** upper bound of the random delay after each tick, seconds. */
  jitterSeconds: number;
  poll: () => Promise<void>;
  scheduler?: Scheduler;
  random?: () => number;
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** called when a poll throws (the poller keeps running). */
  onError?: (e: unknown) => void;
}

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

export class Poller {
  private schedule: Schedule | undefined;
  private busy: Promise<void> | undefined;
  private readonly abort = new AbortController();
  private ticks = 0;
  private skipped = 0;

  constructor(private readonly o: PollerOptions) {
    if (!nodeCron().validate(o.cron)) throw new RangeError(`poller: "${o.cron}" is not a valid cron expression`);
    if (!(o.jitterSeconds >= 0)) throw new RangeError('poller: jitterSeconds must be >= 0');
  }

  /** Starts the schedule. Idempotent. */
  start(): void {
    if (this.schedule || this.abort.signal.aborted) return;
    this.schedule = (this.o.scheduler ?? cronScheduler)(this.o.cron, () => void this.tick(), this.o.timezone ? { timezone: this.o.timezone } : {});
  }

  /** Stops the schedule, cuts a pending jitter short (that poll is skipped) and waits for a running poll. */
  async stop(): Promise<void> {
    this.schedule?.stop();
    this.schedule = undefined;
    this.abort.abort();
    await this.busy;
  }

  /** Polls now, unless a poll is already running (then resolves when that one ends). */
  trigger(): Promise<void> {
    return this.run(0);
  }

  stats(): { ticks: number; skipped: number } {
    return { ticks: this.ticks, skipped: this.skipped };
  }

  private tick(): Promise<void> {
    this.ticks++;
    if (this.busy) {
      this.skipped++;
      return this.busy;
    }
    return this.run(Math.floor((this.o.random ?? Math.random)() * this.o.jitterSeconds * 1000));
  }

  private run(delayMs: number): Promise<void> {
    if (this.busy) return this.busy;
    const p = (async () => {
      if (delayMs > 0) await (this.o.sleep ?? abortableSleep)(delayMs, this.abort.signal);
      if (this.abort.signal.aborted) return;
      try {
        await this.o.poll();
      } catch (e) {
        this.o.onError?.(e);
      }
    })().finally(() => {
      this.busy = undefined;
    });
    this.busy = p;
    return p;
  }
}

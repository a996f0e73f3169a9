/**
 * systemd service notification (`sd_notify(3)` protocol) for `Type=notify` units: `READY=1` once the
 * daemon serves, `STATUS=` lines for `systemctl status`, `STOPPING=1`, and `WATCHDOG=1` pings.
 *
 * Trade-offs taken:
 * - Messages are sent from this process itself (through the `unix-dgram` native addon: Node has no
 *   unix datagram sockets), so the unit keeps the strict `NotifyAccess=main`. Spawning
 *   `systemd-notify` would send from a child's pid and need `NotifyAccess=all`, which lets any child
 *   (a health-check command, a hook) declare the service ready or feed its watchdog.
 * - The watchdog pinger is a timer on the event loop, at half of `WATCHDOG_USEC`: when the loop hangs
 *   (a busy loop, a blocked synchronous call), the pings stop and systemd restarts the service. A
 *   ping from a worker thread would keep a hung daemon alive, which is exactly what must not happen.
 * - One short-lived socket per message: nothing stays open between pings, nothing keeps the process
 *   alive, nothing leaks when a send fails.
 * - Abstract-namespace sockets (`@...`) are refused: the addon cannot address them. systemd's own
 *   socket is `/run/systemd/notify`, a path.
 *
 * Nothing here reads `process.env`: the CLI entry passes `NOTIFY_SOCKET`, `WATCHDOG_USEC` and
 * `WATCHDOG_PID` through `notifyOptionsFromEnv`.
 */
import { createRequire } from 'node:module';
import { SlotflipError } from '../hal/errors.js';

/** Sends one datagram to a unix socket path. Resolves once the kernel accepted it. */
export type DatagramSender = (socketPath: string, message: Buffer) => Promise<void>;

export interface NotifierOptions {
  /** `$NOTIFY_SOCKET`; undefined (not started by systemd) gives a notifier that does nothing. */
  socketPath: string | undefined;
  /** `$WATCHDOG_USEC` as a number, when the unit has `WatchdogSec=` and the watchdog is ours. */
  watchdogUsec?: number | undefined;
  /** Transport; defaults to the `unix-dgram` addon. Tests and fallbacks inject their own. */
  send?: DatagramSender;
  /** Called with a failed watchdog ping (the pinger keeps going). Defaults to ignoring it. */
  onError?: (err: SlotflipError) => void;
}

export interface Notifier {
  /** True when messages go to a socket (started by systemd with `Type=notify`). */
  readonly enabled: boolean;
  /** Ping interval in ms (half of `WATCHDOG_USEC`), undefined when no watchdog is expected. */
  readonly watchdogIntervalMs: number | undefined;
  /** Sends `READY=1` (plus `STATUS=` when given). Call once startup is complete. Idempotent for
   * systemd. Throws DAEMON_NOTIFY_SEND when the socket refuses it. No-op when disabled. */
  ready(status?: string): Promise<void>;
  /** Sends `STATUS=text` (newlines become spaces). Throws DAEMON_NOTIFY_SEND. No-op when disabled. */
  status(text: string): Promise<void>;
  /** Sends `STOPPING=1` at the start of a clean shutdown. Throws DAEMON_NOTIFY_SEND. */
  stopping(): Promise<void>;
  /** Sends one `WATCHDOG=1` now. Throws DAEMON_NOTIFY_SEND. No-op when disabled. */
  ping(): Promise<void>;
  /** Starts pinging every `watchdogIntervalMs` from an event-loop timer (first ping at once), so a
   * hung event loop stops the pings. Idempotent; no-op without a socket or a watchdog interval.
   * The timer does not keep the process alive. Failed pings go to `onError`. */
  startWatchdog(): void;
  /** Stops the pinger. Idempotent. Pings already handed to the kernel are not recalled. */
  stop(): void;
}

/** What the CLI entry reads from the environment systemd gives a `Type=notify` service. */
export interface NotifyEnv {
  socketPath: string | undefined;
  watchdogUsec: number | undefined;
}

/**
 * Pure: interprets `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` for the process `pid`.
 * The watchdog is ours only when `WATCHDOG_PID` is absent or equals `pid` (as in `sd_watchdog_enabled`).
 */
export function notifyOptionsFromEnv(env: Readonly<Record<string, string | undefined>>, pid: number): NotifyEnv {
  const socketPath = env.NOTIFY_SOCKET ? env.NOTIFY_SOCKET : undefined;
  const usec = env.WATCHDOG_USEC !== undefined && /^[0-9]+$/.test(env.WATCHDOG_USEC) ? Number(env.WATCHDOG_USEC) : undefined;
  const forPid = env.WATCHDOG_PID === undefined || env.WATCHDOG_PID === '' || env.WATCHDOG_PID === String(pid);
  return { socketPath, watchdogUsec: usec !== undefined && usec > 0 && forPid ? usec : undefined };
}

interface UnixDgramSocket {
  send(buf: Buffer, offset: number, length: number, path: string, cb: (err?: Error) => void): void;
  on(event: 'error', listener: (err: Error) => void): void;
  close(): void;
}
interface UnixDgramModule {
  createSocket(type: 'unix_dgram'): UnixDgramSocket;
}

/** The default transport: a fresh unix datagram socket per message, closed right after the send. */
export function unixDgramSender(): DatagramSender {
  let mod: UnixDgramModule | undefined;
  return async (socketPath, message) => {
    if (!mod) {
      try {
        mod = createRequire(import.meta.url)('unix-dgram') as UnixDgramModule;
      } catch (cause) {
        throw new SlotflipError(
          'DAEMON_NOTIFY_UNAVAILABLE',
          'sd-notify: the unix-dgram native addon is not installed (or not built for this Node); install it with slotflip, or run the unit with Type=simple and no WatchdogSec=',
          { cause },
        );
      }
    }
    const sock = mod.createSocket('unix_dgram');
    try {
      await new Promise<void>((resolve, reject) => {
        sock.on('error', reject);
        sock.send(message, 0, message.length, socketPath, (err) => (err ? reject(err) : resolve()));
      });
    } finally {
      sock.close();
    }
  };
}

function checkSocketPath(socketPath: string): void {
  if (socketPath.startsWith('@')) {
    throw new SlotflipError(
      'DAEMON_NOTIFY_SOCKET',
      `sd-notify: NOTIFY_SOCKET "${socketPath}" is an abstract socket, which slotflip cannot address; run under systemd's /run/systemd/notify or give a socket path`,
      { details: { socketPath } },
    );
  }
  // sun_path holds 108 bytes with the terminating NUL; the addon would silently truncate a longer one.
  if (Buffer.byteLength(socketPath) > 107) {
    throw new SlotflipError('DAEMON_NOTIFY_SOCKET', `sd-notify: NOTIFY_SOCKET "${socketPath}" is longer than the 107 bytes a unix socket path may have`, {
      details: { socketPath },
    });
  }
  if (!socketPath.startsWith('/')) {
    throw new SlotflipError('DAEMON_NOTIFY_SOCKET', `sd-notify: NOTIFY_SOCKET "${socketPath}" is not an absolute path`, {
      details: { socketPath },
    });
  }
}

/** Builds a notifier. Validates the socket path at once (DAEMON_NOTIFY_SOCKET); sends nothing yet. */
export function createNotifier(options: NotifierOptions): Notifier {
  const { socketPath } = options;
  if (socketPath !== undefined) checkSocketPath(socketPath);
  const send = options.send ?? unixDgramSender();
  const onError = options.onError ?? (() => undefined);
  const enabled = socketPath !== undefined;
  const usec = options.watchdogUsec;
  const watchdogIntervalMs = enabled && usec !== undefined && usec > 0 ? Math.max(1, Math.floor(usec / 2000)) : undefined;
  let timer: NodeJS.Timeout | undefined;

  async function notify(lines: string[]): Promise<void> {
    if (socketPath === undefined) return;
    try {
      await send(socketPath, Buffer.from(lines.join('\n') + '\n', 'utf8'));
    } catch (cause) {
      if (cause instanceof SlotflipError) throw cause;
      throw new SlotflipError('DAEMON_NOTIFY_SEND', `sd-notify: sending to ${socketPath} failed; check NotifyAccess= and that the socket exists`, {
        cause,
        retryable: true,
        details: { socketPath, lines: lines.map((l) => l.split('=')[0]) },
      });
    }
  }

  const statusLine = (text: string): string => `STATUS=${text.replace(/[\r\n]+/g, ' ')}`;

  function pingInBackground(): void {
    notify(['WATCHDOG=1']).catch((e: unknown) => {
      onError(
        e instanceof SlotflipError ? e : new SlotflipError('DAEMON_NOTIFY_SEND', 'sd-notify: watchdog ping failed', { cause: e, retryable: true }),
      );
    });
  }

  return {
    enabled,
    watchdogIntervalMs,
    ready: (status) => notify(status === undefined ? ['READY=1'] : ['READY=1', statusLine(status)]),
    status: (text) => notify([statusLine(text)]),
    stopping: () => notify(['STOPPING=1']),
    ping: () => notify(['WATCHDOG=1']),
    startWatchdog() {
      if (timer !== undefined || watchdogIntervalMs === undefined) return;
      pingInBackground();
      // On the event loop on purpose: a loop that stops turning stops the pings.
      timer = setInterval(pingInBackground, watchdogIntervalMs);
      timer.unref();
    },
    stop() {
      if (timer !== undefined) clearInterval(timer);
      timer = undefined;
    },
  };
}

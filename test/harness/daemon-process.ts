/**
 * `slotflip daemon` as a separate process for integration tests: spawned with the same Node flags
 * as the test (tap's TypeScript loader, transpile-only for start-up speed), stdout parsed as pino
 * JSON lines. `kill()` is a power cut (SIGKILL: nothing is flushed, nothing is said); `stop()` is a
 * clean shutdown (SIGTERM). Only this harness's own child pid is ever signalled.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../../daemon/cli.ts', import.meta.url));

export interface DaemonProcess {
  child: ChildProcess;
  /** parsed log lines so far. */
  lines: Record<string, unknown>[];
  /** stderr text so far (capped). */
  stderr(): string;
  /** resolves with the first log line (already seen or future) matching `pred`. */
  waitFor(pred: (line: Record<string, unknown>) => boolean, timeoutMs?: number, what?: string): Promise<Record<string, unknown>>;
  /** SIGKILL (a power cut) and wait for the exit. Idempotent. */
  kill(): Promise<void>;
  /** SIGTERM (clean stop) and wait for the exit code. */
  stop(timeoutMs?: number): Promise<number | null>;
}

export function startDaemonProcess(configPath: string, opts: { env?: NodeJS.ProcessEnv } = {}): DaemonProcess {
  const child = spawn(process.execPath, [...process.execArgv, CLI, 'daemon', '--config', configPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1', ...opts.env },
  });
  const lines: Record<string, unknown>[] = [];
  const waiters = new Set<{ pred: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }>();
  let buf = '';
  let err = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const text = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!text.trim()) continue;
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(text) as Record<string, unknown>;
      } catch {
        line = { msg: text, unparsed: true };
      }
      lines.push(line);
      for (const w of [...waiters]) if (w.pred(line)) { waiters.delete(w); w.resolve(line); }
    }
  });
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (c: string) => { if (err.length < 65536) err += c; });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    child,
    lines,
    stderr: () => err,
    waitFor(pred, timeoutMs = 60_000, what = 'log line') {
      const seen = lines.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const w = { pred, resolve: (l: Record<string, unknown>) => { clearTimeout(timer); resolve(l); } };
        const timer = setTimeout(() => {
          waiters.delete(w);
          reject(new Error(`daemon: no ${what} within ${timeoutMs} ms; stderr: ${err.slice(-2000)}; last lines: ${JSON.stringify(lines.slice(-5))}`));
        }, timeoutMs);
        waiters.add(w);
        void exited.then((code) => {
          if (!waiters.has(w)) return;
          waiters.delete(w);
          clearTimeout(timer);
          reject(new Error(`daemon exited (${code}) before ${what}; stderr: ${err.slice(-2000)}`));
        });
      });
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
    async stop(timeoutMs = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

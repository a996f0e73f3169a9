/**
 * Running external tools (fw_printenv, grub-editenv, zstd, health-check commands).
 *
 * Always an argument array, never a shell string: nothing from a manifest, the broker or the network
 * may reach a shell. Output is capped so a misbehaving tool cannot exhaust memory, and every call has
 * a timeout. The runner is an interface so tests and fault injection can wrap it.
 */
import { execFile } from 'node:child_process';
import { SlotflipError } from './errors.js';

export interface ToolResult {
  stdout: string;
  stderr: string;
  /** exit code; null when killed by a signal (timeout included). */
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
}

export interface ToolOptions {
  timeoutMs?: number;
  /** cap on stdout and stderr each, bytes; output beyond it fails the call. */
  maxOutputBytes?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  input?: string | Buffer;
}

export interface ToolRunner {
  /** Runs `cmd` with `args`; resolves with the result whatever the exit code; rejects only when the
   * tool cannot be started (HAL_TOOL_MISSING) or its output exceeds the cap (HAL_TOOL_OUTPUT). */
  run(cmd: string, args: readonly string[], options?: ToolOptions): Promise<ToolResult>;
}

export const DEFAULT_TOOL_TIMEOUT_MS = 30_000;
export const DEFAULT_TOOL_OUTPUT_BYTES = 1 << 20;

export const execTool: ToolRunner = {
  run(cmd, args, options = {}) {
    return new Promise((resolve, reject) => {
      const child = execFile(
        cmd,
        [...args],
        {
          timeout: options.timeoutMs ?? DEFAULT_TOOL_TIMEOUT_MS,
          maxBuffer: options.maxOutputBytes ?? DEFAULT_TOOL_OUTPUT_BYTES,
          env: options.env,
          cwd: options.cwd,
          encoding: 'utf8',
          killSignal: 'SIGKILL',
        },
        (err, stdout, stderr) => {
          if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') {
            reject(new SlotflipError('HAL_TOOL_MISSING', `${cmd}: not found; install it or set its path in the config`, { cause: err, details: { cmd } }));
            return;
          }
          if (err && (err as NodeJS.ErrnoException).code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER') {
            reject(new SlotflipError('HAL_TOOL_OUTPUT', `${cmd}: output larger than ${options.maxOutputBytes ?? DEFAULT_TOOL_OUTPUT_BYTES} bytes`, { cause: err, details: { cmd } }));
            return;
          }
          const e = err as (NodeJS.ErrnoException & { code?: number | string; killed?: boolean; signal?: NodeJS.Signals }) | null;
          resolve({
            stdout,
            stderr,
            code: e ? (typeof e.code === 'number' ? e.code : null) : 0,
            signal: e?.signal ?? null,
            timedOut: Boolean(e?.killed && e.signal === 'SIGKILL'),
          });
        },
      );
      if (options.input !== undefined) child.stdin?.end(options.input);
      else child.stdin?.end();
    });
  },
};

/** Runs a tool and throws `code` unless it exits 0. */
export async function runChecked(runner: ToolRunner, code: string, cmd: string, args: readonly string[], options?: ToolOptions): Promise<ToolResult> {
  const r = await runner.run(cmd, args, options);
  if (r.code !== 0) {
    const why = r.timedOut ? 'timed out' : r.signal ? `killed by ${r.signal}` : `exit ${r.code}`;
    throw new SlotflipError(code, `${cmd}: ${why}: ${r.stderr.trim().slice(0, 500)}`, { details: { cmd, args: [...args], code: r.code } });
  }
  return r;
}

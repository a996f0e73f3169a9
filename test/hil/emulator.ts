/**
 * Runs an emulator (qemu-system-*, grub-emu) as one "power-on": stdin from /dev/null, the serial
 * console on stdout, the whole run under coreutils `timeout` so a hung guest can never hang the test
 * run. Every started process is recorded in an `EmulatorTracker`; its `killAll()` (call it from
 * `t.teardown`) kills exactly those pids, nothing by name.
 *
 * Output is capped (a guest that loops printing cannot exhaust memory); the cap is generous for the
 * few KiB a bootloader prints.
 */
import { spawn } from 'node:child_process';

export interface PowerOnResult {
  /** serial console (stdout + stderr interleaved as received). */
  console: string;
  /** exit code of the emulator (or of `timeout`: 124 when the time ran out). */
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  /** true when `until` matched and the run was ended by the tracker. */
  stoppedOnMatch: boolean;
  durationMs: number;
}

export interface RunOptions {
  timeoutMs: number;
  cwd?: string;
  /** cap on captured console bytes. */
  maxOutputBytes?: number;
  /** end the run (kill the process group) as soon as the console matches: a firmware that sits in
   * a menu after an error never powers off by itself. */
  until?: RegExp;
}

export class EmulatorTracker {
  private readonly live = new Set<number>();

  /** Starts `cmd args` under `timeout`, resolves when it exits. Never rejects for a guest failure. */
  run(cmd: string, args: readonly string[], opts: RunOptions): Promise<PowerOnResult> {
    const cap = opts.maxOutputBytes ?? 4 * 1024 * 1024;
    const secs = Math.max(1, Math.ceil(opts.timeoutMs / 1000));
    const started = Date.now();
    return new Promise((resolve, reject) => {
      const child = spawn('timeout', ['--kill-after=2', `${secs}s`, cmd, ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
        cwd: opts.cwd,
        // own process group: teardown kills `timeout` and the emulator together by the group id
        detached: true,
      });
      const chunks: Buffer[] = [];
      let size = 0;
      let stoppedOnMatch = false;
      const take = (b: Buffer): void => {
        if (size >= cap) return;
        chunks.push(b.subarray(0, cap - size));
        size += b.length;
        if (opts.until && !stoppedOnMatch && child.pid !== undefined && opts.until.test(Buffer.concat(chunks).toString('utf8'))) {
          stoppedOnMatch = true;
          try {
            process.kill(-child.pid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
      };
      child.stdout.on('data', take);
      child.stderr.on('data', take);
      if (child.pid !== undefined) this.live.add(child.pid);
      child.on('error', (err) => {
        if (child.pid !== undefined) this.live.delete(child.pid);
        reject(err);
      });
      child.on('close', (code, signal) => {
        if (child.pid !== undefined) this.live.delete(child.pid);
        resolve({
          console: Buffer.concat(chunks).toString('utf8'),
          code,
          signal,
          timedOut: !stoppedOnMatch && (code === 124 || code === 137),
          stoppedOnMatch,
          durationMs: Date.now() - started,
        });
      });
    });
  }

  /** Kills every still-running emulator this tracker started: the process group of each recorded pid. */
  killAll(): void {
    for (const pid of this.live) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    this.live.clear();
  }

  get running(): number {
    return this.live.size;
  }
}

/**
 * Runs an emulator (qemu-system-*, grub-emu) as one "power-on": stdin from /dev/null, the serial
 * console on stdout, the whole run under coreutils `timeout` so a hung guest can never hang the test
 * run. Every started process is recorded in an `EmulatorTracker`; its `killAll()` (call it from
 * `t.teardown`) kills exactly those pids, nothing by name.
 *
 * The console goes to a temporary FILE, read while the emulator runs, not to a pipe: QEMU makes its
 * stdout non-blocking and writes the serial port one byte per write(); on Node's stdio (a socketpair,
 * where a 1-byte write takes hundreds of bytes of socket buffer) a reader a few hundred bytes behind
 * under load made QEMU get EAGAIN, retry four times and DROP characters (seen here: a GRUB EFI line
 * came out as `cmdlinc.slot=B`). A file never refuses a write.
 *
 * Output is capped (a guest that loops printing cannot exhaust memory; the run is killed when the
 * file passes max(64 MiB, 2 × cap)); the cap is generous for the few KiB a bootloader prints.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, open, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

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
  async run(cmd: string, args: readonly string[], opts: RunOptions): Promise<PowerOnResult> {
    const cap = opts.maxOutputBytes ?? 4 * 1024 * 1024;
    const runaway = Math.max(64 * 1024 * 1024, 2 * cap);
    const secs = Math.max(1, Math.ceil(opts.timeoutMs / 1000));
    const dir = await mkdtemp(join(tmpdir(), 'slotflip-emu-'));
    const logPath = join(dir, 'console');
    const out = await open(logPath, 'a');
    const reader = await open(logPath, 'r');
    try {
      return await this.watch(cmd, args, opts, { cap, runaway, secs, out: out.fd, reader });
    } finally {
      await out.close().catch(() => undefined);
      await reader.close().catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    }
  }

  private watch(
    cmd: string,
    args: readonly string[],
    opts: RunOptions,
    io: { cap: number; runaway: number; secs: number; out: number; reader: FileHandle },
  ): Promise<PowerOnResult> {
    const started = Date.now();
    return new Promise((resolve, reject) => {
      const child = spawn('timeout', ['--kill-after=2', `${io.secs}s`, cmd, ...args], {
        stdio: ['ignore', io.out, io.out],
        cwd: opts.cwd,
        // own process group: teardown kills `timeout` and the emulator together by the group id
        detached: true,
      });
      const chunks: Buffer[] = [];
      let size = 0; // bytes kept (≤ cap)
      let pos = 0; // bytes read from the file
      let stoppedOnMatch = false;
      let busy: Promise<void> = Promise.resolve();
      const killGroup = (): void => {
        if (child.pid === undefined) return;
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      };
      const pump = async (): Promise<void> => {
        const { size: fileSize } = await io.reader.stat();
        if (fileSize > io.runaway) killGroup();
        const before = size;
        while (pos < fileSize && size < io.cap) {
          const want = Math.min(fileSize - pos, io.cap - size, 1 << 20);
          const buf = Buffer.alloc(want);
          const { bytesRead } = await io.reader.read(buf, 0, want, pos);
          if (bytesRead === 0) break;
          pos += bytesRead;
          chunks.push(buf.subarray(0, bytesRead));
          size += bytesRead;
        }
        if (opts.until && !stoppedOnMatch && size > before && opts.until.test(Buffer.concat(chunks).toString('utf8'))) {
          stoppedOnMatch = true;
          killGroup();
        }
      };
      const tick = (): void => {
        busy = busy.then(pump).catch(() => undefined);
      };
      const timer = setInterval(tick, 20);
      if (child.pid !== undefined) this.live.add(child.pid);
      child.on('error', (err) => {
        clearInterval(timer);
        if (child.pid !== undefined) this.live.delete(child.pid);
        reject(err);
      });
      child.on('close', (code, signal) => {
        clearInterval(timer);
        if (child.pid !== undefined) this.live.delete(child.pid);
        tick(); // what was written after the last poll
        void busy.then(() =>
          resolve({
            console: Buffer.concat(chunks).toString('utf8'),
            code,
            signal,
            timedOut: !stoppedOnMatch && (code === 124 || code === 137),
            stoppedOnMatch,
            durationMs: Date.now() - started,
          }),
        );
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

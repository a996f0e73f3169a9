/**
 * Decompressors for one transfer: compressed bytes in, image bytes out through a push callback.
 *
 * zstd runs as the `zstd` CLI (argv array, no shell) when it is installed: it decompresses on the
 * second core while Node hashes and writes, and it beat node:zlib's built-in zstd on time at half the
 * peak RSS (test/bench/zstd-decode-bench.ts, 256 MiB in 4 MiB frames: 0.82 s and 61 MiB against
 * 0.89 s and 129 MiB). Without the CLI (`zstdDecoder: 'auto'`, the default) the built-in one decodes
 * (thread pool; Node 24 and later: Node 22's stops after the first frame, see `builtinZstd`), so a
 * device image needs no zstd package; `'cli'` / `'zlib'` force one. gzip goes through the same CLI
 * by default (it detects the format; Debian builds it with zlib). Its output
 * goes through a FIFO read with `net.Socket` `onread` straight into the installer's chunk buffers, so the
 * hot path neither copies nor allocates per read and memory stays flat. Every decoder here is done
 * with an input buffer when that write's callback runs (the installer reuses its input ring then);
 * 'none' is a Writable that hands each write to the sink before calling back. A local payload file can be
 * handed to zstd as its stdin descriptor (`stdinFd`), but the installer does so only when no check of
 * the compressed bytes applies (releases carry packedSha256 or a target hash: those bytes pass
 * through Node to be hashed, see installer.ts). Measured again on Node 24.22 (zstd-decode-bench, 256
 * MiB, best of 3, load ~13): CLI 1.05 s wall, 0.77 s CPU, 61 MiB tree; built-in 1.25 s, 0.57 s CPU,
 * 128 MiB: the CLI stays the default, the built-in decoder the fallback.
 * `gzipDecoder: 'zlib'` uses node:zlib instead (thread pool; concatenated members are one stream).
 * A new decoder runs for every transfer because a resumed transfer starts at a frame boundary.
 *
 * Setting up is split in two: `prepareDecoder` does the asynchronous part (the FIFO) BEFORE the
 * source is opened, and `PreparedDecoder.start` is synchronous. A caller that opens an HTTP response
 * and then awaits anything before consuming it loses a connection reset that happens meanwhile: the
 * response is destroyed with its buffered bytes, and its 'error'/'close' go to no listener (Node emits
 * an IncomingMessage's 'error' only when it has listeners), so the cut is noticed only by the stall
 * watchdog and the next transfer restarts from the first chunk instead of resuming.
 */
import { spawn } from 'node:child_process';
import net from 'node:net';
import { delimiter, isAbsolute, join } from 'node:path';
import { type Readable, Writable } from 'node:stream';
import zlib, { createGunzip } from 'node:zlib';
import { SlotflipError } from '../../hal/errors.js';
import { execTool, runChecked, type ToolRunner } from '../../hal/exec.js';
import type { Compression } from '../../manifests/types.js';
import { nodeFs } from '../../hal/builtins.js';
const { accessSync, closeSync, constants: fsc, openSync, unlinkSync } = nodeFs;

/** Receives image bytes; must consume `piece` before returning (its memory is reused). Returning
 * false pauses the decoder until `resume()`. */
export type Sink = (piece: Buffer) => boolean;

export interface Decoder {
  /** where compressed bytes go; undefined when the decoder reads the source descriptor itself. */
  input: Writable | undefined;
  /** no more input: for a transfer that ended or broke off. Output of complete frames already given
   * is still delivered before `done` settles. */
  finishInput(): void;
  /** starts delivering output to `sink`; call once. When `nextBuffer` is given and the decoder can,
   * each read lands directly in the buffer it returns (zero copy); `sink` then gets a view of it. */
  start(sink: Sink, nextBuffer?: () => Buffer): void;
  /** resumes delivery after the sink returned false. */
  resume(): void;
  /** resolves when all output was delivered and the decoder finished cleanly; rejects with
   * INSTALL_DECOMPRESS when the data was corrupt or truncated. */
  done: Promise<void>;
  /** stops the decoder (kills the child process); idempotent. */
  kill(): void;
}

export interface DecoderOptions {
  zstdPath?: string;
  /** gzip through the `zstd` CLI (Debian's decodes gzip too: another core, flat memory; default) or
   * node:zlib (in-process; its output buffers are garbage, so peak RSS grows by tens of MiB). */
  gzipDecoder?: 'zstd-cli' | 'zlib';
  /** zstd through the `zstd` CLI, node:zlib's built-in zstd (Node >= 24, see `builtinZstd`), or
   * 'auto' (default): the CLI when `zstdPath` (default `zstd`, looked up on PATH) is there, else the
   * built-in one. Without the CLI, 'auto' decodes gzip with node:zlib too. */
  zstdDecoder?: 'auto' | 'cli' | 'zlib';
  /** directory for the short-lived FIFO (unlinked as soon as both ends are open). */
  fifoDir: string;
  /** a descriptor positioned at the first compressed byte: zstd reads it directly. */
  stdinFd?: number;
  runner?: ToolRunner;
}

const BUF = 1 << 20;
let fifoSeq = 0;

type ZstdDecompressFactory = (opts?: zlib.ZlibOptions) => Writable & Readable & { flush(cb: () => void): void };
/** node:zlib's zstd (Node >= 22.15 / 23.8); undefined on older Node. Looked up at run time: the
 * project's @types/node predates it. */
const createZstdDecompress = (zlib as unknown as { createZstdDecompress?: ZstdDecompressFactory }).createZstdDecompress;

/** True when this Node has a built-in zstd decoder that reads concatenated frames (the payload
 * format). Node 22's (22.23 here) stops after the first frame without an error, so it is probed once
 * with two one-byte frames ('a', 'b') rather than trusted by version. */
export const builtinZstd = ((): boolean => {
  const sync = (zlib as unknown as { zstdDecompressSync?: (b: Buffer) => Buffer }).zstdDecompressSync;
  if (!createZstdDecompress || !sync) return false;
  try {
    return sync(Buffer.from('28b52ffd0458090000615b6e8ca928b52ffd0458090000629b9ff31a', 'hex')).toString() === 'ab';
  } catch {
    return false;
  }
})();

const cliFound = new Map<string, boolean>();
/** Whether `bin` names an executable, looked up the way spawn's execvp does (PATH for a bare name);
 * cached per name for the process's lifetime. */
function zstdCliFound(bin: string): boolean {
  let found = cliFound.get(bin);
  if (found !== undefined) return found;
  const executable = (p: string): boolean => {
    try {
      accessSync(p, fsc.X_OK);
      return true;
    } catch {
      return false;
    }
  };
  // the same lookup execvp does when spawn starts the CLI: PATH is the process's own, not configuration
  found = bin.includes('/') ? executable(isAbsolute(bin) ? bin : join(process.cwd(), bin)) : (process.env.PATH ?? '/usr/bin:/bin').split(delimiter).some((d) => d !== '' && executable(join(d, bin)));
  cliFound.set(bin, found);
  return found;
}

/** Which zstd decoder `opts` selects: 'auto' falls back to the built-in one only when the CLI is
 * missing and this Node has one (otherwise the CLI's start-up error names what to install). */
export function zstdDecoderFor(opts: Pick<DecoderOptions, 'zstdDecoder' | 'zstdPath'>): 'cli' | 'zlib' {
  const want = opts.zstdDecoder ?? 'auto';
  if (want === 'zlib' && !builtinZstd) throw new SlotflipError('INSTALL_DECOMPRESS', `zstd: node ${process.version} has no built-in zstd that reads concatenated frames (Node 24 does); install the zstd CLI and set zstdDecoder to cli`);
  if (want !== 'auto') return want;
  return builtinZstd && !zstdCliFound(opts.zstdPath ?? 'zstd') ? 'zlib' : 'cli';
}

/** True when the decoder for `compression` is a child process that can read a descriptor itself. */
export function decodesInChild(compression: Compression, opts: Pick<DecoderOptions, 'gzipDecoder' | 'zstdDecoder' | 'zstdPath'>): boolean {
  if (compression === 'none') return false;
  if (compression === 'gzip' && (opts.gzipDecoder ?? 'zstd-cli') !== 'zstd-cli') return false;
  return zstdDecoderFor(opts) === 'cli';
}

/** A decoder whose asynchronous setup is done; starting it does not yield to the event loop. */
export interface PreparedDecoder {
  /** starts the decoder synchronously (no await, no I/O callback in between). `stdinFd`: a descriptor
   * positioned at the first compressed byte that the child reads itself (only when `decodesInChild`).
   * Call at most once; afterwards the Decoder owns every resource. */
  start(stdinFd?: number): Decoder;
  /** frees what `prepareDecoder` set up when `start` was never called; idempotent, no-op after start. */
  dispose(): void;
}

/** The asynchronous part of a decoder's setup (the FIFO for the `zstd` CLI); do it before opening the
 * source so that nothing awaits between opening the source and consuming it. */
export async function prepareDecoder(compression: Compression, opts: Omit<DecoderOptions, 'stdinFd'>): Promise<PreparedDecoder> {
  if (decodesInChild(compression, opts)) return prepareZstd(opts);
  let used = false;
  return {
    start() {
      if (used) throw new Error('decoder already started');
      used = true;
      if (compression === 'none') return passDecoder();
      const s: Writable & Readable = compression === 'gzip' ? createGunzip({ chunkSize: BUF }) : createZstdDecompress!({ chunkSize: BUF });
      return streamDecoder(s, compression);
    },
    dispose() {
      used = true;
    },
  };
}

/** prepareDecoder + start in one step. */
export async function startDecoder(compression: Compression, opts: DecoderOptions): Promise<Decoder> {
  return (await prepareDecoder(compression, opts)).start(opts.stdinFd);
}

/**
 * No compression: each write goes to the sink before its callback runs, so a caller may reuse the
 * written buffer as soon as the callback fired (the installer's input ring does). While the sink is
 * paused the callback waits for `resume`, and later writes queue in the Writable (not yet called back).
 */
function passDecoder(): Decoder {
  let sink: Sink | undefined;
  let held: (() => void) | undefined;
  let waiting: { chunk: Buffer; cb: (e?: Error | null) => void } | undefined;
  const deliver = (chunk: Buffer, cb: (e?: Error | null) => void): void => {
    if (sink!(chunk)) cb();
    else held = cb;
  };
  const w = new Writable({
    highWaterMark: BUF,
    write(chunk: Buffer, _enc, cb) {
      if (sink === undefined) waiting = { chunk, cb };
      else deliver(chunk, cb);
    },
  });
  const done = new Promise<void>((resolve, reject) => {
    w.on('finish', resolve);
    w.on('error', (cause) => reject(new SlotflipError('INSTALL_DECOMPRESS', 'none: stopped', { cause, retryable: true })));
    w.on('close', () => {
      if (!w.writableFinished) reject(new SlotflipError('INSTALL_DECOMPRESS', 'none: stopped', { retryable: true }));
    });
  });
  done.catch(() => undefined);
  return {
    input: w,
    finishInput: () => void w.end(),
    start(s) {
      if (sink) return;
      sink = s;
      const q = waiting;
      waiting = undefined;
      if (q) deliver(q.chunk, q.cb);
    },
    resume() {
      const cb = held;
      held = undefined;
      cb?.();
    },
    done,
    kill: () => void w.destroy(),
  };
}

function streamDecoder(s: Writable & Readable, compression: Compression): Decoder {
  let started = false;
  const done = new Promise<void>((resolve, reject) => {
    s.on('end', resolve);
    s.on('error', (cause) => reject(new SlotflipError('INSTALL_DECOMPRESS', `${compression}: payload data is corrupt`, { cause, retryable: true })));
    s.on('close', () => {
      if (!s.readableEnded) reject(new SlotflipError('INSTALL_DECOMPRESS', `${compression}: stopped`, { retryable: true }));
    });
  });
  done.catch(() => undefined);
  return {
    input: s,
    finishInput() {
      if (compression === 'none') {
        s.end();
        return;
      }
      // zlib fails a truncated member (gzip) or frame (zstd) at end() and drops output it has not
      // delivered yet: flush and wait until everything decodable was taken before ending the input
      const gz = s as ReturnType<typeof createGunzip>;
      gz.flush(() => {
        const wait = (): void => {
          if (gz.destroyed) return;
          if (gz.readableLength > 0) setTimeout(wait, 1);
          else gz.end();
        };
        wait();
      });
    },
    start(sink) {
      if (started) return;
      started = true;
      s.on('data', (d: Buffer) => {
        if (!sink(d)) s.pause();
      });
    },
    resume: () => s.resume(),
    done,
    kill: () => s.destroy(),
  };
}

async function prepareZstd(opts: Omit<DecoderOptions, 'stdinFd'>): Promise<PreparedDecoder> {
  const fifo = join(opts.fifoDir, `.slotflip-zstd.${process.pid}.${++fifoSeq}.fifo`);
  await runChecked(opts.runner ?? execTool, 'INSTALL_DECOMPRESS', 'mkfifo', ['-m', '600', fifo]);
  let rfd = -1;
  let wfd = -1;
  try {
    // reader first (non-blocking), so opening the writer returns at once
    rfd = openSync(fifo, fsc.O_RDONLY | fsc.O_NONBLOCK);
    wfd = openSync(fifo, fsc.O_WRONLY);
  } catch (e) {
    if (rfd >= 0) closeSync(rfd);
    throw e;
  } finally {
    unlinkSync(fifo);
  }
  let used = false;
  return {
    start(stdinFd) {
      if (used) throw new Error('decoder already started');
      used = true;
      return startZstd(opts, rfd, wfd, stdinFd);
    },
    dispose() {
      if (used) return;
      used = true;
      closeSync(rfd);
      closeSync(wfd);
    },
  };
}

function startZstd(opts: Omit<DecoderOptions, 'stdinFd'>, readFd: number, wfd: number, stdinFd: number | undefined): Decoder {
  const bin = opts.zstdPath ?? 'zstd';
  let rfd = readFd;
  let child: ReturnType<typeof spawn>;
  try {
    child = spawn(bin, ['-d', '-c', '-q'], { stdio: [stdinFd ?? 'pipe', wfd, 'pipe'] });
  } catch (e) {
    closeSync(rfd);
    throw e;
  } finally {
    closeSync(wfd);
  }
  let killed = false;
  let err = '';
  child.stderr!.on('data', (d: Buffer) => {
    if (err.length < 2048) err += d.toString();
  });
  child.stdin?.on('error', () => undefined); // EPIPE after zstd quit: reported through `done`
  const exited = new Promise<void>((resolve, reject) => {
    child.on('error', (cause) => reject(new SlotflipError('INSTALL_DECOMPRESS', `${bin}: cannot start; install zstd or set its path`, { cause, details: { cmd: bin } })));
    child.on('close', (code, signal) => {
      if (code === 0) resolve();
      else if (killed) reject(new SlotflipError('INSTALL_DECOMPRESS', `${bin}: stopped`, { retryable: true }));
      else reject(new SlotflipError('INSTALL_DECOMPRESS', `${bin}: payload data is corrupt or truncated (${signal ?? `exit ${code}`}): ${err.trim().slice(0, 300)}`, { retryable: true, details: { cmd: bin, code } }));
    });
  });
  exited.catch(() => undefined);
  let sock: net.Socket | undefined;
  let endResolve!: () => void;
  let endReject!: (e: unknown) => void;
  const ended = new Promise<void>((resolve, reject) => {
    endResolve = resolve;
    endReject = reject;
  });
  ended.catch(() => undefined);
  // all output first (a failing zstd still wrote every complete frame before it), then the exit status
  const done = ended.then(() => exited);
  done.catch(() => undefined);
  // only when the caller gives no buffer to read into (the installer always does: no copy)
  let readBuf: Buffer | undefined;
  return {
    input: child.stdin ?? undefined,
    finishInput() {
      child.stdin?.end();
    },
    start(sink, nextBuffer) {
      if (sock) return;
      // `onread` (reused buffer) is supported by the Socket constructor but missing from its typings
      const sockOpts: net.SocketConstructorOpts & { onread: { buffer: Buffer | (() => Buffer); callback: (n: number, b: Buffer) => boolean } } = {
        fd: rfd,
        readable: true,
        writable: false,
        onread: { buffer: nextBuffer ?? (readBuf ??= Buffer.allocUnsafeSlow(BUF)), callback: (n, b) => sink(b.subarray(0, n)) },
      };
      sock = new net.Socket(sockOpts);
      sock.on('end', endResolve);
      sock.on('error', (cause) => endReject(new SlotflipError('INSTALL_DECOMPRESS', `${bin}: reading its output failed`, { cause, retryable: true })));
      sock.on('close', () => endReject(new SlotflipError('INSTALL_DECOMPRESS', `${bin}: output closed early`, { retryable: true })));
    },
    resume: () => sock?.resume(),
    done,
    kill() {
      if (child.exitCode === null && child.signalCode === null) {
        killed = true;
        child.kill('SIGKILL');
      }
      if (sock) sock.destroy();
      else if (rfd >= 0) closeSync(rfd);
      rfd = -1;
    },
  };
}

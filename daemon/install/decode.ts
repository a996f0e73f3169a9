/**
 * Decompressors for one transfer: compressed bytes in, image bytes out through a push callback.
 *
 * zstd, when the caller knows the transfer's frames (the installer: one frame per chunk, from the
 * chunk index), is decoded frame by frame in-process (`frameDecoder`, 'frames') on one stream on the
 * thread pool, fed the compressed bytes as they arrive, each frame straight into a buffer the
 * installer offers for the whole chunk (a piece, or a region of contiguous pieces; else one buffer of
 * the decoder's own that the installer copies from in slices); output is handed on as it is decoded,
 * so the main thread hashes one slice while the pool decodes the next. This is the default ('auto')
 * wherever Node has a built-in zstd (Node 22.15+, 24, 26); no child
 * process, no pipe (the CLI's pipes copied every image byte twice). Figures: see the commit that made
 * it the default (issue 24). `zstdDecoder: 'cli'` keeps the CLI.
 * Without known frames (or a frame past zstd's bound for its chunk) zstd runs as the `zstd` CLI (argv
 * array, no shell) when it is installed: it decompresses on the second core while Node hashes and
 * writes. Without the CLI the built-in stream decoder decodes (thread pool; Node 24 and later: Node
 * 22's stops after the first frame of one input, see `builtinZstd`), so a device image needs no zstd
 * package; `'cli'` / `'zlib'` / `'frames'` force one. gzip goes through the same CLI by default (it
 * detects the format; Debian builds it with zlib). The CLI's output goes through a FIFO read with
 * `net.Socket` `onread` straight into the installer's chunk buffers. Every decoder here is done
 * with an input buffer when that write's callback runs (the installer reuses its input ring then);
 * 'none' is a Writable that hands each write to the sink before calling back. A local payload file can be
 * handed to zstd as its stdin descriptor (`stdinFd`), but the installer does so only when no check of
 * the compressed bytes applies (releases carry packedSha256 or a target hash: those bytes pass
 * through Node to be hashed, see installer.ts). The built-in stream decoder measured against the CLI
 * (zstd-decode-bench, 256 MiB, Node 24.22, load ~13): CLI 1.05 s wall, 0.77 s CPU, 61 MiB tree;
 * stream 1.25 s, 0.57 s CPU, 128 MiB (its output buffers are garbage; the frame decoder's are not).
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

/** Where the decoder's next output should land (see `Decoder.start`). */
export type NextBuffer = (whole?: number) => Buffer | undefined;

export interface Decoder {
  /** where compressed bytes go; undefined when the decoder reads the source descriptor itself. */
  input: Writable | undefined;
  /** no more input: for a transfer that ended or broke off. Output of complete frames already given
   * is still delivered before `done` settles. */
  finishInput(): void;
  /** starts delivering output to `sink`; call once. When `nextBuffer` is given and the decoder can,
   * each read lands directly in the buffer it returns (zero copy); `sink` then gets a view of it.
   * The frame decoder asks with `whole` (its next frame's output length): the sink returns a buffer
   * of at least that many bytes, or a shorter one (the frame then decodes into the decoder's own
   * buffer), or undefined: not now, and calls `resume()` once it can. */
  start(sink: Sink, nextBuffer?: NextBuffer): void;
  /** resumes delivery after the sink returned false, or after `nextBuffer` returned undefined. */
  resume(): void;
  /** resolves when all output was delivered and the decoder finished cleanly; rejects with
   * INSTALL_DECOMPRESS when the data was corrupt or truncated. */
  done: Promise<void>;
  /** stops the decoder (kills the child process); idempotent. */
  kill(): void;
  /** resolves once the decoder writes into no buffer `nextBuffer` returned any more (after `kill`,
   * the in-process frame decoder may still be filling one on the thread pool): a caller reuses its
   * buffers only then. */
  idle(): Promise<void>;
}

export interface DecoderOptions {
  zstdPath?: string;
  /** gzip through the `zstd` CLI (Debian's decodes gzip too: another core, flat memory; default) or
   * node:zlib (in-process; its output buffers are garbage, so peak RSS grows by tens of MiB). */
  gzipDecoder?: 'zstd-cli' | 'zlib';
  /** zstd through the `zstd` CLI, node:zlib's built-in zstd (Node >= 24, see `builtinZstd`), or
   * 'auto' (default): the CLI when `zstdPath` (default `zstd`, looked up on PATH) is there, else the
   * built-in one. Without the CLI, 'auto' decodes gzip with node:zlib too. */
  zstdDecoder?: 'auto' | 'cli' | 'zlib' | 'frames';
  /** the frames this transfer's compressed bytes consist of (one per chunk, from the chunk index):
   * given, zstd is decoded frame by frame in-process (`'frames'`, the default where this Node has a
   * built-in zstd, see `zstdFrames`). */
  frames?: FrameList;
  /** directory for the short-lived FIFO (unlinked as soon as both ends are open). */
  fifoDir: string;
  /** a descriptor positioned at the first compressed byte: zstd reads it directly. */
  stdinFd?: number;
  runner?: ToolRunner;
}

/** The compressed frames of one transfer, in order: frame `i` is `lengths[i]` bytes of input and
 * decodes to `outLength(i)` image bytes (chunk i of the transfer). */
export interface FrameList {
  lengths: readonly number[];
  outLength: (i: number) => number;
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

/** True when this Node has a built-in zstd decoder at all (Node >= 22.15 / 23.8): enough to decode
 * the payload frame by frame ('frames'), Node 22's included. */
export const zstdFrames = createZstdDecompress !== undefined && typeof (zlib as unknown as { zstdDecompressSync?: unknown }).zstdDecompressSync === 'function';

/** A frame longer than this (for `chunk` image bytes) is not decoded in-process (the stream or the
 * CLI takes the transfer): zstd's bound for a chunk is its length plus 1/256 and a few hundred bytes. */
export function frameInputCap(chunk: number): number {
  return chunk + (chunk >> 6) + (64 << 10);
}

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

/** Which zstd decoder `opts` selects. With `framed` (the caller hands over whole frames of a known
 * index: `frames` for a transfer, one frame for preflight), 'auto' takes the in-process frame decoder
 * wherever this Node has a built-in zstd (Node 22 too); otherwise it falls back to the built-in
 * stream decoder only when the CLI is missing and this Node has one (otherwise the CLI's start-up
 * error names what to install). */
export function zstdDecoderFor(opts: Pick<DecoderOptions, 'zstdDecoder' | 'zstdPath'>, framed = false): 'cli' | 'zlib' | 'frames' {
  const want = opts.zstdDecoder ?? 'auto';
  if (want === 'zlib' && !builtinZstd) throw new SlotflipError('INSTALL_DECOMPRESS', `zstd: node ${process.version} has no built-in zstd that reads concatenated frames (Node 24 does); install the zstd CLI and set zstdDecoder to cli`);
  if (want === 'frames' && !zstdFrames) throw new SlotflipError('INSTALL_DECOMPRESS', `zstd: node ${process.version} has no built-in zstd (Node >= 22.15 has); install the zstd CLI and set zstdDecoder to cli`);
  if (want === 'frames') return framed ? 'frames' : builtinZstd ? 'zlib' : 'cli';
  if (want !== 'auto') return want;
  if (framed && zstdFrames) return 'frames';
  return builtinZstd && !zstdCliFound(opts.zstdPath ?? 'zstd') ? 'zlib' : 'cli';
}

/** Whether `frames` can be decoded one by one in-process: every frame within `frameInputCap`. */
function framesFit(frames: FrameList | undefined): frames is FrameList {
  if (frames === undefined || frames.lengths.length === 0) return false;
  for (let i = 0; i < frames.lengths.length; i++) if (frames.lengths[i]! > frameInputCap(frames.outLength(i))) return false;
  return true;
}

/** True when `prepareDecoder` decodes `compression` with the in-process frame decoder (it then asks
 * the sink for a buffer of a whole chunk per frame: see `Decoder.start`). */
export function decodesFrames(compression: Compression, opts: Pick<DecoderOptions, 'zstdDecoder' | 'zstdPath' | 'frames'>): boolean {
  return compression === 'zstd' && framesFit(opts.frames) && zstdDecoderFor(opts, true) === 'frames';
}

/** True when the decoder for `compression` is a child process that can read a descriptor itself. */
export function decodesInChild(compression: Compression, opts: Pick<DecoderOptions, 'gzipDecoder' | 'zstdDecoder' | 'zstdPath' | 'frames'>): boolean {
  if (compression === 'none') return false;
  if (compression === 'gzip' && (opts.gzipDecoder ?? 'zstd-cli') !== 'zstd-cli') return false;
  return zstdDecoderFor(opts, compression === 'zstd' && framesFit(opts.frames)) === 'cli';
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
  const frames = decodesFrames(compression, opts) ? opts.frames : undefined;
  let used = false;
  return {
    start() {
      if (used) throw new Error('decoder already started');
      used = true;
      if (compression === 'none') return passDecoder();
      if (frames) return frameDecoder(frames);
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
    idle: () => Promise.resolve(),
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
    idle: () => Promise.resolve(),
  };
}

/** compressed bytes go to zstd in calls of up to this (two such staging buffers; see frameDecoder):
 * one call per 64 KiB socket read cost ~0.4 s more thread-pool CPU per GiB than whole frames did */
const STAGE = 512 << 10;

interface Stage {
  buf: Buffer;
  len: number;
  /** holds the last bytes of its frame */
  endsFrame: boolean;
}

/** output a frame decoded into the decoder's own buffer reaches the sink in slices of at most this
 * (the installer's carry then holds at most one slice when it has no free chunk buffer). */
const SLICE = 256 << 10;

/** A promise settled from outside (Promise.withResolvers, Node >= 22, is not in the ES2023 lib this
 * builds against); a rejection nobody awaits yet is not an unhandled one. */
function settledLater(): { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void } {
  let resolve!: () => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<void>((ok, fail) => {
    resolve = ok;
    reject = fail;
  });
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

/** node:zlib's stream internals the frame decoder lends its output buffer through. */
interface ZlibOut {
  _outBuffer?: Buffer;
  _outOffset?: number;
  _chunkSize?: number;
}

/**
 * zstd in-process, one frame after another on ONE reused stream (the chunk index says where each
 * frame ends), on the thread pool. The compressed bytes go to zstd as they arrive, gathered in two
 * staging buffers of 512 KiB (STAGE: zstd decodes one while the other fills), cut at frame
 * boundaries: no frame is gathered whole first. Each frame's output lands in one buffer lent to the stream for the whole
 * frame: the sink's next buffer when that holds the whole chunk (the installer's piece, or a region
 * of its contiguous pieces: zero copy; the sink may also say "not now" and resume the decoder once it
 * has one), else one buffer of the decoder's own (chunk-sized, allocated at first use), whose bytes
 * the sink copies in slices. Output reaches the sink as it is decoded, so the main thread hashes one
 * slice while the pool decodes the next. No child process, no pipe: the CLI's pipes copied every
 * image byte twice and woke both processes per 64 KiB.
 *
 * Why streaming and not one pass per whole frame: the payload's frames (release add, the zstd CLI
 * reading a pipe) carry no content size, so zstd decodes them through its window buffer (2 MiB at
 * the default level) whichever way they are fed; gathering a whole frame first only added two
 * frame-sized input buffers (2 x 3.6 MiB for the bench image). Issue 16/24: see the commits.
 *
 * Lending the buffer uses node:zlib's stream internals (`_outBuffer`, `_outOffset`, `_chunkSize`:
 * unchanged from Node 12 to 26), set only between writes (no write in flight); where they differ,
 * Node's own output buffers arrive instead and the sink copies them: slower, never wrong (what
 * reaches the sink is whatever zstd decoded, and the installer verifies every chunk). A write never
 * spans two frames, so Node 22's built-in zstd, which stops after the first frame of ONE input,
 * decodes frame after frame as well. A frame that yields more than its chunk fails the transfer at
 * once (INSTALL_DECOMPRESS), one that yields less when its last byte was decoded too, before any
 * later frame's input goes in.
 */
function frameDecoder(frames: FrameList): Decoder {
  const n = frames.lengths.length;
  let maxOut = 0;
  for (let i = 0; i < n; i++) maxOut = Math.max(maxOut, frames.outLength(i));
  let own: Buffer | undefined;
  /** decoded bytes not yet taken by the sink, in order (views of the lent buffer) */
  const out: Buffer[] = [];
  /** the frame the next compressed byte belongs to, and how many of its bytes went to zstd */
  let frame = 0;
  let frameIn = 0;
  /** what the frame being decoded yielded so far, and its chunk's length */
  let got = 0;
  let want = 0;
  let target: Buffer | undefined;
  /** compressed bytes are gathered in two staging buffers (STAGE): zstd decodes one while the other
   * fills; a stage holds bytes of one frame only and goes to zstd when full or when its frame ends */
  const stages: Stage[] = [];
  /** the stage being filled, and the stages full or ending a frame, oldest first */
  let filling: Stage | undefined;
  const ready: Stage[] = [];
  /** the frame the next input byte belongs to, and how many of its bytes came in */
  let inFrame = 0;
  let inFrameBytes = 0;
  /** an input write not yet all copied into a stage (both were busy): its callback waits */
  let waitingWrite: { chunk: Buffer; from: number; cb: () => void } | undefined;
  let delivering = false;

  /** copies input from `chunk[from..]` into stages; returns how far it got (short: no free stage) */
  const takeInput = (chunk: Buffer, from: number): number => {
    let p = from;
    while (p < chunk.length) {
      if (inFrame >= n) {
        settle(new SlotflipError('INSTALL_DECOMPRESS', `zstd: more compressed bytes than the ${n} frames the chunk index lists`, { retryable: true }));
        return chunk.length;
      }
      if (!filling) {
        filling = stages.find((g) => g.len === 0 && !ready.includes(g) && g !== writingStage);
        if (!filling && stages.length < 2) stages.push((filling = { buf: Buffer.allocUnsafeSlow(STAGE), len: 0, endsFrame: false }));
        if (!filling) return p;
      }
      const take = Math.min(frames.lengths[inFrame]! - inFrameBytes, STAGE - filling.len, chunk.length - p);
      chunk.copy(filling.buf, filling.len, p, p + take);
      filling.len += take;
      inFrameBytes += take;
      p += take;
      if (inFrameBytes === frames.lengths[inFrame]) {
        filling.endsFrame = true;
        inFrame++;
        inFrameBytes = 0;
      }
      if (filling.endsFrame || filling.len === STAGE) {
        ready.push(filling);
        filling = undefined;
      }
    }
    return p;
  };
  let writingStage: Stage | undefined;
  let writing = false;
  let inputEnded = false;
  let stopped = false;
  let settled = false;
  let paused = false;
  let sink: Sink | undefined;
  let nextBuffer: NextBuffer | undefined;
  /** `nextBuffer` said "not now" for the next frame: it resumes us */
  let waitingTarget = false;
  const idleWaiters: Array<() => void> = [];
  const { promise: done, resolve: resolveDone, reject: rejectDone } = settledLater();
  let s: ReturnType<ZstdDecompressFactory> | undefined;

  const closeStream = (): void => {
    // a write still on the pool ends first (its buffers are in use until then): see the write's callback
    if (!writing && s) {
      s.destroy();
      s = undefined;
    }
  };
  const settle = (e?: SlotflipError): void => {
    if (settled) return;
    settled = true;
    closeStream();
    if (e) rejectDone(e);
    else resolveDone();
  };

  const stream = (): ReturnType<ZstdDecompressFactory> => {
    if (s) return s;
    const z = createZstdDecompress!({ chunkSize: 64 });
    z.on('data', (d: Buffer) => {
      if (settled) return;
      got += d.length;
      if (got > want) {
        settle(new SlotflipError('INSTALL_DECOMPRESS', `zstd: frame ${frame} decodes to more than its chunk's ${want} bytes`, { retryable: true }));
        return;
      }
      // the lent buffer is full: whatever follows (nothing, for a well-formed frame) comes in small
      // ones (node:zlib allocates a new output buffer of _chunkSize after a full one)
      if (got === want) (z as unknown as ZlibOut)._chunkSize = 64;
      out.push(d);
      // handed on after this callback: the write's own callback (next, in the same turn) gives zstd
      // the next input first, so the pool decodes while this thread hashes
      if (!delivering) {
        delivering = true;
        process.nextTick(() => {
          delivering = false;
          deliver();
          pump();
        });
      }
    });
    z.on('error', (cause) => settle(new SlotflipError('INSTALL_DECOMPRESS', 'zstd: payload data is corrupt', { cause, retryable: true })));
    s = z;
    return z;
  };

  function deliver(): void {
    while (!paused && !settled && out.length > 0) {
      const d = out[0]!;
      let piece = d;
      // in place: as it is, where the sink asked for it; else in slices (it copies them)
      if ((target === undefined || d.buffer !== target.buffer) && d.length > SLICE) {
        piece = d.subarray(0, SLICE);
        out[0] = d.subarray(SLICE);
      } else out.shift();
      if (!sink!(piece)) {
        paused = true;
        return;
      }
    }
  }

  /** feeds zstd the next slice of input (one write at a time), starting a frame when everything
   * before it was delivered */
  function pump(): void {
    if (settled) return;
    if (waitingWrite) {
      const w = waitingWrite;
      const p = takeInput(w.chunk, w.from);
      if (p < w.chunk.length) w.from = p;
      else {
        waitingWrite = undefined;
        w.cb();
      }
    }
    if (stopped || writing || !sink) return;
    // input ended inside a stage that neither filled nor ended its frame: what came goes to zstd
    if (inputEnded && !waitingWrite && filling && filling.len > 0) {
      ready.push(filling);
      filling = undefined;
    }
    const stage = ready[0];
    if (!stage) {
      if (inputEnded && !waitingWrite && out.length === 0) {
        if (frameIn > 0) settle(new SlotflipError('INSTALL_DECOMPRESS', `zstd: payload data is truncated inside frame ${frame} (${frameIn} of ${frames.lengths[frame] ?? 0} bytes)`, { retryable: true }));
        else settle();
      }
      return;
    }
    if (frameIn === 0) {
      // a frame starts once the one before was delivered: its output buffer (the sink's next one, or
      // the decoder's own) is free then
      if (paused || out.length > 0) return;
      want = frames.outLength(frame);
      got = 0;
      const t = nextBuffer?.(want);
      if (nextBuffer !== undefined && t === undefined) {
        waitingTarget = true;
        return;
      }
      // one byte more than the chunk where the buffer has it (the sink's guard, the decoder's own): a
      // frame that fills its chunk then leaves room, and node:zlib does not go back to the pool once
      // more to look for further output (a second round trip per frame, queued behind the slot's
      // I/O); a byte past the chunk fails the frame (see 'data')
      target = t !== undefined && t.length >= want ? t.subarray(0, Math.min(t.length, want + 1)) : (own ??= Buffer.allocUnsafeSlow(maxOut + 1)).subarray(0, want + 1);
      const z = stream() as unknown as ZlibOut;
      // lend the buffer as the stream's output for the whole frame (node:zlib internals, see above)
      if (Buffer.isBuffer(z._outBuffer) && typeof z._outOffset === 'number' && typeof z._chunkSize === 'number') {
        z._outBuffer = target;
        z._outOffset = 0;
        z._chunkSize = target.length;
      }
      if (target.buffer !== t?.buffer) target = undefined; // the decoder's own: handed over in slices
    }
    const len = frames.lengths[frame]!;
    const take = stage.len;
    ready.shift();
    writing = true;
    writingStage = stage;
    const z = stream();
    z.write(stage.buf.subarray(0, take), (e) => {
      writing = false;
      if (e) settle(new SlotflipError('INSTALL_DECOMPRESS', 'zstd: payload data is corrupt', { cause: e, retryable: true }));
      if (settled) {
        closeStream();
        for (const w of idleWaiters.splice(0)) w();
        return;
      }
      for (const w of idleWaiters.splice(0)) w();
      // the stage is free again (not while zstd may still read it: see `settled` above)
      stage.len = 0;
      stage.endsFrame = false;
      writingStage = undefined;
      frameIn += take;
      if (frameIn === len) {
        // the frame's input is all decoded: it must have yielded its whole chunk
        if (got !== want) {
          settle(new SlotflipError('INSTALL_DECOMPRESS', `zstd: frame ${frame} decodes to ${got} bytes, its chunk has ${want}`, { retryable: true }));
          closeStream();
          return;
        }
        frame++;
        frameIn = 0;
      }
      pump();
    });
  }

  const input = new Writable({
    highWaterMark: BUF,
    write(chunk: Buffer, _enc, cb) {
      if (settled || stopped) {
        cb();
        return;
      }
      // copied into a stage: the caller may reuse `chunk` once `cb` ran
      const p = takeInput(chunk, 0);
      if (p < chunk.length) waitingWrite = { chunk, from: p, cb: () => cb() };
      else cb();
      pump();
    },
    final(cb) {
      inputEnded = true;
      cb();
      pump();
    },
  });
  input.on('error', () => undefined);
  return {
    input,
    finishInput: () => void input.end(),
    start(sk, nb) {
      if (sink) return;
      sink = sk;
      nextBuffer = nb;
      pump();
    },
    resume() {
      if (!paused && !waitingTarget) return;
      paused = false;
      waitingTarget = false;
      deliver();
      pump();
    },
    done,
    kill() {
      if (stopped) return;
      stopped = true;
      // a write in flight finishes on its own (its output is dropped): see idle()
      settle(new SlotflipError('INSTALL_DECOMPRESS', 'zstd: stopped', { retryable: true }));
      waitingWrite = undefined;
      input.destroy();
    },
    idle: () => (!writing ? Promise.resolve() : new Promise<void>((resolve) => idleWaiters.push(resolve))),
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
  const { promise: ended, resolve: endResolve, reject: endReject } = settledLater();
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
        onread: { buffer: nextBuffer ? () => nextBuffer() ?? (readBuf ??= Buffer.allocUnsafeSlow(BUF)) : (readBuf ??= Buffer.allocUnsafeSlow(BUF)), callback: (n, b) => sink(b.subarray(0, n)) },
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
    // the FIFO is read on this thread: once destroyed, nothing lands in a buffer any more
    idle: () => Promise.resolve(),
  };
}

/**
 * Preflight: what can be learned about a payload without touching the device, checked before the
 * inactive slot is marked bad. That slot usually holds the previous good release (the device's last
 * way back), so a release that cannot be installed must be refused while it is still intact.
 *
 * It opens the payload at offset 0 with the signed length (a missing file, a server error, or a file
 * shorter or longer than signed is refused by the source itself: INSTALL_HTTP_STATUS,
 * INSTALL_PAYLOAD_TRUNCATED, INSTALL_PAYLOAD_OVERSIZED), reads exactly the first chunk's compressed
 * frame, checks its compressed bytes against the frame's signed `packedSha256` (format 2:
 * INSTALL_PACKED_HASH_MISMATCH), decompresses it (capped at one chunk) and compares its SHA-256 with
 * the signed index (INSTALL_CHUNK_HASH_MISMATCH, INSTALL_DECOMPRESS). Cost: one request, one chunk. Nothing is written.
 * The frame is decoded the way the install will decode it (decode.ts): in-process where Node has a
 * built-in zstd (no process spawned before the install's first byte), else by the zstd CLI.
 *
 * Trade-off: only the first chunk is proven; a payload corrupt further on is still caught chunk by
 * chunk before each write (after the mark-bad). Proving all of it first would download it twice.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import zlib, { gunzipSync } from 'node:zlib';
import { isCoded, SlotflipError } from '../../hal/errors.js';
import { readFull } from '../../hal/read-full.js';
import { frameInputCap, startDecoder, zstdDecoderFor } from './decode.js';
import type { PayloadInfo } from '../../manifests/types.js';
import type { OpenedStream, PayloadSource } from './source.js';

/** the reused buffer the zstd CLI's output is read into (with a FIFO directory). */
const PREFLIGHT_READ = 64 << 10;

export interface PreflightOptions {
  payload: PayloadInfo;
  /** the signed payload (compressed file) length. */
  length: number;
  source: PayloadSource;
  /** mirror to ask (default 0). */
  index?: number;
  zstdPath?: string;
  /** which zstd decoder (decode.ts's `zstdDecoderFor`, as for the install: 'auto' decodes the frame
   * in-process where Node has a built-in zstd, else with the CLI, or the built-in stream decoder when the
   * CLI is missing). */
  zstdDecoder?: 'auto' | 'cli' | 'zlib' | 'frames';
  /** whole preflight, ms (default 60 000). */
  timeoutMs?: number;
  /** a directory for the zstd CLI's short-lived output FIFO (the installer's, decode.ts), where the CLI
   * decodes: its output is
   * then read into one reused buffer. Without it the output comes through a pipe, a fresh 64 KiB
   * Buffer per read (a chunk's worth of malloc'd memory, ~3 MiB of the install's peak RSS). */
  fifoDir?: string;
}

/** Throws a coded INSTALL_* error when the payload cannot be installed as signed; resolves otherwise. */
export async function preflightPayload(o: PreflightOptions): Promise<void> {
  const first = o.payload.chunks[0];
  if (!first) return; // structure is judged at selection (manifests/validate.ts)
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), o.timeoutMs ?? 60_000);
  let opened: OpenedStream | undefined;
  try {
    // just the first frame (a bounded Range): the source still checks the file's total length
    opened = await o.source.open(o.index ?? 0, first.offset, o.length, ac.signal, first.offset + first.length);
    const frame = await readExactly(opened, first.offset, first.length, ac.signal);
    // format 2: the frame's own signed hash first (the TUF promise: the bytes fetched are the bytes
    // signed), before anything decodes it
    if (first.packedSha256 !== undefined) {
      const packed = createHash('sha256').update(frame).digest('hex');
      if (packed !== first.packedSha256) {
        throw new SlotflipError('INSTALL_PACKED_HASH_MISMATCH', `${opened.where}: chunk 0's compressed frame (payload bytes ${first.offset}..${first.offset + first.length}) has SHA-256 ${packed}, the signed index says ${first.packedSha256}; the payload on the server is not the one that was signed (nothing was changed on this device)`, {
          details: { where: opened.where, chunk: 0, payloadOffset: first.offset, expected: first.packedSha256, actual: packed },
        });
      }
    }
    const cap = Math.min(o.payload.chunkSize, o.payload.size);
    const got = await decompressedSha256(o.payload.compression, frame, cap, o.zstdPath, o.zstdDecoder, o.fifoDir);
    if (got !== first.sha256) {
      throw new SlotflipError('INSTALL_CHUNK_HASH_MISMATCH', `${opened.where}: chunk 0 decodes to SHA-256 ${got}, the signed index says ${first.sha256}; the payload on the server is not the one that was signed (nothing was changed on this device)`, {
        details: { where: opened.where, chunk: 0, expected: first.sha256, actual: got },
      });
    }
  } finally {
    clearTimeout(timer);
    opened?.close();
  }
}

/** Reads `[offset, offset+len)` of the payload from an opened stream or descriptor, then stops. */
async function readExactly(s: OpenedStream, offset: number, len: number, signal: AbortSignal): Promise<Buffer> {
  const out = Buffer.alloc(len);
  if (s.fd !== undefined) {
    if ((await readFull(s.fd, out, 0, len, offset)) < len) throw new SlotflipError('INSTALL_PAYLOAD_TRUNCATED', `${s.where}: ends inside chunk 0`, { details: { where: s.where } });
    return out;
  }
  const stream = s.stream!;
  let pos = s.start; // a server that ignored Range starts at 0
  let got = 0;
  await new Promise<void>((resolve, reject) => {
    const onAbort = () => reject(new SlotflipError('INSTALL_STALLED', `${s.where}: the first chunk did not arrive in time`, { retryable: true, details: { where: s.where } }));
    signal.addEventListener('abort', onAbort, { once: true });
    const done = (e?: Error) => {
      signal.removeEventListener('abort', onAbort);
      stream.removeAllListeners('data');
      if (e) reject(e);
      else resolve();
    };
    stream.on('data', (b: Buffer) => {
      const from = Math.max(0, offset - pos);
      const until = Math.min(b.length, offset + len - pos);
      if (until > from) {
        b.copy(out, got, from, until);
        got += until - from;
      }
      pos += b.length;
      if (got >= len) done();
    });
    stream.once('end', () => (got >= len ? done() : done(new SlotflipError('INSTALL_PAYLOAD_TRUNCATED', `${s.where}: ends inside chunk 0`, { details: { where: s.where } }))));
    stream.once('error', (cause) => done(new SlotflipError('INSTALL_NETWORK', `${s.where}: transfer failed while reading chunk 0`, { cause, retryable: true, details: { where: s.where } })));
  });
  return out;
}

/**
 * SHA-256 (hex) of the frame decompressed, output capped at `cap` bytes. The zstd CLI's output is
 * hashed as it arrives and not kept: a chunk-sized Buffer.concat of it (4 MiB, one mmap) stayed
 * resident through the whole install that follows, because V8 frees a Buffer's memory only when a
 * garbage collection finds it dead, and the streaming install makes almost no JS garbage to
 * trigger one (issue 16: `slotflip install` peak tree RSS, see the commit). With `fifoDir` the
 * output is read into one reused buffer (decode.ts's FIFO), not a fresh Buffer per pipe read.
 */
async function decompressedSha256(compression: PayloadInfo['compression'], frame: Buffer, cap: number, zstdPath = 'zstd', zstdDecoder?: PreflightOptions['zstdDecoder'], fifoDir?: string): Promise<string> {
  const corrupt = (cause?: unknown) => new SlotflipError('INSTALL_DECOMPRESS', `${compression}: chunk 0 of the payload is corrupt (nothing was changed on this device)`, { ...(cause ? { cause } : {}) });
  const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
  if (compression === 'none') return sha(frame);
  if (compression === 'gzip') {
    try {
      return sha(gunzipSync(frame, { maxOutputLength: cap }));
    } catch (e) {
      throw corrupt(e);
    }
  }
  // zstd: the decoder the installer will use (a device without the CLI decodes with Node's own, as
  // the install does: preflight must not refuse what the install can do), output capped at one chunk.
  // Where this Node has a built-in zstd that is the in-process frame decoder (decode.ts), as for the
  // install: no mkfifo and zstd processes spawned before the first byte of the install (issue 24)
  const kind = zstdDecoderFor({ zstdPath, ...(zstdDecoder ? { zstdDecoder } : {}) }, frame.length <= frameInputCap(cap));
  if (kind === 'frames') return framedSha256(frame, cap, corrupt);
  if (kind === 'zlib') {
    try {
      return sha((zlib as unknown as { zstdDecompressSync: (b: Buffer, o: { maxOutputLength: number }) => Buffer }).zstdDecompressSync(frame, { maxOutputLength: cap }));
    } catch (e) {
      throw corrupt(e);
    }
  }
  // the installer's zstd decoder: output through a FIFO into one reused buffer, nothing per read;
  // where the FIFO cannot be made (mkfifo missing, the directory not writable) the pipe below
  const dec = fifoDir === undefined ? undefined : await startDecoder('zstd', { zstdPath, zstdDecoder: 'cli', fifoDir }).catch(() => undefined);
  if (dec !== undefined) {
    const hash = createHash('sha256');
    const piece = Buffer.allocUnsafeSlow(PREFLIGHT_READ);
    let size = 0;
    dec.start(
      (b) => {
        size += b.length;
        if (size > cap) {
          dec.kill();
          return false;
        }
        hash.update(b);
        return true;
      },
      () => piece,
    );
    dec.input!.write(frame);
    dec.finishInput();
    try {
      await dec.done;
    } catch (e) {
      throw size > cap ? corrupt() : isCoded(e, 'INSTALL_DECOMPRESS') && /cannot start/.test(e.message) ? e : corrupt(e);
    } finally {
      dec.kill();
    }
    if (size > cap) throw corrupt();
    return hash.digest('hex');
  }
  return new Promise<string>((resolve, reject) => {
    const child = spawn(zstdPath, ['-d', '-c', '-q'], { stdio: ['pipe', 'pipe', 'ignore'] });
    const hash = createHash('sha256');
    let size = 0;
    child.stdout.on('data', (b: Buffer) => {
      size += b.length;
      if (size > cap) {
        child.kill('SIGKILL');
        reject(corrupt());
        return;
      }
      hash.update(b);
    });
    child.on('error', (cause) => reject(new SlotflipError('INSTALL_DECOMPRESS', `zstd: cannot run ${zstdPath}`, { cause })));
    child.on('close', (code) => (code === 0 && size <= cap ? resolve(hash.digest('hex')) : reject(corrupt())));
    child.stdin.on('error', () => undefined);
    child.stdin.end(frame);
  });
}

/**
 * SHA-256 (hex) of one zstd frame decoded in-process by decode.ts's frame decoder (thread pool), the
 * way the install decodes it, straight into one buffer of `cap` bytes that is freed (detached) as soon
 * as it is hashed: a garbage buffer of a chunk's size would stay resident through the install that
 * follows (V8 frees it only at a garbage collection the streaming install hardly triggers; see
 * `decompressedSha256`). A frame that decodes past `cap` bytes is corrupt.
 */
async function framedSha256(frame: Buffer, cap: number, corrupt: (cause?: unknown) => SlotflipError): Promise<string> {
  const out = Buffer.allocUnsafeSlow(cap);
  const hash = createHash('sha256');
  const dec = await startDecoder('zstd', { zstdDecoder: 'frames', frames: { lengths: [frame.length], outLength: () => cap }, fifoDir: '' });
  try {
    dec.start(
      (b) => {
        hash.update(b);
        return true;
      },
      () => out,
    );
    dec.input!.end(frame);
    await dec.done;
    return hash.digest('hex');
  } catch (e) {
    throw corrupt(e);
  } finally {
    dec.kill();
    await dec.idle();
    // nothing decodes into it any more: give its memory back now, not at some later GC
    (out.buffer as ArrayBuffer & { transfer?: (n: number) => ArrayBuffer }).transfer?.(0);
  }
}

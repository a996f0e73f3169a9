/**
 * Building a payload from an image: the image is cut into fixed-size chunks and each chunk is
 * compressed on its own (one zstd frame or one gzip member per chunk, concatenated), so an installer
 * can start a download at any chunk's compressed offset and verify every chunk against the signed
 * index before writing it.
 *
 * Trade-off: independent frames compress a little worse than one long stream (the window restarts
 * every chunk); in exchange resume never starts over and memory stays bounded on both sides.
 *
 * zstd runs as the `zstd` CLI (argv array, never a shell), one process per chunk, a few in parallel;
 * gzip uses node:zlib on the thread pool. Memory: about `concurrency × 2 × chunkSize`.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { dirname, basename, join } from 'node:path';
import { gzip as gzipCb, constants as zlibConstants } from 'node:zlib';
import { SlotflipError } from '../hal/errors.js';
import { fsyncDir } from '../hal/atomic-file.js';
import type { ChunkEntry, Compression, PayloadInfo } from './types.js';
import { nodeUtil } from '../hal/builtins.js';
const { promisify } = nodeUtil;

const gzip = promisify(gzipCb);

/** 4 MiB: big enough that per-frame overhead is negligible, small enough that a resume re-fetches little. */
export const DEFAULT_CHUNK_SIZE = 4 << 20;
/** Smallest and largest chunk sizes accepted (the installer holds a few chunks in memory). */
export const MIN_CHUNK_SIZE = 4 << 10;
export const MAX_CHUNK_SIZE = 64 << 20;

export interface BuildPayloadOptions {
  compression: Compression;
  /** uncompressed chunk size in bytes; DEFAULT_CHUNK_SIZE is a good choice. */
  chunkSize: number;
  /** zstd level (default 3) or gzip level (default 6). */
  level?: number;
  /** chunks compressed in parallel (default: available cores). */
  concurrency?: number;
  /** path of the zstd binary (default `zstd` from PATH). */
  zstdPath?: string;
}

export interface BuiltPayload {
  payload: PayloadInfo;
  /** length of the payload file in bytes. */
  length: number;
  /** SHA-256 (hex) of the payload file. */
  sha256: string;
}

/**
 * Reads `imagePath`, writes the chunked payload to `outPath` (atomically: temp file, fsync, rename)
 * and returns the chunk index (every chunk with `packedSha256`, the SHA-256 of its compressed frame)
 * plus the payload file's length and hash. Throws MANIFEST_PAYLOAD_BUILD
 * when the image cannot be read or a compressor fails; `outPath` is then left untouched.
 */
export async function buildPayload(imagePath: string, outPath: string, opts: BuildPayloadOptions): Promise<BuiltPayload> {
  const { compression, chunkSize } = opts;
  if (!Number.isInteger(chunkSize) || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE) {
    throw new SlotflipError('MANIFEST_PAYLOAD_BUILD', `chunk size ${chunkSize} is outside ${MIN_CHUNK_SIZE}..${MAX_CHUNK_SIZE} bytes; pick e.g. ${DEFAULT_CHUNK_SIZE}`, { details: { chunkSize } });
  }
  if (compression !== 'zstd' && compression !== 'gzip' && compression !== 'none') {
    throw new SlotflipError('MANIFEST_PAYLOAD_BUILD', `unknown compression ${String(compression)}; use zstd, gzip or none`, { details: { compression } });
  }
  const concurrency = Math.max(1, opts.concurrency ?? availableParallelism());
  const compress = compressorFor(compression, opts);

  let input;
  try {
    input = await open(imagePath, 'r');
  } catch (cause) {
    throw new SlotflipError('MANIFEST_PAYLOAD_BUILD', `cannot open image ${imagePath}; check the path`, { cause, details: { imagePath } });
  }
  const tmp = join(dirname(outPath), `.${basename(outPath)}.${process.pid}.tmp`);
  let output;
  try {
    const { size } = await input.stat();
    const chunkCount = Math.ceil(size / chunkSize);
    output = await open(tmp, 'w', 0o644);
    const imageHash = createHash('sha256');
    const fileHash = createHash('sha256');
    const chunks: ChunkEntry[] = [];
    let offset = 0;

    // All-zero chunks (unused space in filesystem images, sparse files) are common: their frame and
    // hashes are computed once per length and reused, instead of one compressor run each.
    const zero = Buffer.alloc(Math.min(chunkSize, size));
    const zeroFrames = new Map<number, Promise<Built>>();
    const build = async (raw: Buffer): Promise<Built> => {
      const packed = await compress(raw);
      return { packed, sha256: createHash('sha256').update(raw).digest('hex'), packedSha256: createHash('sha256').update(packed).digest('hex') };
    };
    const readAndCompress = async (index: number): Promise<{ raw: Buffer } & Built> => {
      const len = Math.min(chunkSize, size - index * chunkSize);
      const raw = Buffer.allocUnsafe(len);
      let got = 0;
      while (got < len) {
        const { bytesRead } = await input!.read(raw, got, len - got, index * chunkSize + got);
        if (bytesRead === 0) throw new SlotflipError('MANIFEST_PAYLOAD_BUILD', `image ${imagePath} shrank while being read`, { details: { imagePath, index } });
        got += bytesRead;
      }
      if (raw.equals(zero.subarray(0, len))) {
        let frame = zeroFrames.get(len);
        if (!frame) {
          frame = build(raw);
          zeroFrames.set(len, frame);
        }
        return { raw, ...(await frame) };
      }
      return { raw, ...(await build(raw)) };
    };

    // A sliding window of `concurrency` chunks in flight; results are consumed strictly in order.
    const inflight: Promise<{ raw: Buffer } & Built>[] = [];
    let next = 0;
    const fill = (): void => {
      while (next < chunkCount && inflight.length < concurrency) {
        const p = readAndCompress(next++);
        p.catch(() => undefined); // consumed below; avoid an unhandled rejection while queued
        inflight.push(p);
      }
    };
    fill();
    for (let i = 0; i < chunkCount; i++) {
      const { raw, packed, sha256, packedSha256 } = await inflight.shift()!;
      fill();
      // packedSha256: the frame's own hash, taken from the bytes being written (no second pass)
      chunks.push({ sha256, offset, length: packed.length, packedSha256 });
      imageHash.update(raw);
      fileHash.update(packed);
      await output.write(packed, 0, packed.length, offset);
      offset += packed.length;
    }
    await output.sync();
    await output.close();
    output = undefined;
    await rename(tmp, outPath);
    await fsyncDir(dirname(outPath));
    return {
      payload: { compression, size, sha256: imageHash.digest('hex'), chunkSize, chunks },
      length: offset,
      sha256: fileHash.digest('hex'),
    };
  } catch (cause) {
    if (output) await output.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    if (cause instanceof SlotflipError) throw cause;
    throw new SlotflipError('MANIFEST_PAYLOAD_BUILD', `building payload ${outPath} from ${imagePath} failed; check disk space and the image`, { cause, details: { imagePath, outPath } });
  } finally {
    await input.close().catch(() => undefined);
  }
}

type Compressor = (raw: Buffer) => Promise<Buffer>;

/** One chunk, compressed and hashed (raw and compressed). */
interface Built {
  packed: Buffer;
  sha256: string;
  packedSha256: string;
}

function compressorFor(compression: Compression, opts: BuildPayloadOptions): Compressor {
  if (compression === 'none') return async (raw) => raw;
  if (compression === 'gzip') {
    const level = opts.level ?? 6;
    return (raw) => gzip(raw, { level, memLevel: 9, strategy: zlibConstants.Z_DEFAULT_STRATEGY });
  }
  const level = opts.level ?? 3;
  const bin = opts.zstdPath ?? 'zstd';
  return (raw) => zstdCompress(bin, level, raw);
}

/** One zstd frame for `raw` (with content size and checksum), from the CLI. */
function zstdCompress(bin: string, level: number, raw: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ['-q', `-${level}`, '-T1', '--content-size', '-c', '-'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => {
      if (err.length < 4096) err += d.toString();
    });
    child.on('error', (cause) => {
      reject(new SlotflipError('MANIFEST_PAYLOAD_BUILD', `${bin}: cannot start; install zstd or set its path`, { cause, details: { cmd: bin } }));
    });
    child.on('close', (code, signal) => {
      if (code === 0) resolve(Buffer.concat(out));
      else reject(new SlotflipError('MANIFEST_PAYLOAD_BUILD', `${bin}: compression failed (${signal ?? `exit ${code}`}): ${err.trim().slice(0, 300)}`, { details: { cmd: bin, code } }));
    });
    child.stdin.on('error', () => undefined); // reported through 'close'
    child.stdin.end(raw);
  });
}

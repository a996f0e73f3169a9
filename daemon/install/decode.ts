/**
 * Decompressors for one transfer: compressed bytes in, image bytes out.
 *
 * zstd runs as the `zstd` CLI (argv array, no shell): on this machine it is the fastest option by far
 * (see machine-facts) and it decompresses on the second core while Node hashes and writes. gzip uses
 * node:zlib (thread pool; concatenated members are one stream). A new decoder is started for every
 * transfer because a resumed transfer starts at a frame boundary.
 */
import { spawn } from 'node:child_process';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { SlotflipError } from '../../hal/errors.js';
import type { Compression } from '../../manifests/types.js';

export interface Decoder {
  input: Writable;
  output: Readable;
  /** resolves when the decoder finished cleanly; rejects with INSTALL_DECOMPRESS otherwise. */
  done: Promise<void>;
  /** stops the decoder (kills the child process); idempotent. */
  kill(): void;
}

const BUF = 1 << 20;

export function startDecoder(compression: Compression, zstdPath = 'zstd'): Decoder {
  if (compression === 'none') {
    const p = new PassThrough({ highWaterMark: BUF });
    p.on('error', () => undefined); // only ever destroyed by us
    const done = new Promise<void>((resolve) => p.on('end', resolve));
    return { input: p, output: p, done, kill: () => p.destroy() };
  }
  if (compression === 'gzip') {
    const z = createGunzip({ chunkSize: BUF });
    const done = new Promise<void>((resolve, reject) => {
      z.on('end', resolve);
      z.on('error', (cause) => reject(new SlotflipError('INSTALL_DECOMPRESS', 'gzip: payload data is corrupt', { cause, retryable: true })));
    });
    done.catch(() => undefined);
    return { input: z, output: z, done, kill: () => z.destroy() };
  }
  const child = spawn(zstdPath, ['-d', '-c', '-q', '--no-progress'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let killed = false;
  let err = '';
  child.stderr.on('data', (d: Buffer) => {
    if (err.length < 2048) err += d.toString();
  });
  child.stdin.on('error', () => undefined); // EPIPE after zstd quit: reported through `done`
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', (cause) => reject(new SlotflipError('INSTALL_DECOMPRESS', `${zstdPath}: cannot start; install zstd`, { cause, details: { cmd: zstdPath } })));
    child.on('close', (code, signal) => {
      if (code === 0) resolve();
      else if (killed) reject(new SlotflipError('INSTALL_DECOMPRESS', `${zstdPath}: stopped`, { retryable: true }));
      else reject(new SlotflipError('INSTALL_DECOMPRESS', `${zstdPath}: payload data is corrupt or truncated (${signal ?? `exit ${code}`}): ${err.trim().slice(0, 300)}`, { retryable: true, details: { cmd: zstdPath, code } }));
    });
  });
  done.catch(() => undefined);
  return {
    input: child.stdin,
    output: child.stdout,
    done,
    kill() {
      if (child.exitCode === null && child.signalCode === null) {
        killed = true;
        child.kill('SIGKILL');
      }
    },
  };
}

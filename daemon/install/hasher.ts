/**
 * The read-back: a worker thread reads the slot (by its path, through its own read-only descriptor)
 * behind the fsync frontier and hashes the whole image, so this second pass over the data costs the
 * main thread nothing and allocates nothing per chunk (one reused 1 MiB buffer: flat memory).
 *
 * The worker source is inline so it runs the same from `.ts` sources (tests) and from `dist/`.
 */
import { Worker } from 'node:worker_threads';
import { SlotflipError } from '../../hal/errors.js';

const SRC = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const fs = require('node:fs');
let fd = -1, h = createHash('sha256'), cursor = 0, failed = null;
const buf = Buffer.allocUnsafe(1 << 20);
function advance(upto) {
  while (!failed && cursor < upto) {
    const n = fs.readSync(fd, buf, 0, Math.min(buf.length, upto - cursor), cursor);
    if (n === 0) { failed = { code: 'SHORT', message: 'slot ended at byte ' + cursor }; break; }
    h.update(buf.subarray(0, n));
    cursor += n;
  }
}
parentPort.on('message', (m) => {
  try {
    if (m.op === 'open') { fd = fs.openSync(m.path, 'r'); cursor = m.from || 0; }
    else if (m.op === 'advance') advance(m.upto);
    else if (m.op === 'finish') {
      advance(m.upto);
      parentPort.postMessage(failed ? { op: 'error', error: failed } : { op: 'digest', hex: h.digest('hex'), bytes: cursor });
    }
  } catch (e) {
    failed = { code: e.code || 'ERROR', message: String(e.message) };
    if (m.op === 'finish') parentPort.postMessage({ op: 'error', error: failed });
  }
});
`;

export class ReadBackHasher {
  readonly #worker: Worker;
  readonly #path: string;
  #pending: { resolve: (r: { sha256: string; bytes: number }) => void; reject: (e: unknown) => void } | undefined;
  #dead: unknown;

  /** Starts hashing `path` from byte 0. */
  constructor(path: string) {
    this.#path = path;
    this.#worker = new Worker(SRC, { eval: true });
    this.#worker.on('message', (m: { op: string; hex?: string; bytes?: number; error?: { code: string; message: string } }) => {
      const p = this.#pending;
      this.#pending = undefined;
      if (m.op === 'digest') p?.resolve({ sha256: m.hex!, bytes: m.bytes! });
      else p?.reject(this.#error(m.error!));
    });
    this.#worker.on('error', (e) => this.#die(e));
    this.#worker.on('exit', () => this.#die(new Error('read-back worker exited')));
    this.#worker.postMessage({ op: 'open', path });
  }

  #error(e: { code: string; message: string }): SlotflipError {
    return new SlotflipError('INSTALL_READBACK_MISMATCH', `reading slot ${this.#path} back failed (${e.code}: ${e.message}); the device may be failing`, { details: { path: this.#path, errno: e.code } });
  }

  #die(e: unknown): void {
    this.#dead ??= e;
    this.#pending?.reject(e);
    this.#pending = undefined;
  }

  /** Lets the worker read and hash up to byte `upto` (must be flushed already). Non-blocking. */
  advance(upto: number): void {
    if (this.#dead === undefined) this.#worker.postMessage({ op: 'advance', upto });
  }

  /** Reads and hashes up to `upto`, then resolves with the SHA-256 of bytes [0, upto). */
  finish(upto: number): Promise<{ sha256: string; bytes: number }> {
    if (this.#dead !== undefined) return Promise.reject(this.#dead);
    return new Promise((resolve, reject) => {
      this.#pending = { resolve, reject };
      this.#worker.postMessage({ op: 'finish', upto });
    });
  }

  /** Stops the worker; idempotent. */
  async close(): Promise<void> {
    this.#dead ??= new Error('read-back closed');
    await this.#worker.terminate();
  }
}

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
let fd = -1, h = createHash('sha256'), cursor = 0, failed = null, ring = null;
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
    else if (m.op === 'ring') ring = m.sab;
    else if (m.op === 'update') { h.update(new Uint8Array(ring, m.slot * m.slotSize, m.len)); cursor += m.len; parentPort.postMessage({ op: 'ack', slot: m.slot }); }
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

/** How the read-back gets at the slot: its path (a worker-owned descriptor, no allocation per read),
 * or the SlotHandle's `readAt` (honours any SlotWriter, fault-injecting ones included; each read
 * allocates, which costs peak memory). */
export type ReadBackSource = { path: string } | { path: string; readAt: (length: number, offset: number) => Promise<Buffer> };

const READ_PIECE = 1 << 20;

export class ReadBackHasher {
  readonly #worker: Worker;
  readonly #path: string;
  readonly #readAt: ((length: number, offset: number) => Promise<Buffer>) | undefined;
  #pending: { resolve: (r: { sha256: string; bytes: number }) => void; reject: (e: unknown) => void } | undefined;
  readonly #acks: Array<() => void> = [];
  #dead: unknown;
  // readAt mode
  #cursor = 0;
  #target = 0;
  #loop: Promise<void> | undefined;
  #readError: unknown;

  /** Starts hashing the slot from byte 0. */
  constructor(source: ReadBackSource) {
    this.#path = source.path;
    this.#readAt = 'readAt' in source ? source.readAt : undefined;
    this.#worker = new Worker(SRC, { eval: true });
    this.#worker.on('message', (m: { op: string; hex?: string; bytes?: number; error?: { code: string; message: string } }) => {
      if (m.op === 'ack') {
        this.#acks.shift()?.();
        return;
      }
      const p = this.#pending;
      this.#pending = undefined;
      if (m.op === 'digest') p?.resolve({ sha256: m.hex!, bytes: m.bytes! });
      else p?.reject(this.#error(m.error!));
    });
    this.#worker.on('error', (e) => this.#die(e));
    this.#worker.on('exit', () => this.#die(new Error('read-back worker exited')));
    if (!this.#readAt) this.#worker.postMessage({ op: 'open', path: source.path });
    else this.#worker.postMessage({ op: 'ring', sab: this.#ring });
  }

  /** readAt mode: pieces are copied into a small shared ring instead of being transferred, so the
   * buffers readAt allocates die young on this (busy) thread rather than piling up on the worker. */
  readonly #ring = new SharedArrayBuffer(2 * READ_PIECE);
  readonly #ringView = new Uint8Array(this.#ring);

  /** readAt mode: reads pieces in order and hands them to the worker (at most two in flight). */
  #pump(): void {
    if (this.#loop || this.#readError !== undefined) return;
    this.#loop = (async () => {
      let inflight = 0;
      let sent = 0;
      let wake: (() => void) | undefined;
      while (this.#cursor < this.#target && this.#dead === undefined) {
        const len = Math.min(READ_PIECE, this.#target - this.#cursor);
        const buf = await this.#readAt!(len, this.#cursor);
        if (buf.length !== len) throw Object.assign(new Error(`slot ended at byte ${this.#cursor + buf.length}`), { code: 'SHORT' });
        const slot = sent++ % 2;
        this.#ringView.set(buf, slot * READ_PIECE);
        inflight++;
        this.#acks.push(() => {
          inflight--;
          wake?.();
        });
        this.#worker.postMessage({ op: 'update', slot, slotSize: READ_PIECE, len });
        this.#cursor += len;
        while (inflight >= 2) await new Promise<void>((r) => (wake = r)); // both ring slots busy
      }
      while (inflight > 0 && this.#dead === undefined) await new Promise<void>((r) => (wake = r));
    })()
      .catch((e: unknown) => {
        this.#readError ??= e;
      })
      .finally(() => {
        this.#loop = undefined;
        if (this.#readError === undefined && this.#cursor < this.#target) this.#pump();
      });
  }

  #error(e: { code: string; message: string }): SlotflipError {
    return new SlotflipError('INSTALL_READBACK_MISMATCH', `reading slot ${this.#path} back failed (${e.code}: ${e.message}); the device may be failing`, { details: { path: this.#path, errno: e.code } });
  }

  #die(e: unknown): void {
    this.#dead ??= e;
    this.#pending?.reject(e);
    this.#pending = undefined;
  }

  /** Reads and hashes up to byte `upto` in the background (it must be flushed already). */
  advance(upto: number): void {
    if (this.#dead !== undefined) return;
    if (this.#readAt) {
      this.#target = Math.max(this.#target, upto);
      this.#pump();
    } else this.#worker.postMessage({ op: 'advance', upto });
  }

  /** Reads and hashes up to `upto`, then resolves with the SHA-256 of bytes [0, upto). */
  async finish(upto: number): Promise<{ sha256: string; bytes: number }> {
    if (this.#readAt) {
      this.advance(upto);
      while (this.#loop) await this.#loop;
      if (this.#readError !== undefined) {
        const e = this.#readError as { code?: string; message?: string };
        throw new SlotflipError('INSTALL_READBACK_MISMATCH', `reading slot ${this.#path} back failed (${e.code ?? 'error'}); the device may be failing`, { cause: e, details: { path: this.#path, errno: e.code } });
      }
    }
    if (this.#dead !== undefined) throw this.#dead;
    return new Promise((resolve, reject) => {
      this.#pending = { resolve, reject };
      this.#worker.postMessage({ op: 'finish', upto: this.#readAt ? 0 : upto });
    });
  }

  /** Stops the worker; idempotent. */
  async close(): Promise<void> {
    this.#dead ??= new Error('read-back closed');
    await this.#worker.terminate();
  }
}

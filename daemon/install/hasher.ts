/**
 * The read-back: a worker thread reads the slot (by its path, through its own read-only descriptor)
 * behind the fsync frontier and hashes the whole image, so this second pass over the data costs the
 * main thread nothing and allocates nothing per chunk (one reused 1 MiB buffer: flat memory).
 *
 * By path the descriptor is O_DIRECT: a buffered read right after the write would hash the page
 * cache (the bytes just written), not what the medium kept, and flash that acknowledged fsync and
 * kept nothing would pass. O_DIRECT needs 4096-aligned offsets, lengths and buffer: reads cover the
 * aligned window around [cursor, upto) and hash only the part asked for; the buffer is a view of
 * WebAssembly memory, which V8 maps page-aligned (a 1 MiB Buffer comes from malloc, 16-byte aligned).
 * Where O_DIRECT is refused (tmpfs, some FUSE/overlay filesystems: EINVAL at open or first read) it
 * falls back to buffered reads and reports that (`direct`, and a debug log when given a logger).
 *
 * The worker source is inline so it runs the same from `.ts` sources (tests) and from `dist/`.
 */
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import { SlotflipError } from '../../hal/errors.js';

const SRC = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const ALIGN = 4096;
let fd = -1, h = createHash('sha256'), cursor = 0, failed = null, ring = null, direct = false, path = '';
const buf = Buffer.from(new WebAssembly.Memory({ initial: 16, maximum: 16 }).buffer, 0, 1 << 20);
function buffered(reason) {
  if (fd >= 0) fs.closeSync(fd);
  fd = fs.openSync(path, 'r');
  direct = false;
  parentPort.postMessage({ op: 'direct', direct: false, reason });
}
function advance(upto) {
  while (!failed && cursor < upto) {
    if (!direct) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, upto - cursor), cursor);
      if (n === 0) { failed = { code: 'SHORT', message: 'slot ended at byte ' + cursor }; break; }
      h.update(buf.subarray(0, n));
      cursor += n;
      continue;
    }
    const base = cursor - (cursor % ALIGN);
    const span = Math.min(buf.length, Math.ceil((upto - base) / ALIGN) * ALIGN);
    let n;
    try { n = fs.readSync(fd, buf, 0, span, base); }
    catch (e) { if (e.code === 'EINVAL') { buffered('read with O_DIRECT: EINVAL'); continue; } throw e; }
    const end = Math.min(base + n, upto);
    if (end <= cursor) { failed = { code: 'SHORT', message: 'slot ended at byte ' + cursor }; break; }
    h.update(buf.subarray(cursor - base, end - base));
    cursor = end;
  }
}
parentPort.on('message', (m) => {
  try {
    if (m.op === 'open') {
      path = m.path; cursor = m.from || 0;
      try { fd = fs.openSync(m.path, fs.constants.O_RDONLY | fs.constants.O_DIRECT); direct = true; parentPort.postMessage({ op: 'direct', direct: true }); }
      catch (e) { if (e.code !== 'EINVAL') throw e; buffered('open with O_DIRECT: EINVAL'); }
    }
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
export type ReadBackSource = ({ path: string } | { path: string; readAt: (length: number, offset: number) => Promise<Buffer> }) & { log?: Logger };

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
  #direct: boolean | undefined;

  /** By path: true once the slot is read with O_DIRECT (the medium, not the page cache), false after
   * a fallback to buffered reads; undefined before the worker opened it, and in readAt mode. */
  get direct(): boolean | undefined {
    return this.#direct;
  }

  /** Starts hashing the slot from byte 0. */
  constructor(source: ReadBackSource) {
    this.#path = source.path;
    this.#readAt = 'readAt' in source ? source.readAt : undefined;
    this.#worker = new Worker(SRC, { eval: true });
    this.#worker.on('message', (m: { op: string; hex?: string; bytes?: number; error?: { code: string; message: string }; direct?: boolean; reason?: string }) => {
      if (m.op === 'direct') {
        this.#direct = m.direct === true;
        if (!this.#direct) source.log?.debug({ path: source.path, reason: m.reason }, 'read-back: O_DIRECT not supported here, reading through the page cache');
        return;
      }
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

/**
 * SHA-256 on a worker thread, so hashing the read-back slot does not compete with the main thread's
 * per-chunk hashing (Node's crypto uses the CPU's SHA instructions; one thread does ~1.4–2 GB/s).
 *
 * Buffers are transferred, not copied, when they own their whole ArrayBuffer. The worker source is
 * inline so it runs the same from `.ts` sources (tests) and from `dist/`.
 */
import { Worker } from 'node:worker_threads';

const SRC = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
let h = createHash('sha256');
parentPort.on('message', (m) => {
  if (m.op === 'update') {
    h.update(new Uint8Array(m.buf, m.off, m.len));
    parentPort.postMessage({ op: 'ack' });
  } else if (m.op === 'digest') {
    parentPort.postMessage({ op: 'digest', hex: h.digest('hex') });
    h = createHash('sha256');
  }
});
`;

export class WorkerHasher {
  readonly #worker: Worker;
  readonly #acks: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  #digest: { resolve: (hex: string) => void; reject: (e: unknown) => void } | undefined;
  #failed: unknown;

  constructor() {
    this.#worker = new Worker(SRC, { eval: true });
    this.#worker.on('message', (m: { op: string; hex?: string }) => {
      if (m.op === 'ack') this.#acks.shift()?.resolve();
      else if (m.op === 'digest') {
        const d = this.#digest;
        this.#digest = undefined;
        d?.resolve(m.hex!);
      }
    });
    this.#worker.on('error', (e) => this.#fail(e));
    this.#worker.on('exit', (code) => this.#fail(new Error(`hash worker exited with ${code}`)));
  }

  #fail(e: unknown): void {
    this.#failed ??= e;
    for (const a of this.#acks.splice(0)) a.reject(e);
    this.#digest?.reject(e);
    this.#digest = undefined;
  }

  /** Hashes `data` next, in call order. Resolves once the worker is done with it. The caller must not
   * touch `data` afterwards (its memory may have been transferred). */
  update(data: Uint8Array): Promise<void> {
    if (this.#failed !== undefined) return Promise.reject(this.#failed);
    return new Promise((resolve, reject) => {
      this.#acks.push({ resolve, reject });
      const owns = data.byteOffset === 0 && data.buffer.byteLength === data.byteLength && data.buffer instanceof ArrayBuffer;
      const buf = owns ? (data.buffer as ArrayBuffer) : new Uint8Array(data).buffer;
      this.#worker.postMessage({ op: 'update', buf, off: 0, len: data.byteLength }, [buf]);
    });
  }

  /** Hex digest of everything given so far; starts a new hash afterwards. */
  digest(): Promise<string> {
    if (this.#failed !== undefined) return Promise.reject(this.#failed);
    return new Promise((resolve, reject) => {
      this.#digest = { resolve, reject };
      this.#worker.postMessage({ op: 'digest' });
    });
  }

  /** Stops the worker; idempotent. */
  async close(): Promise<void> {
    this.#failed ??= new Error('hash worker closed');
    await this.#worker.terminate();
  }
}

/**
 * The read-back on a thread of its own: the same ReadBackChecker (hasher.ts), by path (O_DIRECT),
 * hosted in a worker_threads Worker, so that its whole-image SHA-256 over the bytes the medium returns
 * runs beside the main thread's work (chunk SHA-256, the compressed-byte checks, the decoder's pipes)
 * instead of taking turns with it. Nothing of the check changes: the worker reads the slot in order
 * from byte 0 behind the fsync frontier the installer advances, hashes the whole image over what the
 * medium returned and compares it with the signed image hash; on a mismatch it reads the slot again
 * to name the chunk(s) by their signed chunk hashes. Only the thread that does it differs.
 *
 * Issue 24: on the 1 GiB bench the read-back's SHA-256 was about a third of the main thread's CPU and
 * ran partly after the last write (it shared the thread with the chunk hashing); see the closing
 * figures in the commit that added this file.
 *
 * Protocol: requests carry an id and get one reply each (`prefix`, `finish`, `close`); `advance` and
 * `abort` are one-way. Errors cross as {code, message, retryable, details} and become SlotflipErrors
 * again on the main thread (the cause object stays in the worker; errno and offset are in details).
 * The worker dying unexpectedly fails whatever waits with INSTALL_READBACK_MISMATCH (the slot is then
 * not trusted, as for any failed read-back): the install fails, nothing is armed.
 *
 * Memory: the worker is one more V8 isolate plus the checker's 1 MiB aligned read buffer: +13-14 MiB
 * of the install's peak RSS (measured for a bare worker with its young generation capped as below,
 * and in the CLI's install; the isolate's bootstrap heap, not what this module loads). Hence opt-in
 * since issue 16 (installer.ts `readBackThread`): by default the read-back hashes on the main thread,
 * which cost no wall in the 1 GiB cli-bench A/B. It exists only while an install runs.
 */
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import type { Logger } from 'pino';
import { SlotflipError } from '../../hal/errors.js';
import { ReadBackChecker, type ReadBack } from './hasher.js';

interface Init {
  role: 'slotflip-read-back';
  path: string;
  chunkSize: number;
  size: number;
  imageSha256: string;
  sums: string[];
}

interface WireError {
  code: string;
  message: string;
  retryable: boolean;
  details: Record<string, unknown> | undefined;
}

type Request = { op: 'prefix'; id: number; sums?: string[] } | { op: 'finish'; id: number; upto: number } | { op: 'close'; id: number } | { op: 'advance'; upto: number } | { op: 'abort' };
type Reply = { id: number; error?: WireError; matched?: number; bytes?: number; sha256?: string; direct?: boolean };

function toWire(e: unknown): WireError {
  if (e instanceof SlotflipError) return { code: e.code, message: e.message, retryable: e.retryable, details: e.details };
  return { code: 'INSTALL_READBACK_MISMATCH', message: `read-back thread: ${String((e as Error)?.message ?? e)}`, retryable: false, details: undefined };
}

function fromWire(w: WireError): SlotflipError {
  return new SlotflipError(w.code, w.message, { retryable: w.retryable, ...(w.details !== undefined ? { details: w.details } : {}) });
}

/** Worker side: hosts one ReadBackChecker by path and answers the main thread's requests. */
function host(init: Init): void {
  const port = parentPort!;
  const ac = new AbortController();
  const checker = new ReadBackChecker({ path: init.path, chunkSize: init.chunkSize, size: init.size, imageSha256: init.imageSha256, chunkSha256: (k) => init.sums[k]!, signal: ac.signal });
  const reply = (r: Reply): void => port.postMessage({ ...r, direct: checker.direct });
  port.on('message', (m: Request) => {
    switch (m.op) {
      case 'advance':
        checker.advance(m.upto);
        return;
      case 'abort':
        ac.abort();
        return;
      case 'prefix': {
        const sums = m.sums;
        checker.verifyPrefix(sums ? (k) => sums[k]! : undefined, ac.signal).then(
          (matched) => reply({ id: m.id, matched }),
          (e: unknown) => reply({ id: m.id, error: toWire(e) }),
        );
        return;
      }
      case 'finish':
        checker.finish(m.upto).then(
          ({ bytes }) => reply({ id: m.id, bytes, ...(checker.imageSha256() !== undefined ? { sha256: checker.imageSha256()! } : {}) }),
          (e: unknown) => reply({ id: m.id, error: toWire(e) }),
        );
        return;
      case 'close':
        checker.close().finally(() => {
          reply({ id: m.id });
          port.close();
        });
        return;
    }
  });
}

if (!isMainThread && (workerData as Partial<Init> | null)?.role === 'slotflip-read-back') host(workerData as Init);

/**
 * Main side: the ReadBack interface of ReadBackChecker, by path, with the reads and the hashing on a
 * worker thread. Same options as the checker minus `readAt` (a SlotHandle's reads are JavaScript of
 * this thread: use ReadBackChecker for those).
 */
export class ThreadedReadBack implements ReadBack {
  readonly #path: string;
  readonly #log: Logger | undefined;
  readonly #worker: Worker;
  readonly #pending = new Map<number, { resolve: (r: Reply) => void; reject: (e: SlotflipError) => void }>();
  #seq = 0;
  #direct: boolean | undefined;
  #sha256: string | undefined;
  #dead: SlotflipError | undefined;
  #closed: Promise<void> | undefined;
  #onAbort: (() => void) | undefined;
  readonly #signal: AbortSignal | undefined;
  readonly #chunks: number;

  constructor(o: { path: string; chunkSize: number; size: number; imageSha256: string; chunkSha256: (chunk: number) => string; signal?: AbortSignal; log?: Logger }) {
    this.#path = o.path;
    this.#log = o.log;
    this.#signal = o.signal;
    const chunks = o.chunkSize > 0 ? Math.ceil(o.size / o.chunkSize) : 0;
    this.#chunks = chunks;
    const init: Init = { role: 'slotflip-read-back', path: o.path, chunkSize: o.chunkSize, size: o.size, imageSha256: o.imageSha256, sums: Array.from({ length: chunks }, (_, k) => o.chunkSha256(k)) };
    // this module again (.js when built, .ts under the test runner's loader, which workers inherit)
    const url = new URL(import.meta.url);
    // from TypeScript sources (tests) the worker needs only the TypeScript loader of the flags this
    // process runs with (a test runner's other hooks would load, and slow down, every worker). Built,
    // it inherits them: an explicit execArgv must not name V8 flags (ERR_WORKER_INVALID_EXEC_ARGV for
    // the --max-semi-space-size=1 that /usr/bin/slotflip runs with), inherited ones are fine
    const execArgv = url.pathname.endsWith('.ts') ? process.execArgv.filter((a) => /typescript|tsx|source-maps/.test(a)) : undefined;
    this.#worker = new Worker(url, { workerData: init, ...(execArgv ? { execArgv } : {}), resourceLimits: { maxYoungGenerationSizeMb: 2 } });
    this.#worker.on('message', (r: Reply) => {
      if (r.direct !== undefined && r.direct !== this.#direct) {
        this.#direct = r.direct;
        if (!r.direct) this.#log?.debug({ path: this.#path }, 'read-back: O_DIRECT not supported here, reading through the page cache');
      }
      const p = this.#pending.get(r.id);
      if (!p) return;
      this.#pending.delete(r.id);
      if (r.error) p.reject(fromWire(r.error));
      else p.resolve(r);
    });
    const die = (why: string, cause?: unknown): void => {
      this.#dead ??= new SlotflipError('INSTALL_READBACK_MISMATCH', `reading slot ${this.#path} back failed: the read-back thread ${why}; the slot is not trusted, the image will be written again on the next attempt`, { ...(cause !== undefined ? { cause } : {}), details: { path: this.#path } });
      for (const p of this.#pending.values()) p.reject(this.#dead);
      this.#pending.clear();
    };
    this.#worker.on('error', (e) => die(`failed (${(e as Error).message})`, e));
    this.#worker.on('exit', (code) => die(`exited (${code})`));
    if (o.signal) {
      this.#onAbort = () => this.#post({ op: 'abort' });
      o.signal.addEventListener('abort', this.#onAbort, { once: true });
    }
  }

  get direct(): boolean | undefined {
    return this.#direct;
  }

  #post(m: Request): void {
    if (this.#dead === undefined) this.#worker.postMessage(m);
  }

  #call(m: { op: 'prefix'; sums?: string[] } | { op: 'finish'; upto: number } | { op: 'close' }): Promise<Reply> {
    if (this.#dead) return Promise.reject(this.#dead);
    const id = ++this.#seq;
    return new Promise<Reply>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ ...m, id });
    });
  }

  async verifyPrefix(sha256Of?: (chunk: number) => string, signal?: AbortSignal): Promise<number> {
    if (signal?.aborted) throw new SlotflipError('INSTALL_ABORTED', 'install aborted', {});
    const onAbort = (): void => this.#post({ op: 'abort' });
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const sums = sha256Of ? Array.from({ length: this.#chunks }, (_, k) => sha256Of(k)) : undefined;
      const r = await this.#call({ op: 'prefix', ...(sums ? { sums } : {}) });
      return r.matched!;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  advance(upto: number): void {
    this.#post({ op: 'advance', upto });
  }

  async finish(upto: number): Promise<{ bytes: number }> {
    const r = await this.#call({ op: 'finish', upto });
    this.#sha256 = r.sha256;
    return { bytes: r.bytes! };
  }

  imageSha256(): string | undefined {
    return this.#sha256;
  }

  close(): Promise<void> {
    this.#closed ??= (async () => {
      if (this.#onAbort) this.#signal?.removeEventListener('abort', this.#onAbort);
      try {
        if (this.#dead === undefined) await this.#call({ op: 'close' });
      } catch {
        // a dead worker has nothing left to close
      } finally {
        await this.#worker.terminate();
      }
    })();
    return this.#closed;
  }
}

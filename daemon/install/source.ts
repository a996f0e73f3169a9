/**
 * Where payload bytes come from: HTTP(S) mirrors (Range requests, If-Range on the ETag, identity
 * encoding, TLS with a private CA and a client certificate) or a local file.
 *
 * A source only opens byte streams at an offset; retries, mirror rotation, the stall watchdog and the
 * byte caps live in the installer, which knows the signed payload length. A server is never trusted
 * for anything but bytes: every chunk is checked against the signed index anyway.
 */
import { EventEmitter } from 'node:events';
import { open } from 'node:fs/promises';
import https from 'node:https';
import net from 'node:net';
import { SlotflipError } from '../../hal/errors.js';
import { nodeFs, nodeHttp } from '../../hal/builtins.js';
const { read } = nodeFs;
const http = nodeHttp();

export interface OpenedStream {
  /** bytes of the payload file starting at `start` (which may be below the requested offset when a
   * server ignored the Range request; the caller skips the difference). Exactly one of `stream` and
   * `fd` is set. */
  stream?: ByteStream;
  /** a local file descriptor positioned at `start` (= the requested offset), readable to the end. */
  fd?: number;
  start: number;
  /** what this stream is, for logs and error details (a URL or a path). */
  where: string;
  /** stops the transfer and frees its socket or file descriptor; idempotent. */
  close(): void;
}

export interface PayloadSource {
  readonly kind: 'http' | 'file';
  /** number of alternative locations (mirrors); the installer rotates `attempt % count`. */
  readonly count: number;
  /**
   * Opens the payload file at byte `offset` from location `index`. `length` is the signed payload
   * length: a location whose file is shorter or longer is refused (INSTALL_PAYLOAD_TRUNCATED /
   * INSTALL_PAYLOAD_OVERSIZED). `end` (exclusive, default `length`): the caller needs only bytes
   * before it, so an HTTP source asks for `bytes=offset-(end-1)`; a source may still deliver more
   * (a server that ignores Range, a file): the caller stops reading at `end`.
   * Throws INSTALL_HTTP_STATUS, INSTALL_NETWORK, INSTALL_SOURCE_OPEN.
   * Has no side effects beyond the request; safe to call again.
   */
  open(index: number, offset: number, length: number, signal: AbortSignal, end?: number): Promise<OpenedStream>;
}

export interface TlsOptions {
  /** PEM CA bundle that replaces the system roots (private PKI). */
  ca?: string | Buffer;
  /** PEM client certificate and key for mutual TLS. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** default true; only tests against self-signed servers should turn it off. */
  rejectUnauthorized?: boolean;
}

export interface HttpSourceOptions {
  /** payload URLs, tried in order and rotated on failure. */
  mirrors: string[];
  tls?: TlsOptions;
  /** extra request headers (e.g. authorization); `range`, `if-range` and `accept-encoding` are ours. */
  headers?: Record<string, string>;
  /** time allowed for the response headers to arrive, ms (default 30 000). */
  connectTimeoutMs?: number;
}

/** An HTTP(S) source over one or more mirrors. */
export function httpSource(options: HttpSourceOptions): PayloadSource {
  if (options.mirrors.length === 0) throw new SlotflipError('INSTALL_SOURCE_OPEN', 'no payload URL given; pass at least one mirror', {});
  const urls = options.mirrors.map((m) => {
    let u: URL;
    try {
      u = new URL(m);
    } catch (cause) {
      throw new SlotflipError('INSTALL_SOURCE_OPEN', `payload URL ${m} is not a valid URL`, { cause, details: { url: m } });
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') {
      throw new SlotflipError('INSTALL_SOURCE_OPEN', `payload URL ${m} is neither http nor https`, { details: { url: m } });
    }
    return u;
  });
  // Last ETag seen per mirror: sent as If-Range so a changed file comes back whole (200), not spliced.
  const etags = new Map<number, string>();
  const timeout = options.connectTimeoutMs ?? 30_000;

  return {
    kind: 'http',
    count: urls.length,
    open(index, offset, length, signal, end) {
      const mi = index % urls.length;
      const url = urls[mi]!;
      const where = url.href;
      const headers: Record<string, string> = { ...options.headers, 'accept-encoding': 'identity' };
      const bounded = end !== undefined && end > offset && end < length;
      if (offset > 0 || bounded) {
        headers.range = bounded ? `bytes=${offset}-${end - 1}` : `bytes=${offset}-`;
        const etag = etags.get(mi);
        if (etag !== undefined) headers['if-range'] = etag;
      }
      const nodeGet = (): Promise<OpenedStream> => nodeGetFor(url, headers, signal, offset, length, where, mi);
      // plain HTTP goes through slotflip's own response reader (no allocation per read) unless the
      // request needs what only node:http does here (credentials in the URL, header validation) or
      // the server frames the body in a way the reader leaves to node:http (chunked)
      if (url.protocol === 'http:' && !url.username && !url.password && plainHeadersOk(headers)) {
        return plainGet(url, headers, timeout, signal, offset, length, where, mi, etags).then((r) => r ?? nodeGet());
      }
      return nodeGet();
    },
  };

  function nodeGetFor(url: URL, headers: Record<string, string>, signal: AbortSignal, offset: number, length: number, where: string, mi: number): Promise<OpenedStream> {
      const mod = url.protocol === 'https:' ? https : http;
      const tls = url.protocol === 'https:' ? { ca: options.tls?.ca, cert: options.tls?.cert, key: options.tls?.key, rejectUnauthorized: options.tls?.rejectUnauthorized ?? true } : {};
      return new Promise<OpenedStream>((resolve, reject) => {
        const req = mod.request(url, { method: 'GET', headers, agent: false, ...tls });
        const onAbort = (): void => {
          req.destroy(new SlotflipError('INSTALL_ABORTED', 'install aborted', {}));
        };
        signal.addEventListener('abort', onAbort, { once: true });
        const timer = setTimeout(() => {
          req.destroy(new SlotflipError('INSTALL_STALLED', `${where}: no response within ${timeout} ms`, { retryable: true, details: { url: where, timeoutMs: timeout } }));
        }, timeout);
        const fail = (e: SlotflipError): void => {
          clearTimeout(timer);
          signal.removeEventListener('abort', onAbort);
          req.destroy();
          reject(e);
        };
        req.on('error', (cause) => {
          clearTimeout(timer);
          signal.removeEventListener('abort', onAbort);
          if (cause instanceof SlotflipError) reject(cause);
          else reject(new SlotflipError('INSTALL_NETWORK', `${where}: request failed (${(cause as NodeJS.ErrnoException).code ?? 'error'}); check the network and the URL`, { cause, retryable: true, details: { url: where } }));
        });
        req.on('response', (res) => {
          clearTimeout(timer);
          const checked = checkResponse(res.statusCode ?? 0, res.headers, offset, length, where, mi, etags);
          if (checked instanceof SlotflipError) {
            res.resume();
            fail(checked);
            return;
          }
          const close = (): void => {
            signal.removeEventListener('abort', onAbort);
            res.destroy();
            req.destroy();
          };
          res.on('close', () => signal.removeEventListener('abort', onAbort));
          resolve({ stream: res, start: checked.start, where, close });
        });
        req.end();
      });
  }
}

type Headers = Record<string, string | string[] | undefined>;

/** Checks a response's status and framing headers against the request (shared by both readers);
 * records the mirror's ETag. Returns where the body starts in the payload, or the refusal. */
function checkResponse(status: number, h: Headers, offset: number, length: number, where: string, mi: number, etags: Map<number, string>): { start: number } | SlotflipError {
  const details = { url: where, status, offset };
  if (status !== 200 && status !== 206) {
    const retryable = status >= 500 || status === 408 || status === 429 || status === 404;
    return new SlotflipError('INSTALL_HTTP_STATUS', `${where}: HTTP ${status}; check the URL and the server`, { retryable, details });
  }
  const enc = h['content-encoding'];
  if (enc !== undefined && enc !== 'identity') {
    return new SlotflipError('INSTALL_HTTP_STATUS', `${where}: server sent content-encoding ${String(enc)} although identity was asked; byte offsets would be wrong`, { retryable: true, details });
  }
  const etag = h.etag;
  if (typeof etag === 'string' && !etag.startsWith('W/')) etags.set(mi, etag);
  else etags.delete(mi);
  let start = 0;
  let total: number | undefined;
  if (status === 206) {
    const cr = typeof h['content-range'] === 'string' ? h['content-range'] : '';
    const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(cr);
    if (!m || Number(m[1]) !== offset) {
      return new SlotflipError('INSTALL_HTTP_STATUS', `${where}: 206 with Content-Range "${cr}" that does not start at ${offset}`, { retryable: true, details });
    }
    start = offset;
    if (m[3] !== '*') total = Number(m[3]);
  } else {
    const cl = h['content-length'];
    if (typeof cl === 'string') total = Number(cl);
  }
  if (total !== undefined && total !== length) {
    const code = total < length ? 'INSTALL_PAYLOAD_TRUNCATED' : 'INSTALL_PAYLOAD_OVERSIZED';
    return new SlotflipError(code, `${where}: payload is ${total} bytes but the signed length is ${length}; the mirror holds a different file`, { retryable: true, details: { ...details, total, length } });
  }
  return { start };
}

/** Header names and values the own reader sends as they are (a token name, no control characters);
 * anything else goes through node:http, which validates and refuses it. */
function plainHeadersOk(headers: Record<string, string>): boolean {
  return Object.entries(headers).every(([k, v]) => !/^(host|connection|content-length|transfer-encoding)$/i.test(k) && /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(k) && typeof v === 'string' && !/[\0-\x08\x0a-\x1f\x7f]/.test(v));
}

/** Size of the one read buffer a plain-HTTP connection reuses (libuv's usual read size). */
const READ_BUF = 64 * 1024;
/** Response headers larger than this are refused (node:http's default limit is 16 KiB). */
const MAX_HEAD = 64 * 1024;

/**
 * A plain-HTTP GET read by slotflip itself: one request per connection (`Connection: close`), the
 * response head parsed here, the body read with `onread` into ONE reused buffer and handed on as
 * views (a `ByteStream` whose pieces must be copied before the listener returns). node:http instead
 * allocates a buffer per read: a payload's worth of garbage outside the JS heap, which V8 collects
 * with full mark-compacts (6 to 12 per 225 MiB payload here) and which keeps tens of MiB resident.
 * Resolves undefined when the server frames the body with Transfer-Encoding (chunked): the caller
 * then asks again through node:http. Same errors, timeouts and header checks as node:http's path.
 */
function plainGet(url: URL, headers: Record<string, string>, timeout: number, signal: AbortSignal, offset: number, length: number, where: string, mi: number, etags: Map<number, string>): Promise<OpenedStream | undefined> {
  return new Promise((resolve, reject) => {
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    const port = url.port === '' ? 80 : Number(url.port);
    let head: Buffer | undefined = Buffer.allocUnsafe(0);
    let body: PlainBody | undefined;
    let settled = false;
    const settle = (e: SlotflipError | undefined, r?: OpenedStream): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      if (e) {
        sock.destroy();
        reject(e);
      } else resolve(r);
    };
    const onAbort = (): void => {
      if (!settled) settle(new SlotflipError('INSTALL_ABORTED', 'install aborted', {}));
      else body?.destroy();
    };
    const buf = Buffer.allocUnsafeSlow(READ_BUF);
    const sock: net.Socket = net.connect({
      host,
      port,
      // `onread` is supported by net.connect but missing from its typings
      onread: {
        buffer: buf,
        callback: (n: number, b: Buffer): boolean => {
          if (body) return body.deliver(b.subarray(0, n));
          if (settled || head === undefined) return false;
          if (head.length + n > MAX_HEAD) {
            settle(new SlotflipError('INSTALL_HTTP_STATUS', `${where}: response headers exceed ${MAX_HEAD} bytes; check the server`, { retryable: true, details: { url: where } }));
            return false;
          }
          head = Buffer.concat([head, b.subarray(0, n)]);
          return parseHead();
        },
      },
    } as net.NetConnectOpts);
    const timer = setTimeout(() => settle(new SlotflipError('INSTALL_STALLED', `${where}: no response within ${timeout} ms`, { retryable: true, details: { url: where, timeoutMs: timeout } })), timeout);
    signal.addEventListener('abort', onAbort, { once: true });
    if (signal.aborted) onAbort();
    const req = [`GET ${url.pathname}${url.search} HTTP/1.1`, `Host: ${url.host}`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`), 'Connection: close', '', ''].join('\r\n');
    sock.write(req);
    sock.on('error', (cause: NodeJS.ErrnoException) => {
      if (!settled) settle(new SlotflipError('INSTALL_NETWORK', `${where}: request failed (${cause.code ?? 'error'}); check the network and the URL`, { cause, retryable: true, details: { url: where } }));
      else body?.fail(cause);
    });
    sock.on('close', () => {
      if (!settled) settle(new SlotflipError('INSTALL_NETWORK', `${where}: request failed (socket closed before the response); check the network and the URL`, { retryable: true, details: { url: where } }));
      else body?.closed();
    });

    /** Parses the response head once it is complete; false stops reading (done or refused). */
    function parseHead(): boolean {
      for (;;) {
        const h = head!;
        const endAt = h.indexOf('\r\n\r\n');
        if (endAt < 0) return true;
        const lines = h.toString('latin1', 0, endAt).split('\r\n');
        const m = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0]!);
        if (!m) {
          settle(new SlotflipError('INSTALL_NETWORK', `${where}: request failed (not an HTTP/1.x response); check the network and the URL`, { retryable: true, details: { url: where } }));
          return false;
        }
        const status = Number(m[1]);
        const hs: Record<string, string> = {};
        for (const line of lines.slice(1)) {
          const c = line.indexOf(':');
          if (c <= 0) continue;
          const k = line.slice(0, c).trim().toLowerCase();
          const v = line.slice(c + 1).trim();
          hs[k] = hs[k] === undefined ? v : `${hs[k]}, ${v}`;
        }
        const rest = h.subarray(endAt + 4);
        if (status >= 100 && status < 200) {
          head = Buffer.from(rest); // an interim response (100 Continue): the real one follows
          continue;
        }
        head = undefined;
        // a refusal by status first: error pages often come chunked, and need no second request
        const chunked = hs['transfer-encoding'] !== undefined && hs['transfer-encoding'].toLowerCase() !== 'identity';
        if (chunked && (status === 200 || status === 206)) {
          settle(undefined, undefined); // left to node:http (status and headers checked there)
          sock.destroy();
          return false;
        }
        const cl = hs['content-length'];
        if (cl !== undefined && !chunked && !/^\d+$/.test(cl)) {
          settle(new SlotflipError('INSTALL_NETWORK', `${where}: request failed (Content-Length "${cl}" is not one number); check the server`, { retryable: true, details: { url: where } }));
          return false;
        }
        const checked = checkResponse(status, hs, offset, length, where, mi, etags);
        if (checked instanceof SlotflipError) {
          settle(checked);
          return false;
        }
        body = new PlainBody(sock, cl === undefined ? undefined : Number(cl), rest.length > 0 ? Buffer.from(rest) : undefined);
        const b = body;
        settle(undefined, { stream: b, start: checked.start, where, close: () => b.destroy() });
        return false; // reading resumes when the consumer attaches its 'data' listener
      }
    }
  });
}

/** The body of a `plainGet` response: 'data' pieces are views of the connection's reused read
 * buffer; 'end' when Content-Length bytes (or, without one, everything up to the close) arrived;
 * 'error' (ECONNRESET, like node:http's "aborted") when the connection ends before; then 'close'. */
class PlainBody extends EventEmitter implements ByteStream {
  readonly #sock: net.Socket;
  #left: number | undefined;
  #first: Buffer | undefined;
  #paused = false;
  #flowing = false;
  #done = false;

  constructor(sock: net.Socket, contentLength: number | undefined, first: Buffer | undefined) {
    super();
    this.#sock = sock;
    this.#left = contentLength;
    this.#first = first;
    this.on('newListener', (ev: string) => {
      if (ev === 'data' && !this.#flowing) {
        this.#flowing = true;
        setImmediate(() => this.#start());
      }
    });
  }

  get destroyed(): boolean {
    return this.#done;
  }

  #start(): void {
    if (this.#done) return;
    const first = this.#first;
    this.#first = undefined;
    if (first && !this.deliver(first)) return;
    if (this.#left === 0) return this.#finish();
    if (!this.#paused) this.#sock.resume();
  }

  /** A piece from the socket (valid only during this call); false stops reading. */
  deliver(piece: Buffer): boolean {
    if (this.#done) return false;
    let d = piece;
    if (this.#left !== undefined && d.length >= this.#left) d = d.subarray(0, this.#left);
    if (this.#left !== undefined) this.#left -= d.length;
    if (d.length > 0) this.emit('data', d);
    if (this.#left === 0) {
      this.#finish();
      return false;
    }
    return !this.#paused && !this.#done;
  }

  #finish(): void {
    if (this.#done) return;
    this.#done = true;
    this.#sock.destroy();
    this.emit('end');
    this.emit('close');
  }

  /** The socket failed. Before the consumer listens for 'error' the body just ends up destroyed
   * (`destroyed`: the consumer checks it once its listeners are on). */
  fail(cause: unknown): void {
    if (this.#done) return;
    this.#done = true;
    if (this.listenerCount('error') > 0) this.emit('error', cause);
    this.emit('close');
  }

  /** The socket closed: the end of a body without Content-Length, else a cut. */
  closed(): void {
    if (this.#done) return;
    if (this.#left === undefined) return this.#finish();
    this.fail(Object.assign(new Error('aborted'), { code: 'ECONNRESET' }));
  }

  pause(): this {
    this.#paused = true;
    this.#sock.pause();
    return this;
  }

  resume(): this {
    if (!this.#paused) return this;
    this.#paused = false;
    if (this.#flowing && !this.#done && this.#first === undefined) this.#sock.resume();
    return this;
  }

  destroy(): this {
    if (this.#done) return this;
    this.#done = true;
    this.#sock.destroy();
    process.nextTick(() => this.emit('close'));
    return this;
  }
}

/** What the installer consumes: a Readable, or a `ReusedBufferStream` (whose pieces must be copied
 * before the 'data' listener returns). */
export interface ByteStream {
  on(event: 'data', listener: (d: Buffer) => void): unknown;
  on(event: 'error', listener: (e: unknown) => void): unknown;
  once(event: 'end' | 'close', listener: () => void): unknown;
  once(event: 'error', listener: (e: unknown) => void): unknown;
  removeAllListeners(event: 'data'): unknown;
  pause(): unknown;
  resume(): unknown;
  destroy(): unknown;
  readonly destroyed: boolean;
}

/**
 * Reads a descriptor from its current position to its end into ONE reused buffer: every 'data' piece
 * is a view that is overwritten by the next read, so a listener must copy what it keeps before it
 * returns. Nothing is allocated per read (a ReadStream allocates a fresh buffer per read: a payload's
 * worth of garbage outside the JS heap, which V8 collects with full mark-compacts). Emits 'data',
 * then 'end' and 'close'; or 'error' and 'close'. Does not close the descriptor.
 */
export class ReusedBufferStream extends EventEmitter implements ByteStream {
  readonly #fd: number;
  readonly #buf: Buffer;
  #paused = false;
  #reading = false;
  #destroyed = false;

  constructor(fd: number, bufferSize = 256 << 10) {
    super();
    this.#fd = fd;
    this.#buf = Buffer.allocUnsafeSlow(bufferSize);
    // first read after the caller attached its listeners (they are attached synchronously)
    process.nextTick(() => this.#next());
  }

  get destroyed(): boolean {
    return this.#destroyed;
  }

  #next(): void {
    if (this.#destroyed || this.#paused || this.#reading) return;
    this.#reading = true;
    read(this.#fd, this.#buf, 0, this.#buf.length, null, (err, n) => {
      this.#reading = false;
      if (this.#destroyed) return;
      if (err) {
        this.#destroyed = true;
        this.emit('error', err);
        this.emit('close');
        return;
      }
      if (n === 0) {
        this.#destroyed = true;
        this.emit('end');
        this.emit('close');
        return;
      }
      this.emit('data', this.#buf.subarray(0, n));
      this.#next();
    });
  }

  pause(): this {
    this.#paused = true;
    return this;
  }

  resume(): this {
    this.#paused = false;
    this.#next();
    return this;
  }

  destroy(): this {
    if (this.#destroyed) return this;
    this.#destroyed = true;
    process.nextTick(() => this.emit('close'));
    return this;
  }
}

/** A local payload file (repository directory, USB stick). Never retried: a bad file stays bad. */
export function fileSource(path: string): PayloadSource {
  return {
    kind: 'file',
    count: 1,
    async open(_index, offset, length) {
      let fh;
      try {
        fh = await open(path, 'r');
      } catch (cause) {
        throw new SlotflipError('INSTALL_SOURCE_OPEN', `cannot read payload file ${path}; check the path`, { cause, details: { path } });
      }
      let closed = false;
      const close = (): void => {
        if (closed) return;
        closed = true;
        void fh.close().catch(() => undefined);
      };
      try {
        const { size } = await fh.stat();
        if (size !== length) {
          const code = size < length ? 'INSTALL_PAYLOAD_TRUNCATED' : 'INSTALL_PAYLOAD_OVERSIZED';
          throw new SlotflipError(code, `${path} is ${size} bytes but the signed length is ${length}; the file is not this release's payload`, { details: { path, size, length } });
        }
        // The descriptor's own position is what a child reading it sees: advance it to `offset`.
        const skip = Buffer.allocUnsafe(Math.min(1 << 20, Math.max(1, offset)));
        for (let left = offset; left > 0; ) {
          const { bytesRead } = await fh.read(skip, 0, Math.min(skip.length, left), null);
          if (bytesRead === 0) throw new SlotflipError('INSTALL_PAYLOAD_TRUNCATED', `${path} shrank while being read`, { details: { path } });
          left -= bytesRead;
        }
      } catch (e) {
        close();
        throw e;
      }
      return { fd: fh.fd, start: offset, where: path, close };
    },
  };
}

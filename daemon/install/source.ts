/**
 * Where payload bytes come from: HTTP(S) mirrors (Range requests, If-Range on the ETag, identity
 * encoding, TLS with a private CA and a client certificate) or a local file.
 *
 * A source only opens byte streams at an offset; retries, mirror rotation, the stall watchdog and the
 * byte caps live in the installer, which knows the signed payload length. A server is never trusted
 * for anything but bytes: every chunk is checked against the signed index anyway.
 */
import { open } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { SlotflipError } from '../../hal/errors.js';

export interface OpenedStream {
  /** bytes of the payload file starting at `start` (which may be below the requested offset when a
   * server ignored the Range request; the caller skips the difference). Exactly one of `stream` and
   * `fd` is set. */
  stream?: Readable;
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
          const status = res.statusCode ?? 0;
          const details = { url: where, status, offset };
          if (status !== 200 && status !== 206) {
            res.resume();
            const retryable = status >= 500 || status === 408 || status === 429 || status === 404;
            fail(new SlotflipError('INSTALL_HTTP_STATUS', `${where}: HTTP ${status}; check the URL and the server`, { retryable, details }));
            return;
          }
          const enc = res.headers['content-encoding'];
          if (enc !== undefined && enc !== 'identity') {
            res.resume();
            fail(new SlotflipError('INSTALL_HTTP_STATUS', `${where}: server sent content-encoding ${enc} although identity was asked; byte offsets would be wrong`, { retryable: true, details }));
            return;
          }
          const etag = res.headers.etag;
          if (typeof etag === 'string' && !etag.startsWith('W/')) etags.set(mi, etag);
          else etags.delete(mi);
          let start = 0;
          let total: number | undefined;
          if (status === 206) {
            const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers['content-range'] ?? '');
            if (!m || Number(m[1]) !== offset) {
              res.resume();
              fail(new SlotflipError('INSTALL_HTTP_STATUS', `${where}: 206 with Content-Range "${res.headers['content-range'] ?? ''}" that does not start at ${offset}`, { retryable: true, details }));
              return;
            }
            start = offset;
            if (m[3] !== '*') total = Number(m[3]);
          } else {
            const cl = res.headers['content-length'];
            if (cl !== undefined) total = Number(cl);
          }
          if (total !== undefined && total !== length) {
            res.resume();
            const code = total < length ? 'INSTALL_PAYLOAD_TRUNCATED' : 'INSTALL_PAYLOAD_OVERSIZED';
            fail(new SlotflipError(code, `${where}: payload is ${total} bytes but the signed length is ${length}; the mirror holds a different file`, { retryable: true, details: { ...details, total, length } }));
            return;
          }
          const close = (): void => {
            signal.removeEventListener('abort', onAbort);
            res.destroy();
            req.destroy();
          };
          res.on('close', () => signal.removeEventListener('abort', onAbort));
          resolve({ stream: res, start, where, close });
        });
        req.end();
      });
    },
  };
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

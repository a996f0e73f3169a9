/**
 * A real node:http server on 127.0.0.1 (ephemeral port) that serves a directory with Range, If-Range
 * and strong ETags, plus fault knobs for installer and client tests: cut the connection after N bytes,
 * ignore Range, fixed statuses (5xx, 404 mid-way), content replaced between requests, throttling,
 * stalls, an endless body, no Content-Length.
 *
 * Knobs are plain data on `server.faults` and may be changed between requests. A knob given as an
 * array applies per request number (0-based, counting every request); `undefined` entries mean "no
 * fault for that request". Every request is recorded in `server.requests`.
 */
import { once } from 'node:events';
import { open, stat } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { resolve, sep } from 'node:path';

type PerRequest<T> = T | Array<T | undefined>;

export interface HttpFaults {
  /** destroy the socket after this many body bytes. */
  cutAfter?: PerRequest<number>;
  /** destroy the socket when the body reaches this offset in the file (for ranges covering it). */
  cutAtOffset?: PerRequest<number>;
  /** answer 200 with the whole file even when a Range was asked for. */
  ignoreRange?: PerRequest<boolean>;
  /** answer with this status (and a short text body) instead of the file. */
  status?: PerRequest<number>;
  /** serve this file (relative to root) instead of the one asked for: "content changed". */
  replaceWith?: PerRequest<string>;
  /** send this many body bytes, then nothing more while keeping the connection open. */
  stallAfter?: PerRequest<number>;
  /** wait this long before sending the response headers, ms. */
  headerDelayMs?: PerRequest<number>;
  /** throttle the body to about this many bytes per second. */
  bytesPerSecond?: PerRequest<number>;
  /** after the file's bytes, keep sending garbage until the client goes away (implies no length). */
  endless?: PerRequest<boolean>;
  /** send no Content-Length (chunked transfer encoding). */
  noLength?: PerRequest<boolean>;
}

export interface RequestRecord {
  method: string;
  path: string;
  range: string | undefined;
  ifRange: string | undefined;
  acceptEncoding: string | undefined;
  status: number;
  /** body bytes written before the response ended or was cut. */
  bytesSent: number;
}

export interface HttpServerHandle {
  /** base URL, e.g. `http://127.0.0.1:41234/` (always with a trailing slash). */
  url: string;
  port: number;
  faults: HttpFaults;
  requests: RequestRecord[];
  /** closes the server and every open connection; idempotent. */
  stop(): Promise<void>;
}

function pick<T>(knob: PerRequest<T> | undefined, n: number): T | undefined {
  if (Array.isArray(knob)) return knob[n];
  return knob;
}

/** ETag from inode, size and mtime: it changes whenever the file is replaced or rewritten. */
function etagOf(st: { ino: number; size: number; mtimeMs: number }): string {
  return `"${st.ino.toString(16)}-${st.size.toString(16)}-${Math.round(st.mtimeMs * 1000).toString(16)}"`;
}

/** `port`: listen there (e.g. the port of a server stopped before: "the server restarted"); default an
 * ephemeral port. `requests`: append to this list (a restarted server keeps one byte count). */
export async function startHttpServer(options: { root: string; faults?: HttpFaults; port?: number; requests?: RequestRecord[] }): Promise<HttpServerHandle> {
  const root = resolve(options.root);
  const faults: HttpFaults = options.faults ?? {};
  const requests: RequestRecord[] = options.requests ?? [];
  let stopping = false;

  const server = http.createServer((req, res) => {
    const n = requests.length;
    const rec: RequestRecord = {
      method: req.method ?? 'GET',
      path: req.url ?? '/',
      range: req.headers.range,
      ifRange: req.headers['if-range'] as string | undefined,
      acceptEncoding: req.headers['accept-encoding'],
      status: 0,
      bytesSent: 0,
    };
    requests.push(rec);
    void handle(req, res, n, rec).catch(() => {
      if (!res.headersSent) {
        res.statusCode = 500;
        rec.status = 500;
        res.end('internal error\n');
      } else res.destroy();
    });
  });

  async function handle(req: http.IncomingMessage, res: http.ServerResponse, n: number, rec: RequestRecord): Promise<void> {
    const delay = pick(faults.headerDelayMs, n);
    if (delay) await sleep(delay);
    const forced = pick(faults.status, n);
    if (forced !== undefined) {
      rec.status = forced;
      res.writeHead(forced, { 'content-type': 'text/plain' });
      res.end(`fault: status ${forced}\n`);
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      rec.status = 405;
      res.writeHead(405).end();
      return;
    }
    const urlPath = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    const rel = pick(faults.replaceWith, n) ?? urlPath;
    const file = resolve(root, `.${rel.startsWith('/') ? rel : `/${rel}`}`);
    if (file !== root && !file.startsWith(root + sep)) {
      rec.status = 403;
      res.writeHead(403).end();
      return;
    }
    let st;
    try {
      st = await stat(file);
    } catch {
      st = undefined;
    }
    if (!st || !st.isFile()) {
      rec.status = 404;
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    const etag = etagOf(st);
    let start = 0;
    let end = st.size; // exclusive
    let status = 200;
    const range = req.headers.range;
    const ifRange = req.headers['if-range'];
    const rangeAllowed = !pick(faults.ignoreRange, n) && (ifRange === undefined || ifRange === etag);
    if (range !== undefined && rangeAllowed) {
      const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
      if (m && (m[1] !== '' || m[2] !== '')) {
        if (m[1] === '') {
          start = Math.max(0, st.size - Number(m[2]));
        } else {
          start = Number(m[1]);
          if (m[2] !== '') end = Math.min(st.size, Number(m[2]) + 1);
        }
        if (start >= st.size || start >= end) {
          rec.status = 416;
          res.writeHead(416, { 'content-range': `bytes */${st.size}` }).end();
          return;
        }
        status = 206;
      }
    }
    const endless = pick(faults.endless, n) === true;
    const headers: http.OutgoingHttpHeaders = { 'content-type': 'application/octet-stream', etag, 'accept-ranges': 'bytes' };
    if (!endless && !pick(faults.noLength, n)) headers['content-length'] = end - start;
    if (status === 206) headers['content-range'] = `bytes ${start}-${end - 1}/${st.size}`;
    rec.status = status;
    res.writeHead(status, headers);
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    const cutAt = pick(faults.cutAtOffset, n);
    const cutAfter = pick(faults.cutAfter, n) ?? (cutAt !== undefined && cutAt >= start ? cutAt - start : undefined);
    const stallAfter = pick(faults.stallAfter, n);
    const bps = pick(faults.bytesPerSecond, n);
    const fh = await open(file, 'r');
    try {
      const piece = Buffer.allocUnsafe(bps !== undefined ? Math.max(1024, Math.min(64 << 10, Math.floor(bps / 10))) : 1 << 20);
      let pos = start;
      const write = async (data: Buffer): Promise<boolean> => {
        if (res.destroyed) return false;
        rec.bytesSent += data.length;
        if (!res.write(data)) {
          // the losing `once` is cancelled: left waiting, each backpressure wait left a 'close' and an
          // 'error' listener on the response (MaxListenersExceededWarning after 11 waits, in CI logs)
          const settled = new AbortController();
          await Promise.race([once(res, 'drain', { signal: settled.signal }), once(res, 'close', { signal: settled.signal })]).finally(() => settled.abort());
        }
        if (bps !== undefined) await sleep((data.length / bps) * 1000);
        return !res.destroyed;
      };
      while (pos < end || endless) {
        if (stopping || res.destroyed) return;
        let want = Math.min(piece.length, pos < end ? end - pos : piece.length);
        if (cutAfter !== undefined) {
          want = Math.min(want, cutAfter - rec.bytesSent);
          if (want <= 0) {
            // let what was written reach the kernel first, so the client sees exactly `cutAfter` bytes
            await new Promise<void>((r) => res.write('', () => r()));
            (res.socket ?? req.socket).destroy();
            res.destroy();
            return;
          }
        }
        if (stallAfter !== undefined) {
          want = Math.min(want, stallAfter - rec.bytesSent);
          if (want <= 0) {
            await once(res, 'close');
            return;
          }
        }
        let chunk: Buffer;
        if (pos < end) {
          const { bytesRead } = await fh.read(piece, 0, want, pos);
          if (bytesRead === 0) break;
          chunk = Buffer.from(piece.subarray(0, bytesRead));
          pos += bytesRead;
        } else {
          chunk = Buffer.alloc(want, 0x5a); // endless tail
        }
        if (!(await write(chunk))) return;
      }
      res.end();
    } finally {
      await fh.close();
    }
  }

  server.listen(options.port ?? 0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/`,
    port,
    faults,
    requests,
    async stop() {
      if (stopping) return;
      stopping = true;
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

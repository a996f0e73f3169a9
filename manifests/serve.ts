/**
 * A static server for a published repository (`metadata/`, `targets/`): GET and HEAD with single
 * byte ranges, strong ETags, If-Range and If-None-Match, so devices can resume payload downloads
 * against it. `slotflip repo serve` runs it for a lab or a small fleet; the demo and tests embed it.
 * A fleet that outgrows one machine puts the same directory on a CDN or object store.
 *
 * What it refuses: anything but GET/HEAD (405), paths that leave `root` — `..`, encoded slashes,
 * NUL, symlinks pointing outside (404, the same answer as a missing file, so nothing is learnt about
 * the host), directories (no listings), dotfiles. At most `maxConcurrent` responses are in flight;
 * beyond that a request gets 503 with `Retry-After: 1` at once (devices retry with backoff), so a
 * fleet waking together cannot exhaust file descriptors or memory: each response streams with a
 * 1 MiB buffer.
 *
 * Multi-range requests (`bytes=a-b,c-d,...`, what a delta install sends) get one 206
 * `multipart/byteranges` answer with the parts in the order asked (RFC 9110 §14.6), up to
 * MAX_RANGES ranges; more ranges than that get the whole file (200), which RFC 9110 allows.
 * Trade-off: no compression (payloads are compressed already, and a Content-Encoding would break
 * byte ranges).
 */
import { randomBytes } from 'node:crypto';
import { realpath, stat } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { resolve, sep } from 'node:path';
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { nodeFs, nodeHttp } from '../hal/builtins.js';
const { createReadStream } = nodeFs;
const http = nodeHttp();

export interface RepoServer {
  /** base URL with a trailing slash, e.g. `http://127.0.0.1:41234/`. */
  url: string;
  port: number;
  /** stops accepting; responses in flight may finish for `graceMs` (default 0), then every
   * connection is closed. Idempotent. */
  close(graceMs?: number): Promise<void>;
}

/** One access-log entry, handed to `onRequest` when a response finished (or the client went away). */
export interface AccessLogEntry {
  method: string;
  /** the request path as sent (query string dropped). */
  path: string;
  status: number;
  /** body bytes written. */
  bytes: number;
  /** the Range header, when one was sent. */
  range?: string;
  remote?: string;
  userAgent?: string;
  durationMs: number;
  /** false when the connection closed before the response was complete. */
  complete: boolean;
}

export interface ServeOptions {
  /** listen address; default 127.0.0.1. */
  host?: string;
  /** default 0: a free port. */
  port?: number;
  /** responses in flight at most; more get 503 + Retry-After (default 64). */
  maxConcurrent?: number;
  /** access log: called once per request when it finished. */
  onRequest?: (entry: AccessLogEntry) => void;
}

export const DEFAULT_MAX_CONCURRENT = 64;
/** Ranges one multi-range request may ask for; beyond it the whole file is sent. */
export const MAX_RANGES = 1024;

/** Parses `bytes=a-b,c-d,...` against `size`: the satisfiable ranges in the order asked; undefined
 * when absent, not bytes, or more than MAX_RANGES (answered with the whole file), 'invalid' when none
 * is satisfiable. Pure. */
export function parseRanges(header: string | undefined, size: number): { start: number; end: number }[] | 'invalid' | undefined {
  if (!header) return undefined;
  const h = header.trim();
  if (!h.startsWith('bytes=')) return undefined;
  const specs = h.slice(6).split(',');
  if (specs.length > MAX_RANGES) return undefined;
  const out: { start: number; end: number }[] = [];
  for (const spec of specs) {
    const r = parseRange(`bytes=${spec.trim()}`, size);
    if (r === undefined) return undefined;
    if (r !== 'invalid') out.push(r);
  }
  return out.length === 0 ? 'invalid' : out;
}

/** Parses a single `bytes=a-b` / `bytes=a-` / `bytes=-n` range against `size`; undefined when absent
 * or not a single byte range (answered with the whole file), 'invalid' when unsatisfiable. Pure. */
export function parseRange(header: string | undefined, size: number): { start: number; end: number } | 'invalid' | undefined {
  if (!header) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m) return /^bytes=/.test(header.trim()) && header.includes(',') ? undefined : 'invalid';
  if (m[1] === '' && m[2] === '') return 'invalid';
  if (m[1] === '') {
    const n = Number(m[2]);
    if (n === 0 || size === 0) return 'invalid';
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(m[1]);
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (start >= size || end < start) return 'invalid';
  return { start, end };
}

/** The file under `base` a request path names, or undefined when it must not be served. */
async function fileFor(base: string, realBase: string, rawUrl: string): Promise<{ path: string; size: number; etag: string; mtime: Date } | undefined> {
  let pathname: string;
  try {
    pathname = new URL(rawUrl, 'http://x').pathname;
    // an encoded slash or backslash would let one segment name several
    if (/%2f|%5c/i.test(pathname)) return undefined;
    pathname = decodeURIComponent(pathname);
  } catch {
    return undefined;
  }
  if (pathname.includes('\0') || pathname.split('/').some((s) => s.startsWith('.'))) return undefined;
  const path = resolve(base, '.' + pathname);
  if (!path.startsWith(base + sep)) return undefined;
  // a symlink inside the tree may point anywhere: serve only what really lies under the root
  const real = await realpath(path).catch(() => undefined);
  if (!real || !real.startsWith(realBase + sep)) return undefined;
  const st = await stat(real).catch(() => undefined);
  if (!st?.isFile()) return undefined;
  const etag = `"${st.ino.toString(16)}-${st.size.toString(16)}-${Math.trunc(st.mtimeMs).toString(16)}"`;
  return { path: real, size: st.size, etag, mtime: st.mtime };
}

/** Answers a multi-range request: 206 multipart/byteranges, parts streamed one after the other. */
function sendMultipart(req: IncomingMessage, res: ServerResponse, file: { path: string; size: number }, ranges: { start: number; end: number }[], headers: OutgoingHttpHeaders): void {
  // fixed length (24 hex digits): the multipart framing of the same ranges is the same number of bytes
  const boundary = `slotflip-${randomBytes(12).toString('hex')}`;
  const type = headers['content-type'] as string;
  const heads = ranges.map((r, i) => Buffer.from(`${i === 0 ? '' : '\r\n'}--${boundary}\r\ncontent-type: ${type}\r\ncontent-range: bytes ${r.start}-${r.end}/${file.size}\r\n\r\n`));
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
  const length = heads.reduce((n, h, i) => n + h.length + ranges[i]!.end - ranges[i]!.start + 1, tail.length);
  res.writeHead(206, { ...headers, 'content-type': `multipart/byteranges; boundary=${boundary}`, 'content-length': length });
  if (req.method === 'HEAD') {
    res.end();
    return;
  }
  let i = 0;
  let current: ReturnType<typeof createReadStream> | undefined;
  res.once('close', () => current?.destroy());
  const next = (): void => {
    if (res.destroyed) return;
    if (i === ranges.length) {
      res.write(tail);
      res.end();
      return;
    }
    const r = ranges[i]!;
    res.write(heads[i++]!);
    const stream = createReadStream(file.path, { start: r.start, end: r.end, highWaterMark: 1 << 20 });
    current = stream;
    stream.on('error', () => res.destroy());
    stream.on('end', next);
    stream.pipe(res, { end: false });
  };
  next();
}

export async function serveRepository(root: string, opts: ServeOptions = {}): Promise<RepoServer> {
  const base = resolve(root);
  const realBase = await realpath(base);
  const maxConcurrent = opts.maxConcurrent ?? DEFAULT_MAX_CONCURRENT;
  let inFlight = 0;
  const server = http.createServer((req, res) => {
    const started = performance.now();
    let bytes = 0;
    let counted = false;
    const write = res.write.bind(res) as (chunk: Buffer, ...rest: unknown[]) => boolean;
    res.write = ((chunk: Buffer, ...rest: unknown[]) => {
      bytes += chunk.length;
      return write(chunk, ...rest);
    }) as typeof res.write;
    res.once('close', () => {
      if (counted) inFlight--;
      opts.onRequest?.({
        method: req.method ?? '',
        path: (req.url ?? '').split('?')[0]!,
        status: res.statusCode,
        bytes,
        ...(req.headers.range ? { range: req.headers.range } : {}),
        ...(req.socket.remoteAddress ? { remote: req.socket.remoteAddress } : {}),
        ...(req.headers['user-agent'] ? { userAgent: req.headers['user-agent'] } : {}),
        durationMs: Math.round(performance.now() - started),
        complete: res.writableFinished,
      });
    });
    void (async () => {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      if (inFlight >= maxConcurrent) {
        res.writeHead(503, { 'retry-after': '1' }).end();
        return;
      }
      inFlight++;
      counted = true;
      const file = await fileFor(base, realBase, req.url ?? '/');
      if (!file) {
        res.writeHead(404).end();
        return;
      }
      const headers: OutgoingHttpHeaders = {
        etag: file.etag,
        'last-modified': file.mtime.toUTCString(),
        'accept-ranges': 'bytes',
        'content-type': file.path.endsWith('.json') ? 'application/json' : 'application/octet-stream',
        // metadata changes in place (timestamp.json): caches must revalidate; payloads never change
        'cache-control': file.path.endsWith('.json') ? 'no-cache' : 'public, max-age=86400',
      };
      if (req.headers['if-none-match'] !== undefined && req.headers['if-none-match'].split(/\s*,\s*/).includes(file.etag)) {
        res.writeHead(304, headers).end();
        return;
      }
      const ifRange = req.headers['if-range'];
      const rangeHeader = ifRange === undefined || ifRange === file.etag ? req.headers.range : undefined;
      const multi = rangeHeader?.includes(',') ? parseRanges(rangeHeader, file.size) : undefined;
      if (multi === 'invalid') {
        res.writeHead(416, { ...headers, 'content-range': `bytes */${file.size}` }).end();
        return;
      }
      if (multi && multi.length > 1) {
        sendMultipart(req, res, file, multi, headers);
        return;
      }
      const range = multi ? multi[0] : parseRange(rangeHeader, file.size);
      if (range === 'invalid') {
        res.writeHead(416, { ...headers, 'content-range': `bytes */${file.size}` }).end();
        return;
      }
      const { start, end } = range ?? { start: 0, end: file.size - 1 };
      const length = file.size === 0 ? 0 : end - start + 1;
      res.writeHead(range ? 206 : 200, { ...headers, 'content-length': length, ...(range ? { 'content-range': `bytes ${start}-${end}/${file.size}` } : {}) });
      if (req.method === 'HEAD' || length === 0) {
        res.end();
        return;
      }
      const stream = createReadStream(file.path, { start, end, highWaterMark: 1 << 20 });
      stream.on('error', () => res.destroy());
      res.once('close', () => stream.destroy());
      stream.pipe(res);
    })().catch(() => res.destroy());
  });
  server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1');
  await new Promise<void>((ok, fail) => {
    server.once('listening', ok);
    server.once('error', fail);
  });
  const { port } = server.address() as AddressInfo;
  const host = opts.host ?? '127.0.0.1';
  let closed: Promise<void> | undefined;
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}/`,
    port,
    close(graceMs = 0) {
      closed ??= new Promise<void>((ok) => {
        server.close(() => {
          clearTimeout(timer);
          ok();
        });
        server.closeIdleConnections();
        const timer = setTimeout(() => server.closeAllConnections(), graceMs);
      });
      return closed;
    },
  };
}

/**
 * A small static server for a published repository (`metadata/`, `targets/`): GET and HEAD with
 * single byte ranges, strong ETags and If-Range, so devices can resume payload downloads against it.
 * For labs, demos and small fleets; a fleet that outgrows one machine puts the same directory on a
 * CDN or object store. Serves only regular files under `root`; no directory listings.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { resolve, sep } from 'node:path';

export interface RepoServer {
  /** base URL with a trailing slash, e.g. `http://127.0.0.1:41234/`. */
  url: string;
  port: number;
  /** stops accepting and closes every open connection; idempotent. */
  close(): Promise<void>;
}

/** Parses a single `bytes=a-b` / `bytes=a-` / `bytes=-n` range against `size`; undefined when absent or unsatisfiable. */
export function parseRange(header: string | undefined, size: number): { start: number; end: number } | 'invalid' | undefined {
  if (!header) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return 'invalid';
  if (m[1] === '') {
    const n = Number(m[2]);
    if (n === 0) return 'invalid';
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(m[1]);
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (start >= size || end < start) return 'invalid';
  return { start, end };
}

export async function serveRepository(root: string, opts: { host?: string; port?: number } = {}): Promise<RepoServer> {
  const base = resolve(root);
  const server = http.createServer((req, res) => {
    void (async () => {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      let path: string;
      try {
        path = resolve(base, '.' + decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname));
      } catch {
        res.writeHead(400).end();
        return;
      }
      if (path !== base && !path.startsWith(base + sep)) {
        res.writeHead(404).end();
        return;
      }
      const st = await stat(path).catch(() => undefined);
      if (!st?.isFile()) {
        res.writeHead(404).end();
        return;
      }
      const etag = `"${st.ino.toString(16)}-${st.size.toString(16)}-${Math.trunc(st.mtimeMs).toString(16)}"`;
      const ifRange = req.headers['if-range'];
      const rangeHeader = ifRange === undefined || ifRange === etag ? req.headers.range : undefined;
      const range = parseRange(rangeHeader, st.size);
      const headers: http.OutgoingHttpHeaders = { etag, 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream' };
      if (range === 'invalid') {
        res.writeHead(416, { ...headers, 'content-range': `bytes */${st.size}` }).end();
        return;
      }
      const { start, end } = range ?? { start: 0, end: st.size - 1 };
      const length = st.size === 0 ? 0 : end - start + 1;
      res.writeHead(range ? 206 : 200, { ...headers, 'content-length': length, ...(range ? { 'content-range': `bytes ${start}-${end}/${st.size}` } : {}) });
      if (req.method === 'HEAD' || length === 0) {
        res.end();
        return;
      }
      const stream = createReadStream(path, { start, end, highWaterMark: 1 << 20 });
      stream.on('error', () => res.destroy());
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
    close() {
      closed ??= new Promise<void>((ok) => {
        server.close(() => ok());
        server.closeAllConnections();
      });
      return closed;
    },
  };
}

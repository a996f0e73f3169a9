/**
 * One HTTP(S) GET over node:http / node:https: TUF metadata from a static host or CDN
 * (client.ts `fetchCapped`) and the daemon's HTTP health checks.
 *
 * Why not the built-in `fetch`: it is undici, a large module an idle daemon loads at its first HTTP
 * refresh and keeps (several MiB of RSS, issue 16), and its HTTP parser is WebAssembly, which
 * `--jitless` turns off. node:http's parser is native; node:http and node:https are loaded on the
 * first request, node:https (with node:tls) only for an https URL.
 *
 * Kept from `fetch` (what the callers relied on): http and https URLs only, credentials in the URL
 * refused, redirects (301/302/303/307/308) followed up to 20 times or returned as they are
 * ('manual'), `Authorization`/`Cookie` headers dropped when a redirect leaves the origin, the
 * default TLS trust (Node's CA store plus NODE_EXTRA_CA_CERTS), one abort signal covering the whole
 * exchange, body included. Not kept: content decoding (callers ask for `identity`), cookies, caches.
 * No connection is kept alive: a device fetches a few small files every few hours.
 */
import { createRequire } from 'node:module';
import type { IncomingHttpHeaders, IncomingMessage, ClientRequest } from 'node:http';

// require, not import(): an ES import of node:http builds its namespace from every export, and
// `http.WebSocket` / `MessageEvent` / `CloseEvent` are getters that load undici — what this module
// exists to avoid (checked by test/e2e/daemon-module-graph.test.ts)
const require = createRequire(import.meta.url);

export interface HttpGetOptions {
  headers?: Record<string, string>;
  /** aborts the request, the redirects and the body (the body then errors with the signal's reason). */
  signal?: AbortSignal;
  /** 'follow' (default) up to `maxRedirects`; 'manual' returns the 3xx response itself. */
  redirect?: 'follow' | 'manual';
  /** default 20 (as fetch). */
  maxRedirects?: number;
}

export interface HttpGetResponse {
  status: number;
  headers: IncomingHttpHeaders;
  /** the URL that answered (after redirects). */
  url: string;
  /** the body as Buffers; errors with the signal's reason on abort, or when the connection breaks. */
  body: AsyncIterable<Buffer>;
  /** discards the rest of the body and closes the connection. Idempotent. */
  cancel(): void;
}

/** A failure of the exchange itself (no usable answer); `cause` holds the socket/TLS error. */
export class HttpGetError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'HttpGetError';
  }
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const CROSS_ORIGIN_DROPPED = ['authorization', 'cookie', 'proxy-authorization'];

export async function httpGet(url: string | URL, options: HttpGetOptions = {}): Promise<HttpGetResponse> {
  let current = new URL(url);
  let headers: Record<string, string> = { accept: '*/*', 'user-agent': 'slotflip', ...lowerCased(options.headers ?? {}) };
  const max = options.maxRedirects ?? 20;
  for (let hops = 0; ; hops++) {
    const res = await once(current, headers, options.signal);
    const location = res.headers.location;
    if ((options.redirect ?? 'follow') === 'manual' || !REDIRECTS.has(res.status) || location === undefined) return res;
    res.cancel();
    if (hops >= max) throw new HttpGetError(`GET ${String(url)}: more than ${max} redirects`);
    let next: URL;
    try {
      next = new URL(location, current);
    } catch (cause) {
      throw new HttpGetError(`GET ${current.href}: redirect to an invalid location ${JSON.stringify(location)}`, { cause });
    }
    if (next.origin !== current.origin) headers = Object.fromEntries(Object.entries(headers).filter(([k]) => !CROSS_ORIGIN_DROPPED.includes(k)));
    current = next;
  }
}

function lowerCased(h: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(h).map(([k, v]) => [k.toLowerCase(), v]));
}

async function once(url: URL, headers: Record<string, string>, signal: AbortSignal | undefined): Promise<HttpGetResponse> {
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new HttpGetError(`GET ${url.href}: only http and https URLs are fetched`);
  if (url.username || url.password) throw new HttpGetError(`GET ${url.protocol}//${url.host}${url.pathname}: credentials in the URL are refused; use a header`);
  signal?.throwIfAborted();
  // loaded on the first request; node:https (and node:tls with it) only for an https URL
  const mod = url.protocol === 'https:' ? (require('node:https') as typeof import('node:https')) : (require('node:http') as typeof import('node:http'));
  return new Promise<HttpGetResponse>((resolve, reject) => {
    let req: ClientRequest;
    let res: IncomingMessage | undefined;
    const onAbort = (): void => {
      const reason = signal!.reason instanceof Error ? signal!.reason : new HttpGetError(`GET ${url.href}: aborted`);
      req.destroy(reason);
      res?.destroy(reason);
      reject(reason);
    };
    const done = (): void => signal?.removeEventListener('abort', onAbort);
    try {
      req = mod.request(url, { method: 'GET', headers, agent: false });
    } catch (cause) {
      reject(new HttpGetError(`GET ${url.href}: request refused`, { cause }));
      return;
    }
    signal?.addEventListener('abort', onAbort, { once: true });
    req.once('error', (cause) => {
      done();
      const code = (cause as NodeJS.ErrnoException).code;
      reject(signal?.aborted ? cause : new HttpGetError(`GET ${url.href} failed${code ? ` (${code})` : ''}`, { cause }));
    });
    req.once('response', (r) => {
      res = r;
      r.once('close', done);
      resolve({
        status: r.statusCode ?? 0,
        headers: r.headers,
        url: url.href,
        body: r,
        cancel: () => {
          done();
          r.destroy();
          req.destroy();
        },
      });
    });
    req.end();
  });
}

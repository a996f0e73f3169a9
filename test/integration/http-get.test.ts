// TUF metadata over node:http (manifests/http-get.ts behind client.ts fetchCapped): what the device
// relied on when this was `fetch` — redirects, caps before and while reading, one timeout over the
// whole exchange, TLS trust, and the error codes — against real loopback servers.
import t from 'tap';
import { createServer, type IncomingHttpHeaders, type RequestListener, type Server } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { fetchCapped } from '../../manifests/client.js';
import { httpGet } from '../../manifests/http-get.js';

async function serve(t: { teardown(fn: () => unknown): void }, handler: RequestListener, server: Server = createServer(), scheme = 'http'): Promise<string> {
  server.on('request', handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));
  return `${scheme}://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

t.test('redirects: followed (relative and cross-origin), or returned as they are with manual; loops end', async (t) => {
  const seen: IncomingHttpHeaders[] = [];
  const other = await serve(t, (req, res) => { seen.push(req.headers); res.end('from the mirror'); });
  const origin = await serve(t, (req, res) => {
    seen.push(req.headers);
    if (req.url === '/a') res.writeHead(302, { location: '/b' }).end();
    else if (req.url === '/b') res.writeHead(301, { location: `${other}/c` }).end();
    else if (req.url === '/loop') res.writeHead(307, { location: '/loop' }).end();
    else res.writeHead(404).end();
  });
  const bytes = await fetchCapped(`${origin}/a`, 1024, { headers: { authorization: 'Bearer device-token' } });
  t.equal(Buffer.from(bytes!).toString(), 'from the mirror');
  t.same(seen.map((h) => h.authorization), ['Bearer device-token', 'Bearer device-token', undefined], 'the token goes to the origin only, not to the host it redirects to');
  t.ok(seen.every((h) => h['accept-encoding'] === 'identity'), 'identity on every hop');
  const manual = await httpGet(`${origin}/a`, { redirect: 'manual' });
  manual.cancel();
  t.same([manual.status, manual.headers.location], [302, '/b']);
  await t.rejects(fetchCapped(`${origin}/loop`, 1024), { code: 'MANIFEST_FETCH_FAILED', retryable: true });
  t.equal(seen.filter((h) => h.host === new URL(origin).host).length, 2 + 1 + 21, 'a redirect loop stops after 20 redirects');
});

t.test('caps: a declared length over the cap is refused before the body, an undeclared one while reading', async (t) => {
  let written = 0;
  const url = await serve(t, (req, res) => {
    if (req.url === '/declared') {
      res.writeHead(200, { 'content-length': String(10 << 20) });
      res.write(Buffer.alloc(1024));
      return; // never finishes: the client must not wait for it
    }
    // chunked, endless: the client stops it
    res.writeHead(200);
    const more = (): void => { while (res.write(Buffer.alloc(16 * 1024))) written += 16 * 1024; };
    res.on('drain', more);
    more();
  });
  await t.rejects(fetchCapped(`${url}/declared`, 4096, { timeoutMs: 5000 }), { code: 'MANIFEST_TOO_LARGE', details: { maxBytes: 4096 } });
  await t.rejects(fetchCapped(`${url}/endless`, 64 * 1024, { timeoutMs: 5000 }), { code: 'MANIFEST_TOO_LARGE' });
  t.ok(written < 8 << 20, `the endless body was cut early (${written} bytes written)`);
});

t.test('one timeout covers headers and body; statuses map as before', async (t) => {
  const url = await serve(t, (req, res) => {
    if (req.url === '/stall') { res.writeHead(200, { 'content-length': '100' }); res.write('x'); return; }
    if (req.url === '/slowhead') return; // never answers
    const status = Number(req.url!.slice(1));
    res.writeHead(status).end('status body');
  });
  for (const path of ['/stall', '/slowhead']) {
    const t0 = Date.now();
    await t.rejects(fetchCapped(`${url}${path}`, 1024, { timeoutMs: 300 }), { code: 'MANIFEST_FETCH_FAILED', retryable: true }, path);
    t.ok(Date.now() - t0 < 3000, `${path}: gave up after the timeout (${Date.now() - t0} ms)`);
  }
  for (const s of [404, 403, 410]) t.equal(await fetchCapped(`${url}/${s}`, 1024), undefined, `${s}: absent`);
  await t.rejects(fetchCapped(`${url}/503`, 1024), { code: 'MANIFEST_FETCH_FAILED', retryable: true, details: { status: 503 } });
  await t.rejects(fetchCapped(`${url}/429`, 1024), { code: 'MANIFEST_FETCH_FAILED', retryable: true, details: { status: 429 } });
  await t.rejects(fetchCapped(`${url}/400`, 1024), { code: 'MANIFEST_FETCH_FAILED', retryable: false, details: { status: 400 } });
  await t.rejects(fetchCapped('http://127.0.0.1:1/x', 1024), { code: 'MANIFEST_FETCH_FAILED', retryable: true }, 'connection refused');
  await t.rejects(fetchCapped(url.replace('http://', 'http://user:secret@') + '/200', 1024), { code: 'MANIFEST_FETCH_FAILED' }, 'credentials in the URL refused');
  await t.rejects(fetchCapped('ftp://127.0.0.1/x', 1024), { code: 'MANIFEST_FETCH_FAILED' }, 'only http(s)');
});

t.test('https: a server whose certificate the default trust store does not know is refused', async (t) => {
  const dir = t.testdir();
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'k.pem'), '-out', join(dir, 'c.pem'), '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  const server = createTlsServer({ key: readFileSync(join(dir, 'k.pem')), cert: readFileSync(join(dir, 'c.pem')) });
  const base = await serve(t, (_req, res) => res.end('secret'), server as unknown as Server, 'https');
  t.match(base, /^https:/);
  const err = await fetchCapped(`${base}/x`, 1024).catch((e: unknown) => e);
  t.match(err, { code: 'MANIFEST_FETCH_FAILED', retryable: true });
  t.match(String((err as { cause?: { cause?: { code?: string } } }).cause?.cause?.code), /SELF_SIGNED|UNABLE_TO_VERIFY|DEPTH_ZERO/, 'refused for its certificate');
});

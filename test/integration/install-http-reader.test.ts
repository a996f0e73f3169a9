/**
 * The plain-HTTP response reader (daemon/install/source.ts plainGet) from outside, against a real
 * server on loopback: body bytes arrive in ONE reused buffer (no allocation per read), ranges and
 * If-Range work as through node:http, chunked bodies and error pages behave, and the whole install
 * path (v1 and 'none' compression, which reuse their input ring) still writes the signed image.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { httpSource, type OpenedStream } from '../../daemon/install/source.js';
import { codeOf } from '../../hal/errors.js';
import { startHttpServer, type HttpFaults } from '../harness/http-server.js';
import { setup } from '../harness/install-env.js';

const SIZE = 3 * 1024 * 1024 + 12345;

async function server(t: { teardown(fn: () => unknown): void }, faults: HttpFaults = {}): Promise<{ url: string; data: Buffer; srv: Awaited<ReturnType<typeof startHttpServer>> }> {
  const dir = await mkdtemp(join(tmpdir(), 'slotflip-reader-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const data = randomBytes(SIZE);
  await writeFile(join(dir, 'p.bin'), data);
  const srv = await startHttpServer({ root: dir, faults });
  t.teardown(() => srv.stop());
  return { url: `${srv.url}p.bin`, data, srv };
}

/** Reads an opened stream to its end; returns the bytes and how many distinct ArrayBuffers held them. */
async function drain(o: OpenedStream): Promise<{ bytes: Buffer; buffers: number; pieces: number }> {
  const h: Buffer[] = [];
  const seen = new Set<ArrayBufferLike>();
  let pieces = 0;
  await new Promise<void>((resolve, reject) => {
    const s = o.stream!;
    s.on('data', (d: Buffer) => {
      pieces++;
      seen.add(d.buffer);
      h.push(Buffer.from(d)); // a copy: the piece is only valid during the callback
    });
    s.once('end', resolve);
    s.on('error', reject);
  });
  return { bytes: Buffer.concat(h), buffers: seen.size, pieces };
}

t.test('a plain-HTTP body arrives in one reused buffer, byte-exact', async (t) => {
  const { url, data } = await server(t);
  const o = await httpSource({ mirrors: [url] }).open(0, 0, SIZE, new AbortController().signal);
  t.equal(o.start, 0);
  const r = await drain(o);
  t.ok(r.bytes.equals(data), 'the bytes are the file');
  t.ok(r.pieces > 10, `many reads (${r.pieces})`);
  // the first piece may be the bytes that came with the response head (a copy of their own)
  t.ok(r.buffers <= 2, `${r.pieces} pieces held in ${r.buffers} buffer(s), not one per read`);
});

t.test('ranges: 206 from an offset, If-Range with the ETag on the next open, bounded end', async (t) => {
  const { url, data, srv } = await server(t);
  const src = httpSource({ mirrors: [url] });
  const a = await src.open(0, 0, SIZE, new AbortController().signal);
  a.close();
  const o = await src.open(0, 1_000_000, SIZE, new AbortController().signal, 2_000_000);
  t.equal(o.start, 1_000_000);
  const r = await drain(o);
  t.ok(r.bytes.equals(data.subarray(1_000_000, 2_000_000)));
  const q = srv.requests.at(-1)!;
  t.equal(q.range, 'bytes=1000000-1999999');
  t.equal(q.status, 206);
  t.equal(srv.requests[0]!.ifRange, undefined);
  t.match(q.ifRange, /^".+"$/, 'If-Range sent with the ETag the first response carried');
  t.equal(q.acceptEncoding, 'identity');
});

t.test('a chunked body is read through node:http (one more request), error pages are refused at once', async (t) => {
  const { url, data, srv } = await server(t, { noLength: true });
  const o = await httpSource({ mirrors: [url] }).open(0, 0, SIZE, new AbortController().signal);
  const r = await drain(o);
  t.ok(r.bytes.equals(data));
  t.equal(srv.requests.length, 2, 'the plain reader left the chunked response to node:http');
  srv.faults.status = 503;
  srv.faults.noLength = false;
  const e = await httpSource({ mirrors: [url] }).open(0, 0, SIZE, new AbortController().signal).catch((x: unknown) => x);
  t.equal(codeOf(e), 'INSTALL_HTTP_STATUS');
  t.equal(srv.requests.length, 3, 'one request for an error page');
});

t.test('a wrong length and a cut body are reported with the codes node:http gives', async (t) => {
  const { url, srv } = await server(t);
  const e = await httpSource({ mirrors: [url] }).open(0, 0, SIZE + 1, new AbortController().signal).catch((x: unknown) => x);
  t.equal(codeOf(e), 'INSTALL_PAYLOAD_TRUNCATED');
  srv.faults.cutAfter = 500_000;
  const o = await httpSource({ mirrors: [url] }).open(0, 0, SIZE, new AbortController().signal);
  const cut = await drain(o).catch((x: unknown) => x);
  t.equal((cut as NodeJS.ErrnoException).code, 'ECONNRESET', 'a body cut short is an error, not an end');
  const refused = await httpSource({ mirrors: ['http://127.0.0.1:1/p.bin'] }).open(0, 0, SIZE, new AbortController().signal).catch((x: unknown) => x);
  t.equal(codeOf(refused), 'INSTALL_NETWORK');
  const ac = new AbortController();
  srv.faults.cutAfter = undefined;
  srv.faults.headerDelayMs = 2000;
  const p = httpSource({ mirrors: [url] }).open(0, 0, SIZE, ac.signal).catch((x: unknown) => x);
  ac.abort();
  t.equal(codeOf(await p), 'INSTALL_ABORTED');
});

for (const compression of ['none', 'gzip', 'zstd'] as const) {
  t.test(`the installer over the plain reader writes the signed image (${compression}, v1 target hash)`, async (t) => {
    const e = await setup(t, compression);
    const targetSha256 = createHash('sha256').update(await readFile(e.p.file)).digest('hex');
    const r = await e.install({ targetSha256 });
    t.ok(await e.slotMatches());
    t.equal(r.transfers, 1);
    t.same(e.srv.requests.map((q) => q.status), [200], 'one plain request');
  });
}

t.test('a local payload file whose bytes are checked is read into one reused buffer and installs (v1 target hash, v2-less index)', async (t) => {
  const e = await setup(t, 'zstd');
  const targetSha256 = createHash('sha256').update(await readFile(e.p.file)).digest('hex');
  const r = await e.install({ source: { path: e.p.file }, targetSha256 });
  t.ok(await e.slotMatches());
  t.equal(r.bytesReceived, e.p.length, 'every compressed byte passed through the check once');
  const bad = await e.install({ source: { path: e.p.file }, targetSha256: 'f'.repeat(64) }).catch((x: unknown) => x);
  t.equal(codeOf(bad), 'INSTALL_PAYLOAD_HASH_MISMATCH', 'a file that is not the signed one is refused (a file is not retried)');
});

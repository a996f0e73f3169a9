/**
 * The installer against a real HTTP server on loopback: resume after cuts, servers that ignore Range,
 * content that changes between requests, mirrors, 5xx/404, stalls, slow servers, truncated, endless
 * and oversized payloads.
 */
import t from 'tap';
import { join } from 'node:path';
import { copyFile, readFile, truncate, appendFile, writeFile } from 'node:fs/promises';
import { installPayload, type InstallOptions, type InstallResult } from '../../daemon/install/index.js';
import { codeOf } from '../../hal/errors.js';
import { startHttpServer, type HttpFaults, type HttpServerHandle } from '../harness/http-server.js';
import { createPathSlot } from '../bench/path-slot.js';
import { makePayload, makeSlotFile, type PayloadFixture } from '../bench/install-fixtures.js';
import type { Compression } from '../../manifests/types.js';

const CHUNK = 64 << 10;
const SIZE = (2 << 20) + 12345; // 33 chunks, the last one short
const PATTERN = 0xa5;

interface Env {
  dir: string;
  p: PayloadFixture;
  srv: HttpServerHandle;
  slotPath: string;
  install(extra?: Partial<InstallOptions>): Promise<InstallResult>;
  slotMatches(): Promise<boolean>;
}

/** the part of tap's Test that setup needs */
interface TestLike {
  testdir(): string;
  teardown(fn: () => unknown): void;
}

async function setup(t: TestLike, compression: Compression = 'zstd', faults: HttpFaults = {}): Promise<Env> {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression });
  const srv = await startHttpServer({ root: dir, faults });
  t.teardown(() => srv.stop());
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE + 4096);
  return {
    dir,
    p,
    srv,
    slotPath,
    install: (extra = {}) =>
      installPayload({
        payload: p.payload,
        length: p.length,
        source: { urls: [srv.url + p.name] },
        slot: createPathSlot('B', slotPath),
        resumeStatePath: join(dir, 'resume.json'),
        retry: { baseDelayMs: 1, maxDelayMs: 5, maxAttempts: 4 },
        watchdog: { stallTimeoutMs: 5000 },
        ...extra,
      }),
    async slotMatches() {
      const [slot, img] = await Promise.all([readFile(slotPath), readFile(p.image)]);
      return slot.subarray(0, SIZE).equals(img) && slot.subarray(SIZE).every((b) => b === PATTERN);
    },
  };
}

/** chunks whose compressed frame lies entirely in the first `bytes` payload bytes. */
function completeChunks(p: PayloadFixture, bytes: number): number {
  return p.payload.chunks.filter((c) => c.offset + c.length <= bytes).length;
}

for (const compression of ['zstd', 'gzip', 'none'] as const) {
  t.test(`${compression} over HTTP installs, verifies and records completion`, async (t) => {
    const e = await setup(t, compression);
    const progress: number[] = [];
    const r = await e.install({ onProgress: (x) => progress.push(x.bytes) });
    t.equal(r.readBackSha256, e.p.payload.sha256);
    t.equal(r.transfers, 1);
    t.equal(r.bytesReceived, e.p.length);
    t.equal(e.srv.requests.length, 1);
    t.equal(e.srv.requests[0]!.acceptEncoding, 'identity', 'asks for identity encoding');
    t.equal(e.srv.requests[0]!.range, undefined, 'a fresh install asks for the whole file');
    t.ok(await e.slotMatches(), 'slot holds the image, nothing past it touched');
    t.equal(progress.at(-1), SIZE);
    t.ok(progress.every((b, i) => i === 0 || b >= progress[i - 1]!), 'progress never goes back');
    const state = JSON.parse(await readFile(join(e.dir, 'resume.json'), 'utf8'));
    t.same({ complete: state.complete, nextChunk: state.nextChunk }, { complete: true, nextChunk: e.p.payload.chunks.length });
  });
}

t.test('resumes with Range at the first unfinished chunk after cuts at several points', async (t) => {
  for (const compression of ['zstd', 'gzip', 'none'] as const) {
    const e = await setup(t, compression);
    const L = e.p.length;
    const c = e.p.payload.chunks;
    // cut right after the headers, mid-frame, exactly at a frame boundary, and inside the last frame
    const last = c[c.length - 1]!;
    const cuts = [0, Math.floor(c[3]!.offset + c[3]!.length / 2), c[10]!.offset + c[10]!.length, last.offset + Math.floor(last.length / 2)];
    e.srv.faults.cutAtOffset = cuts;
    const r = await e.install({ retry: { baseDelayMs: 1, maxAttempts: 3 } });
    t.equal(r.transfers, cuts.length + 1, `${compression}: one transfer per cut plus the last`);
    t.ok(await e.slotMatches(), `${compression}: slot holds the image`);
    const starts = e.srv.requests.map((q) => (q.range === undefined ? 0 : Number(/^bytes=(\d+)-$/.exec(q.range)![1])));
    cuts.forEach((cut, i) => {
      const k = completeChunks(e.p, cut);
      // a cut may lose what the HTTP client had buffered but not yet handed on (its stream buffers)
      const start = starts[i + 1]!;
      t.ok(start <= c[k]!.offset && start >= c[k]!.offset - 128 * 1024 && c.some((x) => x.offset === start), `${compression}: resume after a cut at ${cut} starts at a frame boundary just before chunk ${k}: ${start}`);
    });
    const sent = e.srv.requests.reduce((s, q) => s + q.bytesSent, 0);
    t.ok(sent < L + 8 * CHUNK, `${compression}: re-fetched little (${sent} bytes for a ${L}-byte payload)`);
    t.ok(e.srv.requests.slice(1).every((q) => q.range === undefined || q.ifRange !== undefined), 'resumes send If-Range');
  }
});

t.test('a server that ignores Range: the prefix is skipped, not written twice or spliced', async (t) => {
  const e = await setup(t, 'zstd', { cutAfter: [300_000], ignoreRange: true });
  const r = await e.install();
  t.equal(r.transfers, 2);
  t.equal(e.srv.requests[1]!.status, 200, 'server answered 200 to a Range request');
  t.match(e.srv.requests[1]!.range, /^bytes=\d+-$/);
  t.ok(await e.slotMatches());
});

t.test('content changed between requests: If-Range gets the whole new file, chunk hashes catch it', async (t) => {
  const e = await setup(t, 'none');
  // B: same length, chunk 20 differs
  const other = Buffer.from(await readFile(e.p.file));
  other[20 * CHUNK + 100] ^= 0x01;
  await writeFile(join(e.dir, 'other.none'), other);
  const cut = 10 * CHUNK + 5;

  await t.test('transient change: resumes correctly once the original is back', async (t) => {
    e.srv.requests.length = 0;
    e.srv.faults.cutAfter = [cut];
    e.srv.faults.replaceWith = [undefined, 'other.none'];
    const r = await e.install();
    t.equal(e.srv.requests[1]!.status, 200, 'If-Range with the old ETag got the whole new file');
    t.ok(e.srv.requests[1]!.ifRange, 'sent If-Range');
    t.ok(r.transfers >= 3);
    t.ok(await e.slotMatches());
  });

  await t.test('persistent change: refused at the changed chunk, nothing from it on written', async (t) => {
    await makeSlotFile(e.slotPath, SIZE + 4096);
    await writeFile(join(e.dir, 'resume.json'), '{}');
    e.srv.requests.length = 0;
    e.srv.faults.cutAfter = [cut];
    e.srv.faults.replaceWith = [undefined, 'other.none', 'other.none', 'other.none', 'other.none', 'other.none'];
    const err = await e.install().catch((x: unknown) => x);
    t.equal(codeOf(err), 'INSTALL_CHUNK_HASH_MISMATCH');
    t.match((err as { details: unknown }).details, { chunk: 20, offset: 20 * CHUNK });
    const slot = await readFile(e.slotPath);
    const img = await readFile(e.p.image);
    t.ok(slot.subarray(0, 20 * CHUNK).equals(img.subarray(0, 20 * CHUNK)), 'chunks before it are written');
    t.ok(slot.subarray(20 * CHUNK).every((b) => b === PATTERN), 'nothing from chunk 20 on was written');
  });
});

t.test('mirrors: a 404 mirror and a 503 mirror fail over to a good one', async (t) => {
  const e = await setup(t, 'zstd');
  const bad = await startHttpServer({ root: e.dir, faults: { status: 503 } });
  t.teardown(() => bad.stop());
  const r = await e.install({ source: { urls: [e.srv.url + 'missing.zst', bad.url + e.p.name, e.srv.url + e.p.name] } });
  t.equal(r.transfers, 3);
  t.same(e.srv.requests.map((q) => q.status), [404, 200]);
  t.equal(bad.requests.length, 1);
  t.ok(await e.slotMatches());
});

t.test('404 mid-way and 5xx are retried with backoff', async (t) => {
  const e = await setup(t, 'zstd', { cutAfter: [200_000], status: [undefined, 404, 500] });
  const delays: number[] = [];
  const r = await e.install({ sleep: async (ms) => void delays.push(ms), random: () => 1, retry: { baseDelayMs: 100, maxDelayMs: 250, maxAttempts: 4 } });
  t.equal(r.transfers, 4);
  t.same(delays, [100, 200, 250], 'exponential backoff from the first failure without progress, capped');
  t.same(e.srv.requests.map((q) => q.status), [200, 404, 500, 206]);
  t.ok(await e.slotMatches());
});

t.test('errors after the retry budget carry the last cause', async (t) => {
  const e = await setup(t, 'zstd', { status: 500 });
  const err = await e.install().catch((x: unknown) => x);
  t.equal(codeOf(err), 'INSTALL_HTTP_STATUS');
  t.equal(e.srv.requests.length, 4, 'maxAttempts transfers');
  const forbidden = await setup(t, 'zstd', { status: 403 });
  const err2 = await forbidden.install().catch((x: unknown) => x);
  t.equal(codeOf(err2), 'INSTALL_HTTP_STATUS');
  t.equal(forbidden.srv.requests.length, 1, '403 is not retried on the only mirror');
});

t.test('stall watchdog: a server that stops sending is abandoned and the transfer resumed', async (t) => {
  const e = await setup(t, 'zstd', { stallAfter: [150_000] });
  const t0 = Date.now();
  const r = await e.install({ watchdog: { stallTimeoutMs: 300 } });
  t.ok(Date.now() - t0 < 5000, 'did not wait for a default timeout');
  t.equal(r.transfers, 2);
  t.match(e.srv.requests[1]!.range, /^bytes=\d+-$/);
  t.ok(await e.slotMatches());
});

t.test('stall watchdog: no response headers in time', async (t) => {
  const e = await setup(t, 'zstd', { headerDelayMs: [3000] });
  const t0 = Date.now();
  const r = await e.install({ watchdog: { stallTimeoutMs: 300 } });
  t.ok(Date.now() - t0 < 2500);
  t.equal(r.transfers, 2);
  t.ok(await e.slotMatches());
});

t.test('throughput watchdog: a trickling server (slow retrieval) is abandoned', async (t) => {
  const e = await setup(t, 'zstd', { bytesPerSecond: [20_000] });
  const r = await e.install({ watchdog: { stallTimeoutMs: 5000, minBytesPerSecond: 200_000, windowMs: 300 } });
  t.equal(r.transfers, 2);
  t.ok(e.srv.requests[0]!.bytesSent < 100_000);
  t.ok(await e.slotMatches());
});

t.test('truncated payloads are refused', async (t) => {
  const e = await setup(t, 'zstd');
  await copyFile(e.p.file, join(e.dir, 'short.zst'));
  await truncate(join(e.dir, 'short.zst'), e.p.length - 1000);
  const src = { urls: [e.srv.url + 'short.zst'] };
  const err = await e.install({ source: src }).catch((x: unknown) => x);
  t.equal(codeOf(err), 'INSTALL_PAYLOAD_TRUNCATED', 'Content-Length shorter than the signed length');
  e.srv.faults.noLength = true;
  const err2 = await e.install({ source: src }).catch((x: unknown) => x);
  t.equal(codeOf(err2), 'INSTALL_PAYLOAD_TRUNCATED', 'body without a length that ends early');
  const slot = await readFile(e.slotPath);
  const k = e.p.payload.chunks.length - 1;
  t.ok(slot.subarray(k * CHUNK).every((b) => b === PATTERN), 'the incomplete last chunk was never written');
});

t.test('oversized and endless payloads are capped by the signed length', async (t) => {
  const e = await setup(t, 'zstd');
  await copyFile(e.p.file, join(e.dir, 'long.zst'));
  await appendFile(join(e.dir, 'long.zst'), Buffer.alloc(5000, 1));
  const err = await e.install({ source: { urls: [e.srv.url + 'long.zst'] } }).catch((x: unknown) => x);
  t.equal(codeOf(err), 'INSTALL_PAYLOAD_OVERSIZED', 'Content-Length longer than the signed length');
  t.ok(e.srv.requests.every((q) => q.bytesSent < 1 << 20), 'did not download the body');

  e.srv.requests.length = 0;
  e.srv.faults.endless = true;
  const r = await e.install();
  t.ok(await e.slotMatches(), 'the signed prefix of an endless body installs');
  t.equal(r.bytesReceived, e.p.length, 'read exactly the signed length');
  await new Promise((res) => setTimeout(res, 100));
  t.ok(e.srv.requests[0]!.bytesSent < e.p.length + (16 << 20), 'stopped reading the endless tail');
});

t.test('an endless body of garbage fails fast without writing', async (t) => {
  const e = await setup(t, 'none');
  await writeFile(join(e.dir, 'junk'), Buffer.alloc(1000, 7));
  const err = await e.install({ source: { urls: [e.srv.url + 'junk'] }, retry: { maxAttempts: 2, baseDelayMs: 1 } }).catch((x: unknown) => x);
  e.srv.faults.endless = true;
  t.equal(codeOf(err), 'INSTALL_PAYLOAD_TRUNCATED');
  const err2 = await e.install({ source: { urls: [e.srv.url + 'junk'] }, retry: { maxAttempts: 2, baseDelayMs: 1 } }).catch((x: unknown) => x);
  t.equal(codeOf(err2), 'INSTALL_CHUNK_HASH_MISMATCH');
  t.match((err2 as { details: unknown }).details, { chunk: 0 });
  const slot = await readFile(e.slotPath);
  t.ok(slot.every((b) => b === PATTERN), 'slot untouched');
});

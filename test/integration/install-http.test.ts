/**
 * The installer against a real HTTP server on loopback: every decoder, resume after cuts, servers
 * that ignore Range, content that changes between requests.
 */
import t from 'tap';
import { join } from 'node:path';
import { readFile, writeFile } from 'node:fs/promises';
import { codeOf } from '../../hal/errors.js';
import { makeSlotFile, type PayloadFixture } from '../bench/install-fixtures.js';

import { CHUNK, SIZE, PATTERN, setup } from '../harness/install-env.js';

/** chunks whose compressed frame lies entirely in the first `bytes` payload bytes. */
function completeChunks(p: PayloadFixture, bytes: number): number {
  return p.payload.chunks.filter((c) => c.offset + c.length <= bytes).length;
}

const DECODERS = [
  ['zstd', undefined],
  ['gzip', 'zstd-cli'],
  ['gzip', 'zlib'],
  ['none', undefined],
] as const;

for (const [compression, gzipDecoder] of DECODERS) {
  t.test(`${compression}${gzipDecoder ? ` (${gzipDecoder})` : ''} over HTTP installs, verifies and records completion`, async (t) => {
    const e = await setup(t, compression);
    const progress: number[] = [];
    const r = await e.install({ onProgress: (x) => progress.push(x.bytes), gzipDecoder });
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
  for (const [compression, gzipDecoder] of DECODERS) {
    const e = await setup(t, compression);
    const L = e.p.length;
    const c = e.p.payload.chunks;
    // cut right after the headers, mid-frame, exactly at a frame boundary, and inside the last frame
    const last = c[c.length - 1]!;
    const cuts = [0, Math.floor(c[3]!.offset + c[3]!.length / 2), c[10]!.offset + c[10]!.length, last.offset + Math.floor(last.length / 2)];
    e.srv.faults.cutAtOffset = cuts;
    const r = await e.install({ retry: { baseDelayMs: 1, maxAttempts: 3 }, gzipDecoder });
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
    t.equal(codeOf(err), 'INSTALL_PAYLOAD_CORRUPT', 'the changed chunk never verifies: the attempt ends');
    t.match((err as { details: unknown }).details, { chunk: 20, offset: 20 * CHUNK, last: 'INSTALL_CHUNK_HASH_MISMATCH' });
    const slot = await readFile(e.slotPath);
    const img = await readFile(e.p.image);
    t.ok(slot.subarray(0, 20 * CHUNK).equals(img.subarray(0, 20 * CHUNK)), 'chunks before it are written');
    t.ok(slot.subarray(20 * CHUNK).every((b) => b === PATTERN), 'nothing from chunk 20 on was written');
  });
});


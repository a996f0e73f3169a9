/**
 * What the installer refuses and how it resumes, from local files (no retries) and HTTP: a one-bit
 * corrupt chunk, a slot that is too small, a resume hint that lies about the slot, aborts, and
 * re-running a finished install.
 */
import t from 'tap';
import { join } from 'node:path';
import { readFile, writeFile } from 'node:fs/promises';
import { installPayload, readResumeHint, writeResumeHint, type InstallOptions } from '../../daemon/install/index.js';
import { codeOf } from '../../hal/errors.js';
import { buildPayload } from '../../manifests/payload.js';
import { startHttpServer } from '../harness/http-server.js';
import { createPathSlot } from '../bench/path-slot.js';
import { createSlotWriter } from '../../hal/file-slot.js';
import { makePayload, makeSlotFile, sha256File, writeImage } from '../bench/install-fixtures.js';

const CHUNK = 32 << 10;
const SIZE = (1 << 20) + 777; // 33 chunks
const PATTERN = 0xa5;

function base(dir: string, p: Awaited<ReturnType<typeof makePayload>>, slotPath: string): InstallOptions {
  return {
    payload: p.payload,
    length: p.length,
    source: { path: p.file },
    slot: createPathSlot('A', slotPath),
    resumeStatePath: join(dir, 'resume.json'),
    retry: { baseDelayMs: 1, maxAttempts: 3 },
  };
}

for (const [compression, gzipDecoder] of [['zstd', undefined], ['gzip', 'zstd-cli'], ['gzip', 'zlib'], ['none', undefined]] as const) {
  t.test(`${compression}${gzipDecoder ? ` (${gzipDecoder})` : ''} from a local file`, async (t) => {
    const dir = t.testdir();
    const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression });
    const slotPath = join(dir, 'slot');
    await makeSlotFile(slotPath, SIZE);
    const events: Array<{ bytes: number; etaSeconds: number | null; rate: number }> = [];
    const r = await installPayload({ ...base(dir, p, slotPath), gzipDecoder, onProgress: (e) => events.push(e) });
    t.equal(r.transfers, 1);
    t.equal(await sha256File(slotPath), p.payload.sha256);
    t.equal(events.at(-1)!.bytes, SIZE);
    t.equal(events.at(-1)!.etaSeconds, 0);

    // running it again re-verifies what is there and fetches nothing
    const again = await installPayload({ ...base(dir, p, slotPath), gzipDecoder });
    t.equal(again.resumedFromChunk, p.payload.chunks.length, 'every chunk verified on the slot');
    t.equal(again.transfers, 0);
    t.equal(again.bytesWritten, 0);
  });
}

t.test('a one-bit-corrupt chunk is rejected at that chunk; nothing from it on is written', async (t) => {
  for (const [compression, gzipDecoder] of [['none', undefined], ['zstd', undefined], ['gzip', 'zstd-cli'], ['gzip', 'zlib']] as const) {
    const dir = t.testdir();
    // the format 1 form (no per-frame packedSha256): what is tested here is the check of each decoded
    // chunk against its signed hash; format 2's frame hash, which refuses the frame before decoding,
    // is tested in install-packed-hash.test.ts
    const built = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression });
    const good = { ...built, payload: { ...built.payload, chunks: built.payload.chunks.map(({ packedSha256: _, ...c }) => c) } };
    const slotPath = join(dir, 'slot');
    await makeSlotFile(slotPath, SIZE);
    const bad = 7;
    let file: string;
    if (compression === 'none') {
      file = join(dir, 'bad');
      const b = await readFile(good.file);
      b[bad * CHUNK + 1234] ^= 0x10;
      await writeFile(file, b);
    } else {
      // flip a bit in the image and rebuild: the frame decodes fine, only the signed hash can tell
      const img = await readFile(good.image);
      img[bad * CHUNK + 1234] ^= 0x10;
      await writeFile(join(dir, 'bad.img'), img);
      file = join(dir, 'bad');
      const rebuilt = await buildPayload(join(dir, 'bad.img'), file, { compression, chunkSize: CHUNK });
      // keep lengths equal to the signed index so only the content differs
      if (rebuilt.length !== good.length || rebuilt.payload.chunks.some((c, i) => c.length !== good.payload.chunks[i]!.length)) {
        // a one-bit change moved a frame length: corrupt one bit of the compressed frame instead
        const b = await readFile(good.file);
        const c = good.payload.chunks[bad]!;
        b[c.offset + Math.floor(c.length / 2)] ^= 0x10;
        await writeFile(file, b);
      }
    }
    const err = await installPayload({ ...base(dir, good, slotPath), source: { path: file }, gzipDecoder }).catch((e: unknown) => e);
    const code = codeOf(err);
    t.ok(code === 'INSTALL_CHUNK_HASH_MISMATCH' || (compression !== 'none' && code === 'INSTALL_DECOMPRESS'), `${compression}: ${code}`);
    t.match((err as { details: unknown }).details, { chunk: bad }, `${compression}: names chunk ${bad}`);
    if (code === 'INSTALL_CHUNK_HASH_MISMATCH') t.match((err as { details: unknown }).details, { offset: bad * CHUNK });
    const slot = await readFile(slotPath);
    const img = await readFile(good.image);
    t.ok(slot.subarray(0, bad * CHUNK).equals(img.subarray(0, bad * CHUNK)), `${compression}: chunks before it written`);
    t.ok(slot.subarray(bad * CHUNK).every((b) => b === PATTERN), `${compression}: nothing from chunk ${bad} on written`);
    t.equal(await readResumeHint(join(dir, 'resume.json'), good.payload, slotPath), bad, `${compression}: progress up to the bad chunk kept for a resume`);
  }
});

t.test('a corrupt chunk served over HTTP is fetched alone a bounded number of times, then the attempt ends naming the chunk', async (t) => {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'none' });
  const b = await readFile(p.file);
  b[20 * CHUNK] ^= 0x01;
  await writeFile(p.file, b);
  const srv = await startHttpServer({ root: dir });
  t.teardown(() => srv.stop());
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE);
  const err = await installPayload({ ...base(dir, p, slotPath), source: { urls: [srv.url + p.name] } }).catch((e: unknown) => e);
  t.equal(codeOf(err), 'INSTALL_PAYLOAD_CORRUPT');
  t.equal((err as { retryable?: boolean }).retryable, false, 'not retryable: the attempt ends');
  // format 2 (the payload's chunks carry packedSha256): the frame's own hash refuses it each time
  t.match((err as { details: unknown }).details, { chunk: 20, offset: 20 * CHUNK, mirrors: 1, failures: [3], last: 'INSTALL_PACKED_HASH_MISMATCH' });
  t.equal(srv.requests.length, 3, 'retried up to the budget (3 failures per mirror)');
  t.same(srv.requests.slice(1).map((q) => q.range), [`bytes=${20 * CHUNK}-${21 * CHUNK - 1}`, `bytes=${20 * CHUNK}-${21 * CHUNK - 1}`], 'retries fetch the bad chunk alone');
  t.ok(srv.requests.slice(1).every((q) => q.bytesSent <= CHUNK), 'each retry costs at most one chunk');
  const rec = JSON.parse(await readFile(join(dir, 'resume.json'), 'utf8')) as { nextChunk: number; spent?: unknown };
  t.equal(rec.nextChunk, 20, 'progress before the bad chunk kept');
  t.equal(rec.spent, undefined, 'the ended attempt leaves no spent budget: a later attempt starts afresh');
});

t.test('a slot that is too small is refused before anything is read or written', async (t) => {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'zstd' });
  const srv = await startHttpServer({ root: dir });
  t.teardown(() => srv.stop());
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE - 1);
  const before = await sha256File(slotPath);
  const stats = { writes: 0, bytes: 0, flushes: 0 };
  const err = await installPayload({ ...base(dir, p, slotPath), slot: createPathSlot('A', slotPath, { stats }), source: { urls: [srv.url + p.name] } }).catch((e: unknown) => e);
  t.equal(codeOf(err), 'INSTALL_SLOT_TOO_SMALL');
  t.match((err as { details: unknown }).details, { capacity: SIZE - 1, size: SIZE });
  t.equal(await sha256File(slotPath), before, 'slot byte-identical');
  t.equal(stats.writes, 0);
  t.equal(srv.requests.length, 0, 'nothing downloaded');
  t.equal(await readResumeHint(join(dir, 'resume.json'), p.payload, slotPath), 0, 'no resume state written');
});

t.test('resume re-hashes the slot instead of trusting the hint', async (t) => {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'zstd' });
  const srv = await startHttpServer({ root: dir });
  t.teardown(() => srv.stop());
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE);
  const opts = { ...base(dir, p, slotPath), source: { urls: [srv.url + p.name] } };
  await installPayload(opts);
  // the hint says everything is there, but chunk 5 got damaged
  const slot = await readFile(slotPath);
  slot[5 * CHUNK + 9] ^= 0xff;
  await writeFile(slotPath, slot);
  srv.requests.length = 0;
  const r = await installPayload(opts);
  t.equal(r.resumedFromChunk, 5);
  t.same(srv.requests.map((q) => q.range), [`bytes=${p.payload.chunks[5]!.offset}-`]);
  t.equal(await sha256File(slotPath), p.payload.sha256);

  // a hint for another payload is ignored
  const other = { ...p.payload, sha256: 'f'.repeat(64) };
  await writeResumeHint(join(dir, 'resume.json'), other, slotPath, 10);
  t.equal(await readResumeHint(join(dir, 'resume.json'), p.payload, slotPath), 0);
  await writeFile(join(dir, 'resume.json'), 'not json');
  t.equal(await readResumeHint(join(dir, 'resume.json'), p.payload, slotPath), 0, 'a torn hint is ignored');
});

t.test('abort stops a transfer promptly with INSTALL_ABORTED', async (t) => {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'zstd' });
  const srv = await startHttpServer({ root: dir, faults: { bytesPerSecond: 50_000 } });
  t.teardown(() => srv.stop());
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE);
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 300);
  const t0 = Date.now();
  const err = await installPayload({ ...base(dir, p, slotPath), source: { urls: [srv.url + p.name] }, signal: ac.signal }).catch((e: unknown) => e);
  t.equal(codeOf(err), 'INSTALL_ABORTED');
  t.ok(Date.now() - t0 < 2000);
});

t.test('an inconsistent chunk index is refused before touching the slot', async (t) => {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'zstd' });
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE);
  const cases = [
    { ...p.payload, chunks: p.payload.chunks.slice(1) },
    { ...p.payload, chunks: p.payload.chunks.map((c, i) => (i === 3 ? { ...c, offset: c.offset + 1 } : c)) },
    { ...p.payload, sha256: 'nothex' },
  ];
  for (const payload of cases) {
    const err = await installPayload({ ...base(dir, p, slotPath), payload }).catch((e: unknown) => e);
    t.equal(codeOf(err), 'INSTALL_BAD_INDEX');
  }
  const err = await installPayload({ ...base(dir, p, slotPath), length: p.length + 1 }).catch((e: unknown) => e);
  t.equal(codeOf(err), 'INSTALL_BAD_INDEX', 'signed length disagrees with the index');
  t.ok((await readFile(slotPath)).every((b) => b === PATTERN));
});

t.test('a payload file of the wrong size is refused', async (t) => {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'zstd' });
  await writeImage(join(dir, 'other.img'), SIZE + CHUNK, 2);
  const other = await buildPayload(join(dir, 'other.img'), join(dir, 'other.zst'), { compression: 'zstd', chunkSize: CHUNK });
  t.not(other.length, p.length);
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE);
  const err = await installPayload({ ...base(dir, p, slotPath), source: { path: join(dir, 'other.zst') } }).catch((e: unknown) => e);
  t.match(codeOf(err), /^INSTALL_PAYLOAD_(TRUNCATED|OVERSIZED)$/);
  const err2 = await installPayload({ ...base(dir, p, slotPath), source: { path: join(dir, 'nope') } }).catch((e: unknown) => e);
  t.equal(codeOf(err2), 'INSTALL_SOURCE_OPEN');
});

t.test("works with hal's file slot writer", async (t) => {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'zstd' });
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE + CHUNK);
  const r = await installPayload({ ...base(dir, p, slotPath), slot: createSlotWriter('B', { path: slotPath }) });
  t.equal(r.readBackSha256, p.payload.sha256);
  const err = await installPayload({ ...base(dir, p, slotPath), slot: createSlotWriter('B', { path: slotPath, size: SIZE - 1 }) }).catch((e: unknown) => e);
  t.equal(codeOf(err), 'INSTALL_SLOT_TOO_SMALL');
});

t.test('read-back: through readAt by default (faults seen), or by path', async (t) => {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'zstd' });
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE);
  const inner = createPathSlot('A', slotPath);
  const faulty = (mode: 'flip' | 'eio'): typeof inner => ({
    ...inner,
    slot: inner.slot,
    path: inner.path,
    capacity: () => inner.capacity(),
    async open() {
      const h = await inner.open();
      return {
        ...h,
        async readAt(length: number, offset: number) {
          if (mode === 'eio') throw Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO' });
          const b = await h.readAt(length, offset);
          if (offset === 0) b[100] ^= 1;
          return b;
        },
      };
    },
  });
  for (const mode of ['flip', 'eio'] as const) {
    await makeSlotFile(slotPath, SIZE);
    await writeFile(join(dir, 'resume.json'), '{}');
    const err = await installPayload({ ...base(dir, p, slotPath), slot: faulty(mode) }).catch((e: unknown) => e);
    t.equal(codeOf(err), 'INSTALL_READBACK_MISMATCH', `${mode} on read-back is caught`);
  }
  await writeFile(join(dir, 'resume.json'), '{}');
  const r = await installPayload({ ...base(dir, p, slotPath), slot: faulty('flip'), readBack: 'path' });
  t.equal(r.readBackSha256, p.payload.sha256, 'path mode reads the slot file itself (readAt not used)');
});

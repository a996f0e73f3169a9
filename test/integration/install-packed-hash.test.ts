/**
 * Issue 19, the TUF target hash: the installer checks the COMPRESSED bytes it is served, not only
 * what they decode to. The attack: a mirror serves a payload of the signed length whose gzip header
 * bytes were altered (MTIME): it decodes to the same image, so every chunk hash still matches, but
 * it is not the file that was signed.
 * - v2 index (`packedSha256` per frame): the altered frame is refused before its chunk is written,
 *   named, fetched again a bounded number of times, then INSTALL_PAYLOAD_CORRUPT.
 * - v1 index: the payload target's signed SHA-256 is checked over the stream; the last chunk is
 *   written only once it matched. A resumed install (new process) re-reads the file from byte 0 to
 *   hash it, and one found complete on the slot still streams the file once: never skipped.
 * Packed hashes are computed here from the payload file (the `index` work generates them in
 * `release add`).
 */
import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { installPayload, readResumeHint, writeResumeHint, type InstallOptions } from '../../daemon/install/index.js';
import { codeOf } from '../../hal/errors.js';
import type { PayloadInfo } from '../../manifests/types.js';
import { startHttpServer } from '../harness/http-server.js';
import { createPathSlot } from '../bench/path-slot.js';
import { makePayload, makeSlotFile, sha256File, type PayloadFixture } from '../bench/install-fixtures.js';

const CHUNK = 32 << 10;
const SIZE = 8 * CHUNK + 777; // 9 chunks
const PATTERN = 0xa5;
const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** The v2 form of a built payload: each chunk entry carries the SHA-256 of its compressed frame. */
async function withPacked(p: PayloadFixture): Promise<PayloadInfo> {
  const file = await readFile(p.file);
  return { ...p.payload, chunks: p.payload.chunks.map((c) => ({ ...c, packedSha256: sha256(file.subarray(c.offset, c.offset + c.length)) })) };
}

/** Alters the MTIME of the gzip member of chunk `k` in the payload file: same length, same image. */
async function alterGzipHeader(p: PayloadFixture, k: number): Promise<void> {
  const b = await readFile(p.file);
  const at = p.payload.chunks[k]!.offset;
  if (b[at] !== 0x1f || b[at + 1] !== 0x8b) throw new Error('premise: chunk frames are gzip members');
  b.writeUInt32LE(0x5eed1e55, at + 4);
  await writeFile(p.file, b);
}

function opts(dir: string, p: PayloadFixture, payload: PayloadInfo, slotPath: string): InstallOptions {
  return { payload, length: p.length, source: { path: p.file }, slot: createPathSlot('B', slotPath), resumeStatePath: join(dir, 'resume.json'), retry: { baseDelayMs: 1, maxAttempts: 3 } };
}

async function fixture(t: Test): Promise<{ dir: string; p: PayloadFixture; slotPath: string; signedSha: string }> {
  const dir = t.testdir();
  const built = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'gzip' });
  // the v1 form (inline chunk list, no per-frame hashes): `release add` writes format 2 with
  // packedSha256 by default; the v2 cases add them back with withPacked
  const p: PayloadFixture = { ...built, payload: { ...built.payload, chunks: built.payload.chunks.map(({ packedSha256: _, ...c }) => c) } };
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE);
  t.equal(p.sha256, await sha256File(p.file), 'premise: the signed target hash is the payload file\'s');
  return { dir, p, slotPath, signedSha: p.sha256 };
}

const untouched = async (slotPath: string, fromChunk: number): Promise<boolean> => (await readFile(slotPath)).subarray(fromChunk * CHUNK).every((b) => b === PATTERN);

t.test('premise: the altered payload decodes to the same image (chunk hashes alone let it through)', async (t) => {
  const { dir, p, slotPath } = await fixture(t);
  await alterGzipHeader(p, 3);
  t.not(await sha256File(p.file), p.sha256, 'the file differs from the signed one');
  const r = await installPayload(opts(dir, p, p.payload, slotPath));
  t.equal(r.readBackSha256, p.payload.sha256, 'without a check of the compressed bytes it installs');
});

t.test('v2: a frame whose bytes differ from its packedSha256 is refused before its chunk is written', async (t) => {
  const { dir, p, slotPath } = await fixture(t);
  const v2 = await withPacked(p);
  const good = await installPayload(opts(dir, p, v2, join(dir, 'slot')));
  t.equal(good.readBackSha256, p.payload.sha256, 'the intact v2 payload installs');
  await makeSlotFile(slotPath, SIZE);
  await writeFile(join(dir, 'resume.json'), '');

  await alterGzipHeader(p, 4);
  // from a local file: no retries, the coded error itself
  const err = await installPayload(opts(dir, p, v2, slotPath)).catch((e: unknown) => e);
  t.equal(codeOf(err), 'INSTALL_PACKED_HASH_MISMATCH');
  t.match((err as { details: unknown }).details, { chunk: 4, payloadOffset: p.payload.chunks[4]!.offset, expected: v2.chunks[4]!.packedSha256 });
  t.match((err as Error).message, /chunk 4 .*compressed frame has SHA-256 [0-9a-f]{64} but the signed index says/);
  t.ok(await untouched(slotPath, 4), 'nothing from chunk 4 on was written');
  t.equal(await readResumeHint(join(dir, 'resume.json'), v2, slotPath), 4, 'chunks before it kept for a resume');

  // over HTTP: counted as a corrupt chunk: fetched alone again, then the attempt ends naming it
  await makeSlotFile(slotPath, SIZE);
  await writeFile(join(dir, 'resume.json'), '');
  const srv = await startHttpServer({ root: dir });
  t.teardown(() => srv.stop());
  const e2 = await installPayload({ ...opts(dir, p, v2, slotPath), source: { urls: [srv.url + p.name] } }).catch((e: unknown) => e);
  t.equal(codeOf(e2), 'INSTALL_PAYLOAD_CORRUPT');
  t.match((e2 as { details: unknown }).details, { chunk: 4, mirrors: 1, failures: [3], last: 'INSTALL_PACKED_HASH_MISMATCH' });
  const c4 = p.payload.chunks[4]!;
  t.same(srv.requests.slice(1).map((q) => q.range), [`bytes=${c4.offset}-${c4.offset + c4.length - 1}`, `bytes=${c4.offset}-${c4.offset + c4.length - 1}`], 'retries fetch the bad frame alone');
  t.ok(await untouched(slotPath, 4), 'nothing from chunk 4 on was written');
});

t.test('v2: the same check over the built-in decoders and the zstd CLI (zstd payload)', async (t) => {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'zstd' });
  const v2 = await withPacked(p);
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE);
  // a v2 index whose hash for frame 6 is wrong: the frame is refused although it decodes right
  const wrong = { ...v2, chunks: v2.chunks.map((c, i) => (i === 6 ? { ...c, packedSha256: sha256(Buffer.from('not this frame')) } : c)) };
  const err = await installPayload(opts(dir, p, wrong, slotPath)).catch((e: unknown) => e);
  t.equal(codeOf(err), 'INSTALL_PACKED_HASH_MISMATCH');
  t.match((err as { details: unknown }).details, { chunk: 6 });
  t.ok(await untouched(slotPath, 6), 'nothing from chunk 6 on was written');
  const r = await installPayload(opts(dir, p, v2, slotPath));
  t.equal(r.resumedFromChunk, 6, 'a resume continues at the refused chunk');
  t.equal(await sha256File(slotPath), p.payload.sha256);
});

t.test('a v2 index with packedSha256 on some chunks only is refused before the slot is touched', async (t) => {
  const { dir, p, slotPath } = await fixture(t);
  const v2 = await withPacked(p);
  const mixed = { ...v2, chunks: v2.chunks.map((c, i) => (i === 2 ? { sha256: c.sha256, offset: c.offset, length: c.length } : c)) };
  const err = await installPayload(opts(dir, p, mixed, slotPath)).catch((e: unknown) => e);
  t.equal(codeOf(err), 'INSTALL_BAD_INDEX');
  t.ok(await untouched(slotPath, 0), 'slot untouched');
});

t.test('v1: the payload target\'s signed SHA-256 is checked over the stream; the last chunk waits for it', async (t) => {
  const { dir, p, slotPath, signedSha } = await fixture(t);
  const good = await installPayload({ ...opts(dir, p, p.payload, join(dir, 'slot')), targetSha256: signedSha });
  t.equal(good.readBackSha256, p.payload.sha256, 'the intact v1 payload installs with the target hash checked');
  await makeSlotFile(slotPath, SIZE);
  await writeFile(join(dir, 'resume.json'), '');

  await alterGzipHeader(p, 0);
  const err = await installPayload({ ...opts(dir, p, p.payload, slotPath), targetSha256: signedSha }).catch((e: unknown) => e);
  t.equal(codeOf(err), 'INSTALL_PAYLOAD_HASH_MISMATCH');
  t.match((err as { details: unknown }).details, { expected: signedSha, actual: /^[0-9a-f]{64}$/ });
  const last = p.payload.chunks.length - 1;
  t.ok(await untouched(slotPath, last), 'the last chunk was not written: the install cannot complete');

  // over HTTP: the mirror is spent at once (no frame says where; another try costs the whole file)
  await makeSlotFile(slotPath, SIZE);
  await writeFile(join(dir, 'resume.json'), '');
  const srv = await startHttpServer({ root: dir });
  t.teardown(() => srv.stop());
  const e2 = await installPayload({ ...opts(dir, p, p.payload, slotPath), source: { urls: [srv.url + p.name] }, targetSha256: signedSha }).catch((e: unknown) => e);
  t.equal(codeOf(e2), 'INSTALL_PAYLOAD_CORRUPT');
  t.match((e2 as { details: unknown }).details, { mirrors: 1, last: 'INSTALL_PAYLOAD_HASH_MISMATCH' });
  t.match((e2 as Error).message, /the payload file \(its signed SHA-256\) failed verification/);
  t.equal(srv.requests.length, 1, 'one transfer: the mirror is spent at the first mismatch');
  t.ok(await untouched(slotPath, last), 'the last chunk was not written');
});

t.test('v1 resumed in a new process: the file is re-read from byte 0 to hash it (prefix not decoded, not written)', async (t) => {
  const { dir, p, slotPath, signedSha } = await fixture(t);
  const srv = await startHttpServer({ root: dir });
  t.teardown(() => srv.stop());
  const base = { ...opts(dir, p, p.payload, slotPath), source: { urls: [srv.url + p.name] }, targetSha256: signedSha };
  // a first run put chunks 0..4 on the slot and recorded them, then the process died
  const img = await readFile(p.image);
  const partial = async (): Promise<void> => {
    await makeSlotFile(slotPath, SIZE);
    const slot = await readFile(slotPath);
    img.copy(slot, 0, 0, 5 * CHUNK);
    await writeFile(slotPath, slot);
    await writeFile(join(dir, 'resume.json'), '');
    await writeResumeHint(join(dir, 'resume.json'), p.payload, slotPath, 5);
  };
  await partial();

  // the server's copy changed meanwhile in a part already written (chunk 1's gzip header)
  const original = await readFile(p.file);
  await alterGzipHeader(p, 1);
  const err = await installPayload(base).catch((e: unknown) => e);
  t.equal(codeOf(err), 'INSTALL_PAYLOAD_CORRUPT', 'the altered prefix is caught although its chunks were not fetched for writing');
  t.match((err as { details: unknown }).details, { last: 'INSTALL_PAYLOAD_HASH_MISMATCH' });
  t.equal(srv.requests[0]!.range, undefined, 'the resumed transfer opened the file at byte 0');

  // the intact file: the resume completes, with the prefix hashed but not written again
  await writeFile(p.file, original);
  await partial();
  const r = await installPayload(base);
  t.equal(r.resumedFromChunk, 5);
  t.equal(r.bytesWritten, SIZE - 5 * CHUNK, 'only chunks 5.. written');
  t.equal(r.bytesReceived, p.length, 'the whole file was received once: the prefix for the hash');
  t.equal(await sha256File(slotPath), p.payload.sha256);

  // run again: every chunk is on the slot, yet the file is streamed once to prove its hash
  const before = srv.requests.length;
  const again = await installPayload(base);
  t.equal(again.resumedFromChunk, p.payload.chunks.length, 'every chunk verified on the slot');
  t.equal(again.transfers, 1, 'one transfer to hash the file');
  t.equal(again.bytesWritten, SIZE - 8 * CHUNK, 'the last chunk rewritten (same bytes) once the hash matched');
  t.equal(srv.requests.length, before + 1);
  await alterGzipHeader(p, 2);
  const e3 = await installPayload(base).catch((e: unknown) => e);
  t.match((e3 as { details: unknown }).details, { last: 'INSTALL_PAYLOAD_HASH_MISMATCH' }, 'an install found complete is still refused when the file is not the signed one');
});

t.test('v1: a transfer cut mid-file continues the hash from the frame boundary (no re-read)', async (t) => {
  const { dir, p, slotPath, signedSha } = await fixture(t);
  const cutAt = p.payload.chunks[5]!.offset + 100;
  const srv = await startHttpServer({ root: dir, faults: { cutAtOffset: [cutAt] } });
  t.teardown(() => srv.stop());
  const r = await installPayload({ ...opts(dir, p, p.payload, slotPath), source: { urls: [srv.url + p.name] }, targetSha256: signedSha });
  t.equal(r.transfers, 2);
  t.match(srv.requests[1]!.range, /^bytes=\d+-$/, 'the second transfer resumed at a frame, not at byte 0');
  t.not(srv.requests[1]!.range, 'bytes=0-');
  t.equal(await sha256File(slotPath), p.payload.sha256);
});

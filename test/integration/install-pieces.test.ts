// Chunks larger than the installer's 1 MiB pieces (installer.ts PIECE: a chunk is held and written in
// pieces, each returned to the pool after its own write, issue 16): the image lands whole, a chunk
// whose hash does not match the signed index writes none of its pieces, and a transfer cut inside a
// chunk drops that chunk's pieces and resumes to the same image.
import { readFile } from 'node:fs/promises';
import t from 'tap';
import { PATTERN, SIZE, setup } from '../harness/install-env.js';
import type { HttpFaults } from '../harness/http-server.js';

// 1.25 MiB: chunk 0 is two pieces (1 MiB + 256 KiB), chunk 1 one short piece
const CHUNK = (1 << 20) + (256 << 10);

for (const compression of ['zstd', 'none'] as const) {
  t.test(`${compression}: chunks of several pieces land whole`, async (t) => {
    const env = await setup(t, compression, {}, CHUNK);
    t.equal(env.p.payload.chunks.length, 2, 'premise: two chunks, the first of two pieces');
    const r = await env.install();
    t.equal(r.readBackSha256, env.p.payload.sha256);
    t.ok(await env.slotMatches(), 'slot holds the image, nothing past it');
  });
}

t.test('a chunk that fails its signed hash writes none of its pieces', async (t) => {
  const env = await setup(t, 'zstd', {}, CHUNK);
  const chunks = env.p.payload.chunks.map((c, i) => (i === 0 ? { ...c, sha256: '0'.repeat(64) } : c));
  const err = await env.install({ payload: { ...env.p.payload, chunks }, retry: { baseDelayMs: 1, maxDelayMs: 2, maxAttempts: 2 }, budget: { maxChunkFailures: 1 } }).then(
    () => undefined,
    (e: unknown) => e as { code: string },
  );
  // one mirror, one failure allowed per chunk and mirror: the attempt ends at the first mismatch
  t.equal(err?.code, 'INSTALL_PAYLOAD_CORRUPT', 'refused');
  const slot = await readFile(env.slotPath);
  t.ok(slot.subarray(0, CHUNK).every((b) => b === PATTERN), 'no byte of chunk 0 (two pieces) reached the slot');
});

t.test('a transfer cut inside a chunk resumes to the same image', async (t) => {
  const faults: HttpFaults = {};
  const env = await setup(t, 'zstd', faults, CHUNK);
  // the first request is cut inside chunk 1's frame; the retry resumes from chunk 1
  faults.cutAtOffset = [env.p.payload.chunks[1]!.offset + 100];
  const r = await env.install();
  t.ok(r.transfers >= 2, `resumed (${r.transfers} transfers)`);
  t.ok(await env.slotMatches(), 'slot holds the image');
  t.equal((await readFile(env.slotPath)).length, SIZE + 4096, 'slot file size unchanged');
});

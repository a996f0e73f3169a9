// Preflight (daemon/install/preflight.ts) decodes chunk 0 with the zstd CLI and hashes the output as
// it streams (it no longer keeps it: issue 16), through a pipe or, given a FIFO directory, into one
// reused buffer; either way the verdicts must be what they were: the signed chunk passes, a chunk
// whose decoded bytes differ from the signed hash is refused naming both hashes, and output past
// one chunk is refused as corrupt.
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { preflightPayload } from '../../daemon/install/preflight.js';
import { fileSource } from '../../daemon/install/source.js';
import type { PayloadInfo } from '../../manifests/types.js';

const CHUNK = 1 << 20;
// more than one pipe read (64 KiB) of output, partly compressible
const chunk0 = Buffer.concat([randomBytes(CHUNK / 2), Buffer.alloc(CHUNK / 2, 9)]);
const frame = execFileSync('zstd', ['-q', '-c'], { input: chunk0 });
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** the payload file in the test's directory; `fifoDir`: that directory too (or none), per `via` */
function setUp(t: Test, via: 'pipe' | 'fifo' | 'missing'): { source: ReturnType<typeof fileSource>; fifoDir?: string } {
  const dir = t.testdir();
  const path = join(dir, 'payload.zst');
  writeFileSync(path, frame);
  return { source: fileSource(path), ...(via === 'fifo' ? { fifoDir: dir } : via === 'missing' ? { fifoDir: join(dir, 'missing') } : {}) };
}

function info(over: Partial<PayloadInfo> = {}, chunkSha = sha(chunk0)): PayloadInfo {
  return { compression: 'zstd', size: CHUNK, sha256: sha(chunk0), chunkSize: CHUNK, chunks: [{ sha256: chunkSha, offset: 0, length: frame.length, packedSha256: sha(frame) }], ...over };
}

for (const via of ['pipe', 'fifo'] as const) {
  t.test(`${via}: the signed chunk 0 passes`, async (t) => {
    const at = setUp(t, via);
    await t.resolves(preflightPayload({ payload: info(), length: frame.length, zstdDecoder: 'cli', ...at }));
  });

  t.test(`${via}: decoded bytes that differ from the signed chunk hash are refused, naming both hashes`, async (t) => {
    const at = setUp(t, via);
    const wrong = sha(Buffer.from('not chunk 0'));
    const err = await preflightPayload({ payload: info({}, wrong), length: frame.length, zstdDecoder: 'cli', ...at }).then(
      () => undefined,
      (e: unknown) => e as { code: string; details: Record<string, unknown> },
    );
    t.equal(err?.code, 'INSTALL_CHUNK_HASH_MISMATCH');
    t.same(err?.details, { where: err?.details.where, chunk: 0, expected: wrong, actual: sha(chunk0) });
  });

  t.test(`${via}: output past one chunk is refused as corrupt`, async (t) => {
    const at = setUp(t, via);
    // the index claims a chunk half as long as what the frame decodes to
    const err = await preflightPayload({ payload: info({ size: CHUNK / 2, chunkSize: CHUNK / 2 }), length: frame.length, zstdDecoder: 'cli', ...at }).then(
      () => undefined,
      (e: unknown) => e as { code: string },
    );
    t.equal(err?.code, 'INSTALL_DECOMPRESS');
  });
}

t.test('a FIFO directory that cannot take the FIFO: the pipe instead, same verdict', async (t) => {
  await t.resolves(preflightPayload({ payload: info(), length: frame.length, zstdDecoder: 'cli', ...setUp(t, 'missing') }));
});

// Preflight (daemon/install/preflight.ts) decodes chunk 0 with the zstd CLI and hashes the output as
// it streams (it no longer keeps it: issue 16); the verdicts must be what they were: the signed
// chunk passes, a chunk whose decoded bytes differ from the signed hash is refused naming both
// hashes, and output past one chunk is refused as corrupt.
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

function payloadFile(t: Test): string {
  const path = join(t.testdir(), 'payload.zst');
  writeFileSync(path, frame);
  return path;
}

function info(over: Partial<PayloadInfo> = {}, chunkSha = sha(chunk0)): PayloadInfo {
  return { compression: 'zstd', size: CHUNK, sha256: sha(chunk0), chunkSize: CHUNK, chunks: [{ sha256: chunkSha, offset: 0, length: frame.length, packedSha256: sha(frame) }], ...over };
}

t.test('the signed chunk 0 passes', async (t) => {
  const source = fileSource(payloadFile(t));
  await t.resolves(preflightPayload({ payload: info(), length: frame.length, source, zstdDecoder: 'cli' }));
});

t.test('decoded bytes that differ from the signed chunk hash are refused, naming both hashes', async (t) => {
  const source = fileSource(payloadFile(t));
  const wrong = sha(Buffer.from('not chunk 0'));
  const err = await preflightPayload({ payload: info({}, wrong), length: frame.length, source, zstdDecoder: 'cli' }).then(
    () => undefined,
    (e: unknown) => e as { code: string; details: Record<string, unknown> },
  );
  t.equal(err?.code, 'INSTALL_CHUNK_HASH_MISMATCH');
  t.same(err?.details, { where: err?.details.where, chunk: 0, expected: wrong, actual: sha(chunk0) });
});

t.test('output past one chunk is refused as corrupt', async (t) => {
  const source = fileSource(payloadFile(t));
  // the index claims a chunk half as long as what the frame decodes to
  const err = await preflightPayload({ payload: info({ size: CHUNK / 2, chunkSize: CHUNK / 2 }), length: frame.length, source, zstdDecoder: 'cli' }).then(
    () => undefined,
    (e: unknown) => e as { code: string },
  );
  t.equal(err?.code, 'INSTALL_DECOMPRESS');
});

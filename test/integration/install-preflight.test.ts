// Preflight (daemon/install/preflight.ts) decodes chunk 0 with the decoder the install uses: in-process
// frame by frame where Node has a built-in zstd (decode.ts 'frames', into one buffer freed after the
// hash), else the zstd CLI, whose output it hashes as it streams (it no longer keeps it: issue 16),
// through a pipe or, given a FIFO directory, into one reused buffer; every way the verdicts must be
// what they were: the signed chunk passes, a chunk whose decoded bytes differ from the signed hash is
// refused naming both hashes, and output past one chunk is refused as corrupt.
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { zstdFrames } from '../../daemon/install/decode.js';
import { preflightPayload } from '../../daemon/install/preflight.js';
import { fileSource } from '../../daemon/install/source.js';
import type { PayloadInfo } from '../../manifests/types.js';

const CHUNK = 1 << 20;
// more than one pipe read (64 KiB) of output, partly compressible
const chunk0 = Buffer.concat([randomBytes(CHUNK / 2), Buffer.alloc(CHUNK / 2, 9)]);
const frame = execFileSync('zstd', ['-q', '-c'], { input: chunk0 });
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

type Via = 'pipe' | 'fifo' | 'missing' | 'frames';

/** the payload file in the test's directory; `fifoDir`: that directory too (or none), per `via`; the
 * zstd CLI, or with 'frames' the in-process frame decoder */
function setUp(t: Test, via: Via): { source: ReturnType<typeof fileSource>; fifoDir?: string; zstdDecoder: 'cli' | 'frames' } {
  const dir = t.testdir();
  const path = join(dir, 'payload.zst');
  writeFileSync(path, frame);
  return { source: fileSource(path), zstdDecoder: via === 'frames' ? 'frames' : 'cli', ...(via === 'fifo' || via === 'frames' ? { fifoDir: dir } : via === 'missing' ? { fifoDir: join(dir, 'missing') } : {}) };
}

function info(over: Partial<PayloadInfo> = {}, chunkSha = sha(chunk0)): PayloadInfo {
  return { compression: 'zstd', size: CHUNK, sha256: sha(chunk0), chunkSize: CHUNK, chunks: [{ sha256: chunkSha, offset: 0, length: frame.length, packedSha256: sha(frame) }], ...over };
}

for (const via of ['pipe', 'fifo', ...(zstdFrames ? ['frames' as const] : [])] as const) {
  t.test(`${via}: the signed chunk 0 passes`, async (t) => {
    const at = setUp(t, via);
    await t.resolves(preflightPayload({ payload: info(), length: frame.length, ...at }));
  });

  t.test(`${via}: decoded bytes that differ from the signed chunk hash are refused, naming both hashes`, async (t) => {
    const at = setUp(t, via);
    const wrong = sha(Buffer.from('not chunk 0'));
    const err = await preflightPayload({ payload: info({}, wrong), length: frame.length, ...at }).then(
      () => undefined,
      (e: unknown) => e as { code: string; details: Record<string, unknown> },
    );
    t.equal(err?.code, 'INSTALL_CHUNK_HASH_MISMATCH');
    t.same(err?.details, { where: err?.details.where, chunk: 0, expected: wrong, actual: sha(chunk0) });
  });

  t.test(`${via}: output past one chunk is refused as corrupt`, async (t) => {
    const at = setUp(t, via);
    // the index claims a chunk half as long as what the frame decodes to
    const err = await preflightPayload({ payload: info({ size: CHUNK / 2, chunkSize: CHUNK / 2 }), length: frame.length, ...at }).then(
      () => undefined,
      (e: unknown) => e as { code: string },
    );
    t.equal(err?.code, 'INSTALL_DECOMPRESS');
  });
}

t.test('a FIFO directory that cannot take the FIFO: the pipe instead, same verdict', async (t) => {
  await t.resolves(preflightPayload({ payload: info(), length: frame.length, ...setUp(t, 'missing') }));
});

t.test('by default (auto) the built-in decoder decides where Node has one: a missing zstd CLI refuses nothing', { skip: zstdFrames ? false : `node ${process.version} has no built-in zstd` }, async (t) => {
  const dir = t.testdir();
  const path = join(dir, 'payload.zst');
  writeFileSync(path, frame);
  const base = { source: fileSource(path), fifoDir: dir, zstdPath: join(dir, 'no-such-zstd') };
  await t.resolves(preflightPayload({ payload: info(), length: frame.length, ...base }));
  const err = await preflightPayload({ payload: info({}, sha(Buffer.from('not chunk 0'))), length: frame.length, ...base }).then(
    () => undefined,
    (e: unknown) => e as { code: string },
  );
  t.equal(err?.code, 'INSTALL_CHUNK_HASH_MISMATCH');
});

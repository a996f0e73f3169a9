// zstd decoders: the `zstd` CLI child and node:zlib's built-in zstd (where it reads concatenated frames) decode a payload of
// independent frames to the same bytes, deliver every complete frame of a truncated payload before
// failing with INSTALL_DECOMPRESS, and 'auto' picks the built-in one when the CLI is missing.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import t from 'tap';
import { setup } from '../harness/install-env.js';
import { builtinZstd, decodesInChild, startDecoder, zstdDecoderFor, type DecoderOptions } from '../../daemon/install/decode.js';

const FRAME = 256 * 1024;
const frames = [randomBytes(FRAME), Buffer.alloc(FRAME, 7), Buffer.concat([randomBytes(FRAME / 2), Buffer.alloc(FRAME / 2)])];
const compressed = frames.map((f) => execFileSync('zstd', ['-q', '-c'], { input: f }));
const image = Buffer.concat(frames);
const payload = Buffer.concat(compressed);

async function decode(input: Buffer, opts: DecoderOptions): Promise<{ out: Buffer; err: unknown }> {
  const dec = await startDecoder('zstd', opts);
  const parts: Buffer[] = [];
  dec.start((piece) => {
    parts.push(Buffer.from(piece)); // the piece's memory is reused after return
    return true;
  });
  dec.input!.write(input);
  dec.finishInput();
  const err = await dec.done.then(
    () => undefined,
    (e: unknown) => e,
  );
  return { out: Buffer.concat(parts), err };
}

const decoders = (['cli', 'zlib'] as const).filter((d) => d === 'cli' || builtinZstd);

for (const zstdDecoder of decoders) {
  t.test(`${zstdDecoder}: a payload of frames decodes to the image`, async (t) => {
    const { out, err } = await decode(payload, { zstdDecoder, fifoDir: t.testdir() });
    t.equal(err, undefined);
    t.ok(out.equals(image), `${out.length} bytes, equal to the image`);
  });

  t.test(`${zstdDecoder}: a truncated payload yields its complete frames, then INSTALL_DECOMPRESS`, async (t) => {
    const cut = compressed[0]!.length + compressed[1]!.length + 100;
    const { out, err } = await decode(payload.subarray(0, cut), { zstdDecoder, fifoDir: t.testdir() });
    t.equal((err as { code?: string } | undefined)?.code, 'INSTALL_DECOMPRESS');
    t.ok(out.length >= 2 * FRAME && out.equals(image.subarray(0, out.length)), `the first two frames came out (${out.length} bytes)`);
  });

  t.test(`${zstdDecoder}: corrupt data fails with INSTALL_DECOMPRESS`, async (t) => {
    const bad = Buffer.from(payload);
    bad.fill(0x55, compressed[0]!.length + 8, compressed[0]!.length + 64);
    const { err } = await decode(bad, { zstdDecoder, fifoDir: t.testdir() });
    t.equal((err as { code?: string } | undefined)?.code, 'INSTALL_DECOMPRESS');
  });
}

t.test("'auto' uses the CLI when it is there and the built-in decoder when it is not", async (t) => {
  t.equal(zstdDecoderFor({}), 'cli');
  t.equal(decodesInChild('zstd', {}), true);
  const missing = join(t.testdir(), 'no-zstd');
  if (!builtinZstd) {
    t.equal(zstdDecoderFor({ zstdPath: missing }), 'cli', `node ${process.version} has no built-in zstd: the CLI's error says what to install`);
    return;
  }
  t.equal(zstdDecoderFor({ zstdPath: missing }), 'zlib');
  t.equal(decodesInChild('zstd', { zstdPath: missing }), false, 'the installer feeds it the stream');
  t.equal(decodesInChild('gzip', { zstdPath: missing }), false, 'gzip falls back to node:zlib too');
  const { out, err } = await decode(payload, { zstdPath: missing, fifoDir: t.testdir() });
  t.equal(err, undefined);
  t.ok(out.equals(image));
});

t.test('without the zstd CLI the installer streams through the built-in decoder, resuming after cuts', { skip: builtinZstd ? false : `node ${process.version}: no built-in zstd for concatenated frames` }, async (t) => {
  const e = await setup(t, 'zstd');
  const c = e.p.payload.chunks;
  e.srv.faults.cutAtOffset = [Math.floor(c[3]!.offset + c[3]!.length / 2), c[10]!.offset + c[10]!.length];
  const r = await e.install({ zstdPath: join(e.dir, 'no-zstd'), retry: { baseDelayMs: 1, maxAttempts: 3 } });
  t.equal(r.transfers, 3, 'one transfer per cut plus the last');
  t.equal(r.readBackSha256, e.p.payload.sha256);
  t.ok(await e.slotMatches(), 'slot holds the image');
  t.ok(e.srv.requests.slice(1).every((q) => q.range !== undefined), 'resumed with Range');
});

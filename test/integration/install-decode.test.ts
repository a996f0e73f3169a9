// zstd decoders: the `zstd` CLI child, node:zlib's built-in zstd stream (where it reads concatenated
// frames) and the in-process frame-by-frame decoder (wherever Node has a built-in zstd, Node 22 too)
// decode a payload of independent frames to the same bytes, deliver every complete frame of a
// truncated payload before failing with INSTALL_DECOMPRESS; 'auto' takes the frame decoder when the
// caller knows the frames, else the CLI, and the built-in stream when the CLI is missing.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import t from 'tap';
import { setup } from '../harness/install-env.js';
import { builtinZstd, decodesInChild, startDecoder, zstdDecoderFor, zstdFrames, type DecoderOptions, type FrameList } from '../../daemon/install/decode.js';

const FRAME = 256 * 1024;
const frames = [randomBytes(FRAME), Buffer.alloc(FRAME, 7), Buffer.concat([randomBytes(FRAME / 2), Buffer.alloc(FRAME / 2)])];
const compressed = frames.map((f) => execFileSync('zstd', ['-q', '-c'], { input: f }));
const image = Buffer.concat(frames);
const payload = Buffer.concat(compressed);
/** the payload's frames as the chunk index lists them */
const frameList: FrameList = { lengths: compressed.map((c) => c.length), outLength: () => FRAME };

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

const decoders = (['cli', 'zlib', 'frames'] as const).filter((d) => d === 'cli' || (d === 'zlib' ? builtinZstd : zstdFrames));

for (const zstdDecoder of decoders) {
  t.test(`${zstdDecoder}: a payload of frames decodes to the image`, async (t) => {
    const { out, err } = await decode(payload, { zstdDecoder, fifoDir: t.testdir(), frames: frameList });
    t.equal(err, undefined);
    t.ok(out.equals(image), `${out.length} bytes, equal to the image`);
  });

  t.test(`${zstdDecoder}: a truncated payload yields its complete frames, then INSTALL_DECOMPRESS`, async (t) => {
    const cut = compressed[0]!.length + compressed[1]!.length + 100;
    const { out, err } = await decode(payload.subarray(0, cut), { zstdDecoder, fifoDir: t.testdir(), frames: frameList });
    t.equal((err as { code?: string } | undefined)?.code, 'INSTALL_DECOMPRESS');
    t.ok(out.length >= 2 * FRAME && out.equals(image.subarray(0, out.length)), `the first two frames came out (${out.length} bytes)`);
  });

  t.test(`${zstdDecoder}: corrupt data fails with INSTALL_DECOMPRESS`, async (t) => {
    const bad = Buffer.from(payload);
    bad.fill(0x55, compressed[0]!.length + 8, compressed[0]!.length + 64);
    const { err } = await decode(bad, { zstdDecoder, fifoDir: t.testdir(), frames: frameList });
    t.equal((err as { code?: string } | undefined)?.code, 'INSTALL_DECOMPRESS');
  });
}

t.test('frames: a frame decodes straight into the buffer the sink offers when that holds its whole chunk, else into its own; in order', { skip: zstdFrames ? false : `node ${process.version} has no built-in zstd` }, async (t) => {
  const dec = await startDecoder('zstd', { zstdDecoder: 'frames', fifoDir: t.testdir(), frames: frameList });
  // frame 1 is offered a buffer one byte short of its chunk: it decodes into the decoder's own
  const bufs = [Buffer.alloc(FRAME), Buffer.alloc(FRAME - 1), Buffer.alloc(FRAME)];
  let total = 0;
  const inPlace = [0, 0, 0];
  const parts: Buffer[] = [];
  dec.start(
    (piece) => {
      const f = Math.floor(total / FRAME);
      if (piece.buffer === bufs[f]!.buffer && piece.byteOffset === bufs[f]!.byteOffset + (total % FRAME)) inPlace[f]! += piece.length;
      parts.push(Buffer.from(piece));
      total += piece.length;
      return true;
    },
    () => bufs[Math.min(Math.floor(total / FRAME), 2)]!,
  );
  // fed in odd pieces that straddle the frames' boundaries
  for (let at = 0; at < payload.length; at += 7777) dec.input!.write(payload.subarray(at, at + 7777));
  dec.finishInput();
  await dec.done;
  await dec.idle();
  t.ok(Buffer.concat(parts).equals(image), 'the image, in order');
  t.same(inPlace, [FRAME, 0, FRAME], 'frames 0 and 2 landed whole in the offered buffers (no copy), frame 1 (offered too little) did not');
});

t.test('frames: a sink that has no buffer for the next frame yet says so (undefined) and resumes the decoder later; nothing is lost or decoded elsewhere', { skip: zstdFrames ? false : `node ${process.version} has no built-in zstd` }, async (t) => {
  const dec = await startDecoder('zstd', { zstdDecoder: 'frames', fifoDir: t.testdir(), frames: frameList });
  const buf = Buffer.alloc(FRAME);
  let total = 0;
  let inPlace = 0;
  let refused = 0;
  const parts: Buffer[] = [];
  dec.start(
    (piece) => {
      if (piece.buffer === buf.buffer && piece.byteOffset === total % FRAME) inPlace += piece.length;
      parts.push(Buffer.from(piece));
      total += piece.length;
      return true;
    },
    (whole) => {
      t.equal(whole, FRAME, 'asked for a whole chunk');
      // every frame is refused once: the decoder waits until resumed
      if (refused <= Math.floor(total / FRAME)) {
        refused++;
        setTimeout(() => dec.resume(), 5);
        return undefined;
      }
      return buf;
    },
  );
  dec.input!.write(payload);
  dec.finishInput();
  await dec.done;
  t.ok(Buffer.concat(parts).equals(image), 'the image, in order');
  t.equal(refused, 3, 'each frame waited once');
  t.equal(inPlace, image.length, 'every frame decoded into the buffer given after the wait (none into the decoder\'s own)');
});

t.test('frames: a frame that decodes to more than its chunk fails with INSTALL_DECOMPRESS after the frames before it', { skip: zstdFrames ? false : `node ${process.version} has no built-in zstd` }, async (t) => {
  const short: FrameList = { lengths: frameList.lengths, outLength: (i) => (i === 1 ? FRAME - 1 : FRAME) };
  const { out, err } = await decode(payload, { zstdDecoder: 'frames', fifoDir: t.testdir(), frames: short });
  t.equal((err as { code?: string } | undefined)?.code, 'INSTALL_DECOMPRESS');
  t.match((err as Error).message, /more than its chunk/);
  t.ok(out.subarray(0, FRAME).equals(image.subarray(0, FRAME)), 'frame 0 came out');
  t.ok(out.length < 2 * FRAME, 'the frame after it was not delivered');
});

t.test("'auto' takes the frame decoder when the frames are known and Node has a built-in zstd", { skip: zstdFrames ? false : `node ${process.version} has no built-in zstd` }, async (t) => {
  t.equal(zstdDecoderFor({}, true), 'frames');
  t.equal(decodesInChild('zstd', { frames: frameList }), false, 'the installer feeds it');
  t.equal(zstdDecoderFor({ zstdDecoder: 'cli' }, true), 'cli', 'the CLI can still be forced');
  const huge: FrameList = { lengths: [FRAME * 2], outLength: () => FRAME };
  t.equal(decodesInChild('zstd', { frames: huge }), true, 'a frame past the zstd bound of its chunk goes to the CLI');
});

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

t.test('without the zstd CLI the installer decodes with the built-in zstd (frame by frame: Node 22 too), resuming after cuts', { skip: zstdFrames ? false : `node ${process.version}: no built-in zstd` }, async (t) => {
  const e = await setup(t, 'zstd');
  const c = e.p.payload.chunks;
  e.srv.faults.cutAtOffset = [Math.floor(c[3]!.offset + c[3]!.length / 2), c[10]!.offset + c[10]!.length];
  const r = await e.install({ zstdPath: join(e.dir, 'no-zstd'), retry: { baseDelayMs: 1, maxAttempts: 3 } });
  t.equal(r.transfers, 3, 'one transfer per cut plus the last');
  t.equal(r.readBackSha256, e.p.payload.sha256);
  t.ok(await e.slotMatches(), 'slot holds the image');
  t.ok(e.srv.requests.slice(1).every((q) => q.range !== undefined), 'resumed with Range');
});

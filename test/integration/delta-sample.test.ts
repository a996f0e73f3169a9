/**
 * "Not worth it", judged early (daemon/install/delta.ts): slots without a seed index are sampled
 * before either is read whole. Unrelated slots stop the install after ~1/16 of each was read (no slot
 * cut, nothing written, nothing of the pack fetched); a slot that does hold the new image's bytes,
 * the running slot or the target (e.g. a half-written copy), is never mistaken for an unrelated one.
 * Real HTTP (`repo serve`), file slots, images large enough for the sample's windows (8 MiB with
 * small CDC chunks: windows of 4 × max chunk, 64 of them over the image).
 */
import t, { type Test } from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildDelta } from '../../manifests/delta.js';
import { serveRepository, type AccessLogEntry } from '../../manifests/serve.js';
import { createSlotWriter } from '../../hal/file-slot.js';
import { installDelta, SAMPLE_EVERY, type DeltaInstallOptions } from '../../daemon/install/delta.js';

const SIZE = 8 << 20;
/** small chunks, so that an 8 MiB image is sampled (window 8 KiB = 4 × max, 64 windows) */
const CDC = { min: 128, avg: 512, max: 2048 };

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function setup(t: Test, newImg: Buffer, running: Buffer, target: Buffer): Promise<{ dir: string; log: AccessLogEntry[]; opts: (extra?: Partial<DeltaInstallOptions>) => DeltaInstallOptions; packLength: number }> {
  const dir = t.testdir();
  await mkdir(join(dir, 'repo'), { recursive: true });
  await writeFile(join(dir, 'new.img'), newImg);
  const built = await buildDelta(join(dir, 'new.img'), join(dir, 'repo/image.delta-index'), join(dir, 'repo/image.delta-pack'), { level: 1, cdc: CDC });
  const log: AccessLogEntry[] = [];
  const srv = await serveRepository(join(dir, 'repo'), { onRequest: (e) => log.push(e) });
  t.teardown(() => srv.close());
  await writeFile(join(dir, 'running.img'), running);
  await writeFile(join(dir, 'target.img'), target);
  return {
    dir, log, packLength: built.pack.length,
    opts: (extra = {}) => ({
      index: { urls: [`${srv.url}image.delta-index`], ...built.index },
      pack: { urls: [`${srv.url}image.delta-pack`], ...built.pack },
      slot: createSlotWriter('B', { path: join(dir, 'target.img') }),
      running: { path: join(dir, 'running.img'), size: SIZE },
      // the full payload of a random image is about its pack's size
      fullBytes: built.pack.length,
      ...extra,
    }),
  };
}

t.test('unrelated slots: stopped after sampling them, nothing cut, written or fetched but the index', async (t) => {
  const target = randomBytes(SIZE);
  const e = await setup(t, randomBytes(SIZE), randomBytes(SIZE), target);
  const err = (await installDelta(e.opts()).catch((x: unknown) => x)) as { code?: string; details?: { estimated?: boolean; lookup?: { cutBytes: number; probedBytes: number; sampledBytes: number } } };
  t.equal(err.code, 'INSTALL_DELTA_NOT_WORTH');
  t.equal(err.details?.estimated, true, 'judged from the samples');
  t.equal(err.details?.lookup?.cutBytes, 0, 'no slot cut');
  t.equal(err.details?.lookup?.probedBytes, 0, 'the target not probed');
  const sampled = err.details?.lookup?.sampledBytes ?? 0;
  t.ok(sampled > 0 && sampled <= (2 * SIZE) / SAMPLE_EVERY, `${sampled} bytes of the two ${SIZE}-byte slots read`);
  t.equal(sha(await readFile(join(e.dir, 'target.img'))), sha(target), 'the target slot unchanged');
  t.same(e.log.map((l) => l.path), ['/image.delta-index'], 'only the index fetched');
});

/** `img` with `n` scattered 1 KiB edits. */
function edited(img: Buffer, n: number): Buffer {
  const out = Buffer.from(img);
  for (let i = 0; i < n; i++) randomBytes(1024).copy(out, Math.floor(((i + 0.5) * SIZE) / n));
  return out;
}

t.test('the new image mostly in the running slot: sampled, judged worth it, installed by delta', async (t) => {
  const old = randomBytes(SIZE);
  const neu = edited(old, 40);
  const e = await setup(t, neu, old, Buffer.alloc(SIZE));
  const r = await installDelta(e.opts());
  t.equal(sha(await readFile(join(e.dir, 'target.img'))), sha(neu), 'target holds NEW');
  t.equal(r.lookup.running, 'cut');
  t.ok(r.lookup.sampledBytes > 0, `the slots were sampled first (${r.lookup.sampledBytes} bytes)`);
  t.ok(r.copied > SIZE * 0.9, `copied ${r.copied}`);
  t.ok(r.downloaded < e.packLength / 4, `downloaded ${r.downloaded} of a ${e.packLength}-byte pack`);
});

t.test('the new image half-written on the target, an unrelated running slot: not mistaken for unrelated', async (t) => {
  const neu = randomBytes(SIZE);
  const half = Buffer.concat([neu.subarray(0, SIZE / 2), randomBytes(SIZE / 2)]);
  const e = await setup(t, neu, randomBytes(SIZE), half);
  const r = await installDelta(e.opts());
  t.equal(sha(await readFile(join(e.dir, 'target.img'))), sha(neu), 'target holds NEW');
  t.ok(r.lookup.sampledBytes > 0, `the slots were sampled first (${r.lookup.sampledBytes} bytes)`);
  t.ok(r.inPlace >= SIZE / 2 - 4 * CDC.max, `in place ${r.inPlace}`);
  t.ok(r.downloaded < e.packLength * 0.6, `downloaded ${r.downloaded} of a ${e.packLength}-byte pack`);
});

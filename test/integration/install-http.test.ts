import t from 'tap';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { installPayload, type InstallOptions } from '../../daemon/install/index.js';
import { isCoded } from '../../hal/errors.js';
import { startHttpServer } from '../harness/http-server.js';
import { createPathSlot } from '../bench/path-slot.js';
import { makePayload, makeSlotFile, sha256File } from '../bench/install-fixtures.js';

const CHUNK = 64 << 10;
const SIZE = (2 << 20) + 12345; // 33 chunks, last one short

t.test('zstd over HTTP installs and verifies', async (t) => {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'zstd' });
  const srv = await startHttpServer({ root: dir });
  t.teardown(() => srv.stop());
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE + 1000);
  const progress: number[] = [];
  const r = await installPayload({
    payload: p.payload,
    length: p.length,
    source: { urls: [srv.url + p.name] },
    slot: createPathSlot('B', slotPath),
    resumeStatePath: join(dir, 'resume.json'),
    onProgress: (e) => progress.push(e.bytes),
  });
  t.equal(r.readBackSha256, p.payload.sha256);
  t.equal(r.transfers, 1);
  t.equal(srv.requests.length, 1);
  t.equal(srv.requests[0]!.acceptEncoding, 'identity');
  const slot = await readFile(slotPath);
  const img = await readFile(p.image);
  t.ok(slot.subarray(0, SIZE).equals(img), 'slot holds the image');
  t.ok(slot.subarray(SIZE).every((b) => b === 0xa5), 'nothing past the image was touched');
  t.equal(progress.at(-1), SIZE, 'final progress is the full size');
  const state = JSON.parse(await readFile(join(dir, 'resume.json'), 'utf8'));
  t.equal(state.complete, true);
  t.equal(state.nextChunk, p.payload.chunks.length);
});

/**
 * Issue 24: the install's read-back hashes the whole image over what the medium returns (one pass, no
 * per-chunk digest recorded at write time) and, only when that hash is not the signed one, reads the
 * slot again to SHA-256 each chunk against the signed index: it must still catch and NAME a chunk
 * whose bytes on the medium changed after the write. Driven through the built CLI (`slotflip install URL --config F`)
 * from a real HTTP server (throttled, so the install is observably mid-way) into a loop-device slot
 * B, whose backing file is the "medium": a byte changed there underneath the block device's page
 * cache is flash that acknowledged the write and kept something else (a buffered read of the slot
 * still returns the written byte; the test checks that premise, so it cannot pass vacuously).
 *
 * - After the write, before the read-back: chunk 2 is written (the test sees it on the slot), written
 *   back, then changed underneath while the download still runs (so before the final flush and the
 *   read-back behind it). The install fails with INSTALL_READBACK_MISMATCH naming chunk 2; nothing is
 *   armed (slot B stays marked bad, A stays primary). The next attempt writes again from chunk 2 and
 *   installs: the medium then holds the image.
 * - Changed while no daemon ran, on resume: the install is SIGKILLed mid-download, chunk 2 changed on
 *   the medium, and the install run again: the resume re-hash reads the medium (not the page cache,
 *   which still holds the written bytes), so it resumes at chunk 2, fetches it again and installs.
 */
import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startHttpServer } from '../harness/http-server.js';
import { bufferedBytes, flipUnderneath, loopAvailable, withLoop, writeBack } from '../harness/loop-device.js';
import { addRelease, boardStatus, bytesServed, createBoard, deviceStatus, initFleet, requireBuilt, slotflip, startSlotflip, until, writeDeviceConfig } from './harness.js';

requireBuilt();
t.setTimeout(300_000);

const MIB = 1 << 20;
const CHUNK = 128 << 10;
const SIZE = 4 * MIB; // 32 chunks
const BAD_CHUNK = 2;
const BAD = BAD_CHUNK * CHUNK + 777;

async function setup(t: Test, deviceId: string) {
  const dir = t.testdir();
  const fleet = await initFleet(dir);
  const rel = await addRelease(fleet, dir, { version: '1.1.0', securityVersion: 1, size: SIZE, chunkSize: CHUNK });
  const image = await readFile(join(dir, 'image-1.1.0.img'));
  // ~4 s for the payload: the install is still downloading when the test changes the medium
  const srv = await startHttpServer({ root: fleet.repository, faults: { bytesPerSecond: MIB } });
  t.teardown(() => srv.stop());
  const board = await createBoard(join(dir, 'board'), SIZE + MIB);
  const loop = await withLoop(t, dir, SIZE + MIB);
  board.slots.B = loop.dev;
  const config = await writeDeviceConfig(join(dir, 'device.json'), {
    deviceId, board, fleet, stateDir: join(dir, 'state'), metadataUrl: srv.url, payloadBaseUrls: [`${srv.url}targets/`], extra: { log: { level: 'info' } },
  });
  const install = ['install', srv.url, '--config', config, '--json'];
  /** chunk `k` of the image is in slot B's page cache (the installer wrote it). */
  const written = async (k: number): Promise<boolean> => (await bufferedBytes(loop.dev, k * CHUNK, CHUNK)).equals(image.subarray(k * CHUNK, (k + 1) * CHUNK));
  /** SHA-256 of the image-sized prefix of the medium (the backing file). */
  const medium = async (): Promise<string> => createHash('sha256').update((await readFile(loop.backing)).subarray(0, SIZE)).digest('hex');
  return { dir, rel, image, srv, board, loop, config, install, written, medium };
}

/** The JSON log lines in `text` (one per line; anything else is skipped). */
function logLines(text: string): Array<Record<string, unknown>> {
  return text.split('\n').flatMap((l) => {
    try {
      return l.startsWith('{') ? [JSON.parse(l) as Record<string, unknown>] : [];
    } catch {
      return [];
    }
  });
}

t.test('a chunk changed on the medium after its write, before the read-back: INSTALL_READBACK_MISMATCH names it, nothing armed; the next attempt writes it again', { skip: loopAvailable() ? false : 'needs root and a loop device' }, async (t) => {
  const e = await setup(t, 'e2e-readback-after-write');
  const run = startSlotflip(e.install);
  t.teardown(() => run.kill());
  await until(() => e.written(BAD_CHUNK), 60_000, `chunk ${BAD_CHUNK} on the slot`);
  const servedAtChange = bytesServed(e.srv, e.rel.urlPath);
  await writeBack(e.loop.dev);
  const changed = await flipUnderneath(e.loop.backing, BAD);
  t.ok(servedAtChange < e.rel.length, `changed while the download still ran (${servedAtChange} of ${e.rel.length} payload bytes served): before the final flush, so before the read-back`);
  t.equal((await bufferedBytes(e.loop.dev, BAD, 1))[0], e.image[BAD], 'premise: the page cache still holds the written byte');
  t.not(changed, e.image[BAD], 'premise: the medium holds another');

  const code = await run.exited;
  const out = `${run.lines.map((l) => JSON.stringify(l)).join('\n')}\n${run.stderr()}`;
  t.equal(code, 3, 'exit 3: the attempt failed before it was armed');
  t.match(out, /INSTALL_READBACK_MISMATCH/, 'with the stable code');
  const chunkOf = (img: Buffer): Buffer => img.subarray(BAD_CHUNK * CHUNK, (BAD_CHUNK + 1) * CHUNK);
  const onMedium = Buffer.from(chunkOf(e.image));
  onMedium[BAD - BAD_CHUNK * CHUNK] = changed;
  const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
  t.match(out, new RegExp(`differs in chunk 2 \\(bytes 262144\\.\\.393215\\): SHA-256 ${sha(onMedium)}, signed ${sha(chunkOf(e.image))}`), 'naming the chunk, its bytes, the SHA-256 the medium holds and the signed one');
  t.match(await deviceStatus(e.config), { phase: 'idle', slots: [{ slot: 'A', booted: true, boot: { primary: true } }, { slot: 'B', boot: { state: 'bad', primary: false } }] }, 'slot B stays marked bad, A primary: nothing armed');
  t.equal((await boardStatus(e.board.dir)).booted, 'A');

  const retry = await slotflip(['check', '--retry', '--config', e.config, '--json']);
  t.equal(retry.code, 0, 'an operator asks to retry the failed release');
  const before = bytesServed(e.srv, e.rel.urlPath);
  const again = await slotflip(e.install, { timeoutMs: 120_000 });
  t.equal(again.code, 0, `the next attempt installs and arms: ${again.stderr.slice(-400)}`);
  t.match(logLines(again.stderr).find((l) => l.msg === 'install started'), { resumedFrom: BAD_CHUNK }, `it resumed at chunk ${BAD_CHUNK}: the chunks before it were read back from the medium and kept`);
  t.ok(bytesServed(e.srv, e.rel.urlPath) - before < e.rel.length, 'without fetching the whole payload again');
  t.equal(await e.medium(), e.rel.imageSha256, 'the medium holds the image');
});

t.test('a chunk changed on the medium while no installer ran: the resumed install finds it, fetches it again and installs', { skip: loopAvailable() ? false : 'needs root and a loop device' }, async (t) => {
  const e = await setup(t, 'e2e-readback-resume');
  const first = startSlotflip(e.install);
  t.teardown(() => first.kill());
  await until(async () => (await e.written(BAD_CHUNK)) && bytesServed(e.srv, e.rel.urlPath) >= e.rel.length / 2, 60_000, `chunk ${BAD_CHUNK} on the slot and half the payload served`);
  await first.kill();
  t.ok(bytesServed(e.srv, e.rel.urlPath) < e.rel.length, 'killed mid-download');
  await writeBack(e.loop.dev); // what the killed process left dirty reaches the medium ...
  await flipUnderneath(e.loop.backing, BAD); // ... and then the medium changes underneath
  t.equal((await bufferedBytes(e.loop.dev, BAD, 1))[0], e.image[BAD], 'premise: the page cache still holds the written byte');

  const second = await slotflip(e.install, { timeoutMs: 120_000 });
  t.equal(second.code, 0, `the resumed install installs and arms: ${second.stderr.slice(-400)}`);
  t.match(logLines(second.stderr).find((l) => l.msg === 'install started'), { resumedFrom: BAD_CHUNK }, `it resumed at chunk ${BAD_CHUNK}, the one the medium changed (not past it on the strength of the page cache)`);
  t.equal(await e.medium(), e.rel.imageSha256, 'the medium holds the image');
  t.match(await deviceStatus(e.config), { slots: [{ slot: 'A', booted: true }, { slot: 'B', boot: { state: 'trial' } }] }, 'slot B armed for its trial boot');
});

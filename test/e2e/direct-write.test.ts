/**
 * Issue 24: the install writes the slot with O_DIRECT (hal/file-slot.ts, from the installer's
 * page-aligned chunk buffers), sparing the kernel's copy of every image byte into the page cache.
 * Seen from outside: the built CLI (`slotflip install URL --config F`) installs from a real HTTP
 * server into a loop-device slot B that the test holds open (a block device's page cache lives until
 * its last close), and afterwards mincore(2) finds none of the image's pages in slot B's page cache,
 * while the medium (the backing file) holds the image and the slot is armed. The premise is checked
 * on the same device first: a buffered write of the same size does fill that cache, so the test
 * cannot pass because the cache is invisible to it.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startHttpServer } from '../harness/http-server.js';
import { cachedBytes, loopAvailable, withLoop } from '../harness/loop-device.js';
import { addRelease, createBoard, deviceStatus, initFleet, requireBuilt, sha256, slotflip, writeDeviceConfig } from './harness.js';

requireBuilt();
t.setTimeout(300_000);

const MIB = 1 << 20;
const SIZE = 16 * MIB + 1000; // 17 chunks of 1 MiB, the last one 1000 bytes (shorter than a page)

t.test('the CLI install writes slot B past its page cache; the medium holds the image', { skip: loopAvailable() ? false : 'needs root and a loop device' }, async (t) => {
  const dir = t.testdir();
  const fleet = await initFleet(dir);
  const rel = await addRelease(fleet, dir, { version: '1.1.0', securityVersion: 1, size: SIZE, chunkSize: MIB });
  const srv = await startHttpServer({ root: fleet.repository });
  t.teardown(() => srv.stop());
  const board = await createBoard(join(dir, 'board'), 24 * MIB);
  const loop = await withLoop(t, dir, 24 * MIB);
  board.slots.B = loop.dev;

  // premise: a buffered write of that size shows up in the device's page cache (then it is undone:
  // written back and the device's buffers dropped (BLKFLSBUF), so the install starts from an empty cache)
  const fh = await open(loop.dev, 'r+');
  try {
    await fh.write(Buffer.alloc(SIZE, 0xa5), 0, SIZE, 0);
    t.ok(cachedBytes(loop.dev, SIZE) >= SIZE - 4096, 'premise: a buffered write of the image size fills the page cache mincore sees');
    await fh.sync();
  } finally {
    await fh.close();
  }
  execFileSync('blockdev', ['--flushbufs', loop.dev]);
  t.equal(cachedBytes(loop.dev, SIZE), 0, 'the cache is empty before the install');

  const config = await writeDeviceConfig(join(dir, 'device.json'), {
    deviceId: 'e2e-direct-write', board, fleet, stateDir: join(dir, 'state'), metadataUrl: srv.url, payloadBaseUrls: [`${srv.url}targets/`],
  });
  const r = await slotflip(['install', srv.url, '--config', config, '--json'], { timeoutMs: 120_000 });
  t.equal(r.code, 0, `installed and armed: ${r.stderr.slice(-400)}`);
  const cached = cachedBytes(loop.dev, SIZE);
  t.ok(cached <= 4096, `slot B's page cache holds ${cached} bytes of the ${SIZE}-byte image (at most the page of the 1000-byte tail, written buffered)`);
  t.equal(sha256((await readFile(loop.backing)).subarray(0, SIZE)), rel.imageSha256, 'the medium holds the image');
  t.match(await deviceStatus(config), { slots: [{ slot: 'A', booted: true }, { slot: 'B', boot: { state: 'trial' } }] }, 'slot B armed for its trial boot');
});

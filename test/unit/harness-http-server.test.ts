/**
 * The test HTTP server (test/harness/http-server.ts) itself: a slow client makes it wait for 'drain'
 * many times; every wait must leave no listener behind on the response. Each wait used to leave a
 * 'close' and an 'error' listener (Promise.race over two `events.once`), which printed
 * MaxListenersExceededWarning in CI logs from every test that served a payload to a slow reader.
 */
import t from 'tap';
import { randomBytes, createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startHttpServer } from '../harness/http-server.js';

t.test('a slow reader: the body arrives whole and no listener is leaked on the response', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'slotflip-harness-http-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const data = randomBytes(12 << 20);
  await writeFile(join(dir, 'f.bin'), data);
  const srv = await startHttpServer({ root: dir });
  t.teardown(() => srv.stop());
  const warnings: string[] = [];
  const onWarning = (w: Error): void => void warnings.push(`${w.name}: ${w.message}`);
  process.on('warning', onWarning);
  t.teardown(() => process.off('warning', onWarning));

  const got = createHash('sha256');
  let pauses = 0;
  await new Promise<void>((done, fail) => {
    http.get(`${srv.url}f.bin`, (res) => {
      res.on('data', (d: Buffer) => {
        got.update(d);
        // pause on every piece so the server's socket buffer fills and it waits for 'drain' again and again
        res.pause();
        pauses++;
        setTimeout(() => res.resume(), 1);
      });
      res.on('end', done);
      res.on('error', fail);
    }).on('error', fail);
  });
  await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
  t.equal(got.digest('hex'), createHash('sha256').update(data).digest('hex'), 'the body is the file');
  t.ok(pauses > 20, `the reader paused ${pauses} times`);
  t.same(warnings.filter((w) => w.startsWith('MaxListenersExceededWarning')), [], 'no MaxListenersExceededWarning');
});

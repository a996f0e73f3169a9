import t from 'tap';
import { join } from 'node:path';
import pino from 'pino';
import { installPayload } from '../../daemon/install/index.js';
import { startHttpServer } from '../harness/http-server.js';
import { createPathSlot } from '../bench/path-slot.js';
import { makePayload, makeSlotFile } from '../bench/install-fixtures.js';
t.test('dbg', async (t) => {
  const dir = t.testdir();
  const srv = await startHttpServer({ root: dir }); const p = await makePayload(dir, { size: (2 << 20) + 12345, chunkSize: 65536, compression: 'gzip' });
  t.teardown(() => srv.stop());
  t.comment(JSON.stringify(p.payload.chunks.slice(0, 6).map(c => [c.offset, c.length])));
  const c = p.payload.chunks;
  srv.faults.cutAfter = [Math.floor(c[3]!.offset + c[3]!.length / 2)];
  await makeSlotFile(join(dir, 'slot'), 3 << 20);
  const r = await installPayload({ payload: p.payload, length: p.length, source: { urls: [srv.url + p.name] }, slot: createPathSlot('B', join(dir, 'slot')), resumeStatePath: join(dir, 'r'), logger: pino({ level: 'debug' }, pino.destination(2)) }).catch(e => e);
  t.comment(JSON.stringify(r));
  t.comment(JSON.stringify(srv.requests));
});

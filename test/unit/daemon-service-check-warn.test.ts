/**
 * A failed check (metadata that cannot be parsed, verified or fetched) is a `warn` line in the
 * daemon's log (the journal), not only in `slotflip status`: once per distinct detail, again after a
 * check that worked. The log is the behaviour here: a pino sink, parsed JSON lines.
 */
import t from 'tap';
import { Writable } from 'node:stream';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { createBoard } from '../../hal/board.js';
import { SlotflipError } from '../../hal/errors.js';
import { resolveConfig } from '../../daemon/config.js';
import { UpdateService } from '../../daemon/service.js';

t.test('a failed check logs warn "check failed" once per distinct detail', async (t) => {
  const dir = t.testdir();
  const board = await createBoard(join(dir, 'board'), { backend: 'emulated', slotSize: 64 * 1024, factoryVersion: '1.0.0' });
  await writeFile(join(dir, 'root.json'), '{}');
  const config = await resolveConfig({
    deviceId: 'warn-1', hardware: 'acme,board', stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(dir, 'root.json'), sources: [{ type: 'dir', path: join(dir, 'repo') }] },
    board: { slots: { A: { path: board.slots.A, size: 64 * 1024 }, B: { path: board.slots.B, size: 64 * 1024 } }, boot: board.bootConfig, tries: 2 },
    health: { deadlineSeconds: 5, checks: [] },
  });
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({ write(chunk: Buffer, _e, cb) { for (const l of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>); cb(); } });
  let problem: SlotflipError | undefined = new SlotflipError('MANIFEST_PARSE', 'timestamp.json: not JSON');
  const svc = new UpdateService({
    config, log: pino({ level: 'info' }, sink), schedule: false, transport: null,
    overrides: { releases: { releases: async () => { if (problem) throw problem; return []; } }, outbox: null, reboot: async () => undefined },
  });
  const warns = () => lines.filter((l) => l.msg === 'check failed');
  await svc.start();
  await svc.idle();
  t.equal(warns().length, 1, 'the first failed check is logged');
  t.match(warns()[0], { level: 40, code: 'MANIFEST_PARSE', detail: /^MANIFEST_PARSE: timestamp.json: not JSON/ }, 'at warn, with the code and the detail');
  svc.trigger('test');
  await svc.idle();
  t.equal(warns().length, 1, 'the same failure again: not repeated');
  problem = new SlotflipError('MANIFEST_EXPIRED', 'timestamp.json expired');
  svc.trigger('test');
  await svc.idle();
  t.equal(warns().length, 2, 'a different failure is logged');
  t.equal(warns()[1]!.code, 'MANIFEST_EXPIRED');
  problem = undefined;
  svc.trigger('test');
  await svc.idle();
  problem = new SlotflipError('MANIFEST_EXPIRED', 'timestamp.json expired');
  svc.trigger('test');
  await svc.idle();
  t.equal(warns().length, 3, 'after a check that worked, the same failure is logged again');
  await svc.stop();
});

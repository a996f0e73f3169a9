/**
 * Faults during an install on an emulated board (real TUF repository, real HTTP server with fault
 * knobs, the real installer and boot control), each asserting what must hold: the committed slot A
 * keeps running the factory image, a slot is only ever armed after it verified, the attempt ends with
 * a coded reason (or recovers by itself), and once the fault is gone the update completes.
 *
 * HTTP: connection reset mid-payload, 5xx, 404 mid-way, content changing between requests.
 * Slot: I/O error and a bit flip on read-back, a bit flipped on the medium after the flush.
 * Clock: stepping years forward (metadata expired: nothing installed) and back (trusted time holds).
 * A second release published while the first is installing.
 */
import t, { type Test } from 'tap';
import { cp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { open } from 'node:fs/promises';
import { boardStatus, createBoard, powerCycle } from '../../hal/board.js';
import { createSlotWriter } from '../../hal/file-slot.js';
import { SlotflipError } from '../../hal/errors.js';
import type { SlotWriter } from '../../hal/slot-writer.js';
import type { SlotName } from '../../hal/boot-control.js';
import { resolveConfig, type Config } from '../../daemon/config.js';
import { createAgent, sourceFor, statePaths, type ComposeOverrides } from '../../daemon/compose.js';
import { runUpdateCycle, type Installer } from '../../daemon/agent.js';
import { verifySlotImage } from '../../daemon/install/read-back.js';
import { installPayload } from '../../daemon/install/index.js';
import { IndexResolver, indexCacheDir } from '../../daemon/install/index-file.js';
import { Outbox } from '../../daemon/outbox.js';
import { startHttpServer, type HttpServerHandle } from '../harness/http-server.js';
import { boardHealth } from '../powercut/driver.js';
import { buildFixtures, checkOutboxTruth, HARDWARE, SLOT_SIZE, type Fixtures } from '../powercut/harness.js';

/** A per-request knob that applies only to payload requests (under targets/, not the format 2 chunk
 * index beside the payload), by their own index. */
function onPayload<T>(srv: HttpServerHandle, value: (k: number) => T | undefined): T[] {
  const isPayload = (path: string): boolean => path.includes('/targets/') && !path.endsWith('.index');
  return new Proxy([] as T[], {
    get(target, prop, recv) {
      if (typeof prop === 'string' && /^\d+$/.test(prop)) {
        const n = Number(prop);
        const rec = srv.requests[n];
        if (!rec || !isPayload(rec.path)) return undefined;
        const k = srv.requests.slice(0, n).filter((r) => isPayload(r.path)).length;
        return value(k);
      }
      return Reflect.get(target, prop, recv);
    },
  });
}

async function device(t: Test, fx: Fixtures, o: { stage?: string; served?: string } = {}) {
  const dir = t.testdir();
  const boardDir = join(dir, 'board');
  const board = await createBoard(boardDir, { backend: 'emulated', slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
  const srv = await startHttpServer({ root: o.served ?? fx.served });
  t.teardown(() => srv.stop());
  const config: Config = await resolveConfig({
    deviceId: 'inst-1', hardware: HARDWARE, stateDir: join(dir, 'state'),
    trust: { shippedRoot: fx.roots.good, sources: [{ type: 'http', url: `${srv.url}${o.served ? '' : `good/${o.stage ?? 'stage1'}/`}` }] },
    board: { slots: { A: { path: board.slots.A, size: SLOT_SIZE }, B: { path: board.slots.B, size: SLOT_SIZE } }, boot: board.bootConfig, tries: 2 },
  });
  let reboots = 0;
  // the product's installer wiring (compose.ts), with short retry delays so the test stays fast
  const src = sourceFor(config.trust.sources[0]!, config);
  const index = new IndexResolver({ locate: (target) => src.payload(target), cacheDir: indexCacheDir(config.stateDir) });
  const installer: Installer = {
    write: async (release, slot) => { await installPayload({ payload: await index.payloadOf(release), source: src.payload(release), slot, resumeStatePath: statePaths(config.stateDir).resume, length: release.length, retry: { baseDelayMs: 20, maxDelayMs: 100 } }); },
    verify: async (release, slot) => verifySlotImage(slot, await index.payloadOf(release)),
  };
  const agent = (over: ComposeOverrides = {}) => createAgent(config, { reboot: async () => { reboots++; await powerCycle(boardDir); }, health: boardHealth(boardDir), installer, ...over });
  const state = async () => {
    const s = await boardStatus(boardDir);
    return { booted: s.booted, A: s.images.A.version, B: s.images.B, reboots };
  };
  const truth = async () => {
    const events = await new Outbox({ dir: join(config.stateDir, 'outbox') }).entries();
    const history = (await (await agent()).history());
    return checkOutboxTruth(events, history);
  };
  return { dir, boardDir, board, srv, config, agent, state, truth };
}


t.test('install faults', async (t) => {
  const fx = await buildFixtures(join(t.testdir(), 'fx'));
  t.teardown(() => fx.stop());

  for (const [stage, comp, version] of [['stage1', 'zstd', '1.1.0'], ['stage2', 'gzip', '1.2.0']] as const) {
  t.test(`HTTP connection reset mid-payload (${comp}): noticed at once, re-requested, completes`, async (t) => {
    const d = await device(t, fx, { stage });
    d.srv.faults.cutAfter = onPayload(d.srv, (k) => (k === 0 ? 40_000 : undefined));
    const started = Date.now();
    const r = await runUpdateCycle(() => d.agent());
    // the reset must be noticed at once (not after the 30 s stall watchdog)
    t.ok(Date.now() - started < 15_000, `the reset was noticed promptly (${Date.now() - started} ms)`);
    t.match(r.finished, [{ outcome: 'succeeded', release: { version } }]);
    const payload = d.srv.requests.filter((q) => q.path.includes('/targets/') && !q.path.endsWith('.index'));
    t.ok(payload.length >= 2, 'the payload was requested again');
    t.ok(payload.slice(1).every((q) => q.status === 200 || q.status === 206), `re-requested: ${JSON.stringify(payload.map((q) => [q.range, q.status]))}`);
    t.same(await d.truth(), []);
  });
  }

  t.test('HTTP 5xx: retried, then completes', async (t) => {
    const d = await device(t, fx);
    d.srv.faults.status = onPayload(d.srv, (k) => (k < 2 ? 503 : undefined));
    const r = await runUpdateCycle(() => d.agent());
    t.match(r.finished, [{ outcome: 'succeeded' }]);
    t.equal((await d.state()).booted, 'B');
  });

  t.test('HTTP 404 mid-way: nothing armed, the committed slot runs; completes once the file is back', async (t) => {
    const d = await device(t, fx);
    let missing = true;
    d.srv.faults.cutAfter = onPayload(d.srv, (k) => (k === 0 ? 30_000 : undefined));
    d.srv.faults.status = onPayload(d.srv, (k) => (k >= 1 && missing ? 404 : undefined));
    const r1 = await runUpdateCycle(() => d.agent());
    t.equal(r1.rebooted, false, 'no reboot into a half-written slot');
    const s1 = await d.state();
    t.equal(s1.booted, 'A');
    t.equal(s1.B.boots, false, 'slot B is not bootable');
    t.equal(s1.reboots, 0);
    for (const f of r1.finished) t.match(f, { outcome: 'failed', reason: { code: /^INSTALL_/ } });
    missing = false;
    const r2 = await runUpdateCycle(() => d.agent());
    t.match(r2.finished.at(-1), { outcome: 'succeeded', release: { version: '1.1.0' } }, 'completes (resumed or retried) once the server has the file again');
    t.same(await d.truth(), []);
  });

  t.test('content changing between requests: the other bytes are refused before they reach the slot', async (t) => {
    const d = await device(t, fx);
    // the second request for the payload gets a different file (the 1.2.0 payload of stage2)
    const other = d.srv.requests; // recorded after the first cycle's metadata requests
    void other;
    const stage2Payload = join('good', 'stage2', 'targets', 'releases', '1.2.0');
    const { readdir } = await import('node:fs/promises');
    const files = await readdir(join(fx.served, stage2Payload));
    const replacement = `${stage2Payload}/${files[0]!}`;
    let changing = true;
    d.srv.faults.cutAfter = onPayload(d.srv, (k) => (k === 0 ? 30_000 : undefined));
    d.srv.faults.replaceWith = onPayload(d.srv, (k) => (k >= 1 && changing ? replacement : undefined));
    const r1 = await runUpdateCycle(() => d.agent());
    const s1 = await d.state();
    t.equal(s1.booted, 'A', 'the committed slot runs');
    t.equal(s1.reboots, 0, 'never armed');
    t.equal(s1.B.boots, false, 'slot B never holds a bootable mix');
    for (const f of r1.finished) t.match(f, { outcome: 'failed', reason: { code: /^INSTALL_/ } });
    changing = false;
    const r2 = await runUpdateCycle(() => d.agent());
    t.match(r2.finished.at(-1), { outcome: 'succeeded', release: { version: '1.1.0' } });
    t.same(await d.truth(), []);
  });

  const wrapped = (d: Awaited<ReturnType<typeof device>>, hooks: { readAt?: (buf: Buffer, off: number) => Buffer; afterFlush?: (path: string) => Promise<void> }): Record<SlotName, SlotWriter> => {
    const wrap = (w: SlotWriter): SlotWriter => ({
      slot: w.slot, path: w.path, capacity: () => w.capacity(),
      async open() {
        const h = await w.open();
        return {
          writeAt: (b, o) => h.writeAt(b, o),
          readAt: async (len, off) => (hooks.readAt ? hooks.readAt(await h.readAt(len, off), off) : h.readAt(len, off)),
          flush: async () => { await h.flush(); await hooks.afterFlush?.(w.path); },
          close: () => h.close(),
        };
      },
    });
    return { A: wrap(createSlotWriter('A', { ...d.config.board.slots.A })), B: wrap(createSlotWriter('B', { ...d.config.board.slots.B })) };
  };

  t.test('I/O error on slot read-back: the attempt fails with a code, nothing armed', async (t) => {
    const d = await device(t, fx);
    let eio = true;
    const slots = wrapped(d, { readAt: (b) => { if (eio) throw Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO', errno: -5 }); return b; } });
    const r1 = await runUpdateCycle(() => d.agent({ slots }));
    t.equal(r1.finished.length, 1);
    t.match(r1.finished[0], { outcome: 'failed', reason: { code: /^(INSTALL|HAL|DAEMON)_/ } });
    t.not(r1.finished[0]?.reason?.code, 'DAEMON_UNEXPECTED', 'an I/O error has its own code');
    t.equal((await d.state()).reboots, 0, 'never armed');
    eio = false;
    const r2 = await runUpdateCycle(() => d.agent({ slots }));
    t.match(r2.finished, [{ outcome: 'succeeded' }]);
  });

  t.test('a bit flip on read-back is caught; a bit flipped on the medium is caught', async (t) => {
    const d = await device(t, fx);
    let flips = 1;
    const slots = wrapped(d, { readAt: (b, off) => { if (flips > 0 && off === 0 && b.length > 5000) { flips--; const c = Buffer.from(b); c[5000]! ^= 0x10; return c; } return b; } });
    const r1 = await runUpdateCycle(() => d.agent({ slots }));
    t.match(r1.finished, [{ outcome: 'failed', reason: { code: /MISMATCH/ } }], 'read-back bit flip → mismatch');
    t.equal((await d.state()).reboots, 0, 'never armed');
    // the medium flips a bit after the flush
    let medium = true;
    const slots2 = wrapped(d, { afterFlush: async (p) => { if (!medium) return; medium = false; const fh = await open(p, 'r+'); const b = Buffer.alloc(1); await fh.read(b, 0, 1, 7000); b[0]! ^= 1; await fh.write(b, 0, 1, 7000); await fh.close(); } });
    const r2 = await runUpdateCycle(() => d.agent({ slots: slots2 }));
    t.match(r2.finished.at(-1), { outcome: 'succeeded' }, 'the flipped chunk is rewritten (re-hash on resume) or the attempt retried, and it completes');
    const s = await d.state();
    t.equal(s.booted, 'B');
    t.equal(s.B.boots, true);
    t.same(await d.truth(), []);
  });

  t.test('clock stepping years forward, then back', async (t) => {
    const d = await device(t, fx);
    const YEAR = 365 * 24 * 3600 * 1000;
    let offset = 5 * YEAR;
    const now = () => Date.now() + offset;
    const r1 = await runUpdateCycle(() => d.agent({ now }));
    t.equal(r1.finished.length, 0, 'metadata expired under a clock 5 years ahead: nothing installed');
    t.match(r1.lastCheck, { result: 'failed', detail: /EXPIRED|expired/ });
    t.equal((await d.state()).reboots, 0);
    offset = 0;
    const r2 = await runUpdateCycle(() => d.agent({ now }));
    t.match(r2.finished, [{ outcome: 'succeeded' }], 'clock back to the truth: the failed refresh did not push the trusted time');
    // a clock 10 years behind: trusted time holds; the next update still verifies and completes
    offset = -10 * YEAR;
    const again = await runUpdateCycle(() => d.agent({ now }));
    t.equal(again.finished.length, 0);
    t.match(again.lastCheck?.detail, /up to date/, 'a clock years behind neither breaks the check nor reinstalls');
  });

  t.test('a second release published mid-install: the first completes whole, then the second', async (t) => {
    const live = join(fx.served, '..', 'live');
    await cp(join(fx.served, 'good', 'stage1'), live, { recursive: true });
    const d = await device(t, fx, { served: live });
    let published = false;
    d.srv.faults.bytesPerSecond = onPayload(d.srv, (k) => (k === 0 ? 200_000 : undefined));
    d.srv.faults.headerDelayMs = onPayload(d.srv, (k) => {
      if (k === 0 && !published) {
        published = true;
        // publish while this payload request is being served
        void cp(join(fx.served, 'good', 'stage2'), live, { recursive: true, force: true });
      }
      return undefined;
    });
    const r1 = await runUpdateCycle(() => d.agent());
    t.ok(published, `the second release appeared during the first install (${JSON.stringify(r1.lastCheck)} ${JSON.stringify(d.srv.requests.map((q) => q.path + ' ' + q.status))})`);
    t.match(r1.finished, [{ outcome: 'succeeded', release: { version: '1.1.0' } }], 'the install in flight finishes as the release it started');
    const r2 = await runUpdateCycle(() => d.agent());
    t.match(r2.finished, [{ outcome: 'succeeded', release: { version: '1.2.0', securityVersion: 2 } }]);
    t.same(await d.truth(), []);
  });
});

void rm; void writeFile; void SlotflipError;

/**
 * Delta updates through the built CLI (issue 25): `slotflip install URL` against `slotflip repo
 * serve` (multi-range answers) with releases published by `slotflip release add --delta`. What a
 * device owner can check from outside: the exit code, slot B's hash, the requests and bytes on the
 * wire (a proxy counts them), and the `UpdateInstalled` report's reused vs downloaded bytes.
 *
 * - the old image in the booted slot A (the seed is only read: A's bytes are unchanged after);
 * - the old image in the target slot B itself (the release before);
 * - a seed chunk that changes after the device indexed the slots (while the pack request is held):
 *   detected at copy time, fetched instead, the slot hash still right;
 * - many scattered changes: the pack misses coalesce into a bounded number of requests (<= 50).
 *
 * More in delta-full.test.ts (`install.delta: "off"`; a bad delta index: the full payload instead),
 * delta-across-runs.test.ts (a SIGKILLed install resumed; seed indexes kept across committed updates)
 * and delta-idle.test.ts (seed indexes built by the idle daemon, an unrelated image): files of their
 * own so each stays well within tap's per-file timeout and `npm test` runs them side by side.
 */
import t from 'tap';
import { readFile } from 'node:fs/promises';
import { isPack, MIB, setupDelta, sha, transferOf, wire, writeSlot, imageSha, type DeltaEnv, installedNew } from './delta-scenarios.js';

t.test('seed in the booted slot: delta install, slot B right, A untouched, few bytes and requests', async (t) => {
  const env = await setupDelta(t.testdir(), { deviceId: 'dev-delta-active', seed: 'active' });
  t.teardown(() => env.stop());
  const aBefore = sha(await readFile(env.board.slots.A));
  const r = await env.install();
  await installedNew(t, env, r);
  t.equal(sha(await readFile(env.board.slots.A)), aBefore, 'the booted slot A was only read');
  const w = wire(env);
  t.comment(JSON.stringify({ ...w, payloadLength: env.payloadLength, packLength: env.packLength }));
  t.equal(w.payloadBytes, 0, 'the full payload was not downloaded');
  t.ok(w.pack >= 1 && w.requests <= 50, `${w.requests} requests in all (${w.pack} for the pack) <= 50`);
  t.ok(w.packBytes < 0.5 * env.payloadLength, `${w.packBytes} pack bytes < half the full payload (${env.payloadLength})`);
  const tr = transferOf(r.stderr);
  t.equal(tr?.method, 'delta', 'the UpdateInstalled report says delta');
  t.ok(Number(tr?.reusedBytes) > 0.5 * env.newImg.length, `report: ${tr?.reusedBytes} bytes reused`);
  t.ok(Number(tr?.downloadedBytes) >= w.packBytes && Number(tr?.downloadedBytes) <= w.total, `report: ${tr?.downloadedBytes} bytes downloaded (wire: pack ${w.packBytes}, all ${w.total})`);
});

t.test('seed in the target slot (the release before): delta install from the slot itself', async (t) => {
  const env = await setupDelta(t.testdir(), { deviceId: 'dev-delta-inactive', seed: 'inactive' });
  t.teardown(() => env.stop());
  const r = await env.install();
  await installedNew(t, env, r);
  const w = wire(env);
  t.comment(JSON.stringify(w));
  t.equal(w.payloadBytes, 0, 'the full payload was not downloaded');
  t.ok(w.packBytes < 0.5 * env.payloadLength, `${w.packBytes} pack bytes < half the full payload (${env.payloadLength})`);
  const tr = transferOf(r.stderr);
  t.equal(tr?.method, 'delta', 'the report says delta');
  t.ok(Number(tr?.reusedBytes) > 0.5 * env.newImg.length, `report: ${tr?.reusedBytes} bytes reused from slot B itself`);
});

t.test('a seed chunk that changed after indexing is detected, fetched instead, slot hash right', async (t) => {
  let env: DeltaEnv | undefined;
  let flipped = false;
  // 1.5 MiB into the image the old text is unchanged in the new one (the first change, a config
  // line, is at 100 kB): copied from slot A after the first pack request; damage it while that
  // request is held (both slots were indexed by then)
  const at = 1.5 * MIB;
  env = await setupDelta(t.testdir(), {
    deviceId: 'dev-delta-mismatch', seed: 'active',
    proxy: {
      hold: async (path, _n, range) => {
        // the install's pack request (the preflight's is a 1-byte probe, before the slots are indexed)
        if (!isPack(path) || range === 'bytes=0-0' || flipped) return;
        flipped = true;
        await writeSlot(env!.board.slots.A, Buffer.from('X'.repeat(4096)), at);
      },
    },
  });
  t.teardown(() => env!.stop());
  const r = await env.install();
  t.equal(r.code, 0, 'install exits 0', { stderr: r.stderr.slice(-2000) });
  t.ok(flipped, 'slot A was changed while the pack request was held');
  t.equal(await env.slotB(), imageSha(env.newImg), 'slot B holds the new image');
  const tr = transferOf(r.stderr);
  t.equal(tr?.method, 'delta', 'the report says delta');
  t.ok(Number(tr?.seedMismatches) >= 1, `report: ${tr?.seedMismatches} seed chunk(s) did not match and were fetched`);
  t.equal(wire(env).payloadBytes, 0, 'no fallback to the full payload');
});

t.test('many scattered changes: pack misses coalesced into <= 50 requests', async (t) => {
  // an edit every ~52 kB: changed chunks with unchanged ones between them, each its own pack range
  const env = await setupDelta(t.testdir(), { deviceId: 'dev-delta-many', seed: 'active', derive: { scattered: 160 } });
  t.teardown(() => env.stop());
  const r = await env.install();
  await installedNew(t, env, r);
  const w = wire(env);
  const ranges = env.proxy.requests.filter((q) => isPack(q.path)).reduce((n, q) => n + (q.range?.split(',').length ?? 1), 0);
  t.comment(JSON.stringify({ ...w, ranges }));
  t.ok(ranges > 50, `${ranges} pack ranges asked for in ${w.pack} request(s): more ranges than the request bound`);
  t.ok(w.requests <= 50, `${w.requests} requests on the wire in all (metadata, index files, pack) <= 50`);
  t.equal(w.payloadBytes, 0, 'no full payload');
});

/**
 * Delta updates through the built CLI (issue 25; the setup and what is watched as in
 * delta-install.test.ts): the cases where the device takes the full payload instead, in the same run:
 *
 * - `install.delta: "off"`: the full payload, no delta file requested;
 * - a delta index that does not match its signed hash (a bad mirror): refused before a byte is
 *   written, the full payload installed in the same run, the report names why.
 *
 * A file of its own (moved out of delta-install.test.ts): each file stays well within tap's per-file
 * timeout, and `npm test` runs them side by side.
 */
import t from 'tap';
import { access, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setupDelta, sha, transferOf, wire, writeSlot, installedNew } from './delta-scenarios.js';

t.test('install.delta "off": the full payload, no delta file requested', async (t) => {
  const env = await setupDelta(t.testdir(), { deviceId: 'dev-delta-off', seed: 'active', extra: { install: { delta: 'off' } } });
  t.teardown(() => env.stop());
  const r = await env.install();
  await installedNew(t, env, r);
  const w = wire(env);
  t.equal(w.pack + w.indexRequests, 0, 'no delta index or pack request');
  t.ok(w.payloadBytes >= env.payloadLength, `the full payload was downloaded (${w.payloadBytes} bytes)`);
  t.equal(transferOf(r.stderr)?.method, 'full', 'the report says full');
});

t.test('a delta index that does not match its signed hash: the full payload instead, in the same run', async (t) => {
  const env = await setupDelta(t.testdir(), { deviceId: 'dev-delta-badindex', seed: 'active' });
  t.teardown(() => env.stop());
  const dir = join(env.fleet.repository, 'targets/releases/1.1.0');
  const name = (await readdir(dir)).find((f) => f.endsWith('.delta-index'))!;
  const bytes = await readFile(join(dir, name));
  bytes[bytes.length >> 1] ^= 0xff; // same length: only the hash tells
  await writeSlot(join(dir, name), bytes);
  const aBefore = sha(await readFile(env.board.slots.A));
  const r = await env.install();
  await installedNew(t, env, r);
  t.equal(sha(await readFile(env.board.slots.A)), aBefore, 'slot A untouched');
  const w = wire(env);
  t.equal(w.pack, 1, 'the pack was only probed (1 byte), never fetched');
  t.ok(w.payloadBytes >= env.payloadLength, `the full payload was downloaded (${w.payloadBytes} bytes)`);
  const tr = transferOf(r.stderr);
  t.equal(tr?.method, 'full', 'the report says full');
  t.equal((tr?.fallback as { code?: string } | undefined)?.code, 'INSTALL_PAYLOAD_CORRUPT', 'and why the delta was not used');
  // after the full install the device tries to keep the release's delta index for B: this one fails its hash again
  await access(join(env.dir, 'state/seed-index/B.seed')).then(() => t.fail('an index that failed its signed hash was kept'), () => t.pass('no index kept for B from a mirror serving a bad one'));
});

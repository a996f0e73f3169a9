/**
 * A delta update on a device that kept no seed index (issue 25: a daemon upgraded from a version
 * that kept none, or a state partition that lost them), through the built CLI against `slotflip
 * repo serve` (see delta-install.test.ts). The device's state still says which release its booted
 * slot holds (committed there), and the repository still publishes that release's signed delta
 * index: the install fetches it (one small request), uses it for the booted slot instead of cutting
 * it, probes the target slot instead of cutting it (little is left to fetch), and cuts nothing. What
 * a device owner sees: exit 0, the target's hash right, the booted slot's bytes unchanged, the
 * report's `seedLookup` (published / probed, 0 bytes cut), the booted release's delta index on the
 * wire, no full payload; and afterwards the booted slot keeps that index for the next install.
 *
 * When the booted release is gone from the repository (`repo prune`), the booted slot is cut as
 * before and the update still lands by delta.
 */
import t, { type Test } from 'tap';
import { access, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { addImageRelease, imageSha, isDeltaIndex, isDeltaThin, isPayload, MIB, setupDelta, sha, transferOf, type DeltaEnv } from './delta-scenarios.js';
import { bootable } from '../harness/delta-images.js';
import { slotflip, slotflipJson, slotSha256 } from './harness.js';

/** 1.1.0 installed into B by delta, B booted, the trial validated and committed; then every kept
 * seed index removed (the device keeps none). Returns 1.2.0: 1.1.0 with a config line changed. */
async function committedWithoutSeeds(t: Test, env: DeltaEnv): Promise<Buffer> {
  const r = await env.install();
  t.equal(r.code, 0, '1.1.0: install exits 0', { stderr: r.stderr.slice(-2000) });
  t.equal((await slotflipJson<{ booted: string }>(['board', 'power-cycle', env.board.dir, '--json'])).booted, 'B', '1.1.0: the board boots B');
  const v = await slotflip(['update', '--once', '--no-check', '--config', env.configPath, '--json']);
  t.equal(v.code, 0, '1.1.0: the trial is validated and committed', { stderr: v.stderr.slice(-2000) });
  await rm(join(env.dir, 'state/seed-index'), { recursive: true, force: true });
  const body = Buffer.from(env.newImg);
  body.write('config: a line changed in 1.2.0\n', 5 * MIB, 'latin1');
  const v2 = bootable(body, '1.2.0');
  await addImageRelease(env.fleet, env.dir, v2, '1.2.0', 1);
  return v2;
}

const seedLookupOf = (stderr: string): Record<string, unknown> | undefined => transferOf(stderr)?.seedLookup as never;

t.test('no kept index: the booted release\'s published delta index is used, no slot is cut', async (t) => {
  // 64 MiB slots for 8 MiB images: cutting the target would read 64 MiB; what is left to fetch after
  // the booted slot and the probe is far below 1/256 of that
  const env = await setupDelta(t.testdir(), { deviceId: 'dev-delta-published', seed: 'active', bootable: true, slotSize: 64 * MIB });
  t.teardown(() => env.stop());
  const v2 = await committedWithoutSeeds(t, env);
  const bBefore = sha(await readFile(env.board.slots.B));
  const from = env.proxy.requests.length;

  const r = await env.install();
  t.equal(r.code, 0, '1.2.0: install exits 0', { stderr: r.stderr.slice(-2000) });
  t.equal(await slotSha256(env.board.slots.A, v2.length), imageSha(v2), 'slot A holds 1.2.0');
  t.equal(sha(await readFile(env.board.slots.B)), bBefore, 'the booted slot B was only read');
  const tr = transferOf(r.stderr);
  t.equal(tr?.method, 'delta', 'by delta');
  t.match(seedLookupOf(r.stderr), { running: 'published', target: 'probed', cutBytes: 0, probedBytes: v2.length }, 'report: the booted slot looked up in its release\'s published index, the target probed, no slot byte read to cut');
  t.equal(tr?.seedMismatches, 0, 'every chunk where the published index said');
  const reqs = env.proxy.requests.slice(from);
  const indexes = reqs.filter((q) => isDeltaIndex(q.path)).map((q) => q.path);
  t.ok(indexes.some((p) => p.includes('1.1.0')), `the booted release 1.1.0's delta index fetched (${indexes.join(', ')})`);
  t.notOk(reqs.some((q) => isDeltaIndex(q.path) && q.path.includes('1.2.0') && q.bytes > 1), 'not the new release\'s full index (only its 1-byte preflight probe)');
  t.equal(reqs.filter((q) => isDeltaThin(q.path) && q.path.includes('1.2.0')).length, 1, 'but its thin index, written against 1.1.0\'s (which the device now holds)');
  t.equal(reqs.filter((q) => isPayload(q.path)).length, 0, 'no full payload requested');
  t.ok(Number(tr?.downloadedBytes) >= reqs.filter((q) => isDeltaIndex(q.path) || isDeltaThin(q.path)).reduce((n, q) => n + q.bytes, 0), `report: ${tr?.downloadedBytes} bytes downloaded, both indexes counted`);
  await access(join(env.dir, 'state/seed-index/B.seed')).then(() => t.pass('the booted slot B keeps the published index as its seed'), () => t.fail('no kept index for B'));
});

t.test('the booted release pruned from the repository: the booted slot is cut, the update still by delta', async (t) => {
  const env = await setupDelta(t.testdir(), { deviceId: 'dev-delta-pruned', seed: 'active', bootable: true, slotSize: 64 * MIB });
  t.teardown(() => env.stop());
  const v2 = await committedWithoutSeeds(t, env);
  const p = await slotflip(['repo', 'prune', env.fleet.repo, '--keep', '1', '--json']);
  t.equal(p.code, 0, 'repo prune --keep 1', { stderr: p.stderr.slice(-2000) });
  const bBefore = sha(await readFile(env.board.slots.B));
  const r = await env.install();
  t.equal(r.code, 0, '1.2.0: install exits 0', { stderr: r.stderr.slice(-2000) });
  t.equal(await slotSha256(env.board.slots.A, v2.length), imageSha(v2), 'slot A holds 1.2.0');
  t.equal(sha(await readFile(env.board.slots.B)), bBefore, 'the booted slot B was only read');
  t.equal(transferOf(r.stderr)?.method, 'delta', 'by delta');
  t.match(seedLookupOf(r.stderr), { running: 'cut', target: 'probed', cutBytes: 64 * MIB }, 'report: the booted slot cut (its release is no longer published), the target probed');
});

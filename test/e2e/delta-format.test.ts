/**
 * Delta formats through the built CLI (issue 25; setup and what is watched as in delta-install.test.ts):
 *
 * - format 2 (what `release add` writes): a new release with x86-64-like code — the publisher
 *   x86-filters those chunks' frames (manifests/x86-filter.ts); the device fetches them, undoes the
 *   filter, verifies each chunk against the signed index and lands the image;
 * - a release published as before format 2 (`--delta-format 1`, what daemons before it read): this
 *   daemon installs it by delta too, and no thin index is published for it.
 *
 * Daemons that know only format 1 refuse a format 2 section and install the full payload: the route's
 * refusal path, in test/integration/delta-seed.test.ts.
 */
import t from 'tap';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DELTA_FORMAT_1, DELTA_FORMAT_2, parseDeltaIndex } from '../../manifests/delta.js';
import { imageSha, isDeltaThin, MIB, setupDelta, transferOf, wire, type DeltaEnv } from './delta-scenarios.js';

/** The published delta index of `version`, parsed (from the repository's targets directory). */
async function publishedIndex(env: DeltaEnv, version: string): Promise<ReturnType<typeof parseDeltaIndex>> {
  const dir = join(env.fleet.repository, 'targets/releases', version);
  const name = (await readdir(dir)).find((f) => f.endsWith('.delta-index'))!;
  return parseDeltaIndex(await readFile(join(dir, name)));
}

t.test('format 2: frames of x86 code filtered by the publisher, undone on the device, slot right', async (t) => {
  const env = await setupDelta(t.testdir(), { deviceId: 'dev-delta-x86', seed: 'active', derive: { code: 2 * MIB } });
  t.teardown(() => env.stop());
  const idx = await publishedIndex(env, '1.1.0');
  t.equal(idx.header.format, DELTA_FORMAT_2, 'release add wrote format 2');
  const filtered = idx.x86 ? [...idx.x86.keys()].filter((u) => idx.x86![u] === 1) : [];
  t.ok(filtered.length >= 4, `${filtered.length} chunks' frames hold them x86-filtered (the new code)`);
  const r = await env.install();
  t.equal(r.code, 0, 'install exits 0', { stderr: r.stderr.slice(-2000) });
  t.equal(await env.slotB(), imageSha(env.newImg), 'slot B holds the new image, code included');
  const w = wire(env);
  t.equal(w.payloadBytes, 0, 'the full payload was not downloaded');
  const filteredBytes = filtered.reduce((n, u) => n + idx.packLen[u]!, 0);
  t.ok(w.packBytes >= filteredBytes, `the pack bytes fetched (${w.packBytes}) include the filtered frames (${filteredBytes})`);
  t.equal(transferOf(r.stderr)?.method, 'delta', 'the report says delta');
});

t.test('a release published as before format 2 (--delta-format 1): installed by delta, no thin index', async (t) => {
  const env = await setupDelta(t.testdir(), { deviceId: 'dev-delta-f1', seed: 'active', derive: { code: 2 * MIB }, releaseFlags: ['--delta-format', '1'] });
  t.teardown(() => env.stop());
  const idx = await publishedIndex(env, '1.1.0');
  t.equal(idx.header.format, DELTA_FORMAT_1, 'format 1 as asked');
  t.equal(idx.x86, undefined, 'no frame filtered');
  const targets = await readdir(join(env.fleet.repository, 'targets/releases/1.1.0'));
  t.notOk(targets.some(isDeltaThin), 'no thin index published');
  const r = await env.install();
  t.equal(r.code, 0, 'install exits 0', { stderr: r.stderr.slice(-2000) });
  t.equal(await env.slotB(), imageSha(env.newImg), 'slot B holds the new image');
  t.equal(wire(env).payloadBytes, 0, 'the full payload was not downloaded');
  t.equal(transferOf(r.stderr)?.method, 'delta', 'the report says delta');
});

/**
 * Kept seed indexes (daemon/install/seed-index.ts) with installDelta over real HTTP (`repo serve`)
 * into file slots: a slot with a kept index is not read to be cut (the result says `kept` and counts
 * no cut bytes) and installs to the right hash; a kept index whose slot changed behind the daemon's
 * back only costs mismatches and fetches (the slot hash still right); the binding refuses a torn
 * file, another slot path, and an unfinished install into the slot; drop is durable and idempotent;
 * the install route drops the target's kept index even when the install then goes in full, and after
 * a full install keeps the release's delta index (fetched, checked against its signed hash).
 */
import t, { type Test } from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildDelta, parseDeltaIndex } from '../../manifests/delta.js';
import { serveRepository } from '../../manifests/serve.js';
import { createSlotWriter } from '../../hal/file-slot.js';
import { installDelta, type DeltaInstallOptions } from '../../daemon/install/delta.js';
import { cutSlot, dropSeedIndex, keepSeedIndex, loadSeedIndex, seedIndexDir } from '../../daemon/install/seed-index.js';
import { writeResumeHint } from '../../daemon/install/resume-state.js';
import { installByDelta, keepIndexAfterFull } from '../../daemon/install/route.js';
import type { Release } from '../../manifests/types.js';
import { writeSlot } from '../e2e/delta-scenarios.js';
import { deriveImage, makeImage } from '../harness/delta-images.js';

const SIZE = 8 << 20;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function setup(t: Test) {
  const dir = t.testdir();
  const oldImg = makeImage(7, SIZE);
  const newImg = deriveImage(oldImg);
  await mkdir(join(dir, 'repo/targets'), { recursive: true });
  await writeFile(join(dir, 'old.img'), oldImg);
  await writeFile(join(dir, 'new.img'), newImg);
  // the old release's index: what the device kept when it installed OLD
  const oldBuilt = await buildDelta(join(dir, 'old.img'), join(dir, 'old.delta-index'), join(dir, 'old.delta-pack'), { level: 3 });
  const built = await buildDelta(join(dir, 'new.img'), join(dir, 'repo/targets/image.delta-index'), join(dir, 'repo/targets/image.delta-pack'), { level: 3 });
  const oldIndexFile = await readFile(join(dir, 'old.delta-index'));
  t.equal(oldIndexFile.length, oldBuilt.index.length);
  const srv = await serveRepository(join(dir, 'repo'));
  t.teardown(() => srv.close());
  const target = join(dir, 'target.img');
  await writeFile(target, oldImg);
  const opts = (extra: Partial<DeltaInstallOptions> = {}): DeltaInstallOptions => ({
    index: { urls: [`${srv.url}targets/image.delta-index`], ...built.index },
    pack: { urls: [`${srv.url}targets/image.delta-pack`], ...built.pack },
    slot: createSlotWriter('B', { path: target }),
    ...extra,
  });
  return { dir, oldImg, newImg, target, oldIndexFile, built, opts, url: srv.url };
}

t.test('a kept index for the target slot: the slot is not cut, the image lands right', async (t) => {
  const e = await setup(t);
  // the slot's chunks as a cut finds them, handed in as a seed: what cutting the slot yields
  const cutSeed = { ...(await cutSlot(e.target, SIZE, e.built.header.cdc)).seed, origin: 'built' as const };
  const cut = await installDelta(e.opts({ seeds: { target: cutSeed } }));
  t.equal(sha(await readFile(e.target)), sha(e.newImg), 'slot holds NEW (from the cut seed)');

  await writeFile(e.target, e.oldImg);
  const r = await installDelta(e.opts({ seeds: { target: parseDeltaIndex(e.oldIndexFile) } }));
  t.equal(r.lookup.target, 'kept', 'the kept index was used');
  t.equal(r.lookup.cutBytes, 0, 'no slot byte read to cut it');
  t.equal(r.lookup.probedBytes, 0, 'nor to probe it');
  t.equal(r.seedMismatches, 0, 'every chunk the kept index pointed at matched');
  t.equal(sha(await readFile(e.target)), sha(e.newImg), 'slot holds NEW');
  t.equal(r.fetchedRaw, cut.fetchedRaw, 'the same image bytes fetched as when the slot was cut');
  t.equal(r.requests, cut.requests, 'in as many requests');
  t.equal(sha(r.indexFile), e.built.index.sha256, 'the verified index file comes back to be kept');

  // without a seed: the slot is probed (each new chunk hashed where it goes), and cut as well since
  // more than 1/256 of its bytes' worth is still to fetch; what is in place at the same offset is
  // found whatever the old chunk boundaries, so no more is fetched than by the kept index
  await writeFile(e.target, e.oldImg);
  const p = await installDelta(e.opts());
  t.equal(p.lookup.target, 'cut', 'no seed: probed, then cut');
  t.equal(p.lookup.probedBytes, SIZE, 'the probe read the image\'s length of the slot');
  t.ok(p.lookup.cutBytes >= SIZE, `cut ${p.lookup.cutBytes} slot bytes`);
  t.ok(p.fetchedRaw <= r.fetchedRaw, `probed and cut: ${p.fetchedRaw} image bytes fetched, kept index ${r.fetchedRaw}`);
  t.equal(sha(await readFile(e.target)), sha(e.newImg), 'slot holds NEW');
});

t.test('no seed and little to fetch: the target is probed, not cut; a half-written slot resumes from what is in place', async (t) => {
  const e = await setup(t);
  // the running slot holds OLD (cut), the target OLD as well: the probe finds what did not move
  const running = join(e.dir, 'running.img');
  await writeFile(running, e.oldImg);
  // (the default bound is 1/256 of the slot: 32 KiB for this 8 MiB one; 1 MiB here stands for a GiB slot's 4 MiB)
  const r = await installDelta(e.opts({ running: { path: running, size: SIZE }, cutTargetAboveBytes: 1 << 20 }));
  t.ok(r.fetchedRaw < 1 << 20, `${r.fetchedRaw} image bytes still to fetch after the running slot and the probe`);
  t.match(r.lookup, { target: 'probed', running: 'cut', cutBytes: SIZE, probedBytes: SIZE }, 'the target probed, only the running slot cut');
  t.ok(r.inPlace > SIZE / 2, `${r.inPlace} bytes found in place by the probe`);
  t.equal(sha(await readFile(e.target)), sha(e.newImg), 'slot holds NEW');
  t.equal(sha(await readFile(running)), sha(e.oldImg), 'the running slot only read');
  // a run cut off half-way (NEW's first half written, OLD after it): the probe finds the written
  // half in place and nothing of it is fetched again
  const half = Buffer.concat([e.newImg.subarray(0, SIZE / 2), e.oldImg.subarray(SIZE / 2)]);
  await writeFile(e.target, half);
  const again = await installDelta(e.opts({ running: { path: running, size: SIZE }, cutTargetAboveBytes: Infinity }));
  t.equal(again.lookup.target, 'probed');
  t.ok(again.inPlace >= SIZE / 2 - 256 * 1024, `${again.inPlace} bytes in place (the written half among them)`);
  t.ok(again.fetchedRaw <= r.fetchedRaw, `${again.fetchedRaw} image bytes fetched, no more than the first run's ${r.fetchedRaw}`);
  t.equal(sha(await readFile(e.target)), sha(e.newImg), 'slot holds NEW');
});

t.test('a kept index whose slot changed: mismatches detected, fetched instead, slot hash right', async (t) => {
  const e = await setup(t);
  // the slot's bytes changed after OLD's index was kept (another tool wrote over 1 MiB of it)
  await writeSlot(e.target, randomBytes(1 << 20), SIZE / 2);
  const r = await installDelta(e.opts({ seeds: { target: parseDeltaIndex(e.oldIndexFile) } }));
  t.equal(r.lookup.target, 'kept');
  t.ok(r.seedMismatches > 0, `${r.seedMismatches} chunks did not match where the kept index said and were fetched`);
  t.ok(r.fetchedRaw >= (1 << 20) - (64 << 10), `${r.fetchedRaw} image bytes fetched (the changed MiB among them)`);
  t.equal(sha(await readFile(e.target)), sha(e.newImg), 'slot holds NEW');
});

t.test('a kept index whose slot changed in many places: the mismatches are fetched together, within the request bound', async (t) => {
  const e = await setup(t);
  // 96 scattered 512-byte writes, one every 80 KiB: more changed chunks than the 50-request bound
  for (let k = 0; k < 96; k++) await writeSlot(e.target, randomBytes(512), k * 80 * 1024 + 4096);
  const r = await installDelta(e.opts({ seeds: { target: parseDeltaIndex(e.oldIndexFile) } }));
  t.equal(r.lookup.target, 'kept');
  t.ok(r.seedMismatches >= 60, `${r.seedMismatches} chunks did not match where the kept index said`);
  t.ok(r.requests <= 50, `${r.requests} requests for the index and the pack (each mismatch used to take a request of its own)`);
  t.equal(sha(await readFile(e.target)), sha(e.newImg), 'slot holds NEW');
});

t.test('a kept index cut with other CDC sizes is not used: the slot is probed and cut', async (t) => {
  const e = await setup(t);
  await buildDelta(join(e.dir, 'old.img'), join(e.dir, 'old2.delta-index'), join(e.dir, 'old2.delta-pack'), { level: 3, cdc: { min: 2048, avg: 8192, max: 32768 } });
  const r = await installDelta(e.opts({ seeds: { target: parseDeltaIndex(await readFile(join(e.dir, 'old2.delta-index'))) } }));
  t.equal(r.lookup.target, 'cut');
  t.equal(sha(await readFile(e.target)), sha(e.newImg));
});

t.test('keep, load, drop; the binding refuses what it must', async (t) => {
  const e = await setup(t);
  const state = join(e.dir, 'state');
  const resume = join(state, 'install-resume.json');
  const slot = { slot: 'B' as const, path: e.target };
  t.same(await loadSeedIndex(state, slot, resume), { ok: false, why: 'none kept' });
  t.ok(await keepSeedIndex(state, slot, { size: SIZE, sha256: sha(e.oldImg) }, e.oldIndexFile));
  const ok = await loadSeedIndex(state, slot, resume);
  t.ok(ok.ok, 'loads');
  t.equal(ok.ok && ok.binding.imageSha256, sha(e.oldImg));

  const other = await loadSeedIndex(state, { slot: 'B', path: join(e.dir, 'elsewhere.img') }, resume);
  t.match(other, { ok: false, why: /not B at/ }, 'another slot path');

  // an install into the slot began (recorded) and did not finish: stale
  const payload = { compression: 'zstd' as const, size: SIZE, sha256: sha(e.newImg), chunkSize: 1 << 20, chunks: [] };
  await writeResumeHint(resume, payload, e.target, 3, false);
  t.match(await loadSeedIndex(state, slot, resume), { ok: false, why: /another image/ });
  await writeResumeHint(resume, { ...payload, sha256: sha(e.oldImg) }, e.target, 3, false);
  t.match(await loadSeedIndex(state, slot, resume), { ok: false, why: /unfinished/ });
  await writeResumeHint(resume, { ...payload, sha256: sha(e.oldImg) }, e.target, 8, true);
  t.ok((await loadSeedIndex(state, slot, resume)).ok, 'the finished install of the image it describes');

  // a flipped byte in the kept file
  const file = join(seedIndexDir(state), 'B.seed');
  const bytes = await readFile(file);
  bytes[bytes.length - 10]! ^= 1;
  await writeFile(file, bytes);
  t.match(await loadSeedIndex(state, slot, resume), { ok: false, why: /torn or damaged/ });

  await dropSeedIndex(state, 'B');
  await dropSeedIndex(state, 'B');
  t.same(await loadSeedIndex(state, slot, resume), { ok: false, why: 'none kept' }, 'dropped (twice: idempotent)');
  t.notOk(await keepSeedIndex(state, slot, { size: SIZE, sha256: sha(e.oldImg) }, Buffer.alloc((16 << 20) + 1)), 'over the cap: not kept');
});

t.test('any install into a slot drops its kept index first (here one that goes in full: delta off)', async (t) => {
  const e = await setup(t);
  const state = join(e.dir, 'state');
  const running = join(e.dir, 'running.img');
  await writeFile(running, e.oldImg);
  const B = { slot: 'B' as const, path: e.target };
  const A = { slot: 'A' as const, path: running };
  t.ok(await keepSeedIndex(state, B, { size: SIZE, sha256: sha(e.oldImg) }, e.oldIndexFile));
  t.ok(await keepSeedIndex(state, A, { size: SIZE, sha256: sha(e.oldImg) }, e.oldIndexFile));
  const payload = { compression: 'zstd' as const, size: SIZE, sha256: sha(e.newImg), chunkSize: 1 << 20, chunks: [] };
  const r = await installByDelta({
    release: { length: 1 } as Release, payload, delta: undefined, mode: 'off', locate: () => ({ urls: [] }),
    slot: createSlotWriter('B', { path: e.target }), running: createSlotWriter('A', { path: running }),
    resumeStatePath: join(state, 'install-resume.json'), seedDir: state, budget: {},
  });
  t.same(r, { installed: false }, 'the caller installs the full payload');
  t.same(await loadSeedIndex(state, B), { ok: false, why: 'none kept' }, 'the target slot B\'s kept index is gone before any byte is written');
  t.ok((await loadSeedIndex(state, A)).ok, 'the running slot A\'s is kept');
});

t.test('after a full install of a release that offers a delta, its index is fetched and kept for the slot', async (t) => {
  const e = await setup(t);
  const state = join(e.dir, 'state');
  const base = e.opts().index.urls[0]!.replace(/image\.delta-index$/, '');
  const delta = { format: 'slotflip-delta-1', index: { target: 'image.delta-index', ...e.built.index }, pack: { target: 'image.delta-pack', ...e.built.pack } };
  const payload = { compression: 'zstd' as const, size: SIZE, sha256: sha(e.newImg), chunkSize: 1 << 20, chunks: [] };
  const B = createSlotWriter('B', { path: e.target });
  const o = { mode: 'auto' as const, delta, locate: (x: { targetName: string }) => ({ urls: [base + x.targetName] }), slot: B, payload, seedDir: state };
  t.notOk(await keepIndexAfterFull({ ...o, slotSha256: sha(e.oldImg) }), 'not kept when the slot was read back with another image');
  t.notOk(await keepIndexAfterFull({ ...o, delta: { ...delta, index: { ...delta.index, sha256: '0'.repeat(64) } }, slotSha256: payload.sha256 }), 'not kept when the index fails its signed hash');
  t.same(await loadSeedIndex(state, B), { ok: false, why: 'none kept' });
  t.ok(await keepIndexAfterFull({ ...o, slotSha256: payload.sha256 }), 'kept');
  const l = await loadSeedIndex(state, B);
  t.equal(l.ok && l.kind === 'kept' && l.index.header.imageSha256, payload.sha256, 'the kept index describes the image on the slot');
  t.notOk(await keepIndexAfterFull({ ...o, mode: 'off', slotSha256: payload.sha256 }), 'delta "off": nothing fetched');
});

t.test('the running slot\'s release\'s published delta index stands in for a kept one; one that does not fit is not used', async (t) => {
  const e = await setup(t);
  const state = join(e.dir, 'state');
  const running = join(e.dir, 'running.img');
  await writeFile(running, e.oldImg);
  // OLD's delta index published next to NEW's (the repository still lists OLD's release)
  await writeFile(join(e.dir, 'repo/targets/old.delta-index'), e.oldIndexFile);
  const section = (name: string, idx: { length: number; sha256: string }) => ({ format: 'slotflip-delta-1', index: { target: name, ...idx }, pack: { target: 'image.delta-pack', ...e.built.pack } });
  const oldSection = section('old.delta-index', { length: e.oldIndexFile.length, sha256: sha(e.oldIndexFile) });
  const payloadOf = (img: Buffer) => ({ compression: 'zstd' as const, size: SIZE, sha256: sha(img), chunkSize: 1 << 20, chunks: [] });
  const run = async (held: { payload: ReturnType<typeof payloadOf>; delta?: unknown } | undefined) => {
    // both slots as a device that kept nothing: OLD in each (the target's index of NEW, kept by the
    // run before, dropped with it)
    await writeFile(e.target, e.oldImg);
    await dropSeedIndex(state, 'A');
    await dropSeedIndex(state, 'B');
    const r = await installByDelta({
      release: { length: 1 << 30 } as Release, payload: payloadOf(e.newImg), delta: section('image.delta-index', e.built.index), mode: 'auto',
      locate: (target) => ({ urls: [`${e.url}targets/${target.targetName}`] }),
      slot: createSlotWriter('B', { path: e.target }), running: createSlotWriter('A', { path: running }),
      resumeStatePath: join(state, 'install-resume.json'), seedDir: state, budget: {}, runningRelease: async () => held,
    });
    t.equal(sha(await readFile(e.target)), sha(e.newImg), 'slot holds NEW');
    t.equal(sha(await readFile(running)), sha(e.oldImg), 'the running slot only read');
    return r.installed ? r.stats : undefined;
  };
  const used = await run({ payload: payloadOf(e.oldImg), delta: oldSection });
  t.equal(used?.seedLookup?.running, 'published', 'the running slot looked up in its release\'s published index');
  t.equal(used?.seedMismatches, 0, 'every chunk where it said');
  const kept = await loadSeedIndex(state, { slot: 'A', path: running });
  t.ok(kept.ok && kept.kind === 'kept', 'and kept as the running slot\'s seed index');

  // the release signs another image than the index describes (or the device's state is wrong): cut
  const other = await run({ payload: payloadOf(e.newImg), delta: oldSection });
  t.equal(other?.seedLookup?.running, 'cut', 'an index of another image: the running slot cut');
  t.notOk((await loadSeedIndex(state, { slot: 'A', path: running })).ok, 'and nothing kept');
  // the index file on the mirror does not match its signed hash
  const bad = await run({ payload: payloadOf(e.oldImg), delta: section('old.delta-index', { length: e.oldIndexFile.length, sha256: sha(Buffer.from('x')) }) });
  t.equal(bad?.seedLookup?.running, 'cut', 'an index failing its signed hash: the running slot cut');
  // the release is unknown or pruned
  const gone = await run(undefined);
  t.equal(gone?.seedLookup?.running, 'cut', 'no published release: the running slot cut');
  // the published index lists the chunks a cut of the running slot finds: the same pack bytes
  // fetched, plus the index file itself (one more request), counted in the report
  t.equal(used?.downloadedBytes, Number(gone?.downloadedBytes) + e.oldIndexFile.length, `the published index's ${e.oldIndexFile.length} bytes counted in the ${used?.downloadedBytes} downloaded`);
  t.equal(used?.requests, Number(gone?.requests) + 1, 'and its request');
});

t.test('a delta section of a format this daemon does not know (as daemons of format 1 see format 2): the full payload, nothing fetched or written', async (t) => {
  const e = await setup(t);
  const state = join(e.dir, 'state');
  const before = sha(await readFile(e.target));
  const payload = { compression: 'zstd' as const, size: SIZE, sha256: sha(e.newImg), chunkSize: 1 << 20, chunks: [] };
  const located: string[] = [];
  const o = e.opts();
  const r = await installByDelta({
    release: { length: 1 } as Release, payload, mode: 'auto',
    // every daemon since delta installs began (4c0f504) refuses a section whose format it does not list
    delta: { format: 'slotflip-delta-9', index: { target: 'image.delta-index', length: o.index.length, sha256: o.index.sha256 }, pack: { target: 'image.delta-pack', length: o.pack.length, sha256: o.pack.sha256 } },
    locate: (x) => (located.push(x.targetName), { urls: [`${e.url}targets/${x.targetName}`] }),
    slot: createSlotWriter('B', { path: e.target }), resumeStatePath: join(state, 'install-resume.json'), seedDir: state, budget: {},
  });
  t.equal(r.installed, false, 'the caller installs the full payload');
  t.match(r, { fallback: { code: 'MANIFEST_DELTA_INVALID', message: /delta format "slotflip-delta-9" is not slotflip-delta-1 or slotflip-delta-2/ } }, 'and is told why');
  t.same(located, [], 'no delta file located or fetched');
  t.equal(sha(await readFile(e.target)), before, 'the target slot untouched');
});

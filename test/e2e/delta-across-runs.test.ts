/**
 * Delta updates through the built CLI across more than one run (issue 25; the setup and what is
 * watched as in delta-install.test.ts: `slotflip install URL` against `slotflip repo serve`, releases
 * published by `slotflip release add`, a proxy counting requests and bytes on the wire):
 *
 * - SIGKILL mid-way (the pack answer stalls half-way), then `install` again: it resumes by delta
 *   (what is in place on the slot is verified and kept) to the right hash;
 * - three committed delta updates in a row (install, power cycle into the trial, validate): the device
 *   keeps each release's delta index for the slot it wrote, so the second cuts only the slot the
 *   daemon never wrote and the third, into the slot holding the release before, cuts none (the
 *   report's `seedLookup` says so and counts the slot bytes read to cut); every slot hash right.
 *
 * A file of its own (moved out of delta-install.test.ts: its two longest cases): each file stays
 * well within tap's per-file timeout, and `npm test` runs them side by side.
 */
import t from 'tap';
import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { addImageRelease, isDeltaIndex, isDeltaThin, isPack, logLines, MIB, setupDelta, sha, transferOf, wire, imageSha } from './delta-scenarios.js';
import { bootable, deriveImage } from '../harness/delta-images.js';
import { slotflip, slotflipJson, slotSha256, until } from './harness.js';

t.test('SIGKILL mid-way, then install again: resumes by delta to the right slot hash', async (t) => {
  let stall = true;
  // the pack answer stops after CUT bytes (of ~500 kB asked for): the device has written the image
  // up to there, then waits; it is killed in that state
  const CUT = 150_000;
  const env = await setupDelta(t.testdir(), {
    deviceId: 'dev-delta-kill', seed: 'active', derive: { scattered: 64 },
    proxy: { stallAfter: (path) => (stall && isPack(path) ? CUT : undefined) },
  });
  t.teardown(() => env.stop());
  const first = env.spawnInstall();
  await until(() => env.proxy.requests.some((q) => isPack(q.path) && q.bytes >= CUT), 60_000, `${CUT} pack bytes sent`);
  await new Promise((r) => setTimeout(r, 300)); // let the device write what it received
  first.child.kill('SIGKILL');
  await first.exited;
  t.not(await env.slotB(), imageSha(env.newImg), 'killed before the image was complete');
  stall = false;
  const before = wire(env);
  const r = await env.install();
  t.equal(r.code, 0, 'second install exits 0', { stderr: r.stderr.slice(-2000) });
  t.equal(await env.slotB(), imageSha(env.newImg), 'slot B holds the new image after the resume');
  const verified = logLines(r.stderr).find((l) => l.msg === 'install verified');
  t.equal(verified?.method, 'delta', 'the resumed install is a delta install');
  t.ok(Number(verified?.inPlace) > 0, `${verified?.inPlace} bytes found in place on slot B (written before the kill)`);
  const after = wire(env);
  t.comment(JSON.stringify({ before, after, packLength: env.packLength }));
  t.equal(after.payloadBytes, 0, 'no full payload');
  t.ok(after.packBytes - before.packBytes < env.packLength, `resumed run fetched ${after.packBytes - before.packBytes} pack bytes < the whole pack ${env.packLength}`);
});

t.test('kept seed indexes: after two committed delta updates, the third cuts no slot at all', async (t) => {
  const env = await setupDelta(t.testdir(), { deviceId: 'dev-delta-kept', seed: 'active', bootable: true });
  t.teardown(() => env.stop());
  const capacity = env.newImg.length + MIB; // the board's slots (setupDelta)
  const lookupOf = (r: { stderr: string }): { target: string; running: string; cutBytes: number } | undefined => transferOf(r.stderr)?.seedLookup as never;
  // install, reboot into the trial (the board's own slot selection), validate and commit
  // which index files an install downloaded (not the 1-byte preflight probe, route.ts probeDelta): its
  // release's full index, or the thin one against the release before
  const indexFiles = (from: number): string[] => env.proxy.requests.slice(from).filter((q) => (isDeltaIndex(q.path) || isDeltaThin(q.path)) && q.bytes > 1).map((q) => `${/\/releases\/([^/]+)\//.exec(q.path)?.[1]} ${isDeltaThin(q.path) ? 'delta-thin' : 'delta-index'}`);
  let from = 0;
  const cycle = async (what: string, slot: 'A' | 'B', image: Buffer) => {
    from = env.proxy.requests.length;
    const r = await env.install();
    t.equal(r.code, 0, `${what}: install exits 0`, { stderr: r.stderr.slice(-2000) });
    t.equal(await slotSha256(env.board.slots[slot], image.length), imageSha(image), `${what}: slot ${slot} holds it`);
    t.equal(transferOf(r.stderr)?.method, 'delta', `${what}: by delta`);
    const booted = await slotflipJson<{ booted: string }>(['board', 'power-cycle', env.board.dir, '--json']);
    t.equal(booted.booted, slot, `${what}: the board boots ${slot}`);
    const v = await slotflip(['update', '--once', '--no-check', '--config', env.configPath, '--json']);
    t.equal(v.code, 0, `${what}: the trial is validated and committed`, { stderr: v.stderr.slice(-2000) });
    return r;
  };

  // 1.1.0 into B: nothing kept yet, both slots read and cut
  const first = await cycle('1.1.0', 'B', env.newImg);
  t.match(lookupOf(first), { target: 'cut', running: 'cut', cutBytes: 2 * capacity }, '1.1.0: both slots cut');
  await access(join(env.dir, 'state/seed-index/B.seed')).then(() => t.pass('the state dir keeps B\'s delta index'), () => t.fail('no kept index for B'));

  // 1.2.0 into A (the factory image, never written by the daemon): A is cut, the running B is not
  const v2 = bootable(deriveImage(env.newImg, { scattered: 8 }), '1.2.0');
  await addImageRelease(env.fleet, env.dir, v2, '1.2.0', 1);
  const second = await cycle('1.2.0', 'A', v2);
  t.match(lookupOf(second), { target: 'cut', running: 'kept', cutBytes: capacity }, '1.2.0: only slot A cut; B looked up in its kept index');
  t.same(indexFiles(from), ['1.2.0 delta-thin'], '1.2.0: only its thin index fetched (written against 1.1.0\'s, which B keeps)');

  // 1.3.0 into B, which holds 1.1.0 (the release before): both slots looked up in kept indexes
  const v3 = bootable(deriveImage(v2, { scattered: 8 }), '1.3.0');
  await addImageRelease(env.fleet, env.dir, v3, '1.3.0', 1);
  const aBefore = sha(await readFile(env.board.slots.A));
  from = env.proxy.requests.length;
  const third = await env.install();
  t.equal(third.code, 0, '1.3.0: install exits 0', { stderr: third.stderr.slice(-2000) });
  t.equal(await env.slotB(), imageSha(v3), '1.3.0: slot B holds it');
  t.equal(sha(await readFile(env.board.slots.A)), aBefore, '1.3.0: the booted slot A only read');
  const tr = transferOf(third.stderr);
  t.equal(tr?.method, 'delta', '1.3.0: by delta');
  t.match(lookupOf(third), { target: 'kept', running: 'kept', cutBytes: 0 }, '1.3.0: report: no slot byte read to cut a slot');
  t.same(indexFiles(from), ['1.3.0 delta-thin'], '1.3.0: only its thin index fetched, against 1.2.0\'s as A kept it (rebuilt from a thin one)');
  t.equal(tr?.seedMismatches, 0, '1.3.0: every chunk where the kept indexes said');
  t.ok(Number(tr?.reusedBytes) > 0.5 * v3.length, `1.3.0: report: ${tr?.reusedBytes} bytes reused`);
});

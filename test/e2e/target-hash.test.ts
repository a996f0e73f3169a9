/**
 * Issue 19, the TUF target hash, driven through the built CLI: a mirror serves a payload whose gzip
 * header bytes were altered (same length, same decompressed image, a SHA-256 other than the signed
 * target's). `slotflip install URL` must refuse it with a coded error before anything is armed: the
 * target slot stays marked bad, the booted slot stays primary, and no trial is set up. The intact
 * file installs (the check does not refuse what was signed).
 */
import t from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startHttpServer } from '../harness/http-server.js';
import { addRelease, boardStatus, createBoard, deviceStatus, initFleet, requireBuilt, slotflip, writeDeviceConfig } from './harness.js';

requireBuilt();
t.setTimeout(300_000);

const SLOT = 1 << 20;

t.test('a payload altered in its gzip header (same length, same image) is refused before arming', async (t) => {
  const dir = t.testdir();
  const fleet = await initFleet(dir);
  const rel = await addRelease(fleet, dir, { version: '1.1.0', securityVersion: 1, size: 640 << 10, chunkSize: 64 << 10, compression: 'gzip' });
  const srv = await startHttpServer({ root: fleet.repository });
  t.teardown(() => srv.stop());
  const board = await createBoard(join(dir, 'board'), SLOT);
  const config = await writeDeviceConfig(join(dir, 'device.json'), {
    deviceId: 'e2e-target-hash', board, fleet, stateDir: join(dir, 'state'), metadataUrl: srv.url, payloadBaseUrls: [`${srv.url}targets/`],
  });
  const slotB = await readFile(board.slots.B);

  // the gzip member of the first chunk gets another MTIME: it decodes the same
  const original = await readFile(rel.payloadPath);
  const altered = Buffer.from(original);
  t.same([altered[0], altered[1]], [0x1f, 0x8b], 'premise: the payload starts with a gzip member');
  altered.writeUInt32LE(0x5eed1e55, 4);
  await writeFile(rel.payloadPath, altered);

  const r = await slotflip(['install', srv.url, '--config', config, '--json']);
  t.not(r.code, 0, 'install fails');
  t.match(r.stdout + r.stderr, /INSTALL_PAYLOAD_(CORRUPT|HASH_MISMATCH)/, 'with a coded error');
  t.match(r.stdout + r.stderr, /INSTALL_PAYLOAD_HASH_MISMATCH|signed SHA-256/, 'saying the payload file is not the signed one');
  const s = await deviceStatus(config);
  t.match(s, { phase: 'idle', slots: [{ slot: 'A', booted: true, boot: { primary: true } }, { slot: 'B', boot: { state: 'bad', primary: false } }] }, 'the target slot stays marked bad; the booted slot is still the primary: nothing armed');
  t.equal((await boardStatus(board.dir)).booted, 'A');
  const lastChunkAt = (rel.chunks - 1) * (64 << 10);
  t.ok((await readFile(board.slots.B)).subarray(lastChunkAt, rel.size).equals(slotB.subarray(lastChunkAt, rel.size)), 'the last chunk was never written: the image cannot be complete');

  // the file as signed installs and arms
  await writeFile(rel.payloadPath, original);
  const retry = await slotflip(['check', '--retry', '--config', config, '--json']);
  t.equal(retry.code, 0, 'an operator asks to retry the failed release');
  const ok = await slotflip(['install', srv.url, '--config', config, '--json']);
  t.equal(ok.code, 0, `the intact payload installs: ${ok.stderr.slice(-400)}`);
  t.match(JSON.parse(ok.stdout), { rebooted: true });
});

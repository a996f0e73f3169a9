/**
 * Issue 19, the TUF target hash, driven through the built CLI: a mirror serves a payload whose gzip
 * header bytes were altered (same length, same decompressed image, a SHA-256 other than the signed
 * target's). `slotflip install URL` must refuse it with a coded error before anything is armed: the
 * target slot stays marked bad, the booted slot stays primary, and no trial is set up. The intact
 * file installs (the check does not refuse what was signed). Both formats: format 2 (the default:
 * each frame's packedSha256 in the signed index file, so the altered first frame is refused before
 * it is decoded and nothing is written) and format 1 (`--inline-index`: the payload target's own
 * signed SHA-256 over the stream, so the last chunk waits for it).
 */
import t from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startHttpServer } from '../harness/http-server.js';
import { addRelease, boardStatus, createBoard, deviceStatus, initFleet, requireBuilt, slotflip, writeDeviceConfig } from './harness.js';

requireBuilt();
t.setTimeout(300_000);

const SLOT = 1 << 20;

for (const format of [2, 1] as const) t.test(`format ${format}: a payload altered in its gzip header (same length, same image) is refused before arming`, async (t) => {
  const dir = t.testdir();
  const fleet = await initFleet(dir);
  const rel = await addRelease(fleet, dir, { version: '1.1.0', securityVersion: 1, size: 640 << 10, chunkSize: 64 << 10, compression: 'gzip', inlineIndex: format === 1 });
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
  if (format === 2) {
    // the preflight proves the first frame's signed hash before the target slot is marked bad
    t.match(r.stdout + r.stderr, /INSTALL_PACKED_HASH_MISMATCH/, 'with a coded error');
    t.match(r.stdout + r.stderr, /chunk 0's compressed frame .* has SHA-256 [0-9a-f]{64}, the signed index says/, 'saying the frame is not the signed one');
  } else {
    t.match(r.stdout + r.stderr, /INSTALL_PAYLOAD_(CORRUPT|HASH_MISMATCH)/, 'with a coded error');
    t.match(r.stdout + r.stderr, /INSTALL_PAYLOAD_HASH_MISMATCH|signed SHA-256/, 'saying the payload file is not the signed one');
  }
  const s = await deviceStatus(config);
  t.match(s, { phase: 'idle', slots: [{ slot: 'A', booted: true, boot: { primary: true } }, { slot: 'B', boot: { state: 'bad', primary: false } }] }, 'the target slot stays marked bad; the booted slot is still the primary: nothing armed');
  t.equal((await boardStatus(board.dir)).booted, 'A');
  // format 2 refuses the altered first frame before it is decoded: no byte of the image is written;
  // format 1 learns of it at the end of the stream: the last chunk waits for the target hash
  const untouchedFrom = format === 2 ? 0 : (rel.chunks - 1) * (64 << 10);
  t.ok((await readFile(board.slots.B)).subarray(untouchedFrom, rel.size).equals(slotB.subarray(untouchedFrom, rel.size)), format === 2 ? 'no chunk was written' : 'the last chunk was never written: the image cannot be complete');

  // the file as signed installs and arms
  await writeFile(rel.payloadPath, original);
  const retry = await slotflip(['check', '--retry', '--config', config, '--json']);
  t.equal(retry.code, 0, 'an operator asks to retry the failed release');
  const ok = await slotflip(['install', srv.url, '--config', config, '--json']);
  t.equal(ok.code, 0, `the intact payload installs: ${ok.stderr.slice(-400)}`);
  t.match(JSON.parse(ok.stdout), { rebooted: true });
});

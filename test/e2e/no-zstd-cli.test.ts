/**
 * A device image without the `zstd` package: the built CLI decodes zstd payloads with Node's own
 * decoder (daemon/install/decode.ts, `zstdDecoder: 'auto'`), and the preflight that runs before the
 * fallback slot is marked bad uses that decoder too — it used to spawn the CLI regardless and refused
 * every release with INSTALL_DECOMPRESS on such a device. Driven through the built CLI with a PATH that
 * holds every tool of this machine except zstd.
 */
import t from 'tap';
import { readdir, readFile, symlink, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { builtinZstd } from '../../daemon/install/decode.js';
import { slotflip } from './harness.js';
import { slotOf, trialDevice } from './trial-device.js';

t.setTimeout(300_000);

/** A directory with a link to every executable of /usr/bin, /bin, /usr/sbin and /sbin except zstd's. */
async function pathWithoutZstd(dir: string): Promise<string> {
  const bin = join(dir, 'bin');
  await mkdir(bin);
  const seen = new Set<string>();
  for (const d of ['/usr/sbin', '/usr/bin', '/sbin', '/bin']) {
    for (const name of await readdir(d).catch(() => [] as string[])) {
      if (/zstd|zstdcat|unzstd/.test(name) || seen.has(name)) continue;
      seen.add(name);
      await symlink(join(d, name), join(bin, name));
    }
  }
  return bin;
}

t.test('without the zstd CLI a zstd release passes preflight and installs with the built-in decoder', { skip: builtinZstd ? false : `node ${process.version} has no built-in zstd for concatenated frames (Node 24 does)` }, async (t) => {
  const dev = await trialDevice(t.testdir(), { backend: 'emulated' });
  t.teardown(() => dev.server.stop());
  // the full payload (no delta files): the path whose preflight decodes chunk 0
  await dev.publish('1.1.0', 1, true, ['--no-delta']);
  const PATH = await pathWithoutZstd(dev.dir);
  t.notOk((await readdir(PATH)).some((n) => n.includes('zstd')), 'no zstd on that PATH');

  const r = await slotflip(['update', '--once', '--config', dev.configPath, '--json'], { env: { PATH } });
  t.equal(r.code, 0, `update --once exits 0 (${r.stderr.slice(0, 400)})`);
  const s = await dev.status();
  t.notMatch(String(s.lastCheck?.detail ?? ''), /INSTALL_DECOMPRESS/, 'no decompression refusal');
  t.equal((await dev.reboots()).length, 1, 'the trial reboot was asked for');
  const image = await readFile(join(dev.dir, 'image-1.1.0.img'));
  const slotB = await readFile(dev.slots.B);
  t.ok(slotB.subarray(0, image.length).equals(image), 'slot B holds the signed image');
  t.match(slotOf(s, 'B').boot, { state: 'trial' }, 'B armed for its trial');
});

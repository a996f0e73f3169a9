/**
 * The read-back's worker thread (read-back-thread.ts) as the device runs it: the BUILT module, in a
 * Node started with the flags /usr/bin/slotflip (systemd/packaging/slotflip.sh) passes. A Worker given
 * an explicit execArgv naming a V8 flag such as --max-semi-space-size=1 throws
 * ERR_WORKER_INVALID_EXEC_ARGV, which once failed every install run through the launcher while every
 * test that imported the sources passed. The worker must start under those flags, read the file back
 * and hash the whole of it; a byte changed on the medium must still fail the check, naming its chunk.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

const ROOT = join(import.meta.dirname, '..', '..');
const BUILT = join(ROOT, 'dist', 'daemon', 'install', 'read-back-thread.js');
const CHUNK = 64 << 10;
const SIZE = 9 * CHUNK + 123;

/** The Node flags of the launcher's exec line (as cli-bench and memory-bench read them). */
function launcherFlags(): string[] {
  const m = /^exec "\$node" (.*?)"\$lib\/dist\/daemon\/cli\.js" "\$@"$/m.exec(readFileSync(join(ROOT, 'systemd', 'packaging', 'slotflip.sh'), 'utf8'));
  if (!m) throw new Error('slotflip.sh: no exec line');
  return m[1]!.split(' ').filter((a) => a !== '');
}

/** Runs the built ThreadedReadBack over `path` in a Node with the launcher's flags; returns its verdict. */
function readBackUnderLauncherFlags(path: string, img: Buffer): { ok: boolean; sha256?: string; code?: string; details?: Record<string, unknown>; status: number | null; stderr: string } {
  const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
  const sums = Array.from({ length: Math.ceil(SIZE / CHUNK) }, (_, k) => sha(img.subarray(k * CHUNK, (k + 1) * CHUNK)));
  const script = `
    import { ThreadedReadBack } from ${JSON.stringify(BUILT)};
    const sums = ${JSON.stringify(sums)};
    const rb = new ThreadedReadBack({ path: ${JSON.stringify(path)}, chunkSize: ${CHUNK}, size: ${SIZE}, imageSha256: ${JSON.stringify(sha(img))}, chunkSha256: (k) => sums[k] });
    try {
      rb.advance(${3 * CHUNK + 17});
      await rb.finish(${SIZE});
      console.log(JSON.stringify({ ok: true, sha256: rb.imageSha256() }));
    } catch (e) {
      console.log(JSON.stringify({ ok: false, code: e.code, details: e.details }));
    } finally {
      await rb.close();
    }`;
  // a script file, not --eval: the worker inherits the process's flags, and --input-type is not one
  // a daemon runs with
  const file = join(dirname(path), 'run-read-back.mjs');
  writeFileSync(file, script);
  const r = spawnSync(process.execPath, [...launcherFlags(), file], { encoding: 'utf8', timeout: 60_000 });
  const line = r.stdout.trim().split('\n').at(-1) ?? '';
  return { ...(line.startsWith('{') ? (JSON.parse(line) as { ok: boolean }) : { ok: false }), status: r.status, stderr: r.stderr };
}

t.test('the built read-back thread starts under the launcher\'s Node flags and checks the whole image', { skip: existsSync(BUILT) ? false : 'needs npm run build' }, async (t) => {
  const flags = launcherFlags();
  t.ok(flags.some((f) => f.startsWith('--max-semi-space-size')), `premise: the launcher passes a V8 flag (${flags.join(' ')})`);
  const img = Buffer.alloc(SIZE);
  for (let i = 0; i < SIZE; i++) img[i] = (i * 131 + (i >> 11)) & 0xff;
  const path = join(t.testdir(), 'slot.img');
  writeFileSync(path, img);

  const good = readBackUnderLauncherFlags(path, img);
  t.equal(good.status, 0, `exits 0 (stderr: ${good.stderr.slice(0, 300)})`);
  t.same({ ok: good.ok, sha256: good.sha256 }, { ok: true, sha256: createHash('sha256').update(img).digest('hex') }, 'the whole image hashed on the worker, as read back');

  const bad = Buffer.from(img);
  bad[5 * CHUNK + 9] = bad[5 * CHUNK + 9]! ^ 0x10;
  writeFileSync(path, bad);
  const caught = readBackUnderLauncherFlags(path, img);
  t.equal(caught.status, 0);
  t.match(caught, { ok: false, code: 'INSTALL_READBACK_MISMATCH', details: { path, chunk: 5, offset: 5 * CHUNK, changed: 1 } }, 'a changed byte fails the read-back and is named by its chunk');
});

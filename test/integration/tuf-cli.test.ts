/**
 * The trust commands end to end, run in-process through their Command objects: repo init, release
 * add, repo timestamp/rotate/rollout, verify (directory and HTTP), and the tuf-conformance client
 * protocol (init / refresh / download, exit 0/1, artifact caching) against a real HTTP server.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { startHttpServer } from '../harness/http-server.js';
import { command as repoCmd } from '../../daemon/commands/repo.js';
import { command as releaseCmd } from '../../daemon/commands/release.js';
import { command as verifyCmd } from '../../daemon/commands/verify.js';
import { command as tufClient } from '../../daemon/commands/tuf-client.js';
import type { Command } from '../../daemon/commands/command.js';

async function run(cmd: Command, argv: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; out: string; err: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (d: Buffer) => (out += d.toString()));
  stderr.on('data', (d: Buffer) => (err += d.toString()));
  let code: number;
  try {
    code = await cmd.run(argv, { stdout, stderr, env });
  } catch (e) {
    // the CLI entry prints coded errors and exits 1
    err += `${(e as { code?: string }).code}: ${(e as Error).message}`;
    code = 1;
  }
  return { code, out, err };
}

t.test('help texts', async (t) => {
  for (const c of [repoCmd, releaseCmd, verifyCmd, tufClient]) t.match(c.help, /^usage: slotflip /);
});

t.test('manufacturer commands and verify', async (t) => {
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  const init = await run(repoCmd, ['init', repo, '--json']);
  t.equal(init.code, 0, init.err);
  t.match(await run(repoCmd, ['init', repo]), { code: 1, err: /MANIFEST_REPO_EXISTS/ });
  const image = join(dir, 'os.img');
  await writeFile(image, randomBytes(50_000));
  const add = await run(releaseCmd, ['add', repo, '--image', image, '--version', '3.1.0', '--security-version', '4', '--hardware', 'acme,a', '--hardware', 'acme,b', '--channel', 'beta', '--compression', 'gzip', '--chunk-size', '16384', '--json']);
  t.equal(add.code, 0, add.err);
  const added = JSON.parse(add.out) as { targetName: string; chunks: number };
  t.match(added, { targetName: 'releases/3.1.0/os.img.gz', chunks: 4 });
  t.match(await run(releaseCmd, ['add', repo, '--image', image, '--version', '1', '--security-version', 'x', '--hardware', 'h', '--channel', 'c']), { code: 1, err: /MANIFEST_BAD_ARGUMENT/ });

  const root = join(repo, 'repository/metadata/root.json');
  const v = await run(verifyCmd, ['--root', root, '--repo', repo, '--hardware', 'acme,b', '--channel', 'beta', '--json']);
  t.equal(v.code, 0, v.out + v.err);
  t.match(JSON.parse(v.out), { ok: true, release: { targetName: added.targetName, version: '3.1.0', securityVersion: 4 }, metadata: { root: 1, targets: 2 } });
  const wrongHw = await run(verifyCmd, ['--root', root, '--repo', repo, '--hardware', 'acme,c', '--channel', 'beta', '--json']);
  t.match({ exit: wrongHw.code, ...JSON.parse(wrongHw.out) }, { exit: 4, ok: false }, 'wrong hardware');
  t.equal(JSON.parse(wrongHw.out).code, 'MANIFEST_HARDWARE_MISMATCH');
  const downgrade = await run(verifyCmd, ['--root', root, '--repo', repo, '--hardware', 'acme,a', '--channel', 'beta', '--committed-security-version', '5']);
  t.match(downgrade, { code: 4, out: /MANIFEST_SECURITY_DOWNGRADE/ });

  t.match(await run(repoCmd, ['rollout', repo, '--target', added.targetName, '--halt']), { code: 0 });
  t.match(await run(verifyCmd, ['--root', root, '--repo', repo, '--hardware', 'acme,a', '--channel', 'beta']), { code: 4, out: /MANIFEST_ROLLOUT_HALTED/ });
  t.match(await run(repoCmd, ['rollout', repo, '--target', added.targetName, '--clear']), { code: 0 });
  t.match(await run(repoCmd, ['timestamp', repo]), { code: 0, out: /timestamp v5/ });
  t.match(await run(repoCmd, ['rotate', repo, '--role', 'root']), { code: 0, out: /root v2/ });
  t.match(await run(repoCmd, ['rotate', repo]), { code: 1, err: /MANIFEST_BAD_ARGUMENT/ });
  // a device with the ORIGINAL shipped root follows the rotation
  const shipped = join(dir, 'shipped-root.json');
  await writeFile(shipped, await readFile(join(repo, 'repository/metadata/1.root.json')));
  const after = await run(verifyCmd, ['--root', shipped, '--repo', repo, '--hardware', 'acme,a', '--channel', 'beta', '--json']);
  t.match(JSON.parse(after.out), { ok: true, metadata: { root: 2 } });

  // verify over HTTP
  const server = await startHttpServer({ root: join(repo, 'repository') });
  t.teardown(() => server.stop());
  const http = await run(verifyCmd, ['--root', shipped, '--repo', server.url, '--hardware', 'acme,a', '--channel', 'beta', '--json']);
  t.equal(http.code, 0, http.out);
  t.match(JSON.parse(http.out).release.url, new RegExp(`^${server.url}targets/releases/3.1.0/[0-9a-f]{64}\\.os\\.img\\.gz$`));
  const bad = await run(verifyCmd, ['--root', join(dir, 'nope.json'), '--repo', repo, '--hardware', 'acme,a', '--json']);
  t.match({ exit: bad.code, ...JSON.parse(bad.out) }, { exit: 5, ok: false, code: 'MANIFEST_NO_TRUSTED_ROOT' });
});

t.test('tuf-client conformance protocol', async (t) => {
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  await run(repoCmd, ['init', repo]);
  const image = join(dir, 'artifact.bin');
  await writeFile(image, randomBytes(30_000));
  await run(releaseCmd, ['add', repo, '--image', image, '--version', '1.0.0', '--security-version', '0', '--hardware', 'x', '--channel', 'c', '--compression', 'none', '--chunk-size', '8192', '--name', 'path/to/artifact.bin']);
  const server = await startHttpServer({ root: join(repo, 'repository') });
  t.teardown(() => server.stop());
  const md = join(dir, 'client-metadata');
  const targets = join(dir, 'client-targets');
  const common = ['--metadata-dir', md, '--metadata-url', server.url + 'metadata'];

  t.equal((await run(tufClient, ['--metadata-dir', md, 'init', join(repo, 'repository/metadata/1.root.json')])).code, 0);
  t.same(await readdir(md), ['root.json']);
  t.equal(server.requests.length, 0, 'init makes no request');
  t.equal((await run(tufClient, [...common, 'refresh'])).code, 0);
  t.same((await readdir(md)).sort(), ['root.json', 'snapshot.json', 'targets.json', 'timestamp.json']);

  const dl = [...common, '--target-name', 'path/to/artifact.bin', '--target-base-url', server.url + 'targets', '--target-dir', targets, 'download'];
  const first = await run(tufClient, dl);
  t.equal(first.code, 0, first.err);
  const file = join(targets, encodeURIComponent('path/to/artifact.bin'));
  t.same(await readFile(file), await readFile(image));
  const targetRequests = (): number => server.requests.filter((r) => r.path.includes('/targets/')).length;
  const n = targetRequests();
  t.equal((await run(tufClient, dl)).code, 0);
  t.equal(targetRequests(), n, 'cached artifact is not downloaded again');

  // a damaged local copy is replaced; a substituted artifact on the server fails with exit 1
  await writeFile(file, 'damaged');
  t.equal((await run(tufClient, dl)).code, 0);
  t.same(await readFile(file), await readFile(image));
  await writeFile(file, 'damaged');
  const published = join(repo, 'repository/targets/path/to', (await readdir(join(repo, 'repository/targets/path/to'))).find((n) => n.endsWith('.artifact.bin'))!);
  const good = await readFile(published);
  await writeFile(published, randomBytes(30_000));
  const evil = await run(tufClient, dl);
  await writeFile(published, good);
  t.equal(evil.code, 1);
  t.match(evil.err, /MANIFEST_TARGET_MISMATCH/);
  t.match(await run(tufClient, [...common, '--target-name', 'nope', '--target-base-url', server.url + 'targets', '--target-dir', targets, 'download']), { code: 1 });
  t.match(await run(tufClient, [...common, 'bogus']), { code: 1 });
  t.match(await run(tufClient, ['--metadata-dir', md, 'refresh']), { code: 1 }, 'refresh without --metadata-url');
  t.match(await run(tufClient, ['--metadata-url', 'x', '--unknown', 'refresh']), { code: 1 }, 'unknown option');
});

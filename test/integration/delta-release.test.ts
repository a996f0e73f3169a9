/**
 * `slotflip release add --delta` through the built CLI: the delta index and pack become signed
 * targets of their own, the release names them, the command says what a device holding the earlier
 * release downloads and what defeats reuse (a fresh mke2fs: new UUID and hash seed), and a device
 * holding the earlier image installs the new one from `repo serve` with a delta install.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdir, readFile, writeFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { createHash } from 'node:crypto';
import { serveRepository } from '../../manifests/serve.js';
import { installDelta } from '../../daemon/install/delta.js';
import { buildReleaseDelta, estimateDelta } from '../../manifests/delta-publish.js';
import { DEFAULT_CDC, EXT4_CDC } from '../../manifests/cdc.js';
import { DEFAULT_DELTA_LEVEL, DELTA_FORMAT_2, parseDeltaIndex } from '../../manifests/delta.js';
import { createSlotWriter } from '../../hal/file-slot.js';

const execFileP = promisify(execFile);
const CLI = fileURLToPath(new URL('../../dist/daemon/cli.js', import.meta.url));

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await execFileP(process.execPath, [CLI, ...args], { timeout: 120_000 });
    return { code: 0, ...r };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof err.code === 'number' ? err.code : -1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

/** an ext4 image of `tree`, built from scratch (random UUID and hash seed, like a normal build). */
async function ext4(tree: string, out: string): Promise<void> {
  await execFileP('mke2fs', ['-q', '-t', 'ext4', '-d', tree, '-F', out, '16M']);
}

/** A tree of `dirs` × `files` text files, an ext4 image of it, then one per change (file, content). */
async function ext4Versions(dir: string, dirs: number, files: number, changes: [string, string][]): Promise<string[]> {
  const tree = join(dir, 'tree');
  for (let d = 0; d < dirs; d++) {
    await mkdir(join(tree, `dir${d}`), { recursive: true });
    for (let f = 0; f < files; f++) await writeFile(join(tree, `dir${d}`, `file${f}.txt`), `file ${d}/${f}\n`.repeat(200 + f * 13));
  }
  const images = [join(dir, 'v1.img')];
  await ext4(tree, images[0]!);
  for (const [i, [file, content]] of changes.entries()) {
    await writeFile(join(tree, file), content);
    images.push(join(dir, `v${i + 2}.img`));
    await ext4(tree, images.at(-1)!);
  }
  return images;
}

t.test('release add --delta publishes index + pack targets and explains what defeats reuse', async (t) => {
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  await ext4Versions(dir, 8, 40, [['dir3/file7.txt', 'a changed configuration file\n']]);

  t.equal((await cli(['repo', 'init', repo])).code, 0);
  const add = (v: string, img: string, extra: string[] = []): Promise<{ code: number; stdout: string; stderr: string }> =>
    cli(['release', 'add', repo, '--image', img, '--version', v, '--security-version', '1', '--hardware', 'acme,delta', '--channel', 'stable', '--delta', '--json', ...extra]);
  const a1 = await add('1.0.0', join(dir, 'v1.img'));
  t.equal(a1.code, 0, a1.stderr);
  const r1 = JSON.parse(a1.stdout);
  t.equal(r1.delta.index.target, 'releases/1.0.0/v1.img.zst.delta-index');
  t.same(r1.delta.estimates, [], 'nothing earlier to compare with');

  const a2 = await add('1.1.0', join(dir, 'v2.img'));
  t.equal(a2.code, 0, a2.stderr);
  const r2 = JSON.parse(a2.stdout);
  const est = r2.delta.estimates[0];
  t.match(est.against, /v1\.img\.zst\.delta-index$/, 'compared with the previous release by default');
  t.ok(est.expectedBytes < r2.length, `expected ${est.expectedBytes} bytes, full payload ${r2.length}`);
  t.ok(est.reasons.some((x: string) => /fixed hash seed|fixed UUID/.test(x)), `says what defeats reuse: ${est.reasons.join(' | ')}`);

  // the human output says the same
  const a3 = await cli(['release', 'add', repo, '--image', join(dir, 'v2.img'), '--version', '1.1.1', '--security-version', '1', '--hardware', 'acme,delta', '--channel', 'stable', '--delta-against', join(dir, 'v1.img')]);
  t.equal(a3.code, 0, a3.stderr);
  t.match(a3.stdout, /a device holding .*v1\.img downloads about [\d.]+ MB \([\d.]+ % of the full payload\)/);

  // --no-delta publishes none; it contradicts --delta; --delta-level is checked and implies --delta
  const plain = await add('1.1.2', join(dir, 'v2.img'), ['--no-delta']);
  t.not(plain.code, 0, '--delta with --no-delta is refused');
  t.match(plain.stderr, /MANIFEST_BAD_ARGUMENT.*--no-delta contradicts/);
  const none = await cli(['release', 'add', repo, '--image', join(dir, 'v2.img'), '--version', '1.1.3', '--security-version', '1', '--hardware', 'acme,delta', '--channel', 'stable', '--no-delta', '--json']);
  t.equal(none.code, 0, none.stderr);
  t.notOk('delta' in JSON.parse(none.stdout), '--no-delta: no delta files');
  const badLevel = await cli(['release', 'add', repo, '--image', join(dir, 'v2.img'), '--version', '1.1.4', '--security-version', '1', '--hardware', 'acme,delta', '--channel', 'stable', '--delta-level', '23']);
  t.match(badLevel.stderr, /--delta-level must be 1-22/);
  const level9 = await cli(['release', 'add', repo, '--image', join(dir, 'v2.img'), '--version', '1.1.5', '--security-version', '1', '--hardware', 'acme,delta', '--channel', 'stable', '--delta-level', '9', '--json']);
  t.equal(level9.code, 0, level9.stderr);
  t.ok(JSON.parse(level9.stdout).delta.pack.length > 0, '--delta-level alone publishes a delta');

  // signed targets: index and pack with their lengths and hashes; the release names them
  const targetsFile = (await readdir(join(repo, 'repository', 'metadata'))).filter((f) => f.endsWith('.targets.json')).sort((a, b) => parseInt(b) - parseInt(a))[0]!;
  const targets = JSON.parse(await readFile(join(repo, 'repository', 'metadata', targetsFile), 'utf8')).signed.targets;
  const idxT = targets['releases/1.1.0/v2.img.zst.delta-index'];
  t.same({ length: idxT.length, sha256: idxT.hashes.sha256 }, { length: r2.delta.index.length, sha256: r2.delta.index.sha256 });
  // format 2: the release's chunk index file (a signed target) carries the delta section; the
  // targets metadata stays small and devices that do not know the section install the full payload
  t.notOk('delta' in targets['releases/1.1.0/v2.img.zst'].custom, 'no delta section in targets.json');
  const indexFile = JSON.parse(await readFile(r2.index.path, 'utf8'));
  t.same(indexFile.delta.pack, r2.delta.pack, 'the chunk index file names the delta pack');
  t.same(indexFile.delta.index, r2.delta.index, 'and the delta index');

  // a device running v1 (slot A) installs v2 into slot B from the served repository
  const srv = await serveRepository(join(repo, 'repository'));
  t.teardown(() => srv.close());
  const url = (target: string, sha: string): string => `${srv.url}targets/${target.replace(/[^/]+$/, (b) => `${sha}.${b}`)}`;
  await writeFile(join(dir, 'slotB.img'), Buffer.alloc(16 << 20));
  const r = await installDelta({
    index: { urls: [url(r2.delta.index.target, r2.delta.index.sha256)], length: r2.delta.index.length, sha256: r2.delta.index.sha256 },
    pack: { urls: [url(r2.delta.pack.target, r2.delta.pack.sha256)], length: r2.delta.pack.length, sha256: r2.delta.pack.sha256 },
    slot: createSlotWriter('B', { path: join(dir, 'slotB.img') }),
    running: { path: join(dir, 'v1.img'), size: 16 << 20 },
  });
  const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
  t.equal(sha(await readFile(join(dir, 'slotB.img'))), sha(await readFile(join(dir, 'v2.img'))), 'slot B holds v2');
  t.ok(r.downloaded < r2.length, `downloaded ${r.downloaded} < full payload ${r2.length}`);
  t.ok(Math.abs(r.downloaded - est.expectedBytes) <= 4096 + r.requests * 512, `the estimate (${est.expectedBytes}) matches the real download (${r.downloaded})`);
});

t.test('release add publishes a delta by default and estimates against the earlier release of the same hardware', async (t) => {
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  await ext4Versions(dir, 4, 30, [['dir2/file5.txt', 'changed\n'], ['dir1/file9.txt', 'changed again\n']]);
  t.equal((await cli(['repo', 'init', repo])).code, 0);
  const add = (v: string, img: string, hw: string, extra: string[] = []): Promise<{ code: number; stdout: string; stderr: string }> =>
    cli(['release', 'add', repo, '--image', join(dir, img), '--version', v, '--security-version', '1', '--hardware', hw, '--channel', 'stable', ...extra]);
  const json = async (p: Promise<{ code: number; stdout: string; stderr: string }>): Promise<Record<string, any>> => { // eslint-disable-line @typescript-eslint/no-explicit-any
    const r = await p;
    t.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  };

  const r1 = await json(add('1.0.0', 'v1.img', 'acme,a', ['--json']));
  t.ok(r1.delta?.pack.length > 0, 'no flag: the delta index and pack are published');
  t.equal(r1.delta.level, DEFAULT_DELTA_LEVEL, `at the default level (${DEFAULT_DELTA_LEVEL})`);
  t.match(r1.delta.cdc, { min: EXT4_CDC.min, avg: EXT4_CDC.avg, max: EXT4_CDC.max }, 'an ext4 image: EXT4_CDC chunk sizes');
  t.ok([1024, 2048, 4096].includes(r1.delta.cdc.dirBlock), `and its directory blocks on their own (block size ${r1.delta.cdc.dirBlock})`);
  t.same(r1.delta.estimates, [], 'nothing earlier of this hardware');
  // another board's release is never the seed; a better one of the same board is (securityVersion, then semver)
  await json(add('9.0.0', 'v3.img', 'acme,other', ['--json']));
  const r2 = await json(add('1.1.0', 'v2.img', 'acme,a', ['--json']));
  t.equal(r2.delta.estimates.length, 1);
  t.equal(r2.delta.estimates[0].release, 'releases/1.0.0/v1.img.zst (1.0.0)', 'compared with 1.0.0 of the same hardware, not 9.0.0 of another');
  t.equal(r2.delta.estimates[0].against, join(repo, 'repository', 'targets', 'releases', '1.0.0', `${r1.delta.index.sha256}.v1.img.zst.delta-index`), 'through its signed .delta-index file');
  t.ok(r2.delta.estimates[0].expectedBytes < r2.length, 'expects less than the full payload');
  // format 2 by default, with a thin index written against that same release's index
  t.equal(r2.delta.format, DELTA_FORMAT_2, 'format 2 by default');
  t.equal(r1.delta.thin, undefined, '1.0.0: nothing earlier, no thin index');
  const base = parseDeltaIndex(await readFile(r2.delta.estimates[0].against));
  t.equal(r2.delta.thin?.base, base.rawSha256, '1.1.0: a thin index against 1.0.0\'s (the release devices of this hardware hold)');
  t.ok(r2.delta.thin.length < r2.delta.index.length, `smaller than the full index (${r2.delta.thin.length} < ${r2.delta.index.length} bytes)`);
  t.ok(await readFile(join(repo, 'repository', 'targets', 'releases', '1.1.0', `${r2.delta.thin.sha256}.v2.img.zst.delta-thin`)).then((b) => createHash('sha256').update(b).digest('hex') === r2.delta.thin.sha256), 'published under its signed SHA-256');

  // human output: the release named, the download, what defeats reuse
  const h = await add('1.2.0', 'v3.img', 'acme,a');
  t.equal(h.code, 0, h.stderr);
  const kib = `${EXT4_CDC.min >> 10}/${EXT4_CDC.avg >> 10}/${EXT4_CDC.max >> 10}`;
  t.match(h.stdout, new RegExp(`^delta: releases/1\\.2\\.0/v3\\.img\\.zst\\.delta-index \\(\\d+ bytes\\).*\\(${kib} KiB, ext4 directory blocks on their own\\)$`, 'm'));
  t.match(h.stdout, /^a device holding releases\/1\.1\.0\/v2\.img\.zst \(1\.1\.0\) downloads about [\d.]+ MB \([\d.]+ % of the full payload\)$/m);
  t.match(h.stdout, /fixed hash seed|fixed UUID/, 'says what defeats reuse (each mke2fs picks a new UUID and hash seed)');

  // the earlier release has no delta index: said, no estimate; format 1 publishes none by default
  await json(add('1.3.0', 'v1.img', 'acme,a', ['--no-delta', '--json']));
  const r4 = await json(add('1.4.0', 'v2.img', 'acme,a', ['--json']));
  t.same(r4.delta.estimates, []);
  t.match(r4.delta.noEstimate, /^releases\/1\.3\.0\/v1\.img\.zst \(1\.3\.0\) has no delta index/);
  const f1 = await json(add('1.5.0', 'v2.img', 'acme,a', ['--inline-index', '--json']));
  t.notOk('delta' in f1, '--inline-index (format 1): no delta files');
  const both = await add('1.6.0', 'v2.img', 'acme,a', ['--inline-index', '--delta']);
  t.match(both.stderr, /MANIFEST_BAD_ARGUMENT.*--delta needs format 2/, 'asking for both is refused');
  const missing = await add('1.7.0', 'v2.img', 'acme,a', ['--delta-against', join(dir, 'no-such.img')]);
  t.match(missing.stderr, /MANIFEST_BAD_ARGUMENT.*--delta-against .*no-such\.img: not a file/, 'a --delta-against that is not a file is refused');
  await t.rejects(readdir(join(repo, 'repository', 'targets', 'releases', '1.7.0')), { code: 'ENOENT' }, 'before anything is written');
});

t.test('an earlier release cut with other chunking parameters: the estimate rebuilds it from its pack and cuts it as a device would', async (t) => {
  const dir = t.testdir();
  const [v1, v2] = (await ext4Versions(dir, 6, 30, [['dir4/file3.txt', 'changed\n']])) as [string, string];
  const targets = join(dir, 'targets');
  await mkdir(join(targets, 'releases/1.0.0'), { recursive: true });
  await mkdir(join(targets, 'releases/1.1.0'), { recursive: true });
  const old = await buildReleaseDelta(v1, targets, 'releases/1.0.0/v1.img.zst', { cdc: DEFAULT_CDC }); // as published before the ext4 chunking
  const cur = await buildReleaseDelta(v2, targets, 'releases/1.1.0/v2.img.zst');
  t.not(cur.index.header.cdc.avg, old.index.header.cdc.avg, 'the two releases are cut differently');
  const viaIndex = await estimateDelta(v2, cur.index, cur.section.index.length, old.targets[0]!.path);
  const viaImage = await estimateDelta(v2, cur.index, cur.section.index.length, v1);
  t.equal(viaIndex.expectedBytes, viaImage.expectedBytes, `the same estimate as from the earlier image itself (${viaImage.expectedBytes} bytes)`);
  t.ok(viaIndex.expectedBytes < cur.section.pack.length, `below the whole pack (${viaIndex.expectedBytes} of ${cur.section.pack.length} bytes)`);
  await writeFile(old.targets[1]!.path, Buffer.alloc(old.targets[1]!.length)); // a damaged earlier pack
  await t.rejects(estimateDelta(v2, cur.index, cur.section.index.length, old.targets[0]!.path), /does not match its index|Unknown frame|zstd|decompress/i, 'a damaged pack gives no estimate, not a wrong one');
});

/**
 * The device's chunk-index resolver (daemon/install/index-file.ts) against a real HTTP server and a
 * repository made by the publishing tools: the index is fetched from the first mirror that serves
 * the signed bytes, capped at the signed length, cached atomically for resume and re-verified before
 * each use; every way it can be wrong has its code. And the parser (manifests/chunk-index.ts) on
 * hand-made index files: what it refuses, and the optional `delta` section it tolerates.
 */
import t from 'tap';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTestImage } from '../../hal/board.js';
import { addRelease, initRepo } from '../../manifests/repo.js';
import { TrustClient, dirSource, targetUrl } from '../../manifests/client.js';
import { encodeIndexFile, parseIndexFile } from '../../manifests/chunk-index.js';
import { canonicalJson } from '../../manifests/keys.js';
import { checkReleaseStructure } from '../../manifests/validate.js';
import type { Release, TargetRef } from '../../manifests/types.js';
import { IndexResolver } from '../../daemon/install/index-file.js';
import { startHttpServer } from '../harness/http-server.js';

const HW = 'acme,index';

async function fixture(dir: string): Promise<{ release: Release; repo: string; indexPath: string }> {
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const image = join(dir, 'os.img');
  await writeFile(image, makeTestImage({ version: '1.1.0', size: 200 * 1024 }));
  const added = await addRelease(repo, { image, version: '1.1.0', securityVersion: 1, hardware: [HW], channel: 'stable', compression: 'gzip', chunkSize: 16 * 1024 });
  const client = new TrustClient({ trustedDir: join(dir, 'trusted'), shippedRootPath: join(repo, 'repository/metadata/1.root.json'), source: dirSource(join(repo, 'repository/metadata')), now: Date.now });
  const { releases } = await client.refresh();
  t.equal(releases.length, 1, 'the index target is not a release of its own');
  return { release: releases[0]!, repo, indexPath: added.index!.path };
}

t.test('fetch, cache, re-verify, settle', async (t) => {
  const dir = t.testdir();
  const { release, repo, indexPath } = await fixture(dir);
  t.ok(checkReleaseStructure(release).ok, 'a format 2 release with its index target passes selection');
  t.match(release.index, { targetName: 'releases/1.1.0/os.img.gz.index' });
  const srv = await startHttpServer({ root: join(repo, 'repository') });
  t.teardown(() => srv.stop());
  await mkdir(join(dir, 'empty'));
  const broken = await startHttpServer({ root: join(dir, 'empty') });
  t.teardown(() => broken.stop());
  const cacheDir = join(dir, 'state', 'install-index');
  const locate = (tg: TargetRef) => ({ urls: [targetUrl(`${broken.url}targets/`, tg), targetUrl(`${srv.url}targets/`, tg)] });
  const resolver = new IndexResolver({ locate, cacheDir });

  const payload = await resolver.payloadOf(release);
  t.equal(payload.chunks.length, 13, '200 KiB in 16 KiB chunks');
  t.ok(payload.chunks.every((c) => /^[0-9a-f]{64}$/.test(c.packedSha256!)), 'packedSha256 handed to the installer');
  t.equal(broken.requests.length, 1, 'the first mirror (404) was tried');
  t.equal(srv.requests.filter((r) => r.path.endsWith('.index')).length, 1, 'the second one served it');
  t.same(await readdir(cacheDir), [`${release.index!.hashes['sha256']}.index`], 'cached under its signed hash');

  await resolver.payloadOf(release);
  t.equal(srv.requests.length, 1, 'a second resolve (resume) reads the cache, fetches nothing');

  // a damaged cache is not trusted: verified, dropped, fetched again
  await writeFile(join(cacheDir, `${release.index!.hashes['sha256']}.index`), (await readFile(indexPath)).fill(0x20, 0, 10));
  t.same((await resolver.payloadOf(release)).chunks, payload.chunks);
  t.equal(srv.requests.length, 2, 'fetched again after the cache failed its hash');

  await resolver.settle(release);
  t.equal((await readdir(cacheDir)).length, 1, 'kept while its attempt is in flight');
  await resolver.settle(undefined);
  t.same(await readdir(cacheDir), [], 'removed once no attempt is in flight');
});

t.test('an index larger than the HTTP reader\'s reused 64 KiB buffer arrives whole (a 4 GiB image\'s is ~190 KiB)', async (t) => {
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const image = join(dir, 'os.img');
  await writeFile(image, makeTestImage({ version: '1.1.0', size: 3 * 1024 * 1024 }));
  const added = await addRelease(repo, { image, version: '1.1.0', securityVersion: 1, hardware: [HW], channel: 'stable', compression: 'gzip', chunkSize: 4096 });
  const indexBytes = await readFile(added.index!.path);
  t.ok(indexBytes.length > 2 * 64 * 1024, `premise: the index (${indexBytes.length} bytes) spans several reads`);
  const client = new TrustClient({ trustedDir: join(dir, 'trusted'), shippedRootPath: join(repo, 'repository/metadata/1.root.json'), source: dirSource(join(repo, 'repository/metadata')), now: Date.now });
  const { releases } = await client.refresh();
  const srv = await startHttpServer({ root: join(repo, 'repository') });
  t.teardown(() => srv.stop());
  const resolver = new IndexResolver({ locate: (tg: TargetRef) => ({ urls: [targetUrl(`${srv.url}targets/`, tg)] }), cacheDir: join(dir, 'state', 'install-index') });
  const payload = await resolver.payloadOf(releases[0]!);
  t.equal(payload.chunks.length, 768, '3 MiB in 4 KiB chunks');
  t.same(await readFile(join(dir, 'state', 'install-index', `${releases[0]!.index!.hashes['sha256']}.index`)), indexBytes, 'cached byte for byte as signed');
});

t.test('every way the served index can be wrong has its code, and nothing is cached', async (t) => {
  const dir = t.testdir();
  const { release, repo, indexPath } = await fixture(dir);
  const good = await readFile(indexPath);
  const srv = await startHttpServer({ root: join(repo, 'repository') });
  t.teardown(() => srv.stop());
  const cacheDir = join(dir, 'cache');
  const resolver = new IndexResolver({ locate: (tg) => ({ urls: [targetUrl(`${srv.url}targets/`, tg)] }), cacheDir });

  await writeFile(indexPath, Buffer.concat([good, Buffer.from(' ')]));
  await t.rejects(resolver.payloadOf(release), { code: 'MANIFEST_INDEX_MISMATCH' }, 'longer than signed');
  await writeFile(indexPath, good.subarray(0, good.length - 1));
  await t.rejects(resolver.payloadOf(release), { code: 'MANIFEST_INDEX_MISMATCH' }, 'shorter than signed');
  srv.faults.noLength = true; // no Content-Length: the read itself is capped
  await writeFile(indexPath, Buffer.concat([good, Buffer.alloc(1 << 20, 0x20)]));
  await t.rejects(resolver.payloadOf(release), { code: 'MANIFEST_INDEX_MISMATCH' }, 'an endless body is cut at the signed length');
  srv.faults.noLength = false;
  const flipped = Buffer.from(good);
  flipped[flipped.length - 5] ^= 0x01;
  await writeFile(indexPath, flipped);
  await t.rejects(resolver.payloadOf(release), { code: 'MANIFEST_INDEX_MISMATCH' }, 'same length, other bytes');
  srv.faults.status = 503;
  await t.rejects(resolver.payloadOf(release), { code: 'MANIFEST_INDEX_FETCH', retryable: true }, 'server error: retryable');
  srv.faults.status = undefined;
  await t.rejects(resolver.payloadOf({ ...release, index: undefined }), { code: 'MANIFEST_INDEX_NOT_FOUND' });
  t.same(await readdir(cacheDir).catch(() => []), [], 'nothing cached');
  await writeFile(indexPath, good);
  t.equal((await resolver.payloadOf(release)).chunks.length, 13, 'the right bytes back: resolved');
});

t.test('parseIndexFile judges what the signature cannot', async (t) => {
  const dir = t.testdir();
  const { release, indexPath } = await fixture(dir);
  const good = JSON.parse(await readFile(indexPath, 'utf8')) as Record<string, unknown> & { chunks: Record<string, unknown>[] };
  const parse = (mut: (f: typeof good) => void): ReturnType<typeof parseIndexFile> => {
    const f = structuredClone(good);
    mut(f);
    return parseIndexFile(Buffer.from(canonicalJson(f)), release);
  };
  t.ok(parse(() => undefined).ok, 'as published');
  t.ok(parse((f) => { f['delta'] = { format: 'cdc', anything: [1, 2] }; }).ok, 'an optional delta section is tolerated');
  const cases: [string, (f: typeof good) => void, string][] = [
    ['delta not an object', (f) => { f['delta'] = [1]; }, 'MANIFEST_INDEX_INVALID'],
    ['unknown field', (f) => { f['extra'] = 1; }, 'MANIFEST_INDEX_INVALID'],
    ['unknown chunk field', (f) => { f.chunks[0]!['x'] = 1; }, 'MANIFEST_INDEX_INVALID'],
    ['format 3', (f) => { f['slotflip'] = 3; }, 'MANIFEST_INDEX_INVALID'],
    ['packedSha256 missing', (f) => { delete f.chunks[3]!['packedSha256']; }, 'MANIFEST_INDEX_INVALID'],
    ['packedSha256 not hex', (f) => { f.chunks[3]!['packedSha256'] = 'XYZ'; }, 'MANIFEST_INDEX_INVALID'],
    ['a chunk missing', (f) => { f.chunks.pop(); }, 'MANIFEST_INDEX_INVALID'],
    ['overlapping chunks', (f) => { f.chunks[1]!['offset'] = 0; }, 'MANIFEST_INDEX_INVALID'],
    ['lengths do not add up to the signed payload', (f) => { f.chunks.at(-1)!['length'] = (f.chunks.at(-1)!['length'] as number) + 1; }, 'MANIFEST_INDEX_INVALID'],
    ['another payload target', (f) => { f['payloadTarget'] = 'releases/9.9.9/os.img.gz'; }, 'MANIFEST_INDEX_PAYLOAD_MISMATCH'],
    ['another image hash', (f) => { f['sha256'] = 'b'.repeat(64); }, 'MANIFEST_INDEX_PAYLOAD_MISMATCH'],
    ['another chunk size', (f) => { f['chunkSize'] = 8192; }, 'MANIFEST_INDEX_PAYLOAD_MISMATCH'],
    ['another compression', (f) => { f['compression'] = 'zstd'; }, 'MANIFEST_INDEX_PAYLOAD_MISMATCH'],
  ];
  for (const [what, mut, code] of cases) t.match(parse(mut), { ok: false, code }, what);
  t.match(parseIndexFile(Buffer.from('{"slotflip":2,'), release), { ok: false, code: 'MANIFEST_INDEX_INVALID' }, 'not JSON');
  t.match(parseIndexFile(Buffer.from([0xff, 0xfe]), release), { ok: false, code: 'MANIFEST_INDEX_INVALID' }, 'not UTF-8');
  // what the publisher writes parses back to the same list
  const payload = parse(() => undefined);
  if (payload.ok) t.same(encodeIndexFile(release.targetName, payload.payload), await readFile(indexPath), 'canonical: the same bytes again');
});

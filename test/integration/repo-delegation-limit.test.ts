/**
 * Issue 19, proven from outside: a release reachable only past the delegation limit (32 delegated
 * roles per lookup) is refused with MANIFEST_DELEGATION_LIMIT, exit 5, a message naming the limit
 * and the role; before the fix the walk stopped quietly and the device reported no release.
 * The repository tools cannot create delegations, so the chain is built here with @tufjs/models and
 * signed with the repository's own keys; the built CLI (`npm run build` first) does the rest.
 */
import t from 'tap';
import type { Test } from 'tap';
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Metadata, MetadataKind, type Targets } from '@tufjs/models';
import { makeTestImage } from '../../hal/board.js';
import { generateSigningKey, publicKeyJson, signingKeyFromPem, tufSigner, type SigningKey } from '../../manifests/keys.js';

const CLI = process.env['SLOTFLIP_CLI'] ?? fileURLToPath(new URL('../../dist/daemon/cli.js', import.meta.url));
const HW = 'acme,board';
if (!existsSync(CLI)) {
  t.fail(`${CLI} is missing: run \`npm run build\` first`);
  process.exit(1);
}

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

function cli(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...argv], { timeout: 120_000 }, (e, stdout, stderr) => {
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : -1) : 0, out: stdout, err: stderr });
    });
  });
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const meta = (repo: string): string => join(repo, 'repository', 'metadata');
const key = async (repo: string, name: string): Promise<SigningKey> => signingKeyFromPem(await readFile(join(repo, 'keys', `${name}.pem`), 'utf8'));

async function latest(repo: string, role: string): Promise<number> {
  let v = 0;
  for (const n of await readdir(meta(repo))) {
    const m = new RegExp(`^(\\d+)\\.${role}\\.json$`).exec(n);
    if (m) v = Math.max(v, Number(m[1]));
  }
  return v;
}

function signed(json: Json, keys: SigningKey[]): Buffer {
  const md = Metadata.fromJSON(MetadataKind.Targets, { signatures: [], signed: json }) as Metadata<Targets>;
  for (const k of keys) md.sign(tufSigner(k));
  return Buffer.from(JSON.stringify(md.toJSON()));
}

/**
 * Moves every release of the top-level targets into the last of `depth` chained delegated roles
 * (targets → r0 → r1 → … → r<depth-1>, each delegating the releases/ paths), then re-signs snapshot and timestamp.
 */
async function chain(repo: string, depth: number): Promise<void> {
  const tv = await latest(repo, 'targets');
  const top = JSON.parse(await readFile(join(meta(repo), `${tv}.targets.json`), 'utf8')).signed as Json;
  const releases = top['targets'];
  const expires = top['expires'];
  const k = generateSigningKey();
  const delegate = (name: string): Json => ({ keys: { [k.keyid]: publicKeyJson(k.publicHex) }, roles: [{ name, keyids: [k.keyid], threshold: 1, terminating: false, paths: ['releases/*/*'] }] });
  const files: Record<string, Buffer> = {};
  for (let i = 0; i < depth; i++) {
    const last = i === depth - 1;
    files[`r${i}`] = signed({ _type: 'targets', spec_version: '1.0.31', version: 1, expires, targets: last ? releases : {}, ...(last ? {} : { delegations: delegate(`r${i + 1}`) }) }, [k]);
  }
  top['version'] = tv + 1;
  top['targets'] = {};
  top['delegations'] = delegate('r0');
  const topBytes = signed(top, [await key(repo, 'targets')]);
  await writeFile(join(meta(repo), `${tv + 1}.targets.json`), topBytes);
  const snapMeta: Json = { 'targets.json': { version: tv + 1, length: topBytes.length, hashes: { sha256: sha(topBytes) } } };
  for (const [name, bytes] of Object.entries(files)) {
    await writeFile(join(meta(repo), `1.${name}.json`), bytes);
    snapMeta[`${name}.json`] = { version: 1, length: bytes.length, hashes: { sha256: sha(bytes) } };
  }
  const sv = await latest(repo, 'snapshot');
  const snap = JSON.parse(await readFile(join(meta(repo), `${sv}.snapshot.json`), 'utf8')) as Json;
  const snapMd = Metadata.fromJSON(MetadataKind.Snapshot, { signatures: [], signed: { ...snap['signed'], version: sv + 1, meta: snapMeta } });
  snapMd.sign(tufSigner(await key(repo, 'snapshot')));
  const snapBytes = Buffer.from(JSON.stringify(snapMd.toJSON()));
  await writeFile(join(meta(repo), `${sv + 1}.snapshot.json`), snapBytes);
  const ts = JSON.parse(await readFile(join(meta(repo), 'timestamp.json'), 'utf8')) as Json;
  const tsMd = Metadata.fromJSON(MetadataKind.Timestamp, {
    signatures: [],
    signed: { ...ts['signed'], version: ts['signed']['version'] + 1, meta: { 'snapshot.json': { version: sv + 1, length: snapBytes.length, hashes: { sha256: sha(snapBytes) } } } },
  });
  tsMd.sign(tufSigner(await key(repo, 'timestamp')));
  await writeFile(join(meta(repo), 'timestamp.json'), JSON.stringify(tsMd.toJSON()));
}

async function repoWithRelease(t: Test, dir: string): Promise<string> {
  const repo = join(dir, 'repo');
  t.equal((await cli(['repo', 'init', repo])).code, 0, 'repo init');
  const image = join(dir, 'os.img');
  await writeFile(image, makeTestImage({ version: '1.1.0', size: 64 * 1024 }));
  const add = await cli(['release', 'add', repo, '--image', image, '--version', '1.1.0', '--security-version', '1', '--hardware', HW, '--channel', 'stable', '--compression', 'gzip', '--chunk-size', '16384']);
  t.equal(add.code, 0, `release add ${add.err}`);
  return repo;
}

const verify = (repo: string): Promise<{ code: number; out: string; err: string }> =>
  cli(['verify', '--root', join(meta(repo), '1.root.json'), '--repo', join(repo, 'repository'), '--hardware', HW, '--json']);

t.test('a release 32 delegations deep (the limit) is found', async (t) => {
  const repo = await repoWithRelease(t, t.testdir());
  await chain(repo, 32);
  const r = await verify(repo);
  t.equal(r.code, 0, r.out + r.err);
  t.equal(JSON.parse(r.out).release.version, '1.1.0');
});

t.test('a release 33 delegations deep: MANIFEST_DELEGATION_LIMIT naming the limit and the role, exit 5', async (t) => {
  const repo = await repoWithRelease(t, t.testdir());
  await chain(repo, 33);
  const r = await verify(repo);
  t.equal(r.code, 5, 'exit 5 (metadata rejected), not 4 (no release)');
  const out = JSON.parse(r.out) as Json;
  t.equal(out['code'], 'MANIFEST_DELEGATION_LIMIT');
  t.match(out['message'], /limit reached: 32 delegated roles/);
  t.match(out['message'], /role "r32" \(delegated by "r31"\)/);
});

/**
 * Issue 19, key custody, proven from outside through the BUILT CLI (`npm run build` first):
 * - root keys held apart: each holder makes a key on "their own machine" (a directory of their own)
 *   with `repo keygen`; `repo init --root-pubkey ...` holds no private root key; root v1 stays
 *   pending until two holders ran `repo sign-root`; a root rotation to new holders and a targets
 *   rotation go through the same pending flow;
 * - encrypted key files: passphrase from a file descriptor or $SLOTFLIP_KEY_PASSPHRASE; a wrong or
 *   missing one is MANIFEST_KEY_PASSPHRASE with a non-zero exit;
 * - external signers: the targets key lives in SoftHSM2 (PKCS#11), reached through a small wrapper
 *   around `pkcs11-tool`. The key is ECDSA P-256 (TUF ecdsa/ecdsa-sha2-nistp256): SoftHSM 2.6 does
 *   Ed25519 (CKM_EDDSA) too, but pkcs11-tool signs inputs over 1 KiB in parts, which EdDSA cannot do,
 *   and targets metadata is larger; with ECDSA the wrapper hashes and the token signs the digest.
 *   A signer holding the wrong key is refused
 *   (MANIFEST_SIGNER_FAILED) before anything is published;
 * and a device (`slotflip verify --root ...`) accepts the releases signed that way.
 */
import t from 'tap';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeTestImage } from '../../hal/board.js';

const CLI = process.env['SLOTFLIP_CLI'] ?? fileURLToPath(new URL('../../dist/daemon/cli.js', import.meta.url));
const HW = 'acme,board';
if (!existsSync(CLI)) {
  t.fail(`${CLI} is missing: run \`npm run build\` first`);
  process.exit(1);
}

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
interface Run { code: number; out: string; err: string }

/** Runs the CLI; `fd3` is written to file descriptor 3 (the --passphrase-fd 3 channel). */
function cli(argv: string[], opts: { env?: Record<string, string>; fd3?: string } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const env: NodeJS.ProcessEnv = { ...process.env, ...opts.env };
    if (!opts.env?.['SLOTFLIP_KEY_PASSPHRASE']) delete env['SLOTFLIP_KEY_PASSPHRASE'];
    const child = spawn(process.execPath, [CLI, ...argv], { env, stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const fd3 = child.stdio[3] as NodeJS.WritableStream;
    fd3.on('error', () => undefined);
    fd3.end(opts.fd3 ?? '');
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, out, err });
    });
  });
}

const meta = (repo: string): string => join(repo, 'repository', 'metadata');

async function image(dir: string, version: string): Promise<string> {
  const p = join(dir, `os-${version}.img`);
  await writeFile(p, makeTestImage({ version, size: 64 * 1024 }));
  return p;
}

const addRelease = (repo: string, img: string, version: string, env?: Record<string, string>): Promise<Run> =>
  cli(['release', 'add', repo, '--image', img, '--version', version, '--security-version', '1', '--hardware', HW, '--channel', 'stable', '--compression', 'gzip', '--chunk-size', '16384', '--json'], env ? { env } : {});

const verify = (root: string, repo: string): Promise<Run> => cli(['verify', '--root', root, '--repo', join(repo, 'repository'), '--hardware', HW, '--json']);

/** A holder's own machine: a directory with their key (encrypted when a passphrase is given). */
async function holder(base: string, name: string, passphrase?: string): Promise<{ pem: string; pub: string }> {
  const home = join(base, 'holders', name);
  await mkdir(home, { recursive: true });
  const pem = join(home, `${name}.pem`);
  const r = await cli(['repo', 'keygen', '--out', pem, '--json'], passphrase ? { env: { SLOTFLIP_KEY_PASSPHRASE: passphrase } } : {});
  if (r.code !== 0) throw new Error(`keygen ${name}: ${r.err}`);
  return { pem, pub: join(home, `${name}.pub`) };
}

// ---------------------------------------------------------------- SoftHSM2 as the targets key's HSM

const MODULES = ['/usr/lib/softhsm/libsofthsm2.so', '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so', '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so'];
const hsmModule = MODULES.find((m) => existsSync(m));
const haveTools = ((): boolean => {
  try {
    execFileSync('softhsm2-util', ['--version'], { stdio: 'ignore' });
    execFileSync('pkcs11-tool', ['--help'], { stdio: 'ignore' });
    return true;
  } catch (e) {
    return (e as { status?: number }).status !== undefined && (e as { code?: string }).code !== 'ENOENT';
  }
})();

/** A token with one ECDSA P-256 key (id 01); returns the signer file for it and the env the wrapper needs. */
async function hsm(dir: string): Promise<{ signerFile: string; env: Record<string, string> }> {
  const conf = join(dir, 'softhsm2.conf');
  await mkdir(join(dir, 'tokens'), { recursive: true });
  await writeFile(conf, `directories.tokendir = ${join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  const env = { SOFTHSM2_CONF: conf, SLOTFLIP_HSM_PIN: '123456' };
  const run = (cmd: string, args: string[]): string => execFileSync(cmd, args, { env: { ...process.env, ...env }, encoding: 'utf8' });
  run('softhsm2-util', ['--init-token', '--free', '--label', 'slotflip', '--pin', '123456', '--so-pin', '654321']);
  run('pkcs11-tool', ['--module', hsmModule!, '--token-label', 'slotflip', '--login', '--pin', '123456', '--keypairgen', '--key-type', 'EC:prime256v1', '--id', '01', '--label', 'targets']);
  const pubFile = join(dir, 'targets-pub.pem');
  run('pkcs11-tool', ['--module', hsmModule!, '--token-label', 'slotflip', '--read-object', '--type', 'pubkey', '--id', '01', '-o', pubFile + '.der']);
  run('openssl', ['pkey', '-pubin', '-inform', 'DER', '-in', pubFile + '.der', '-out', pubFile]);
  // the wrapper: canonical bytes on stdin, hex signature on stdout (manifests/README.md "Key custody")
  const wrapper = join(dir, 'pkcs11-sign.sh');
  await writeFile(wrapper, [
    '#!/bin/sh',
    '# slotflip external signer: sign stdin with key $1 of the PKCS#11 token "slotflip" in module $2',
    'set -eu',
    'tmp=$(mktemp -d)',
    'trap \'rm -rf "$tmp"\' EXIT',
    'openssl dgst -sha256 -binary > "$tmp/digest"',
    '# ECDSA over the SHA-256 digest; DER signature, as TUF\'s ecdsa-sha2-nistp256 expects',
    'pkcs11-tool --module "$2" --token-label slotflip --login --pin "$SLOTFLIP_HSM_PIN" --sign --mechanism ECDSA --signature-format openssl --id "$1" -i "$tmp/digest" -o "$tmp/sig" >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }',
    'od -An -v -tx1 "$tmp/sig" | tr -d " \\n"',
    '',
  ].join('\n'));
  await chmod(wrapper, 0o755);
  const signerFile = join(dir, 'targets.signer.json');
  await writeFile(signerFile, JSON.stringify({ command: [wrapper, '01', hsmModule!], public: await readFile(pubFile, 'utf8') }, null, 2));
  return { signerFile, env };
}

t.test('root keys held apart, targets key in an HSM, a rotation to new holders; a device accepts the releases', async (t) => {
  // npm test installs softhsm2 and opensc (test/ci/deps.sh): missing is a broken set-up, not a skip
  if (!hsmModule || !haveTools) return t.fail('softhsm2 and opensc are not installed (apt-get install softhsm2 opensc)');
  const dir = t.testdir();
  const h1 = await holder(dir, 'alice', 'alice-secret');
  const h2 = await holder(dir, 'bob', 'bob-secret');
  const h3 = await holder(dir, 'carol');
  t.match(await readFile(h1.pem, 'utf8'), /BEGIN ENCRYPTED PRIVATE KEY/, 'keygen with a passphrase writes an encrypted key');
  t.match(await readFile(h3.pem, 'utf8'), /BEGIN PRIVATE KEY/);
  const { signerFile, env: hsmEnv } = await hsm(join(dir, 'hsm'));

  const repo = join(dir, 'repo');
  const init = await cli(['repo', 'init', repo, '--root-pubkey', h1.pub, '--root-pubkey', h2.pub, '--root-pubkey', h3.pub, '--root-threshold', '2', '--signer', `targets=${signerFile}`, '--json'], { env: hsmEnv });
  t.equal(init.code, 0, `init: ${init.err}`);
  const s = JSON.parse(init.out) as Json;
  t.equal(s['rootVersion'], 0, 'no trusted root yet');
  t.same(s['pendingRoot'], { version: 1, newKeys: { have: 0, need: 2, missing: s['keyIds']['root'] }, published: false });
  const keyFiles = await readdir(join(repo, 'keys'));
  t.notOk(keyFiles.some((n) => n.startsWith('root')), `no root key on the repository machine (${keyFiles.join(' ')})`);
  t.ok(keyFiles.includes('targets.signer.json') && !keyFiles.includes('targets.pem'), 'the targets key is only a signer reference');
  t.notOk(existsSync(join(meta(repo), '1.root.json')), 'root v1 is not published while pending');

  // alice signs with her passphrase on fd 3
  let r = await cli(['repo', 'sign-root', repo, '--key', h1.pem, '--passphrase-fd', '3', '--json'], { fd3: 'alice-secret\n' });
  t.equal(r.code, 0, r.err);
  t.match(JSON.parse(r.out), { version: 1, newKeys: { have: 1, need: 2 }, published: false });
  t.notOk(existsSync(join(meta(repo), 'root.json')), 'one of two: still pending');

  // bob mistypes
  r = await cli(['repo', 'sign-root', repo, '--key', h2.pem], { env: { SLOTFLIP_KEY_PASSPHRASE: 'bob-secreT' } });
  t.not(r.code, 0, 'wrong passphrase: non-zero exit');
  t.match(r.err, /MANIFEST_KEY_PASSPHRASE: .*bob\.pem could not be decrypted: wrong passphrase/);
  r = await cli(['repo', 'sign-root', repo, '--key', h2.pem]);
  t.not(r.code, 0);
  t.match(r.err, /MANIFEST_KEY_PASSPHRASE: .*bob\.pem is encrypted and no passphrase was given/);
  // a key that is no root key
  const mallory = await holder(dir, 'mallory');
  r = await cli(['repo', 'sign-root', repo, '--key', mallory.pem]);
  t.equal(r.code, 2);
  t.match(r.err, /MANIFEST_BAD_ARGUMENT: key [0-9a-f]+ .* is not a root key of pending root v1/);
  t.notOk(existsSync(join(meta(repo), 'root.json')));

  r = await cli(['repo', 'sign-root', repo, '--key', h2.pem, '--json'], { env: { SLOTFLIP_KEY_PASSPHRASE: 'bob-secret' } });
  t.equal(r.code, 0, r.err);
  t.match(JSON.parse(r.out), { version: 1, newKeys: { have: 2, need: 2 }, published: true });
  t.ok(existsSync(join(meta(repo), '1.root.json')) && existsSync(join(meta(repo), 'root.json')), 'the threshold publishes root v1');
  const shipped = join(dir, 'shipped-root.json');
  await writeFile(shipped, await readFile(join(meta(repo), '1.root.json')));

  // a release whose targets metadata is signed by the HSM
  r = await addRelease(repo, await image(dir, '1.1.0'), '1.1.0', hsmEnv);
  t.equal(r.code, 0, `release add through the HSM: ${r.err}`);
  r = await verify(shipped, repo);
  t.equal(r.code, 0, r.out + r.err);
  t.match(JSON.parse(r.out), { ok: true, release: { version: '1.1.0' }, metadata: { root: 1 } });

  // without the HSM's PIN the signer fails: coded, nothing published
  r = await addRelease(repo, await image(dir, '1.2.0'), '1.2.0', { SOFTHSM2_CONF: hsmEnv.SOFTHSM2_CONF, SLOTFLIP_HSM_PIN: '000000' });
  t.not(r.code, 0);
  t.match(r.err, /MANIFEST_SIGNER_FAILED/);

  // root rotation to two new holders: old alice + bob and new dave + erin all sign, on their own machines
  const h4 = await holder(dir, 'dave');
  const h5 = await holder(dir, 'erin', 'erin-secret');
  r = await cli(['repo', 'rotate', repo, '--role', 'root', '--root-pubkey', h4.pub, '--root-pubkey', h5.pub, '--root-threshold', '2', '--json']);
  t.equal(r.code, 0, r.err);
  t.match(JSON.parse(r.out), { rootVersion: 1, pendingRoot: { version: 2, newKeys: { have: 0, need: 2 }, trustedKeys: { have: 0, need: 2 }, published: false } });
  r = await cli(['repo', 'rotate', repo, '--role', 'targets']);
  t.not(r.code, 0, 'one pending root at a time');
  t.match(r.err, /MANIFEST_ROOT_PENDING/);
  r = await cli(['repo', 'sign-root', repo, '--key', h3.pem, '--key', h4.pem, '--json']);
  t.match(JSON.parse(r.out), { version: 2, newKeys: { have: 1, need: 2 }, trustedKeys: { have: 1, need: 2 }, published: false });
  r = await cli(['repo', 'sign-root', repo, '--key', h1.pem, '--json'], { env: { SLOTFLIP_KEY_PASSPHRASE: 'alice-secret' } });
  t.match(JSON.parse(r.out), { version: 2, newKeys: { have: 1, need: 2 }, trustedKeys: { have: 2, need: 2 }, published: false }, 'the old threshold alone does not publish');
  r = await cli(['repo', 'sign-root', repo, '--key', h5.pem, '--json'], { env: { SLOTFLIP_KEY_PASSPHRASE: 'erin-secret' } });
  t.match(JSON.parse(r.out), { version: 2, newKeys: { have: 2, need: 2 }, trustedKeys: { have: 2, need: 2 }, published: true });
  r = await cli(['repo', 'sign-root', repo, '--key', h4.pem]);
  t.equal(r.code, 2, 'nothing left to sign');

  // targets rotation by the new holders: the new key waits in keys/pending until they signed
  r = await cli(['repo', 'rotate', repo, '--role', 'targets', '--json']);
  t.equal(r.code, 0, r.err);
  t.match(JSON.parse(r.out), { pendingRoot: { version: 3, published: false } });
  r = await addRelease(repo, await image(dir, '1.2.0'), '1.2.0', hsmEnv);
  t.equal(r.code, 0, `the HSM key still signs while the rotation is pending: ${r.err}`);
  r = await cli(['repo', 'sign-root', repo, '--key', h4.pem]);
  t.equal(r.code, 0, r.err);
  r = await cli(['repo', 'sign-root', repo, '--key', h5.pem, '--json'], { env: { SLOTFLIP_KEY_PASSPHRASE: 'erin-secret' } });
  t.match(JSON.parse(r.out), { version: 3, published: true });
  t.ok(existsSync(join(repo, 'keys', 'targets.pem')), 'the new targets key is in place');

  // a device that shipped root v1 walks to v3 and accepts the newest release
  r = await verify(shipped, repo);
  t.equal(r.code, 0, r.out + r.err);
  t.match(JSON.parse(r.out), { ok: true, release: { version: '1.2.0' }, metadata: { root: 3 } });

  // a trusted-time reset is a root version too: pending until the holders signed it
  r = await cli(['repo', 'time-reset', repo, '--json']);
  t.equal(r.code, 0, r.err);
  t.match(JSON.parse(r.out), { rootVersion: 3, pendingRoot: { version: 4, published: false } });
  // both holders at one machine, one command (the passphrase opens erin.pem; dave.pem is plain)
  r = await cli(['repo', 'sign-root', repo, '--key', h4.pem, '--key', h5.pem, '--json'], { env: { SLOTFLIP_KEY_PASSPHRASE: 'erin-secret' } });
  t.equal(r.code, 0, r.err);
  t.match(JSON.parse(r.out), { version: 4, newKeys: { have: 2, need: 2 }, trustedKeys: { have: 2, need: 2 }, published: true });
  r = await verify(shipped, repo);
  t.equal(r.code, 0, r.out + r.err);
  t.match(JSON.parse(r.out), { metadata: { root: 4 }, warnings: [{ code: 'MANIFEST_TIME_RESET' }] });
});

t.test('encrypted repository keys: the right passphrase signs, a wrong or missing one is MANIFEST_KEY_PASSPHRASE', async (t) => {
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  let r = await cli(['repo', 'init', repo, '--passphrase-fd', '3'], { fd3: 'correct horse\n' });
  t.equal(r.code, 0, r.err);
  for (const n of (await readdir(join(repo, 'keys'))).filter((x) => x.endsWith('.pem'))) {
    t.match(await readFile(join(repo, 'keys', n), 'utf8'), /^-----BEGIN ENCRYPTED PRIVATE KEY-----/, `${n} is encrypted`);
  }
  r = await cli(['repo', 'timestamp', repo], { env: { SLOTFLIP_KEY_PASSPHRASE: 'wrong horse' } });
  t.not(r.code, 0, 'wrong passphrase: non-zero exit');
  t.match(r.err, /MANIFEST_KEY_PASSPHRASE: .*timestamp\.pem could not be decrypted: wrong passphrase/);
  r = await cli(['repo', 'timestamp', repo]);
  t.not(r.code, 0);
  t.match(r.err, /MANIFEST_KEY_PASSPHRASE: .*timestamp\.pem is encrypted and no passphrase was given/);
  r = await cli(['repo', 'timestamp', repo, '--passphrase-fd', '3'], { fd3: 'correct horse' });
  t.equal(r.code, 0, r.err);
  r = await addRelease(repo, await image(dir, '1.1.0'), '1.1.0', { SLOTFLIP_KEY_PASSPHRASE: 'correct horse' });
  t.equal(r.code, 0, r.err);
  r = await verify(join(meta(repo), '1.root.json'), repo);
  t.equal(r.code, 0, r.out + r.err);
});

t.test('an external signer holding another key is refused before anything is published', async (t) => {
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  t.equal((await cli(['repo', 'init', repo])).code, 0);
  // a signer that signs with the snapshot key while claiming the targets key
  const script = join(dir, 'sign.mjs');
  await writeFile(script, [
    "import { createPrivateKey, sign } from 'node:crypto';",
    "import { readFileSync } from 'node:fs';",
    "const data = readFileSync(0);",
    "process.stdout.write(sign(null, data, createPrivateKey(readFileSync(process.argv[2], 'utf8'))).toString('hex'));",
    '',
  ].join('\n'));
  const pub = execFileSync('openssl', ['pkey', '-in', join(repo, 'keys', 'targets.pem'), '-pubout'], { encoding: 'utf8' });
  await writeFile(join(repo, 'keys', 'targets.signer.json'), JSON.stringify({ command: [process.execPath, script, join(repo, 'keys', 'snapshot.pem')], public: pub }));
  await writeFile(join(dir, 'targets.pem.bak'), await readFile(join(repo, 'keys', 'targets.pem')));
  execFileSync('rm', [join(repo, 'keys', 'targets.pem')]);
  const before = (await readdir(meta(repo))).sort();
  let r = await addRelease(repo, await image(dir, '1.1.0'), '1.1.0');
  t.not(r.code, 0);
  t.match(r.err, /MANIFEST_SIGNER_FAILED: .*does not verify with key/);
  t.same((await readdir(meta(repo))).sort(), before, 'no metadata written');
  // the same protocol with the right key signs, and a device accepts it
  await writeFile(join(repo, 'keys', 'targets.signer.json'), JSON.stringify({ command: [process.execPath, script, join(dir, 'targets.pem.bak')], public: pub }));
  r = await addRelease(repo, await image(dir, '1.1.0'), '1.1.0');
  t.equal(r.code, 0, r.err);
  r = await verify(join(meta(repo), '1.root.json'), repo);
  t.equal(r.code, 0, r.out + r.err);
});

/**
 * Signed fleet commands at the function level (the outside view is test/e2e/fleet-factory-reset):
 * what the pure verifier refuses that the e2e test does not reach (a threshold of two targets keys,
 * a validity longer than 7 days, unknown fields, an expired root), and the device's own limits
 * (an update attempt in flight: DAEMON_COMMAND_BUSY), each leaving the state dir as it was.
 */
import t from 'tap';
import { generateKeyPairSync, sign as edSign } from 'node:crypto';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Root } from '@tufjs/models';
import { buildResetCommand, verifyCommand, type FactoryResetCommand } from '../../manifests/command.js';
import { signResetCommand } from '../../manifests/command-publish.js';
import { canonicalJson, keyIdOf, publicKeyJson } from '../../manifests/keys.js';
import { initRepo } from '../../manifests/repo.js';
import { runFleetCommand } from '../../daemon/fleet-command.js';
import { resolveConfig } from '../../daemon/config.js';

const NOW = Date.parse('2026-05-01T12:00:00Z');
const HOUR = 3_600_000;

function key(): { keyid: string; sign: (b: Buffer) => string; json: ReturnType<typeof publicKeyJson> } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const der = publicKey.export({ format: 'der', type: 'spki' });
  const hex = der.subarray(der.length - 32).toString('hex');
  return { keyid: keyIdOf(hex), json: publicKeyJson(hex), sign: (b) => edSign(null, b, privateKey).toString('hex') };
}

function rootWith(targets: ReturnType<typeof key>[], threshold: number, expires = '2027-01-01T00:00:00Z'): Root {
  const keys = Object.fromEntries(targets.map((k) => [k.keyid, k.json]));
  const ids = targets.map((k) => k.keyid);
  return Root.fromJSON({
    _type: 'root', spec_version: '1.0.31', version: 3, expires, consistent_snapshot: true, keys,
    roles: { root: { keyids: ids, threshold: 1 }, targets: { keyids: ids, threshold }, snapshot: { keyids: ids, threshold: 1 }, timestamp: { keyids: ids, threshold: 1 } },
  } as never);
}

function envelope(signed: unknown, signers: ReturnType<typeof key>[]): Uint8Array {
  const bytes = Buffer.from(canonicalJson(signed));
  return Buffer.from(JSON.stringify({ signed, signatures: signers.map((k) => ({ keyid: k.keyid, sig: k.sign(bytes) })) }));
}

const cmd = (over: Partial<FactoryResetCommand> = {}): FactoryResetCommand => ({ ...buildResetCommand({ deviceId: 'gw-1', mode: 'full', reboot: true, nonce: 'ab'.repeat(16), now: NOW, validMs: HOUR }), ...over });

t.test('verifyCommand: threshold, validity, fields, root expiry', async (t) => {
  const [k1, k2] = [key(), key()];
  const two = rootWith([k1!, k2!], 2);
  const at = NOW + 1000;
  const v = (bytes: Uint8Array, root = two, when = at) => verifyCommand(bytes, { root, deviceId: 'gw-1', at: when, where: 'cmd' });
  t.match(v(envelope(cmd(), [k1!])), { ok: false, code: 'MANIFEST_COMMAND_SIGNATURE' }, 'one of two required targets keys: refused');
  t.match(v(envelope(cmd(), [k1!, k1!])), { ok: false, code: 'MANIFEST_COMMAND_INVALID' }, 'the same key twice is not two signatures');
  t.match(v(envelope(cmd(), [k1!, k2!])), { ok: true, command: { mode: 'full', deviceId: 'gw-1' } }, 'a threshold of two: accepted');
  const long = cmd({ expires: new Date(NOW + 8 * 24 * HOUR).toISOString() });
  t.match(v(envelope(long, [k1!, k2!])), { ok: false, code: 'MANIFEST_COMMAND_INVALID', message: /within 7 days/ }, 'valid for 8 days: refused, signed or not');
  t.match(v(envelope({ ...cmd(), wipeAlso: '/' }, [k1!, k2!])), { ok: false, code: 'MANIFEST_COMMAND_INVALID', message: /unknown field/ }, 'an unknown field: refused');
  t.match(v(envelope(cmd({ mode: 'everything' as never }), [k1!, k2!])), { ok: false, code: 'MANIFEST_COMMAND_INVALID' }, 'an unknown mode');
  t.match(v(envelope({ ...cmd(), _type: 'targets' }, [k1!, k2!])), { ok: false, code: 'MANIFEST_COMMAND_INVALID', message: /_type/ }, 'TUF metadata is no command');
  t.match(v(Buffer.alloc(17 * 1024, 0x20)), { ok: false, code: 'MANIFEST_COMMAND_INVALID', message: /more than/ }, 'too large: refused before parsing');
  const oldRoot = rootWith([k1!, k2!], 2, '2026-05-01T12:00:00Z');
  t.match(v(envelope(cmd(), [k1!, k2!]), oldRoot), { ok: false, code: 'MANIFEST_COMMAND_EXPIRED', message: /trusted root v3 expired/ }, 'an expired root vouches for nothing');
  t.match(v(envelope(cmd(), [k1!, k2!]), two, NOW + HOUR), { ok: false, code: 'MANIFEST_COMMAND_EXPIRED' }, 'at its expiry: refused');
});

t.test('runFleetCommand: busy during an update attempt, then accepted once idle; nothing written when refused', async (t) => {
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const data = join(dir, 'data');
  const stateDir = join(data, 'var/lib/slotflip');
  await mkdir(stateDir, { recursive: true });
  const config = await resolveConfig({
    deviceId: 'gw-1', hardware: 'acme,board', stateDir,
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'dir', path: join(repo, 'repository') }] },
    board: { slots: { A: { path: join(dir, 'a') }, B: { path: join(dir, 'b') } }, boot: { type: 'emulated', stateFile: join(dir, 'board/boot.json') } },
    health: { allowNoChecks: true },
    data: { dir: data },
  });
  const root = Root.fromJSON((JSON.parse(await readFile(join(repo, 'repository/metadata/1.root.json'), 'utf8')) as { signed: never }).signed);
  const deps = { config, now: () => NOW, where: 'cmd', trust: async () => ({ root, trustedTime: NOW }) };
  const signed = await signResetCommand(repo, { deviceId: 'gw-1', mode: 'keep-identity', reboot: false, validMs: HOUR, now: () => NOW });
  const bytes = Buffer.from(JSON.stringify(signed));
  const record = { schema: 1, savedAt: 0, saves: 3, phase: 'validating', attempt: null, transitions: 5, attempts: 1, committedSecurityVersion: 2, rolledBack: [], installed: {}, history: [] };
  await writeFile(join(stateDir, 'update-record.json'), JSON.stringify(record));
  const busy = await runFleetCommand(bytes, deps);
  t.match(busy, { accepted: false, code: 'DAEMON_COMMAND_BUSY', message: /phase validating/ });
  t.same((await readdir(data)).sort(), ['var'], 'no marker');
  t.same((await readdir(stateDir)).sort(), ['update-record.json'], 'no replay memory written');
  await writeFile(join(stateDir, 'update-record.json'), JSON.stringify({ ...record, phase: 'idle' }));
  const ok = await runFleetCommand(bytes, deps);
  t.match(ok, { accepted: true, command: { mode: 'keep-identity' }, marker: { mode: 'keep-identity', floor: 2, stateDir: 'var/lib/slotflip' } });
  t.match(JSON.parse(await readFile(join(stateDir, 'fleet-commands.json'), 'utf8')), { seen: [{ nonce: signed.signed.nonce }] });
  t.match(await runFleetCommand(bytes, deps), { accepted: false, code: 'DAEMON_COMMAND_REPLAYED' }, 'once only');
  await t.rejects(signResetCommand(repo, { deviceId: 'gw-1', mode: 'full', reboot: true, validMs: 8 * 24 * HOUR }), { code: 'MANIFEST_BAD_ARGUMENT' }, 'the tool refuses what devices would');
});

/**
 * The offline freshness statement (offline.json) at the trust-client level: honoured only from a
 * local source, only for the exact timestamp/snapshot it names, only until its own expiry, only
 * when a threshold of the trusted targets keys signed it. The CLI-level proof (release export,
 * install from a stick) is in test/integration/trust-cli-attacks.test.ts.
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { RepoSim } from '../../manifests/sim.js';
import { OFFLINE_FILE, OFFLINE_TYPE, TrustClient, dirSource, memorySource } from '../../manifests/client.js';
import { signEnvelope, type SigningKey } from '../../manifests/keys.js';

const T0 = Date.parse('2026-06-01T00:00:00Z');
const DAY = 86_400_000;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function statement(sim: RepoSim, keys: SigningKey[], expires: number, edit: (s: Record<string, unknown>) => void = () => undefined): Buffer {
  const ts = sim.files.get('timestamp.json')!;
  const snapName = `${sim.snapshot.version}.snapshot.json`;
  const signed: Record<string, unknown> = {
    _type: OFFLINE_TYPE,
    version: 1,
    issued: new Date(sim.now).toISOString(),
    expires: new Date(expires).toISOString(),
    timestamp: { version: sim.timestamp.version, sha256: sha(ts) },
    snapshot: { version: sim.snapshot.version, sha256: sha(sim.files.get(snapName)!) },
  };
  edit(signed);
  return Buffer.from(JSON.stringify(signEnvelope(signed, keys)));
}

async function stick(dir: string, sim: RepoSim, offline?: Buffer): Promise<string> {
  const md = join(dir, 'metadata');
  await mkdir(md, { recursive: true });
  for (const [n, b] of sim.files) await writeFile(join(md, n), b);
  if (offline) await writeFile(join(md, OFFLINE_FILE), offline);
  return md;
}

async function setup(dir: string): Promise<{ sim: RepoSim; refresh: (source: ReturnType<typeof dirSource>, now: number) => ReturnType<TrustClient['refresh']> }> {
  const sim = new RepoSim(T0);
  const shipped = join(dir, 'shipped-root.json');
  await writeFile(shipped, sim.publishAll());
  let n = 0;
  return { sim, refresh: (source, now) => new TrustClient({ trustedDir: join(dir, `trusted-${n++}`), shippedRootPath: shipped, source, now: () => now }).refresh() };
}

t.test('a week-old stick with a statement from the targets key refreshes; without one it is expired', async (t) => {
  const dir = t.testdir();
  const { sim, refresh } = await setup(dir);
  const targetsKeys = sim.signers.get('targets')!;
  const md = await stick(join(dir, 'a'), sim, statement(sim, targetsKeys, T0 + 30 * DAY));
  t.ok(await refresh(dirSource(md), T0 + 7 * DAY), 'accepted at day 7');
  await t.rejects(refresh(dirSource(md), T0 + 31 * DAY), { code: 'MANIFEST_OFFLINE_EXPIRED' }, 'refused past its own expiry');
  const bare = await stick(join(dir, 'b'), sim);
  await t.rejects(refresh(dirSource(bare), T0 + 7 * DAY), { code: 'MANIFEST_EXPIRED' }, 'no statement: the freeze rule applies');
});

t.test('only from local media', async (t) => {
  const dir = t.testdir();
  const { sim, refresh } = await setup(dir);
  const map = new Map(sim.files);
  map.set(OFFLINE_FILE, statement(sim, sim.signers.get('targets')!, T0 + 30 * DAY));
  await t.rejects(refresh(memorySource(map), T0 + 7 * DAY), { code: 'MANIFEST_EXPIRED' }, 'a retained/HTTP copy of offline.json is ignored');
});

t.test('signed by another role, or naming other metadata: refused', async (t) => {
  const dir = t.testdir();
  const { sim, refresh } = await setup(dir);
  const cases: [string, Buffer][] = [
    ['timestamp key', statement(sim, sim.signers.get('timestamp')!, T0 + 30 * DAY)],
    ['snapshot key', statement(sim, sim.signers.get('snapshot')!, T0 + 30 * DAY)],
    ['other timestamp bytes', statement(sim, sim.signers.get('targets')!, T0 + 30 * DAY, (s) => { s['timestamp'] = { version: sim.timestamp.version, sha256: 'ab'.repeat(32) }; })],
    ['wrong type', statement(sim, sim.signers.get('targets')!, T0 + 30 * DAY, (s) => { s['_type'] = 'timestamp'; })],
    ['tampered after signing', Buffer.from(statement(sim, sim.signers.get('targets')!, T0 + 30 * DAY).toString().replace(/"expires":"[^"]+"/, '"expires":"2099-01-01T00:00:00.000Z"'))],
    ['not JSON', Buffer.from('{')],
  ];
  for (const [i, [name, doc]] of cases.entries()) {
    const md = await stick(join(dir, `s${i}`), sim, doc);
    await t.rejects(refresh(dirSource(md), T0 + 7 * DAY), { code: 'MANIFEST_OFFLINE_INVALID' }, name);
  }
});

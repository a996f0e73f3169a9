/**
 * fast-check properties for every parser that reads untrusted input: TUF metadata (HTTP, MQTT,
 * USB), release custom blocks, the device config, MQTT topics, bootloader tool output and on-disk
 * environment blocks, kernel command lines, boot state files, the update record, the outbox, and test
 * image headers. Each must return a result or throw a coded error (`isCoded`), never anything else.
 * (A hang shows up as the run's timeout.)
 *
 * Shared by test/unit/fuzz-parsers.test.ts (few runs, in `npm test`) and fuzz-long.ts (many runs).
 */
import fc from 'fast-check';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MetadataKind, TargetFile } from '@tufjs/models';
import { isCoded } from '../../hal/errors.js';
import { decodeEnvBlock, encodeEnvBlock, parseFwPrintenv, pickRedundantCopy } from '../../hal/uboot-env.js';
import { encodeGrubEnvBlock, parseGrubEditenvList, parseGrubEnvBlock } from '../../hal/grub-env.js';
import { parseCmdline, slotFromCmdline } from '../../hal/cmdline.js';
import { parseEmulatedState, formatEmulatedState, initialEmulatedState } from '../../hal/backends/emulated.js';
import { parseAutoboot, parseTrybootFlag } from '../../hal/backends/rpi-tryboot.js';
import { parseCustomStateFile } from '../../hal/backends/custom-reference.js';
import { parseCustomBooted, parseCustomState } from '../../hal/backends/custom.js';
import { parseEntryName, parseLoaderConf } from '../../hal/backends/systemd-boot.js';
import { makeTestImage, readImageHeader } from '../../hal/image.js';
import { parseMetadata, TrustClient, memorySource } from '../../manifests/client.js';
import { releaseFromTarget } from '../../manifests/release.js';
import { initRepo, addRelease } from '../../manifests/repo.js';
import { validateConfig, resolveConfig } from '../../daemon/config.js';
import { parseRecord } from '../../daemon/state-store.js';
import { FileOutboxStore } from '../../daemon/outbox.js';
import { commandOf, deviceTopics, metaFileOf } from '../../daemon/topics.js';

export interface FuzzTarget {
  name: string;
  property: fc.IRawProperty<unknown[], boolean>;
}

/** Runs `f`; a thrown error must be coded. */
function total(name: string, f: () => unknown): void {
  try {
    f();
  } catch (e) {
    if (!isCoded(e)) throw new Error(`${name} threw an uncoded ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
  }
}
async function totalAsync(name: string, f: () => Promise<unknown>): Promise<void> {
  try {
    await f();
  } catch (e) {
    if (!isCoded(e)) throw new Error(`${name} threw an uncoded ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
  }
}

/** Random edits of a valid sample: byte flips, insertions, deletions, truncation. */
export function mutated(sample: Uint8Array): fc.Arbitrary<Buffer> {
  const op = fc.oneof(
    fc.record({ k: fc.constant('set' as const), at: fc.nat(), b: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ k: fc.constant('ins' as const), at: fc.nat(), s: fc.constantFrom('"', '{', '}', '[', ']', ',', ':', '\\', '\n', '\0', '=', '-1', '1e308', 'null', '"x"', '\u00ff', '\ud800') }),
    fc.record({ k: fc.constant('del' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 16 }) }),
    fc.record({ k: fc.constant('cut' as const), at: fc.nat() }),
  );
  return fc.array(op, { minLength: 1, maxLength: 6 }).map((ops) => {
    let b = Buffer.from(sample);
    for (const o of ops) {
      const at = b.length ? o.at % (b.length + 1) : 0;
      if (o.k === 'set' && b.length) b[at % b.length] = o.b;
      else if (o.k === 'ins') b = Buffer.concat([b.subarray(0, at), Buffer.from(o.s, 'utf8'), b.subarray(at)]);
      else if (o.k === 'del') b = Buffer.concat([b.subarray(0, at), b.subarray(at + o.n)]);
      else if (o.k === 'cut') b = b.subarray(0, at);
    }
    return b;
  });
}

const bytesOrMutated = (sample: Uint8Array) => fc.oneof(fc.uint8Array({ maxLength: 2048 }).map((u) => Buffer.from(u)), mutated(sample));
const textOrMutated = (sample: string) => fc.oneof(fc.string({ maxLength: 512, unit: 'binary' }), mutated(Buffer.from(sample, 'utf8')).map((b) => b.toString('utf8')));

/** JSON values shaped like a target's custom block, sometimes valid, mostly not. */
function customArb(valid: Record<string, unknown>): fc.Arbitrary<unknown> {
  const anyJson = fc.jsonValue({ maxDepth: 3 });
  const field = fc.constantFrom('slotflip', 'hardware', 'version', 'securityVersion', 'channel', 'devices', 'rollout', 'payload');
  const payloadField = fc.constantFrom('size', 'chunkSize', 'chunks', 'compression', 'sha256');
  return fc.oneof(
    anyJson,
    fc.tuple(field, anyJson).map(([k, v]) => ({ ...valid, [k]: v })),
    fc.tuple(payloadField, anyJson).map(([k, v]) => ({ ...valid, payload: { ...(valid['payload'] as object), [k]: v } })),
    fc.tuple(fc.integer({ min: -2, max: 2 ** 53 }), fc.integer({ min: -2, max: 2 ** 40 })).map(([size, chunkSize]) => ({ ...valid, payload: { ...(valid['payload'] as object), size, chunkSize } })),
  );
}

export interface Corpus {
  root: Buffer;
  timestamp: Buffer;
  snapshot: Buffer;
  targets: Buffer;
  custom: Record<string, unknown>;
  config: Record<string, unknown>;
  dir: string;
}

/** Valid samples to mutate: a real signed repository with one release, a valid config. */
export async function makeCorpus(dir: string): Promise<Corpus> {
  const repo = join(dir, 'repo');
  await initRepo(repo, { rootKeys: 1, rootThreshold: 1 });
  const img = join(dir, 'img');
  await writeFile(img, makeTestImage({ version: '1.0.1', size: 9000 }));
  const added = await addRelease(repo, { image: img, version: '1.0.1', securityVersion: 1, hardware: ['acme,fuzz'], channel: 'stable', compression: 'none', chunkSize: 4096 });
  const meta = join(repo, 'repository', 'metadata');
  const read = (f: string) => readFile(join(meta, f));
  const config = {
    deviceId: 'fuzz-1', hardware: 'acme,fuzz', stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(meta, '1.root.json'), sources: [{ type: 'http', url: 'http://127.0.0.1:1/' }] },
    board: { slots: { A: { path: join(dir, 'a.img'), size: 65536 }, B: { path: join(dir, 'b.img'), size: 65536 } }, boot: { type: 'emulated', stateFile: join(dir, 'boot.json') }, tries: 3 },
  };
  return {
    root: await read('1.root.json'),
    timestamp: await read('timestamp.json'),
    snapshot: await read(`${added.targetsVersion}.snapshot.json`).catch(() => read('1.snapshot.json')),
    targets: await read(`${added.targetsVersion}.targets.json`),
    custom: added.custom as unknown as Record<string, unknown>,
    config,
    dir,
  };
}

export function fuzzTargets(c: Corpus): FuzzTarget[] {
  const T: FuzzTarget[] = [];
  const add = (name: string, property: fc.IRawProperty<unknown[], boolean>) => T.push({ name, property: property as fc.IRawProperty<unknown[], boolean> });
  const kinds = [
    [MetadataKind.Root, c.root],
    [MetadataKind.Timestamp, c.timestamp],
    [MetadataKind.Snapshot, c.snapshot],
    [MetadataKind.Targets, c.targets],
  ] as const;
  for (const [kind, sample] of kinds) {
    add(`parseMetadata(${kind})`, fc.property(bytesOrMutated(sample), (b) => {
      total('parseMetadata', () => parseMetadata(b, kind as MetadataKind.Root, 'fuzz.json'));
      return true;
    }) as never);
  }
  add('releaseFromTarget', fc.property(customArb(c.custom), fc.string({ maxLength: 40 }), fc.integer({ min: 0, max: 2 ** 40 }), (custom, path, length) => {
    const r = releaseFromTarget(new TargetFile({ path: path || 'x', length, hashes: { sha256: 'ab'.repeat(32) }, unrecognizedFields: { custom: custom as never } }));
    if (!r || !['release', 'not-slotflip', 'invalid'].includes(r.kind)) throw new Error(`releaseFromTarget returned ${JSON.stringify(r)}`);
    return true;
  }) as never);
  // metadata as MQTT (or any source) delivers it: a whole refresh over mutated files
  let n = 0;
  add('TrustClient.refresh over mutated metadata (MQTT retained messages)', fc.asyncProperty(fc.constantFrom('timestamp.json', '2.root.json', 'snapshot', 'targets'), mutated(c.timestamp), async (which, bytes) => {
    const files = new Map<string, Uint8Array>([['timestamp.json', c.timestamp]]);
    const snapName = `${JSON.parse(c.timestamp.toString()).signed.meta['snapshot.json'].version}.snapshot.json`;
    const snap = JSON.parse(c.snapshot.toString()) as { signed: { meta: Record<string, { version: number }> } };
    const targetsName = `${snap.signed.meta['targets.json']!.version}.targets.json`;
    files.set(snapName, c.snapshot);
    files.set(targetsName, c.targets);
    const key = which === 'snapshot' ? snapName : which === 'targets' ? targetsName : which;
    const sample = key === 'timestamp.json' ? bytes : Buffer.from(bytes.toString('latin1').length % 2 ? c.snapshot : c.targets);
    files.set(key, which === 'timestamp.json' ? bytes : sample.subarray(0, Math.max(0, sample.length - (bytes.length % 50))));
    const trusted = join(c.dir, 'trusted', String(n++));
    await mkdir(trusted, { recursive: true });
    const tc = new TrustClient({ trustedDir: trusted, shippedRootPath: join(c.dir, 'repo', 'repository', 'metadata', '1.root.json'), source: memorySource(files), now: Date.now });
    await totalAsync('TrustClient.refresh', () => tc.refresh());
    return true;
  }) as never);
  add('validateConfig', fc.property(fc.oneof(fc.jsonValue({ maxDepth: 4 }), fc.tuple(fc.constantFrom('deviceId', 'hardware', 'trust', 'board', 'health', 'policies', 'poll', 'reboot', 'log', 'broker', 'stateDir', 'channel'), fc.jsonValue({ maxDepth: 3 })).map(([k, v]) => ({ ...c.config, [k]: v }))), (v) => {
    const r = validateConfig(v);
    if (typeof r?.ok !== 'boolean') throw new Error('validateConfig returned no verdict');
    if (!r.ok && r.errors.length === 0) throw new Error('validateConfig refused without listing a problem');
    return true;
  }) as never);
  add('resolveConfig', fc.asyncProperty(fc.tuple(fc.constantFrom('poll', 'policies', 'health', 'board', 'trust', 'hardware'), fc.jsonValue({ maxDepth: 3 })).map(([k, v]) => ({ ...c.config, [k]: v })), async (v) => {
    await totalAsync('resolveConfig', () => resolveConfig(v, 'fuzz.json'));
    return true;
  }) as never);
  add('metaFileOf / commandOf (MQTT topics)', fc.property(fc.oneof(fc.string({ maxLength: 120 }), fc.string({ maxLength: 40 }).map((s) => `slotflip/v1/meta/${s}`), fc.string({ maxLength: 40 }).map((s) => `slotflip/v1/devices/d1/cmd/${s}`)), (topic) => {
    total('metaFileOf', () => metaFileOf(topic));
    total('commandOf', () => commandOf(deviceTopics('d1'), topic));
    const f = metaFileOf(topic);
    if (f !== undefined && (f.includes('/') || f === '..' || f === '.' || f.includes('\0'))) throw new Error(`metaFileOf let through ${JSON.stringify(f)}`);
    return true;
  }) as never);
  add('parseFwPrintenv', fc.property(textOrMutated('BOOT_ORDER=A B\nBOOT_A_LEFT=3\nbootcmd=run rauc_boot\n'), (s) => { total('parseFwPrintenv', () => parseFwPrintenv(s)); return true; }) as never);
  const envBlock = encodeEnvBlock(new Map([['BOOT_ORDER', 'A B'], ['BOOT_A_LEFT', '3']]), 256, true, 7);
  add('decodeEnvBlock + pickRedundantCopy', fc.property(bytesOrMutated(envBlock), bytesOrMutated(envBlock), fc.boolean(), (a, b, red) => {
    total('decodeEnvBlock', () => {
      const ca = decodeEnvBlock(a, red);
      const cb = decodeEnvBlock(b, red);
      const p = pickRedundantCopy(ca, cb);
      if (p !== undefined && p !== 0 && p !== 1) throw new Error(`pickRedundantCopy gave ${String(p)}`);
      if (p !== undefined && ![ca, cb][p]!.crcOk) throw new Error('pickRedundantCopy chose a copy with a bad CRC');
    });
    return true;
  }) as never);
  add('parseGrubEditenvList', fc.property(textOrMutated('boot_counter=2\nboot_success=0\nslotflip_slot=B\n'), (s) => { total('parseGrubEditenvList', () => parseGrubEditenvList(s)); return true; }) as never);
  const grubBlock = encodeGrubEnvBlock(new Map([['boot_counter', '2'], ['x', 'a\\b']]));
  add('parseGrubEnvBlock', fc.property(fc.oneof(bytesOrMutated(grubBlock), mutated(grubBlock).map((b) => Buffer.concat([b, Buffer.alloc(1024, 0x23)]).subarray(0, 1024))), (b) => { total('parseGrubEnvBlock', () => parseGrubEnvBlock(b)); return true; }) as never);
  add('parseCmdline / slotFromCmdline', fc.property(textOrMutated('console=ttyS0 root=/dev/mmcblk0p2 rauc.slot=A quiet "a=b c"'), fc.string({ maxLength: 10 }), (s, key) => {
    total('parseCmdline', () => parseCmdline(s));
    total('slotFromCmdline', () => slotFromCmdline(s, { key: key || 'rauc.slot' }));
    return true;
  }) as never);
  add('parseEmulatedState', fc.property(textOrMutated(formatEmulatedState(initialEmulatedState())), (s) => { total('parseEmulatedState', () => parseEmulatedState(s)); return true; }) as never);
  add('parseAutoboot / parseTrybootFlag', fc.property(textOrMutated('[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n'), fc.uint8Array({ maxLength: 8 }), (s, f) => {
    total('parseAutoboot', () => parseAutoboot(s));
    total('parseTrybootFlag', () => parseTrybootFlag(f));
    return true;
  }) as never);
  add('custom backend output', fc.property(textOrMutated('A\n'), textOrMutated('trial 2 1\n'), textOrMutated('primary A\nA good\nB trial 2\n'), (a, b, s) => {
    total('parseCustomBooted', () => parseCustomBooted(a));
    total('parseCustomState', () => parseCustomState(b));
    total('parseCustomStateFile', () => parseCustomStateFile(s));
    return true;
  }) as never);
  add('systemd-boot entry names / loader.conf', fc.property(textOrMutated('slotflip-a+2-1.conf'), textOrMutated('default slotflip-a*\ntimeout 0\n# c\n'), (e, l) => {
    total('parseEntryName', () => parseEntryName(e));
    total('parseLoaderConf', () => parseLoaderConf(l));
    return true;
  }) as never);
  const record = JSON.stringify({ schema: 1, savedAt: 1, saves: 3, phase: 'downloading', attempt: { number: 1 }, transitions: 2, attempts: 1, committedSecurityVersion: 0, rolledBack: [], installed: {}, history: [] });
  add('parseRecord (update record on disk)', fc.property(textOrMutated(record), (s) => { total('parseRecord', () => parseRecord(s, '/fuzz/update-record.json')); return true; }) as never);
  let ob = 0;
  add('FileOutboxStore.load (outbox on disk)', fc.asyncProperty(bytesOrMutated(Buffer.from(JSON.stringify({ sha256: 'x', body: '{"schema":1,"nextSeq":2,"entries":[]}' }))), async (b) => {
    const dir = join(c.dir, 'outbox', String(ob++));
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'outbox.json'), b);
    await totalAsync('FileOutboxStore.load', () => new FileOutboxStore(dir, () => 1).load());
    return true;
  }) as never);
  const img = makeTestImage({ version: '9.9.9', size: 4200 });
  add('readImageHeader (slot image header)', fc.property(bytesOrMutated(img.subarray(0, 4096)), (b) => {
    total('readImageHeader', () => {
      const h = readImageHeader(b);
      if (h !== undefined && (typeof h.version !== 'string' || !Number.isSafeInteger(h.size))) throw new Error('readImageHeader returned a malformed header');
    });
    return true;
  }) as never);
  return T;
}

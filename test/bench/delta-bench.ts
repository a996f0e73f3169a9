/**
 * `npm run bench:delta`: what a device holding OLD downloads to get NEW, for pairs of 1 GiB ext4
 * root images built from scratch from real Debian packages (test/bench/delta-images.sh), as % of
 * NEW compressed whole with `zstd -19`; plus HTTP requests, wall time and peak RSS of the client.
 *
 * Mechanisms, each a real client against a real HTTP server on loopback (`repo serve`, which counts
 * the bytes it sends and the requests):
 *   slotflip full   installPayload of the 4 MiB-frame zstd payload (`release add` defaults)
 *   slotflip delta  installDelta: the running slot cut into CDC chunks, the target probed, coalesced
 *                   multi-range fetches of the pack; run as the daemon runs it (interpreted, the cut's
 *                   loops as WebAssembly; given the full payload's length, so slots without a seed
 *                   index are sampled first to judge whether the delta is worth it)
 *   casync 16 KiB   `casync extract --seed=OLD` from an HTTP chunk store (index bytes included)
 *   zchunk          `zckdl -s OLD.zck` (the device keeps OLD as a zchunk file)
 *
 * Needs root (image builds), debootstrap's base from the full-OS lane (built if missing), and the
 * Debian packages casync and zchunk (installed here with apt-get when missing; the bench is not part
 * of npm test, so test/ci/deps.sh does not install them). Everything built is cached under
 * ~/.cache/slotflip-delta ($SLOTFLIP_DELTA_CACHE): reruns only measure.
 *
 *   npm run bench:delta [-- --pairs config,onepkg] [--json out.json] [--level N] [--chunking dir|plain]
 *        [--approx-denominator] [--format 1,2]
 *
 * --level: zstd level of the delta pack's frames (default DEFAULT_DELTA_LEVEL, as `release add`).
 * --chunking: `dir` (default, as `release add`: EXT4_CDC, 16/64/256 KiB, ext4 directory blocks on their own) or
 * `plain` (4/16/64 KiB FastCDC alone, what releases published before that use). --approx-denominator: when NEW's `zstd -19` size is not cached
 * yet, divide by OLD's instead (marked ≈; the pairs differ by a few MB of 1 GiB).
 * --format: delta index formats to measure in one run (default: what `release add` writes, 2): 1 as
 * published before format 2 (no x86-filtered frames, no thin index); 2 with x86-filtered frames and
 * the thin index written against OLD's (manifests/delta-thin.ts), which the device uses where it holds
 * OLD's index (the kept and published rows). Rows are suffixed `f1` / `f2` when both are measured.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { access, copyFile, mkdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { buildPayload, DEFAULT_CHUNK_SIZE } from '../../manifests/payload.js';
import { buildDelta, DEFAULT_DELTA_LEVEL, DELTA_FORMAT, DELTA_FORMAT_1, DELTA_FORMAT_2, FRAME_ENCODING, parseDeltaIndex, type DeltaFormat } from '../../manifests/delta.js';
import { encodeThinIndex, rawOfIndexFile } from '../../manifests/delta-thin.js';
import { DEFAULT_CDC, EXT4_CDC } from '../../manifests/cdc.js';
import { serveRepository, type AccessLogEntry } from '../../manifests/serve.js';
import { ensureBaseRootfs, hostSuite } from '../hil/fullos/rootfs.js';
import { DELTA_PAIRS } from './delta-pairs.js';

const execFileP = promisify(execFile);
const here = fileURLToPath(new URL('.', import.meta.url));
const cache = process.env.SLOTFLIP_DELTA_CACHE ?? join(homedir(), '.cache', 'slotflip-delta');
const images = join(cache, 'images');
const art = join(cache, 'artifacts');
let level = 12;
/** `-dir` (default, as release add: for ext4 images EXT4_CDC with directory blocks as chunks of their own) or `-plain` (DEFAULT_CDC alone, as releases published before). */
let cdcTag = '-dir';
/** Names a release's cached delta artifacts by what they depend on: level, chunking (dir: with
 * EXT4_CDC's average, which has changed), frame encoding. */
let format: DeltaFormat = DELTA_FORMAT;
const artTag = (): string => `${level}${cdcTag}${cdcTag === '-dir' ? EXT4_CDC.avg >> 10 : ''}-${FRAME_ENCODING}${format === DELTA_FORMAT_1 ? '' : '-f2'}`;

/** NEW's thin index against OLD's (format 2), built once and cached: `--thin-url` / `--thin` for delta-child. */
async function thinArgs(oldName: string, newName: string, url: string): Promise<string[]> {
  if (format === DELTA_FORMAT_1) return [];
  const name = `image-${artTag()}.delta-thin-${oldName}`;
  const json = join(art, newName, `${name}.json`);
  await cachedJson(json, async () => {
    const nf = await readFile(join(art, newName, `image-${artTag()}.delta-index`));
    const nu = parseDeltaIndex(nf);
    const base = parseDeltaIndex(await readFile(join(art, oldName, `image-${artTag()}.delta-index`)));
    const thin = encodeThinIndex(rawOfIndexFile(nf), nu, base);
    await writeFile(join(art, newName, name), thin);
    return { length: thin.length, sha256: createHash('sha256').update(thin).digest('hex'), base: base.rawSha256, rawSha256: nu.rawSha256 };
  });
  return ['--thin-url', `${url}${newName}/${name}`, '--thin', json];
}

const PAIRS = DELTA_PAIRS;

interface Cell {
  bytes: number;
  requests: number;
  wallMs: number;
  rssKiB?: number;
  note?: string;
}

const exists = (p: string): Promise<boolean> => access(p).then(() => true, () => false);
const log = (s: string): void => void process.stderr.write(`[bench:delta] ${s}\n`);

async function have(bin: string): Promise<boolean> {
  return execFileP('sh', ['-c', 'command -v "$1"', 'sh', bin]).then(() => true, () => false);
}

async function ensureTools(): Promise<{ casync: boolean; zck: boolean }> {
  if (!(await have('casync')) || !(await have('zckdl'))) {
    log('installing the Debian packages casync and zchunk for the anchor columns (apt-get install casync zchunk)');
    await execFileP('apt-get', ['install', '-y', '--no-install-recommends', 'casync', 'zchunk'], { maxBuffer: 64 << 20 }).catch((e: Error) => log(`apt-get failed: ${e.message.split('\n')[0]}; those columns are left out`));
  }
  return { casync: await have('casync'), zck: await have('zckdl') };
}

async function cachedJson<T>(path: string, make: () => Promise<T>): Promise<T> {
  const hit = await readFile(path, 'utf8').then((s) => JSON.parse(s) as T, () => undefined);
  if (hit !== undefined) return hit;
  const v = await make();
  await writeFile(path, JSON.stringify(v));
  return v;
}

/** `zstd -19` of the whole image: the denominator. */
async function zstd19(name: string): Promise<number> {
  return cachedJson(join(art, name, 'zstd19.json'), async () => {
    log(`zstd -19 of ${name} (cached afterwards)`);
    const { stdout } = await execFileP('sh', ['-c', 'zstd -q -19 -T2 -c "$1" | wc -c', 'sh', join(images, `${name}.img`)], { maxBuffer: 1 << 20 });
    return Number(stdout.trim());
  });
}

async function artifacts(name: string, tools: { casync: boolean; zck: boolean }): Promise<void> {
  const dir = join(art, name);
  await mkdir(dir, { recursive: true });
  const img = join(images, `${name}.img`);
  await cachedJson(join(dir, 'full.json'), async () => {
    log(`full payload of ${name}`);
    return buildPayload(img, join(dir, 'image.zst'), { compression: 'zstd', chunkSize: DEFAULT_CHUNK_SIZE });
  });
  await cachedJson(join(dir, `delta-${artTag()}.json`), async () => {
    log(`delta pack of ${name} (frames at zstd level ${level}, chunking ${cdcTag.slice(1)})`);
    return buildDelta(img, join(dir, `image-${artTag()}.delta-index`), join(dir, `image-${artTag()}.delta-pack`), { frameCache: join(cache, 'frames'), level, format, ...(cdcTag === '-plain' ? { cdc: DEFAULT_CDC } : {}) });
  });
  if (tools.casync && !(await exists(join(dir, 'image.caibx')))) {
    log(`casync make of ${name} (16 KiB)`);
    await execFileP('casync', ['make', `--store=${join(art, 'castr')}`, '--chunk-size=16384', join(dir, 'image.caibx'), img], { maxBuffer: 16 << 20 });
  }
  if (tools.zck && !(await exists(join(dir, 'image.zck')))) {
    log(`zck of ${name}`);
    await execFileP('zck', ['-o', join(dir, 'image.zck'), img], { maxBuffer: 16 << 20 });
  }
}

/** Runs `cmd` with /usr/bin/time -f %M (peak RSS in KiB on the last stderr line). */
async function timed(cmd: string, args: string[], cwd?: string): Promise<{ wallMs: number; rssKiB: number; stdout: string }> {
  const t0 = performance.now();
  const { stdout, stderr } = await execFileP('/usr/bin/time', ['-f', '%M', cmd, ...args], { maxBuffer: 64 << 20, ...(cwd ? { cwd } : {}) });
  const rss = Number(stderr.trim().split('\n').at(-1));
  return { wallMs: performance.now() - t0, rssKiB: rss, stdout };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { pairs: { type: 'string' }, json: { type: 'string' }, level: { type: 'string' }, chunking: { type: 'string' }, 'approx-denominator': { type: 'boolean' }, format: { type: 'string' } } });
  const formats = (values.format ?? DELTA_FORMAT.slice(-1)).split(',').map((f) => {
    if (f !== '1' && f !== '2') throw new Error(`--format: 1 or 2, got ${f}`);
    return f === '1' ? DELTA_FORMAT_1 : DELTA_FORMAT_2;
  });
  const fx = (name: string): string => (formats.length > 1 ? `${name} f${format.slice(-1)}` : name);
  level = values.level ? Number(values.level) : DEFAULT_DELTA_LEVEL;
  if (values.chunking !== undefined && values.chunking !== 'dir' && values.chunking !== 'plain') throw new Error('--chunking must be dir or plain');
  cdcTag = `-${values.chunking ?? 'dir'}`;
  if (process.getuid?.() !== 0) throw new Error('bench:delta builds filesystem images: run it as root');
  const want = values.pairs ? new Set(values.pairs.split(',')) : undefined;
  const pairs = PAIRS.filter(([p]) => !want || want.has(p));
  const base = await ensureBaseRootfs({ cacheDir: process.env.SLOTFLIP_HIL_CACHE ?? join(homedir(), '.cache', 'slotflip-hil'), suite: await hostSuite(), mirror: process.env.SLOTFLIP_HIL_MIRROR ?? 'http://deb.debian.org/debian', log });
  const missing = [];
  for (const [, o, n] of pairs) for (const x of [o, n]) if (!(await exists(join(images, `${x}.img`)))) missing.push(x);
  if (missing.length) {
    log(`building images ${[...new Set(missing)].join(', ')} (test/bench/delta-images.sh)`);
    await new Promise<void>((ok, fail) => {
      const c = spawn('bash', [join(here, '../../../test/bench/delta-images.sh'), images, base.dir], { stdio: ['ignore', 'inherit', 'inherit'] });
      c.on('exit', (code) => (code === 0 ? ok() : fail(new Error(`delta-images.sh exited ${code}`))));
    });
  }
  const tools = await ensureTools();
  await mkdir(art, { recursive: true });
  const names = [...new Set(pairs.flatMap(([, o, n]) => [o, n]))];
  for (const f of formats) {
    format = f;
    for (const n of names) await artifacts(n, tools);
  }

  const served: AccessLogEntry[] = [];
  const srv = await serveRepository(art, { onRequest: (e) => served.push(e) });
  const work = join(cache, `work-${process.pid}`);
  await mkdir(work, { recursive: true });
  const results: Record<string, Record<string, Cell>> = {};
  const denominators: Record<string, number> = {};
  const approx = new Set<string>();
  const node = process.execPath;
  // a delta install as the daemon runs it: started interpreted, optimizing compilers only while cutting
  // a slot (daemon/footprint.ts, systemd/packaging/slotflip.sh)
  const child = async (script: string, args: string[]): Promise<{ result: Record<string, number>; usage: { wallMs: number; maxRssKiB: number } }> => {
    const daemonLike = script === 'delta-child.js' ? ['--no-turbofan', '--no-maglev'] : [];
    const { stdout } = await execFileP(node, [...daemonLike, join(here, script), ...args, ...(daemonLike.length > 0 ? ['--interpreted'] : [])], { maxBuffer: 16 << 20 });
    const out = JSON.parse(stdout.trim().split('\n').at(-1)!);
    if (out.error) throw new Error(`${script}: ${JSON.stringify(out.error)}`);
    return out;
  };
  const measure = async (f: () => Promise<{ wallMs: number; rssKiB?: number; note?: string }>): Promise<Cell> => {
    served.length = 0;
    const r = await f();
    return { bytes: served.reduce((s, e) => s + e.bytes, 0), requests: served.length, ...r };
  };
  for (const [pair, oldName, newName] of pairs) {
    log(`pair ${pair}: ${oldName} → ${newName}`);
    if (values['approx-denominator'] && !(await exists(join(art, newName, 'zstd19.json'))) && (await exists(join(art, oldName, 'zstd19.json')))) {
      denominators[pair] = await zstd19(oldName);
      approx.add(pair);
    } else denominators[pair] = await zstd19(newName);
    const row: Record<string, Cell> = {};
    const slot = join(work, 'slot.img');
    const fresh = async (): Promise<void> => {
      await rm(slot, { force: true });
      await writeFile(slot, '');
      await truncate(slot, (await stat(join(images, `${newName}.img`))).size);
    };
    await fresh();
    await writeFile(join(work, 'full.json'), await readFile(join(art, newName, 'full.json')));
    row['slotflip full'] = await measure(async () => {
      const r = await child('install-child.js', ['--payload', join(work, 'full.json'), '--source', `${srv.url}${newName}/image.zst`, '--slot', slot, '--state', join(work, 'resume.json')]);
      return { wallMs: r.usage.wallMs, rssKiB: r.usage.maxRssKiB };
    });
    await rm(join(work, 'resume.json'), { force: true });
    // the full payload's length, as the daemon passes it: a delta the slots would save too little
    // with stops before fetching (INSTALL_DELTA_NOT_WORTH; the row then says so)
    const fullBytes = ['--full-bytes', String((await stat(join(art, newName, 'image.zst'))).size)];
    for (const f of formats) {
      format = f;
      await fresh();
      row[fx('slotflip delta')] = await measure(async () => {
        const r = await child('delta-child.js', ['--built', join(art, newName, `delta-${artTag()}.json`), '--index-url', `${srv.url}${newName}/image-${artTag()}.delta-index`, '--pack-url', `${srv.url}${newName}/image-${artTag()}.delta-pack`, '--slot', slot, '--running', join(images, `${oldName}.img`), ...fullBytes]);
        const sampled = (r.result as unknown as { lookup: { sampledBytes?: number } }).lookup.sampledBytes ?? 0;
        return { wallMs: r.usage.wallMs, rssKiB: r.usage.maxRssKiB, note: `copied ${(r.result.copied! / 2 ** 20).toFixed(0)} MiB, sampled ${(sampled / 2 ** 20).toFixed(0)} MiB` };
      });
      // the device's usual state from its second update on: the target slot holds the release before
      // (here OLD as well); both slots cut into chunks, then both looked up in their kept indexes
      // (OLD's signed delta index, as the device kept it when it installed OLD): no slot read to cut
      const deltaArgs = ['--built', join(art, newName, `delta-${artTag()}.json`), '--index-url', `${srv.url}${newName}/image-${artTag()}.delta-index`, '--pack-url', `${srv.url}${newName}/image-${artTag()}.delta-pack`, '--slot', slot, '--running', join(images, `${oldName}.img`), ...fullBytes, ...(await thinArgs(oldName, newName, srv.url))];
      const oldIndex = join(art, oldName, `image-${artTag()}.delta-index`);
      // and a device that kept no index but knows what its booted slot holds (its committed release):
      // OLD's delta index fetched from the repository for the running slot, the target probed
      const oldPublished = ['--running-published', `${srv.url}${oldName}/image-${artTag()}.delta-index`, '--running-built', join(art, oldName, `delta-${artTag()}.json`)];
      for (const [name, seeds] of [['slotflip delta, OLD in both, no index', []], ['slotflip delta, OLD in both, published index', oldPublished], ['slotflip delta, OLD in both, kept index', ['--target-seed', oldIndex, '--running-seed', oldIndex]]] as const) {
        await copyFile(join(images, `${oldName}.img`), slot);
        row[fx(name)] = await measure(async () => {
          const r = await child('delta-child.js', [...deltaArgs, ...seeds]);
          const { lookup: l, indexVia } = r.result as unknown as { lookup: { cutBytes: number; probedBytes?: number; sampledBytes?: number; target: string; running: string }; indexVia?: string };
          return { wallMs: r.usage.wallMs, rssKiB: r.usage.maxRssKiB, note: `index ${indexVia ?? 'full'}, running ${l.running}, target ${l.target}; cut ${(l.cutBytes / 2 ** 20).toFixed(0)} MiB, probed ${((l.probedBytes ?? 0) / 2 ** 20).toFixed(0)} MiB, sampled ${((l.sampledBytes ?? 0) / 2 ** 20).toFixed(0)} MiB` };
        });
      }
    }
    if (tools.casync) {
      await rm(slot, { force: true });
      row['casync 16 KiB'] = await measure(async () => {
        const r = await timed('casync', ['extract', `--store=${srv.url}castr`, `--seed=${join(images, `${oldName}.img`)}`, '--seed-output=no', `${srv.url}${newName}/image.caibx`, slot]);
        return { wallMs: r.wallMs, rssKiB: r.rssKiB };
      });
    }
    if (tools.zck) {
      const zdir = join(work, 'zck');
      await rm(zdir, { recursive: true, force: true });
      await mkdir(zdir);
      row.zchunk = await measure(async () => {
        const r = await timed('zckdl', ['-q', '-s', join(art, oldName, 'image.zck'), `${srv.url}${newName}/image.zck`], zdir);
        return { wallMs: r.wallMs, rssKiB: r.rssKiB };
      });
    }
    results[pair] = row;
    log(JSON.stringify({ pair, zstd19: denominators[pair], row }));
  }
  await srv.close();
  await rm(work, { recursive: true, force: true });

  const mechs = [...new Set(Object.values(results).flatMap((r) => Object.keys(r)))];
  const cols = pairs.map(([p]) => p);
  const lines: string[] = [];
  lines.push(`bytes downloaded as % of NEW's \`zstd -19\` (MB in brackets); requests; wall s; peak RSS MiB. Delta frames at zstd level ${level}, chunking ${cdcTag.slice(1)}.`);
  lines.push('');
  lines.push(`| mechanism | ${cols.join(' | ')} |`);
  lines.push(`| --- | ${cols.map(() => '---').join(' | ')} |`);
  lines.push(`| zstd -19 of NEW (MB) | ${cols.map((c) => `${approx.has(c) ? '≈ OLD ' : ''}${(denominators[c]! / 1e6).toFixed(1)}`).join(' | ')} |`);
  for (const m of mechs) lines.push(`| ${m} | ${cols.map((c) => { const x = results[c]?.[m]; return x ? `${((100 * x.bytes) / denominators[c]!).toFixed(2)} % (${(x.bytes / 1e6).toFixed(1)})` : 'n/a'; }).join(' | ')} |`);
  lines.push('');
  lines.push(`| requests / wall s / peak RSS MiB | ${cols.join(' | ')} |`);
  lines.push(`| --- | ${cols.map(() => '---').join(' | ')} |`);
  for (const m of mechs) lines.push(`| ${m} | ${cols.map((c) => { const x = results[c]?.[m]; return x ? `${x.requests} / ${(x.wallMs / 1000).toFixed(1)} / ${x.rssKiB !== undefined ? (x.rssKiB / 1024).toFixed(0) : '?'}` : 'n/a'; }).join(' | ')} |`);
  process.stdout.write(lines.join('\n') + '\n');
  if (values.json) {
    const s = createWriteStream(values.json);
    s.end(JSON.stringify({ denominators, results }, null, 2));
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench:delta failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});

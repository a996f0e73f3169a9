/**
 * `npm run bench:delta-breakdown`: what a delta install's download is made of, for the `bench:delta`
 * image pairs (images and delta artifacts built and cached by `npm run bench:delta` under
 * ~/.cache/slotflip-delta). For a device holding OLD (in either slot) and NEW's signed delta index:
 * the index file as fetched (distinct chunks, bytes of hashes), and the pack frames of NEW's chunks
 * that OLD lacks, by what the chunk covers in NEW's ext4 filesystem (from `dumpe2fs` and `debugfs`:
 * superblock/group descriptors, bitmaps, inode tables, journal, directory blocks, file data by
 * path: dpkg's own files apart, the largest files named). A chunk that covers several kinds is
 * split by the 4 KiB blocks it covers; its frame bytes in the same proportion.
 *
 *   npm run build && node dist/test/bench/delta-breakdown.js [--pairs onepkg-repro,config-repro]
 *        [--tag 16-dir64-p1-f2] [--top 12]
 *
 * --tag picks the cached artifacts (`image-<tag>.delta-index`; default: what bench:delta names
 * today's `release add` defaults; `12-dir` for those built at level 12, 8/32/128 KiB, before frames
 * were pledged).
 *
 * TUF metadata and the release's chunk index file (which names the delta files) are fetched by a
 * device too; their sizes come from a `release add` of the pair's NEW payload (printed when the
 * bench's `full.json` is cached: the format 2 chunk index file is that JSON).
 */
import { execFile } from 'node:child_process';
import { open, readFile } from 'node:fs/promises';
import { homedir, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { EXT4_CDC, looksLikeDirBlock } from '../../manifests/cdc.js';
import { DEFAULT_DELTA_LEVEL, DELTA_FORMAT, DELTA_FORMAT_1, FRAME_ENCODING, parseDeltaIndex, type DeltaIndex } from '../../manifests/delta.js';
import { PAIR_IMAGES } from './delta-pairs.js';

const execFileP = promisify(execFile);
const PAIRS = PAIR_IMAGES;

/** Unique chunks of `nu` whose SHA-256 `old` lacks, with the image offset of their first use. */
export function missingChunks(nu: DeltaIndex, old: DeltaIndex): { u: number; off: number; len: number; frame: number }[] {
  const have = new Set<string>();
  for (let u = 0; u < old.header.uniqueCount; u++) have.add(old.shas.subarray(u * 32, u * 32 + 32).toString('hex'));
  const out: { u: number; off: number; len: number; frame: number }[] = [];
  let off = 0;
  let next = 0;
  for (let i = 0; i < nu.refs.length; i++) {
    const u = nu.refs[i]!;
    if (u === next) {
      next++;
      if (!have.has(nu.shas.subarray(u * 32, u * 32 + 32).toString('hex'))) out.push({ u, off, len: nu.rawLen[u]!, frame: nu.packLen[u]! });
    }
    off += nu.rawLen[u]!;
  }
  return out;
}

/** Block → kind for the ext4 metadata dumpe2fs names. */
async function metadataKinds(img: string): Promise<Map<number, string>> {
  const { stdout } = await execFileP('dumpe2fs', [img], { maxBuffer: 64 << 20 });
  const kinds = new Map<number, string>();
  const range = (a: number, b: number, k: string): void => {
    for (let x = a; x <= b; x++) kinds.set(x, k);
  };
  for (const line of stdout.split('\n')) {
    let m = /superblock at (\d+), Group descriptors at (\d+)-(\d+)/.exec(line);
    if (m) range(Number(m[1]), Number(m[3]), 'superblock + group descriptors');
    m = /Reserved GDT blocks at (\d+)-(\d+)/.exec(line);
    if (m) range(Number(m[1]), Number(m[2]), 'superblock + group descriptors');
    m = /Block bitmap at (\d+)/.exec(line);
    if (m) kinds.set(Number(m[1]), 'bitmaps');
    m = /Inode bitmap at (\d+)/.exec(line);
    if (m) kinds.set(Number(m[1]), 'bitmaps');
    m = /Inode table at (\d+)-(\d+)/.exec(line);
    if (m) range(Number(m[1]), Number(m[2]), 'inode tables');
  }
  const j = await execFileP('debugfs', ['-R', 'blocks <8>', img], { maxBuffer: 64 << 20 });
  for (const b of j.stdout.trim().split(/\s+/)) if (b) kinds.set(Number(b), 'journal');
  return kinds;
}

/** Path of the file owning each block in `blocks` (debugfs icheck + ncheck). */
async function owners(img: string, blocks: number[]): Promise<Map<number, string>> {
  const out = new Map<number, string>();
  const inodeOf = new Map<number, number>();
  for (let i = 0; i < blocks.length; i += 2000) {
    const { stdout } = await execFileP('debugfs', ['-R', `icheck ${blocks.slice(i, i + 2000).join(' ')}`, img], { maxBuffer: 64 << 20 });
    for (const line of stdout.split('\n')) {
      const m = /^(\d+)\s+(\d+)$/.exec(line.trim());
      if (m) inodeOf.set(Number(m[1]), Number(m[2]));
    }
  }
  const inodes = [...new Set(inodeOf.values())];
  const names = new Map<number, string>();
  for (let i = 0; i < inodes.length; i += 2000) {
    const { stdout } = await execFileP('debugfs', ['-R', `ncheck ${inodes.slice(i, i + 2000).join(' ')}`, img], { maxBuffer: 64 << 20 });
    for (const line of stdout.split('\n')) {
      const m = /^(\d+)\s+(\S.*)$/.exec(line.trim());
      if (m && !names.has(Number(m[1]))) names.set(Number(m[1]), m[2]!);
    }
  }
  for (const [b, ino] of inodeOf) out.set(b, names.get(ino) ?? `<inode ${ino}>`);
  return out;
}

function fileKind(path: string): string {
  if (path.startsWith('/var/lib/dpkg/')) return 'file data: dpkg status/info';
  return 'file data: other files';
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { pairs: { type: 'string' }, tag: { type: 'string' }, top: { type: 'string' } } });
  const cache = process.env.SLOTFLIP_DELTA_CACHE ?? join(homedir(), '.cache', 'slotflip-delta');
  const tag = values.tag ?? `${DEFAULT_DELTA_LEVEL}-dir${EXT4_CDC.avg >> 10}-${FRAME_ENCODING}${DELTA_FORMAT === DELTA_FORMAT_1 ? '' : '-f2'}`;
  const top = Number(values.top ?? 12);
  const pairs = (values.pairs ?? 'onepkg-repro').split(',');
  process.stdout.write(`load average ${loadavg().map((x) => x.toFixed(1)).join(' ')}\n`);
  for (const pair of pairs) {
    const [oldName, newName] = PAIRS[pair] ?? [];
    if (!oldName || !newName) throw new Error(`unknown pair ${pair}`);
    const img = join(cache, 'images', `${newName}.img`);
    const nuFile = await readFile(join(cache, 'artifacts', newName, `image-${tag}.delta-index`));
    const nu = parseDeltaIndex(nuFile);
    const old = parseDeltaIndex(await readFile(join(cache, 'artifacts', oldName, `image-${tag}.delta-index`)));
    // the thin index against OLD's (format 2; bench:delta builds it), what a device holding OLD's index fetches instead
    const thinFile = await readFile(join(cache, 'artifacts', newName, `image-${tag}.delta-thin-${oldName}`)).then((b) => b.length, () => undefined);
    const chunkIndexFile = await readFile(join(cache, 'artifacts', newName, 'full.json')).then((b) => b.length, () => undefined);
    const denom = await readFile(join(cache, 'artifacts', newName, 'zstd19.json'), 'utf8').then(Number, () => readFile(join(cache, 'artifacts', oldName, 'zstd19.json'), 'utf8').then(Number));
    const miss = missingChunks(nu, old);
    const h = nu.header;
    const bs = h.cdc.dirBlock ?? 4096;
    const meta = await metadataKinds(img);
    // every block a missing chunk covers, by kind
    const fd = await open(img, 'r');
    const blockBuf = Buffer.alloc(bs);
    const kindOfBlock = new Map<number, string>();
    const dataBlocks: number[] = [];
    for (const c of miss) {
      for (let b = Math.floor(c.off / bs); b * bs < c.off + c.len; b++) {
        if (kindOfBlock.has(b)) continue;
        const k = meta.get(b);
        if (k) {
          kindOfBlock.set(b, k);
          continue;
        }
        await fd.read(blockBuf, 0, bs, b * bs);
        if (blockBuf.every((x) => x === 0)) kindOfBlock.set(b, 'zero blocks');
        else if (looksLikeDirBlock(blockBuf, 0, bs)) kindOfBlock.set(b, 'directory blocks');
        else dataBlocks.push(b);
      }
    }
    await fd.close();
    const own = await owners(img, dataBlocks);
    const perFile = new Map<string, { raw: number; frame: number }>();
    for (const b of dataBlocks) {
      const p = own.get(b);
      kindOfBlock.set(b, p ? fileKind(p) : 'unowned blocks (free, extent trees)');
    }
    const byKind = new Map<string, { raw: number; frame: number; chunks: number }>();
    for (const c of miss) {
      const share = new Map<string, number>();
      for (let b = Math.floor(c.off / bs); b * bs < c.off + c.len; b++) {
        const lo = Math.max(c.off, b * bs);
        const hi = Math.min(c.off + c.len, (b + 1) * bs);
        const k = kindOfBlock.get(b)!;
        share.set(k, (share.get(k) ?? 0) + hi - lo);
        const p = own.get(b);
        if (p) {
          const f = perFile.get(p) ?? { raw: 0, frame: 0 };
          f.raw += hi - lo;
          f.frame += ((hi - lo) / c.len) * c.frame;
          perFile.set(p, f);
        }
      }
      for (const [k, n] of share) {
        const e = byKind.get(k) ?? { raw: 0, frame: 0, chunks: 0 };
        e.raw += n;
        e.frame += (n / c.len) * c.frame;
        e.chunks += n / c.len;
        byKind.set(k, e);
      }
    }
    const packBytes = miss.reduce((s, c) => s + c.frame, 0);
    const pct = (n: number): string => `${((100 * n) / denom).toFixed(2)} %`;
    const mb = (n: number): string => `${(n / 1e6).toFixed(3)} MB`;
    const lines = [
      '',
      `## ${pair} (${oldName} → ${newName}), chunking ${tag}; % of NEW's zstd -19 (${mb(denom)})`,
      '',
      `| part | bytes fetched | % | detail |`,
      `| --- | --- | --- | --- |`,
      `| delta index file | ${mb(nuFile.length)} | ${pct(nuFile.length)} | ${h.uniqueCount} distinct chunks (${mb(h.uniqueCount * 32)} of SHA-256), ${h.chunkCount} chunks; ${mb(8 + h.uniqueCount * 40 + h.chunkCount * 4)} before brotli |`,
      ...(thinFile !== undefined ? [`| · or thin index against OLD's | ${mb(thinFile)} | ${pct(thinFile)} | what a device holding OLD's index fetches instead (manifests/delta-thin.ts) |`] : []),
      ...(chunkIndexFile !== undefined ? [`| release's chunk index file (names the delta files) | ${mb(chunkIndexFile)} | ${pct(chunkIndexFile)} | format 2, fetched before the delta (uncompressed JSON) |`] : []),
      `| pack frames | ${mb(packBytes)} | ${pct(packBytes)} | ${miss.length} chunks OLD lacks, ${(miss.reduce((s, c) => s + c.len, 0) / 2 ** 20).toFixed(2)} MiB raw |`,
      ...[...byKind].sort((a, b) => b[1].frame - a[1].frame).map(([k, e]) => `| · ${k} | ${mb(e.frame)} | ${pct(e.frame)} | ${(e.raw / 2 ** 20).toFixed(2)} MiB raw in ~${e.chunks.toFixed(0)} chunks, ratio ${(e.raw / e.frame).toFixed(2)} |`),
      '',
      `top files by frame bytes: ${[...perFile].sort((a, b) => b[1].frame - a[1].frame).slice(0, top).map(([p, f]) => `${p} ${(f.raw / 2 ** 10).toFixed(0)} KiB → ${(f.frame / 1e3).toFixed(0)} kB`).join('; ')}`,
    ];
    process.stdout.write(lines.join('\n') + '\n');
  }
}

// importable (missingChunks) without running
if (process.argv[1]?.endsWith('delta-breakdown.js')) main().catch((e: unknown) => {
  process.stderr.write(`bench:delta-breakdown failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});

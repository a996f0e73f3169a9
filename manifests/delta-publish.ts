/**
 * Manufacturer side of delta updates: builds a release's delta index and pack as TUF target files
 * next to its payload, and tells the manufacturer what a device holding an earlier image will
 * download — and what in the image defeats reuse (ext4 rebuild noise: random UUID and directory
 * hash seed, timestamps in inode tables), with the build option that removes it.
 *
 * Estimates read the earlier image itself, or only its delta index (`.delta-index` target: the
 * distinct chunks it holds), so no earlier image needs to be kept on the publishing machine.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, open, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import zlib from 'node:zlib';
import { writeFileAtomic } from '../hal/atomic-file.js';
import { chunkFile, looksLikeDirBlock } from './cdc.js';
import { encodeThinIndex, rawOfIndexFile } from './delta-thin.js';
import { buildDelta, DELTA_FORMAT_1, parseDeltaIndex, unfilterChunk, type BuildDeltaOptions, type DeltaIndex, type DeltaSection } from './delta.js';

export interface PublishedDelta {
  section: DeltaSection;
  /** the two target files: TUF target name, path on disk, length, sha256. */
  targets: { name: string; path: string; length: number; sha256: string }[];
  index: DeltaIndex;
}

/**
 * Builds `<targetName>.delta-index` and `<targetName>.delta-pack` for `image` under `targetsRoot`,
 * stored like payloads (`<dir>/<sha256>.<name>`, consistent snapshots); with `base` (the earlier
 * release's `.delta-index` file, the one devices most likely hold) also `<targetName>.delta-thin`,
 * the index written against it (delta-thin.ts), when that is smaller (format 2 only).
 */
export async function buildReleaseDelta(image: string, targetsRoot: string, targetName: string, opts: BuildDeltaOptions & { base?: string } = {}): Promise<PublishedDelta> {
  const dir = join(targetsRoot, dirname(targetName));
  const tmpIndex = join(dir, `.build-${process.pid}.${basename(targetName)}.delta-index`);
  const tmpPack = join(dir, `.build-${process.pid}.${basename(targetName)}.delta-pack`);
  const built = await buildDelta(image, tmpIndex, tmpPack, opts);
  const indexName = `${targetName}.delta-index`;
  const packName = `${targetName}.delta-pack`;
  const indexPath = join(dir, `${built.index.sha256}.${basename(indexName)}`);
  const packPath = join(dir, `${built.pack.sha256}.${basename(packName)}`);
  await rename(tmpIndex, indexPath);
  await rename(tmpPack, packPath);
  const indexFile = await readFile(indexPath);
  const index = parseDeltaIndex(indexFile);
  const section: DeltaSection = { format: built.header.format, index: { target: indexName, ...built.index }, pack: { target: packName, ...built.pack } };
  const targets = [
    { name: indexName, path: indexPath, ...built.index },
    { name: packName, path: packPath, ...built.pack },
  ];
  // format 1 is what daemons before format 2 read: published as it was then, without a thin index
  const base = opts.base && built.header.format !== DELTA_FORMAT_1 ? await readFile(opts.base).then(parseDeltaIndex, () => undefined) : undefined;
  const thin = base ? encodeThinIndex(rawOfIndexFile(indexFile), index, base) : undefined;
  if (base && thin && thin.length < indexFile.length) {
    const thinName = `${targetName}.delta-thin`;
    const sha256 = createHash('sha256').update(thin).digest('hex');
    const thinPath = join(dir, `${sha256}.${basename(thinName)}`);
    await writeFileAtomic(thinPath, thin);
    section.thin = { target: thinName, length: thin.length, sha256, base: base.rawSha256, rawSha256: index.rawSha256 };
    targets.push({ name: thinName, path: thinPath, length: thin.length, sha256 });
  }
  return { section, targets, index };
}

/** The most recently written `.delta-index` file under `targetsRoot` other than `except`. */
export async function latestDeltaIndex(targetsRoot: string, except: string[] = []): Promise<string | undefined> {
  let best: { path: string; mtime: number } | undefined;
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.name.endsWith('.delta-index') && !e.name.startsWith('.') && !except.includes(p)) {
        const m = (await stat(p)).mtimeMs;
        if (!best || m > best.mtime) best = { path: p, mtime: m };
      }
    }
  };
  await walk(targetsRoot);
  return best?.path;
}

export interface DeltaEstimate {
  /** bytes a device holding the earlier image downloads: index + missing frames. */
  expectedBytes: number;
  /** image bytes that must come from the pack. */
  missingRawBytes: number;
  /** missing image bytes by ext4 region kind (when NEW is ext4). */
  breakdown: Record<string, number>;
  /** one line each, with what to change in the build. */
  reasons: string[];
}

/** Short keys (first 8 bytes hex) of the distinct chunks an earlier image holds. */
async function seedKeys(against: string, idx: DeltaIndex): Promise<Set<string>> {
  const keys = new Set<string>();
  if (against.endsWith('.delta-index')) {
    const old = parseDeltaIndex(await readFile(against));
    const a = old.header.cdc;
    const b = idx.header.cdc;
    if (a.min === b.min && a.avg === b.avg && a.max === b.max && a.dirBlock === b.dirBlock) {
      for (let u = 0; u < old.header.uniqueCount; u++) keys.add(old.shas.toString('hex', u * 32, u * 32 + 8));
      return keys;
    }
    // cut with other parameters (published before they changed): a device cuts its slot with the NEW
    // ones, so rebuild the earlier image from its pack (every chunk checked) and cut it the same way
    const tmp = await mkdtemp(join(tmpdir(), 'slotflip-estimate-'));
    try {
      await imageFromPack(against, old, join(tmp, 'earlier.img'));
      await chunkFile(join(tmp, 'earlier.img'), b, { keep: false, onChunk: (c) => void keys.add(c.sha256.slice(0, 16)) });
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
    return keys;
  }
  await chunkFile(against, idx.header.cdc, { keep: false, onChunk: (c) => void keys.add(c.sha256.slice(0, 16)) });
  return keys;
}

/** The pack file beside an earlier release's `.delta-index` (same directory, same target name). */
async function packBeside(indexPath: string): Promise<string | undefined> {
  const dir = dirname(indexPath);
  const packBase = basename(indexPath).replace(/^[0-9a-f]{64}\./, '').replace(/\.delta-index$/, '.delta-pack');
  const name = (await readdir(dir)).find((n) => n.endsWith(`.${packBase}`) && /^[0-9a-f]{64}\./.test(n));
  return name ? join(dir, name) : undefined;
}

/** Writes the image an earlier release's delta index describes to `out`, from its pack; throws when
 * the pack is missing or a chunk does not match its SHA-256. */
async function imageFromPack(indexPath: string, idx: DeltaIndex, out: string): Promise<void> {
  const packPath = await packBeside(indexPath);
  if (!packPath) throw new Error(`no .delta-pack beside ${indexPath}`);
  const decode = (zlib as unknown as { zstdDecompressSync: (b: Buffer, o?: object) => Buffer }).zstdDecompressSync;
  const pack = await open(packPath, 'r');
  const img = await open(out, 'w', 0o600);
  try {
    let at = 0;
    for (let i = 0; i < idx.refs.length; i++) {
      const u = idx.refs[i]!;
      const frame = Buffer.alloc(idx.packLen[u]!);
      const { bytesRead } = await pack.read(frame, 0, frame.length, idx.packOff[u]!);
      if (bytesRead !== frame.length) throw new Error(`${packPath} is shorter than its index says`);
      const raw = unfilterChunk(idx, u, decode(frame, { maxOutputLength: idx.rawLen[u]! }));
      if (raw.length !== idx.rawLen[u] || idx.shas.compare(createHash('sha256').update(raw).digest(), 0, 32, u * 32, u * 32 + 32) !== 0) throw new Error(`${packPath}: chunk ${i} does not match its index`);
      await img.write(raw, 0, raw.length, at);
      at += raw.length;
    }
  } finally {
    await pack.close();
    await img.close();
  }
}

interface Ext4 {
  blockSize: number;
  uuid: string;
  hashSeed: string;
  mkfsTime: number;
  /** block ranges [start, end) that hold inode tables, bitmaps, group descriptors. */
  inodeTables: [number, number][];
  bitmaps: number[];
}

/** Reads the superblock and group descriptors of an ext4 image from its first bytes; undefined when not ext4. */
function ext4Of(head: Buffer, read: (len: number, off: number) => Promise<Buffer>): Promise<Ext4 | undefined> {
  return (async () => {
    if (head.length < 2048 || head.readUInt16LE(1024 + 56) !== 0xef53) return undefined;
    const sb = head.subarray(1024, 2048);
    const blockSize = 1024 << sb.readUInt32LE(24);
    const blocksCount = sb.readUInt32LE(4);
    const perGroup = sb.readUInt32LE(32);
    const inodesPerGroup = sb.readUInt32LE(40);
    const inodeSize = sb.readUInt16LE(88);
    const incompat = sb.readUInt32LE(96);
    const descSize = incompat & 0x80 ? Math.max(32, sb.readUInt16LE(254)) : 32;
    const groups = Math.ceil(blocksCount / perGroup);
    const gdt = await read(groups * descSize, blockSize === 1024 ? 2048 : blockSize);
    const itBlocks = Math.ceil((inodesPerGroup * inodeSize) / blockSize);
    const inodeTables: [number, number][] = [];
    const bitmaps: number[] = [];
    for (let g = 0; g < groups && (g + 1) * descSize <= gdt.length; g++) {
      const d = gdt.subarray(g * descSize);
      const hi = (o: number): number => (descSize >= 64 ? d.readUInt32LE(o) * 2 ** 32 : 0);
      bitmaps.push(d.readUInt32LE(0) + hi(0x20), d.readUInt32LE(4) + hi(0x24));
      const it = d.readUInt32LE(8) + hi(0x28);
      inodeTables.push([it, it + itBlocks]);
    }
    return { blockSize, uuid: sb.subarray(104, 120).toString('hex'), hashSeed: sb.subarray(236, 252).toString('hex'), mkfsTime: sb.readUInt32LE(264), inodeTables, bitmaps };
  })();
}

/**
 * What a device holding `against` (an image, or an earlier release's `.delta-index`) downloads to
 * get the image `newImage` described by `idx`, and why. `indexLength`: the new index file's size.
 */
export async function estimateDelta(newImage: string, idx: DeltaIndex, indexLength: number, against: string): Promise<DeltaEstimate> {
  const have = await seedKeys(against, idx);
  const fh = await open(newImage, 'r');
  const oldFh = against.endsWith('.delta-index') ? undefined : await open(against, 'r');
  try {
    const read = async (h: typeof fh, len: number, off: number): Promise<Buffer> => {
      const b = Buffer.alloc(len);
      const { bytesRead } = await h.read(b, 0, len, off);
      return b.subarray(0, bytesRead);
    };
    const fs = await ext4Of(await read(fh, 4096, 0), (l, o) => read(fh, l, o));
    let oldFs: Ext4 | undefined;
    if (oldFh) oldFs = await ext4Of(await read(oldFh, 4096, 0), (l, o) => read(oldFh, l, o));
    else {
      // the earlier release's first chunk holds its superblock: from the earlier pack, when it lies beside the index
      oldFs = await superblockFromPack(against).catch(() => undefined);
    }
    const breakdown: Record<string, number> = {};
    const add = (k: string, n: number): void => void (breakdown[k] = (breakdown[k] ?? 0) + n);
    let expected = indexLength;
    let missing = 0;
    const fetched = new Set<number>();
    let pos = 0;
    for (let i = 0; i < idx.header.chunkCount; i++) {
      const u = idx.refs[i]!;
      const len = idx.rawLen[u]!;
      const key = idx.shas.toString('hex', u * 32, u * 32 + 8);
      if (!have.has(key) && !fetched.has(u)) {
        fetched.add(u);
        expected += idx.packLen[u]!;
        missing += len;
        if (fs) {
          // classify the chunk's blocks
          const bs = fs.blockSize;
          const data = await read(fh, len, pos);
          for (let b = Math.floor(pos / bs); b * bs < pos + len; b++) {
            const from = Math.max(pos, b * bs);
            const to = Math.min(pos + len, (b + 1) * bs);
            const n = to - from;
            let kind = 'file data and other blocks';
            if (b === 0 || fs.bitmaps.includes(b) || b < 1 + Math.ceil(fs.inodeTables.length * 64 / bs)) kind = 'superblock, group descriptors and bitmaps';
            else if (fs.inodeTables.some(([s, e]) => b >= s && b < e)) kind = 'inode tables';
            else if (from - pos >= 0 && to - pos <= data.length && n === bs && looksLikeDirBlock(data, from - pos, bs)) kind = 'directory blocks';
            add(kind, n);
          }
        } else add('image bytes', len);
      }
      pos += len;
    }
    const mib = (n: number): string => `${(n / 2 ** 20).toFixed(1)} MiB`;
    const reasons: string[] = [];
    if ((breakdown['directory blocks'] ?? 0) > 0) reasons.push(`${mib(breakdown['directory blocks']!)} of directory blocks differ${oldFs && fs && oldFs.hashSeed !== fs.hashSeed ? ' (the directory hash seed changed)' : ''}: build with a fixed hash seed (mke2fs -E hash_seed=UUID)`);
    if ((breakdown['inode tables'] ?? 0) > 0) reasons.push(`${mib(breakdown['inode tables']!)} of inode tables differ${oldFs && fs && oldFs.uuid !== fs.uuid ? ' (the filesystem UUID changed: it seeds every inode checksum)' : ''}: build with a fixed UUID (mke2fs -U), E2FSPROGS_FAKE_TIME and mtimes clamped to SOURCE_DATE_EPOCH`);
    if ((breakdown['superblock, group descriptors and bitmaps'] ?? 0) > 0) reasons.push(`${mib(breakdown['superblock, group descriptors and bitmaps']!)} of superblock, group descriptors and bitmaps differ${oldFs && fs && oldFs.mkfsTime !== fs.mkfsTime ? ' (mkfs time changed: set E2FSPROGS_FAKE_TIME)' : ''}`);
    if ((breakdown['file data and other blocks'] ?? 0) > 0) reasons.push(`${mib(breakdown['file data and other blocks']!)} of file data and other blocks are new (the change itself, or files placed differently)`);
    if (oldFs && fs && oldFs.uuid !== fs.uuid && !reasons.some((r) => r.includes('UUID'))) reasons.push('the filesystem UUID changed: build with mke2fs -U');
    return { expectedBytes: expected, missingRawBytes: missing, breakdown, reasons };
  } finally {
    await fh.close();
    await oldFh?.close();
  }
}

/** The ext4 superblock of an earlier release, from the first frame of its pack (beside its index). */
async function superblockFromPack(indexPath: string): Promise<Ext4 | undefined> {
  const idx = parseDeltaIndex(await readFile(indexPath));
  const packPath = await packBeside(indexPath);
  if (!packPath) return undefined;
  const fh = await open(packPath, 'r');
  try {
    const u = idx.refs[0]!;
    const frame = Buffer.alloc(idx.packLen[u]!);
    await fh.read(frame, 0, frame.length, 0);
    const raw = (zlib as unknown as { zstdDecompressSync: (b: Buffer) => Buffer }).zstdDecompressSync(frame);
    if (idx.shas.compare(createHash('sha256').update(raw).digest(), 0, 32, u * 32, u * 32 + 32) !== 0) return undefined;
    return await ext4Of(raw, async () => Buffer.alloc(0));
  } finally {
    await fh.close();
  }
}

/**
 * A delta install's chunk lookup (daemon/install/delta.ts SlotLookup, typed arrays) answers as the
 * plain search over the slot's chunk list would: which chunk starts at an offset, the first offset
 * of a key, the first at or after a position (fast-check over random chunk lists with repeated
 * keys); and a slot cut by seed-index.ts cutSlot matches manifests/cdc.ts chunkFile chunk for chunk,
 * whatever the read buffer, with the SHA-256 of every byte read.
 */
import t from 'tap';
import fc from 'fast-check';
import { createHash, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SlotLookup } from '../../daemon/install/delta.js';
import { cutSlot, type SlotSeed } from '../../daemon/install/seed-index.js';
import { chunkFile, DEFAULT_CDC } from '../../manifests/cdc.js';

function seedOf(chunks: { key: number; len: number }[]): SlotSeed {
  const keys = Buffer.alloc(chunks.length * 8);
  const lens = new Uint32Array(chunks.length);
  chunks.forEach((c, i) => {
    keys.writeUInt32BE(c.key >>> 8, i * 8); // a few distinct high words, low words that differ
    keys.writeUInt32BE(c.key & 0xff, i * 8 + 4);
    lens[i] = c.len;
  });
  return { cdc: DEFAULT_CDC, size: chunks.reduce((n, c) => n + c.len, 0), count: chunks.length, keys, lens };
}

t.test('SlotLookup answers as a linear search over the chunk list', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.record({ key: fc.integer({ min: 0, max: 0x3ff }), len: fc.integer({ min: 1, max: 50 }) }), { maxLength: 60 }), fc.integer({ min: 0, max: 0x3ff }), fc.integer({ min: 0, max: 3000 }), (chunks, key, pos) => {
      const l = new SlotLookup(seedOf(chunks));
      const offs: number[] = [];
      chunks.reduce((o, c) => (offs.push(o), o + c.len), 0);
      const hi = key >>> 8;
      const lo = key & 0xff;
      const first = chunks.findIndex((c) => c.key === key);
      const ahead = chunks.findIndex((c, i) => c.key === key && offs[i]! >= pos);
      const at = offs.indexOf(pos);
      return l.find(hi, lo) === (first < 0 ? -1 : offs[first]) && l.find(hi, lo, pos) === (ahead < 0 ? -1 : offs[ahead]) && l.startsAt(pos, hi, lo) === (at >= 0 && chunks[at]!.key === key);
    }),
    { numRuns: 500 },
  );
  t.pass('500 random chunk lists');
});

t.test('cutSlot: the chunks chunkFile cuts, 12 bytes each, and the SHA-256 of the bytes read', async (t) => {
  const dir = t.testdir();
  const data = Buffer.concat([randomBytes(2 << 20), Buffer.alloc(600_000), randomBytes(77_777)]);
  const path = join(dir, 'slot');
  await writeFile(path, data);
  const want = await chunkFile(path, DEFAULT_CDC);
  for (const bufferBytes of [2 * DEFAULT_CDC.max, 1 << 20, 8 << 20]) {
    const { seed, sha256 } = await cutSlot(path, data.length, DEFAULT_CDC, { bufferBytes, hashAll: true });
    t.equal(seed.count, want.length, `${bufferBytes}-byte buffer: as many chunks`);
    t.same([...seed.lens], want.map((c) => c.length), 'the same lengths');
    t.ok(want.every((c, i) => seed.keys.toString('hex', i * 8, i * 8 + 8) === c.sha256.slice(0, 16)), 'the same keys');
    t.equal(sha256, createHash('sha256').update(data).digest('hex'), 'the hash of every byte read');
  }
  const ac = new AbortController();
  ac.abort(new Error('stop'));
  await t.rejects(cutSlot(path, data.length, DEFAULT_CDC, { signal: ac.signal }), /stop/, 'an aborted cut throws the reason');
});

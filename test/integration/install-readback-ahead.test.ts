// The read-back's read-ahead (daemon/install/read-back.ts, pathReader.prefetch): the next piece is read
// into the other half of the reader's buffer while the caller still holds the last one. What must hold:
// a read-ahead never writes into the piece the caller holds; the read of the range read ahead returns
// that range's bytes; a read of any other range (the read-ahead is then dropped) returns its own bytes;
// a read-ahead that fails fails the read that takes it, and only that one. On a regular file in the
// test directory (O_DIRECT where that filesystem allows it, else buffered: the same contract).
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { pathReader } from '../../daemon/install/read-back.js';

const MIB = 1 << 20;
const content = randomBytes(6 * MIB + 12_345);

function file(t: Test): string {
  const path = join(t.testdir(), 'slot.img');
  writeFileSync(path, content);
  return path;
}

t.test('the range read ahead arrives intact, and the piece held meanwhile is not touched', async (t) => {
  const reader = await pathReader(file(t), undefined);
  t.teardown(() => reader.close());
  const first = await reader.read(MIB, 0);
  reader.prefetch!(MIB, MIB);
  // let the read-ahead land before looking at the piece still held
  await new Promise((r) => setTimeout(r, 50));
  t.ok(first.equals(content.subarray(0, MIB)), 'the piece held is unchanged');
  const second = await reader.read(MIB, MIB);
  t.ok(second.equals(content.subarray(MIB, 2 * MIB)), 'the range read ahead');
  reader.prefetch!(MIB, 2 * MIB);
  await new Promise((r) => setTimeout(r, 50));
  t.ok(second.equals(content.subarray(MIB, 2 * MIB)), 'the second piece held is unchanged by the next read-ahead');
  t.ok((await reader.read(MIB, 2 * MIB)).equals(content.subarray(2 * MIB, 3 * MIB)), 'the third piece');
  // the last, short piece at an unaligned end
  const tail = content.length - 6 * MIB;
  reader.prefetch!(tail, 6 * MIB);
  t.ok((await reader.read(tail, 6 * MIB)).equals(content.subarray(6 * MIB)), 'the short last piece');
});

t.test('a read of another range drops the read-ahead and returns its own bytes', async (t) => {
  const reader = await pathReader(file(t), undefined);
  t.teardown(() => reader.close());
  await reader.read(MIB, 0);
  reader.prefetch!(MIB, MIB);
  t.ok((await reader.read(MIB, 4 * MIB)).equals(content.subarray(4 * MIB, 5 * MIB)), 'another offset');
  reader.prefetch!(MIB, 5 * MIB);
  t.ok((await reader.read(8192, 5 * MIB)).equals(content.subarray(5 * MIB, 5 * MIB + 8192)), 'the same offset, another length');
  t.ok((await reader.read(MIB, 5 * MIB)).equals(content.subarray(5 * MIB, 6 * MIB)), 'and then the range itself, read afresh');
});

t.test('a read-ahead that fails fails the read that takes it; the reader goes on', async (t) => {
  const reader = await pathReader(file(t), undefined);
  t.teardown(() => reader.close());
  await reader.read(MIB, 0);
  // a piece whose aligned window does not fit the reader's 1 MiB buffer: refused
  reader.prefetch!(MIB + 4096, MIB);
  await t.rejects(reader.read(MIB + 4096, MIB), /exceeds/, 'the read that takes it');
  t.ok((await reader.read(MIB, MIB)).equals(content.subarray(MIB, 2 * MIB)), 'the next read');
});

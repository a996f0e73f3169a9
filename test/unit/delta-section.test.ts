/**
 * The chunk index file's `delta` section as a device judges it (manifests/delta.ts parseDeltaSection):
 * what it accepts, and that every refusal says which field is wrong (the device then installs the
 * full payload, install/route.ts).
 */
import t from 'tap';
import { DELTA_FORMAT, MAX_DELTA_INDEX_FILE_BYTES, parseDeltaSection } from '../../manifests/delta.js';

const SHA = 'ab'.repeat(32);
const good = {
  format: DELTA_FORMAT,
  index: { target: 'releases/1.1.0/image.zst.delta-index', length: 1234, sha256: SHA },
  pack: { target: 'releases/1.1.0/image.zst.delta-pack', length: 5 * 2 ** 30, sha256: SHA },
};

t.test('a well-formed section is taken as is', async (t) => {
  const r = parseDeltaSection(good);
  t.ok(r.ok);
  if (r.ok) t.same(r.section, good);
});

t.test('refusals name the field', async (t) => {
  const cases: [unknown, RegExp][] = [
    [null, /not an object/],
    [[good], /not an object/],
    [{ ...good, format: 'slotflip-delta-3' }, /delta format "slotflip-delta-3" is not slotflip-delta-1 or slotflip-delta-2/],
    [{ ...good, index: undefined }, /delta\.index is missing/],
    [{ ...good, index: { ...good.index, target: '../../etc/passwd' } }, /delta\.index\.target/],
    [{ ...good, index: { ...good.index, target: '' } }, /delta\.index\.target/],
    [{ ...good, index: { ...good.index, length: MAX_DELTA_INDEX_FILE_BYTES + 1 } }, /delta\.index\.length .* is not 1\.\./],
    [{ ...good, index: { ...good.index, length: 0 } }, /delta\.index\.length/],
    [{ ...good, pack: { ...good.pack, length: 1.5 } }, /delta\.pack\.length/],
    [{ ...good, pack: { ...good.pack, sha256: 'AB'.repeat(32) } }, /delta\.pack\.sha256/],
  ];
  for (const [v, why] of cases) {
    const r = parseDeltaSection(v);
    t.notOk(r.ok, `refused: ${JSON.stringify(v)?.slice(0, 80)}`);
    if (!r.ok) t.match(r.why, why);
  }
});

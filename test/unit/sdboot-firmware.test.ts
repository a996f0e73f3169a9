// systemd-boot's own selection rules (src/boot/boot.c: boot_entry_compare, config_select_default_entry,
// boot_entry_parse_tries), as the pure functions the emulated board and the backend share implement
// them. The case that matters: a loader.conf `default` that names an entry keeps picking it after its
// tries ran out (`+0-N`); only an entry `default` does not pick is skipped for being bad.
import t from 'tap';
import { sdbootChoose, sdbootCompare, sdbootEntry, sdbootNextName, firmwareLoaderDefault, slotDefaultPattern, verCmp, type SdbootEntry } from '../../hal/backends/systemd-boot.js';

const e = (file: string, text = '', rule: 'strip-counter' | 'file-name' = 'strip-counter'): SdbootEntry => sdbootEntry(file, text, rule)!;
const files = (xs: Array<SdbootEntry | undefined>) => xs.map((x) => x?.file);

t.test('a default naming an entry picks it even when it has no tries left', async (t) => {
  const a = e('slotflip-a.conf');
  const bBad = e('slotflip-b+0-3.conf');
  t.equal(sdbootChoose([a, bBad], 'slotflip-b.conf')?.file, 'slotflip-b+0-3.conf', 'v258 ids: the bad entry is still the default');
  t.equal(sdbootChoose([a, bBad], undefined)?.file, 'slotflip-a.conf', 'no default: bad entries sort last');
  t.equal(sdbootChoose([a, bBad], 'slotflip-*')?.file, 'slotflip-a.conf', 'a glob matching both: the first that is not bad');
  t.equal(sdbootChoose([e('slotflip-a+0.conf'), e('slotflip-b+0-1.conf')], 'slotflip-*')?.file, 'slotflip-b+0-1.conf', 'all bad: menu order (id, newest first)');
});

t.test('ids: v258 strips the counter, v252 keeps the whole file name', async (t) => {
  t.equal(e('slotflip-b+3.conf').id, 'slotflip-b.conf');
  t.equal(e('Slotflip-B+3-1.conf', '', 'file-name').id, 'slotflip-b+3-1.conf');
  const a = e('slotflip-a.conf', '', 'file-name');
  const bTrial = e('slotflip-b+3.conf', '', 'file-name');
  t.equal(sdbootChoose([a, bTrial], 'slotflip-b.conf')?.file, 'slotflip-b+3.conf', 'v252: the default matches nothing, menu order puts b before a');
  const aTrial = e('slotflip-a+3.conf', '', 'file-name');
  const b = e('slotflip-b.conf', '', 'file-name');
  t.equal(sdbootChoose([aTrial, b], 'slotflip-a.conf')?.file, 'slotflip-b.conf', 'v252: a trial of A named by the default never boots');
});

t.test('menu order: sort-key entries first, then version newest first, then id newest first', async (t) => {
  const a1 = e('slotflip-a.conf', 'title A\nsort-key slotflip\nversion 2\n');
  const b1 = e('slotflip-b+2.conf', 'sort-key slotflip\nversion 1\n');
  const plain = e('zzz.conf', 'title other\n');
  t.same(files([a1, b1, plain].sort(sdbootCompare)), ['slotflip-a.conf', 'slotflip-b+2.conf', 'zzz.conf']);
  t.same(files([e('x-1.conf'), e('x-10.conf'), e('x-9.conf')].sort(sdbootCompare)), ['x-10.conf', 'x-9.conf', 'x-1.conf'], 'ids compare as versions');
  t.ok(verCmp('10', '9') > 0 && verCmp('a', 'b') < 0 && verCmp('1', '1.1') < 0 && verCmp(undefined, '0') < 0);
  t.same(e('x.conf', 'options root=/dev/a\noptions quiet\n# version 9\n').options, 'root=/dev/a quiet');
  t.equal(e('x.conf', '# version 9\n').version, undefined, 'comments are not keys');
});

t.test('counting renames and loader.conf as the firmware reads them', async (t) => {
  t.equal(sdbootNextName({ base: 'b', triesLeft: 3 }), 'b+2-1.conf');
  t.equal(sdbootNextName({ base: 'b', triesLeft: 0, triesDone: 3 }), 'b+0-4.conf', 'a bad entry booted anyway keeps counting');
  t.equal(sdbootNextName({ base: 'b' }), undefined);
  t.equal(firmwareLoaderDefault('timeout 0\ndefault a.conf\nbogus\ndefault b*\n'), 'b*', 'last default wins, junk lines skipped');
  t.equal(firmwareLoaderDefault('timeout 0\n'), undefined);
  t.equal(slotDefaultPattern({ A: 'slotflip-a', B: 'slotflip-b' }), 'slotflip-*');
  t.equal(slotDefaultPattern({ A: 'os', B: 'other' }), 'o*');
  t.equal(slotDefaultPattern({ A: 'a', B: 'b' }), '*');
});

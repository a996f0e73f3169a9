// Property tests for every hal/ parser: round trips hold, and arbitrary input either parses or throws
// a coded SlotflipError — never a TypeError, never a silent misread.
import t from 'tap';
import fc from 'fast-check';
import { decodeEnvBlock, encodeEnvBlock, formatSetenvScript, parseFwPrintenv, pickRedundantCopy, isEnvName } from '../../hal/uboot-env.js';
import { encodeGrubEnvBlock, parseGrubEditenvList, parseGrubEnvBlock, GRUBENV_SIZE } from '../../hal/grub-env.js';
import { formatAutoboot, parseAutoboot, parseTrybootFlag } from '../../hal/backends/rpi-tryboot.js';
import { formatEntryName, parseEntryName, loaderDefault, setLoaderDefault } from '../../hal/backends/systemd-boot.js';
import { parseCustomBooted, parseCustomState } from '../../hal/backends/custom.js';
import { formatCustomStateFile, parseCustomStateFile } from '../../hal/backends/custom-reference.js';
import { emulatedSelect, formatEmulatedState, parseEmulatedState, type EmulatedState } from '../../hal/backends/emulated.js';
import { parseCmdline, slotFromCmdline } from '../../hal/cmdline.js';
import { makeTestImage, readImageHeader } from '../../hal/image.js';
import { isCoded } from '../../hal/errors.js';

const RUNS = { numRuns: 300 };

/** `fn` returns, or throws an error carrying `code`. */
function parsesOrCoded(fn: () => unknown, code: string): boolean {
  try {
    fn();
    return true;
  } catch (e) {
    if (isCoded(e, code)) return true;
    throw e;
  }
}

const envName = fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{0,15}$/);
const envValue = fc.string({ maxLength: 40 }).filter((v) => !/[\0\n\r]/.test(v));
const envMap = fc.dictionary(envName, envValue, { maxKeys: 12 }).map((o) => new Map(Object.entries(o)));
const slot = fc.constantFrom('A' as const, 'B' as const);

t.test('U-Boot: fw_printenv output round-trips through the setenv script format', async (t) => {
  fc.assert(
    fc.property(envMap, (env) => {
      const nonEmpty = new Map([...env].filter(([, v]) => v !== ''));
      const script = formatSetenvScript(Object.fromEntries(nonEmpty));
      t.same(parseFwPrintenv(script), nonEmpty);
    }),
    RUNS,
  );
  t.throws(() => formatSetenvScript({ x: 'a\nb=c' }), { code: 'HAL_BOOTENV_VALUE' }, 'no newline injection');
  t.throws(() => formatSetenvScript({ 'a b': '1' }), { code: 'HAL_BOOTENV_VALUE' });
  t.throws(() => parseFwPrintenv('BOOT_ORDER A B\n'), { code: 'HAL_BOOTENV_PARSE' }, '"name value" is not name=value');
  t.throws(() => parseFwPrintenv('a=1\na=2\n'), { code: 'HAL_BOOTENV_PARSE' });
  t.equal(isEnvName('BOOT_A_LEFT'), true);
});

t.test('U-Boot: arbitrary fw_printenv output parses or is HAL_BOOTENV_PARSE', async () => {
  fc.assert(fc.property(fc.string({ maxLength: 200 }), (s) => parsesOrCoded(() => parseFwPrintenv(s), 'HAL_BOOTENV_PARSE')), RUNS);
});

t.test('U-Boot: binary blocks round-trip, any corruption is caught by the CRC', async (t) => {
  fc.assert(
    fc.property(envMap, fc.boolean(), fc.integer({ min: 0, max: 255 }), fc.nat(), (env, redundant, flag, pos) => {
      const block = encodeEnvBlock(env, 2048, redundant, flag);
      const back = decodeEnvBlock(block, redundant);
      t.ok(back.crcOk);
      t.same(back.env, new Map([...env].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))));
      if (redundant) t.equal(back.flag, flag);
      const torn = Buffer.from(block);
      const at = (redundant ? 5 : 4) + (pos % (2048 - (redundant ? 5 : 4)));
      torn[at] = torn[at]! ^ 0x01;
      t.notOk(decodeEnvBlock(torn, redundant).crcOk, 'a flipped bit fails the CRC');
    }),
    { numRuns: 100 },
  );
  fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), fc.boolean(), (bytes, r) => typeof decodeEnvBlock(bytes, r).crcOk === 'boolean'), RUNS);
  t.throws(() => encodeEnvBlock(new Map([['a', 'x'.repeat(100)]]), 64, false), { code: 'HAL_BOOTENV_VALUE' });
});

t.test('U-Boot: redundant copy selection follows env_import_redund', async (t) => {
  const ok = (flag: number) => ({ crcOk: true, flag, env: new Map() });
  const bad = { crcOk: false, flag: 9, env: new Map() };
  t.equal(pickRedundantCopy(ok(1), ok(2)), 1);
  t.equal(pickRedundantCopy(ok(3), ok(2)), 0);
  t.equal(pickRedundantCopy(ok(255), ok(0)), 1, 'wraps');
  t.equal(pickRedundantCopy(ok(0), ok(255)), 0, 'wraps');
  t.equal(pickRedundantCopy(bad, ok(0)), 1);
  t.equal(pickRedundantCopy(ok(7), bad), 0);
  t.equal(pickRedundantCopy(bad, bad), undefined);
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 254 }), (f) => pickRedundantCopy(ok(f), ok(f + 1)) === 1 && pickRedundantCopy(ok(f + 1), ok(f)) === 0),
    RUNS,
  );
});

t.test('GRUB: grubenv blocks round-trip with escapes; arbitrary blocks parse or are HAL_BOOTENV_PARSE', async (t) => {
  const grubMap = fc.dictionary(fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{0,10}$/), fc.string({ maxLength: 20 }).filter((v) => !v.includes('\0') && /^[\x01-\x7e]*$/.test(v)), { maxKeys: 10 }).map((o) => new Map(Object.entries(o)));
  fc.assert(
    fc.property(grubMap, (env) => {
      const block = encodeGrubEnvBlock(env);
      t.equal(block.length, GRUBENV_SIZE);
      t.same(parseGrubEnvBlock(block), env);
    }),
    RUNS,
  );
  fc.assert(
    fc.property(fc.uint8Array({ minLength: GRUBENV_SIZE, maxLength: GRUBENV_SIZE }), fc.boolean(), (bytes, withHeader) => {
      const b = Buffer.from(bytes);
      if (withHeader) b.write('# GRUB Environment Block\n', 0, 'latin1');
      return parsesOrCoded(() => parseGrubEnvBlock(b), 'HAL_BOOTENV_PARSE');
    }),
    RUNS,
  );
  fc.assert(fc.property(fc.string({ maxLength: 200 }), (s) => parsesOrCoded(() => parseGrubEditenvList(s), 'HAL_BOOTENV_PARSE')), RUNS);
  t.throws(() => parseGrubEnvBlock(Buffer.alloc(10)), { code: 'HAL_BOOTENV_PARSE' });
  t.throws(() => encodeGrubEnvBlock(new Map([['a', 'x'.repeat(2000)]])), { code: 'HAL_BOOTENV_VALUE' });
});

t.test('rpi-tryboot: autoboot.txt round-trips; arbitrary text parses or is HAL_BOOTENV_PARSE', async (t) => {
  fc.assert(
    fc.property(fc.boolean(), fc.integer({ min: 1, max: 99 }), fc.integer({ min: 1, max: 99 }), (ab, p, q) => {
      const a = { trybootAB: ab, bootPartition: p, trybootPartition: q };
      t.same(parseAutoboot(formatAutoboot(a)), a);
    }),
    { numRuns: 50 },
  );
  t.same(parseAutoboot('# comment\n[all]\ntryboot_a_b=1\nboot_partition=2\n'), { trybootAB: true, bootPartition: 2, trybootPartition: 2 });
  t.throws(() => parseAutoboot('[all]\nboot_partition=2\n[pi4]\nboot_partition=3\n'), { code: 'HAL_BOOTENV_PARSE' });
  t.throws(() => parseAutoboot('[all]\nboot_partition=2\nboot_partition=3\n'), { code: 'HAL_BOOTENV_PARSE' });
  t.throws(() => parseAutoboot('[all]\ntryboot_a_b=1\n'), { code: 'HAL_BOOTENV_PARSE' });
  fc.assert(fc.property(fc.string({ maxLength: 120 }), (s) => parsesOrCoded(() => parseAutoboot(s), 'HAL_BOOTENV_PARSE')), RUNS);
  t.equal(parseTrybootFlag(Buffer.from([0, 0, 0, 1])), true);
  t.equal(parseTrybootFlag(Buffer.from([0, 0, 0, 0])), false);
  t.throws(() => parseTrybootFlag(Buffer.from([1])), { code: 'HAL_BOOTENV_PARSE' });
});

t.test('systemd-boot: entry names and loader.conf', async (t) => {
  const base = fc.stringMatching(/^[a-z][a-z0-9-]{0,12}$/);
  fc.assert(
    fc.property(base, fc.option(fc.nat(9999), { nil: undefined }), fc.option(fc.nat(9999), { nil: undefined }), (b, left, done) => {
      const e = { base: b, ...(left === undefined ? {} : { triesLeft: left, ...(done === undefined ? {} : { triesDone: done }) }) };
      t.same(parseEntryName(formatEntryName(e)), e);
    }),
    RUNS,
  );
  t.same(parseEntryName('slotflip-b+2-1.conf'), { base: 'slotflip-b', triesLeft: 2, triesDone: 1 });
  t.equal(parseEntryName('README'), undefined);
  t.equal(loaderDefault('timeout 0\n# x\ndefault slotflip-a.conf\n'), 'slotflip-a.conf');
  t.equal(setLoaderDefault('timeout 0\ndefault slotflip-a.conf\n', 'slotflip-b.conf'), 'timeout 0\ndefault slotflip-b.conf\n');
  t.equal(setLoaderDefault('', 'x.conf'), 'default x.conf\n');
  t.throws(() => loaderDefault('default\n'), { code: 'HAL_BOOTENV_PARSE' });
  // the firmware's choice among entries (sdbootChoose) is tested in test/unit/sdboot-firmware.test.ts
});

t.test('custom protocol output is parsed strictly', async (t) => {
  t.equal(parseCustomBooted('A\n'), 'A');
  t.equal(parseCustomBooted('B'), 'B');
  for (const bad of ['', 'a\n', 'A\nB\n', ' A\n', 'AB\n', 'A \n']) t.throws(() => parseCustomBooted(bad), { code: 'HAL_CUSTOM_OUTPUT' }, JSON.stringify(bad));
  t.same(parseCustomState('trial 3 1\n'), { state: 'trial', triesLeft: 3, primary: true });
  t.same(parseCustomState('good 0 0'), { state: 'good', primary: false });
  for (const bad of ['good 1 0\n', 'trial 03 1\n', 'bad 0 2\n', 'good 0 1\nextra\n', 'GOOD 0 1\n', 'trial -1 0\n']) t.throws(() => parseCustomState(bad), { code: 'HAL_CUSTOM_OUTPUT' }, JSON.stringify(bad));
  fc.assert(fc.property(fc.string({ maxLength: 30 }), (s) => parsesOrCoded(() => parseCustomState(s), 'HAL_CUSTOM_OUTPUT') && parsesOrCoded(() => parseCustomBooted(s), 'HAL_CUSTOM_OUTPUT')), RUNS);
});

const slotState = fc.oneof(fc.constant({ state: 'good' as const }), fc.constant({ state: 'bad' as const }), fc.nat(20).map((n) => ({ state: 'trial' as const, triesLeft: n })));
const emState = fc.record({ schema: fc.constant(1 as const), primary: slot, slots: fc.record({ A: slotState, B: slotState }) }) as fc.Arbitrary<EmulatedState>;

t.test('emulated and custom state files round-trip; junk is HAL_BOOTENV_PARSE', async (t) => {
  fc.assert(
    fc.property(emState, (s) => {
      t.same(parseEmulatedState(formatEmulatedState(s)), s);
      t.same(parseCustomStateFile(formatCustomStateFile(s)), { primary: s.primary, slots: s.slots });
    }),
    RUNS,
  );
  fc.assert(fc.property(fc.json(), (j) => parsesOrCoded(() => parseEmulatedState(j), 'HAL_BOOTENV_PARSE')), RUNS);
  fc.assert(fc.property(fc.string({ maxLength: 60 }), (s) => parsesOrCoded(() => parseCustomStateFile(s), 'HAL_BOOTENV_PARSE')), RUNS);
});

t.test('emulated bootloader: never picks a bad slot, always counts a trial down', async () => {
  fc.assert(
    fc.property(emState, (s) => {
      const { slot: picked, next } = emulatedSelect(s);
      if (picked === null) return (['A', 'B'] as const).every((x) => next.slots[x].state === 'bad' || (next.slots[x].state === 'trial' && next.slots[x].triesLeft === 0));
      const before = s.slots[picked];
      if (before.state === 'bad') return false;
      if (before.state === 'trial') return before.triesLeft! > 0 && next.slots[picked].triesLeft === before.triesLeft! - 1;
      return true;
    }),
    RUNS,
  );
});

t.test('kernel command line', async (t) => {
  t.equal(slotFromCmdline('console=ttyS0 rauc.slot=B root=/dev/x', { key: 'rauc.slot' }), 'B');
  t.equal(slotFromCmdline('root=/dev/mmcblk0p3 quiet', { key: 'root', values: { A: '/dev/mmcblk0p2', B: '/dev/mmcblk0p3' } }), 'B');
  t.equal(slotFromCmdline('slotflip.slot=C'), undefined);
  t.equal(slotFromCmdline('slotflip.slot=A slotflip.slot=B'), 'B', 'last wins');
  t.same(parseCmdline('a="x y" b'), [{ key: 'a', value: 'x y' }, { key: 'b', value: undefined }]);
  fc.assert(fc.property(fc.string({ maxLength: 80 }), slot, (junk, s) => slotFromCmdline(`${junk.replace(/slotflip\.slot/g, '')} slotflip.slot=${s}`) === s), RUNS);
});

t.test('test image headers', async (t) => {
  const img = makeTestImage({ version: '1.2.3', size: 8192, healthy: false });
  t.match(readImageHeader(img), { version: '1.2.3', size: 8192, boots: true, healthy: false });
  t.equal(readImageHeader(Buffer.alloc(4096)), undefined);
  t.not(makeTestImage({ version: '1', size: 5000 }).subarray(4096).toString('hex'), makeTestImage({ version: '2', size: 5000 }).subarray(4096).toString('hex'), 'bodies differ per version');
  t.throws(() => makeTestImage({ version: 'x', size: 10 }), { code: 'HAL_BAD_ARGUMENT' });
  fc.assert(fc.property(fc.uint8Array({ maxLength: 4096 }), (b) => readImageHeader(b) === undefined), RUNS);
  fc.assert(
    fc.property(fc.nat(4095), fc.integer({ min: 1, max: 255 }), (pos, x) => {
      const h = Buffer.from(img.subarray(0, 4096));
      h[pos] = h[pos]! ^ x;
      const r = readImageHeader(h);
      // a damaged header is either rejected or still names a (possibly different) version; it never throws
      return r === undefined || typeof r.version === 'string';
    }),
    RUNS,
  );
});

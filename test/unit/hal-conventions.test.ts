// Model tests for the pure bootloader-variable conventions and the registry's config schema: any
// sequence of allowed operations leaves the states the BootControl contract promises, and repeating an
// operation changes nothing.
import t from 'tap';
import fc from 'fast-check';
import { Ajv } from 'ajv';
import { raucUbootConvention, menderConvention } from '../../hal/backends/uboot.js';
import { greenbootConvention, raucGrubConvention } from '../../hal/backends/grub.js';
import { effectiveChanges, type EnvConvention } from '../../hal/backends/env-convention.js';
import { bootBackendSchema, createBootControl } from '../../hal/registry.js';
import { otherSlot, type SlotName } from '../../hal/boot-control.js';
import { isCoded } from '../../hal/errors.js';

const CONVENTIONS: Array<[EnvConvention, Record<string, string>]> = [
  [raucUbootConvention(), { BOOT_ORDER: 'A', BOOT_A_LEFT: '3', BOOT_B_LEFT: '0' }],
  [menderConvention(), { mender_boot_part: '2', mender_boot_part_hex: '2', upgrade_available: '0', bootcount: '0', bootlimit: '1' }],
  [greenbootConvention(), { slotflip_slot: 'A', boot_success: '1' }],
  [raucGrubConvention(), { ORDER: 'A B', A_OK: '1', A_TRY: '0', B_OK: '0', B_TRY: '0' }],
];

type Op = { op: 'commit' | 'markBad'; slot: SlotName } | { op: 'armTrial'; slot: SlotName; tries: number };
const slot = fc.constantFrom<SlotName>('A', 'B');
const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constant('commit' as const), slot }),
  fc.record({ op: fc.constant('markBad' as const), slot }),
  fc.record({ op: fc.constant('armTrial' as const), slot, tries: fc.integer({ min: 1, max: 5 }) }),
);

function apply(env: Map<string, string>, ch: Record<string, string>): void {
  for (const [k, v] of Object.entries(ch)) if (v === '') env.delete(k);
    else env.set(k, v);
}

for (const [conv, initial] of CONVENTIONS) {
  t.test(`${conv.name} (${Object.keys(initial)[0]}) convention model`, async (t) => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 12 }), (ops) => {
        const env = new Map(Object.entries(initial));
        for (const o of ops) {
          const other = conv.state(env, otherSlot(o.slot));
          // the registry's guards: no trial without a good fallback; the sole good slot is never marked bad
          if (o.op === 'armTrial' && other.state !== 'good') continue;
          if (o.op === 'markBad' && other.state !== 'good') continue;
          let ch: Record<string, string>;
          try {
            ch = o.op === 'armTrial' ? conv.armTrial(env, o.slot, Math.min(o.tries, conv.maxTries)) : conv[o.op](env, o.slot);
          } catch (e) {
            if (isCoded(e, 'HAL_BOOTENV_UNSUPPORTED')) continue;
            throw e;
          }
          apply(env, ch);
          const again = o.op === 'armTrial' ? conv.armTrial(env, o.slot, Math.min(o.tries, conv.maxTries)) : conv[o.op](env, o.slot);
          if (Object.keys(effectiveChanges(env, again)).length !== 0) return false; // idempotent
          const s = conv.state(env, o.slot);
          if (o.op === 'commit' && !(s.state === 'good' && s.primary)) return false;
          if (o.op === 'markBad' && !(s.state === 'bad' && !s.primary)) return false;
          if (o.op === 'armTrial') {
            if (!(s.state === 'trial' && s.primary && s.triesLeft === Math.min(o.tries, conv.maxTries))) return false;
            if (conv.state(env, otherSlot(o.slot)).state !== 'good') return false;
          }
          // never both slots bad
          if (conv.state(env, 'A').state === 'bad' && conv.state(env, 'B').state === 'bad') return false;
        }
        return true;
      }),
      { numRuns: 300 },
    );
  });
}

t.test('bootBackendSchema validates every backend config and rejects unknown keys', async (t) => {
  const ajv = new Ajv({ allErrors: true, strict: true });
  const validate = ajv.compile(bootBackendSchema);
  const good = [
    { type: 'emulated', stateFile: '/var/lib/slotflip/boot.json' },
    { type: 'uboot', convention: 'rauc', fwEnvConfig: '/etc/fw_env.config', attempts: 3, cmdline: { key: 'rauc.slot' } },
    { type: 'uboot', convention: 'mender', fwEnvConfig: '/etc/fw_env.config', partitions: { A: 2, B: 3 }, cmdline: { key: 'root', values: { A: '/dev/mmcblk0p2', B: '/dev/mmcblk0p3' } } },
    { type: 'grub', convention: 'greenboot', envFile: '/boot/efi/EFI/debian/grubenv', grubEditenv: '/usr/bin/grub-editenv' },
    { type: 'grub', convention: 'rauc', envFile: '/boot/grub/grubenv' },
    { type: 'rpi-tryboot', bootDir: '/boot/firmware', partitions: { A: 2, B: 3 } },
    { type: 'systemd-boot', esp: '/efi', entries: { A: 'os-a', B: 'os-b' } },
    { type: 'custom', command: '/usr/lib/slotflip/boot', args: ['--board', 'x'], timeoutMs: 5000 },
  ];
  for (const c of good) t.ok(validate(c), `${c.type}: ${JSON.stringify(validate.errors)}`);
  const bad = [
    { type: 'uboot', convention: 'rauc', fwEnvConfig: '/etc/fw_env.config', typo: 1 },
    { type: 'uboot', convention: 'greenboot', fwEnvConfig: '/x' },
    { type: 'grub', convention: 'rauc' },
    { type: 'lilo' },
    { type: 'custom', command: '' },
    { type: 'rpi-tryboot', bootDir: '/boot', partitions: { A: 2 } },
    { type: 'emulated', stateFile: '/x', cmdline: { key: 'a b' } },
  ];
  for (const c of bad) t.notOk(validate(c), JSON.stringify(c));
});

t.test('the registry builds every backend type', async (t) => {
  const types = ['emulated', 'uboot', 'grub', 'rpi-tryboot', 'systemd-boot', 'custom'];
  const cfgs = [
    { type: 'emulated', stateFile: '/nonexistent-slotflip-test/x' },
    { type: 'uboot', convention: 'rauc', fwEnvConfig: '/nonexistent-slotflip-test/fw_env.config' },
    { type: 'grub', convention: 'greenboot', envFile: '/nonexistent-slotflip-test/grubenv' },
    { type: 'rpi-tryboot', bootDir: '/nonexistent-slotflip-test' },
    { type: 'systemd-boot', esp: '/nonexistent-slotflip-test' },
    { type: 'custom', command: '/nonexistent-slotflip-test' },
  ] as const;
  for (const [i, c] of cfgs.entries()) {
    const bc = createBootControl(c);
    t.equal(bc.backend, types[i]);
    await t.rejects(bc.slotState('A'), { code: c.type === 'custom' ? /^HAL_(TOOL_MISSING|CUSTOM_FAILED)$/ : 'HAL_BOOTENV_READ' });
    await t.rejects(bc.slotState('C' as SlotName), { code: 'HAL_BAD_ARGUMENT' });
  }
});

/**
 * Emulated boards: a directory with two slot images, a bootloader environment in that bootloader's
 * own on-disk format, a kernel command line file and a boot log. `powerCycle` runs the bootloader's
 * selection logic against that environment — the same script logic a real board runs (RAUC's U-Boot
 * script, Mender's bootcount/altbootcmd, greenboot's and RAUC's grub.cfg, systemd-boot's boot
 * counting, the Raspberry Pi firmware's tryboot) — and saves the environment back the way the
 * bootloader would (U-Boot `saveenv` to the other redundant copy, GRUB `save_env` in place, renames
 * on the ESP). The OS side uses the real backends (fw_setenv, grub-editenv) against the same files.
 * systemd-boot follows src/boot/boot.c (menu order, a `default` glob that may pick a bad entry, the
 * id rule of systemd ≥ 258 or ≤ 257 as the board's convention); the Pi firmware reads autoboot.txt's
 * [tryboot] section only on the one power-on after `reboot "0 tryboot"`.
 *
 * The kernel "comes up" when the chosen slot holds a complete test image built to boot
 * (hal/image.ts); otherwise the attempt fails, the watchdog resets, and the bootloader's counters
 * decide the next attempt — up to `maxAttempts` resets per power cycle.
 *
 * Trade-off: the selection logic is a faithful re-implementation, not the bootloader binary; the QEMU
 * lane runs the real U-Boot and GRUB against the same env formats.
 */
import { appendFile, mkdir, open, readdir, readFile, rename, writeFile, chmod } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { SlotflipError } from './errors.js';
import { writeFileAtomic, fsyncDir, readFileCapped } from './atomic-file.js';
import { otherSlot, type SlotName } from './boot-control.js';
import type { BootBackendConfig } from './registry.js';
import { slotFromCmdline, type CmdlineConfig } from './cmdline.js';
import { decodeEnvBlock, encodeEnvBlock, pickRedundantCopy } from './uboot-env.js';
import { encodeGrubEnvBlock, parseGrubEnvBlock } from './grub-env.js';
import { emulatedSelect, formatEmulatedState, initialEmulatedState, readEmulatedState } from './backends/emulated.js';
import { formatAutoboot, parseAutoboot } from './backends/rpi-tryboot.js';
import { firmwareLoaderDefault, sdbootChoose, sdbootEntry, sdbootNextName, systemdBootFiles, type SdbootEntry, type SdbootIdRule } from './backends/systemd-boot.js';
import { CUSTOM_REFERENCE_SCRIPT, formatCustomStateFile, parseCustomStateFile } from './backends/custom-reference.js';
import { checkSlotImage, makeTestImage, readImageHeader, type TestImageHeader } from './image.js';

export { makeTestImage, readImageHeader, type TestImageHeader };

export type BoardBackend = 'emulated' | 'uboot' | 'grub' | 'systemd-boot' | 'rpi-tryboot' | 'custom';
export const BOARD_BACKENDS: readonly BoardBackend[] = ['emulated', 'uboot', 'grub', 'systemd-boot', 'rpi-tryboot', 'custom'];
const CONVENTIONS: Record<BoardBackend, readonly string[]> = {
  emulated: [],
  uboot: ['rauc', 'mender'],
  grub: ['greenboot', 'rauc'],
  // systemd-boot: which firmware the emulated ESP behaves like (how entry ids are formed, see
  // hal/backends/systemd-boot.ts SdbootIdRule): v258 and later, or up to v257 (Debian 12 ships 252)
  'systemd-boot': ['v258', 'v252'],
  'rpi-tryboot': [],
  custom: [],
};

export interface CreateBoardOptions {
  backend: BoardBackend;
  /** uboot: rauc (default) | mender; grub: greenboot (default) | rauc; systemd-boot: the firmware's
   * id rule, v258 (default: ids without the boot counter) | v252 (ids are whole file names). */
  convention?: string;
  /** bytes per slot (≥ 8192). */
  slotSize: number;
  /** uboot: bytes per environment copy, default 0x4000. */
  envSize?: number;
  /** uboot: two environment copies (default true). */
  redundant?: boolean;
  /** version of the factory image written to slot A, default `0.0.0`. */
  factoryVersion?: string;
  /** size of the factory image, default min(slotSize, 64 KiB). */
  factoryImageSize?: number;
  now?: () => number;
}

export interface BoardDescription {
  schema: 1;
  dir: string;
  backend: BoardBackend;
  convention?: string;
  slotSize: number;
  slots: { A: string; B: string };
  /** file standing in for /proc/cmdline, rewritten at each boot. */
  cmdlinePath: string;
  /** JSON lines, one per boot attempt. */
  bootLogPath: string;
  /** the config the daemon uses for this board's boot control (real tools for uboot/grub). */
  bootConfig: BootBackendConfig;
  /** partition numbers (mender, rpi-tryboot, kernel root=). */
  partitions: { A: number; B: number };
  uboot?: { envFile: string; envSize: number; redundant: boolean; fwEnvConfig: string; defaultEnv: Record<string, string> };
  grub?: { envFile: string; defaultEnv: Record<string, string> };
  emulated?: { stateFile: string };
  custom?: { stateFile: string; script: string };
  rpi?: { bootDir: string; trybootFlagFile: string };
  systemdBoot?: { esp: string };
}

export interface BootAttempt {
  slot: SlotName | null;
  ok: boolean;
  reason: string;
}

export interface PowerCycleResult {
  booted: SlotName | null;
  reason: string;
  /** version from the booted image's header. */
  version?: string;
  /** the booted image's `healthy` flag (what `board probe --health` reports). */
  healthy?: boolean;
  attempts: BootAttempt[];
  /** rpi-tryboot: the firmware booted in tryboot mode. */
  tryboot?: boolean;
}

export interface PowerCycleOptions {
  /** the argument the OS passed to reboot (e.g. `0 tryboot`); a power cut passes none. */
  rebootArgument?: string;
  /** watchdog resets before giving up, default 8. */
  maxAttempts?: number;
  now?: () => number;
}

const BOARD_FILE = 'board.json';
const PARTS = { A: 2, B: 3 } as const;

function rootDev(slot: SlotName): string {
  return `/dev/mmcblk0p${PARTS[slot]}`;
}

/** Creates a board in `dir` (created if missing): slot A holds a healthy factory image and is
 * committed, slot B is empty and bad; then powers it on once. */
export async function createBoard(dir: string, opts: CreateBoardOptions): Promise<BoardDescription> {
  dir = resolve(dir);
  if (!BOARD_BACKENDS.includes(opts.backend)) throw new SlotflipError('HAL_BAD_ARGUMENT', `unknown board backend ${JSON.stringify(opts.backend)}; use one of ${BOARD_BACKENDS.join(', ')}`);
  const convention = opts.convention ?? CONVENTIONS[opts.backend][0];
  if (convention !== undefined && !CONVENTIONS[opts.backend].includes(convention)) {
    throw new SlotflipError('HAL_BAD_ARGUMENT', `backend ${opts.backend} has no convention ${JSON.stringify(convention)}; use ${CONVENTIONS[opts.backend].join(' or ') || 'none'}`);
  }
  if (!Number.isSafeInteger(opts.slotSize) || opts.slotSize < 8192) throw new SlotflipError('HAL_BAD_ARGUMENT', `slot size must be a whole number ≥ 8192, got ${opts.slotSize}`);
  await mkdir(dir, { recursive: true });
  const slots = { A: join(dir, 'slot-a.img'), B: join(dir, 'slot-b.img') };
  for (const p of Object.values(slots)) {
    const fh = await open(p, 'w');
    await fh.truncate(opts.slotSize);
    await fh.close();
  }
  const factory = makeTestImage({ version: opts.factoryVersion ?? '0.0.0', size: opts.factoryImageSize ?? Math.min(opts.slotSize, 64 * 1024) });
  await writeFile(slots.A, factory, { flag: 'r+' });
  const cmdlinePath = join(dir, 'cmdline');
  const desc: BoardDescription = {
    schema: 1,
    dir,
    backend: opts.backend,
    ...(convention === undefined ? {} : { convention }),
    slotSize: opts.slotSize,
    slots,
    cmdlinePath,
    bootLogPath: join(dir, 'boot.log'),
    partitions: { ...PARTS },
    bootConfig: { type: 'emulated', stateFile: '' },
  };
  const cmdline = (c: CmdlineConfig = {}): CmdlineConfig => ({ path: cmdlinePath, ...c });
  switch (opts.backend) {
    case 'emulated': {
      const stateFile = join(dir, 'boot-state.json');
      await writeFileAtomic(stateFile, formatEmulatedState(initialEmulatedState()));
      desc.emulated = { stateFile };
      desc.bootConfig = { type: 'emulated', stateFile, cmdline: cmdline() };
      break;
    }
    case 'custom': {
      const stateFile = join(dir, 'custom-state');
      await writeFileAtomic(stateFile, formatCustomStateFile(initialEmulatedState()));
      const script = join(dir, 'custom-boot.sh');
      await writeFile(script, CUSTOM_REFERENCE_SCRIPT);
      await chmod(script, 0o755);
      desc.custom = { stateFile, script };
      desc.bootConfig = { type: 'custom', command: script, args: [stateFile, cmdlinePath] };
      break;
    }
    case 'uboot': {
      const envSize = opts.envSize ?? 0x4000;
      const redundant = opts.redundant ?? true;
      const envFile = join(dir, 'uboot.env');
      const fwEnvConfig = join(dir, 'fw_env.config');
      const defaultEnv: Record<string, string> =
        convention === 'mender'
          ? { mender_boot_part: '2', mender_boot_part_hex: '2', upgrade_available: '0', bootcount: '0', bootlimit: '1', bootcmd: 'run mender_setup; run mender_boot' }
          : { BOOT_ORDER: 'A', BOOT_A_LEFT: '3', BOOT_B_LEFT: '0', bootcmd: 'run rauc_boot' };
      const env = new Map(Object.entries(defaultEnv));
      const copies = redundant ? [encodeEnvBlock(env, envSize, true, 1), encodeEnvBlock(env, envSize, true, 0)] : [encodeEnvBlock(env, envSize, false)];
      await writeFile(envFile, Buffer.concat(copies));
      const hex = (n: number) => '0x' + n.toString(16);
      await writeFile(fwEnvConfig, copies.map((_, i) => `${envFile} ${hex(i * envSize)} ${hex(envSize)}\n`).join(''));
      desc.uboot = { envFile, envSize, redundant, fwEnvConfig, defaultEnv };
      desc.bootConfig =
        convention === 'mender'
          ? { type: 'uboot', convention: 'mender', fwEnvConfig, partitions: { ...PARTS }, cmdline: cmdline({ key: 'root', values: { A: rootDev('A'), B: rootDev('B') } }) }
          : { type: 'uboot', convention: 'rauc', fwEnvConfig, cmdline: cmdline({ key: 'rauc.slot' }) };
      break;
    }
    case 'grub': {
      const envFile = join(dir, 'grubenv');
      const defaultEnv: Record<string, string> = convention === 'rauc' ? { ORDER: 'A B', A_OK: '1', A_TRY: '0', B_OK: '0', B_TRY: '0' } : { slotflip_slot: 'A', boot_success: '1' };
      await writeFile(envFile, encodeGrubEnvBlock(new Map(Object.entries(defaultEnv))));
      desc.grub = { envFile, defaultEnv };
      desc.bootConfig =
        convention === 'rauc'
          ? { type: 'grub', convention: 'rauc', envFile, cmdline: cmdline({ key: 'rauc.slot' }) }
          : { type: 'grub', convention: 'greenboot', envFile, cmdline: cmdline() };
      break;
    }
    case 'rpi-tryboot': {
      const bootDir = join(dir, 'boot');
      const dtDir = join(dir, 'device-tree', 'chosen', 'bootloader');
      await mkdir(bootDir, { recursive: true });
      await mkdir(dtDir, { recursive: true });
      await writeFileAtomic(join(bootDir, 'autoboot.txt'), formatAutoboot({ trybootAB: true, bootPartition: PARTS.A, trybootPartition: PARTS.A }));
      const trybootFlagFile = join(dtDir, 'tryboot');
      desc.rpi = { bootDir, trybootFlagFile };
      desc.bootConfig = { type: 'rpi-tryboot', bootDir, partitions: { ...PARTS }, trybootFlagFile, cmdline: cmdline() };
      break;
    }
    case 'systemd-boot': {
      const esp = join(dir, 'esp');
      const entries = join(esp, 'loader', 'entries');
      await mkdir(entries, { recursive: true });
      const entry = (s: SlotName) => `title slotflip slot ${s}\nlinux /${s}/vmlinuz\noptions root=${rootDev(s)} rootwait slotflip.slot=${s}\n`;
      await writeFile(join(entries, 'slotflip-a.conf'), entry('A'));
      await writeFile(join(entries, 'slotflip-b+0.conf'), entry('B'));
      // the minimal layout (no sort-key/version, `default` naming A's entry) of boards set up before
      // the backend kept a glob default: the backend's first write migrates it step by step
      await writeFile(join(esp, 'loader', 'loader.conf'), 'timeout 0\ndefault slotflip-a.conf\n');
      desc.systemdBoot = { esp };
      desc.bootConfig = { type: 'systemd-boot', esp, cmdline: cmdline() };
      break;
    }
  }
  await writeFileAtomic(join(dir, BOARD_FILE), JSON.stringify(desc, null, 2) + '\n');
  await powerCycle(dir, { ...(opts.now ? { now: opts.now } : {}) });
  return desc;
}

/** Reads a board's description. Throws HAL_BOARD_MISSING when `dir` holds no board. */
export async function loadBoard(dir: string): Promise<BoardDescription> {
  const path = join(resolve(dir), BOARD_FILE);
  let text: string;
  try {
    text = (await readFileCapped(path, 1 << 20)).toString('utf8');
  } catch (cause) {
    throw new SlotflipError('HAL_BOARD_MISSING', `${dir} holds no emulated board (${BOARD_FILE} unreadable); create one with \`slotflip board create\``, { cause, details: { dir } });
  }
  const d = JSON.parse(text) as BoardDescription;
  if (d.schema !== 1 || !BOARD_BACKENDS.includes(d.backend)) throw new SlotflipError('HAL_BOARD_MISSING', `${path}: not a slotflip board description (schema 1)`, { details: { path } });
  return d;
}

/** What one bootloader run decided; `cmdline` is what it passes the kernel. */
interface Selection {
  slot: SlotName | null;
  note: string;
  cmdline: string;
}

type Bootloader = (b: BoardDescription, ctx: { tryboot: boolean }) => Promise<Selection>;

const cmdlineFor = (slot: SlotName, key = 'slotflip.slot') => `console=ttyS0 root=${rootDev(slot)} rootwait ${key}=${slot}`;

async function writeInPlace(path: string, data: Uint8Array, offset: number): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(data, 0, data.byteLength, offset);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** U-Boot: load the environment (redundant copies, CRC), run the convention's script, saveenv. */
const ubootLoader: Bootloader = async (b) => {
  const u = b.uboot!;
  const raw = await readFile(u.envFile);
  const copies = u.redundant ? [decodeEnvBlock(raw.subarray(0, u.envSize), true), decodeEnvBlock(raw.subarray(u.envSize, 2 * u.envSize), true)] : [decodeEnvBlock(raw.subarray(0, u.envSize), false)];
  const active = u.redundant ? pickRedundantCopy(copies[0]!, copies[1]!) : copies[0]!.crcOk ? 0 : undefined;
  const notes: string[] = [];
  let env: Map<string, string>;
  if (active === undefined) {
    notes.push('bad CRC, using default environment');
    env = new Map(Object.entries(u.defaultEnv));
  } else env = new Map(copies[active]!.env);
  const saveenv = async () => {
    if (!u.redundant) return writeInPlace(u.envFile, encodeEnvBlock(env, u.envSize, false), 0);
    const target = active === undefined ? 0 : 1 - active;
    const flag = active === undefined ? 1 : ((copies[active]!.flag ?? 0) + 1) & 0xff;
    return writeInPlace(u.envFile, encodeEnvBlock(env, u.envSize, true, flag), target * u.envSize);
  };
  const get = (k: string) => env.get(k) ?? '';
  const int = (k: string, d: number) => (/^-?\d+$/.test(get(k)) ? Number(get(k)) : d);
  if (b.convention === 'mender') {
    const part = get('mender_boot_part');
    let slot: SlotName = part === String(PARTS.B) ? 'B' : 'A';
    if (get('upgrade_available') === '1') {
      env.set('bootcount', String(int('bootcount', 0) + 1));
      await saveenv();
      if (int('bootcount', 0) > int('bootlimit', 1)) {
        slot = otherSlot(slot);
        env.set('mender_boot_part', String(PARTS[slot]));
        env.set('mender_boot_part_hex', PARTS[slot].toString(16));
        env.set('upgrade_available', '0');
        await saveenv();
        notes.push(`bootcount ${get('bootcount')} > bootlimit ${get('bootlimit')}: altbootcmd`);
      } else notes.push(`bootcount ${get('bootcount')} of ${get('bootlimit')}`);
    }
    return { slot, note: notes.concat(`mender_boot_part=${PARTS[slot]}`).join('; '), cmdline: `console=ttyS0 root=${rootDev(slot)} rootwait` };
  }
  // RAUC's U-Boot boot script
  const order = (env.has('BOOT_ORDER') ? get('BOOT_ORDER') : 'A B').split(' ').filter((s) => s === 'A' || s === 'B') as SlotName[];
  for (const s of order) {
    const left = int(`BOOT_${s}_LEFT`, 3);
    if (left > 0) {
      env.set(`BOOT_${s}_LEFT`, String(left - 1));
      await saveenv();
      return { slot: s, note: notes.concat(`slot ${s}, ${left - 1} attempts remaining`).join('; '), cmdline: cmdlineFor(s, 'rauc.slot') };
    }
  }
  env.set('BOOT_A_LEFT', '3');
  env.set('BOOT_B_LEFT', '3');
  await saveenv();
  return { slot: null, note: notes.concat('no valid slot found, resetting tries to 3').join('; '), cmdline: '' };
};

/** GRUB: load_env (a corrupt block loads nothing: grub.cfg defaults apply), the convention's
 * grub.cfg logic, save_env in place. */
const grubLoader: Bootloader = async (b) => {
  const g = b.grub!;
  const notes: string[] = [];
  let env: Map<string, string>;
  try {
    env = parseGrubEnvBlock(await readFile(g.envFile));
  } catch {
    notes.push('load_env failed, grub.cfg defaults');
    env = new Map(Object.entries(g.defaultEnv));
  }
  const get = (k: string) => env.get(k) ?? '';
  const save = () => writeInPlace(g.envFile, encodeGrubEnvBlock(env), 0);
  if (b.convention === 'rauc') {
    const order = (env.has('ORDER') ? get('ORDER') : 'A B').split(' ').filter((s) => s === 'A' || s === 'B') as SlotName[];
    const pick = () => order.find((s) => get(`${s}_OK`) === '1' && get(`${s}_TRY`) !== '1');
    let slot = pick();
    if (!slot) {
      for (const s of order) if (get(`${s}_OK`) === '1') env.set(`${s}_TRY`, '0');
      notes.push('all good slots tried: reset TRY flags');
      slot = pick();
    }
    if (!slot) {
      await save();
      return { slot: null, note: notes.concat('no slot with OK=1').join('; '), cmdline: '' };
    }
    env.set(`${slot}_TRY`, '1');
    await save();
    return { slot, note: notes.concat(`ORDER "${order.join(' ')}": slot ${slot}`).join('; '), cmdline: cmdlineFor(slot, 'rauc.slot') };
  }
  // greenboot: 08_fallback_counting, then 10_reset_boot_success
  const primary: SlotName = get('slotflip_slot') === 'B' ? 'B' : 'A';
  let slot = primary;
  if (get('boot_counter') !== '' && get('boot_success') === '0') {
    const c = get('boot_counter');
    if (c === '0' || c === '-1') {
      slot = otherSlot(primary);
      env.set('boot_counter', '-1');
      notes.push('boot_counter exhausted: rollback entry');
    } else {
      env.set('boot_counter', String((/^-?\d+$/.test(c) ? Number(c) : 0) - 1));
      notes.push(`boot_counter ${c} → ${get('boot_counter')}`);
    }
  }
  env.set('boot_success', '0');
  await save();
  return { slot, note: notes.concat(`slot ${slot}`).join('; '), cmdline: cmdlineFor(slot) };
};

const emulatedLoader: Bootloader = async (b) => {
  const stateFile = b.emulated!.stateFile;
  const { slot, next } = emulatedSelect(await readEmulatedState(stateFile));
  await writeFileAtomic(stateFile, formatEmulatedState(next));
  return slot ? { slot, note: `slot ${slot} (${next.slots[slot].state})`, cmdline: cmdlineFor(slot) } : { slot: null, note: 'no good or armed slot', cmdline: '' };
};

const rpiLoader: Bootloader = async (b, ctx) => {
  const r = b.rpi!;
  const a = parseAutoboot(await readFile(join(r.bootDir, 'autoboot.txt'), 'utf8'));
  const tryboot = ctx.tryboot && a.trybootAB;
  const part = tryboot ? a.trybootPartition : a.bootPartition;
  const slot: SlotName | null = part === PARTS.A ? 'A' : part === PARTS.B ? 'B' : null;
  const flag = Buffer.alloc(4);
  flag.writeUInt32BE(tryboot ? 1 : 0);
  await writeFile(r.trybootFlagFile, flag);
  return { slot, note: `${tryboot ? 'tryboot' : 'normal'} boot, boot_partition=${part}`, cmdline: slot ? cmdlineFor(slot) : '' };
};

/** systemd-boot (boot.c): every `.conf` in loader/entries (not dot files, not `auto-*`), menu order,
 * the first entry matching loader.conf's `default` glob whatever its counter (a bad `+0-N` entry
 * included: systemd-boot skips a bad entry only when `default` does not pick it), else the first in
 * menu order; a counting entry is renamed `+(LEFT-1)-(DONE+1)` (`+0-N` → `+0-(N+1)`) before it boots.
 * The board's convention picks how ids are formed: `v258` strips the counter, `v252` keeps it. */
const systemdBootLoader: Bootloader = async (b) => {
  const f = systemdBootFiles({ esp: b.systemdBoot!.esp });
  const rule: SdbootIdRule = b.convention === 'v252' ? 'file-name' : 'strip-counter';
  let conf = '';
  try {
    conf = await readFile(f.loaderConf, 'utf8');
  } catch {
    // no loader.conf: no default
  }
  const entries: SdbootEntry[] = [];
  for (const file of await readdir(f.entriesDir)) {
    if (file.startsWith('.') || file.startsWith('auto-') || !file.toLowerCase().endsWith('.conf')) continue;
    const e = sdbootEntry(file, await readFile(join(f.entriesDir, file), 'utf8'), rule);
    if (e) entries.push(e);
  }
  const chosen = sdbootChoose(entries, firmwareLoaderDefault(conf));
  if (!chosen) return { slot: null, note: 'no entries', cmdline: '' };
  const slot: SlotName | null = chosen.base === f.ids.A ? 'A' : chosen.base === f.ids.B ? 'B' : null;
  let note = `entry ${chosen.file}`;
  const next = sdbootNextName(chosen);
  if (next !== undefined) {
    await rename(join(f.entriesDir, chosen.file), join(f.entriesDir, next));
    await fsyncDir(f.entriesDir);
    note += ` → ${next}`;
  }
  if (!slot) return { slot: null, note: `${note}: not a slot entry`, cmdline: '' };
  return { slot, note, cmdline: (chosen.options ?? '').trim() };
};

/** Custom boards: the same policy as the emulated bootloader, on the reference script's state file. */
const customLoader: Bootloader = async (b) => {
  const stateFile = b.custom!.stateFile;
  const { slot, next } = emulatedSelect({ schema: 1, ...parseCustomStateFile(await readFile(stateFile, 'utf8')) });
  await writeFileAtomic(stateFile, formatCustomStateFile(next));
  return slot ? { slot, note: `slot ${slot} (${next.slots[slot].state})`, cmdline: cmdlineFor(slot) } : { slot: null, note: 'no good or armed slot', cmdline: '' };
};

const bootloaders: Record<BoardBackend, Bootloader> = {
  emulated: emulatedLoader,
  custom: customLoader,
  uboot: ubootLoader,
  grub: grubLoader,
  'rpi-tryboot': rpiLoader,
  'systemd-boot': systemdBootLoader,
};

/**
 * Powers the board on: runs the bootloader, checks whether the chosen slot's kernel comes up, and on a
 * failed attempt resets (watchdog) and runs the bootloader again, up to `maxAttempts` times. Writes
 * the cmdline file for the booted slot (empty when nothing booted) and appends every attempt to the
 * boot log.
 */
export async function powerCycle(dir: string, opts: PowerCycleOptions = {}): Promise<PowerCycleResult> {
  const b = await loadBoard(dir);
  const now = opts.now ?? Date.now;
  const ctx = { tryboot: /(^|\s)tryboot(\s|$)/.test(opts.rebootArgument ?? '') };
  const attempts: BootAttempt[] = [];
  const max = opts.maxAttempts ?? 8;
  const log = (a: BootAttempt & Record<string, unknown>) => appendFile(b.bootLogPath, JSON.stringify({ t: new Date(now()).toISOString(), ...a }) + '\n');
  for (let i = 0; i < max; i++) {
    const trybootNow = ctx.tryboot;
    const sel = await bootloaders[b.backend](b, ctx);
    ctx.tryboot = false; // the firmware's tryboot flag is one-shot
    if (!sel.slot) {
      const a = { slot: null, ok: false, reason: `bootloader: ${sel.note}` };
      attempts.push(a);
      await log(a);
      if (b.backend === 'uboot' && b.convention !== 'mender') continue; // the script resets and retries
      break;
    }
    const check = await checkSlotImage(b.slots[sel.slot], b.slotSize);
    const a = { slot: sel.slot, ok: check.boots, reason: `${sel.note}; ${check.reason}` };
    attempts.push(a);
    await log(a);
    if (check.boots) {
      await writeFileAtomic(b.cmdlinePath, sel.cmdline + '\n');
      return {
        booted: sel.slot,
        reason: a.reason,
        version: check.header!.version,
        healthy: check.header!.healthy,
        attempts,
        ...(b.backend === 'rpi-tryboot' ? { tryboot: trybootNow } : {}),
      };
    }
  }
  await writeFileAtomic(b.cmdlinePath, '\n');
  return { booted: null, reason: `nothing came up after ${attempts.length} attempt(s): ${attempts.at(-1)?.reason ?? 'no attempt'}`, attempts };
}

export type EnvFault = 'newest' | 'oldest' | 'primary' | 'secondary' | 'both';

/**
 * Fault hook for power-cut tests: tears the bootloader environment as a power cut in the middle of
 * its write would. U-Boot: garbles the chosen copy(ies) — `newest` is the copy the last write went to,
 * which is what a cut during that write leaves; GRUB (one block): any choice garbles the block;
 * emulated/custom: truncates the state file mid-way (what a non-atomic write would leave).
 */
export async function corruptEnv(dir: string, which: EnvFault): Promise<void> {
  const b = await loadBoard(dir);
  const garble = (path: string, offset: number, len: number) => writeInPlace(path, Buffer.alloc(len, 0xa5), offset);
  if (b.uboot) {
    const u = b.uboot;
    if (!u.redundant) return garble(u.envFile, 0, Math.min(64, u.envSize));
    const raw = await readFile(u.envFile);
    const c0 = decodeEnvBlock(raw.subarray(0, u.envSize), true);
    const c1 = decodeEnvBlock(raw.subarray(u.envSize, 2 * u.envSize), true);
    const newest = pickRedundantCopy(c0, c1) ?? 0;
    const targets = which === 'both' ? [0, 1] : which === 'primary' ? [0] : which === 'secondary' ? [1] : which === 'newest' ? [newest] : [1 - newest];
    for (const t of targets) await garble(u.envFile, t * u.envSize + 8, 32);
    return;
  }
  if (b.grub) return garble(b.grub.envFile, 0, 32);
  if (b.emulated) {
    const text = await readFile(b.emulated.stateFile);
    return writeFile(b.emulated.stateFile, text.subarray(0, Math.floor(text.length / 2)));
  }
  throw new SlotflipError('HAL_BAD_ARGUMENT', `corruptEnv: the ${b.backend} board keeps no environment block to tear; tear its files directly`);
}

/** Writes `image` into `slot` of the board, optionally only its first `bytes` (a torn write). */
export async function writeSlotImage(dir: string, slot: SlotName, image: Uint8Array, bytes = image.byteLength): Promise<void> {
  const b = await loadBoard(dir);
  if (image.byteLength > b.slotSize) throw new SlotflipError('HAL_SLOT_TOO_SMALL', `image of ${image.byteLength} bytes does not fit slot ${slot} (${b.slotSize} bytes)`);
  await writeInPlace(b.slots[slot], image.subarray(0, bytes), 0);
}

export interface BoardStatus {
  board: BoardDescription;
  /** slot named on the current cmdline, if any. */
  booted: SlotName | null;
  images: Record<SlotName, { version?: string; boots: boolean; healthy?: boolean; reason: string }>;
  lastBoot?: Record<string, unknown>;
}

export async function boardStatus(dir: string): Promise<BoardStatus> {
  const b = await loadBoard(dir);
  let cmdline = '';
  try {
    cmdline = await readFile(b.cmdlinePath, 'utf8');
  } catch {
    // never booted
  }
  const cfg = 'cmdline' in b.bootConfig && b.bootConfig.cmdline ? b.bootConfig.cmdline : {};
  const booted = slotFromCmdline(cmdline, cfg) ?? null;
  const images = {} as BoardStatus['images'];
  for (const s of ['A', 'B'] as const) {
    const c = await checkSlotImage(b.slots[s], b.slotSize);
    images[s] = { boots: c.boots, reason: c.reason, ...(c.header ? { version: c.header.version, healthy: c.header.healthy } : {}) };
  }
  let lastBoot: Record<string, unknown> | undefined;
  try {
    const lines = (await readFile(b.bootLogPath, 'utf8')).trim().split('\n');
    lastBoot = JSON.parse(lines.at(-1)!) as Record<string, unknown>;
  } catch {
    // no log yet
  }
  return { board: b, booted, images, ...(lastBoot ? { lastBoot } : {}) };
}


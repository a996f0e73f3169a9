/**
 * systemd-boot with Boot Loader Specification entries and automatic boot assessment, all as files on
 * the ESP (no EFI variables are touched):
 *
 * - one entry per slot, `loader/entries/<id>.conf` (ids from config, default `slotflip-a`/`slotflip-b`);
 * - boot counting in the file name: `<id>+LEFT[-DONE].conf`; systemd-boot renames it to
 *   `+(LEFT-1)-(DONE+1)` before booting it, and sorts `+0` entries (bad) after all others;
 * - blessing (what systemd-bless-boot does after boot-complete.target) drops the counter.
 *
 * What the firmware really does (src/boot/boot.c, read for this module; `sdbootChoose` below): it
 * boots the FIRST entry in menu order matching loader.conf's `default` glob, bad or not — a `default`
 * that names one slot's entry keeps booting it after its tries ran out (a reboot loop: systemd issues
 * #15256, #31215, #40192) — and only when `default` matches nothing does a bad entry lose to a good
 * one. Up to systemd 257 the id is the whole file name (`default slotflip-b.conf` never matches
 * `slotflip-b+3.conf`); from 258 the counter is stripped. So `default` names only the committed,
 * blessed entry; while a trial is armed it is a glob matching both slot entries (`slotflip-*`), and
 * which slot comes first is set by the entries' `sort-key`/`version` lines (see
 * `createSystemdBootBackend`). Each change is one atomic rename or file replacement, ordered so that
 * a crash between any two still boots the committed slot or the armed trial.
 */
import { readdir, readFile, rename } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { SlotflipError } from '../errors.js';
import { fsyncDir, readFileCapped, writeFileAtomic } from '../atomic-file.js';
import { otherSlot, type SlotBootState, type SlotName } from '../boot-control.js';
import { readBootedSlot, type CmdlineConfig } from '../cmdline.js';
import type { BackendCore } from './core.js';

export interface SystemdBootBackendConfig {
  type: 'systemd-boot';
  /** mount point of the ESP (holds `loader/`). */
  esp: string;
  /** entry id (file name without counter and `.conf`) per slot. */
  entries?: { A: string; B: string };
  cmdline?: CmdlineConfig;
}

export interface EntryName {
  /** id without counter or `.conf`. */
  base: string;
  triesLeft?: number;
  triesDone?: number;
}

const ENTRY_RE = /^([A-Za-z0-9_.@-]+?)(?:\+(\d{1,4})(?:-(\d{1,4}))?)?\.conf$/;

/** Parses a loader entry file name. Returns undefined for names that are not entries. Pure. */
export function parseEntryName(file: string): EntryName | undefined {
  const m = ENTRY_RE.exec(file);
  if (!m) return undefined;
  const out: EntryName = { base: m[1]! };
  if (m[2] !== undefined) out.triesLeft = Number(m[2]);
  if (m[3] !== undefined) out.triesDone = Number(m[3]);
  return out;
}

export function formatEntryName(e: EntryName): string {
  if (e.triesLeft === undefined) return `${e.base}.conf`;
  return `${e.base}+${e.triesLeft}${e.triesDone === undefined ? '' : `-${e.triesDone}`}.conf`;
}

/** Parses loader.conf (`key value` lines, `#` comments). Throws HAL_BOOTENV_PARSE on a key without a value. */
export function parseLoaderConf(text: string): Array<{ key: string; value: string } | { comment: string }> {
  const out: Array<{ key: string; value: string } | { comment: string }> = [];
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) {
      if (raw !== '' || i < text.split('\n').length - 1) out.push({ comment: raw });
      continue;
    }
    const m = /^([a-z_-]+)\s+(\S.*)$/.exec(line);
    if (!m) throw new SlotflipError('HAL_BOOTENV_PARSE', `loader.conf line ${i + 1} is not "key value"`, { details: { line: line.slice(0, 80) } });
    out.push({ key: m[1]!, value: m[2]!.trim() });
  }
  return out;
}

export function loaderDefault(text: string): string | undefined {
  let d: string | undefined;
  for (const l of parseLoaderConf(text)) if ('key' in l && l.key === 'default') d = l.value;
  return d;
}

export function setLoaderDefault(text: string, id: string): string {
  const lines = parseLoaderConf(text);
  let done = false;
  const out: string[] = [];
  for (const l of lines) {
    if ('comment' in l) out.push(l.comment);
    else if (l.key === 'default') {
      if (!done) out.push(`default ${id}`);
      done = true;
    } else out.push(`${l.key} ${l.value}`);
  }
  if (!done) out.push(`default ${id}`);
  return out.filter((x, i) => !(x === '' && i === out.length - 1)).join('\n') + '\n';
}

function globMatch(pattern: string, s: string): boolean {
  const re = new RegExp('^' + pattern.replace(/[.+^${}()|\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.') + '$');
  return re.test(s);
}

const isBadEntry = (e: EntryName) => e.triesLeft === 0;

/** How systemd-boot derives an entry's id (what `default` in loader.conf is matched against):
 * `strip-counter` — the file name without the `+LEFT[-DONE]` counter (systemd 258 and later,
 * systemd PR #38897); `file-name` — the whole file name, counter included (up to systemd 257). */
export type SdbootIdRule = 'strip-counter' | 'file-name';

/** One Boot Loader Specification Type #1 entry as systemd-boot sees it. */
export interface SdbootEntry extends EntryName {
  /** current file name in loader/entries/. */
  file: string;
  /** lower-cased id matched against loader.conf's `default` pattern. */
  id: string;
  sortKey?: string;
  version?: string;
  machineId?: string;
  options?: string;
}

/** Reads the keys of an entry file that matter for ordering (last occurrence wins, like
 * systemd-boot's parser; `options` lines are joined with a space). Pure. */
export function entryFields(text: string): Pick<SdbootEntry, 'sortKey' | 'version' | 'machineId' | 'options'> {
  const out: Pick<SdbootEntry, 'sortKey' | 'version' | 'machineId' | 'options'> = {};
  for (const raw of text.split('\n')) {
    const m = /^\s*([A-Za-z-]+)[ \t]+(.*?)\s*$/.exec(raw);
    if (!m || raw.trimStart().startsWith('#')) continue;
    const [, key, value] = m as unknown as [string, string, string];
    if (key === 'sort-key') out.sortKey = value;
    else if (key === 'version') out.version = value;
    else if (key === 'machine-id') out.machineId = value;
    else if (key === 'options') out.options = out.options === undefined ? value : `${out.options} ${value}`;
  }
  return out;
}

/** An entry file (name and content) as systemd-boot's parser sees it; undefined when the name is not
 * a `.conf` entry name this module understands. Pure. */
export function sdbootEntry(file: string, text: string, rule: SdbootIdRule = 'strip-counter'): SdbootEntry | undefined {
  const n = parseEntryName(file);
  if (!n) return undefined;
  const id = (rule === 'strip-counter' ? `${n.base}.conf` : file).toLowerCase();
  return { ...n, file, id, ...entryFields(text) };
}

/** systemd's strverscmp_improved, reduced to what entry ids and versions here use: runs of digits
 * compare as numbers, everything else by character code; a prefix sorts first. Pure. */
export function verCmp(a: string | undefined, b: string | undefined): number {
  if (a === b) return 0;
  if (a === undefined) return -1;
  if (b === undefined) return 1;
  const sa = a.match(/\d+|\D/g) ?? [];
  const sb = b.match(/\d+|\D/g) ?? [];
  for (let i = 0; i < Math.min(sa.length, sb.length); i++) {
    const x = sa[i]!;
    const y = sb[i]!;
    if (/^\d/.test(x) && /^\d/.test(y)) {
      const nx = x.replace(/^0+(?=\d)/, '');
      const ny = y.replace(/^0+(?=\d)/, '');
      if (nx.length !== ny.length) return nx.length - ny.length;
      if (nx !== ny) return nx < ny ? -1 : 1;
    } else if (x !== y) return x < y ? -1 : 1;
  }
  return sa.length - sb.length;
}

const strcmp = (a: string | undefined, b: string | undefined) => (a === b ? 0 : a === undefined ? -1 : b === undefined ? 1 : a < b ? -1 : 1);

/** systemd-boot's menu order (boot.c `boot_entry_compare`): entries with no tries left last; entries
 * with a sort-key before those without; by sort-key, machine-id, version (newest first); then by id,
 * newest first; then more tries left first, fewer tries done first. Pure. */
export function sdbootCompare(a: SdbootEntry, b: SdbootEntry): number {
  let r = Number(a.triesLeft === 0) - Number(b.triesLeft === 0);
  if (r) return r;
  r = Number(a.sortKey === undefined) - Number(b.sortKey === undefined);
  if (r) return r;
  if (a.sortKey !== undefined && b.sortKey !== undefined) {
    r = strcmp(a.sortKey, b.sortKey) || strcmp(a.machineId, b.machineId) || -verCmp(a.version, b.version);
    if (r) return r;
  }
  r = -verCmp(a.id, b.id);
  if (r) return r;
  if (a.triesLeft === undefined || b.triesLeft === undefined) return 0;
  return b.triesLeft - a.triesLeft || (a.triesDone ?? 0) - (b.triesDone ?? 0);
}

/** systemd-boot's choice on a power-on without EFI variables (boot.c `config_select_default_entry`):
 * the FIRST entry in menu order whose id matches loader.conf's `default` glob — whatever its boot
 * counter says, a bad (`+0-N`) entry included — else the first entry in menu order. Pure. */
export function sdbootChoose(entries: readonly SdbootEntry[], defaultPattern: string | undefined): SdbootEntry | undefined {
  const sorted = [...entries].sort(sdbootCompare);
  if (defaultPattern !== undefined) {
    const hit = sorted.find((e) => globMatch(defaultPattern.toLowerCase(), e.id));
    if (hit) return hit;
  }
  return sorted[0];
}

/** The name systemd-boot renames a counting entry to before booting it (`+0-N` too: it keeps
 * counting tries done); undefined for an entry without a counter. Pure. */
export function sdbootNextName(e: EntryName): string | undefined {
  if (e.triesLeft === undefined) return undefined;
  return formatEntryName({ base: e.base, triesLeft: Math.max(e.triesLeft - 1, 0), triesDone: (e.triesDone ?? 0) + 1 });
}

/** loader.conf's `default` as the firmware reads it: lenient (malformed lines are skipped), the last
 * `default` line wins. Pure. */
export function firmwareLoaderDefault(text: string): string | undefined {
  let d: string | undefined;
  for (const raw of text.split('\n')) {
    const m = /^\s*default[ \t]+(\S.*?)\s*$/.exec(raw);
    if (m) d = m[1];
  }
  return d;
}

export interface SystemdBootFiles {
  entriesDir: string;
  loaderConf: string;
  ids: { A: string; B: string };
}

export function systemdBootFiles(cfg: Pick<SystemdBootBackendConfig, 'esp' | 'entries'>): SystemdBootFiles {
  return { entriesDir: join(cfg.esp, 'loader', 'entries'), loaderConf: join(cfg.esp, 'loader', 'loader.conf'), ids: cfg.entries ?? { A: 'slotflip-a', B: 'slotflip-b' } };
}

/** Current entry file names of both slots. Throws HAL_BOOTENV_PARSE when a slot has none or several. */
export async function readSlotEntries(f: SystemdBootFiles): Promise<Record<SlotName, { file: string; entry: EntryName }>> {
  let files: string[];
  try {
    files = await readdir(f.entriesDir);
  } catch (cause) {
    throw new SlotflipError('HAL_BOOTENV_READ', `cannot list ${f.entriesDir}; is the ESP mounted at esp?`, { cause, details: { path: f.entriesDir } });
  }
  const found: Partial<Record<SlotName, { file: string; entry: EntryName }>> = {};
  for (const file of files.sort()) {
    const e = parseEntryName(file);
    if (!e) continue;
    for (const s of ['A', 'B'] as const) {
      if (e.base !== f.ids[s]) continue;
      if (found[s]) throw new SlotflipError('HAL_BOOTENV_PARSE', `${f.entriesDir}: slot ${s} has two entries (${found[s]!.file}, ${file}); remove one`, { details: { files: [found[s]!.file, file] } });
      found[s] = { file, entry: e };
    }
  }
  for (const s of ['A', 'B'] as const) {
    if (!found[s]) throw new SlotflipError('HAL_BOOTENV_PARSE', `${f.entriesDir}: no loader entry ${f.ids[s]}.conf for slot ${s}`, { details: { slot: s } });
  }
  return found as Record<SlotName, { file: string; entry: EntryName }>;
}

async function readLoaderConf(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw e;
  }
}

/** File operations the backend performs on the ESP, each atomic on its own (a seam for the
 * power-cut harness, which cuts between them). */
export interface SystemdBootIo {
  /** renames an entry file within loader/entries and fsyncs the directory. */
  rename(from: string, to: string): Promise<void>;
  /** replaces a file atomically (temp, fsync, rename, fsync dir). */
  writeFile(path: string, data: string): Promise<void>;
}

export const nodeSystemdBootIo: SystemdBootIo = {
  async rename(from, to) {
    await rename(from, to);
    await fsyncDir(dirname(to));
  },
  writeFile: (path, data) => writeFileAtomic(path, data),
};

/** The loader.conf `default` glob slotflip sets while a trial is armed: the ids' common prefix and
 * `*`, which matches both slot entries in every counter state under either id rule. Pure. */
export function slotDefaultPattern(ids: { A: string; B: string }): string {
  const a = ids.A.toLowerCase();
  const b = ids.B.toLowerCase();
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return `${a.slice(0, i)}*`;
}

/** sdbootCompare without the boot counters and the id tie-break: which of two entries the menu puts
 * first by sort-key, machine-id and version alone (0: undecided). Pure. */
function orderKeyCmp(a: SdbootEntry, b: SdbootEntry): number {
  const r = Number(a.sortKey === undefined) - Number(b.sortKey === undefined);
  if (r || a.sortKey === undefined || b.sortKey === undefined) return r;
  return strcmp(a.sortKey, b.sortKey) || strcmp(a.machineId, b.machineId) || -verCmp(a.version, b.version);
}

/** Entry text with `sort-key`, `machine-id` and `version` replaced (appended at the end). Pure. */
function withOrderKeys(text: string, keys: { sortKey: string; machineId?: string; version: string }): string {
  const kept = text.split('\n').filter((l) => !/^\s*(sort-key|machine-id|version)([ \t]|$)/.test(l));
  while (kept.length > 0 && kept.at(-1)!.trim() === '') kept.pop();
  kept.push(`sort-key ${keys.sortKey}`, ...(keys.machineId === undefined ? [] : [`machine-id ${keys.machineId}`]), `version ${keys.version}`);
  return kept.join('\n') + '\n';
}

interface SlotEntryState {
  file: string;
  info: SdbootEntry;
  text: string;
}

/**
 * How the backend steers systemd-boot (what the firmware really does, see `sdbootChoose`): a
 * `default` naming one slot's entry pins it even after its tries ran out. So `default` names only a
 * committed (blessed, good) entry; while a trial is armed it is a glob matching BOTH slot entries, and
 * the firmware boots the first entry in menu order with tries left — bad entries (`+0…`) sort last.
 * The order between the two slot entries is set by their `sort-key` (same on both) and `version` (a
 * generation number, newest first): slotflip owns these two lines of both slot entries.
 *
 * Every step is one atomic rename or file replacement, ordered so that a crash between any two still
 * boots the committed slot, or the armed trial within its tries:
 * - markBad: rename to `+0` (unpinning first if `default` names that slot);
 * - armTrial: unpin (the pinned slot moved to the front, then `default` becomes the glob), rename to
 *   `+0` (bad: sorts last), raise its version above the other's, rename to `+N`;
 * - commit: drop the counter (bless), move it to the front, then pin it (`default <id>.conf`).
 * An ESP laid out before this scheme (`default <id>.conf`, no sort-key/version) is the pinned state.
 */
export function createSystemdBootBackend(cfg: SystemdBootBackendConfig, io: SystemdBootIo = nodeSystemdBootIo): BackendCore {
  const f = systemdBootFiles(cfg);
  const pattern = slotDefaultPattern(f.ids);
  const readState = async () => {
    const es = await readSlotEntries(f);
    const slots = {} as Record<SlotName, SlotEntryState>;
    for (const s of ['A', 'B'] as const) {
      const path = join(f.entriesDir, es[s].file);
      let text: string;
      try {
        text = (await readFileCapped(path, 64 * 1024)).toString('utf8');
      } catch (cause) {
        throw new SlotflipError('HAL_BOOTENV_READ', `cannot read loader entry ${path}`, { cause, details: { path } });
      }
      const info = sdbootEntry(es[s].file, text)!;
      if (info.version !== undefined && !/^\d{1,9}$/.test(info.version)) {
        throw new SlotflipError('HAL_BOOTENV_PARSE', `${path}: version ${JSON.stringify(info.version.slice(0, 40))} is not a whole number; slotflip keeps a generation number there (remove the line)`, { details: { path } });
      }
      slots[s] = { file: es[s].file, info, text };
    }
    return { slots, conf: await readLoaderConf(f.loaderConf) };
  };
  const renameEntry = async (slot: SlotName, to: EntryName) => {
    const cur = (await readSlotEntries(f))[slot];
    const target = formatEntryName(to);
    if (cur.file === target) return;
    await io.rename(join(f.entriesDir, cur.file), join(f.entriesDir, target));
    const after = (await readSlotEntries(f))[slot];
    if (after.file !== target) throw new SlotflipError('HAL_BOOTENV_VERIFY', `${f.entriesDir}: slot ${slot} entry is ${after.file} after renaming to ${target}`, { details: { slot } });
  };
  /** makes `slot` sort before the other slot's entry by sort-key/version (one entry write). */
  const ensureFirst = async (slot: SlotName) => {
    const { slots } = await readState();
    const me = slots[slot];
    const other = slots[otherSlot(slot)].info;
    if (orderKeyCmp(me.info, other) < 0) return;
    const text = withOrderKeys(me.text, { sortKey: other.sortKey ?? 'slotflip', ...(other.machineId === undefined ? {} : { machineId: other.machineId }), version: String(Number(other.version ?? '0') + 1) });
    await io.writeFile(join(f.entriesDir, me.file), text);
    const after = await readState();
    if (orderKeyCmp(after.slots[slot].info, after.slots[otherSlot(slot)].info) >= 0) throw new SlotflipError('HAL_BOOTENV_VERIFY', `${f.entriesDir}: slot ${slot}'s entry does not sort first after rewriting its version`, { details: { slot } });
  };
  const writeDefault = async (conf: string, value: string) => {
    await io.writeFile(f.loaderConf, setLoaderDefault(conf, value));
    if (loaderDefault(await readLoaderConf(f.loaderConf)) !== value) throw new SlotflipError('HAL_BOOTENV_VERIFY', `${f.loaderConf} did not read back default ${value}`, { details: { path: f.loaderConf } });
  };
  /** `default` becomes the glob without changing which slot boots: the slot booting now (a good one)
   * is moved to the front first. */
  const unpin = async () => {
    const { slots, conf } = await readState();
    const d = loaderDefault(conf);
    if (d === pattern) return;
    const chosen = sdbootChoose([slots.A.info, slots.B.info], d);
    const slotOf = (e: SdbootEntry | undefined): SlotName | undefined => (e === slots.A.info ? 'A' : e === slots.B.info ? 'B' : undefined);
    const good = (s: SlotName) => slots[s].info.triesLeft === undefined;
    const now = slotOf(chosen);
    const keep: SlotName = now && good(now) ? now : good('A') ? 'A' : good('B') ? 'B' : (now ?? 'A');
    await ensureFirst(keep);
    await writeDefault((await readState()).conf, pattern);
  };
  /** true when loader.conf's `default` (other than the glob) would pick `slot`'s entry. */
  const pins = (conf: string, slot: SlotName) => {
    const d = loaderDefault(conf);
    return d !== undefined && d !== pattern && globMatch(d.toLowerCase(), `${f.ids[slot]}.conf`.toLowerCase());
  };
  return {
    backend: 'systemd-boot',
    maxTries: 99,
    bootedSlot: () => readBootedSlot(cfg.cmdline ?? {}),
    async slotState(slot): Promise<SlotBootState> {
      const { slots, conf } = await readState();
      const chosen = sdbootChoose([slots.A.info, slots.B.info], firmwareLoaderDefault(conf));
      const e = slots[slot].info;
      const primary = chosen === e && !isBadEntry(e);
      if (e.triesLeft === undefined) return { state: 'good', primary };
      // `+0-N`: a trial that used its tries (stays 'trial' until committed or marked bad); `+0`: marked bad
      if (e.triesLeft === 0) return e.triesDone ? { state: 'trial', triesLeft: 0, primary: false } : { state: 'bad', primary: false };
      return { state: 'trial', triesLeft: e.triesLeft, primary };
    },
    async markBad(slot) {
      if (pins((await readState()).conf, slot)) await unpin();
      await renameEntry(slot, { base: f.ids[slot], triesLeft: 0 });
    },
    async armTrial(slot, tries) {
      const { slots, conf } = await readState();
      const me = slots[slot].info;
      if (loaderDefault(conf) === pattern && me.triesLeft === tries && me.triesDone === undefined && orderKeyCmp(me, slots[otherSlot(slot)].info) < 0) return; // armed already
      await unpin();
      // bad first: while its version moves it to the front, it must sort last
      if (me.triesLeft !== 0) await renameEntry(slot, { base: f.ids[slot], triesLeft: 0 });
      await ensureFirst(slot);
      await renameEntry(slot, { base: f.ids[slot], triesLeft: tries });
    },
    async commit(slot) {
      await renameEntry(slot, { base: f.ids[slot] });
      await ensureFirst(slot);
      const { conf } = await readState();
      const id = `${f.ids[slot]}.conf`;
      if (loaderDefault(conf) !== id) await writeDefault(conf, id);
    },
  };
}

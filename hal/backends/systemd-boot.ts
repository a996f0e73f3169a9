/**
 * systemd-boot with Boot Loader Specification entries and automatic boot assessment, all as files on
 * the ESP (no EFI variables are touched):
 *
 * - one entry per slot, `loader/entries/<id>.conf` (ids from config, default `slotflip-a`/`slotflip-b`);
 * - boot counting in the file name: `<id>+LEFT[-DONE].conf`; systemd-boot renames it to
 *   `+(LEFT-1)-(DONE+1)` before booting it, and sorts `+0` entries (bad) after all others;
 * - blessing (what systemd-bless-boot does after boot-complete.target) drops the counter;
 * - `loader/loader.conf` `default <id>.conf` picks the primary entry.
 *
 * armTrial and commit are two atomic steps each — rename the entry, then replace loader.conf — ordered
 * so that a crash between them leaves a state the contract accepts (the entry is armed or blessed
 * while the default still names the old good slot, which keeps booting).
 */
import { readdir, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { SlotflipError } from '../errors.js';
import { fsyncDir, writeFileAtomic } from '../atomic-file.js';
import type { SlotBootState, SlotName } from '../boot-control.js';
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

/** systemd-boot's choice among entries: entries with no tries left sort last; the first entry whose id
 * (`base.conf`) matches `default` and is not bad wins, else the first entry that is not bad, else the
 * first entry. Pure; used by the backend (primary) and the emulated board. */
export function systemdBootSelect(entries: readonly EntryName[], defaultPattern: string | undefined): EntryName | undefined {
  const sorted = [...entries].sort((a, b) => Number(isBadEntry(a)) - Number(isBadEntry(b)) || a.base.localeCompare(b.base));
  const good = sorted.filter((e) => !isBadEntry(e));
  return (defaultPattern === undefined ? undefined : good.find((e) => globMatch(defaultPattern, `${e.base}.conf`))) ?? good[0] ?? sorted[0];
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

export function createSystemdBootBackend(cfg: SystemdBootBackendConfig): BackendCore {
  const f = systemdBootFiles(cfg);
  const renameEntry = async (slot: SlotName, to: EntryName) => {
    const cur = (await readSlotEntries(f))[slot];
    const target = formatEntryName(to);
    if (cur.file === target) return;
    await rename(join(f.entriesDir, cur.file), join(f.entriesDir, target));
    await fsyncDir(f.entriesDir);
    const after = (await readSlotEntries(f))[slot];
    if (after.file !== target) throw new SlotflipError('HAL_BOOTENV_VERIFY', `${f.entriesDir}: slot ${slot} entry is ${after.file} after renaming to ${target}`, { details: { slot } });
  };
  const setDefault = async (slot: SlotName) => {
    const text = await readLoaderConf(f.loaderConf);
    const id = `${f.ids[slot]}.conf`;
    if (loaderDefault(text) === id) return;
    await writeFileAtomic(f.loaderConf, setLoaderDefault(text, id));
    if (loaderDefault(await readLoaderConf(f.loaderConf)) !== id) throw new SlotflipError('HAL_BOOTENV_VERIFY', `${f.loaderConf} did not read back default ${id}`, { details: { path: f.loaderConf } });
  };
  return {
    backend: 'systemd-boot',
    maxTries: 99,
    bootedSlot: () => readBootedSlot(cfg.cmdline ?? {}),
    async slotState(slot): Promise<SlotBootState> {
      const es = await readSlotEntries(f);
      const chosen = systemdBootSelect([es.A.entry, es.B.entry], loaderDefault(await readLoaderConf(f.loaderConf)));
      const e = es[slot].entry;
      const primary = chosen === e && !isBadEntry(e);
      if (e.triesLeft === undefined) return { state: 'good', primary };
      // `+0-N`: a trial that used its tries (stays 'trial' until committed or marked bad); `+0`: marked bad
      if (e.triesLeft === 0) return e.triesDone ? { state: 'trial', triesLeft: 0, primary: false } : { state: 'bad', primary: false };
      return { state: 'trial', triesLeft: e.triesLeft, primary };
    },
    async markBad(slot) {
      await renameEntry(slot, { base: f.ids[slot], triesLeft: 0 });
    },
    async armTrial(slot, tries) {
      // arm the entry first: until the default moves, the old slot keeps booting
      await renameEntry(slot, { base: f.ids[slot], triesLeft: tries });
      await setDefault(slot);
    },
    async commit(slot) {
      await renameEntry(slot, { base: f.ids[slot] });
      await setDefault(slot);
    },
  };
}

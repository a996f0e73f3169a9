/**
 * Which slot booted, from a kernel command line (`/proc/cmdline` on a device, a file on emulated
 * boards). The key and the value per slot come from config, so boards set up for RAUC
 * (`rauc.slot=A`), for slotflip (`slotflip.slot=A`) or by root device (`root=/dev/mmcblk0p2`) all work.
 */
import { readFileCapped } from './atomic-file.js';
import { SlotflipError } from './errors.js';
import type { SlotName } from './boot-control.js';

export interface CmdlineConfig {
  /** default `/proc/cmdline`. */
  path?: string;
  /** default `slotflip.slot`. */
  key?: string;
  /** value of `key` per slot; default `{ A: 'A', B: 'B' }`. */
  values?: { A: string; B: string };
}

/** Splits a kernel command line into words, honouring double quotes as the kernel does. Pure. */
export function parseCmdline(text: string): Array<{ key: string; value: string | undefined }> {
  const out: Array<{ key: string; value: string | undefined }> = [];
  const re = /(?:[^\s"]+|"[^"]*")+/g;
  for (const m of text.matchAll(re)) {
    const word = m[0];
    const eq = word.indexOf('=');
    const unq = (s: string) => s.replace(/"/g, '');
    if (eq < 0) out.push({ key: unq(word), value: undefined });
    else out.push({ key: unq(word.slice(0, eq)), value: unq(word.slice(eq + 1)) });
  }
  return out;
}

/** The slot named by `key` in `text`, or undefined. The last occurrence wins (as the kernel does). Pure. */
export function slotFromCmdline(text: string, cfg: CmdlineConfig = {}): SlotName | undefined {
  const key = cfg.key ?? 'slotflip.slot';
  const values = cfg.values ?? { A: 'A', B: 'B' };
  let found: SlotName | undefined;
  for (const w of parseCmdline(text)) {
    if (w.key !== key) continue;
    found = w.value === values.A ? 'A' : w.value === values.B ? 'B' : undefined;
  }
  return found;
}

export async function readBootedSlot(cfg: CmdlineConfig = {}): Promise<SlotName> {
  const path = cfg.path ?? '/proc/cmdline';
  let text: string;
  try {
    text = (await readFileCapped(path, 64 * 1024)).toString('utf8');
  } catch (cause) {
    throw new SlotflipError('HAL_BOOTED_SLOT_UNKNOWN', `cannot read the kernel command line at ${path}; set cmdline.path in the boot config`, { cause, details: { path } });
  }
  const slot = slotFromCmdline(text, cfg);
  if (!slot) {
    throw new SlotflipError('HAL_BOOTED_SLOT_UNKNOWN', `${path} names no slot with ${cfg.key ?? 'slotflip.slot'}=${(cfg.values ?? { A: 'A', B: 'B' }).A}|${(cfg.values ?? { A: 'A', B: 'B' }).B}; add it to the kernel command line or fix cmdline.key/values`, { details: { path, key: cfg.key ?? 'slotflip.slot' } });
  }
  return slot;
}

/**
 * U-Boot environment formats, parsed strictly (pure functions; fuzzed by test/unit/hal-uboot-env).
 *
 * - `fw_printenv` output: `name=value` lines.
 * - `fw_setenv -s` script: `name=value` lines; `name=` deletes. (libubootenv silently ignores
 *   `name value` lines, so we never write that form.)
 * - The binary block (what U-Boot and mkenvimage write): CRC32 (little-endian) over the data, then —
 *   for a redundant environment only — one flag byte, then `name=value\0` entries ending in `\0\0`,
 *   padded with 0xff / 0x00 to the block size. Two copies; the valid one with the newer flag wins.
 */
import { crc32 } from 'node:zlib';
import { SlotflipError } from './errors.js';

export type Env = ReadonlyMap<string, string>;

const NAME_RE = /^[A-Za-z0-9_.:+\-/]{1,128}$/;

export function isEnvName(name: string): boolean {
  return NAME_RE.test(name);
}

/** A value we are willing to write: printable, single line, no NUL. */
export function isEnvValue(value: string): boolean {
  return value.length <= 4096 && !/[\0\n\r]/.test(value);
}

/** Parses `fw_printenv` output. Throws HAL_BOOTENV_PARSE on any line that is not `name=value`. */
export function parseFwPrintenv(text: string): Map<string, string> {
  const env = new Map<string, string>();
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  for (const [i, line] of lines.entries()) {
    const eq = line.indexOf('=');
    const name = eq < 0 ? '' : line.slice(0, eq);
    if (eq <= 0 || !isEnvName(name)) {
      throw new SlotflipError('HAL_BOOTENV_PARSE', `fw_printenv output line ${i + 1} is not name=value`, { details: { line: line.slice(0, 80) } });
    }
    if (env.has(name)) throw new SlotflipError('HAL_BOOTENV_PARSE', `fw_printenv output names ${name} twice`, { details: { name } });
    env.set(name, line.slice(eq + 1));
  }
  return env;
}

/** Formats a `fw_setenv -s` script; an empty value deletes the variable. Throws HAL_BOOTENV_VALUE. */
export function formatSetenvScript(changes: Readonly<Record<string, string>>): string {
  let out = '';
  for (const [k, v] of Object.entries(changes)) {
    if (!isEnvName(k) || !isEnvValue(v)) throw new SlotflipError('HAL_BOOTENV_VALUE', `refusing to write environment variable ${JSON.stringify(k).slice(0, 80)}: bad name or value`, { details: { name: k } });
    out += `${k}=${v}\n`;
  }
  return out;
}

/** One copy of a binary environment block. */
export interface EnvCopy {
  crcOk: boolean;
  /** flag byte (redundant layout only). */
  flag?: number;
  env: Map<string, string>;
}

/** Decodes one block of `block.length` bytes. Never throws: a bad CRC or layout gives crcOk false. */
export function decodeEnvBlock(block: Uint8Array, redundant: boolean): EnvCopy {
  const buf = Buffer.from(block.buffer, block.byteOffset, block.byteLength);
  const head = redundant ? 5 : 4;
  if (buf.length <= head + 2) return { crcOk: false, env: new Map() };
  const stored = buf.readUInt32LE(0);
  const data = buf.subarray(head);
  const crcOk = crc32(data) === stored;
  const env = new Map<string, string>();
  if (crcOk) {
    let pos = 0;
    while (pos < data.length && data[pos] !== 0) {
      const end = data.indexOf(0, pos);
      if (end < 0) return { crcOk: false, env: new Map() };
      const entry = data.subarray(pos, end).toString('latin1');
      const eq = entry.indexOf('=');
      if (eq > 0) env.set(entry.slice(0, eq), entry.slice(eq + 1));
      else return { crcOk: false, env: new Map() };
      pos = end + 1;
    }
  }
  return redundant ? { crcOk, flag: buf[4], env } : { crcOk, env };
}

/** Encodes an environment into a block of `size` bytes — names sorted as U-Boot's saveenv and fw_setenv
 * write them, or in the map's order (`sorted` false) as mkenvimage does. Throws HAL_BOOTENV_VALUE when
 * it does not fit. */
export function encodeEnvBlock(env: Env, size: number, redundant: boolean, flag = 1, sorted = true): Buffer {
  const head = redundant ? 5 : 4;
  const buf = Buffer.alloc(size, 0);
  let pos = head;
  const names = [...env.keys()];
  for (const name of sorted ? names.sort() : names) {
    const entry = Buffer.from(`${name}=${env.get(name)}\0`, 'latin1');
    if (pos + entry.length + 1 > size) throw new SlotflipError('HAL_BOOTENV_VALUE', `environment does not fit in ${size} bytes`, { details: { size } });
    entry.copy(buf, pos);
    pos += entry.length;
  }
  buf[pos] = 0;
  buf.writeUInt32LE(crc32(buf.subarray(head)), 0);
  if (redundant) buf[4] = flag & 0xff;
  return buf;
}

/**
 * Which copy U-Boot uses (env_import_redund): both valid → the newer flag (255 → 0 wraps),
 * one valid → that one, none → undefined (U-Boot then falls back to its built-in default environment).
 */
export function pickRedundantCopy(a: EnvCopy, b: EnvCopy): 0 | 1 | undefined {
  if (a.crcOk && !b.crcOk) return 0;
  if (!a.crcOk && b.crcOk) return 1;
  if (!a.crcOk && !b.crcOk) return undefined;
  const fa = a.flag ?? 0;
  const fb = b.flag ?? 0;
  if (fa === 255 && fb === 0) return 1;
  if (fb === 255 && fa === 0) return 0;
  return fb > fa ? 1 : 0;
}

/** One environment copy as a legacy fw_env.config line names it. */
export interface FwEnvCopy {
  /** device or file path, e.g. `/dev/mtd1`, `/dev/mmcblk0`, `/boot/uboot.env`. */
  device: string;
  /** the line's remaining fields as written (offset, size, sector size, sectors). */
  fields: string[];
  /** 1-based line number in the file. */
  line: number;
}

/**
 * Parses a legacy fw_env.config (`DEVICE OFFSET SIZE [SECTOR_SIZE [SECTORS]]` per line, `#` comments,
 * blank lines; one line per environment copy, two lines = redundant). Returns undefined when the text
 * is not in that format (libubootenv also reads a YAML config): callers then cannot judge it. Pure.
 */
export function parseFwEnvConfig(text: string): FwEnvCopy[] | undefined {
  const copies: FwEnvCopy[] = [];
  for (const [i, raw] of text.split(/\r?\n/).entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const [device, ...fields] = line.split(/\s+/);
    if (!device || !device.startsWith('/') || fields.length > 4 || fields.some((f) => !/^(0x[0-9a-fA-F]+|\d+)$/.test(f))) return undefined;
    copies.push({ device, fields, line: i + 1 });
  }
  return copies;
}

/** An MTD block-emulation device (`/dev/mtdblockN`): libubootenv treats it as a plain block device. */
export function isMtdBlockDevice(path: string): boolean {
  return /^\/dev\/mtdblock\d+$/.test(path);
}

/**
 * What is wrong with a fw_env.config for slotflip, or undefined. Refused: two copies (a redundant
 * environment) on `/dev/mtdblockN`. Through an mtdblock device libubootenv writes INCREMENTING flag
 * bytes (1, 2, 3, ...); a NOR-flash U-Boot (env/flash.c) only understands 1/0 flags, so it takes
 * neither copy and silently boots with its built-in default environment — fw_setenv and the
 * fw_printenv read-back both succeed, and the bootloader never sees an A/B change. Through the MTD
 * character device `/dev/mtdN` libubootenv writes the 1/0 flags U-Boot expects (and, on NAND, handles
 * bad blocks). Pure.
 */
export function fwEnvConfigProblem(copies: readonly FwEnvCopy[]): { message: string; device: string; line: number } | undefined {
  if (copies.length !== 2) return undefined;
  const bad = copies.find((c) => isMtdBlockDevice(c.device));
  if (!bad) return undefined;
  const chr = bad.device.replace('/dev/mtdblock', '/dev/mtd');
  return {
    device: bad.device,
    line: bad.line,
    message: `two environment copies (redundant) on the MTD block device ${bad.device} (line ${bad.line}): libubootenv then writes incrementing flag bytes, which a NOR-flash U-Boot does not understand \u2014 it silently boots with its default environment and never sees an A/B change; use the MTD character device ${chr} instead of ${bad.device} on both lines`,
  };
}

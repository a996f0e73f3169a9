/**
 * U-Boot environment backend through the real `fw_printenv` / `fw_setenv -c fw_env.config`
 * (libubootenv; redundant environments are whatever fw_env.config describes).
 *
 * Every change is ONE `fw_setenv -s -` call (all variables in one write of the environment copy),
 * followed by a full `fw_printenv` read-back; a mismatch throws HAL_BOOTENV_VERIFY.
 *
 * A read-back proves only that libubootenv reads what it wrote, not that U-Boot does. So before its
 * first read or write the store checks fw_env.config once and refuses (HAL_BOOTENV_CONFIG) a
 * configuration known to be invisible to U-Boot: two copies on `/dev/mtdblockN` (see
 * `fwEnvConfigProblem` in hal/uboot-env.ts). The rest (copies, offsets and sizes matching the U-Boot
 * build) cannot be seen from Linux; the daemon detects it after the trial reboot
 * (DAEMON_BOOTLOADER_IGNORED_ENV).
 *
 * Conventions (pure, exported for tests):
 * - `rauc` — RAUC's boot script: `BOOT_ORDER="A B"`, `BOOT_A_LEFT`/`BOOT_B_LEFT` counted down on
 *   every boot (good slots too: the booted slot must be committed again after each healthy boot, as
 *   `rauc status mark-good` does). A slot is bad when it is out of BOOT_ORDER or has 0 tries left.
 *   RAUC cannot tell a trial from a committed slot, so a trial is also recorded in `slotflip_trial`
 *   (ignored by the boot script).
 * - `mender` — Mender's integration: `mender_boot_part` (+`_hex`) is the partition to boot,
 *   `upgrade_available=1` makes U-Boot's bootcount limit apply (`bootcount` > `bootlimit` → altbootcmd
 *   swaps to the other partition). Without a pending upgrade the other slot is never chosen (bad).
 */
import { SlotflipError } from '../errors.js';
import { otherSlot, type SlotBootState, type SlotName } from '../boot-control.js';
import { execTool, runChecked, type ToolRunner } from '../exec.js';
import { formatSetenvScript, fwEnvConfigProblem, parseFwEnvConfig, parseFwPrintenv } from '../uboot-env.js';
import { readFileCapped } from '../atomic-file.js';
import { readBootedSlot, type CmdlineConfig } from '../cmdline.js';
import { createEnvBackend, envGet, envInt, type Env, type EnvChanges, type EnvConvention, type EnvStore } from './env-convention.js';
import type { BackendCore } from './core.js';

export interface UbootBackendConfig {
  type: 'uboot';
  convention: 'rauc' | 'mender';
  /** path of the fw_env.config passed as `-c`. */
  fwEnvConfig: string;
  fwPrintenv?: string;
  fwSetenv?: string;
  /** rauc: tries a committed slot gets (BOOT_x_LEFT), default 3. */
  attempts?: number;
  /** mender: partition number per slot, default { A: 2, B: 3 }. */
  partitions?: { A: number; B: number };
  /** variable recording an armed trial (rauc), default `slotflip_trial`. */
  trialVariable?: string;
  cmdline?: CmdlineConfig;
  timeoutMs?: number;
}

export function raucUbootConvention(opts: { attempts?: number; trialVariable?: string } = {}): EnvConvention {
  const attempts = opts.attempts ?? 3;
  const mark = opts.trialVariable ?? 'slotflip_trial';
  const order = (env: Env): SlotName[] => {
    const raw = envGet(env, 'BOOT_ORDER');
    const words = raw === '' && !env.has('BOOT_ORDER') ? ['A', 'B'] : raw.split(' ').filter((w) => w !== '');
    for (const w of words) if (w !== 'A' && w !== 'B') throw new SlotflipError('HAL_BOOTENV_PARSE', `BOOT_ORDER names unknown slot ${JSON.stringify(w)}`, { details: { BOOT_ORDER: raw } });
    return [...new Set(words as SlotName[])];
  };
  const left = (env: Env, s: SlotName) => envInt(env, `BOOT_${s}_LEFT`, 3);
  const primary = (env: Env): SlotName | undefined => order(env).find((s) => left(env, s) > 0) ?? order(env)[0];
  return {
    name: 'rauc',
    maxTries: 99,
    state(env, slot) {
      const isPrimary = primary(env) === slot && left(env, slot) > 0;
      if (!order(env).includes(slot)) return { state: 'bad', primary: false };
      // an armed trial stays 'trial' (0 left) after its last try, until committed or marked bad
      if (envGet(env, mark) === slot) return { state: 'trial', triesLeft: Math.max(0, left(env, slot)), primary: isPrimary };
      if (left(env, slot) <= 0) return { state: 'bad', primary: false };
      return { state: 'good', primary: isPrimary };
    },
    markBad(env, slot) {
      const ch: EnvChanges = { BOOT_ORDER: order(env).filter((s) => s !== slot).join(' '), [`BOOT_${slot}_LEFT`]: '0' };
      if (envGet(env, mark) === slot) ch[mark] = '';
      return ch;
    },
    armTrial(env, slot, tries) {
      return { BOOT_ORDER: [slot, ...order(env).filter((s) => s !== slot)].join(' '), [`BOOT_${slot}_LEFT`]: String(tries), [mark]: slot };
    },
    commit(env, slot) {
      const ch: EnvChanges = { BOOT_ORDER: [slot, ...order(env).filter((s) => s !== slot)].join(' '), [`BOOT_${slot}_LEFT`]: String(attempts) };
      if (envGet(env, mark) === slot) ch[mark] = '';
      return ch;
    },
  };
}

export function menderConvention(opts: { partitions?: { A: number; B: number } } = {}): EnvConvention {
  const parts = opts.partitions ?? { A: 2, B: 3 };
  const partOf = (s: SlotName) => parts[s];
  const bootPart = (env: Env): SlotName => {
    const v = envGet(env, 'mender_boot_part');
    if (v === String(parts.A)) return 'A';
    if (v === String(parts.B)) return 'B';
    throw new SlotflipError('HAL_BOOTENV_PARSE', `mender_boot_part=${JSON.stringify(v.slice(0, 10))} is neither slot A's partition (${parts.A}) nor B's (${parts.B}); fix partitions in the boot config`, { details: { mender_boot_part: v } });
  };
  const setPart = (s: SlotName): EnvChanges => ({ mender_boot_part: String(partOf(s)), mender_boot_part_hex: partOf(s).toString(16) });
  return {
    name: 'mender',
    maxTries: 99,
    state(env, slot) {
      const p = bootPart(env);
      const pending = envGet(env, 'upgrade_available') === '1';
      if (!pending) return slot === p ? { state: 'good', primary: true } : { state: 'bad', primary: false };
      const triesLeft = envInt(env, 'bootlimit', 1) - envInt(env, 'bootcount', 0);
      if (triesLeft <= 0) return slot === p ? { state: 'trial', triesLeft: 0, primary: false } : { state: 'good', primary: true };
      return slot === p ? { state: 'trial', triesLeft, primary: true } : { state: 'good', primary: false };
    },
    markBad(env, slot): EnvChanges {
      const p = bootPart(env);
      const pending = envGet(env, 'upgrade_available') === '1';
      if (slot !== p) {
        if (!pending) return {}; // never chosen already
        throw new SlotflipError('HAL_BOOTENV_UNSUPPORTED', `mender convention: slot ${slot} is the fallback of the pending trial of ${p}; commit or abandon that trial first`, { details: { slot } });
      }
      return { ...setPart(otherSlot(slot)), upgrade_available: '0', bootcount: '0' };
    },
    armTrial(_env, slot, tries) {
      return { ...setPart(slot), upgrade_available: '1', bootcount: '0', bootlimit: String(tries) };
    },
    commit(_env, slot) {
      return { ...setPart(slot), upgrade_available: '0', bootcount: '0' };
    },
  };
}

/**
 * Checks fw_env.config for a layout U-Boot cannot see (see `fwEnvConfigProblem`). Throws
 * HAL_BOOTENV_CONFIG naming the file, the line and the fix. Read-only. Returns true when the file
 * was read and judged fine, false when it could not be judged: a file that cannot be read, or is not
 * in the legacy format (YAML), is left to fw_printenv, which reports its own errors.
 */
export async function checkFwEnvConfig(path: string): Promise<boolean> {
  let text: string;
  try {
    text = (await readFileCapped(path, 64 * 1024)).toString('utf8');
  } catch {
    return false;
  }
  const copies = parseFwEnvConfig(text);
  if (!copies) return false;
  const problem = fwEnvConfigProblem(copies);
  if (problem) {
    throw new SlotflipError('HAL_BOOTENV_CONFIG', `uboot: ${path}: ${problem.message}`, { details: { path, line: problem.line, device: problem.device } });
  }
  return true;
}

/** Reads and writes the environment only through the real tools, after `checkFwEnvConfig` passed
 * (until it could judge the file once, and after every refusal, it checks again on the next call:
 * fixing the file needs no restart). */
export function fwEnvStore(cfg: Pick<UbootBackendConfig, 'fwEnvConfig' | 'fwPrintenv' | 'fwSetenv' | 'timeoutMs'>, runner: ToolRunner = execTool): EnvStore {
  const opts = { timeoutMs: cfg.timeoutMs ?? 30_000, maxOutputBytes: 1 << 20 };
  let checked = false;
  const check = async () => {
    if (!checked) checked = await checkFwEnvConfig(cfg.fwEnvConfig);
  };
  return {
    async read() {
      await check();
      const r = await runChecked(runner, 'HAL_BOOTENV_READ', cfg.fwPrintenv ?? 'fw_printenv', ['-c', cfg.fwEnvConfig], opts);
      return parseFwPrintenv(r.stdout);
    },
    async write(changes) {
      await check();
      await runChecked(runner, 'HAL_BOOTENV_WRITE', cfg.fwSetenv ?? 'fw_setenv', ['-c', cfg.fwEnvConfig, '-s', '-'], { ...opts, input: formatSetenvScript(changes) });
    },
  };
}

export function createUbootBackend(cfg: UbootBackendConfig, runner: ToolRunner = execTool): BackendCore {
  const conv = cfg.convention === 'rauc' ? raucUbootConvention(cfg) : menderConvention(cfg);
  const cmdline: CmdlineConfig = cfg.cmdline ?? (cfg.convention === 'rauc' ? { key: 'rauc.slot' } : {});
  return createEnvBackend('uboot', fwEnvStore(cfg, runner), conv, () => readBootedSlot(cmdline));
}

export type { SlotBootState };

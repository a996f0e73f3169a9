/**
 * GRUB environment backend through the real `grub-editenv FILE set k=v ...` (one call per change,
 * which rewrites the 1024-byte block in one write) and `grub-editenv FILE list` for read-back.
 * Variables are never unset (that would be a second call); they are set to '' which every GRUB script
 * here reads like unset (`[ -n "$x" ]`).
 *
 * Conventions (pure, exported):
 * - `greenboot` — `boot_counter` counted down by GRUB while `boot_success=0` (greenboot's
 *   08_fallback_counting; `0`/`-1` → boot the rollback entry), `boot_success` set to 1 by a healthy
 *   boot. The A/B choice is `slotVariable` (default `slotflip_slot`), which the board's grub.cfg maps
 *   to a menu entry. Without a counter the other slot is never chosen (bad).
 * - `rauc` — RAUC's grub.cfg: `ORDER="A B"`, `A_OK`/`B_OK`, `A_TRY`/`B_TRY`. GRUB sets TRY=1 when it
 *   picks a slot and only picks slots with OK=1 and TRY=0, so a trial is ONE boot (maxTries 1) and the
 *   booted slot must be committed after every healthy boot (as `rauc status mark-good` does). A trial
 *   is also recorded in `slotflip_trial` (ignored by grub.cfg).
 */
import { access, constants as fsConstants } from 'node:fs/promises';
import { SlotflipError } from '../errors.js';
import { otherSlot, type SlotName } from '../boot-control.js';
import { execTool, runChecked, type ToolRunner } from '../exec.js';
import { isGrubName, isGrubValue, parseGrubEditenvList } from '../grub-env.js';
import { readBootedSlot, type CmdlineConfig } from '../cmdline.js';
import { createEnvBackend, envGet, envInt, type Env, type EnvChanges, type EnvConvention, type EnvStore } from './env-convention.js';
import type { BackendCore } from './core.js';

export interface GrubBackendConfig {
  type: 'grub';
  convention: 'greenboot' | 'rauc';
  /** the grubenv file (on the ESP or /boot). */
  envFile: string;
  grubEditenv?: string;
  /** greenboot: variable naming the primary slot, default `slotflip_slot`. */
  slotVariable?: string;
  /** rauc: variable recording an armed trial, default `slotflip_trial`. */
  trialVariable?: string;
  cmdline?: CmdlineConfig;
  timeoutMs?: number;
}

export function greenbootConvention(opts: { slotVariable?: string } = {}): EnvConvention {
  const v = opts.slotVariable ?? 'slotflip_slot';
  const primarySlot = (env: Env): SlotName => {
    const s = envGet(env, v);
    if (s === 'A' || s === 'B') return s;
    throw new SlotflipError('HAL_BOOTENV_PARSE', `grubenv ${v}=${JSON.stringify(s.slice(0, 10))} is not A or B; set it with grub-editenv or fix slotVariable`, { details: { [v]: s } });
  };
  const counting = (env: Env) => envGet(env, 'boot_counter') !== '' && envGet(env, 'boot_success') === '0';
  return {
    name: 'greenboot',
    maxTries: 99,
    state(env, slot) {
      const p = primarySlot(env);
      if (!counting(env)) return slot === p ? { state: 'good', primary: true } : { state: 'bad', primary: false };
      const left = envInt(env, 'boot_counter', 0);
      if (left <= 0) return slot === p ? { state: 'trial', triesLeft: 0, primary: false } : { state: 'good', primary: true };
      return slot === p ? { state: 'trial', triesLeft: left, primary: true } : { state: 'good', primary: false };
    },
    markBad(env, slot): EnvChanges {
      const p = primarySlot(env);
      if (slot !== p) {
        if (!counting(env)) return {};
        throw new SlotflipError('HAL_BOOTENV_UNSUPPORTED', `greenboot convention: slot ${slot} is the fallback of the pending trial of ${p}; commit or abandon that trial first`, { details: { slot } });
      }
      return { [v]: otherSlot(slot), boot_counter: '', boot_success: '1' };
    },
    armTrial(_env, slot, tries) {
      return { [v]: slot, boot_counter: String(tries), boot_success: '0' };
    },
    commit(_env, slot) {
      return { [v]: slot, boot_counter: '', boot_success: '1' };
    },
  };
}

export function raucGrubConvention(opts: { trialVariable?: string } = {}): EnvConvention {
  const mark = opts.trialVariable ?? 'slotflip_trial';
  const order = (env: Env): SlotName[] => {
    const raw = env.has('ORDER') ? envGet(env, 'ORDER') : 'A B';
    const words = raw.split(' ').filter((w) => w !== '');
    for (const w of words) if (w !== 'A' && w !== 'B') throw new SlotflipError('HAL_BOOTENV_PARSE', `ORDER names unknown slot ${JSON.stringify(w)}`, { details: { ORDER: raw } });
    return [...new Set(words as SlotName[])];
  };
  const flag = (env: Env, name: string): boolean => {
    const x = envGet(env, name);
    if (x === '' || x === '0') return false;
    if (x === '1') return true;
    throw new SlotflipError('HAL_BOOTENV_PARSE', `grubenv ${name}=${JSON.stringify(x.slice(0, 10))} is not 0 or 1`, { details: { name } });
  };
  /** the slot grub.cfg picks next (see hal/board-bootloaders.ts for the full script). */
  const next = (env: Env): SlotName | undefined => order(env).find((s) => flag(env, `${s}_OK`) && !flag(env, `${s}_TRY`)) ?? order(env).find((s) => flag(env, `${s}_OK`));
  return {
    name: 'rauc',
    maxTries: 1,
    state(env, slot) {
      if (!flag(env, `${slot}_OK`)) return { state: 'bad', primary: false };
      const primary = next(env) === slot;
      if (envGet(env, mark) === slot) return { state: 'trial', triesLeft: flag(env, `${slot}_TRY`) ? 0 : 1, primary };
      return { state: 'good', primary };
    },
    markBad(env, slot) {
      const ch: EnvChanges = { [`${slot}_OK`]: '0', [`${slot}_TRY`]: '0' };
      if (envGet(env, mark) === slot) ch[mark] = '';
      return ch;
    },
    armTrial(env, slot) {
      // clear the fallback's TRY in the same write: with it set, grub.cfg finds no untried slot after
      // the trial's one boot, resets every TRY flag and boots the trial again (an extra, unasked try)
      const fallback = otherSlot(slot);
      return {
        ORDER: [slot, ...order(env).filter((s) => s !== slot)].join(' '),
        [`${slot}_OK`]: '1',
        [`${slot}_TRY`]: '0',
        ...(flag(env, `${fallback}_OK`) ? { [`${fallback}_TRY`]: '0' } : {}),
        [mark]: slot,
      };
    },
    commit(env, slot) {
      const ch: EnvChanges = { ORDER: [slot, ...order(env).filter((s) => s !== slot)].join(' '), [`${slot}_OK`]: '1', [`${slot}_TRY`]: '0' };
      if (envGet(env, mark) === slot) ch[mark] = '';
      return ch;
    },
  };
}

export function grubEditenvStore(cfg: Pick<GrubBackendConfig, 'envFile' | 'grubEditenv' | 'timeoutMs'>, runner: ToolRunner = execTool): EnvStore {
  const tool = cfg.grubEditenv ?? 'grub-editenv';
  const opts = { timeoutMs: cfg.timeoutMs ?? 30_000, maxOutputBytes: 64 * 1024 };
  // grub-editenv creates a missing file even for `list`: never let a wrong path become a fresh env
  const mustExist = async () => {
    try {
      await access(cfg.envFile, fsConstants.R_OK | fsConstants.W_OK);
    } catch (cause) {
      throw new SlotflipError('HAL_BOOTENV_READ', `grubenv ${cfg.envFile} is missing or not writable; create it with \`grub-editenv ${cfg.envFile} create\` or fix envFile`, { cause, details: { path: cfg.envFile } });
    }
  };
  return {
    async read() {
      await mustExist();
      const r = await runChecked(runner, 'HAL_BOOTENV_READ', tool, [cfg.envFile, 'list'], opts);
      return parseGrubEditenvList(r.stdout);
    },
    async write(changes) {
      await mustExist();
      const args: string[] = [];
      for (const [k, v] of Object.entries(changes)) {
        if (!isGrubName(k) || !isGrubValue(v)) throw new SlotflipError('HAL_BOOTENV_VALUE', `refusing to write grubenv variable ${JSON.stringify(k).slice(0, 40)}: bad name or value`, { details: { name: k } });
        args.push(`${k}=${v}`);
      }
      await runChecked(runner, 'HAL_BOOTENV_WRITE', tool, [cfg.envFile, 'set', ...args], opts);
    },
  };
}

export function createGrubBackend(cfg: GrubBackendConfig, runner: ToolRunner = execTool): BackendCore {
  const conv = cfg.convention === 'rauc' ? raucGrubConvention(cfg) : greenbootConvention(cfg);
  const cmdline: CmdlineConfig = cfg.cmdline ?? (cfg.convention === 'rauc' ? { key: 'rauc.slot' } : {});
  return createEnvBackend('grub', grubEditenvStore(cfg, runner), conv, () => readBootedSlot(cmdline));
}

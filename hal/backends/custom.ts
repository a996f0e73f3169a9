/**
 * Custom backend: an executable owned by the board integrator, like RAUC's custom bootloader backend.
 *
 * PROTOCOL (argv only, never a shell; `args` from config are prepended; stdin is empty):
 *
 *   CMD [ARGS...] get-booted          → stdout exactly `A` or `B` (one line), exit 0
 *   CMD [ARGS...] get-state SLOT      → stdout exactly one line `STATE TRIES PRIMARY`, exit 0:
 *                                        STATE good|trial|bad, TRIES whole number (0 unless trial),
 *                                        PRIMARY 1 when the bootloader tries SLOT first next power-on, else 0
 *   CMD [ARGS...] mark-bad SLOT       → exit 0, no stdout. Never chooses SLOT until arm-trial.
 *   CMD [ARGS...] arm-trial SLOT N    → exit 0, no stdout. Try SLOT first, at most N times.
 *   CMD [ARGS...] commit SLOT         → exit 0, no stdout. SLOT good and primary.
 *
 * SLOT is `A` or `B`. Every mutating command must be atomic and idempotent (same contract as
 * hal/boot-control.ts). Any other exit code, any extra output, or a timeout is an error
 * (HAL_CUSTOM_FAILED / HAL_CUSTOM_OUTPUT); stderr is quoted in the error. A reference implementation
 * on the emulated state file is in hal/backends/custom-reference.ts (written to DIR/custom-boot.mjs by boards).
 */
import { SlotflipError } from '../errors.js';
import { execTool, type ToolRunner } from '../exec.js';
import type { SlotBootState, SlotName } from '../boot-control.js';
import type { BackendCore } from './core.js';

export interface CustomBackendConfig {
  type: 'custom';
  /** absolute path of the executable. */
  command: string;
  /** arguments placed before the protocol's. */
  args?: string[];
  /** most tries the script can count, default 99. */
  maxTries?: number;
  timeoutMs?: number;
}

/** Parses `get-booted` output. Throws HAL_CUSTOM_OUTPUT. Pure. */
export function parseCustomBooted(stdout: string): SlotName {
  const m = /^(A|B)\n?$/.exec(stdout);
  if (!m) throw new SlotflipError('HAL_CUSTOM_OUTPUT', `custom backend: get-booted printed ${JSON.stringify(stdout.slice(0, 40))}, expected "A" or "B"`);
  return m[1] as SlotName;
}

/** Parses `get-state` output. Throws HAL_CUSTOM_OUTPUT. Pure. */
export function parseCustomState(stdout: string): SlotBootState {
  const m = /^(good|trial|bad) (0|[1-9]\d{0,3}) ([01])\n?$/.exec(stdout);
  const bad = () => new SlotflipError('HAL_CUSTOM_OUTPUT', `custom backend: get-state printed ${JSON.stringify(stdout.slice(0, 40))}, expected "STATE TRIES PRIMARY"`);
  if (!m) throw bad();
  const state = m[1] as SlotBootState['state'];
  const tries = Number(m[2]);
  if (state !== 'trial' && tries !== 0) throw bad();
  const primary = m[3] === '1';
  return state === 'trial' ? { state, triesLeft: tries, primary } : { state, primary };
}

export function createCustomBackend(cfg: CustomBackendConfig, runner: ToolRunner = execTool): BackendCore {
  const call = async (argv: string[]): Promise<string> => {
    const r = await runner.run(cfg.command, [...(cfg.args ?? []), ...argv], { timeoutMs: cfg.timeoutMs ?? 30_000, maxOutputBytes: 64 * 1024 });
    if (r.code !== 0) {
      const why = r.timedOut ? 'timed out' : r.signal ? `killed by ${r.signal}` : `exit ${r.code}`;
      throw new SlotflipError('HAL_CUSTOM_FAILED', `custom backend ${cfg.command} ${argv.join(' ')}: ${why}: ${r.stderr.trim().slice(0, 300)}`, { details: { command: cfg.command, argv, code: r.code } });
    }
    return r.stdout;
  };
  const mutate = async (argv: string[]) => {
    const out = await call(argv);
    if (out !== '') throw new SlotflipError('HAL_CUSTOM_OUTPUT', `custom backend: ${argv[0]} printed output; the protocol expects none`, { details: { argv, stdout: out.slice(0, 80) } });
  };
  return {
    backend: 'custom',
    maxTries: cfg.maxTries ?? 99,
    bootedSlot: async () => {
      try {
        return parseCustomBooted(await call(['get-booted']));
      } catch (cause) {
        throw new SlotflipError('HAL_BOOTED_SLOT_UNKNOWN', `custom backend ${cfg.command} could not tell the booted slot`, { cause, details: { command: cfg.command } });
      }
    },
    slotState: async (slot) => parseCustomState(await call(['get-state', slot])),
    markBad: (slot) => mutate(['mark-bad', slot]),
    armTrial: (slot, tries) => mutate(['arm-trial', slot, String(tries)]),
    commit: (slot) => mutate(['commit', slot]),
  };
}

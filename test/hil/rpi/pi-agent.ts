/**
 * Runs ON the Raspberry Pi, one step per invocation (state survives the reboots in autoboot.txt and the
 * firmware's tryboot flag, not in this process). Uses only the compiled HAL (dist/hal, no npm
 * dependencies), through the same `createBootControl` the daemon uses, with the `rpi-tryboot` backend.
 *
 *   node pi-agent.js --config agent.json status
 *   node pi-agent.js --config agent.json arm A|B | commit A|B | mark-bad A|B
 *
 * Prints ONE JSON line on stdout: { ok, step, booted, tryboot, states, autoboot, rebootArgument } or
 * { ok: false, code, message }. Exit code 0 / 1. The workstation runner (run-rpi.ts) parses it.
 */
import { readFile } from 'node:fs/promises';
import { createBootControl } from '../../../hal/registry.js';
import type { RpiTrybootBackendConfig } from '../../../hal/registry.js';
import { isSlotName, type SlotName } from '../../../hal/boot-control.js';
import { codeOf } from '../../../hal/errors.js';

export interface AgentConfig {
  /** mounted FAT partition holding autoboot.txt (Raspberry Pi OS: /boot/firmware). */
  bootDir: string;
  partitions?: { A: number; B: number };
  trybootFlagFile?: string;
  cmdlinePath?: string;
  /** kernel command-line key naming the slot, default `slotflip.slot` (add it to each cmdline.txt). */
  cmdlineKey?: string;
}

export interface AgentReport {
  ok: boolean;
  step: string;
  booted?: SlotName;
  tryboot?: boolean;
  states?: Record<SlotName, unknown>;
  autoboot?: string;
  rebootArgument?: string | null;
  code?: string;
  message?: string;
}

export function backendConfig(cfg: AgentConfig): RpiTrybootBackendConfig {
  return {
    type: 'rpi-tryboot',
    bootDir: cfg.bootDir,
    ...(cfg.partitions ? { partitions: cfg.partitions } : {}),
    ...(cfg.trybootFlagFile ? { trybootFlagFile: cfg.trybootFlagFile } : {}),
    cmdline: { path: cfg.cmdlinePath ?? '/proc/cmdline', key: cfg.cmdlineKey ?? 'slotflip.slot' },
  };
}

export async function runAgent(argv: readonly string[]): Promise<AgentReport> {
  const ci = argv.indexOf('--config');
  const configPath = ci >= 0 ? argv[ci + 1] : undefined;
  const rest = argv.filter((_, i) => i !== ci && i !== ci + 1);
  const step = rest.join(' ');
  try {
    if (!configPath) throw Object.assign(new Error('usage: pi-agent --config FILE status|arm SLOT|commit SLOT|mark-bad SLOT'), { code: 'HIL_USAGE' });
    const cfg = JSON.parse(await readFile(configPath, 'utf8')) as AgentConfig;
    const control = createBootControl(backendConfig(cfg));
    const [verb, slotArg] = rest;
    if (verb !== 'status') {
      if (!isSlotName(slotArg)) throw Object.assign(new Error(`${verb}: slot must be A or B`), { code: 'HIL_USAGE' });
      if (verb === 'arm') await control.armTrial(slotArg, 1);
      else if (verb === 'commit') await control.commit(slotArg);
      else if (verb === 'mark-bad') await control.markBad(slotArg);
      else throw Object.assign(new Error(`unknown step ${verb}`), { code: 'HIL_USAGE' });
    }
    const flagFile = cfg.trybootFlagFile ?? '/proc/device-tree/chosen/bootloader/tryboot';
    const flag = await readFile(flagFile).catch(() => undefined);
    return {
      ok: true,
      step,
      booted: await control.bootedSlot().catch(() => undefined),
      tryboot: flag !== undefined && flag.length === 4 ? flag.readUInt32BE(0) === 1 : undefined,
      states: { A: await control.slotState('A'), B: await control.slotState('B') },
      autoboot: await readFile(`${cfg.bootDir}/autoboot.txt`, 'utf8').catch(() => undefined),
      rebootArgument: (await control.rebootArgument()) ?? null,
    };
  } catch (e) {
    return { ok: false, step, code: codeOf(e), message: e instanceof Error ? e.message : String(e) };
  }
}

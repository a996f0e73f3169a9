/**
 * Power-cut driver: runs one full update cycle (`runUpdateCycle` over `createAgent`, the same path as
 * `slotflip update --once` plus the emulated reboot) against an emulated board, and journals every
 * durable-state operation so the parent harness (harness.ts) knows what a power cut would lose.
 *
 * Usage (a separate process, so the cut is a real SIGKILL):
 *
 *   node dist/test/powercut/driver.js --config CFG --board DIR --journal FILE [--kill-at N]
 *        [--cut before|after|torn] [--max-reboots N]
 *
 * Journal: one JSON line per operation, written synchronously BEFORE the operation runs:
 * `{"n":1,"op":"slot-write","slot":"B","path":...,"offset":0,"len":16384}`, `slot-flush`,
 * `state-save`, `outbox-append`, `boot-markBad|armTrial|commit`, `tool` (fw_setenv, grub-editenv,
 * the custom backend's script ...; `write: true` for environment writes), `esp-rename` / `esp-write`
 * (each file step of the systemd-boot and rpi-tryboot backends), `reboot` (with the backend's reboot
 * argument, e.g. `0 tryboot`, handed to the emulated firmware). With `--kill-at N` the driver SIGKILLs itself at
 * operation N: `before` (the operation never ran), `after` (it completed), `torn` (a slot write lands
 * half; an environment write lands and then its newest copy is torn, as a cut in the middle of
 * that write leaves it). No environment variables: everything is an argument.
 *
 * On a normal end it prints one JSON line: `{"phase","finished":[...],"ops":N,"reboots":N}`.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { loadConfig, type Config } from '../../daemon/config.js';
import { createAgent, statePaths } from '../../daemon/compose.js';
import { runUpdateCycle, type CycleResult, type EventSink } from '../../daemon/agent.js';
import { FileStateStore } from '../../daemon/state-store.js';
import { Outbox } from '../../daemon/outbox.js';
import { createBootControl, type BootBackendConfig } from '../../hal/registry.js';
import { withGuards, type GuardedBootControl } from '../../hal/backends/core.js';
import { createSystemdBootBackend } from '../../hal/backends/systemd-boot.js';
import { createRpiTrybootBackend } from '../../hal/backends/rpi-tryboot.js';
import { rename as fsRename, writeFile as fsWriteFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { createSlotWriter } from '../../hal/file-slot.js';
import { execTool, type ToolRunner } from '../../hal/exec.js';
import { fsyncDir, writeFileAtomic } from '../../hal/atomic-file.js';
import { boardStatus, corruptEnv, powerCycle } from '../../hal/board.js';
import type { BootControl, SlotName } from '../../hal/boot-control.js';
import type { SlotWriter } from '../../hal/slot-writer.js';
import type { HealthRunner } from '../../daemon/agent.js';

export type CutMode = 'before' | 'after' | 'torn';

export interface DriverOptions {
  config: Config;
  boardDir: string;
  /** journal file; omitted: no journal (in-process runs by the harness). */
  journal?: string;
  killAt?: number;
  cut?: CutMode;
  maxReboots?: number;
  now?: () => number;
}

export interface DriverResult {
  phase: string;
  finished: CycleResult['finished'];
  ops: number;
  reboots: number;
}

const ENV_WRITE_TOOLS = /(^|\/)(fw_setenv|grub-editenv)$/;

function isEnvWrite(cmd: string, args: readonly string[]): boolean {
  if (!ENV_WRITE_TOOLS.test(cmd)) return false;
  if (/fw_setenv$/.test(cmd)) return true;
  return args.includes('set') || args.includes('unset') || args.includes('create');
}

/** Health check of the emulated board, in process: the booted slot's image header says `healthy`. */
export function boardHealth(boardDir: string): HealthRunner {
  return {
    async run() {
      const s = await boardStatus(boardDir);
      if (!s.booted) return { ok: false, failures: [{ name: 'app', output: 'no slot booted', required: true }] };
      const img = s.images[s.booted];
      const ok = img.boots && img.healthy === true;
      return { ok, failures: ok ? [] : [{ name: 'app', output: `slot ${s.booted} runs ${img.version ?? '?'}: app failed to start`, required: true }] };
    },
  };
}

/** One ESP file operation of the systemd-boot / rpi-tryboot backends, journaled as its own op so a
 * cut can land between the steps of one boot-control call. */
type EspOp = (entry: Record<string, unknown>) => 'run' | 'kill-after' | 'torn';

/**
 * The ESP/boot-partition writes of systemd-boot and rpi-tryboot as cut points. Each is atomic on its
 * own: a rename of an entry (one directory update), or a file replaced by temp + fsync + rename (the
 * directory entry of `autoboot.txt` / `loader.conf` is rewritten in one sector). `torn` therefore
 * cannot leave a half-written file the firmware reads: for a replacement it leaves a half temp file
 * beside the target and the old content in place; for a rename it is the same as `before`. Not
 * modelled: a FAT rename torn between adding the new directory entry and removing the old one (both
 * names present, cross-linked).
 */
function espIo(op: EspOp, die: () => never) {
  return {
    async rename(from: string, to: string) {
      const k = op({ op: 'esp-rename', path: from, to: basename(to), write: true });
      if (k === 'torn') die();
      await fsRename(from, to);
      await fsyncDir(dirname(to));
      if (k !== 'run') die();
    },
    async writeFile(path: string, data: string) {
      const k = op({ op: 'esp-write', path, write: true });
      if (k === 'torn') {
        await fsWriteFile(join(dirname(path), `.${basename(path)}.99999.1.tmp`), data.slice(0, Math.floor(data.length / 2)));
        die();
      }
      await writeFileAtomic(path, data);
      if (k !== 'run') die();
    },
  };
}

/** The board's boot control; systemd-boot and rpi-tryboot get their file operations journaled. */
function bootControlFor(cfg: BootBackendConfig, runner: ToolRunner, io: ReturnType<typeof espIo>): GuardedBootControl {
  if (cfg.type === 'systemd-boot') return withGuards(createSystemdBootBackend(cfg, io));
  if (cfg.type === 'rpi-tryboot') return withGuards(createRpiTrybootBackend(cfg, io));
  return createBootControl(cfg, { runner });
}

export async function drive(o: DriverOptions): Promise<DriverResult> {
  const fd = o.journal ? openSync(o.journal, 'a') : undefined;
  let n = 0;
  let reboots = 0;
  const cut = o.cut ?? 'before';
  /** journals op n; returns 'run' | 'kill-after' | 'torn' for the op that hits --kill-at. */
  const op = (entry: Record<string, unknown>): 'run' | 'kill-after' | 'torn' => {
    n++;
    if (fd !== undefined) writeSync(fd, JSON.stringify({ n, ...entry }) + '\n');
    if (o.killAt !== n) return 'run';
    if (cut === 'before') die();
    return cut === 'after' ? 'kill-after' : 'torn';
  };
  const die = (): never => {
    process.kill(process.pid, 'SIGKILL');
    throw new Error('unreachable');
  };
  const config = o.config;

  const runner: ToolRunner = {
    async run(cmd, args, options) {
      const write = isEnvWrite(cmd, args);
      const k = op({ op: 'tool', cmd, args: [...args].slice(0, 8), write });
      const r = await execTool.run(cmd, args, options);
      if (k === 'torn' && write) await corruptEnv(o.boardDir, 'newest');
      if (k !== 'run') die();
      return r;
    },
  };
  const wrapSlot = (w: SlotWriter): SlotWriter => ({
    slot: w.slot,
    path: w.path,
    capacity: () => w.capacity(),
    async open() {
      const h = await w.open();
      return {
        async writeAt(data, offset) {
          const k = op({ op: 'slot-write', slot: w.slot, path: w.path, offset, len: data.byteLength });
          if (k === 'torn') {
            await h.writeAt(data.subarray(0, Math.floor(data.byteLength / 2)), offset);
            die();
          }
          await h.writeAt(data, offset);
          if (k !== 'run') die();
        },
        readAt: (len, off) => h.readAt(len, off),
        async flush() {
          const k = op({ op: 'slot-flush', slot: w.slot, path: w.path });
          await h.flush();
          if (k !== 'run') die();
        },
        close: () => h.close(),
      };
    },
  });
  const slots = {
    A: wrapSlot(createSlotWriter('A', { ...config.board.slots.A })),
    B: wrapSlot(createSlotWriter('B', { ...config.board.slots.B })),
  };
  const inner = bootControlFor(config.board.boot, runner, espIo(op, die));
  const guardedCall = async <T>(name: string, slot: SlotName, fn: () => Promise<T>): Promise<T> => {
    const k = op({ op: `boot-${name}`, slot });
    const r = await fn();
    if (k !== 'run') die();
    return r;
  };
  const bootControl: BootControl = {
    backend: inner.backend,
    bootedSlot: () => inner.bootedSlot(),
    slotState: (s) => inner.slotState(s),
    markBad: (s) => guardedCall('markBad', s, () => inner.markBad(s)),
    armTrial: (s, t) => guardedCall('armTrial', s, () => inner.armTrial(s, t)),
    commit: (s) => guardedCall('commit', s, () => inner.commit(s)),
    rebootArgument: () => inner.rebootArgument(),
  } as BootControl & { rebootArgument: () => Promise<string | undefined> };
  const now = o.now ?? Date.now;
  const store = new FileStateStore({
    stateDir: config.stateDir,
    now,
    writeFileAtomic: async (path, data) => {
      const k = op({ op: 'state-save', path });
      await writeFileAtomic(path, data);
      if (k !== 'run') die();
    },
  });
  const box = new Outbox({ dir: statePaths(config.stateDir).outbox, now });
  const outbox: EventSink = {
    async append(event) {
      const k = op({ op: 'outbox-append', type: event.type });
      const r = await box.append(event);
      if (k !== 'run') die();
      return r;
    },
  };
  const reboot = async (rebootArgument?: string): Promise<void> => {
    const k = op({ op: 'reboot', ...(rebootArgument ? { arg: rebootArgument } : {}) });
    reboots++;
    // the argument reaches the firmware (rpi-tryboot: `0 tryboot`, one shot); a cut passes none
    await powerCycle(o.boardDir, rebootArgument ? { rebootArgument } : {});
    if (k !== 'run') die();
  };
  try {
    const r = await runUpdateCycle(
      () => createAgent(config, { runner, slots, bootControl, store, outbox, reboot, health: boardHealth(o.boardDir), now }),
      { maxReboots: o.maxReboots ?? 6 },
    );
    return { phase: r.phase, finished: r.finished, ops: n, reboots };
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      config: { type: 'string' },
      board: { type: 'string' },
      journal: { type: 'string' },
      'kill-at': { type: 'string' },
      cut: { type: 'string', default: 'before' },
      'max-reboots': { type: 'string', default: '6' },
    },
  });
  if (!values.config || !values.board) {
    process.stderr.write('usage: driver.js --config CFG --board DIR [--journal FILE] [--kill-at N] [--cut before|after|torn] [--max-reboots N]\n');
    return 2;
  }
  const cut = values.cut as CutMode;
  if (!['before', 'after', 'torn'].includes(cut)) throw new Error(`--cut ${cut}: use before, after or torn`);
  const config = await loadConfig(values.config);
  const r = await drive({
    config,
    boardDir: values.board,
    ...(values.journal ? { journal: values.journal } : {}),
    ...(values['kill-at'] ? { killAt: Number(values['kill-at']) } : {}),
    cut,
    maxReboots: Number(values['max-reboots']),
  });
  process.stdout.write(JSON.stringify(r) + '\n');
  return 0;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main(process.argv.slice(2)).then(
    (code) => { process.exitCode = code; },
    (err: unknown) => {
      const e = err as { code?: string; message?: string; stack?: string };
      process.stderr.write(`driver: ${e.code ? e.code + ': ' : ''}${e.stack ?? e.message ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}

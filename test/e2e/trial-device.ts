/**
 * A device driven only from outside, for the trial-safety lane: the built `slotflip` CLI
 * (dist/daemon/cli.js) as separate processes, an emulated board made with `slotflip board create`,
 * a repository made with `slotflip repo init` / `release add`, served by a real HTTP server with
 * Range. The OS's reboot is a script the config names: it records its arguments and exits with the
 * code in `reboot-exit` (so a test can make the reboot fail); when it "succeeds" the test performs
 * the reboot itself with `slotflip board power-cycle` (passing on the reboot argument, e.g. rpi's
 * `0 tryboot`). A power cut is a power cycle with no argument. A read-only bind mount of the board
 * directory makes the boot environment unwritable for one run (EROFS on every write).
 *
 * What tests look at is what an owner sees: exit codes, `slotflip status --json`, the slot images'
 * hashes, which slot the board booted.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { makeTestImage } from '../../hal/image.js';
import { startHttpServer, type HttpServerHandle } from '../harness/http-server.js';
import { CLI, slotflip, type CliResult } from './harness.js';

export { CLI };

const execFileP = promisify(execFile);
const SLOT_SIZE = 256 * 1024;
const HARDWARE = 'acme,e2e';

export interface BoardKind {
  backend: string;
  convention?: string;
}

/** Every boot backend and convention the board emulator knows. */
export const BOARD_KINDS: BoardKind[] = [
  { backend: 'emulated' },
  { backend: 'uboot', convention: 'rauc' },
  { backend: 'uboot', convention: 'mender' },
  { backend: 'grub', convention: 'greenboot' },
  { backend: 'grub', convention: 'rauc' },
  { backend: 'systemd-boot', convention: 'v252' },
  { backend: 'rpi-tryboot' },
  { backend: 'custom' },
];

export const kindName = (k: BoardKind): string => (k.convention ? `${k.backend}/${k.convention}` : k.backend);

/** Runs the built CLI (the e2e lane's runner); never throws for a non-zero exit. */
export const cli = (args: string[]): Promise<CliResult> => slotflip(args);

async function must(args: string[]): Promise<string> {
  const r = await cli(args);
  if (r.code !== 0) throw new Error(`slotflip ${args.join(' ')}: exit ${r.code}: ${r.stderr.slice(-2000)}`);
  return r.stdout;
}

export interface SlotView {
  slot: 'A' | 'B';
  booted: boolean;
  boot: { state: 'good' | 'trial' | 'bad'; primary: boolean; triesLeft?: number } | { error: string };
  release?: { version: string };
}

export interface StatusView {
  phase: string;
  bootedSlot: 'A' | 'B';
  slots: SlotView[];
  attempt?: { releaseId: string; stepFailures?: number };
  lastCheck?: { result: string; detail?: string };
  lastResult?: { outcome: string; release: { version: string }; reason?: { code: string } };
}

export interface TrialDevice {
  dir: string;
  boardDir: string;
  configPath: string;
  slots: { A: string; B: string };
  server: HttpServerHandle;
  /** signs and adds a release (an image in the emulated board's format) to the served repository;
   * `extra`: more `release add` options (e.g. `--inline-index`). */
  publish(version: string, securityVersion: number, healthy: boolean, extra?: string[]): Promise<void>;
  /** `slotflip update --once [--no-check]`: one cycle, as a cron job or the daemon would run it. */
  update(check?: boolean): Promise<CliResult>;
  status(): Promise<StatusView>;
  /** makes the next reboot commands exit with `code` (0: the OS goes down — call `rebootIfAsked`). */
  setRebootExit(code: number): Promise<void>;
  /** the reboot arguments of every reboot command run so far. */
  reboots(): Promise<string[][]>;
  /** performs the reboot the last successful reboot command asked for, if it has not happened yet. */
  rebootIfAsked(): Promise<boolean>;
  /** a power cut: power off and on, no reboot argument. Returns the booted slot. */
  powerCut(): Promise<string>;
  sha(slot: 'A' | 'B'): Promise<string>;
  /** runs `fn` with the board directory (boot environment included) mounted read-only. */
  readOnlyBoard<T>(fn: () => Promise<T>): Promise<T>;
}

export async function trialDevice(dir: string, kind: BoardKind): Promise<TrialDevice> {
  const boardDir = join(dir, 'board');
  const repo = join(dir, 'repo');
  await must(['board', 'create', boardDir, '--backend', kind.backend, '--slot-size', String(SLOT_SIZE), ...(kind.convention ? ['--convention', kind.convention] : [])]);
  const desc = JSON.parse(await readFile(join(boardDir, 'board.json'), 'utf8')) as { slots: { A: string; B: string }; bootConfig: unknown };
  await must(['repo', 'init', repo]);
  const server = await startHttpServer({ root: join(repo, 'repository') });

  const rebootScript = join(dir, 'reboot.sh');
  const rebootLog = join(dir, 'reboots.jsonl');
  const rebootExit = join(dir, 'reboot-exit');
  await writeFile(rebootExit, '0\n');
  await writeFile(rebootLog, '');
  // a test fixture, not product code: records argv, exits with the configured code
  await writeFile(rebootScript, `#!/bin/sh\nprintf '%s\\n' "$*" >> '${rebootLog}'\nexit "$(cat '${rebootExit}')"\n`);
  await chmod(rebootScript, 0o755);

  const configPath = join(dir, 'config.json');
  await writeFile(configPath, JSON.stringify({
    deviceId: 'e2e-dev', hardware: HARDWARE, stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'http', url: server.url }], payloadBaseUrls: [`${server.url}targets/`] },
    board: { slots: { A: { path: desc.slots.A, size: SLOT_SIZE }, B: { path: desc.slots.B, size: SLOT_SIZE } }, boot: desc.bootConfig, tries: 2 },
    health: { deadlineSeconds: 30, checks: [{ type: 'command', name: 'application', argv: [process.execPath, CLI, 'board', 'probe', boardDir, '--health'], timeoutSeconds: 20 }] },
    reboot: { command: [rebootScript] },
    log: { level: 'warn' },
  }, null, 2));

  let performed = 0;
  const readReboots = async (): Promise<string[][]> => (await readFile(rebootLog, 'utf8')).split('\n').filter((l, i, all) => i < all.length - 1 || l !== '').map((l) => (l === '' ? [] : l.split(' ')));
  const sha = async (p: string) => createHash('sha256').update(await readFile(p)).digest('hex');
  let okReboots = 0;

  const dev: TrialDevice = {
    dir, boardDir, configPath, slots: desc.slots, server,
    async publish(version, securityVersion, healthy, extra = []) {
      const image = join(dir, `image-${version}.img`);
      await writeFile(image, makeTestImage({ version, size: 160 * 1024, healthy }));
      await must(['release', 'add', repo, '--image', image, '--version', version, '--security-version', String(securityVersion), '--hardware', HARDWARE, '--channel', 'stable', '--chunk-size', '32768', ...extra]);
    },
    async update(check = true) {
      const before = (await readReboots()).length;
      const exit = Number((await readFile(rebootExit, 'utf8')).trim());
      const r = await cli(['update', '--once', ...(check ? [] : ['--no-check']), '--config', configPath, '--json']);
      // reboot commands that exited 0 during this run: the OS would now go down
      if (exit === 0) okReboots += (await readReboots()).length - before;
      return r;
    },
    async status() {
      return JSON.parse(await must(['status', '--config', configPath, '--json'])) as StatusView;
    },
    async setRebootExit(code) {
      await writeFile(rebootExit, `${code}\n`);
    },
    reboots: readReboots,
    async rebootIfAsked() {
      if (performed >= okReboots) return false;
      const all = await readReboots();
      const arg = all.at(-1)?.join(' ') ?? '';
      performed = okReboots;
      await must(['board', 'power-cycle', boardDir, ...(arg ? ['--reboot-arg', arg] : [])]);
      return true;
    },
    async powerCut() {
      performed = okReboots; // a reboot still pending is overtaken by the cut
      const r = JSON.parse(await must(['board', 'power-cycle', boardDir, '--json'])) as { booted: string };
      return r.booted;
    },
    sha: (slot) => sha(desc.slots[slot]),
    async readOnlyBoard(fn) {
      await execFileP('mount', ['--bind', boardDir, boardDir]);
      try {
        await execFileP('mount', ['-o', 'remount,ro,bind', boardDir]);
        return await fn();
      } finally {
        await execFileP('umount', [boardDir]);
      }
    },
  };
  return dev;
}

/** The slot view of `slot` in a status, with its boot state (throws when it could not be read). */
export function slotOf(s: StatusView, slot: 'A' | 'B'): SlotView & { boot: { state: string; primary: boolean } } {
  const v = s.slots.find((x) => x.slot === slot)!;
  if ('error' in v.boot) throw new Error(`slot ${slot}: ${v.boot.error}`);
  return v as SlotView & { boot: { state: string; primary: boolean } };
}

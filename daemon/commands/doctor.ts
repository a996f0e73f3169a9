/**
 * `slotflip doctor --config FILE [--json]`: checks a device's integration before the daemon relies on
 * it — config valid, bootloader tools on PATH, bootloader environment readable through the configured
 * backend (booted slot, both slots' boot state; the uboot backend refuses a two-copy fw_env.config on
 * /dev/mtdblockN, HAL_BOOTENV_CONFIG; a last update the bootloader ignored, DAEMON_BOOTLOADER_IGNORED_ENV,
 * read from the update record, is a warning with what to compare), slots present, sized and the inactive one unmounted,
 * the shipped TUF root parseable and self-signed, broker and payload servers reachable over TCP, the
 * state directory writable. Each check says pass / warn / fail / skip and, when not passing, what to do.
 *
 * Trade-offs taken:
 * - Read-only towards the bootloader and the slots: doctor never writes an environment or a slot; the
 *   only write is a probe file in the state directory (created, fsynced and removed).
 * - Checks run with the caller's privileges, not inside slotflip.service's sandbox: a path the unit's
 *   ReadWritePaths= / DeviceAllow= do not grant passes here and still fails in the service
 *   (systemd/README.md, "Board drop-ins", says which grants each backend needs).
 * - Every check is independent: one failing (a dead broker) never hides the others. Only a config that
 *   cannot be loaded stops the run, since every other check reads it.
 *
 * Also here, at the end: `slotflip health`, the boot-health gate slotflip-health.service runs before
 * boot-complete.target (the configured health checks, once; the exit status is the verdict).
 */
import { access, open, readFile, realpath, stat, unlink } from 'node:fs/promises';
import { connect as netConnect } from 'node:net';
import { delimiter, isAbsolute, join } from 'node:path';
import { MetadataKind } from '@tufjs/models';
import { codeOf, isCoded } from '../../hal/errors.js';
import { readFileCapped } from '../../hal/atomic-file.js';
import { SLOT_NAMES, otherSlot, type BootControl, type SlotBootState, type SlotName } from '../../hal/boot-control.js';
import { createSlotWriter } from '../../hal/file-slot.js';
import { createBootControl, type BootBackendConfig } from '../../hal/registry.js';
import { parseMetadata, verifyThreshold } from '../../manifests/client.js';
import { loadConfig, requireHealthChecks, type Config } from '../config.js';
import { BOOTLOADER_IGNORED_ENV, type HistoryEntry } from '../machine.js';
import { FileStateStore } from '../state-store.js';
import { healthHasChecks, runHealthChecks, type HealthDeps, type HealthReport } from '../health.js';
import type { Command, CommandIO } from './command.js';
import { nodeFs, nodeUtil } from '../../hal/builtins.js';
const { parseArgs } = nodeUtil;
const { constants: fsc } = nodeFs;

export type CheckStatus = 'pass' | 'warn' | 'fail' | 'skip';

export interface DoctorCheck {
  /** stable id for scripts: config, health, boot-tools, boot-env, slots, trust-root, broker, payload-servers, state-dir. */
  id: string;
  status: CheckStatus;
  /** what was found, one line. */
  summary: string;
  /** what to do about it (absent on pass). */
  fix?: string;
  /** error code behind a failure, when there was one. */
  code?: string;
}

export interface DoctorReport {
  ok: boolean;
  config: string;
  checks: DoctorCheck[];
}

export interface DoctorDeps {
  /** the configured boot backend (hal/registry.ts `createBootControl`). */
  createBootControl(config: Config): Promise<BootControl> | BootControl;
  /** resolves when a TCP connection to host:port opens within timeoutMs; rejects otherwise. */
  tcpConnect(host: string, port: number, timeoutMs: number): Promise<void>;
  /** `PATH` to search for bootloader tools (from the CLI entry's environment). */
  path: string;
  /** mount table to find mounted slots; default `/proc/self/mounts`. */
  mountsFile?: string;
  /** per network check; default 5000 ms. */
  connectTimeoutMs?: number;
}

/** Tools each boot backend calls (from its config), and where they come from. Backends not listed
 * need none. */
const BACKEND_TOOLS: Record<string, (boot: Record<string, unknown>) => { cmd: string; from: string }[]> = {
  uboot: (b) => [
    { cmd: str(b.fwPrintenv) ?? 'fw_printenv', from: 'libubootenv-tool (Debian) / libubootenv (Yocto, Buildroot)' },
    { cmd: str(b.fwSetenv) ?? 'fw_setenv', from: 'libubootenv-tool (Debian) / libubootenv (Yocto, Buildroot)' },
  ],
  grub: (b) => [{ cmd: str(b.grubEditenv) ?? 'grub-editenv', from: 'grub-common (Debian) / grub-editenv (Yocto) / the grub2 tools (Buildroot)' }],
  custom: (b) => (str(b.command) ? [{ cmd: str(b.command)!, from: 'your board support package' }] : []),
};

const BOOT_FIXES: Record<string, string> = {
  HAL_TOOL_MISSING: 'install the bootloader tool (see boot-tools) or set its path in board.boot',
  HAL_BOOTENV_READ: 'check the environment location (fw_env.config offsets and sizes must match U-Boot\'s CONFIG_ENV_OFFSET/CONFIG_ENV_SIZE; the grubenv / autoboot.txt path must exist and be mounted)',
  HAL_BOOTENV_PARSE: 'the environment lacks or garbles the convention\'s variables: initialise it for the chosen convention (systemd/README.md, "Board drop-ins")',
  HAL_BOOTED_SLOT_UNKNOWN: 'the kernel command line must name the slot: set board.boot.cmdline (key/values) to match what the bootloader passes',
  HAL_BOOTENV_CONFIG: 'point both fw_env.config lines at the MTD character device (/dev/mtdN, not /dev/mtdblockN): libubootenv then writes the 1/0 flags a NOR-flash U-Boot reads; then run doctor again',
};

/** What to check when the bootloader ignored a trial (DAEMON_BOOTLOADER_IGNORED_ENV), per backend. */
const IGNORED_ENV_FIXES: Record<string, string> = {
  uboot: 'compare fw_env.config with the U-Boot build: one line per copy only if U-Boot has CONFIG_SYS_REDUNDAND_ENVIRONMENT, offsets and sizes equal to CONFIG_ENV_OFFSET(_REDUND) / CONFIG_ENV_SIZE, the device U-Boot really loads from (CONFIG_ENV_IS_IN_*), /dev/mtdN (not mtdblock) for NOR flash; U-Boot printing "bad CRC, using default environment" on the console confirms it',
  grub: 'check that envFile is the grubenv grub.cfg loads (load_env -f on the same partition and path) and that grub.cfg reads the convention\'s variables',
  'systemd-boot': 'check that esp is the ESP the firmware boots from and that no EFI variable (LoaderEntryDefault / LoaderEntryOneShot, `bootctl set-default`) overrides loader.conf',
  emulated: 'check that the board\'s stateFile is the one its bootloader reads',
};

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Where `cmd` would be found on `path`, or undefined. Absolute paths are checked as given. */
export async function findOnPath(cmd: string, path: string): Promise<string | undefined> {
  const candidates = cmd.includes('/') ? [cmd] : path.split(delimiter).filter((d) => isAbsolute(d)).map((d) => join(d, cmd));
  for (const c of candidates) {
    try {
      await access(c, fsc.X_OK);
      const st = await stat(c);
      // root passes access(X_OK) for any file with an x bit; a file without any is no tool
      if (st.isFile() && (st.mode & 0o111) !== 0) return c;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Host and port of a broker or payload URL (default ports by scheme). Pure; undefined when unusable. */
export function endpointOf(url: string): { host: string; port: number } | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return undefined;
  }
  const defaults: Record<string, number> = { 'mqtt:': 1883, 'mqtts:': 8883, 'ws:': 80, 'wss:': 443, 'http:': 80, 'https:': 443 };
  const port = u.port ? Number(u.port) : defaults[u.protocol];
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  if (!host || port === undefined) return undefined;
  return { host, port };
}

export function tcpConnect(host: string, port: number, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const sock = netConnect({ host, port });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.end();
      resolve();
    });
    sock.once('error', (e) => {
      clearTimeout(timer);
      sock.destroy();
      reject(e);
    });
  });
}

/** Mount points per source device (realpath'd), from a /proc/self/mounts-format file. */
async function mountsBySource(file: string): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return out;
  }
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  for (const line of text.split('\n')) {
    const [src, target] = line.split(' ');
    if (!src || !target || !src.startsWith('/')) continue;
    const dev = await realpath(unescape(src)).catch(() => unescape(src));
    out.set(dev, [...(out.get(dev) ?? []), unescape(target)]);
  }
  return out;
}

const fmtBytes = (n: number): string => (n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(2)} GiB` : `${(n / (1 << 20)).toFixed(1)} MiB`);
const fmtState = (s: SlotBootState): string =>
  `${s.state}${s.state === 'trial' && s.triesLeft !== undefined ? ` (${s.triesLeft} left)` : ''}${s.primary ? ', primary' : ''}`;

/** Units whose state a daemon check would race: ordered after slotflip.service, or reached only
 * after the health gate itself. */
const RACING_UNITS = new Set(['multi-user.target', 'graphical.target', 'default.target', 'boot-complete.target']);

/** The health config as the daemon will judge a trial boot with it (pure). */
export function checkHealthConfig(config: Config): DoctorCheck {
  const h = config.health;
  if (!healthHasChecks(h) && h.allowNoChecks !== true) {
    return { id: 'health', status: 'fail', code: 'DAEMON_HEALTH_NO_CHECKS', summary: '/health configures no check: the daemon refuses to start', fix: 'add "settle": { "timeoutSeconds": 600, "bootComplete": true } and your application\'s checks, or "allowNoChecks": true' };
  }
  const racing = h.checks.filter((c) => c.type === 'systemd-unit' && RACING_UNITS.has(c.unit)).map((c) => (c as { unit: string }).unit);
  if (racing.length > 0) {
    return { id: 'health', status: 'warn', summary: `systemd-unit check on ${racing.join(', ')} races its own start (ordered after slotflip.service / the health gate): healthy boots roll back`, fix: 'remove it and use "settle": { "timeoutSeconds": 600, "bootComplete": true }' };
  }
  const what = `${h.checks.length} check${h.checks.length === 1 ? '' : 's'}${h.dropInDirs?.required ? ', required.d' : ''}${h.settle ? `, settle ${h.settle.timeoutSeconds} s${h.settle.bootComplete ? ' + boot-complete.target' : ''}` : ''}, deadline ${h.deadlineSeconds} s`;
  if (!healthHasChecks(h)) return { id: 'health', status: 'warn', summary: 'no checks: every trial boot is committed unjudged (allowNoChecks)', fix: 'add checks unless this is really meant' };
  if (!h.settle) return { id: 'health', status: 'warn', summary: `${what}; no settle: checks start right after the daemon's READY=1, on a half-started system`, fix: 'add "settle": { "timeoutSeconds": 600, "bootComplete": true }' };
  return { id: 'health', status: 'pass', summary: what };
}

async function checkBootTools(config: Config, deps: DoctorDeps): Promise<DoctorCheck> {
  const boot = config.board.boot as unknown as Record<string, unknown>;
  const tools = [...(BACKEND_TOOLS[config.board.boot.type]?.(boot) ?? []), { cmd: config.reboot.command[0]!, from: 'systemd (reboot.command)' }];
  const missing: { cmd: string; from: string }[] = [];
  const found: string[] = [];
  for (const tool of tools) {
    const where = await findOnPath(tool.cmd, deps.path);
    if (where) found.push(where);
    else missing.push(tool);
  }
  if (missing.length === 0) return { id: 'boot-tools', status: 'pass', summary: `backend ${config.board.boot.type}: ${found.join(', ')}` };
  return {
    id: 'boot-tools',
    status: 'fail',
    code: 'HAL_TOOL_MISSING',
    summary: `backend ${config.board.boot.type}: not found on PATH: ${missing.map((m) => m.cmd).join(', ')}`,
    fix: `install ${[...new Set(missing.map((m) => m.from))].join('; ')} in the image, or set the tool paths in board.boot / reboot.command`,
  };
}

async function checkBootEnv(config: Config, deps: DoctorDeps): Promise<{ check: DoctorCheck; booted: SlotName | undefined }> {
  let bc: BootControl;
  try {
    bc = await deps.createBootControl(config);
  } catch (e) {
    return {
      check: { id: 'boot-env', status: 'fail', code: codeOf(e), summary: `backend ${config.board.boot.type}: ${errText(e)}`, fix: 'fix board.boot in the config' },
      booted: undefined,
    };
  }
  const problems: DoctorCheck[] = [];
  let booted: SlotName | undefined;
  try {
    booted = await bc.bootedSlot();
  } catch (e) {
    problems.push({ id: 'boot-env', status: 'fail', code: codeOf(e), summary: `booted slot: ${errText(e)}`, fix: BOOT_FIXES[codeOf(e)] ?? 'check board.boot' });
  }
  const states: Partial<Record<SlotName, SlotBootState>> = {};
  for (const s of SLOT_NAMES) {
    try {
      states[s] = await bc.slotState(s);
    } catch (e) {
      problems.push({ id: 'boot-env', status: 'fail', code: codeOf(e), summary: `slot ${s} boot state: ${errText(e)}`, fix: BOOT_FIXES[codeOf(e)] ?? 'check board.boot' });
      break; // the same environment read fails the same way for the other slot
    }
  }
  if (problems.length > 0) {
    return { check: { ...problems[0]!, summary: problems.map((p) => p.summary).join('; ') }, booted };
  }
  const desc = `${bc.backend}: booted ${booted}; A ${fmtState(states.A!)}; B ${fmtState(states.B!)}`;
  if (booted && states[booted]!.state === 'bad') {
    return {
      check: { id: 'boot-env', status: 'fail', summary: desc, fix: `the running slot ${booted} is marked bad: the bootloader will not choose it again; run \`slotflip mark-good\` if this system is healthy` },
      booted,
    };
  }
  const ignored = await lastIgnoredTrial(config);
  if (ignored) {
    return {
      check: {
        id: 'boot-env',
        // warn, not fail: it is history; after a fix it stays until the next attempt is not ignored
        status: 'warn',
        code: BOOTLOADER_IGNORED_ENV,
        summary: `${desc}; the last update (${ignored.release.version}, attempt ${ignored.attempt}, ${new Date(ignored.endedAt).toISOString()}) was ignored by the bootloader: it rebooted into slot ${ignored.source} without consuming a try of slot ${ignored.target}`,
        fix: `${IGNORED_ENV_FIXES[config.board.boot.type] ?? 'check that the bootloader reads the boot state the backend writes'}. Until the bootloader reads what slotflip writes, no update can switch slots (that release is not retried; the next one is). This warning stays until an update attempt is not ignored`,
      },
      booted,
    };
  }
  if (!SLOT_NAMES.some((s) => states[s]!.state === 'good')) {
    return { check: { id: 'boot-env', status: 'warn', summary: desc, fix: 'no slot is committed yet: a trial is pending; the daemon commits it after a healthy boot' }, booted };
  }
  return { check: { id: 'boot-env', status: 'pass', summary: desc }, booted };
}

/** The newest finished attempt, when it ended because the bootloader ignored its trial. Read-only;
 * a missing or unreadable record is no finding here (state-dir reports the directory). */
async function lastIgnoredTrial(config: Config): Promise<HistoryEntry | undefined> {
  try {
    const last = (await new FileStateStore({ stateDir: config.stateDir, now: Date.now }).load()).history.at(-1);
    return last?.reason?.code === BOOTLOADER_IGNORED_ENV ? last : undefined;
  } catch {
    return undefined;
  }
}

async function checkSlots(config: Config, booted: SlotName | undefined, deps: DoctorDeps): Promise<DoctorCheck> {
  const slots = config.board.slots;
  const sizes: Partial<Record<SlotName, number>> = {};
  const fails: string[] = [];
  const fixes: string[] = [];
  let code: string | undefined;
  if (slots.A.path === slots.B.path) {
    return { id: 'slots', status: 'fail', summary: `A and B are the same path ${slots.A.path}`, fix: 'give each slot its own partition in board.slots' };
  }
  for (const s of SLOT_NAMES) {
    const w = createSlotWriter(s, { path: slots[s].path, ...(slots[s].size !== undefined ? { size: slots[s].size } : {}) });
    try {
      sizes[s] = await w.capacity();
      await access(slots[s].path, fsc.R_OK | fsc.W_OK);
    } catch (e) {
      code ??= codeOf(e, 'HAL_SLOT_OPEN');
      fails.push(`${s} ${slots[s].path}: ${isCoded(e) ? e.message : (e as NodeJS.ErrnoException).code ?? errText(e)}`);
      fixes.push(`check board.slots.${s}.path (the partition must exist and be readable and writable by root)`);
      continue;
    }
    if (sizes[s] === 0) {
      fails.push(`${s} ${slots[s].path}: 0 bytes`);
      fixes.push(`give slot ${s} a size (board.slots.${s}.size for a file slot)`);
    }
  }
  const mounts = await mountsBySource(deps.mountsFile ?? '/proc/self/mounts');
  const inactive = booted ? [otherSlot(booted)] : [];
  for (const s of inactive) {
    const dev = await realpath(slots[s].path).catch(() => slots[s].path);
    const at = mounts.get(dev);
    if (at) {
      fails.push(`inactive slot ${s} ${slots[s].path} is mounted at ${at.join(', ')}`);
      fixes.push(`never mount the inactive slot (fstab, automounters): an update overwrites it underneath the filesystem`);
    }
  }
  const desc = SLOT_NAMES.map((s) => `${s} ${slots[s].path}${sizes[s] !== undefined ? ` ${fmtBytes(sizes[s]!)}` : ''}`).join('; ');
  if (fails.length > 0) return { id: 'slots', status: 'fail', summary: fails.join('; '), fix: [...new Set(fixes)].join('; '), ...(code ? { code } : {}) };
  if (sizes.A !== sizes.B) {
    return { id: 'slots', status: 'warn', summary: desc, fix: 'A and B differ in size: an image must fit the smaller one; make them equal' };
  }
  return { id: 'slots', status: 'pass', summary: desc };
}

async function checkTrustRoot(config: Config): Promise<DoctorCheck> {
  const path = config.trust.shippedRoot;
  try {
    const bytes = new Uint8Array(await readFileCapped(path, 512 * 1024));
    const md = parseMetadata(bytes, MetadataKind.Root, `shipped root ${path}`);
    verifyThreshold('root', md.signed.roles['root'], md.signed.keys, md, `shipped root ${path}`);
    const expires = md.signed.expires;
    return { id: 'trust-root', status: 'pass', summary: `${path}: root v${md.signed.version}, ${Object.keys(md.signed.keys).length} keys, self-signed, expires ${expires}` };
  } catch (e) {
    const enoent = (e as NodeJS.ErrnoException).code === 'ENOENT';
    return {
      id: 'trust-root',
      status: 'fail',
      code: enoent ? 'MANIFEST_NO_TRUSTED_ROOT' : codeOf(e),
      summary: enoent ? `${path}: missing` : errText(e),
      fix: 'ship the repository\'s root.json (from `slotflip repo init`) in the read-only image at trust.shippedRoot',
    };
  }
}

async function checkEndpoints(id: string, urls: string[], what: string, deps: DoctorDeps): Promise<DoctorCheck> {
  if (urls.length === 0) return { id, status: 'skip', summary: `no ${what} configured` };
  const timeout = deps.connectTimeoutMs ?? 5000;
  const results = await Promise.all(
    urls.map(async (url) => {
      const ep = endpointOf(url);
      if (!ep) return { url, ok: false, why: 'not a usable URL' };
      try {
        await deps.tcpConnect(ep.host, ep.port, timeout);
        return { url, ok: true, why: '' };
      } catch (e) {
        return { url, ok: false, why: (e as NodeJS.ErrnoException).code ?? errText(e) };
      }
    }),
  );
  const up = results.filter((r) => r.ok);
  const down = results.filter((r) => !r.ok).map((r) => `${r.url}: ${r.why}`);
  if (up.length === 0) {
    return { id, status: 'fail', summary: `no ${what} reachable (${down.join('; ')})`, fix: `check the network, DNS and firewall from this device, and the ${what} URLs in the config` };
  }
  const summary = `reachable: ${up.map((r) => r.url).join(', ')}${down.length ? `; unreachable: ${down.join('; ')}` : ''}`;
  return down.length ? { id, status: 'warn', summary, fix: `some ${what} URLs are unreachable; fix or remove them` } : { id, status: 'pass', summary };
}

async function checkBrokerFiles(config: Config): Promise<string[]> {
  const tls = config.broker?.tls ?? {};
  const files = [tls.ca, tls.cert, tls.key, config.broker?.credentialsFile].filter((f): f is string => typeof f === 'string');
  const bad: string[] = [];
  for (const f of files) {
    try {
      await access(f, fsc.R_OK);
    } catch (e) {
      bad.push(`${f}: ${(e as NodeJS.ErrnoException).code ?? 'unreadable'}`);
    }
  }
  return bad;
}

async function checkStateDir(dir: string): Promise<DoctorCheck> {
  const probe = join(dir, `.doctor-${process.pid}`);
  try {
    const st = await stat(dir);
    if (!st.isDirectory()) throw Object.assign(new Error(`${dir} is not a directory`), { code: 'ENOTDIR' });
    const fh = await open(probe, 'wx', 0o600);
    try {
      await fh.write('probe\n');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await unlink(probe);
    const mode = st.mode & 0o777;
    if (mode & 0o077) {
      return { id: 'state-dir', status: 'warn', summary: `${dir} writable, but mode ${mode.toString(8)}`, fix: `chmod 0700 ${dir}: the update record decides what boots next` };
    }
    return { id: 'state-dir', status: 'pass', summary: `${dir} writable (mode ${mode.toString(8)})` };
  } catch (e) {
    await unlink(probe).catch(() => undefined);
    const c = (e as NodeJS.ErrnoException).code;
    return {
      id: 'state-dir',
      status: 'fail',
      code: 'DAEMON_STATE_DIR',
      summary: `${dir}: ${c ?? errText(e)}`,
      fix:
        c === 'ENOENT'
          ? 'create it: systemd-tmpfiles --create slotflip.conf (systemd/slotflip.tmpfiles.conf), or let slotflip.service\'s StateDirectory= create it'
          : c === 'EROFS'
            ? 'the state directory must be on a writable, persistent filesystem (a data partition), not the read-only root'
            : 'make it a directory writable by root',
    };
  }
}

/** Runs every check against a loaded config. Never throws for a failing check; the report says it. */
export async function runDoctor(config: Config, configPath: string, deps: DoctorDeps): Promise<DoctorReport> {
  const checks: DoctorCheck[] = [{ id: 'config', status: 'pass', summary: `${configPath} is valid (device ${config.deviceId}, hardware ${config.hardware})` }];
  checks.push(checkHealthConfig(config));
  checks.push(await checkBootTools(config, deps));
  const env = await checkBootEnv(config, deps);
  checks.push(env.check);
  checks.push(await checkSlots(config, env.booted, deps));
  checks.push(await checkTrustRoot(config));
  const broker = await checkEndpoints('broker', config.broker?.urls ?? [], 'broker', deps);
  const badFiles = await checkBrokerFiles(config);
  if (badFiles.length > 0) {
    checks.push({ id: 'broker', status: 'fail', summary: `${broker.summary}; unreadable: ${badFiles.join('; ')}`, fix: 'install the device certificate, key and CA at the paths in broker.tls (readable by root)' });
  } else {
    checks.push(broker);
  }
  checks.push(await checkEndpoints('payload-servers', config.trust.payloadBaseUrls, 'payload server', deps));
  checks.push(await checkStateDir(config.stateDir));
  return { ok: checks.every((c) => c.status !== 'fail'), config: configPath, checks };
}

export function formatReport(r: DoctorReport): string {
  const lines = r.checks.map((c) => {
    const head = `${c.status.toUpperCase().padEnd(4)}  ${c.id.padEnd(15)} ${c.summary}`;
    return c.fix ? `${head}\n      ${' '.repeat(15)} fix: ${c.fix}` : head;
  });
  const failed = r.checks.filter((c) => c.status === 'fail').length;
  lines.push('', r.ok ? 'doctor: all checks passed' : `doctor: ${failed} check${failed === 1 ? '' : 's'} failed`);
  return lines.join('\n');
}

const HELP = `usage: slotflip doctor --config FILE [--json]

Checks this device's slotflip integration, without changing anything: the config, its health checks
(none at all fails; a check racing its own start or no settle warns), the bootloader
tools and environment (booted slot, both slots' boot state; for U-Boot, a fw_env.config the
bootloader cannot see; whether the bootloader ignored the last update), the slots (present, sized, the inactive
one not mounted), the shipped TUF root, TCP reachability of the broker and payload servers, and a
writable state directory. Each check prints PASS, WARN, FAIL or SKIP and what to do.

Checks run with your privileges, not inside slotflip.service's sandbox.

options:
  --config FILE   the daemon's config (e.g. /etc/slotflip/config.json)
  --json          print the report as JSON: { ok, config, checks: [{ id, status, summary, fix?, code? }] }
  -h, --help      this text

exit status: 0 when no check failed, 1 when one did, 2 on a usage error.`;

export interface DoctorCommandOptions {
  /** the boot backend factory; default: hal/registry.ts createBootControl. */
  createBootControl?: DoctorDeps['createBootControl'];
  tcpConnect?: DoctorDeps['tcpConnect'];
  mountsFile?: string;
}

function defaultCreateBootControl(config: Config): BootControl {
  // config.ts checks board.boot against hal/registry.ts's bootBackendSchema
  return createBootControl(config.board.boot as unknown as BootBackendConfig);
}

export function createDoctorCommand(opts: DoctorCommandOptions = {}): Command {
  return {
    help: HELP,
    async run(argv: string[], io: CommandIO): Promise<number> {
      let values: { config?: string; json?: boolean };
      try {
        ({ values } = parseArgs({ args: argv, options: { config: { type: 'string' }, json: { type: 'boolean' } }, strict: true, allowPositionals: false }));
      } catch (e) {
        io.stderr.write(`slotflip doctor: ${errText(e)}\n\n${HELP}\n`);
        return 2;
      }
      if (!values.config) {
        io.stderr.write(`slotflip doctor: --config FILE is required\n\n${HELP}\n`);
        return 2;
      }
      let report: DoctorReport;
      try {
        const config = await loadConfig(values.config);
        report = await runDoctor(config, values.config, {
          createBootControl: opts.createBootControl ?? defaultCreateBootControl,
          tcpConnect: opts.tcpConnect ?? tcpConnect,
          path: io.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
          ...(opts.mountsFile ? { mountsFile: opts.mountsFile } : {}),
        });
      } catch (e) {
        const problems = isCoded(e) ? (e.details?.errors as { path: string; message: string }[] | undefined) : undefined;
        report = {
          ok: false,
          config: values.config,
          checks: [
            {
              id: 'config',
              status: 'fail',
              code: codeOf(e),
              summary: problems ? problems.map((p) => `${p.path}: ${p.message}`).join('; ') : errText(e),
              fix: 'fix the config (every problem is listed by path) and run doctor again',
            },
          ],
        };
      }
      io.stdout.write((values.json ? JSON.stringify(report, null, 2) : formatReport(report)) + '\n');
      return report.ok ? 0 : 1;
    },
  };
}

export const command: Command = createDoctorCommand();

// ---------------------------------------------------------------------------------------------
// `slotflip health`: the boot-health gate run by slotflip-health.service (Before=boot-complete.target).
// It lives here, beside doctor, until it gets a file of its own: it is the systemd integration's
// entry point, and `slotflip check` already means "which release would install now".

const HEALTH_HELP = `usage: slotflip health --config FILE [--json]

Runs the configured health checks (config "health": commands, systemd units, HTTP endpoints, broker
reachability, resources, drop-in directories) once, within health.deadlineSeconds, and exits 0 when
every required check passed, 1 when one failed. Changes nothing. slotflip-health.service runs it
before boot-complete.target, so systemd-bless-boot and greenboot see the verdict.

options:
  --config FILE   the daemon's config (e.g. /etc/slotflip/config.json)
  --json          print the report as JSON: { ok, deadlineExceeded, results: [...] }
  -h, --help      this text

exit status: 0 healthy, 1 unhealthy or the config cannot be loaded, 2 on a usage error.`;

export interface HealthCommandOptions {
  /** overrides for the checks' dependencies (tests). */
  deps?: HealthDeps;
  tcpConnect?: DoctorDeps['tcpConnect'];
}

/** Broker reachability for the `broker` check: a TCP connection to any configured broker URL. */
export function brokerTcpProbe(urls: string[], connect: DoctorDeps['tcpConnect'] = tcpConnect): (timeoutMs: number) => Promise<boolean> {
  return async (timeoutMs) => {
    for (const url of urls) {
      const ep = endpointOf(url);
      if (!ep) continue;
      try {
        await connect(ep.host, ep.port, timeoutMs);
        return true;
      } catch {
        // try the next one
      }
    }
    return false;
  };
}

export function formatHealth(r: HealthReport): string {
  const lines = r.results.map((c) => {
    const tag = c.ok ? 'PASS' : c.required ? 'FAIL' : 'WARN';
    const out = c.ok || !c.output ? '' : `\n      ${c.output.trim().split('\n').slice(-5).join('\n      ')}`;
    return `${tag}  ${c.name} (${c.kind}, ${c.durationMs} ms)${out}`;
  });
  if (r.deadlineExceeded) lines.push('deadline exceeded: unfinished checks count as failed');
  lines.push(r.ok ? 'health: healthy' : 'health: UNHEALTHY');
  return lines.join('\n');
}

export function createHealthCommand(opts: HealthCommandOptions = {}): Command {
  return {
    help: HEALTH_HELP,
    async run(argv: string[], io: CommandIO): Promise<number> {
      let values: { config?: string; json?: boolean };
      try {
        ({ values } = parseArgs({ args: argv, options: { config: { type: 'string' }, json: { type: 'boolean' } }, strict: true, allowPositionals: false }));
      } catch (e) {
        io.stderr.write(`slotflip health: ${errText(e)}\n\n${HEALTH_HELP}\n`);
        return 2;
      }
      if (!values.config) {
        io.stderr.write(`slotflip health: --config FILE is required\n\n${HEALTH_HELP}\n`);
        return 2;
      }
      let config: Config;
      try {
        config = await loadConfig(values.config);
        requireHealthChecks(config, values.config);
      } catch (e) {
        // no verdict without a config: unhealthy, so a broken config cannot pass a trial boot
        io.stderr.write(`slotflip health: ${isCoded(e) ? `${e.code}: ` : ''}${errText(e)}\n`);
        return 1;
      }
      const report = await runHealthChecks(config.health, {
        // this command runs as one of the boot's jobs (Before=boot-complete.target): waiting for
        // the system to settle would wait for itself
        settle: false,
        brokerProbe: brokerTcpProbe(config.broker?.urls ?? [], opts.tcpConnect),
        ...opts.deps,
      });
      io.stdout.write((values.json ? JSON.stringify(report, null, 2) : formatHealth(report)) + '\n');
      return report.ok ? 0 : 1;
    },
  };
}

export const healthCommand: Command = createHealthCommand();


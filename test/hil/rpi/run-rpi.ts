/**
 * Raspberry Pi hardware-in-the-loop runner (runs on a workstation; the Pi is on the desk).
 *
 *   npm run build
 *   node dist/test/hil/rpi/run-rpi.js --host pi@raspberrypi.local [--port 22] [--identity ~/.ssh/id_ed25519]
 *        [--boot-dir /boot/firmware] [--out hil-results] [--scenario NAME ...] [--reboot-timeout 300]
 *
 * Deploys the compiled HAL and the Pi-side agent over SSH (scp), then drives the tryboot scenarios:
 * each step runs the agent on the Pi (`sudo node …/pi-agent-main.js STEP`), reboots the Pi (plain or
 * `reboot "0 tryboot"`), waits for a new boot id, and checks which slot the firmware booted.
 * Results are written as JSON to --out; the last line is `N passed, N failed`. See README.md.
 *
 * Everything runs through argv arrays (execFile). The host comes from the command line and is checked
 * against a strict pattern; remote commands are single-quoted for the remote shell (ssh always joins
 * its command into one string).
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SlotName } from '../../../hal/boot-control.js';
import { otherSlot } from '../../../hal/boot-control.js';
import type { AgentConfig, AgentReport } from './pi-agent.js';

export interface RunnerOptions {
  host: string;
  port?: number;
  identity?: string;
  bootDir: string;
  out: string;
  scenarios: string[];
  rebootTimeoutS: number;
  remoteDir: string;
}

const HOST_RE = /^(?:[A-Za-z0-9._-]{1,64}@)?[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$/;

/** Parses the command line. Throws with a usage message on anything unknown. Pure. */
export function parseArgs(argv: readonly string[]): RunnerOptions {
  const o: Partial<RunnerOptions> & { scenarios: string[] } = { scenarios: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined || v.startsWith('--')) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--host') o.host = val();
    else if (a === '--port') o.port = Number(val());
    else if (a === '--identity') o.identity = val();
    else if (a === '--boot-dir') o.bootDir = val();
    else if (a === '--out') o.out = val();
    else if (a === '--scenario') o.scenarios.push(val());
    else if (a === '--reboot-timeout') o.rebootTimeoutS = Number(val());
    else if (a === '--remote-dir') o.remoteDir = val();
    else throw new Error(`unknown argument ${a}`);
  }
  if (!o.host || !HOST_RE.test(o.host)) throw new Error('--host user@address is required (letters, digits, . _ - : only)');
  if (o.port !== undefined && !(Number.isInteger(o.port) && o.port > 0 && o.port < 65536)) throw new Error('--port must be 1..65535');
  if (o.rebootTimeoutS !== undefined && !(o.rebootTimeoutS >= 30)) throw new Error('--reboot-timeout must be at least 30 seconds');
  for (const s of o.scenarios) if (!PLANS.some((p) => p.name === s)) throw new Error(`unknown scenario ${s}; known: ${PLANS.map((p) => p.name).join(', ')}`);
  const remoteDir = o.remoteDir ?? 'slotflip-hil';
  if (!/^[A-Za-z0-9._/-]+$/.test(remoteDir)) throw new Error('--remote-dir: letters, digits, . _ / - only');
  return {
    host: o.host,
    port: o.port,
    identity: o.identity,
    bootDir: o.bootDir ?? '/boot/firmware',
    out: o.out ?? 'hil-results',
    scenarios: o.scenarios.length > 0 ? o.scenarios : PLANS.map((p) => p.name),
    rebootTimeoutS: o.rebootTimeoutS ?? 300,
    remoteDir,
  };
}

/** Quotes one word for a POSIX shell. Pure. */
export function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/** What the runner needs from the Pi (real: ssh/scp; tests: a simulated Pi). */
export interface Remote {
  /** runs the Pi-side agent with `step` and returns its JSON report. */
  agent(step: string[]): Promise<AgentReport>;
  /** current boot id (changes on every boot). */
  bootId(): Promise<string | undefined>;
  /** asks the Pi to reboot, with `arg` (e.g. `0 tryboot`) when given; returns once the request is sent. */
  reboot(arg?: string): Promise<void>;
}

export type Step =
  | { do: 'agent'; args: (ctx: PlanContext) => string[]; expect?: (r: AgentReport, ctx: PlanContext) => string | undefined }
  | { do: 'reboot'; tryboot: boolean; expect?: (r: AgentReport, ctx: PlanContext) => string | undefined };

export interface PlanContext {
  /** the committed slot when the plan started. */
  committed: SlotName;
  other: SlotName;
}

export interface Plan {
  name: string;
  summary: string;
  steps: Step[];
}

const bootedIs = (want: (c: PlanContext) => SlotName, tryboot: boolean) => (r: AgentReport, c: PlanContext): string | undefined => {
  if (!r.ok) return `agent failed: ${r.code}: ${r.message}`;
  if (r.booted !== want(c)) return `booted ${r.booted ?? 'unknown'}, expected ${want(c)}`;
  if (r.tryboot !== undefined && r.tryboot !== tryboot) return `tryboot flag ${r.tryboot}, expected ${tryboot}`;
  return undefined;
};
const okReport = (r: AgentReport): string | undefined => (r.ok ? undefined : `agent failed: ${r.code}: ${r.message}`);
const restore: Step[] = [
  { do: 'agent', args: (c) => ['commit', c.committed], expect: okReport },
  { do: 'reboot', tryboot: false, expect: bootedIs((c) => c.committed, false) },
];

/** The tryboot scenarios, as data. Every plan ends with the Pi back on its original committed slot. */
export const PLANS: readonly Plan[] = [
  {
    name: 'tryboot-commit',
    summary: 'arm the other slot, tryboot into it, commit, plain reboot stays on it',
    steps: [
      { do: 'agent', args: (c) => ['arm', c.other], expect: (r) => (r.ok && r.rebootArgument === '0 tryboot' ? undefined : `expected rebootArgument "0 tryboot", got ${JSON.stringify(r.rebootArgument)} ${r.message ?? ''}`) },
      { do: 'reboot', tryboot: true, expect: bootedIs((c) => c.other, true) },
      { do: 'agent', args: (c) => ['commit', c.other], expect: okReport },
      { do: 'reboot', tryboot: false, expect: bootedIs((c) => c.other, false) },
      // back to the original slot the same way
      { do: 'agent', args: (c) => ['arm', c.committed], expect: okReport },
      { do: 'reboot', tryboot: true, expect: bootedIs((c) => c.committed, true) },
      ...restore,
    ],
  },
  {
    name: 'tryboot-unconfirmed-falls-back',
    summary: 'a trial that is never committed (kernel hang, watchdog reset) is not booted again',
    steps: [
      { do: 'agent', args: (c) => ['arm', c.other], expect: okReport },
      { do: 'reboot', tryboot: true, expect: bootedIs((c) => c.other, true) },
      { do: 'reboot', tryboot: false, expect: bootedIs((c) => c.committed, false) },
      { do: 'agent', args: (c) => ['mark-bad', c.other], expect: okReport },
    ],
  },
  {
    name: 'health-fail-rollback',
    summary: 'the trial boots, its health check fails, markBad, plain reboot returns to the committed slot',
    steps: [
      { do: 'agent', args: (c) => ['arm', c.other], expect: okReport },
      { do: 'reboot', tryboot: true, expect: bootedIs((c) => c.other, true) },
      { do: 'agent', args: (c) => ['mark-bad', c.other], expect: (r) => (r.ok && r.rebootArgument === null ? undefined : `after markBad a plain reboot must do: ${JSON.stringify(r.rebootArgument)} ${r.message ?? ''}`) },
      { do: 'reboot', tryboot: false, expect: bootedIs((c) => c.committed, false) },
    ],
  },
  {
    name: 'power-cut-before-tryboot',
    summary: 'armed, then a plain boot (as after a power cut): the committed slot boots',
    steps: [
      { do: 'agent', args: (c) => ['arm', c.other], expect: okReport },
      { do: 'reboot', tryboot: false, expect: bootedIs((c) => c.committed, false) },
      { do: 'agent', args: (c) => ['mark-bad', c.other], expect: okReport },
    ],
  },
];

export interface StepResult {
  plan: string;
  index: number;
  step: string;
  report?: AgentReport;
  problem?: string;
  ms: number;
}

export interface RunnerDeps {
  remote: Remote;
  now: () => number;
  sleep: (ms: number) => Promise<void>;
  rebootTimeoutMs: number;
  log: (line: string) => void;
}

async function waitForNewBoot(deps: RunnerDeps, before: string | undefined): Promise<void> {
  const deadline = deps.now() + deps.rebootTimeoutMs;
  while (deps.now() < deadline) {
    await deps.sleep(5000);
    const id = await deps.remote.bootId().catch(() => undefined);
    if (id !== undefined && id !== before) return;
  }
  throw new Error(`the Pi did not come back with a new boot id within ${deps.rebootTimeoutMs / 1000} s`);
}

/** Runs `plans` in order; stops a plan at its first failing step (the Pi state is then reported). */
export async function runPlans(plans: readonly Plan[], deps: RunnerDeps): Promise<StepResult[]> {
  const results: StepResult[] = [];
  for (const plan of plans) {
    const start = await deps.remote.agent(['status']);
    if (!start.ok || !start.booted) {
      results.push({ plan: plan.name, index: -1, step: 'status', report: start, problem: `cannot tell the booted slot: ${start.code ?? ''} ${start.message ?? ''}`, ms: 0 });
      break;
    }
    const ctx: PlanContext = { committed: start.booted, other: otherSlot(start.booted) };
    deps.log(`# ${plan.name}: ${plan.summary} (committed ${ctx.committed})`);
    for (const [index, step] of plan.steps.entries()) {
      const t0 = deps.now();
      let report: AgentReport;
      let label: string;
      try {
        if (step.do === 'agent') {
          const args = step.args(ctx);
          label = args.join(' ');
          report = await deps.remote.agent(args);
        } else {
          label = step.tryboot ? 'reboot "0 tryboot"' : 'reboot';
          const before = await deps.remote.bootId();
          await deps.remote.reboot(step.tryboot ? '0 tryboot' : undefined);
          await waitForNewBoot(deps, before);
          report = await deps.remote.agent(['status']);
        }
      } catch (e) {
        results.push({ plan: plan.name, index, step: step.do, problem: e instanceof Error ? e.message : String(e), ms: deps.now() - t0 });
        return results;
      }
      const problem = step.expect?.(report, ctx);
      results.push({ plan: plan.name, index, step: label, report, problem, ms: deps.now() - t0 });
      deps.log(`${problem ? 'not ok' : 'ok'} - ${plan.name} #${index} ${label}${problem ? `: ${problem}` : ''}`);
      if (problem) break;
    }
  }
  return results;
}

function run(cmd: string, args: readonly string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolvePromise) => {
    execFile(cmd, [...args], { timeout: timeoutMs, maxBuffer: 1 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : null) : 0;
      resolvePromise({ code, stdout, stderr });
    });
  });
}

/** The real transport: ssh/scp with BatchMode (keys only, never a password prompt). */
export function sshRemote(o: RunnerOptions): Remote & { deploy(distDir: string, agentConfig: AgentConfig): Promise<void> } {
  const base = ['-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10', ...(o.port ? ['-p', String(o.port)] : []), ...(o.identity ? ['-i', o.identity] : [])];
  const scpBase = ['-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10', ...(o.port ? ['-P', String(o.port)] : []), ...(o.identity ? ['-i', o.identity] : [])];
  const ssh = (words: string[], timeoutMs = 60_000) => run('ssh', [...base, '--', o.host, words.map(shellQuote).join(' ')], timeoutMs);
  const agentPath = `${o.remoteDir}/dist/test/hil/rpi/pi-agent-main.js`;
  return {
    async deploy(distDir, agentConfig) {
      const mk = await ssh(['mkdir', '-p', `${o.remoteDir}/dist/test/hil`]);
      if (mk.code !== 0) throw new Error(`ssh ${o.host}: ${mk.stderr.trim()}`);
      const tmp = await mkdtemp(join(tmpdir(), 'slotflip-rpi-'));
      try {
        await writeFile(join(tmp, 'agent.json'), JSON.stringify(agentConfig, null, 2) + '\n');
        await writeFile(join(tmp, 'package.json'), '{ "type": "module" }\n');
        const copies: Array<[string[], string]> = [
          [[join(distDir, 'hal')], `${o.remoteDir}/dist/`],
          [[join(distDir, 'test', 'hil', 'rpi')], `${o.remoteDir}/dist/test/hil/`],
          [[join(tmp, 'package.json')], `${o.remoteDir}/dist/`],
          [[join(tmp, 'agent.json')], `${o.remoteDir}/`],
        ];
        for (const [src, dst] of copies) {
          const r = await run('scp', [...scpBase, '-r', '-q', ...src, `${o.host}:${dst}`], 120_000);
          if (r.code !== 0) throw new Error(`scp ${src.join(' ')}: ${r.stderr.trim()}`);
        }
      } finally {
        await rm(tmp, { recursive: true, force: true });
      }
      const node = await ssh(['node', '--version']);
      if (node.code !== 0 || !/^v(2\d|[3-9]\d)\./.test(node.stdout.trim())) throw new Error(`the Pi needs Node.js 20 or later on PATH (got ${node.stdout.trim() || node.stderr.trim()})`);
    },
    async agent(step) {
      const r = await ssh(['sudo', 'node', agentPath, '--config', `${o.remoteDir}/agent.json`, ...step]);
      const line = r.stdout.trim().split('\n').pop() ?? '';
      try {
        return JSON.parse(line) as AgentReport;
      } catch {
        return { ok: false, step: step.join(' '), code: 'HIL_AGENT_OUTPUT', message: `agent printed no report (exit ${r.code}): ${r.stderr.trim().slice(0, 300)}` };
      }
    },
    async bootId() {
      const r = await ssh(['cat', '/proc/sys/kernel/random/boot_id'], 15_000);
      return r.code === 0 ? r.stdout.trim() : undefined;
    },
    async reboot(arg) {
      // the connection drops while rebooting: the exit code is meaningless
      await ssh(arg === undefined ? ['sudo', 'reboot'] : ['sudo', 'reboot', arg], 20_000);
    },
  };
}

export async function main(argv: readonly string[]): Promise<number> {
  let o: RunnerOptions;
  try {
    o = parseArgs(argv);
  } catch (e) {
    process.stderr.write(`run-rpi: ${(e as Error).message}\nusage: node dist/test/hil/rpi/run-rpi.js --host user@pi [--port N] [--identity KEY] [--boot-dir DIR] [--out DIR] [--scenario NAME]... [--reboot-timeout S]\n`);
    return 2;
  }
  const distDir = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
  const remote = sshRemote(o);
  await remote.deploy(distDir, { bootDir: o.bootDir });
  const results = await runPlans(PLANS.filter((p) => o.scenarios.includes(p.name)), {
    remote,
    now: () => Date.now(),
    sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
    rebootTimeoutMs: o.rebootTimeoutS * 1000,
    log: (l) => process.stdout.write(l + '\n'),
  });
  await mkdir(o.out, { recursive: true });
  const file = join(o.out, `rpi-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  await writeFile(file, JSON.stringify({ host: o.host, scenarios: o.scenarios, results }, null, 2) + '\n');
  const failed = results.filter((r) => r.problem).length;
  const expectedSteps = PLANS.filter((p) => o.scenarios.includes(p.name)).reduce((n, p) => n + p.steps.length, 0);
  const passed = results.filter((r) => !r.problem && r.index >= 0).length;
  const incomplete = failed === 0 && passed < expectedSteps ? 1 : 0;
  process.stdout.write(`results: ${file}\n${passed} passed, ${failed + incomplete} failed\n`);
  return failed + incomplete > 0 ? 1 : 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`run-rpi: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}

/**
 * Shared plumbing for the device-side commands (update, status, history, check, mark-good, rollback,
 * install, daemon): strict argv parsing with `--config FILE` and `--json`, config loading, the root
 * logger, the agent. The CLI entry is the composition root; commands receive env through `io`.
 *
 * Logs of one-shot commands go to stderr (stdout carries the result, JSON with `--json`); the
 * long-running daemon logs to stdout for journald.
 */
import { fileProtocolMemory } from './broker-state.js';
import type { Logger } from 'pino';
import { pino } from 'pino';
import { SlotflipError } from '../hal/errors.js';
import type { CommandIO } from './commands/command.js';
import { loadConfig, type Config } from './config.js';
import { createAgent, statePaths, type ComposeOverrides } from './compose.js';
import { Outbox } from './outbox.js';
import { MqttTransport } from './mqtt.js';
import type { Agent, CycleResult } from './agent.js';
import { createLogger } from './logger.js';
import type { ParseArgsConfig } from 'node:util';
import { nodeFs, nodeUtil } from '../hal/builtins.js';
const { parseArgs } = nodeUtil;
const { readFileSync } = nodeFs;

export const COMMON_OPTIONS_HELP = [
  '  --config FILE   device config (JSON); default $SLOTFLIP_CONFIG or /etc/slotflip/config.json',
  '  --json          print the result as JSON (for scripts)',
  '  -h, --help      this help',
].join('\n');

type Options = NonNullable<ParseArgsConfig['options']>;

export interface Parsed {
  config: string;
  json: boolean;
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

/** Strict parse: unknown options are errors (DAEMON_USAGE). */
export function parseCommandArgs(argv: string[], io: CommandIO, extra: Options = {}, allowPositionals = false): Parsed {
  let r;
  try {
    r = parseArgs({ args: argv, options: { config: { type: 'string' }, json: { type: 'boolean', default: false }, ...extra }, strict: true, allowPositionals });
  } catch (cause) {
    throw new SlotflipError('DAEMON_USAGE', `${(cause as Error).message}; see --help`, { cause });
  }
  const values = r.values as Parsed['values'];
  const config = (values['config'] as string | undefined) ?? io.env['SLOTFLIP_CONFIG'] ?? '/etc/slotflip/config.json';
  return { config, json: Boolean(values['json']), values, positionals: r.positionals };
}

export function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string };
    if (pkg.version) return pkg.version;
  } catch {
    // running from dist/ one level deeper
  }
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

/** Root logger for a one-shot command: JSON lines on stderr at the configured level. */
export function commandLogger(config: Config, toStdout = false): Logger {
  return createLogger({ deviceId: config.deviceId, version: packageVersion(), level: config.log.level, destination: pino.destination({ dest: toStdout ? 1 : 2, sync: true }) });
}

export interface OpenedAgent {
  config: Config;
  agent: Agent;
  log: Logger;
  /** the device's outbox, when connected to a broker. */
  outbox?: Outbox;
  /** delivers queued events (bounded wait) and disconnects; no-op without a broker. */
  close(): Promise<void>;
}

/**
 * Loads the config and builds the agent. With `broker` set, a one-shot command also connects: it
 * waits (bounded) for the retained metadata when the first source is `mqtt`, and on `close()`
 * delivers the events it queued. A broker that cannot be reached only costs the wait.
 */
export async function openAgent(p: Parsed, overrides: ComposeOverrides = {}, opts: { connect?: boolean; waitMs?: number } = {}): Promise<OpenedAgent> {
  const config = await loadConfig(p.config);
  const log = overrides.log ?? commandLogger(config);
  const source = overrides.source ?? config.trust.sources[0];
  if (!(opts.connect ?? true) || !config.broker) {
    const agent = await createAgent(config, { ...overrides, log });
    return { config, agent, log, close: async () => undefined };
  }
  const outbox = new Outbox({ dir: statePaths(config.stateDir).outbox });
  const metadata = new Map<string, Uint8Array>();
  const transport = new MqttTransport({ config: config.broker, deviceId: config.deviceId, outbox, metadata, logger: log, protocolMemory: fileProtocolMemory(config.stateDir) });
  transport.start();
  const waitMs = opts.waitMs ?? 10_000;
  if (source?.type === 'mqtt') {
    const until = Date.now() + waitMs;
    while (!metadata.has('timestamp.json') && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  }
  const agent = await createAgent(config, { brokerMeta: transport, ...overrides, log, metadata, outbox });
  return {
    config,
    agent,
    log,
    outbox,
    async close() {
      const until = Date.now() + waitMs;
      while (transport.connected && (await outbox.pending()).length > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
      await transport.stop();
    },
  };
}

export function write(io: CommandIO, text: string): void {
  io.stdout.write(text.endsWith('\n') ? text : text + '\n');
}

/** One-paragraph human summary of a cycle. */
export function describeCycle(r: CycleResult): string {
  const lines: string[] = [];
  for (const h of r.finished) {
    const why = h.reason ? `: ${h.reason.code}: ${h.reason.message}` : '';
    lines.push(`${h.outcome} ${h.release.version} (${h.release.id}) slot ${h.source} \u2192 ${h.target}${why}`);
    for (const f of h.failures ?? []) lines.push(`  check ${f.name} failed: ${f.output.split('\n').slice(-3).join(' | ')}`);
  }
  if (r.rebooted) lines.push(`rebooting (phase ${r.phase}); run \`slotflip update --once\` again after the reboot to validate`);
  else if (r.phase !== 'idle') lines.push(`pending in phase ${r.phase}; the next cycle continues`);
  if (r.finished.length === 0 && !r.rebooted && r.lastCheck) lines.push(`check: ${r.lastCheck.result}${r.lastCheck.detail ? ` (${r.lastCheck.detail})` : ''}`);
  if (lines.length === 0) lines.push('nothing to do');
  return lines.join('\n');
}

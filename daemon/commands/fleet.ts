/**
 * `slotflip fleet rollout|watch`: the manufacturer's staged-rollout tools.
 *
 * - `rollout` re-signs a release's rollout (percentage, waves over time, halt/resume) in the
 *   repository and optionally republishes the metadata retained on the broker.
 * - `watch` keeps a live view of the fleet from the broker (retained state, events), prints it, and
 *   with a halt policy halts the rollout automatically when the failure rate crosses the threshold.
 *
 * This module is the edge: it parses argv, reads files named on the command line, and wires the
 * signal handlers; the logic lives in daemon/fleet/.
 */
import { pino, type Logger } from 'pino';
import { readFileCapped } from '../../hal/atomic-file.js';
import { SlotflipError } from '../../hal/errors.js';
import { applyRollout, buildRollout, parsePercent, parseWave, readRollout } from '../fleet/rollout.js';
import { FleetWatcher, type BrokerAuth } from '../fleet/watcher.js';
import { formatSummary, haltPolicyProblem, type FleetSummary } from '../fleet/watch.js';
import type { Command, CommandIO } from './command.js';
import { deviceTopics, isTopicLevel } from '../topics.js';
import { connectOrFail } from '../../manifests/repo.js';
import { MAX_VALIDITY_MS, RESET_MODE_NAMES } from '../../manifests/command.js';
import type { ParseArgsConfig } from 'node:util';
import { nodeUtil } from '../../hal/builtins.js';
const { parseArgs } = nodeUtil;

const TLS_HELP = [
  '  --ca FILE              CA bundle (PEM) for mqtts://',
  '  --cert FILE            client certificate (PEM) for mutual TLS',
  '  --key FILE             client key (PEM)',
  '  --username NAME        broker user name',
  '  --password-file FILE   file holding the broker password',
].join('\n');

const ROLLOUT_HELP = [
  'usage: slotflip fleet rollout REPO --release TARGET (--percent P [--wave AT=P ...] | --halt | --resume | --show) [--broker URL] [--json]',
  '',
  'Change the staged rollout of a release: devices bucket themselves from their id and the release',
  '(0..99) and install when their bucket is below the percentage in force, so no device list is needed.',
  'Re-signs targets, snapshot and timestamp in REPO (needs those keys), then with --broker republishes',
  'the metadata retained on the broker (timestamp last).',
  '',
  'options:',
  '  --release TARGET       the release\'s target name, e.g. releases/1.2.0/image.img.zst',
  '  --percent P            percentage in force now (0..100)',
  '  --wave AT=P            from time AT on, P percent; AT is ISO-8601 (2026-12-01T08:00:00Z) or an',
  '                         offset from now (+30m, +2h, +1d); repeatable; the latest wave passed wins',
  '  --halt                 halt the rollout (nobody else installs), keeping its percentages',
  '  --resume               clear a halt, keeping the percentages',
  '  --show                 print the rollout in force; change nothing',
  '  --broker URL           republish to this broker (mqtt://, mqtts://)',
  TLS_HELP,
  '  --json                 print the result as JSON',
  '  -h, --help             this help',
].join('\n');

const WATCH_HELP = [
  'usage: slotflip fleet watch --broker URL [--release TARGET] [--json] [--interval S] [--straggler-after S]',
  '                            [--halt-on-failure-rate X --min-devices N --repo DIR] [--for S] [--exit-on-halt]',
  '',
  'Watch the fleet: counts per version and phase, failures with reasons, stragglers (devices offline or',
  'silent for --straggler-after seconds). Prints a table every --interval seconds, or one JSON object',
  'per line with --json. With --halt-on-failure-rate, when at least N devices attempted --release and',
  'the share that rolled back or failed reaches X, the rollout is halted: REPO\'s targets are re-signed',
  'with halted=true and republished retained to the broker. Exit status 3 when a halt was applied.',
  '',
  'options:',
  '  --broker URL                 broker to watch (mqtt://, mqtts://)',
  '  --release TARGET             release being rolled out (counts, and the one a halt applies to)',
  '  --json                       JSON lines: {"type":"summary",...} and {"type":"halt",...}',
  '  --interval S                 seconds between prints (default 5)',
  '  --straggler-after S          silence after which a device is a straggler (default 3600)',
  '  --halt-on-failure-rate X     0 < X <= 1, e.g. 0.2',
  '  --min-devices N              attempts needed before a halt can trigger (default 10)',
  '  --repo DIR                   repository to re-sign on a halt (needs targets/snapshot/timestamp keys)',
  '  --for S                      stop after S seconds (default: until SIGINT/SIGTERM)',
  '  --exit-on-halt               stop right after a halt',
  '  --verbose                    log at info level on stderr (default warn)',
  TLS_HELP,
  '  -h, --help                   this help',
].join('\n');

type Options = NonNullable<ParseArgsConfig['options']>;
const TLS_OPTIONS: Options = { ca: { type: 'string' }, cert: { type: 'string' }, key: { type: 'string' }, username: { type: 'string' }, 'password-file': { type: 'string' } };

function parse(argv: string[], options: Options, positionals: boolean): { values: Record<string, string | boolean | string[] | undefined>; positionals: string[] } {
  try {
    const r = parseArgs({ args: argv, options, strict: true, allowPositionals: positionals });
    return { values: r.values as Record<string, string | boolean | string[] | undefined>, positionals: r.positionals };
  } catch (cause) {
    throw new SlotflipError('DAEMON_USAGE', `${(cause as Error).message}; see --help`, { cause });
  }
}

function usage(message: string): SlotflipError {
  return new SlotflipError('DAEMON_USAGE', `${message}; see --help`);
}

async function readOptionFile(path: string, option: string): Promise<Buffer> {
  try {
    return await readFileCapped(path, 1 << 20);
  } catch (cause) {
    throw new SlotflipError('DAEMON_USAGE', `${option} ${path}: cannot read it; check the path and permissions`, { cause, details: { path } });
  }
}

async function brokerAuth(v: Record<string, unknown>): Promise<BrokerAuth> {
  const auth: BrokerAuth = {};
  if (typeof v['ca'] === 'string') auth.ca = await readOptionFile(v['ca'], '--ca');
  if (typeof v['cert'] === 'string') auth.cert = await readOptionFile(v['cert'], '--cert');
  if (typeof v['key'] === 'string') auth.key = await readOptionFile(v['key'], '--key');
  if ((auth.cert === undefined) !== (auth.key === undefined)) throw usage('--cert and --key go together');
  if (typeof v['username'] === 'string') auth.username = v['username'];
  if (typeof v['password-file'] === 'string') auth.password = (await readOptionFile(v['password-file'], '--password-file')).toString('utf8').replace(/\r?\n$/, '');
  return auth;
}

function out(io: CommandIO, text: string): void {
  io.stdout.write(text.endsWith('\n') ? text : text + '\n');
}

function seconds(v: unknown, option: string, def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw usage(`${option} must be a positive number of seconds, got "${String(v)}"`);
  return n;
}

export interface FleetCommandDeps {
  now?: () => number;
  /** resolves when the watch should stop (the CLI: SIGINT/SIGTERM). */
  stopSignal?: Promise<void>;
  log?: Logger;
}

async function rollout(argv: string[], io: CommandIO, deps: FleetCommandDeps): Promise<number> {
  const p = parse(argv, {
    release: { type: 'string' }, percent: { type: 'string' }, wave: { type: 'string', multiple: true },
    halt: { type: 'boolean' }, resume: { type: 'boolean' }, show: { type: 'boolean' },
    broker: { type: 'string' }, json: { type: 'boolean' }, ...TLS_OPTIONS,
  }, true);
  const v = p.values;
  const now = deps.now ?? Date.now;
  if (p.positionals.length !== 1) throw usage('give exactly one repository directory: slotflip fleet rollout REPO --release TARGET --percent P');
  const repo = p.positionals[0]!;
  const release = v['release'];
  if (typeof release !== 'string' || release === '') throw usage('--release TARGET is required');
  const modes = ['percent', 'halt', 'resume', 'show'].filter((k) => v[k] !== undefined && v[k] !== false);
  if (modes.length !== 1) throw usage('give exactly one of --percent, --halt, --resume, --show');
  const waves = (v['wave'] as string[] | undefined) ?? [];
  if (waves.length > 0 && v['percent'] === undefined) throw usage('--wave goes with --percent');
  const current = await readRollout(repo, release);
  if (v['show']) {
    out(io, v['json'] ? JSON.stringify({ targetName: release, rollout: current ?? null }) : `${release}: ${current ? JSON.stringify(current) : 'no rollout (every device may install)'}`);
    return 0;
  }
  let next;
  if (v['percent'] !== undefined) next = buildRollout(parsePercent(v['percent'] as string, '--percent'), waves.map((w) => parseWave(w, now())));
  else if (v['halt']) next = { ...(current ?? { percent: 100 }), halted: true };
  else {
    const { halted: _drop, ...rest } = current ?? { percent: 100 };
    next = rest;
  }
  const auth = typeof v['broker'] === 'string' ? await brokerAuth(v) : {};
  const r = await applyRollout(repo, release, next, { now, ...(typeof v['broker'] === 'string' ? { broker: v['broker'], publish: auth } : {}) });
  if (v['json']) out(io, JSON.stringify({ targetName: r.targetName, rollout: r.rollout, targetsVersion: r.targetsVersion, published: r.published?.published.length ?? 0 }));
  else {
    const waveText = (r.rollout.waves ?? []).map((w) => `, ${w.percent}% from ${w.at}`).join('');
    out(io, `${release}: ${r.rollout.halted ? 'HALTED, ' : ''}${r.rollout.percent}% now${waveText}; signed targets v${r.targetsVersion}${r.published ? `; published ${r.published.published.length} files to ${v['broker'] as string}` : ''}`);
  }
  return 0;
}

async function watch(argv: string[], io: CommandIO, deps: FleetCommandDeps): Promise<number> {
  const p = parse(argv, {
    broker: { type: 'string' }, release: { type: 'string' }, json: { type: 'boolean' }, interval: { type: 'string' },
    'straggler-after': { type: 'string' }, 'halt-on-failure-rate': { type: 'string' }, 'min-devices': { type: 'string' },
    repo: { type: 'string' }, for: { type: 'string' }, 'exit-on-halt': { type: 'boolean' }, verbose: { type: 'boolean' }, ...TLS_OPTIONS,
  }, false);
  const v = p.values;
  const now = deps.now ?? Date.now;
  if (typeof v['broker'] !== 'string') throw usage('--broker URL is required');
  const release = typeof v['release'] === 'string' ? v['release'] : undefined;
  const json = v['json'] === true;
  const intervalMs = seconds(v['interval'], '--interval', 5) * 1000;
  const stragglerAfterMs = seconds(v['straggler-after'], '--straggler-after', 3600) * 1000;
  let halt;
  if (v['halt-on-failure-rate'] !== undefined) {
    if (release === undefined) throw usage('--halt-on-failure-rate needs --release TARGET');
    if (typeof v['repo'] !== 'string') throw usage('--halt-on-failure-rate needs --repo DIR (the repository to re-sign)');
    const policy = { failureRate: Number(v['halt-on-failure-rate']), minDevices: v['min-devices'] === undefined ? 10 : Number(v['min-devices']) };
    const problem = haltPolicyProblem(policy);
    if (problem) throw usage(problem);
    halt = { ...policy, repoDir: v['repo'] };
    await readRollout(halt.repoDir, release); // fail now, not at the halt, when the release is unknown
  } else if (v['min-devices'] !== undefined || v['repo'] !== undefined) throw usage('--min-devices and --repo go with --halt-on-failure-rate');
  const log = deps.log ?? pino({ level: v['verbose'] ? 'info' : 'warn', base: { tool: 'slotflip fleet' } }, pino.destination({ dest: 2, sync: true }));
  const auth = await brokerAuth(v);

  const print = (s: FleetSummary): void => out(io, json ? JSON.stringify({ type: 'summary', ...s }) : formatSummary(s));
  let stopNow: () => void = () => undefined;
  const stopped = new Promise<void>((resolve) => { stopNow = resolve; });
  const watcher = new FleetWatcher({
    brokerUrl: v['broker'], auth, stragglerAfterMs, now, log,
    ...(release !== undefined ? { release } : {}),
    ...(halt ? { halt } : {}),
    onHalt: (h) => {
      if (json) out(io, JSON.stringify({ type: 'halt', at: new Date(h.at).toISOString(), release: h.result.targetName, reason: h.decision.reason, stats: h.decision.stats, rollout: h.result.rollout, targetsVersion: h.result.targetsVersion }));
      else out(io, `HALTED rollout of ${h.result.targetName}: ${h.decision.reason}; signed targets v${h.result.targetsVersion} with halted=true and republished to ${v['broker'] as string}`);
      if (v['exit-on-halt']) stopNow();
    },
  });
  await watcher.start();
  const timer = setInterval(() => print(watcher.summary()), intervalMs);
  const forMs = v['for'] !== undefined ? seconds(v['for'], '--for', 1) * 1000 : undefined;
  const limit = forMs !== undefined ? setTimeout(stopNow, forMs) : undefined;
  try {
    await Promise.race([stopped, ...(deps.stopSignal ? [deps.stopSignal] : [])]);
  } finally {
    clearInterval(timer);
    if (limit) clearTimeout(limit);
    await watcher.stop();
  }
  print(watcher.summary());
  return watcher.halted ? 3 : 0;
}

const CHECK_HELP = [
  'usage: slotflip fleet check --broker URL --device ID [--device ID ...]',
  '',
  'Nudges devices: publishes a `check` command (QoS 1, not retained) to each device\'s',
  'slotflip/v2/devices/<id>/cmd/check (and the v1 topic, for devices not yet updated). The device',
  'refreshes its metadata (over HTTP as well as from the broker), checks for updates and publishes',
  'its state again: the way to reach devices on a cluster node that never saw a retained release.',
  '',
  'options:',
  '  --broker URL           broker (mqtt://, mqtts://)',
  '  --device ID            device id (repeatable)',
  TLS_HELP,
  '  -h, --help             this help',
].join('\n');

async function check(argv: string[], io: CommandIO): Promise<number> {
  const { values: v } = parse(argv, { broker: { type: 'string' }, device: { type: 'string', multiple: true }, ...TLS_OPTIONS }, false);
  if (typeof v['broker'] !== 'string') throw usage('fleet check needs --broker URL');
  const devices = (v['device'] as string[] | undefined) ?? [];
  if (devices.length === 0) throw usage('fleet check needs at least one --device ID');
  for (const d of devices) if (!isTopicLevel(d)) throw usage(`--device ${JSON.stringify(d)} is not a device id ([A-Za-z0-9._:-])`);
  const auth = await brokerAuth(v);
  let client;
  try {
    // MQTT 3.1.1: every broker speaks it, and a command needs nothing of MQTT 5
    client = await connectOrFail(v['broker'], { protocolVersion: 4, clean: true, connectTimeout: 10_000, ...auth });
  } catch (cause) {
    throw new SlotflipError('DAEMON_FLEET_CONNECT', `cannot connect to ${v['broker']}: check the URL and credentials`, { cause, retryable: true, details: { brokerUrl: v['broker'] } });
  }
  try {
    for (const d of devices) {
      for (const layout of ['v2', 'v1'] as const) await client.publishAsync(deviceTopics(d, layout).cmdCheck, 'check', { qos: 1 });
      out(io, `check sent to ${d} (${deviceTopics(d).cmdCheck})`);
    }
  } finally {
    await client.endAsync().catch(() => undefined);
  }
  return 0;
}

const RESET_HELP = [
  'usage: slotflip fleet factory-reset REPO --device ID [--mode full|keep-identity|as-shipped] [--valid-for DURATION]',
  '                                    [--no-reboot] (--broker URL [TLS options] | --out FILE) [--json]',
  '',
  'Sends ONE device a factory reset, signed with REPO\'s targets key (keys/targets.pem, encrypted or',
  'not, or keys/targets.signer.json): the device checks the signature against the targets keys of the',
  'root it trusts, that the command names its own id, that it has not expired (its trusted time) and',
  'that it never ran this command (nonce) before; then it resets as `slotflip factory-reset` does',
  '(the mode must be in its config\'s data.fleetResetModes, default full and keep-identity), reports',
  'FactoryResetRequested, reboots to apply it, and reports FactoryResetApplied after the reset boot.',
  'A refusal is reported as FleetCommandRejected with its code, and changes nothing on the device.',
  'Published retained (QoS 1) on slotflip/v2/devices/<id>/cmd/factory-reset, so a device that is',
  'offline now runs it when it connects, until it expires; the device then clears it.',
  '',
  'options:',
  '  --device ID            the device id (exactly one)',
  '  --mode M               full (default): keep the anti-rollback floor and trust anchors;',
  '                         keep-identity: also the config\'s data.identity paths;',
  '                         as-shipped: keep nothing (the device must permit it)',
  '  --valid-for D          how long the command may wait for the device: 30m, 2h, 7d (default 1d, at most 7d)',
  '  --no-reboot            leave the reset for the device\'s next reboot',
  '  --broker URL           publish it to this broker (mqtt://, mqtts://)',
  '  --out FILE             write the signed command to FILE instead (publish it yourself)',
  TLS_HELP,
  '  --json                 print the command\'s id, nonce, expiry and topic as JSON',
  '  -h, --help             this help',
].join('\n');

const DURATION = /^(\d+(?:\.\d+)?)(s|m|h|d)$/;

async function factoryReset(argv: string[], io: CommandIO, deps: FleetCommandDeps): Promise<number> {
  const p = parse(argv, {
    device: { type: 'string' }, mode: { type: 'string' }, 'valid-for': { type: 'string' }, 'no-reboot': { type: 'boolean' },
    broker: { type: 'string' }, out: { type: 'string' }, json: { type: 'boolean' }, ...TLS_OPTIONS,
  }, true);
  const v = p.values;
  if (p.positionals.length !== 1) throw usage('give exactly one repository directory: slotflip fleet factory-reset REPO --device ID --broker URL');
  const repo = p.positionals[0]!;
  const device = v['device'];
  if (typeof device !== 'string' || !isTopicLevel(device)) throw usage(`--device ID is required and must be a device id ([A-Za-z0-9._:-]), got ${JSON.stringify(device ?? null)}`);
  const mode = (v['mode'] as string | undefined) ?? 'full';
  if (!(RESET_MODE_NAMES as readonly string[]).includes(mode)) throw usage(`--mode ${JSON.stringify(mode)} is none of ${RESET_MODE_NAMES.join(', ')}`);
  const validText = (v['valid-for'] as string | undefined) ?? '1d';
  const m = DURATION.exec(validText);
  if (!m) throw usage(`--valid-for ${JSON.stringify(validText)}: give a duration such as 30m, 2h or 7d`);
  const validMs = Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 's' | 'm' | 'h' | 'd'];
  if (validMs > MAX_VALIDITY_MS) throw usage(`--valid-for ${validText} is longer than devices accept (7d)`);
  const broker = v['broker'];
  const outFile = v['out'];
  if ((typeof broker === 'string') === (typeof outFile === 'string')) throw usage('give exactly one of --broker URL and --out FILE');
  const { signResetCommand } = await import('../../manifests/command-publish.js');
  const { commandId } = await import('../../manifests/command.js');
  const envelope = await signResetCommand(repo, {
    deviceId: device, mode: mode as (typeof RESET_MODE_NAMES)[number], reboot: v['no-reboot'] !== true, validMs,
    ...(deps.now ? { now: deps.now } : {}),
    // encrypted key files: passphrase from $SLOTFLIP_KEY_PASSPHRASE (as `release add`); external signers get the environment
    keys: { ...(io.env['SLOTFLIP_KEY_PASSPHRASE'] ? { passphrase: io.env['SLOTFLIP_KEY_PASSPHRASE'] } : {}), env: io.env },
  });
  const bytes = JSON.stringify(envelope, null, 1) + '\n';
  const topic = deviceTopics(device).cmdFactoryReset;
  if (typeof outFile === 'string') {
    const { writeFileAtomic } = await import('../../hal/atomic-file.js');
    await writeFileAtomic(outFile, bytes);
  } else {
    const auth = await brokerAuth(v);
    let client;
    try {
      client = await connectOrFail(broker as string, { protocolVersion: 4, clean: true, connectTimeout: 10_000, ...auth });
    } catch (cause) {
      throw new SlotflipError('DAEMON_FLEET_CONNECT', `cannot connect to ${broker as string}: check the URL and credentials`, { cause, retryable: true, details: { brokerUrl: broker } });
    }
    try {
      await client.publishAsync(topic, bytes, { qos: 1, retain: true });
    } finally {
      await client.endAsync().catch(() => undefined);
    }
  }
  const s = envelope.signed;
  const summary = { commandId: commandId(s), deviceId: s.deviceId, mode: s.mode, reboot: s.reboot, nonce: s.nonce, issued: s.issued, expires: s.expires, ...(typeof outFile === 'string' ? { out: outFile } : { topic, broker }) };
  out(io, v['json'] ? JSON.stringify(summary) : `factory reset (${s.mode}${s.reboot ? '' : ', no reboot'}) for ${s.deviceId} signed (command ${summary.commandId}, valid until ${s.expires}); ${typeof outFile === 'string' ? `written to ${outFile}` : `published retained on ${topic}`}`);
  return 0;
}

/** Runs `fleet <sub> ...` with injectable clock, stop signal and logger (tests). */
export async function runFleet(argv: string[], io: CommandIO, deps: FleetCommandDeps = {}): Promise<number> {
  const [sub, ...rest] = argv;
  const help = rest.includes('--help') || rest.includes('-h');
  if (sub === 'rollout' || sub === 'watch') {
    if (help) {
      out(io, sub === 'rollout' ? ROLLOUT_HELP : WATCH_HELP);
      return 0;
    }
    return sub === 'rollout' ? rollout(rest, io, deps) : watch(rest, io, deps);
  }
  if (sub === 'check') {
    if (help) {
      out(io, CHECK_HELP);
      return 0;
    }
    return check(rest, io);
  }
  if (sub === 'factory-reset') {
    if (help) {
      out(io, RESET_HELP);
      return 0;
    }
    return factoryReset(rest, io, deps);
  }
  throw usage(`unknown fleet subcommand ${sub === undefined ? '(none)' : JSON.stringify(sub)}: use rollout, watch, check or factory-reset`);
}

export const command: Command = {
  help: ['usage: slotflip fleet rollout|watch|check|factory-reset ...', '', ROLLOUT_HELP, '', WATCH_HELP, '', CHECK_HELP, '', RESET_HELP].join('\n'),
  async run(argv, io) {
    const stopSignal = new Promise<void>((resolve) => {
      process.once('SIGINT', () => resolve());
      process.once('SIGTERM', () => resolve());
    });
    return runFleet(argv, io, { stopSignal });
  },
};

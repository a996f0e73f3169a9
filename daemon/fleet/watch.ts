/**
 * The fleet's live view, folded from what devices publish on the broker: retained `state` and
 * `online` flags, and at-least-once `events` (dropped when their `seq` was already seen). Pure: no
 * I/O, no clock of its own (`now` is an argument), no logger. The MQTT part lives in watcher.ts.
 *
 * Trade-off: the view is updated IN PLACE (`foldMessage` mutates and returns the view it was given).
 * A fleet of thousands sends thousands of messages; copying the device map per message would cost
 * O(devices) each time for nothing, since only the watcher owns the view.
 *
 * Failure accounting follows what AWS IoT Jobs' abort config and hawkBit's rollout error thresholds
 * do: the denominator is the number of devices that ATTEMPTED the release (any event or state naming
 * it), the numerator those whose attempt rolled back or failed and did not later succeed. A halt is
 * due when `failed / attempted >= failureRate` and `attempted >= minDevices` (so two early failures in
 * a fleet of thousands do not stop a rollout on their own).
 *
 * Device faults are not release failures: an attempt that failed with a code in DEVICE_FAULT_CODES
 * (daemon/machine.ts; e.g. DAEMON_BOOTLOADER_IGNORED_ENV — the device's bootloader never read the
 * trial, so the release never ran) is counted as `deviceFaults`, listed apart, and left out of both
 * the numerator and the denominator of the failure rate: a misconfigured board must not halt a
 * rollout, and says nothing about the release either way.
 *
 * Device state payloads are read tolerantly (the daemon's `AgentStatus` plus `at`; its `lastResult`
 * through topics.ts `readLastResult`, the one definition the daemon writes with, which also reads the
 * flat `inventory.lastResult` older daemons published): unknown fields are ignored, a payload that is
 * not a JSON object counts as malformed, never throws. A watcher started after the devices reported
 * learns their outcomes, device faults included, from the retained state alone.
 */
import { TOPIC_ROOT, TOPIC_ROOT_V1, deviceIdOfLevel, readLastResult } from '../topics.js';
import { DEVICE_FAULT_CODES } from '../machine.js';

export type AttemptOutcome = 'started' | 'installed' | 'succeeded' | 'rolledBack' | 'failed';

const TERMINAL: ReadonlySet<AttemptOutcome> = new Set(['succeeded', 'rolledBack', 'failed']);

/** Event `type` (daemon/agent.ts REPORT_TYPES) → what it says about the attempt. */
const EVENT_OUTCOME: Record<string, AttemptOutcome> = {
  UpdateStarted: 'started',
  DownloadInterrupted: 'started',
  UpdateInstalled: 'installed',
  RebootStarted: 'installed',
  UpdateCommitted: 'succeeded',
  UpdateRolledBack: 'rolledBack',
  UpdateFailed: 'failed',
};

export interface DeviceAttempt {
  /** `targetName@sha256-prefix` as the device reports it. */
  releaseId: string;
  targetName: string;
  version?: string;
  outcome: AttemptOutcome;
  /** true once any attempt at this release rolled back or failed for a reason that is not a device
   * fault (stays true unless it later succeeds). */
  everFailed: boolean;
  /** true when the last failure was a device fault (DEVICE_FAULT_CODES) and no release failure or
   * success came since: the device's configuration, not the release, is at fault. */
  deviceFault?: boolean;
  /** `CODE: message` of the last failure. */
  reason?: string;
  /** names of failed health checks of the last failure. */
  failedChecks?: string[];
  /** names of failed `required: false` checks of a boot that passed (succeeded with warnings). */
  warnedChecks?: string[];
  at: number;
}

export interface DeviceView {
  deviceId: string;
  /** undefined until an `online` message was seen. */
  online?: boolean;
  phase?: string;
  /** version running on the booted slot, as the device last said. */
  version?: string;
  /** ms since epoch of the last message from (or about) this device. */
  lastSeen: number;
  /** highest event seq seen; events at or below it are duplicates. */
  lastSeq: number;
  /** per release target name: what is known of this device's attempt. */
  releases: Record<string, DeviceAttempt>;
  /** true once a `state` message (retained or live) was seen: a device known only from its events
   * is on a broker that did not deliver its retained state (a cluster node that keeps retained
   * messages to itself, RabbitMQ's wildcard subscriptions), not a missing device. */
  stateSeen?: boolean;
}

export interface FleetView {
  devices: Map<string, DeviceView>;
  /** messages folded (duplicates and malformed ones included). */
  messages: number;
  duplicates: number;
  malformed: number;
}

export interface FleetMessage {
  topic: string;
  payload: Uint8Array | string;
  /** true for a retained message delivered at subscription time (its receipt time says nothing). */
  retained?: boolean;
}

export function emptyView(): FleetView {
  return { devices: new Map(), messages: 0, duplicates: 0, malformed: 0 };
}

const DEVICE_PREFIX = `${TOPIC_ROOT}/devices/`;
const DEVICE_PREFIX_V1 = `${TOPIC_ROOT_V1}/devices/`;

/** `{ deviceId, leaf }` for `slotflip/v2/devices/<level>/<leaf>` (or a v1 device topic, from
 * devices not yet updated), else undefined. */
export function parseDeviceTopic(topic: string): { deviceId: string; leaf: string } | undefined {
  const v2 = topic.startsWith(DEVICE_PREFIX);
  if (!v2 && !topic.startsWith(DEVICE_PREFIX_V1)) return undefined;
  const rest = topic.slice((v2 ? DEVICE_PREFIX : DEVICE_PREFIX_V1).length).split('/');
  if (rest.length !== 2 || !rest[0] || !rest[1]) return undefined;
  return { deviceId: v2 ? deviceIdOfLevel(rest[0]) : rest[0], leaf: rest[1] };
}

/** The release target name in a release id (`targetName@sha-prefix`). */
export function targetOf(releaseId: string): string {
  const at = releaseId.lastIndexOf('@');
  return at > 0 ? releaseId.slice(0, at) : releaseId;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown): string | undefined => (typeof v === 'string' && v.length > 0 ? v : undefined);
const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);

function timeOf(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (typeof v === 'string') {
    const t = Date.parse(v);
    return Number.isFinite(t) ? t : undefined;
  }
  return undefined;
}

function reasonCode(v: unknown): string | undefined {
  return isObj(v) ? str(v['code']) : undefined;
}

function reasonText(v: unknown): string | undefined {
  if (!isObj(v)) return str(v);
  const code = str(v['code']);
  const message = str(v['message']);
  return code && message ? `${code}: ${message}` : (code ?? message);
}

function checkNames(v: unknown): string[] | undefined {
  if (!Array.isArray(v)) return undefined;
  const names = v.filter(isObj).map((f) => str(f['name'])).filter((n): n is string => n !== undefined);
  return names.length > 0 ? names : undefined;
}

function device(view: FleetView, deviceId: string, at: number): DeviceView {
  let d = view.devices.get(deviceId);
  if (!d) {
    d = { deviceId, lastSeen: at, lastSeq: 0, releases: {} };
    view.devices.set(deviceId, d);
  }
  return d;
}

/** Records `outcome` for `releaseId` on `d`. A terminal outcome is not replaced by an older
 * non-terminal one (a retained state can lag behind the events). */
function record(d: DeviceView, releaseId: string, outcome: AttemptOutcome, at: number, extra: { version?: string; reason?: string; reasonCode?: string; failedChecks?: string[]; warnedChecks?: string[]; authoritative: boolean }): void {
  const targetName = targetOf(releaseId);
  const prev = d.releases[targetName];
  if (prev && !extra.authoritative) {
    // state-derived facts only fill gaps: never regress what events said
    if (TERMINAL.has(prev.outcome) && prev.at >= at) return;
    if (prev.outcome === outcome) return;
    if (!TERMINAL.has(outcome) && prev.releaseId === releaseId && TERMINAL.has(prev.outcome)) return;
  }
  const failed = outcome === 'rolledBack' || outcome === 'failed';
  const fault = failed && extra.reasonCode !== undefined && DEVICE_FAULT_CODES.includes(extra.reasonCode);
  const sameRelease = prev?.releaseId === releaseId;
  const next: DeviceAttempt = {
    releaseId,
    targetName,
    outcome,
    everFailed: (failed && !fault) || (sameRelease && outcome !== 'succeeded' && (prev?.everFailed ?? false)),
    at,
  };
  if (fault || (!failed && sameRelease && outcome !== 'succeeded' && prev?.deviceFault)) next.deviceFault = true;
  const version = extra.version ?? (sameRelease ? prev?.version : undefined);
  if (version !== undefined) next.version = version;
  const reason = failed ? extra.reason : sameRelease && outcome !== 'succeeded' ? prev?.reason : undefined;
  if (reason !== undefined) next.reason = reason;
  const checks = failed ? extra.failedChecks : sameRelease && outcome !== 'succeeded' ? prev?.failedChecks : undefined;
  if (checks !== undefined) next.failedChecks = checks;
  if (outcome === 'succeeded' && extra.warnedChecks) next.warnedChecks = extra.warnedChecks;
  d.releases[targetName] = next;
}

function foldEvent(view: FleetView, d: DeviceView, ev: Obj, at: number): void {
  const seq = num(ev['seq']);
  if (seq !== undefined) {
    if (seq <= d.lastSeq) {
      view.duplicates++;
      return;
    }
    d.lastSeq = seq;
  }
  const type = str(ev['type']);
  const releaseId = str(ev['releaseId']);
  const outcome = type ? EVENT_OUTCOME[type] : undefined;
  if (!outcome || !releaseId) return;
  const when = timeOf(ev['at']) ?? at;
  const version = str(ev['version']);
  const reason = reasonText(ev['reason']);
  const code = reasonCode(ev['reason']);
  const failedChecks = checkNames(ev['failures']);
  const warnedChecks = checkNames(ev['warnings']);
  record(d, releaseId, outcome, when, { authoritative: true, ...(version ? { version } : {}), ...(reason ? { reason } : {}), ...(code ? { reasonCode: code } : {}), ...(failedChecks ? { failedChecks } : {}), ...(warnedChecks ? { warnedChecks } : {}) });
  if (outcome === 'succeeded' && version) d.version = version;
}

function foldState(d: DeviceView, s: Obj, at: number): void {
  const phase = str(s['phase']);
  if (phase) d.phase = phase;
  let version = str(s['version']);
  if (!version && Array.isArray(s['slots'])) {
    const booted = s['slots'].filter(isObj).find((x) => x['booted'] === true);
    const rel = booted && isObj(booted['release']) ? booted['release'] : undefined;
    version = rel ? str(rel['version']) : undefined;
  }
  if (version) d.version = version;
  // the current shape, else the flat one an older daemon left retained inside `inventory`
  const inv = s['inventory'];
  const last = readLastResult(s['lastResult']) ?? (isObj(inv) ? readLastResult(inv['lastResult']) : undefined);
  if (last) {
    record(d, last.releaseId, last.outcome, last.at ?? at, {
      authoritative: false,
      ...(last.version ? { version: last.version } : {}), ...(last.reasonText ? { reason: last.reasonText } : {}), ...(last.reasonCode ? { reasonCode: last.reasonCode } : {}),
      ...(last.failedChecks ? { failedChecks: last.failedChecks } : {}), ...(last.warnedChecks ? { warnedChecks: last.warnedChecks } : {}),
    });
  }
  const attempt = s['attempt'];
  if (isObj(attempt)) {
    const id = str(attempt['releaseId']);
    const v = str(attempt['version']);
    if (id) record(d, id, 'started', timeOf(attempt['startedAt']) ?? at, { authoritative: false, ...(v ? { version: v } : {}) });
  }
}

/**
 * Folds one broker message into `view` (in place) and returns it. Messages on other topics are
 * ignored; a payload that does not parse counts as malformed. Never throws.
 */
export function foldMessage(view: FleetView, msg: FleetMessage, now: number): FleetView {
  const where = parseDeviceTopic(msg.topic);
  if (!where) return view;
  view.messages++;
  const text = typeof msg.payload === 'string' ? msg.payload : Buffer.from(msg.payload.buffer, msg.payload.byteOffset, msg.payload.byteLength).toString('utf8');
  if (where.leaf === 'online') {
    if (text.length === 0) return view; // a cleared retained flag
    const d = device(view, where.deviceId, now);
    d.online = text === 'online';
    if (!msg.retained) d.lastSeen = Math.max(d.lastSeen, now);
    return view;
  }
  if (where.leaf !== 'state' && where.leaf !== 'events') return view;
  if (text.length === 0) return view;
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    view.malformed++;
    return view;
  }
  if (!isObj(body)) {
    view.malformed++;
    return view;
  }
  const stamped = timeOf(body['at']);
  // a retained message's receipt time says nothing about when the device spoke
  const seen = msg.retained ? (stamped ?? 0) : now;
  const d = device(view, where.deviceId, seen);
  d.lastSeen = Math.max(d.lastSeen, seen);
  if (where.leaf === 'events') foldEvent(view, d, body, stamped ?? now);
  else {
    d.stateSeen = true;
    foldState(d, body, stamped ?? now);
  }
  return view;
}

// ---------------------------------------------------------------------------------------------

export interface ReleaseStats {
  targetName: string;
  /** devices that attempted it (any event or state naming it). */
  attempted: number;
  /** attempted, not finished yet (started or installed, never failed). */
  inProgress: number;
  succeeded: number;
  /** rolled back or failed, and not succeeded since. */
  failed: number;
  /** failed / (attempted - deviceFaults) (0 when none judged). */
  failureRate: number;
  /** attempts that ended in a device fault (DEVICE_FAULT_CODES): neither failed nor in progress, and
   * left out of failureRate and of the halt's minimum. Present only when > 0. */
  deviceFaults?: number;
  /** succeeded, but with failed `required: false` checks (warnings). Present only when > 0. */
  withWarnings?: number;
}

export interface FailureEntry {
  deviceId: string;
  releaseId: string;
  outcome: AttemptOutcome;
  reason?: string;
  failedChecks?: string[];
  at: number;
}

export interface Straggler {
  deviceId: string;
  lastSeen: number;
  silentMs: number;
  online?: boolean;
  version?: string;
}

export interface FleetSummary {
  at: number;
  devices: number;
  online: number;
  offline: number;
  /** devices per running version (`unknown` when not reported). */
  versions: Record<string, number>;
  /** devices per update phase (`unknown` when not reported). */
  phases: Record<string, number>;
  /** stats of the watched release (when one is named). */
  release?: ReleaseStats;
  /** failed attempts (of the watched release, or of any release), newest first, capped. */
  failures: FailureEntry[];
  failuresTotal: number;
  /** attempts that failed for a device fault (not counted against the release), newest first,
   * capped. Present only when there are any. */
  deviceFaults?: FailureEntry[];
  deviceFaultsTotal?: number;
  /** devices silent for longer than the straggler threshold, or offline; oldest first, capped. */
  stragglers: Straggler[];
  stragglersTotal: number;
  /** devices heard from (events, online flag) whose state never arrived: the broker did not deliver
   * the retained state (see DeviceView.stateSeen); capped. Present only when there are any. */
  withoutState?: string[];
  withoutStateTotal?: number;
  messages: number;
  duplicates: number;
  malformed: number;
}

export interface SummaryOptions {
  /** target name of the release being rolled out. */
  release?: string;
  /** a device silent this long is a straggler (ms). */
  stragglerAfterMs: number;
  /** entries listed in `failures` / `stragglers` (default 20). */
  maxListed?: number;
}

const isDeviceFault = (a: DeviceAttempt): boolean => a.deviceFault === true && !a.everFailed && a.outcome !== 'succeeded';
const isFailed = (a: DeviceAttempt): boolean => !isDeviceFault(a) && (a.outcome === 'rolledBack' || a.outcome === 'failed' || (a.everFailed && a.outcome !== 'succeeded'));

/** Counts for one release over the view. Pure. */
export function releaseStats(view: FleetView, targetName: string): ReleaseStats {
  let attempted = 0;
  let succeeded = 0;
  let failed = 0;
  let faults = 0;
  let warned = 0;
  for (const d of view.devices.values()) {
    const a = d.releases[targetName];
    if (!a) continue;
    attempted++;
    if (isDeviceFault(a)) faults++;
    else if (isFailed(a)) failed++;
    else if (a.outcome === 'succeeded') {
      succeeded++;
      if (a.warnedChecks) warned++;
    }
  }
  const judged = attempted - faults;
  return {
    targetName, attempted, inProgress: judged - succeeded - failed, succeeded, failed, failureRate: judged === 0 ? 0 : failed / judged,
    ...(faults > 0 ? { deviceFaults: faults } : {}),
    ...(warned > 0 ? { withWarnings: warned } : {}),
  };
}

/** The view at `now`, summarised. Pure. */
export function summarize(view: FleetView, now: number, opts: SummaryOptions): FleetSummary {
  const max = opts.maxListed ?? 20;
  const versions: Record<string, number> = {};
  const phases: Record<string, number> = {};
  const failures: FailureEntry[] = [];
  const faults: FailureEntry[] = [];
  const stragglers: Straggler[] = [];
  const withoutState: string[] = [];
  let online = 0;
  let offline = 0;
  for (const d of view.devices.values()) {
    if (d.online === true) online++;
    else if (d.online === false) offline++;
    const v = d.version ?? 'unknown';
    versions[v] = (versions[v] ?? 0) + 1;
    if (!d.stateSeen) withoutState.push(d.deviceId);
    const p = d.phase ?? (d.stateSeen ? 'unknown' : 'no-state');
    phases[p] = (phases[p] ?? 0) + 1;
    for (const a of Object.values(d.releases)) {
      if (opts.release !== undefined && a.targetName !== opts.release) continue;
      const fault = isDeviceFault(a);
      if (!fault && !isFailed(a)) continue;
      (fault ? faults : failures).push({ deviceId: d.deviceId, releaseId: a.releaseId, outcome: a.outcome, at: a.at, ...(a.reason ? { reason: a.reason } : {}), ...(a.failedChecks ? { failedChecks: a.failedChecks } : {}) });
    }
    const silentMs = now - d.lastSeen;
    if (d.online === false || silentMs >= opts.stragglerAfterMs) {
      stragglers.push({ deviceId: d.deviceId, lastSeen: d.lastSeen, silentMs, ...(d.online !== undefined ? { online: d.online } : {}), ...(d.version ? { version: d.version } : {}) });
    }
  }
  failures.sort((a, b) => b.at - a.at || (a.deviceId < b.deviceId ? -1 : 1));
  faults.sort((a, b) => b.at - a.at || (a.deviceId < b.deviceId ? -1 : 1));
  stragglers.sort((a, b) => a.lastSeen - b.lastSeen || (a.deviceId < b.deviceId ? -1 : 1));
  return {
    at: now,
    devices: view.devices.size,
    online,
    offline,
    versions,
    phases,
    ...(opts.release !== undefined ? { release: releaseStats(view, opts.release) } : {}),
    failures: failures.slice(0, max),
    failuresTotal: failures.length,
    ...(faults.length > 0 ? { deviceFaults: faults.slice(0, max), deviceFaultsTotal: faults.length } : {}),
    stragglers: stragglers.slice(0, max),
    stragglersTotal: stragglers.length,
    ...(withoutState.length > 0 ? { withoutState: withoutState.sort().slice(0, max), withoutStateTotal: withoutState.length } : {}),
    messages: view.messages,
    duplicates: view.duplicates,
    malformed: view.malformed,
  };
}

// ---------------------------------------------------------------------------------------------

export interface HaltPolicy {
  /** 0 < failureRate <= 1: halt when failed / attempted reaches it. */
  failureRate: number;
  /** at least this many devices must have attempted the release before a halt can trigger (>= 1). */
  minDevices: number;
}

export type HaltDecision =
  | { halt: true; reason: string; stats: ReleaseStats }
  | { halt: false; reason: string; stats: ReleaseStats };

/** Whether the rollout of `stats.targetName` must be halted now. Pure. */
export function decideHalt(stats: ReleaseStats, policy: HaltPolicy): HaltDecision {
  const pct = (x: number): string => `${Math.round(x * 1000) / 10}%`;
  // device faults say nothing about the release: they count neither as failures nor as attempts
  const faults = stats.deviceFaults ?? 0;
  const judged = stats.attempted - faults;
  const aside = faults > 0 ? ` (${faults} device fault${faults === 1 ? '' : 's'} not counted)` : '';
  if (judged < policy.minDevices) {
    return { halt: false, reason: `${judged} of the ${policy.minDevices} attempts needed before judging${aside}`, stats };
  }
  if (stats.failed > 0 && stats.failureRate >= policy.failureRate) {
    return { halt: true, reason: `${stats.failed} of ${judged} devices failed ${stats.targetName} (${pct(stats.failureRate)} >= ${pct(policy.failureRate)})${aside}`, stats };
  }
  return { halt: false, reason: `failure rate ${pct(stats.failureRate)} below ${pct(policy.failureRate)}${aside}`, stats };
}

/** Checks a halt policy's numbers; returns a problem description or undefined. Pure. */
export function haltPolicyProblem(p: HaltPolicy): string | undefined {
  if (!(p.failureRate > 0 && p.failureRate <= 1)) return `--halt-on-failure-rate must be in (0, 1], got ${p.failureRate}`;
  if (!Number.isSafeInteger(p.minDevices) || p.minDevices < 1) return `--min-devices must be a whole number >= 1, got ${p.minDevices}`;
  return undefined;
}

// ---------------------------------------------------------------------------------------------

function counts(r: Record<string, number>): string {
  const e = Object.entries(r).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  return e.length === 0 ? '-' : e.map(([k, n]) => `${k}=${n}`).join('  ');
}

function ago(ms: number): string {
  if (ms < 0 || !Number.isFinite(ms)) return '?';
  if (ms < 120_000) return `${Math.round(ms / 1000)}s`;
  if (ms < 7_200_000) return `${Math.round(ms / 60_000)}m`;
  return `${Math.round(ms / 3_600_000)}h`;
}

/** The compact human table `fleet watch` prints. Pure. */
export function formatSummary(s: FleetSummary): string {
  const lines = [
    `${new Date(s.at).toISOString()}  devices ${s.devices} (online ${s.online}, offline ${s.offline})  messages ${s.messages}`,
    `  versions: ${counts(s.versions)}`,
    `  phases:   ${counts(s.phases)}`,
  ];
  if (s.release) {
    const r = s.release;
    lines.push(`  release ${r.targetName}: attempted ${r.attempted}, in progress ${r.inProgress}, succeeded ${r.succeeded}, failed ${r.failed} (${Math.round(r.failureRate * 1000) / 10}%)${r.deviceFaults ? `, device faults ${r.deviceFaults} (not counted)` : ''}${r.withWarnings ? `, ${r.withWarnings} succeeded with warnings` : ''}`);
  }
  if (s.failuresTotal > 0) {
    lines.push(`  failures (${s.failuresTotal}):`);
    for (const f of s.failures) lines.push(`    ${f.deviceId}  ${f.outcome}  ${f.releaseId}${f.reason ? `  ${f.reason}` : ''}${f.failedChecks ? `  [checks: ${f.failedChecks.join(', ')}]` : ''}`);
  }
  if (s.deviceFaults && s.deviceFaultsTotal) {
    lines.push(`  device faults (${s.deviceFaultsTotal}, the device's configuration, not counted against the release):`);
    for (const f of s.deviceFaults) lines.push(`    ${f.deviceId}  ${f.outcome}  ${f.releaseId}${f.reason ? `  ${f.reason}` : ''}`);
  }
  if (s.withoutState && s.withoutStateTotal) {
    lines.push(`  seen without retained state (${s.withoutStateTotal}): events or online flags arrived, the retained state did not (a clustered broker keeps retained messages on the node that received them; RabbitMQ sends none to wildcard subscriptions). Not missing: \`slotflip fleet check --device ID\` makes a device publish its state again`);
    for (const id of s.withoutState) lines.push(`    ${id}`);
  }
  if (s.stragglersTotal > 0) {
    lines.push(`  stragglers (${s.stragglersTotal}):`);
    for (const g of s.stragglers) lines.push(`    ${g.deviceId}  silent ${ago(g.silentMs)}${g.online === false ? '  offline' : ''}${g.version ? `  on ${g.version}` : ''}`);
  }
  return lines.join('\n');
}

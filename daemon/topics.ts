/**
 * MQTT topic layout, version 2. Everything lives under `slotflip/v2/`; every topic level is
 * `[A-Za-z0-9_-]` (RabbitMQ turns `.` into a level separator), and everything a device writes is under
 * its own subtree so a broker ACL such as Mosquitto's `pattern readwrite slotflip/v2/devices/%u/#`
 * confines each device (certificate CN = device id) to itself.
 *
 * <!-- README: MQTT topics -->
 * | topic | direction | QoS | retained | payload |
 * | --- | --- | --- | --- | --- |
 * | `slotflip/v2/meta/<level>` | fleet → devices | 1 | yes | a TUF metadata file verbatim: `timestamp` = `timestamp.json`, `<N>_root` = `<N>.root.json`, `<N>_snapshot`, `<N>_targets`; an empty retained message deletes it. A fast path only: devices fetch whatever is missing, stale or broken over HTTP |
 * | `slotflip/v2/devices/<id>/online` | device → fleet | 1 | yes | `online`; the broker publishes the last will `offline` when the device vanishes, the device publishes `offline` on a clean stop |
 * | `slotflip/v2/devices/<id>/state` | device → fleet | 1 | yes | JSON: `at` (ISO 8601, when published, as in events), current phase, slots and versions, `lastResult` (see `StateLastResult`), `broker` (protocol in use, metadata problems), inventory |
 * | `slotflip/v2/devices/<id>/events` | device → fleet | 1 | no | JSON `{ "seq": N, "deviceId": "<id>", "type": "...", ... }`; delivered at least once and in `seq` order from a persisted outbox: consumers drop duplicates by `seq` |
 * | `slotflip/v2/devices/<id>/cmd/check` | fleet → device | 1 | no | any payload: refresh metadata (over HTTP too) and check for updates now |
 * | `slotflip/v2/devices/<id>/cmd/factory-reset` | fleet → device | 1 | yes | a signed factory-reset command for this device (manifests/command.ts, `slotflip fleet factory-reset`); retained so a device offline now finds it when it connects, until it expires; the device clears it (empty retained message) once it has run it |
 *
 * `<id>` is the device id with every character outside `[A-Za-z0-9_-]` written `_xx` (its hex
 * code): `gw.7` → `gw_2e7`. Layout v1 (`slotflip/v1/meta/<file.json>`, `slotflip/v1/devices/<id>/...`)
 * is still read (meta by devices, after v2; device topics by `fleet watch`) and written by
 * `repo publish --layouts v1,v2` during a transition.
 * <!-- /README -->
 */
import { META_PREFIXES, metaFileOfTopic, type MetaLayout } from '../manifests/meta-topics.js';

import { metaTopic as metaTopicOf } from '../manifests/meta-topics.js';

export { META_PREFIXES, MAX_MESSAGE_BYTES, metaLevel, metaFileOfLevel, metaFileOfTopic, type MetaLayout } from '../manifests/meta-topics.js';

/** The topic of a metadata file (v2 by default); throws RangeError when the file has none. */
export function metaTopic(file: string, layout: MetaLayout = 'v2'): string {
  const t = metaTopicOf(file, layout);
  if (t === undefined) throw new RangeError(`metadata file name "${file}" has no ${layout} topic level`);
  return t;
}

export const TOPIC_ROOT = 'slotflip/v2';
export const TOPIC_ROOT_V1 = 'slotflip/v1';

const V1_LEVEL = /^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}$/;

/** True when `s` is a device id that has topic levels (config's id pattern). */
export function isTopicLevel(s: string): boolean {
  return V1_LEVEL.test(s) && s !== '.' && !s.includes('..');
}

/** The v2 topic level of a device id: characters outside `[A-Za-z0-9_-]` become `_xx` (hex). */
export function deviceLevel(deviceId: string): string {
  return deviceId.replace(/[^A-Za-z0-9_-]/g, (c) => `_${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** The device id a v2 device level stands for (inverse of deviceLevel for ids in the config's pattern). */
export function deviceIdOfLevel(level: string): string {
  return level.replace(/_(2e|3a)/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}

export const META_PREFIX = META_PREFIXES.v2;
/** subscription filters for metadata, v2 first: the wildcard, and `timestamp` exactly (RabbitMQ
 * before 3.13 sends retained messages only to subscriptions without wildcards), then v1. */
export const META_FILTERS: readonly string[] = [`${META_PREFIXES.v2}+`, `${META_PREFIXES.v2}timestamp`, `${META_PREFIXES.v1}+`];
/** the v2 wildcard filter. */
export const META_FILTER = `${META_PREFIXES.v2}+`;

/** The metadata file name a topic carries (either layout), or undefined. */
export function metaFileOf(topic: string): string | undefined {
  return metaFileOfTopic(topic)?.file;
}

export function metaLayoutOf(topic: string): MetaLayout | undefined {
  return metaFileOfTopic(topic)?.layout;
}

export interface DeviceTopics {
  root: string;
  online: string;
  state: string;
  events: string;
  cmdCheck: string;
  /** the signed factory-reset command (retained). */
  cmdFactoryReset: string;
  /** subscription filter for every command. */
  cmdFilter: string;
}

export function deviceTopics(deviceId: string, layout: MetaLayout = 'v2'): DeviceTopics {
  if (!isTopicLevel(deviceId)) throw new RangeError(`device id "${deviceId}" is not a single safe topic level`);
  const root = layout === 'v2' ? `${TOPIC_ROOT}/devices/${deviceLevel(deviceId)}` : `${TOPIC_ROOT_V1}/devices/${deviceId}`;
  return { root, online: `${root}/online`, state: `${root}/state`, events: `${root}/events`, cmdCheck: `${root}/cmd/check`, cmdFactoryReset: `${root}/cmd/factory-reset`, cmdFilter: `${root}/cmd/+` };
}

/** The command name of a topic under this device's `cmd/`, or undefined. */
export function commandOf(topics: DeviceTopics, topic: string): string | undefined {
  const prefix = `${topics.root}/cmd/`;
  return topic.startsWith(prefix) ? topic.slice(prefix.length) : undefined;
}

// ---------------------------------------------------------------------------------------------
// The retained state's `lastResult`: written by the daemon (service.ts), read by `fleet watch`
// (fleet/watch.ts). Defined once here so the two cannot drift apart again.

/** What the device says about its last finished attempt, in the retained `state` message. The same
 * names as the events (daemon/agent.ts) and the history (`slotflip history --json`). */
export interface StateLastResult {
  attempt: number;
  outcome: 'succeeded' | 'rolledBack' | 'failed';
  release: { id: string; targetName: string; version: string; securityVersion: number };
  source: string;
  target: string;
  startedAt: number;
  endedAt: number;
  reason?: { code: string; message: string };
  /** failed health checks of a rolled-back boot (output capped by the health runner). */
  failures?: Array<{ name: string; output: string; required?: boolean }>;
  /** failed `required: false` checks of a boot that passed. */
  warnings?: Array<{ name: string; output: string }>;
}

/** A last result as a reader needs it, whichever shape it arrived in. */
export interface LastResultFacts {
  releaseId: string;
  outcome: StateLastResult['outcome'];
  version?: string;
  /** ms since epoch the attempt ended, when known. */
  at?: number;
  reasonCode?: string;
  /** `CODE: message` (or what is known of it). */
  reasonText?: string;
  failedChecks?: string[];
  warnedChecks?: string[];
}

/** The history entry a device publishes as its retained `lastResult`: only the wire fields. Pure. */
export function stateLastResult(h: StateLastResult): StateLastResult {
  return {
    attempt: h.attempt,
    outcome: h.outcome,
    release: { id: h.release.id, targetName: h.release.targetName, version: h.release.version, securityVersion: h.release.securityVersion },
    source: h.source,
    target: h.target,
    startedAt: h.startedAt,
    endedAt: h.endedAt,
    ...(h.reason ? { reason: { code: h.reason.code, message: h.reason.message } } : {}),
    ...(h.failures && h.failures.length > 0 ? { failures: h.failures.map((f) => ({ name: f.name, output: f.output, ...(f.required !== undefined ? { required: f.required } : {}) })) } : {}),
    ...(h.warnings && h.warnings.length > 0 ? { warnings: h.warnings.map((w) => ({ name: w.name, output: w.output })) } : {}),
  };
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown): string | undefined => (typeof v === 'string' && v.length > 0 ? v : undefined);

function time(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  const s = str(v);
  if (s === undefined) return undefined;
  const t = Date.parse(s);
  return Number.isFinite(t) ? t : undefined;
}

function names(v: unknown): string[] | undefined {
  if (!Array.isArray(v)) return undefined;
  const n = v.filter(isObj).map((f) => str(f['name'])).filter((x): x is string => x !== undefined);
  return n.length > 0 ? n : undefined;
}

/** Outcome names of the flat shape daemons before this one put in `inventory.lastResult`. */
const LEGACY_OUTCOMES: Readonly<Record<string, StateLastResult['outcome']>> = { committed: 'succeeded', 'rolled-back': 'rolledBack', failed: 'failed' };

/**
 * Reads a retained `lastResult` tolerantly: the current `StateLastResult`, or the flat shape older
 * daemons published inside `inventory` (`{ outcome: 'committed' | 'rolled-back' | 'failed' | 'none',
 * releaseId, version, code, atMs }`), which may still sit retained on a broker. Undefined for
 * anything else (including `outcome: 'none'`). Unknown fields are ignored. Pure, never throws.
 */
export function readLastResult(v: unknown): LastResultFacts | undefined {
  if (!isObj(v)) return undefined;
  const outcome = str(v['outcome']);
  if (isObj(v['release'])) {
    const releaseId = str(v['release']['id']);
    if (!releaseId || (outcome !== 'succeeded' && outcome !== 'rolledBack' && outcome !== 'failed')) return undefined;
    const version = str(v['release']['version']);
    const at = time(v['endedAt']);
    const reason = v['reason'];
    const code = isObj(reason) ? str(reason['code']) : undefined;
    const message = isObj(reason) ? str(reason['message']) : str(reason);
    const text = code && message ? `${code}: ${message}` : (code ?? message);
    const failedChecks = names(v['failures']);
    const warnedChecks = names(v['warnings']);
    return {
      releaseId, outcome,
      ...(version ? { version } : {}), ...(at !== undefined ? { at } : {}), ...(code ? { reasonCode: code } : {}), ...(text ? { reasonText: text } : {}),
      ...(failedChecks ? { failedChecks } : {}), ...(warnedChecks ? { warnedChecks } : {}),
    };
  }
  const legacy = outcome && Object.hasOwn(LEGACY_OUTCOMES, outcome) ? LEGACY_OUTCOMES[outcome] : undefined;
  const releaseId = str(v['releaseId']);
  if (!legacy || !releaseId) return undefined;
  const version = str(v['version']);
  const at = time(v['atMs']);
  const code = str(v['code']);
  return { releaseId, outcome: legacy, ...(version ? { version } : {}), ...(at !== undefined ? { at } : {}), ...(code ? { reasonCode: code, reasonText: code } : {}) };
}

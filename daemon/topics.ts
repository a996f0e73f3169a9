/**
 * MQTT topic layout, version 1. Everything lives under `slotflip/v1/` so a future layout can sit
 * beside it, and everything a device writes is under its own subtree so a broker ACL such as
 * Mosquitto's `pattern readwrite slotflip/v1/devices/%u/#` confines each device (certificate CN =
 * device id) to itself.
 *
 * <!-- README: MQTT topics -->
 * | topic | direction | QoS | retained | payload |
 * | --- | --- | --- | --- | --- |
 * | `slotflip/v1/meta/<file>` | fleet → devices | 1 | yes | a TUF metadata file verbatim (`root.json`, `1.root.json`, `timestamp.json`, `snapshot.json`, `targets.json`); an empty retained message deletes it |
 * | `slotflip/v1/devices/<id>/online` | device → fleet | 1 | yes | `online`; the broker publishes the last will `offline` when the device vanishes, the device publishes `offline` on a clean stop |
 * | `slotflip/v1/devices/<id>/state` | device → fleet | 1 | yes | JSON: `at` (ISO 8601, when published, as in events), current phase, slots and versions, `lastResult` (see `StateLastResult`), inventory |
 * | `slotflip/v1/devices/<id>/events` | device → fleet | 1 | no | JSON `{ "seq": N, "deviceId": "<id>", "type": "...", ... }`; delivered at least once and in `seq` order from a persisted outbox: consumers drop duplicates by `seq` |
 * | `slotflip/v1/devices/<id>/cmd/check` | fleet → device | 1 | no | any payload: check for updates now |
 *
 * `<id>` and `<file>` are single topic levels of `[A-Za-z0-9._:-]` (no `+`, `#`, `/`).
 * <!-- /README -->
 */

export const TOPIC_ROOT = 'slotflip/v1';

const LEVEL = /^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}$/;

/** True when `s` is safe as one topic level (device id, metadata file name). */
export function isTopicLevel(s: string): boolean {
  return LEVEL.test(s) && s !== '.' && !s.includes('..');
}

export const META_PREFIX = `${TOPIC_ROOT}/meta/`;
/** subscription filter for every metadata file. */
export const META_FILTER = `${META_PREFIX}+`;

export function metaTopic(file: string): string {
  if (!isTopicLevel(file)) throw new RangeError(`metadata file name "${file}" is not a single safe topic level`);
  return META_PREFIX + file;
}

/** The metadata file name a topic carries, or undefined when the topic is not a metadata topic. */
export function metaFileOf(topic: string): string | undefined {
  if (!topic.startsWith(META_PREFIX)) return undefined;
  const file = topic.slice(META_PREFIX.length);
  return isTopicLevel(file) ? file : undefined;
}

export interface DeviceTopics {
  root: string;
  online: string;
  state: string;
  events: string;
  cmdCheck: string;
  /** subscription filter for every command. */
  cmdFilter: string;
}

export function deviceTopics(deviceId: string): DeviceTopics {
  if (!isTopicLevel(deviceId)) throw new RangeError(`device id "${deviceId}" is not a single safe topic level`);
  const root = `${TOPIC_ROOT}/devices/${deviceId}`;
  return { root, online: `${root}/online`, state: `${root}/state`, events: `${root}/events`, cmdCheck: `${root}/cmd/check`, cmdFilter: `${root}/cmd/+` };
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

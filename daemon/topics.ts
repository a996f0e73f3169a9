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
 * | `slotflip/v1/devices/<id>/state` | device → fleet | 1 | yes | JSON: current phase, slots and versions, last result, inventory |
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

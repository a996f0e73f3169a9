/**
 * Where TUF metadata files live on an MQTT broker: shared by the publisher (`repo publish`) and the
 * device's transport (daemon/topics.ts re-exports it), so the two cannot drift apart.
 *
 * Layout v2 (`slotflip/v2/meta/<level>`): every topic level is `[A-Za-z0-9_-]`, because RabbitMQ
 * maps MQTT topics onto AMQP routing keys where `.` separates words (`timestamp.json` would arrive as
 * `timestamp/json`). A file `<N>.<role>.json` is the level `<N>_<role>`, `<role>.json` is `<role>`;
 * role names are `[A-Za-z0-9-]`, so the mapping is one-to-one. A file whose name has no v2 level
 * (a delegated role with `_` or `.` in its name) is simply not on the broker: devices fetch it
 * over HTTP, which is the source of truth anyway.
 *
 * Layout v1 (`slotflip/v1/meta/<file>`, the file name verbatim) is still published during a
 * transition (`repo publish --layouts v1,v2`) and still read by devices, after v2.
 *
 * Pure; no I/O.
 */

export type MetaLayout = 'v1' | 'v2';

export const META_PREFIXES: Readonly<Record<MetaLayout, string>> = { v1: 'slotflip/v1/meta/', v2: 'slotflip/v2/meta/' };

/** Every message slotflip publishes stays at or below this size (Azure's retained cap; AWS IoT's is 128 KB). */
export const MAX_MESSAGE_BYTES = 64 * 1024;

const FILE = /^(?:([1-9][0-9]{0,9})\.)?([A-Za-z0-9-]{1,64})\.json$/;
const LEVEL = /^(?:([1-9][0-9]{0,9})_)?([A-Za-z0-9-]{1,64})$/;
const V1_LEVEL = /^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}$/;

/** The v2 topic level of a metadata file name, or undefined when it has none. */
export function metaLevel(file: string): string | undefined {
  const m = FILE.exec(file);
  if (!m) return undefined;
  return m[1] ? `${m[1]}_${m[2]}` : m[2];
}

/** The metadata file name a v2 topic level stands for, or undefined. */
export function metaFileOfLevel(level: string): string | undefined {
  const m = LEVEL.exec(level);
  if (!m) return undefined;
  return m[1] ? `${m[1]}.${m[2]}.json` : `${m[2]}.json`;
}

function v1Level(file: string): boolean {
  return V1_LEVEL.test(file) && !file.includes('..');
}

/** The topic of `file` in `layout`, or undefined when the file has no topic there. */
export function metaTopic(file: string, layout: MetaLayout = 'v2'): string | undefined {
  if (layout === 'v2') {
    const level = metaLevel(file);
    return level === undefined ? undefined : META_PREFIXES.v2 + level;
  }
  return v1Level(file) ? META_PREFIXES.v1 + file : undefined;
}

/** `{ file, layout }` for a metadata topic of either layout, else undefined. */
export function metaFileOfTopic(topic: string): { file: string; layout: MetaLayout } | undefined {
  for (const layout of ['v2', 'v1'] as const) {
    const prefix = META_PREFIXES[layout];
    if (!topic.startsWith(prefix)) continue;
    const rest = topic.slice(prefix.length);
    if (layout === 'v2') {
      const file = metaFileOfLevel(rest);
      return file === undefined ? undefined : { file, layout };
    }
    return v1Level(rest) ? { file: rest, layout } : undefined;
  }
  return undefined;
}

/**
 * What the daemon knows about its broker, kept in the state directory for read-only commands
 * (`slotflip status`): `<stateDir>/broker.json` (the protocol in use, metadata problems) and
 * `<stateDir>/mqtt-protocol.json` (the protocol version that worked, per broker URL: a broker that
 * refused MQTT 5 once is asked in MQTT 3.1.1 from then on, across restarts).
 *
 * Trade-off: both files are advisory; a missing or unreadable one means "nothing known".
 */
import { join } from 'node:path';
import { mkdir, readFile } from 'node:fs/promises';
import { writeFileAtomic } from '../hal/atomic-file.js';
import type { ProtocolMemory } from './mqtt.js';
import type { MetaProblem } from './retained-meta.js';

export interface BrokerReport {
  url?: string;
  protocolVersion?: 4 | 5;
  connected: boolean;
  retainedMetadataBytes: number;
  problems: MetaProblem[];
}

export function brokerStatePath(stateDir: string): string {
  return join(stateDir, 'broker.json');
}

export async function readBrokerReport(stateDir: string): Promise<BrokerReport | undefined> {
  try {
    const v = JSON.parse(await readFile(brokerStatePath(stateDir), 'utf8')) as BrokerReport;
    return typeof v === 'object' && v !== null && Array.isArray(v.problems) ? v : undefined;
  } catch {
    return undefined;
  }
}

export async function writeBrokerReport(stateDir: string, r: BrokerReport): Promise<void> {
  await mkdir(stateDir, { recursive: true });
  await writeFileAtomic(brokerStatePath(stateDir), JSON.stringify(r) + '\n');
}

export function fileProtocolMemory(stateDir: string): ProtocolMemory {
  const path = join(stateDir, 'mqtt-protocol.json');
  const read = async (): Promise<Record<string, unknown>> => {
    try {
      const v = JSON.parse(await readFile(path, 'utf8')) as unknown;
      return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
    } catch {
      return {};
    }
  };
  return {
    async load(url) {
      const v = (await read())[url];
      return v === 4 || v === 5 ? v : undefined;
    },
    async save(url, version) {
      const all = await read();
      if (all[url] === version) return;
      await mkdir(stateDir, { recursive: true });
      await writeFileAtomic(path, JSON.stringify({ ...all, [url]: version }) + '\n');
    },
  };
}

/** Lines for `slotflip status`. */
export function formatBrokerReport(r: BrokerReport): string[] {
  const lines = [`broker ${r.url ?? '(not connected yet)'}${r.protocolVersion ? `, MQTT ${r.protocolVersion === 5 ? '5' : '3.1.1'}` : ''}`];
  for (const p of r.problems) lines.push(`  broker problem ${p.code}${p.topic ? ` on ${p.topic}` : ''}: ${p.message}`);
  return lines;
}

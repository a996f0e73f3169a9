/**
 * A child process of the fleet simulator hosting a share of the simulated devices (one event loop
 * per core: the device logic is CPU-bound when a thousand devices share one). Driven over the IPC
 * channel by fleet-sim.ts:
 *
 *   parent → child: { op: 'start', ids, env } | { op: 'stats' } | { op: 'stop' }
 *   child → parent: { op: 'started', rssBefore, rssAfter, heapBefore, heapAfter }
 *                   { op: 'stats', stats: HostStats } | { op: 'stopped' } | { op: 'error', message }
 */
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pino } from 'pino';
import { SimDevice } from './sim-device.js';

export interface HostEnv {
  brokerUrl: string;
  payloadBaseUrl: string;
  shippedRoot: string;
  slotSize: number;
  jitterMs: number;
  dir: string;
  verbose: boolean;
}

export interface HostStats {
  devices: number;
  metadataIn: number;
  cycleErrors: number;
  installCycleMs: number;
  maxInstallCycleMs: number;
  /** event loop utilisation since the last `stats` request. */
  elu: number;
  rss: number;
  peakRss: number;
  /** CPU time (user + system) of this host since the last `stats` request, ms. */
  cpuMs: number;
}

export type HostRequest = { op: 'start'; ids: string[]; env: HostEnv } | { op: 'stats' } | { op: 'stop' };
export type HostReply =
  | { op: 'started'; rssBefore: number; rssAfter: number; heapBefore: number; heapAfter: number }
  | { op: 'stats'; stats: HostStats }
  | { op: 'stopped' }
  | { op: 'error'; message: string };

let devices: SimDevice[] = [];
let elu = performance.eventLoopUtilization();
let cpu = process.cpuUsage();
let peakRss = 0;
const sampler = setInterval(() => { peakRss = Math.max(peakRss, process.memoryUsage.rss()); }, 250);
sampler.unref();

function reply(m: HostReply): void {
  process.send?.(m);
}

async function inBatches<T>(items: T[], size: number, fn: (x: T) => Promise<unknown>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}

async function handle(m: HostRequest): Promise<void> {
  switch (m.op) {
    case 'start': {
      const log = pino({ level: m.env.verbose ? 'warn' : 'error' }, pino.destination({ dest: 2, sync: false }));
      const before = process.memoryUsage();
      devices = m.ids.map((id) => new SimDevice(id, join(m.env.dir, id), {
        brokerUrl: m.env.brokerUrl,
        payloadBaseUrl: () => m.env.payloadBaseUrl,
        shippedRoot: m.env.shippedRoot,
        hardware: 'sim-board',
        channel: 'stable',
        slotSize: m.env.slotSize,
        jitterMs: m.env.jitterMs,
        now: Date.now,
        random: Math.random,
        log,
      }));
      await inBatches(devices, 25, (d) => d.start(60_000));
      await Promise.all(devices.map((d) => d.idle()));
      const after = process.memoryUsage();
      reply({ op: 'started', rssBefore: before.rss, rssAfter: after.rss, heapBefore: before.heapUsed, heapAfter: after.heapUsed });
      return;
    }
    case 'stats': {
      const u = performance.eventLoopUtilization(elu).utilization;
      elu = performance.eventLoopUtilization();
      const c = process.cpuUsage(cpu);
      cpu = process.cpuUsage();
      const sum = (f: (d: SimDevice) => number): number => devices.reduce((n, d) => n + f(d), 0);
      reply({
        op: 'stats',
        stats: {
          devices: devices.length,
          metadataIn: sum((d) => d.counters.metadataIn),
          cycleErrors: sum((d) => d.counters.cycleErrors),
          installCycleMs: sum((d) => d.counters.installCycleMs),
          maxInstallCycleMs: devices.reduce((n, d) => Math.max(n, d.counters.maxInstallCycleMs), 0),
          elu: u,
          rss: process.memoryUsage.rss(),
          peakRss,
          cpuMs: (c.user + c.system) / 1000,
        },
      });
      return;
    }
    case 'stop':
      await inBatches(devices, 100, (d) => d.stop());
      reply({ op: 'stopped' });
      process.disconnect?.();
      return;
  }
}

process.on('message', (m: HostRequest) => {
  handle(m).catch((e: unknown) => reply({ op: 'error', message: e instanceof Error ? e.stack ?? e.message : String(e) }));
});
// the parent going away ends this host
process.on('disconnect', () => {
  clearInterval(sampler);
  setTimeout(() => process.exit(0), 100).unref();
});

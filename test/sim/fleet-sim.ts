/**
 * Fleet simulator: N emulated devices in a few processes (one per core, device-host.ts), each running the real device logic
 * (test/sim/sim-device.ts: agent, TUF over retained MQTT metadata, HTTP installer, outbox, emulated
 * board) against a real Mosquitto and a real HTTP payload server (behind a metering proxy). It runs a
 * staged rollout (default 10% → 50% → 100%) with `slotflip fleet rollout`'s code path, follows it
 * with `fleet watch`'s watcher, and prints: time to converge, broker messages per device, peak HTTP
 * concurrency, memory per simulated device.
 *
 *   npm run build && node dist/test/sim/fleet-sim.js --devices 1000
 *
 * Options: --devices N (100), --stages 10,50,100, --image-kib K (64), --jitter-ms MS (max(2000, 10·N)),
 * --compression gzip|zstd|none (gzip), --procs P (device host processes; default: the number of cores), --dir DIR (a fresh directory under /dev/shm, else the temp
 * dir), --keep, --timeout-s S (900), --json, --verbose.
 * --bad publishes a release whose image fails its health check, with the watcher's halt policy on
 * (--halt-rate X (0.5), --halt-min N (5)): the first wave rolls back, the rollout is halted, and the
 * report says whether any device outside the first wave attempted it.
 *
 * Trade-off: device state lives on tmpfs by default. Every persisted write in the device logic
 * fsyncs (record, outbox, boot state); on a real disk 1000 devices' fsyncs would measure the disk, not
 * the fleet protocol. Pass --dir to measure with a disk.
 */
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { makeTestImage } from '../../hal/board.js';
import { addRelease, initRepo, publishToBroker } from '../../manifests/repo.js';
import { rolloutBucket } from '../../manifests/rollout.js';
import type { Compression } from '../../manifests/types.js';
import { applyRollout, buildRollout } from '../../daemon/fleet/rollout.js';
import { FleetWatcher } from '../../daemon/fleet/watcher.js';
import { formatSummary } from '../../daemon/fleet/watch.js';
import { startMosquitto } from '../harness/mosquitto.js';
import { startHttpServer } from '../harness/http-server.js';
import { startHttpMeter } from './http-meter.js';
import type { HostReply, HostRequest, HostStats } from './device-host.js';

const MIB = 1024 * 1024;

interface StageReport {
  percent: number;
  devicesInWave: number;
  seconds: number;
  peakHttpInFlight: number;
}

function opts() {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    strict: true,
    options: {
      devices: { type: 'string', default: '100' },
      stages: { type: 'string', default: '10,50,100' },
      'image-kib': { type: 'string', default: '64' },
      'jitter-ms': { type: 'string' },
      compression: { type: 'string', default: 'gzip' },
      dir: { type: 'string' },
      keep: { type: 'boolean', default: false },
      'timeout-s': { type: 'string', default: '900' },
      json: { type: 'boolean', default: false },
      verbose: { type: 'boolean', default: false },
      procs: { type: 'string' },
      bad: { type: 'boolean', default: false },
      'halt-rate': { type: 'string', default: '0.5' },
      'halt-min': { type: 'string', default: '5' },
    },
  });
  const devices = Number(values.devices);
  const stages = values.stages.split(',').map(Number);
  const imageKiB = Number(values['image-kib']);
  if (!Number.isSafeInteger(devices) || devices < 1) throw new Error('--devices must be a whole number >= 1');
  if (stages.length === 0 || stages.some((p) => !(p > 0 && p <= 100)) || stages.at(-1) !== 100) throw new Error('--stages must be percentages ending in 100, e.g. 10,50,100');
  if (!Number.isSafeInteger(imageKiB) || imageKiB < 8) throw new Error('--image-kib must be a whole number >= 8');
  if (!['gzip', 'zstd', 'none'].includes(values.compression)) throw new Error('--compression must be gzip, zstd or none');
  return {
    devices,
    stages,
    imageBytes: imageKiB * 1024,
    jitterMs: values['jitter-ms'] !== undefined ? Number(values['jitter-ms']) : Math.max(2000, devices * 10),
    compression: values.compression as Compression,
    dir: values.dir,
    keep: values.keep,
    timeoutMs: Number(values['timeout-s']) * 1000,
    json: values.json,
    verbose: values.verbose,
    bad: values.bad,
    haltRate: Number(values['halt-rate']),
    haltMin: Number(values['halt-min']),
    procs: Math.max(1, Math.min(devices, values.procs !== undefined ? Number(values.procs) : availableParallelism())),
  };
}

async function procRssMiB(pid: number | undefined): Promise<number | undefined> {
  if (pid === undefined) return undefined;
  const text = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  const m = /^VmRSS:\s+(\d+) kB/m.exec(text);
  return m ? Number(m[1]) / 1024 : undefined;
}

async function waitUntil(cond: () => boolean, deadline: number, what: string): Promise<void> {
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function ask<K extends HostReply['op']>(child: ChildProcess, m: HostRequest, op: K, timeoutMs: number): Promise<Extract<HostReply, { op: K }>> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new Error(`device host ${child.pid}: no ${op} reply within ${timeoutMs} ms`)), timeoutMs);
    const onMessage = (r: HostReply): void => {
      if (r.op === 'error') done(new Error(`device host ${child.pid}: ${r.message}`));
      else if (r.op === op) done(undefined, r as Extract<HostReply, { op: K }>);
    };
    const onExit = (code: number | null): void => done(new Error(`device host ${child.pid} exited (${code}) before replying ${op}`));
    function done(e?: Error, r?: Extract<HostReply, { op: K }>): void {
      clearTimeout(timer);
      child.off('message', onMessage);
      child.off('exit', onExit);
      if (e) reject(e);
      else resolve(r!);
    }
    child.on('message', onMessage);
    child.once('exit', onExit);
    child.send(m);
  });
}

async function hostStats(hosts: ChildProcess[]): Promise<HostStats[]> {
  return Promise.all(hosts.map((h) => ask(h, { op: 'stats' }, 'stats', 30_000).then((r) => r.stats)));
}

const round = (x: number, d = 1): number => Math.round(x * 10 ** d) / 10 ** d;

async function main(): Promise<number> {
  const o = opts();
  const shm = await stat('/dev/shm').then((s) => s.isDirectory(), () => false);
  const dir = o.dir ?? (await mkdtemp(join(shm ? '/dev/shm' : tmpdir(), 'slotflip-sim-')));
  const log = pino({ level: o.verbose ? 'warn' : 'error' }, pino.destination({ dest: 2, sync: false }));
  const say = (s: string): void => {
    if (!o.json) process.stderr.write(`[sim] ${s}\n`);
  };
  const cleanups: Array<() => Promise<unknown>> = [];
  const deadline = Date.now() + o.timeoutMs;
  let peakRss = 0;
  const sampler = setInterval(() => { peakRss = Math.max(peakRss, process.memoryUsage.rss()); }, 250);
  try {
    say(`${o.devices} devices, stages ${o.stages.join('% → ')}%, image ${o.imageBytes / 1024} KiB ${o.compression}, jitter ≤ ${o.jitterMs} ms, dir ${dir}`);
    const broker = await startMosquitto({ dir: join(dir, 'broker') });
    cleanups.push(() => broker.stop());
    const repo = join(dir, 'repo');
    await initRepo(repo, { rootKeys: 1, rootThreshold: 1 });
    await publishToBroker(repo, broker.url);
    const http = await startHttpServer({ root: join(repo, 'repository', 'targets') });
    cleanups.push(() => http.stop());
    const meter = await startHttpMeter(http.url);
    cleanups.push(() => meter.stop());

    const target = `releases/2.0.0/image.img${o.compression === 'zstd' ? '.zst' : o.compression === 'gzip' ? '.gz' : ''}`;
    const watcher = new FleetWatcher({
      brokerUrl: broker.url, release: target, stragglerAfterMs: 3_600_000, now: Date.now, log,
      // --bad: the watcher halts the rollout as `fleet watch --halt-on-failure-rate` would
      ...(o.bad ? { halt: { failureRate: o.haltRate, minDevices: o.haltMin, repoDir: repo } } : {}),
    });
    await watcher.start();
    cleanups.push(() => watcher.stop());

    // --- devices, spread over `procs` host processes
    const slotSize = o.imageBytes + 4096;
    const ids = Array.from({ length: o.devices }, (_, i) => `sim-${String(i).padStart(5, '0')}`);
    const hostFile = fileURLToPath(new URL('./device-host.js', import.meta.url));
    const hosts = Array.from({ length: o.procs }, () => fork(hostFile, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
    cleanups.push(async () => {
      await Promise.all(hosts.map((h) => ask(h, { op: 'stop' }, 'stopped', 60_000).catch(() => h.kill('SIGKILL'))));
    });
    const tStart = Date.now();
    const started = await Promise.all(hosts.map((h, i) => ask(h, {
      op: 'start',
      ids: ids.filter((_, j) => j % o.procs === i),
      env: { brokerUrl: broker.url, payloadBaseUrl: meter.url, shippedRoot: join(repo, 'repository', 'metadata', '1.root.json'), slotSize, jitterMs: o.jitterMs, dir: join(dir, 'devices'), verbose: o.verbose },
    }, 'started', Math.max(120_000, o.devices * 500))));
    await waitUntil(() => watcher.view.devices.size >= o.devices, deadline, 'every device to publish its state');
    const rssDelta = started.reduce((n, r) => n + r.rssAfter - r.rssBefore, 0);
    const heapDelta = started.reduce((n, r) => n + r.heapAfter - r.heapBefore, 0);
    const brokerRss = await procRssMiB(broker.pid());
    say(`devices up in ${round((Date.now() - tStart) / 1000)} s in ${o.procs} processes; rss +${round(rssDelta / MIB)} MiB, heap +${round(heapDelta / MIB)} MiB`);

    // --- the release, staged
    const imagePath = join(dir, 'image.img');
    // --bad: the image boots but fails its health check, so every trial rolls back
    await writeFile(imagePath, makeTestImage({ version: '2.0.0', size: o.imageBytes, healthy: !o.bad }));
    const upBefore = watcher.view.messages;
    const downBefore = (await hostStats(hosts)).reduce((n, h) => n + h.metadataIn, 0);
    const reqBefore = meter.stats().requests;
    meter.resetPeak();
    const t0 = Date.now();
    await addRelease(repo, { image: imagePath, name: target, version: '2.0.0', securityVersion: 1, hardware: ['sim-board'], channel: 'stable', compression: o.compression, chunkSize: Math.min(16 * 1024, o.imageBytes), rollout: buildRollout(o.stages[0]!) });
    await publishToBroker(repo, broker.url);

    /** --bad: the first wave fails, the watcher halts the rollout; the later stages never come. */
    async function badRelease(): Promise<number> {
      const inWave = new Set(ids.filter((id) => rolloutBucket(id, target) < o.stages[0]!));
      await waitUntil(() => watcher.halted !== undefined, deadline, 'the watcher to halt the rollout');
      const haltS = (Date.now() - t0) / 1000;
      // wait until every device has seen the halted metadata and is idle again
      await new Promise((r) => setTimeout(r, o.jitterMs + 1000));
      await waitUntil(() => [...watcher.view.devices.values()].every((d) => d.phase === 'idle'), deadline, 'every device to report idle');
      const h = watcher.halted!;
      const s = watcher.summary(5);
      const attempted = [...watcher.view.devices.values()].filter((d) => d.releases[target] !== undefined).map((d) => d.deviceId);
      const outside = attempted.filter((id) => !inWave.has(id));
      const r = {
        devices: o.devices,
        firstWavePercent: o.stages[0],
        devicesInFirstWave: inWave.size,
        haltPolicy: { failureRate: o.haltRate, minDevices: o.haltMin },
        haltAfterSeconds: round(haltS, 2),
        haltDecision: h.decision.reason,
        attempted: attempted.length,
        attemptedOutsideFirstWave: outside.length,
        payloadRequests: meter.stats().requests - reqBefore,
        versions: s.versions,
        failed: s.release?.failed ?? 0,
        loadAverage1m: round(loadavg()[0]!, 2),
      };
      if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
      else {
        process.stdout.write([
          formatSummary(s),
          '',
          `fleet sim (bad release): ${o.devices} devices, first wave ${o.stages[0]}% = ${inWave.size} devices`,
          `  halted ${r.haltAfterSeconds} s after publishing: ${r.haltDecision}`,
          `  ${r.attempted} devices attempted it (${r.attemptedOutsideFirstWave} outside the first wave), ${r.failed} rolled back or failed; ${r.payloadRequests} payload requests`,
          `  running now: ${Object.entries(r.versions).map(([v, n]) => `${v}=${n}`).join(' ')}`,
        ].join('\n') + '\n');
      }
      return outside.length === 0 && (s.versions['2.0.0'] ?? 0) === 0 ? 0 : 1;
    }
    if (o.bad) return await badRelease();
    const stages: StageReport[] = [];
    let peakHttp = 0;
    for (const [i, percent] of o.stages.entries()) {
      const ts = Date.now();
      if (i > 0) await applyRollout(repo, target, buildRollout(percent), { broker: broker.url });
      const inWave = ids.filter((id) => rolloutBucket(id, target) < percent).length;
      const onNew = (): number => [...watcher.view.devices.values()].filter((d) => d.version === '2.0.0').length;
      await waitUntil(() => onNew() >= inWave, deadline, `${inWave} devices on 2.0.0 at ${percent}%`);
      const peak = meter.resetPeak();
      peakHttp = Math.max(peakHttp, peak);
      stages.push({ percent, devicesInWave: inWave, seconds: round((Date.now() - ts) / 1000, 2), peakHttpInFlight: peak });
      say(`stage ${percent}%: ${inWave} devices on 2.0.0 after ${round((Date.now() - ts) / 1000, 2)} s, peak ${peak} HTTP requests in flight`);
    }
    const convergeS = (Date.now() - t0) / 1000;
    await waitUntil(() => [...watcher.view.devices.values()].every((d) => d.phase === 'idle'), deadline, 'every device to report idle');
    // let the last events and states reach the watcher
    await new Promise((r) => setTimeout(r, 500));
    const hs = await hostStats(hosts);
    const elu = hs.reduce((n, h) => n + h.elu, 0) / hs.length;
    const cpuMs = hs.reduce((n, h) => n + h.cpuMs, 0);
    const up = watcher.view.messages - upBefore;
    const down = hs.reduce((n, h) => n + h.metadataIn, 0) - downBefore;
    const http2 = meter.stats();
    const summary = watcher.summary(10);
    const cycleErrors = hs.reduce((n, h) => n + h.cycleErrors, 0);
    const installMs = hs.reduce((n, h) => n + h.installCycleMs, 0);
    const installMaxMs = hs.reduce((n, h) => Math.max(n, h.maxInstallCycleMs), 0);
    const report = {
      devices: o.devices,
      processes: o.procs,
      /** 1-minute load average when the rollout ended: other work on the machine skews every figure. */
      loadAverage1m: round(loadavg()[0]!, 2),
      stages,
      convergeSeconds: round(convergeS, 2),
      jitterMs: o.jitterMs,
      imageBytes: o.imageBytes,
      compression: o.compression,
      brokerMessagesPerDevice: { total: round((up + down) / o.devices, 2), deviceToBroker: round(up / o.devices, 2), brokerToDevice: round(down / o.devices, 2) },
      http: { requests: http2.requests - reqBefore, peakInFlight: peakHttp, bytes: http2.bytes, statuses: http2.statuses },
      memory: {
        rssPerDeviceKiB: round(rssDelta / 1024 / o.devices),
        heapPerDeviceKiB: round(heapDelta / 1024 / o.devices),
        hostRssAfterRolloutMiB: round(hs.reduce((n, h) => n + h.rss, 0) / MIB),
        hostPeakRssMiB: round(hs.reduce((n, h) => n + h.peakRss, 0) / MIB),
        simulatorRssMiB: round(peakRss / MIB),
        brokerRssMiB: brokerRss !== undefined ? round(brokerRss) : null,
      },
      /** share of the rollout during which this process's event loop was busy: near 1 means the
       * simulator's own CPU, not the protocol, bounds the converge time. */
      eventLoopUtilization: round(elu, 2),
      /** device-side CPU (all hosts, user + system) spent during the rollout, per device: three
       * metadata refreshes and one install each. Independent of machine load, unlike the times. */
      cpuMsPerDevice: Math.round(cpuMs / o.devices),
      installCycle: { meanMs: Math.round(installMs / o.devices), maxMs: installMaxMs },
      outcome: { succeeded: summary.release?.succeeded ?? 0, failed: summary.release?.failed ?? 0, cycleErrors, versions: summary.versions },
    };
    if (o.json) process.stdout.write(JSON.stringify(report) + '\n');
    else {
      process.stdout.write([
        formatSummary(summary),
        '',
        `fleet sim: ${o.devices} devices in ${o.procs} processes, staged ${o.stages.join('% → ')}%, image ${o.imageBytes / 1024} KiB ${o.compression}, check jitter ≤ ${o.jitterMs} ms`,
        ...stages.map((s) => `  stage ${s.percent}%: ${s.devicesInWave} devices converged in ${s.seconds} s, peak ${s.peakHttpInFlight} HTTP requests in flight`),
        `  time to converge (release published → all ${o.devices} devices report 2.0.0): ${report.convergeSeconds} s`,
        `  broker messages per device during the rollout: ${report.brokerMessagesPerDevice.total} (${report.brokerMessagesPerDevice.deviceToBroker} device→broker, ${report.brokerMessagesPerDevice.brokerToDevice} broker→device)`,
        `  HTTP: ${report.http.requests} payload requests, peak ${peakHttp} in flight`,
        `  memory per simulated device: ${report.memory.rssPerDeviceKiB} KiB RSS, ${report.memory.heapPerDeviceKiB} KiB JS heap (device hosts' peak ${report.memory.hostPeakRssMiB} MiB in total; broker ${report.memory.brokerRssMiB ?? '?'} MiB)`,
        `  update cycle per device (check → install → reboot → validate → commit): mean ${report.installCycle.meanMs} ms, max ${report.installCycle.maxMs} ms`,
        `  device-side CPU per device during the rollout: ${report.cpuMsPerDevice} ms (3 metadata refreshes + 1 install, user + system)`,
        `  device hosts' event loops busy ${Math.round(elu * 100)}% of the rollout (near 100%: the simulator's CPU, not the protocol, bounds the converge time)`,
        `  machine load average (1 min) at the end: ${report.loadAverage1m} on ${availableParallelism()} cores`,
        `  outcome: ${report.outcome.succeeded} succeeded, ${report.outcome.failed} failed, ${cycleErrors} cycle errors`,
      ].join('\n') + '\n');
    }
    return report.outcome.succeeded === o.devices && cycleErrors === 0 ? 0 : 1;
  } finally {
    clearInterval(sampler);
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    if (!o.keep && o.dir === undefined) await rm(dir, { recursive: true, force: true });
  }
}

main().then(
  (code) => { process.exit(code); },
  (e: unknown) => {
    process.stderr.write(`fleet-sim: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
    process.exit(1);
  },
);

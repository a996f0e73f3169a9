/**
 * `slotflip demo`: the whole update loop on this machine, with the real modules the daemon uses.
 *
 * It starts an embedded MQTT broker (aedes, in-process: a fresh machine has no mosquitto), creates
 * an emulated board and a TUF repository in a work directory, serves the repository over HTTP with
 * Range support, and publishes two releases as retained metadata:
 *   1.1 — healthy: the device streams it into the inactive slot, arms a trial boot, power-cycles,
 *         passes its health check and commits;
 *   1.2 — its health check fails on the trial boot: the device rolls back to 1.1 and reports why.
 * The device side is the daemon's own composition (`createAgent`), MQTT transport and outbox; the
 * "reboot" power-cycles the emulated board, whose bootloader logic picks the slot.
 *
 * Trade-off: the demo drives `runUpdateCycle` directly (one agent per boot, as after a real reboot)
 * instead of a long-running `slotflip daemon` process, so it can print one line per state change and
 * finish in seconds; `test/integration` runs the daemon as a separate process.
 */
import { createServer, type Server } from 'node:net';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Aedes } from 'aedes';
import mqtt from 'mqtt';
import { pino, type Logger } from 'pino';
import { boardStatus, createBoard, makeTestImage, powerCycle } from '../hal/board.js';
import { SlotflipError } from '../hal/errors.js';
import { addRelease, initRepo, publishToBroker } from '../manifests/repo.js';
import { serveRepository } from '../manifests/serve.js';
import type { Compression } from '../manifests/types.js';
import { runUpdateCycle, type CycleResult } from './agent.js';
import { createAgent } from './compose.js';
import { resolveConfig, type Config } from './config.js';
import type { HistoryEntry } from './machine.js';
import { MqttTransport } from './mqtt.js';
import { Outbox } from './outbox.js';
import { deviceTopics } from './topics.js';

export interface DemoOptions {
  /** work directory; default a new temp directory, removed at the end unless `keep`. */
  dir?: string;
  keep?: boolean;
  /** image size in bytes (default 16 MiB). */
  imageSize?: number;
  compression?: Compression;
  /** human output (progress bar, state lines, table). */
  out: NodeJS.WritableStream;
  /** true when `out` is a terminal: redraw the progress bar in place. */
  tty?: boolean;
}

export interface DemoStep {
  release: string;
  expected: 'succeeded' | 'rolledBack';
  outcome: HistoryEntry['outcome'] | 'none';
  reason: string;
  bootedSlot: string;
  bootedVersion: string;
  committedSecurityVersion: number;
  events: string[];
  seconds: number;
}

export interface DemoResult {
  ok: boolean;
  dir: string;
  steps: DemoStep[];
  /** event types the fleet saw on the broker, in order. */
  brokerEvents: Array<{ seq: number; type: string; release?: string }>;
}

const HARDWARE = 'slotflip,demo-board-v1';
const DEVICE_ID = 'demo-device-1';

/** Runs the demo; resolves with what happened (ok only when 1.1 committed and 1.2 rolled back). */
export async function runDemo(opts: DemoOptions): Promise<DemoResult> {
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'slotflip-demo-')));
  await mkdir(dir, { recursive: true });
  const print = (line: string) => opts.out.write(line + '\n');
  const cleanups: Array<() => Promise<unknown>> = [];
  try {
    // --- the fleet side: broker, repository, HTTP server --------------------------------------
    const broker = await startEmbeddedBroker();
    cleanups.push(() => broker.close());
    print(`broker      mqtt://127.0.0.1:${broker.port} (embedded)`);

    const repoDir = join(dir, 'repo');
    await initRepo(repoDir);
    const server = await serveRepository(join(repoDir, 'repository'));
    cleanups.push(() => server.close());
    print(`repository  ${repoDir} (TUF, root 2-of-3), served at ${server.url}`);

    const boardDir = join(dir, 'board');
    const imageSize = opts.imageSize ?? 16 << 20;
    await createBoard(boardDir, { backend: 'emulated', slotSize: imageSize + (1 << 20), factoryVersion: '1.0.0' });
    await powerCycle(boardDir);
    print(`board       ${boardDir} (emulated A/B, slots of ${mib(imageSize + (1 << 20))}), booted slot A with 1.0.0`);

    // --- the fleet watches the device's events on the broker ------------------------------------
    const brokerEvents: DemoResult['brokerEvents'] = [];
    const watcher = await mqtt.connectAsync(broker.url, { clientId: 'demo-fleet-watch' });
    cleanups.push(() => watcher.endAsync());
    await watcher.subscribeAsync(deviceTopics(DEVICE_ID).events, { qos: 1 });
    const seen = new Set<number>();
    watcher.on('message', (_topic, payload) => {
      const e = JSON.parse(payload.toString()) as { seq: number; type: string; version?: string; failures?: Array<{ name: string; required?: boolean }>; reason?: { code?: string } };
      if (seen.has(e.seq)) return;
      seen.add(e.seq);
      brokerEvents.push({ seq: e.seq, type: e.type, ...(e.version ? { release: e.version } : {}) });
      const why = e.failures?.length ? ` — failed: ${e.failures.map((f) => f.name).join(', ')}` : e.reason?.code ? ` — ${e.reason.code}` : '';
      print(`  fleet     ← event #${e.seq} ${e.type}${e.version ? ` (${e.version})` : ''}${why}`);
    });

    // --- the device ---------------------------------------------------------------------------
    const config = await deviceConfig(dir, boardDir, repoDir, broker.url, server.url);
    const log = transitionPrinter(print);
    const outbox = new Outbox({ dir: join(config.stateDir, 'outbox') });
    const transport = new MqttTransport({ config: config.broker!, deviceId: DEVICE_ID, outbox, logger: log });
    transport.start();
    cleanups.push(() => transport.stop());

    const steps: DemoStep[] = [];
    const releases: Array<{ version: string; securityVersion: number; healthy: boolean; expected: DemoStep['expected'] }> = [
      { version: '1.1.0', securityVersion: 1, healthy: true, expected: 'succeeded' },
      { version: '1.2.0', securityVersion: 2, healthy: false, expected: 'rolledBack' },
    ];
    for (const rel of releases) {
      const started = Date.now();
      print('');
      print(`release ${rel.version}${rel.healthy ? '' : ' (its health check will fail)'}`);
      const image = join(dir, `image-${rel.version}.img`);
      await writeFile(image, makeTestImage({ version: rel.version, size: imageSize, healthy: rel.healthy }));
      const added = await addRelease(repoDir, {
        image,
        version: rel.version,
        securityVersion: rel.securityVersion,
        hardware: [HARDWARE],
        channel: 'stable',
        compression: opts.compression ?? 'gzip',
        chunkSize: 1 << 20,
      });
      const timestampBefore = transport.metadata.get('timestamp.json');
      const published = await publishToBroker(repoDir, broker.url);
      print(`  fleet     → signed ${added.targetName} (${mib(added.length)} ${opts.compression ?? 'gzip'}), published ${published.published.length} metadata files, retained`);
      await waitFor(() => transport.metadata.get('timestamp.json') !== timestampBefore, 10_000, 'the device did not receive the new timestamp from the broker');

      const bar = progressBar(opts.out, opts.tty ?? false);
      const cycle: CycleResult = await runUpdateCycle(
        () =>
          createAgent(config, {
            log,
            metadata: transport.metadata,
            outbox,
            onInstallProgress: bar.update,
            reboot: async () => {
              bar.done();
              const r = await powerCycle(boardDir);
              print(`  board     ⏻ power cycle: booted slot ${r.booted ?? 'none'} (${r.reason})`);
            },
          }),
        { maxReboots: 4 },
      );
      bar.done();
      await waitForAsync(async () => (await outbox.stats()).pending === 0, 10_000, 'the outbox did not drain to the broker').catch(() => undefined);
      const status = await boardStatus(boardDir);
      const finished = cycle.finished.at(-1);
      const stateAfter = await createAgent(config, { log: pino({ level: 'silent' }), metadata: transport.metadata, outbox: null }).then((a) => a.status());
      steps.push({
        release: rel.version,
        expected: rel.expected,
        outcome: finished?.outcome ?? 'none',
        reason: describeReason(finished),
        bootedSlot: status.booted ?? 'none',
        bootedVersion: (status.booted && status.images[status.booted].version) || 'unknown',
        committedSecurityVersion: stateAfter.committedSecurityVersion,
        events: cycle.events,
        seconds: (Date.now() - started) / 1000,
      });
    }
    await waitFor(() => brokerEvents.some((e) => e.type === 'UpdateRolledBack'), 5_000, 'the rollback report did not reach the broker').catch(() => undefined);

    const [first, second] = steps;
    const ok =
      first?.outcome === 'succeeded' &&
      first.bootedVersion === '1.1.0' &&
      second?.outcome === 'rolledBack' &&
      second.bootedVersion === '1.1.0' &&
      second.committedSecurityVersion === 1 &&
      brokerEvents.some((e) => e.type === 'UpdateCommitted' && e.release === '1.1.0') &&
      brokerEvents.some((e) => e.type === 'UpdateRolledBack' && e.release === '1.2.0') &&
      !brokerEvents.some((e) => e.type === 'UpdateCommitted' && e.release === '1.2.0');
    print('');
    print(summaryTable(steps));
    print('');
    print(ok ? 'demo: OK — 1.1.0 committed, 1.2.0 rolled back, the fleet was told both' : 'demo: FAILED — the outcomes above are not the expected ones');
    return { ok, dir, steps, brokerEvents };
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    if (!opts.keep && !opts.dir) await rm(dir, { recursive: true, force: true });
  }
}

async function deviceConfig(dir: string, boardDir: string, repoDir: string, brokerUrl: string, httpUrl: string): Promise<Config> {
  const board = await boardStatus(boardDir);
  // the health check runs the real CLI (`slotflip board probe`); from the .ts sources (tests) that is the build in dist/
  const here = fileURLToPath(import.meta.url);
  const cli = here.endsWith('.ts') ? join(dirname(here), '..', 'dist', 'daemon', 'cli.js') : join(dirname(here), 'cli.js');
  return resolveConfig({
    deviceId: DEVICE_ID,
    hardware: HARDWARE,
    channel: 'stable',
    stateDir: join(dir, 'device-state'),
    trust: {
      shippedRoot: join(repoDir, 'repository', 'metadata', '1.root.json'),
      sources: [{ type: 'mqtt' }],
      payloadBaseUrls: [`${httpUrl}targets/`],
    },
    board: {
      slots: { A: { path: board.board.slots.A, size: board.board.slotSize }, B: { path: board.board.slots.B, size: board.board.slotSize } },
      boot: board.board.bootConfig,
      tries: 2,
    },
    broker: { urls: [brokerUrl], protocolVersion: 4 },
    health: {
      deadlineSeconds: 30,
      checks: [{ type: 'command', name: 'application', argv: [process.execPath, cli, 'board', 'probe', boardDir, '--health'], timeoutSeconds: 20 }],
    },
  }, join(dir, 'device-config.json'));
}

interface EmbeddedBroker {
  url: string;
  port: number;
  close(): Promise<void>;
}

async function startEmbeddedBroker(): Promise<EmbeddedBroker> {
  const aedes = await Aedes.createBroker();
  const server: Server = createServer(aedes.handle);
  server.listen(0, '127.0.0.1');
  await new Promise<void>((ok, fail) => {
    server.once('listening', ok);
    server.once('error', fail);
  });
  const address = server.address();
  if (!address || typeof address === 'string') throw new SlotflipError('DAEMON_DEMO', 'embedded broker did not bind a TCP port');
  return {
    url: `mqtt://127.0.0.1:${address.port}`,
    port: address.port,
    close: () =>
      new Promise<void>((ok) => {
        server.close(() => aedes.close(() => ok()));
        server.unref();
      }),
  };
}

/** A logger whose JSON lines become one human line per state transition. */
function transitionPrinter(print: (line: string) => void): Logger {
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) {
        if (!line) continue;
        try {
          const o = JSON.parse(line) as { msg?: string; from?: string; to?: string; event?: string; level?: number; err?: { message?: string } };
          if (o.msg === 'state transition' && o.from !== o.to) print(`  device    ${(o.from ?? '').padEnd(11)} → ${(o.to ?? '').padEnd(11)} (${o.event ?? ''})`);
          else if ((o.level ?? 0) >= 50) print(`  device    error: ${o.msg}${o.err?.message ? `: ${o.err.message}` : ''}`);
        } catch {
          // not JSON: ignore
        }
      }
      done();
    },
  });
  return pino({ level: 'info' }, sink);
}

function progressBar(out: NodeJS.WritableStream, tty: boolean): { update: (p: { bytes: number; total: number; rate: number; etaSeconds: number | null }) => void; done: () => void } {
  let lastDraw = 0;
  let last = '';
  let open = false;
  return {
    update(p) {
      const now = Date.now();
      if (p.bytes < p.total && now - lastDraw < (tty ? 100 : 1000)) return;
      lastDraw = now;
      const width = 30;
      const filled = p.total ? Math.round((p.bytes / p.total) * width) : 0;
      last = `  download  [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${mib(p.bytes)}/${mib(p.total)} ${(p.rate / (1 << 20)).toFixed(1)} MiB/s${p.etaSeconds !== null ? ` eta ${p.etaSeconds.toFixed(0)}s` : ''}`;
      if (tty) out.write(`\r${last}`);
      else out.write(last + '\n');
      open = tty;
    },
    done() {
      if (open) out.write('\n');
      open = false;
    },
  };
}

function summaryTable(steps: DemoStep[]): string {
  const rows = [['release', 'expected', 'outcome', 'booted', 'committed sv', 'time', 'reason']];
  for (const s of steps) rows.push([s.release, s.expected, s.outcome, `${s.bootedSlot} (${s.bootedVersion})`, String(s.committedSecurityVersion), `${s.seconds.toFixed(1)}s`, s.reason.slice(0, 70)]);
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r, n) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ') + (n === 0 ? '\n' + widths.map((w) => '-'.repeat(w)).join('  ') : '')).join('\n');
}

function mib(n: number): string {
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

function describeReason(h: HistoryEntry | undefined): string {
  if (!h) return '';
  const failed = h.failures?.filter((f) => f.required).map((f) => `${f.name}: ${f.output.trim().split('\n').at(-1) ?? ''}`) ?? [];
  if (failed.length) return `health check failed: ${failed.join('; ')}`;
  return h.reason ? `${h.reason.code}: ${h.reason.message}` : h.outcome;
}

async function waitForAsync(cond: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new SlotflipError('DAEMON_DEMO_TIMEOUT', `demo: ${what} within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new SlotflipError('DAEMON_DEMO_TIMEOUT', `demo: ${what} within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Wiring: builds an Agent's real collaborators from a validated Config. The CLI commands and the
 * demo call `createAgent(config, overrides)`; every collaborator can be overridden (tests hand in an
 * emulated reboot, a fixed clock, a log sink, a metadata map filled from MQTT).
 *
 * Trade-off: one function that knows every module, so no other module has to know more than its
 * neighbours. Nothing here reads process.env or argv.
 *
 * Sources (config trust.sources, first one used for metadata):
 * - `{type:'dir', path}`: a published repository directory (`metadata/`, `targets/`), e.g. a USB stick;
 * - `{type:'http', url}`: the same layout under a URL (`<url>/metadata/`, `<url>/targets/`);
 * - `{type:'mqtt'}`: retained metadata from the broker, through `overrides.metadata` (a Map the MQTT
 *   transport fills). Payloads then come from `trust.payloadBaseUrls`.
 */
import { join } from 'node:path';
import { mkdir, readdir, readFile, rm, stat, statfs } from 'node:fs/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Logger } from 'pino';
import { execTool, runChecked, type ToolRunner } from '../hal/exec.js';
import { writeFileAtomic } from '../hal/atomic-file.js';
import { SlotflipError } from '../hal/errors.js';
import type { BootControl, SlotName } from '../hal/boot-control.js';
import { createBootControl } from '../hal/registry.js';
import { createSlotWriter } from '../hal/file-slot.js';
import type { SlotWriter } from '../hal/slot-writer.js';
import { TrustClient, dirSource, httpSource, memorySource, targetUrl, type MetadataSource } from '../manifests/client.js';
import type { Release } from '../manifests/types.js';
import type { InstallProgress } from './install/index.js';
import type { IndexResolver as IndexResolverType } from './install/index-file.js';
import { runHealthChecks, type HealthDeps } from './health.js';
import { Outbox } from './outbox.js';
import { brokerFirstSource, refreshWithFallback, type BrokerFirstSource, type BrokerMetaHooks } from './meta-source.js';
import { createUpdatePolicies, type DeferralStore } from './policies.js';
import { Agent, type AgentDeps, type EventSink, type HealthRunner, type Installer, type ReleaseFinder, type UpdatePolicies } from './agent.js';
import { acquireStateLock, FileStateStore, type StateStore } from './state-store.js';
import { configDefaults, type Config, type SourceConfig } from './config.js';
import { silentLogger } from './logger.js';
import { releaseIdOf } from './machine.js';
import { guardTrials, kernelBootId, trialGuardDir } from './trial-guard.js';
import { isoTime } from '../hal/iso-time.js';
import { exposedGc, reclaimHeap } from './footprint.js';

// The install path (installer, decoder, hasher, HTTP source, read-back, preflight) and the data
// migration are loaded on first use: a daemon sits idle for weeks between updates and should not
// carry their code (issue 16, bench:memory; test/unit/daemon-module-graph.test.ts keeps it so).
type InstallModule = typeof import('./install/index.js');
const installModule = (): Promise<InstallModule> => import('./install/index.js');
async function installPayload(...a: Parameters<InstallModule['installPayload']>): ReturnType<InstallModule['installPayload']> {
  return (await installModule()).installPayload(...a);
}
async function installByDelta(...a: Parameters<typeof import('./install/route.js').installByDelta>): ReturnType<typeof import('./install/route.js').installByDelta> {
  return (await import('./install/route.js')).installByDelta(...a);
}
async function verifySlotImage(...a: Parameters<typeof import('./install/read-back.js').verifySlotImage>): ReturnType<typeof import('./install/read-back.js').verifySlotImage> {
  return (await import('./install/read-back.js')).verifySlotImage(...a);
}
async function preflightPayload(...a: Parameters<typeof import('./install/preflight.js').preflightPayload>): ReturnType<typeof import('./install/preflight.js').preflightPayload> {
  return (await import('./install/preflight.js')).preflightPayload(...a);
}

export interface ComposeOverrides {
  now?: () => number;
  log?: Logger;
  /** the reboot action; default: run `config.reboot.command`. Receives the boot backend's reboot
   * argument when an armed trial needs one (`0 tryboot` on rpi-tryboot), else undefined. */
  reboot?: (rebootArgument?: string) => Promise<void>;
  /** called after `config.reboot.command` exited 0 (not after an injected `reboot`): resolves when
   * the shutdown is under way, throws (DAEMON_REBOOT_DID_NOT_HAPPEN) when the system stayed up, which
   * fails the reboot step (retried with backoff). The daemon gives it; one-shot commands return at once. */
  awaitShutdown?: () => Promise<void>;
  /** the kernel boot id (default: /proc/sys/kernel/random/boot_id): emulated boards give each
   * power-on its own, so "a real reboot happened" is testable (AgentDeps.bootId). */
  bootId?: () => Promise<string | undefined>;
  runner?: ToolRunner;
  bootControl?: BootControl;
  slots?: Record<SlotName, SlotWriter>;
  /** retained metadata by file name (filled by the MQTT transport) for `{type:'mqtt'}` sources. */
  metadata?: Map<string, Uint8Array>;
  /** replaces the metadata source derived from the config (e.g. `slotflip install SOURCE`). */
  source?: SourceConfig;
  /** the MQTT transport's hooks for broker copies that failed or passed verification. */
  brokerMeta?: BrokerMetaHooks;
  releases?: ReleaseFinder;
  installer?: Installer;
  health?: HealthRunner;
  healthDeps?: HealthDeps;
  outbox?: EventSink | null;
  policies?: UpdatePolicies;
  store?: StateStore;
  /** download progress of the installer (the CLI's progress bar, the demo). */
  onInstallProgress?: (p: InstallProgress) => void;
  /** called once per full install, after the TUF refresh, preflight, mark-bad and the delta decision
   * and before the payload streams: a memory-reducing GC (footprint.ts `reclaimHeap`) returns what
   * those left on the heap before the install's buffers come on top (its peak RSS, issue 16/24).
   * Default: that GC where node runs with --expose-gc (/usr/bin/slotflip's daemon, install and
   * update lines), logged; else nothing. */
  reclaim?: () => void;
  /** the per-cycle state lock; default `<stateDir>/lock` taken for each `runOnce`. `null`: none,
   * because the caller holds the lock for its whole life (the daemon, see UpdateService). */
  lock?: (() => Promise<() => Promise<void>>) | null;
}

/** `busctl` argv (the parameter is appended) asking systemd-logind to store the reboot parameter. */
export const LOGIND_SET_REBOOT_PARAMETER = ['call', 'org.freedesktop.login1', '/org/freedesktop/login1', 'org.freedesktop.login1.Manager', 'SetRebootParameter', 's'] as const;

/** config.reboot.parameter, defaulted: 'logind' for systemctl, 'append' for anything else. */
export function rebootParameterMode(r: Config['reboot']): 'logind' | 'append' {
  if (r.parameter) return r.parameter;
  const cmd = r.command[0] ?? '';
  return cmd === 'systemctl' || cmd.endsWith('/systemctl') ? 'logind' : 'append';
}

/** Directories under stateDir. */
export function statePaths(stateDir: string): { trusted: string; outbox: string; resume: string; deferral: string; retryRequest: string } {
  return {
    trusted: join(stateDir, 'trusted'), outbox: join(stateDir, 'outbox'), resume: join(stateDir, 'install-resume.json'), deferral: join(stateDir, 'reboot-deferral.json'),
    retryRequest: join(stateDir, 'retry-failed-requested'),
  };
}

/** `slotflip check --retry`: leaves the request for the next cycle (the daemon may hold the lock). */
export async function requestRetryOfFailed(stateDir: string, now: number): Promise<void> {
  await mkdir(stateDir, { recursive: true });
  await writeFileAtomic(statePaths(stateDir).retryRequest, JSON.stringify({ requestedAt: isoTime(now) }) + '\n');
}

/** The reboot deferral's start, kept in a small file (atomic writes) so a restart does not reset it. */
export function fileDeferralStore(path: string): DeferralStore {
  return {
    async get() {
      try {
        const v = (JSON.parse(await readFile(path, 'utf8')) as { since?: unknown }).since;
        return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
      } catch {
        return undefined;
      }
    },
    async set(ms) {
      await writeFileAtomic(path, JSON.stringify(ms === undefined ? {} : { since: ms }) + '\n');
    },
  };
}

/** Free MiB on the filesystem holding `dir`. */
export async function freeSpaceMiB(dir: string): Promise<number | undefined> {
  try {
    const s = await statfs(dir);
    return (s.bavail * s.bsize) / (1024 * 1024);
  } catch {
    return undefined;
  }
}

/** The smaller configured slot capacity (file slots), for selection's size check; block devices
 * report their own size to the slot writer later. */
function slotSizeOf(config: Config): { slotSize?: number } {
  const { A, B } = config.board.slots;
  return A.size !== undefined && B.size !== undefined ? { slotSize: Math.min(A.size, B.size) } : {};
}

/** The metadata source and the payload locations for a source config. */
export function sourceFor(src: SourceConfig, config: Config, metadata?: Map<string, Uint8Array>): { meta: MetadataSource; payload: (target: TargetLocation) => { urls: string[] } | { path: string }; brokerFirst?: BrokerFirstSource } {
  const fromBases = (bases: string[]) => (release: TargetLocation) => {
    if (bases.length === 0) throw new SlotflipError('DAEMON_NO_PAYLOAD_URL', 'no payload location: set trust.payloadBaseUrls in the config', { details: { field: '/trust/payloadBaseUrls' } });
    return { urls: bases.map((b) => targetUrl(b, release)) };
  };
  switch (src.type) {
    case 'dir': {
      const targets = pathToFileURL(join(src.path, 'targets') + '/').href;
      return { meta: dirSource(join(src.path, 'metadata')), payload: (release) => ({ path: fileURLToPath(targetUrl(targets, release)) }) };
    }
    case 'http': {
      const base = src.url.endsWith('/') ? src.url : `${src.url}/`;
      return { meta: httpSource(`${base}metadata/`), payload: fromBases(config.trust.payloadBaseUrls.length ? config.trust.payloadBaseUrls : [`${base}targets/`]) };
    }
    case 'mqtt': {
      // the broker is a fast path: with a repository listed after it, that repository backs it
      // (files the broker lacks, a newer timestamp, copies that fail verification)
      const repo = config.trust.sources.find((s) => s.type === 'http' || s.type === 'dir');
      if (repo) {
        const behind = sourceFor(repo, config);
        const brokerFirst = brokerFirstSource(metadata ?? new Map(), behind.meta);
        return { meta: brokerFirst, brokerFirst, payload: config.trust.payloadBaseUrls.length ? fromBases(config.trust.payloadBaseUrls) : behind.payload };
      }
      return { meta: memorySource(metadata ?? new Map()), payload: fromBases(config.trust.payloadBaseUrls) };
    }
  }
}

/** What locates a target file (a payload or a chunk index) on a mirror or a disk. */
type TargetLocation = Pick<Release, 'targetName' | 'hashes'>;

/** Builds the agent for this boot. Creates the state directories. */
/** The data migration (daemon/migration.ts) behind a loader: the module is imported when a trial
 * needs it, or when a snapshot on disk needs settling; an idle device never loads it. */
function lazyMigrations(config: Config): NonNullable<AgentDeps['migration']> {
  const snapshotDir = join(config.stateDir, 'migration-snapshot'); // = createMigrations' snapshotDir
  let m: Promise<import('./migration.js').Migrations> | undefined;
  const get = () => (m ??= import('./migration.js').then((mod) => mod.createMigrations(config)));
  const exists = (p: string) => stat(p).then(() => true, () => false);
  return {
    beforeChecks: async (...a) => (await get()).beforeChecks(...a),
    // nothing on disk (neither the snapshot nor its half-made .tmp): nothing to restore or drop
    settle: async (booted, history) => ((await exists(snapshotDir)) || (await exists(`${snapshotDir}.tmp`)) ? (await get()).settle(booted, history) : undefined),
  };
}

export async function createAgent(config: Config, o: ComposeOverrides = {}): Promise<Agent> {
  const now = o.now ?? Date.now;
  const log = o.log ?? silentLogger();
  const gc = o.reclaim ? undefined : exposedGc();
  const reclaim = o.reclaim ?? (gc ? () => log.info(reclaimHeap(gc), 'heap reclaimed before the install streams') : undefined);
  const runner = o.runner ?? execTool;
  const paths = statePaths(config.stateDir);
  await mkdir(paths.trusted, { recursive: true });
  await mkdir(paths.outbox, { recursive: true });

  const src = sourceFor(o.source ?? config.trust.sources[0]!, config, o.metadata);
  const trust = new TrustClient({ trustedDir: paths.trusted, shippedRootPath: config.trust.shippedRoot, source: src.meta, now });

  const brokerFirst = o.source ? undefined : src.brokerFirst;
  const releases: ReleaseFinder = o.releases ?? {
    releases: async () => (brokerFirst ? await refreshWithFallback(brokerFirst, o.brokerMeta, () => trust.refresh()) : await trust.refresh()).releases,
  };
  // Read-back after the write: by path (a fresh O_DIRECT descriptor on the file or block device, so
  // the medium is read, not the page cache; what the bench's memory figure assumes) for hal's own
  // slot writers; through the slot handle's readAt when
  // the slots were injected, so injected read faults (fault tests) stay on the read-back path.
  const readBack: 'path' | 'handle' = o.slots ? 'handle' : 'path';
  const dl = config.download ?? configDefaults.download;
  const budget = { maxChunkFailures: dl.maxChunkFailures, maxBytesFactor: dl.maxBytesFactor, maxMs: dl.maxMinutes * 60_000 };
  // format 2: the chunk index is a target file of its own, fetched from the payload's locations,
  // verified against the signed metadata and cached in the state dir for resume (install/index-file.ts)
  // (loaded on first use, with the rest of the install path: an idle daemon never needs it)
  const indexCache = join(config.stateDir, 'install-index'); // = indexCacheDir(stateDir)
  let resolver: Promise<IndexResolverType> | undefined;
  const index = {
    resolver: () => (resolver ??= import('./install/index-file.js').then((m) => new m.IndexResolver({ locate: (target) => src.payload(target), cacheDir: indexCache, log: log.child({ module: 'daemon.install.index' }) }))),
    payloadOf: async (release: Release) => (await index.resolver()).payloadOf(release),
    indexOf: async (release: Release) => (await index.resolver()).indexOf(release),
    // an empty or absent cache has nothing to settle: the module stays unloaded
    settle: async (inFlight: Release | undefined) => ((await readdir(indexCache).catch(() => [])).length > 0 ? (await index.resolver()).settle(inFlight) : undefined),
  };
  // the install that finished last in THIS process read its slot back from the medium (behind each
  // flush, whole-image SHA-256, the first differing chunk named): the verify step that follows it
  // takes that result instead of reading and hashing the slot a second time; after a restart (or for
  // anything else) the verify step reads the slot itself
  let readBackDone: { slotPath: string; imageSha256: string } | undefined;
  const slots = o.slots ?? {
    A: createSlotWriter('A', { ...config.board.slots.A, runner }),
    B: createSlotWriter('B', { ...config.board.slots.B, runner }),
  };
  const deltaMode = (config.install ?? configDefaults.install).delta;
  const store = o.store ?? new FileStateStore({ stateDir: config.stateDir, now });
  // the release the booted slot holds by the device's state (committed there), as the signed targets
  // of this process's last refresh still list it (same name, same image hash): its published delta
  // index is the booted slot's seed when none is kept (install/route.ts); undefined when unknown,
  // pruned, or nothing was refreshed in this process (then the slot is cut)
  const heldBy = (running: SlotName) => async () => {
    const ref = (await store.load()).installed[running];
    const rel = ref ? trust.targets().find((r) => r.targetName === ref.targetName && releaseIdOf(r) === ref.id) : undefined;
    return rel ? (await index.resolver()).indexOf(rel, { store: false }) : undefined;
  };
  const installer: Installer = o.installer ?? {
    write: async (release, slot) => {
      readBackDone = undefined;
      const { payload, delta } = await index.indexOf(release);
      // by delta when the release offers one (install/route.ts): the other slot (the booted one) and
      // the target itself are the seeds; the booted slot is only ever read.
      // The daemon and `slotflip install`/`update` run interpreted (daemon/footprint.ts), a delta
      // install included: its one JS-heavy step, cutting a slot into content-defined chunks, runs as
      // WebAssembly (manifests/cdc-wasm.ts); the rest is native work (zstd, SHA-256, I/O)
      const viaDelta = await installByDelta({
        release, payload, delta, mode: deltaMode, locate: (t) => src.payload(t), slot, running: slots[slot.slot === 'A' ? 'B' : 'A'], runningRelease: heldBy(slot.slot === 'A' ? 'B' : 'A'),
        resumeStatePath: paths.resume, seedDir: config.stateDir, budget, now, readBack, log: log.child({ module: 'daemon.install' }),
        ...(o.onInstallProgress ? { onProgress: o.onInstallProgress } : {}),
      });
      if (viaDelta.installed) {
        readBackDone = { slotPath: slot.path, imageSha256: viaDelta.readBackSha256 };
        return viaDelta.stats;
      }
      reclaim?.();
      const r = await installPayload({ payload, source: src.payload(release), slot, resumeStatePath: paths.resume, length: release.length, readBack, budget, ...(o.onInstallProgress ? { onProgress: o.onInstallProgress } : {}), logger: log.child({ module: 'daemon.install' }), now,
        ...(typeof release.hashes['sha256'] === 'string' ? { targetSha256: release.hashes['sha256'] } : {}) });
      readBackDone = { slotPath: slot.path, imageSha256: r.readBackSha256 };
      // the release offers a delta: keep its index for this slot, so the next delta install need not cut it
      await (await import('./install/route.js')).keepIndexAfterFull({ mode: deltaMode, delta, locate: (t) => src.payload(t), slot, payload, seedDir: config.stateDir, slotSha256: r.readBackSha256, log: log.child({ module: 'daemon.install' }) });
      return { method: 'full', imageBytes: payload.size, reusedBytes: 0, downloadedBytes: r.bytesReceived, ...(viaDelta.fallback ? { fallback: viaDelta.fallback } : {}) };
    },
    async verify(release, slot) {
      const done = readBackDone;
      readBackDone = undefined;
      const payload = await index.payloadOf(release);
      if (done !== undefined && done.slotPath === slot.path && done.imageSha256 === payload.sha256) return;
      await verifySlotImage(slot, payload, { source: readBack, log: log.child({ module: 'daemon.install.read-back' }) });
    },
    async preflight(release) {
      // the index first: a release whose chunk index is missing, tampered with or wrong is refused
      // here, before the target slot is marked bad
      const { payload, delta } = await index.indexOf(release);
      // an install that will go by delta needs the delta files, not the payload (install/route.ts)
      if (await (await import('./install/route.js')).probeDelta({ mode: deltaMode, delta, locate: (t) => src.payload(t) })) return;
      // the source the install will read; any mirror that serves the signed payload will do,
      // otherwise the first mirror's answer
      const source = (await installModule()).toSource(src.payload(release), undefined);
      let first: unknown;
      for (let i = 0; i < source.count; i++) {
        try {
          await preflightPayload({ payload, length: release.length, source, index: i, fifoDir: config.stateDir });
          return;
        } catch (e) {
          first ??= e;
        }
      }
      throw first;
    },
    settle: (inFlight) => index.settle(inFlight),
  };
  const health: HealthRunner = o.health ?? {
    async run() {
      const r = await runHealthChecks(config.health, { runner, ...o.healthDeps });
      return {
        ok: r.ok,
        failures: r.results.filter((x) => !x.ok).map((x) => ({ name: x.name, output: x.output, required: x.required })),
      };
    },
  };
  const outbox = o.outbox === null ? undefined : (o.outbox ?? new Outbox({ dir: paths.outbox, now }));
  // wrapped by the trial guard: the marker systemd's slotflip-trial-failed.service reads, so a trial
  // whose daemon cannot run still ends in a reboot (trial-guard.ts, systemd/README.md)
  const bootControl: BootControl & { rebootArgument?: () => Promise<string | undefined> } = guardTrials(o.bootControl ?? createBootControl(config.board.boot, { runner }), {
    dir: trialGuardDir(config.stateDir),
    bootId: o.bootId ?? kernelBootId,
    log: log.child({ module: 'daemon.trial-guard' }),
  });
  // Some backends start an armed trial only with a reboot argument (rpi-tryboot: `0 tryboot`,
  // from hal's GuardedBootControl.rebootArgument(); it is undefined unless a trial is armed, so the
  // rollback reboot stays plain). It reaches the kernel one of two ways (config reboot.parameter):
  // - 'logind' (default for systemctl): `busctl call ... SetRebootParameter s ARG` makes logind
  //   write /run/systemd/reboot-param in ITS context, then `config.reboot.command` runs unchanged.
  //   `systemctl reboot ARG` would write that file itself, and /run/systemd is read-only inside
  //   slotflip.service's sandbox: every trial reboot failed (issue 22, 7). Root is privileged for
  //   logind (no polkit, no capability needed); the D-Bus socket is reachable under ProtectSystem=.
  // - 'append': ARG is appended to the command's argv as ONE argument (a custom reboot script).
  // An injected `overrides.reboot(arg)` gets the argument as is.
  const reboot = async (): Promise<void> => {
    const arg = bootControl.rebootArgument ? await bootControl.rebootArgument() : undefined;
    if (o.reboot) return o.reboot(arg);
    const [cmd, ...args] = config.reboot.command;
    if (arg === undefined) {
      await runChecked(runner, 'DAEMON_REBOOT_FAILED', cmd!, args);
    } else if (rebootParameterMode(config.reboot) === 'append') {
      await runChecked(runner, 'DAEMON_REBOOT_FAILED', cmd!, [...args, arg]);
    } else {
      // no parameter stored, no reboot: a plain reboot would not start the trial it was meant to
      await runChecked(runner, 'DAEMON_REBOOT_FAILED', 'busctl', [...LOGIND_SET_REBOOT_PARAMETER, arg]);
      await runChecked(runner, 'DAEMON_REBOOT_FAILED', cmd!, args);
    }
    await o.awaitShutdown?.();
  };
  const deps: AgentDeps = {
    identity: { deviceId: config.deviceId, hardware: config.hardware, channel: config.channel, ...slotSizeOf(config) },
    bootControl,
    slots,
    releases,
    installer,
    health,
    store,
    reboot,
    now,
    log,
    tries: config.board.tries,
    retryRequest: {
      pending: () => stat(paths.retryRequest).then(() => true, () => false),
      clear: () => rm(paths.retryRequest, { force: true }),
    },
    // one process at a time may drive the machine (two `update` runs, or `update --once` beside
    // the daemon, would both write the slot); read-only commands never take it; the daemon holds it
    // for its whole life instead (UpdateService.start) and passes `lock: null`
    lock: o.lock === null ? undefined : (o.lock ?? (() => acquireStateLock({ stateDir: config.stateDir, now }))),
    ...(outbox ? { outbox } : {}),
    ...(o.bootId ? { bootId: o.bootId } : {}),
    // issue 18: the release's data migration (or the config's) runs before the trial's health
    // checks; its snapshot lives in the state dir (on the data partition) and is restored when the
    // attempt does not commit. Loaded on first use (an idle device never needs it)
    migration: lazyMigrations(config),
    policies: o.policies ?? createUpdatePolicies(config.policies, { freeSpaceMiB: () => freeSpaceMiB(config.stateDir), deferral: fileDeferralStore(paths.deferral) }),
  };
  return new Agent(deps);
}

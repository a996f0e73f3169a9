/**
 * Seed indexes built while the daemon is idle (issue 25): a slot with no usable seed index (the
 * factory image in both slots, a slot written before delta was enabled, a kept index that was
 * dropped) is read and cut into chunks now, so the next delta install looks its chunks up instead of
 * cutting both slots on the update's critical path (1 GiB slots: a second or two of CPU per slot).
 *
 * Trade-offs:
 * - Low priority by pacing, not by nice: Linux nice is per thread and a daemon that lowered its own
 *   main thread may not raise it back (CAP_SYS_NICE), so after every 1 MiB buffer the build sleeps in
 *   proportion to the time it just spent (`busyFraction`, default 0.5 of one core); the event loop
 *   is free between buffers (MQTT, commands, a trigger).
 * - Interpreted, like the rest of the idle daemon (daemon/footprint.ts), by default. The cut's loops
 *   run as WebAssembly (manifests/cdc-wasm.ts), which costs the same either way: 1 GiB ext4 image
 *   (config-repro), cut alone, 0.68 s of CPU interpreted, 0.72 s with V8's optimizing compilers on
 *   (before the wasm loops: 60 s of CPU per GiB interpreted against 3.9 s, `npm run bench:seed-idle`).
 *   With the compilers on the idle daemon's RSS did not come back (53 MiB before, 62 MiB after, heap
 *   reclaimed); `optimize: true` is kept for that bench's comparison.
 * - Abortable, not resumable: an update (any cycle) aborts the build through `signal` before it does
 *   anything; the aborted slot keeps nothing (seed-index.ts keeps an index only of a slot it read
 *   whole) and is read again from its start at the next idle period (a checkpoint would cost a state
 *   write per step and a resumable whole-slot hash).
 * - Memory: one 1 MiB read buffer and 12 bytes a chunk (~0.8 MiB per GiB) while it runs; nothing
 *   after (the daemon's heap reclaim runs after it).
 * - Both slots are only read (opened read-only); the committed slot stays untouched.
 * - CDC parameters: those of a seed built before, else what `release add` chooses for the slot's
 *   image (manifests/cdc.ts cdcForImage: EXT4_CDC with the filesystem's directory blocks for an ext4
 *   image, DEFAULT_CDC otherwise): a release cut otherwise finds the built index unusable and cuts
 *   the slot, as before.
 */
import type { Logger } from 'pino';
import { setTimeout as sleep } from 'node:timers/promises';
import type { SlotName } from '../../hal/boot-control.js';
import { createSlotWriter } from '../../hal/file-slot.js';
import { cdcForImage, type CdcParams } from '../../manifests/cdc.js';
import { withOptimizingCompilers } from '../footprint.js';
import { buildSeedIndex, seedPresent } from './seed-index.js';
import { performance } from '../../hal/monotonic.js';

export interface IdleIndexOptions {
  stateDir: string;
  /** the install record (install-resume.json): a built index records its word on the slot. */
  resumeStatePath: string;
  slots: Record<SlotName, { path: string; size?: number }>;
  /** aborted when a cycle starts (or the daemon stops): the build stops within one buffer, keeping nothing. */
  signal: AbortSignal;
  log?: Logger;
  /** share of one core the build may take (0 < f <= 1; default 0.5). */
  busyFraction?: number;
  /** read buffer (default 1 MiB): how much is cut between two pauses. */
  bufferBytes?: number;
  /** turn V8's optimizing compilers on for the build (default false: see the module header;
   * test/bench/seed-idle-bench.ts measures both). */
  optimize?: boolean;
}

export interface IdleIndexResult {
  /** slots indexed now. */
  built: SlotName[];
  /** slots that already had a seed index. */
  present: SlotName[];
  /** true when the signal stopped it. */
  aborted: boolean;
}

/**
 * Builds the missing seed indexes of both slots, one after the other. Never throws for a slot it
 * cannot read (logged, the next slot is tried); resolves `aborted: true` when the signal fired.
 */
export async function indexSlotsWhileIdle(o: IdleIndexOptions): Promise<IdleIndexResult> {
  const out: IdleIndexResult = { built: [], present: [], aborted: false };
  const missing: SlotName[] = [];
  let cdc: CdcParams | undefined;
  for (const name of ['A', 'B'] as const) {
    const p = await seedPresent(o.stateDir, { slot: name, path: o.slots[name].path }, o.resumeStatePath);
    if (p.ok) {
      out.present.push(name);
      cdc ??= p.cdc;
    } else missing.push(name);
  }
  if (missing.length === 0 || o.signal.aborted) return { ...out, aborted: o.signal.aborted };
  const fraction = Math.min(1, Math.max(0.01, o.busyFraction ?? 0.5));
  const build = async (): Promise<IdleIndexResult> => {
    for (const name of missing) {
      const slot = { slot: name, path: o.slots[name].path };
      const started = performance.now();
      const cpu0 = process.cpuUsage();
      let mark = started;
      let slept = 0;
      // pacing: after each buffer, rest (1/f - 1) times the time that buffer took
      const pause = async (): Promise<void> => {
        const rest = (performance.now() - mark) * (1 / fraction - 1);
        if (rest >= 1) {
          await sleep(rest, undefined, { signal: o.signal });
          slept += rest;
        }
        mark = performance.now();
      };
      try {
        const size = await createSlotWriter(name, o.slots[name]).capacity();
        o.log?.info({ slot: name, path: slot.path, bytes: size }, 'seed index build started');
        const r = await buildSeedIndex({ stateDir: o.stateDir, slot, size, cdc: cdc ?? (await cdcForImage(slot.path)), resumeStatePath: o.resumeStatePath, signal: o.signal, pause, bufferBytes: o.bufferBytes ?? 1 << 20 });
        const c = process.cpuUsage(cpu0);
        const figures = { slot: name, bytes: size, chunks: r.chunks, ms: Math.round(performance.now() - started), sleptMs: Math.round(slept), cpuMs: Math.round((c.user + c.system) / 1000) };
        if (r.kept) {
          out.built.push(name);
          o.log?.info(figures, 'seed index built');
        } else o.log?.info({ ...figures, why: r.why }, 'seed index not kept');
      } catch (e) {
        if (o.signal.aborted) {
          o.log?.info({ slot: name, ms: Math.round(performance.now() - started) }, 'seed index build interrupted (nothing kept for this slot)');
          return { ...out, aborted: true };
        }
        o.log?.warn({ slot: name, err: { code: (e as { code?: string }).code, message: (e as Error).message } }, 'seed index build failed (the next delta install cuts this slot)');
      }
    }
    return out;
  };
  return o.optimize === true ? withOptimizingCompilers(build) : build();
}

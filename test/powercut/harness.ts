/**
 * Power-cut harness: cuts a full update (a separate driver process, driver.ts) at seeded random
 * points, models what the cut loses, power-cycles the emulated board, and checks the invariants.
 *
 * One iteration (everything derived from its seed, printed on failure):
 * 1. A fresh emulated board (emulated, uboot rauc, uboot mender, grub greenboot, grub rauc,
 *    systemd-boot as firmware v258+ or v252 (how entry ids are formed), rpi-tryboot, custom) with
 *    factory image 1.0.0 committed in slot A; a fresh state directory; a scenario: `good` (1.1.0
 *    boots and is healthy), `unhealthy` (boots, health check fails: rollback) or `noboot` (the kernel
 *    never comes up: the bootloader falls back).
 * 2. 1–3 cuts: run the driver, SIGKILL it at operation N (`before`, `after`, or `torn` in the
 *    middle of it) or after a random delay; then model lost unsynced writes: every slot write after
 *    the slot's last flush is kept, dropped (random bytes: the old contents are unknown) or torn;
 *    a torn temp file is left beside the record and the outbox; a torn environment write garbles the
 *    newest redundant copy (done by the driver at the cut). systemd-boot and rpi-tryboot change their
 *    files in several atomic steps (entry renames, entry / loader.conf / autoboot.txt replacements):
 *    each step is its own cut point (driver.ts `espIo`). Power-cycle the board (no reboot argument:
 *    a cut never boots a Raspberry Pi tryboot trial).
 * 3. After each cut: the board boots (bounded attempts) a slot holding a fully verified known image
 *    (header and hash), never an unarmed target; the update record and the outbox parse; the
 *    committed securityVersion never decreases; the record's save counter never goes back.
 * 4. An uncut run finishes the attempt: phase idle, an outcome consistent with the scenario and the
 *    board (succeeded ⇒ the new image runs and is committed; rolled back ⇒ the factory image runs).
 * 5. The next update (1.2.0, securityVersion 2, published afterwards) completes.
 * Delta installs (issue 25): the runner's fixtures also publish every release's delta files (the
 * 1.1.x images share the factory image's body, 1.2.0 shares 1.1.x's), served with multi-range
 * answers (manifests/serve.ts, what `repo serve` runs); each iteration draws whether its device
 * installs by delta (`install.delta` auto) or the full payload (off). A delta install copies chunks
 * from slot A and from slot B itself and fetches the rest; its slot writes are cut points like a full
 * install's, and since it flushes only at the end, a cut loses (or tears) every copy it made.
 * 6. The outbox tells the truth: every finished attempt has its final report (committed, rolled
 *    back or failed) and no contradicting one; `UpdateCommitted` only for a succeeded attempt;
 *    nothing of an attempt after its final report; sequence numbers strictly increase.
 */
import { spawn } from 'node:child_process';
import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createBoard, loadBoard, makeTestImage, powerCycle, readImageHeader, type BoardBackend } from '../../hal/board.js';
import { initRepo, addRelease } from '../../manifests/repo.js';
import { resolveConfig, type Config } from '../../daemon/config.js';
import { FileStateStore } from '../../daemon/state-store.js';
import { FileOutboxStore, type OutboxEntry } from '../../daemon/outbox.js';
import { statePaths } from '../../daemon/compose.js';
import { createHash } from 'node:crypto';
import { IMAGE_HEADER_BYTES, IMAGE_MAGIC } from '../../hal/image.js';
import { serveRepository } from '../../manifests/serve.js';
import { startHttpServer } from '../harness/http-server.js';
import { drive, type CutMode } from './driver.js';

export const SLOT_SIZE = 256 * 1024;
export const HARDWARE = 'acme,powercut';

export interface BoardKind {
  backend: BoardBackend;
  convention?: string;
}
/** Board kinds the harness draws from: every backend whose power-on selection hal/board.ts models
 * (systemd-boot twice: the id rule changed in systemd 258, see hal/backends/systemd-boot.ts). */
export const BOARD_KINDS: readonly BoardKind[] = [
  { backend: 'emulated' },
  { backend: 'uboot', convention: 'rauc' },
  { backend: 'uboot', convention: 'mender' },
  { backend: 'grub', convention: 'greenboot' },
  { backend: 'grub', convention: 'rauc' },
  { backend: 'systemd-boot', convention: 'v258' },
  { backend: 'systemd-boot', convention: 'v252' },
  { backend: 'rpi-tryboot' },
  { backend: 'custom' },
];
export type Scenario = 'good' | 'unhealthy' | 'noboot';
export const SCENARIOS: readonly Scenario[] = ['good', 'unhealthy', 'noboot'];

/** Deterministic PRNG (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const pickOf = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const intIn = (r: () => number, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));

/** Repository root of the project (holds package.json), from this file's location (source or dist). */
export function projectRoot(): string {
  let d = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(d, 'package.json')) && existsSync(join(d, 'tsconfig.json'))) return d;
    d = dirname(d);
  }
  throw new Error('powercut: cannot find the project root (package.json)');
}

export function defaultDriverPath(): string {
  return join(projectRoot(), 'dist', 'test', 'powercut', 'driver.js');
}

export interface Fixtures {
  /** served by `server`: `<scenario>/stage1/…` (one release) and `<scenario>/stage2/…` (+1.2.0). */
  served: string;
  /** trust anchor per scenario (root v1). */
  roots: Record<Scenario, string>;
  server: { url: string; stop(): Promise<void> };
  /** the releases carry delta files (and the server answers multi-range requests). */
  delta: boolean;
  versions: Record<Scenario, string>;
  /** versions of every image that may legitimately boot. */
  known: Set<string>;
  stop(): Promise<void>;
}

/** A test image (hal/image.ts format) whose body starts with `base`'s body (up to `share` bytes):
 * what a delta install can copy from a slot holding `base`. */
export function sharedTestImage(o: { version: string; size: number; healthy?: boolean; boots?: boolean }, base: Buffer, share: number): Buffer {
  const img = makeTestImage({ version: o.version, size: o.size, ...(o.healthy !== undefined ? { healthy: o.healthy } : {}), ...(o.boots !== undefined ? { boots: o.boots } : {}) });
  base.copy(img, IMAGE_HEADER_BYTES, IMAGE_HEADER_BYTES, Math.min(base.length, IMAGE_HEADER_BYTES + share));
  const head = readImageHeader(img)!;
  const header = { ...head, bodySha256: createHash('sha256').update(img.subarray(IMAGE_HEADER_BYTES)).digest('hex') };
  img.fill(0, 0, IMAGE_HEADER_BYTES);
  img.write(IMAGE_MAGIC + JSON.stringify(header) + '\n', 'utf8');
  return img;
}

/** Builds one signed repository per scenario, snapshots it before and after the follow-up release,
 * and serves them all from one HTTP server. `delta`: the releases share bytes with the image before
 * (the factory 1.0.0, then 1.1.x), carry delta files, and the server answers multi-range requests. */
export async function buildFixtures(dir: string, o: { delta?: boolean } = {}): Promise<Fixtures> {
  const delta = o.delta === true;
  // the board's factory image (hal/board.ts createBoard with factoryVersion 1.0.0, 64 KiB)
  const factory = makeTestImage({ version: '1.0.0', size: 64 * 1024 });
  await rm(dir, { recursive: true, force: true });
  const served = join(dir, 'served');
  await mkdir(served, { recursive: true });
  const roots = {} as Record<Scenario, string>;
  const versions: Record<Scenario, string> = { good: '1.1.0', unhealthy: '1.1.1', noboot: '1.1.2' };
  for (const sc of SCENARIOS) {
    const repo = join(dir, `repo-${sc}`);
    await initRepo(repo);
    const img = join(dir, `img-${sc}.img`);
    const o1 = { version: versions[sc], size: 160 * 1024 + 123, healthy: sc !== 'unhealthy', boots: sc !== 'noboot' };
    const image1 = delta ? sharedTestImage(o1, factory, 56 * 1024) : makeTestImage(o1);
    await writeFile(img, image1);
    await addRelease(repo, { image: img, version: versions[sc], securityVersion: 1, hardware: [HARDWARE], channel: 'stable', compression: 'zstd', chunkSize: 16 * 1024, ...(delta ? { delta: true } : {}) });
    await cp(join(repo, 'repository'), join(served, sc, 'stage1'), { recursive: true });
    const img2 = join(dir, `img-${sc}-next.img`);
    const o2 = { version: '1.2.0', size: 180 * 1024 + 7 };
    await writeFile(img2, delta ? sharedTestImage(o2, image1, 120 * 1024) : makeTestImage(o2));
    await addRelease(repo, { image: img2, version: '1.2.0', securityVersion: 2, hardware: [HARDWARE], channel: 'stable', compression: 'gzip', chunkSize: 32 * 1024, ...(delta ? { delta: true } : {}) });
    await cp(join(repo, 'repository'), join(served, sc, 'stage2'), { recursive: true });
    roots[sc] = join(repo, 'repository', 'metadata', '1.root.json');
  }
  let server: Fixtures['server'];
  if (delta) {
    const srv = await serveRepository(served);
    server = { url: srv.url, stop: () => srv.close() };
  } else server = await startHttpServer({ root: served });
  return {
    served, roots, server, versions, delta,
    known: new Set(['1.0.0', '1.2.0', ...Object.values(versions)]),
    stop: () => server.stop(),
  };
}

export interface IterationPlan {
  seed: number;
  kind: BoardKind;
  scenario: Scenario;
  tries: number;
  cuts: Array<{ mode: 'op'; killAt: number; cut: CutMode } | { mode: 'delay'; ms: number }>;
  /** per-cut choices for the lost-write model, drawn as needed. */
  r: () => number;
  /** install by delta (config install.delta auto) when the fixtures carry delta files. */
  delta?: boolean;
}

/** Everything an iteration does follows from its seed. `opsHint` ~ ops of an uncut run. */
export function planIteration(seed: number, opsHint = 45, kinds: readonly BoardKind[] = BOARD_KINDS): IterationPlan {
  const r = rng(seed);
  const kind = pickOf(r, kinds);
  const scenario = pickOf(r, SCENARIOS);
  const tries = intIn(r, 1, 3);
  const nCuts = intIn(r, 1, 3);
  const cuts: IterationPlan['cuts'] = [];
  for (let i = 0; i < nCuts; i++) {
    if (r() < 0.8) cuts.push({ mode: 'op', killAt: intIn(r, 1, opsHint), cut: pickOf(r, ['before', 'after', 'torn'] as const) });
    else cuts.push({ mode: 'delay', ms: intIn(r, 200, 2500) });
  }
  // drawn last: the draws above stay what they were for a seed
  const delta = r() < 0.5;
  return { seed, kind, scenario, tries, cuts, r, delta };
}

export interface IterationResult {
  seed: number;
  plan: string;
  violations: string[];
  cutsApplied: number;
  /** the iteration installed by delta. */
  delta: boolean;
  /** cuts that landed at (before, in, after) a slot write. */
  slotWriteCuts: number;
  ms: number;
}

export interface JournalEntry {
  n: number;
  op: string;
  slot?: string;
  path?: string;
  offset?: number;
  len?: number;
  cmd?: string;
  write?: boolean;
}

export async function readJournal(path: string): Promise<JournalEntry[]> {
  let text = '';
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return [];
  }
  const out: JournalEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as JournalEntry);
    } catch {
      // a line torn by the kill: the op it names never started
    }
  }
  return out;
}

export function runDriver(driverPath: string, args: string[], delayMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, [driverPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-8000)));
    const timer = delayMs !== undefined ? setTimeout(() => child.kill('SIGKILL'), delayMs) : undefined;
    const guard = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', rej);
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      clearTimeout(guard);
      res({ code, signal, stdout, stderr });
    });
  });
}

/** Models lost unsynced writes after a cut. Returns a description of what was done. */
async function loseUnsynced(journal: JournalEntry[], stateDir: string, r: () => number): Promise<string[]> {
  const done: string[] = [];
  // slot writes after the last flush of their slot
  const lastFlush = new Map<string, number>();
  for (const e of journal) if (e.op === 'slot-flush' && e.path) lastFlush.set(e.path, e.n);
  const pending = journal.filter((e) => e.op === 'slot-write' && e.path && e.n > (lastFlush.get(e.path) ?? 0));
  const { open } = await import('node:fs/promises');
  for (const w of pending) {
    const p = r();
    if (p < 0.3) continue; // the write happened to reach the medium
    const len = w.len!;
    const buf = Buffer.alloc(len);
    for (let i = 0; i < len; i++) buf[i] = Math.floor(r() * 256);
    const keep = p < 0.65 ? 0 : Math.floor(r() * len); // dropped, or torn after `keep` bytes
    const fh = await open(w.path!, 'r+');
    try {
      await fh.write(buf, keep, len - keep, w.offset! + keep);
    } finally {
      await fh.close();
    }
    done.push(`${keep === 0 ? 'dropped' : 'tore'} write n=${w.n} at ${w.offset}+${len}`);
  }
  // leftover temp files of an atomic write cut mid-way
  await mkdir(stateDir, { recursive: true });
  if (r() < 0.5) {
    const rec = join(stateDir, 'update-record.json');
    const text = existsSync(rec) ? await readFile(rec, 'utf8') : '{"schema":1,"pha';
    await writeFile(join(stateDir, `.update-record.json.99999.${intIn(r, 1, 9)}.tmp`), text.slice(0, Math.floor(text.length / 2)));
    done.push('torn record temp file');
  }
  if (r() < 0.5) {
    const ob = statePaths(stateDir).outbox;
    await mkdir(ob, { recursive: true });
    await writeFile(join(ob, `.outbox.json.99999.${intIn(r, 1, 9)}.tmp`), '{"sha256":"00","bo');
    done.push('torn outbox temp file');
  }
  return done;
}

interface Observed {
  maxSecurityVersion: number;
  maxSaves: number;
}

/** Invariants that must hold at any power-on. */
async function checkAtPowerOn(ctx: { boardDir: string; config: Config; fx: Fixtures; obs: Observed; label: string; tries: number }, violations: string[]): Promise<void> {
  const { boardDir, config, fx, obs, label } = ctx;
  const v = (m: string) => violations.push(`${label}: ${m}`);
  const pc = await powerCycle(boardDir);
  if (!pc.booted) {
    v(`board bricked: ${pc.reason}`);
    return;
  }
  // a trial gets `tries` attempts, then the committed slot comes up: more is a loop or a drained fallback
  if (pc.attempts.length > ctx.tries + 1) v(`boot took ${pc.attempts.length} attempts (reboot loop?): ${pc.attempts.map((a) => a.reason).join(' | ')}`);
  if (!pc.version || !fx.known.has(pc.version)) v(`booted slot ${pc.booted} runs unknown image ${pc.version}`);
  const b = await loadBoard(boardDir);
  const head = await readFile(b.slots[pc.booted]);
  const h = readImageHeader(head);
  if (!h || h.version !== pc.version) v(`booted slot ${pc.booted} header does not parse`);
  // persisted state
  let rec;
  try {
    rec = await new FileStateStore({ stateDir: config.stateDir, now: Date.now }).load();
  } catch (e) {
    v(`update record does not load: ${(e as Error).message}`);
    return;
  }
  if (rec.committedSecurityVersion < obs.maxSecurityVersion) v(`committed securityVersion went from ${obs.maxSecurityVersion} down to ${rec.committedSecurityVersion}`);
  obs.maxSecurityVersion = Math.max(obs.maxSecurityVersion, rec.committedSecurityVersion);
  if (rec.saves < obs.maxSaves) v(`update record went back from save ${obs.maxSaves} to ${rec.saves} (not one consistent version)`);
  obs.maxSaves = Math.max(obs.maxSaves, rec.saves);
  // a target that was never armed must never boot
  const a = rec.attempt;
  if (a && pc.booted === a.target && ['checking', 'preparing', 'downloading', 'verifying'].includes(rec.phase)) {
    v(`slot ${a.target} booted although the record says phase ${rec.phase} (never armed)`);
  }
  try {
    await new FileOutboxStore(statePaths(config.stateDir).outbox).load();
  } catch (e) {
    v(`outbox does not load: ${(e as Error).message}`);
  }
}

const FINAL: Record<string, string> = { succeeded: 'UpdateCommitted', rolledBack: 'UpdateRolledBack', failed: 'UpdateFailed' };

/** The outbox tells the truth about the history. */
export function checkOutboxTruth(entries: OutboxEntry[], history: Array<{ attempt: number; outcome: string }>): string[] {
  const out: string[] = [];
  for (let i = 1; i < entries.length; i++) if (entries[i]!.seq <= entries[i - 1]!.seq) out.push(`outbox seq not increasing at ${entries[i]!.seq}`);
  const byAttempt = new Map<number, OutboxEntry[]>();
  for (const e of entries) {
    const n = e.event['attempt'];
    if (typeof n !== 'number') continue;
    byAttempt.set(n, [...(byAttempt.get(n) ?? []), e]);
  }
  const finals = new Set(Object.values(FINAL));
  for (const h of history) {
    const evs = byAttempt.get(h.attempt) ?? [];
    const want = FINAL[h.outcome]!;
    const finalsSeen = evs.filter((e) => finals.has(e.event.type));
    if (!finalsSeen.some((e) => e.event.type === want)) out.push(`attempt ${h.attempt} ended ${h.outcome} but the outbox has no ${want} (events: ${evs.map((e) => e.event.type).join(',') || 'none'})`);
    const wrong = finalsSeen.filter((e) => e.event.type !== want);
    if (wrong.length) out.push(`attempt ${h.attempt} ended ${h.outcome} but the outbox also says ${wrong.map((e) => e.event.type).join(',')}`);
    const firstFinal = evs.findIndex((e) => finals.has(e.event.type));
    if (firstFinal >= 0) {
      const after = evs.slice(firstFinal + 1).filter((e) => !finals.has(e.event.type));
      if (after.length) out.push(`attempt ${h.attempt}: ${after.map((e) => e.event.type).join(',')} after its final report`);
    }
  }
  const ended = new Set(history.map((h) => h.attempt));
  for (const [n, evs] of byAttempt) {
    if (!ended.has(n) && evs.some((e) => finals.has(e.event.type))) out.push(`attempt ${n} has a final report but no history entry`);
  }
  return out;
}

export interface HarnessOptions {
  workDir: string;
  fixtures: Fixtures;
  driverPath?: string;
  /** keep the iteration's directory (debugging). */
  keep?: boolean;
}

export async function writeConfig(path: string, o: { deviceId: string; stateDir: string; root: string; url: string; board: Awaited<ReturnType<typeof loadBoard>>; tries: number; delta?: boolean }): Promise<Config> {
  const raw = {
    deviceId: o.deviceId,
    hardware: HARDWARE,
    stateDir: o.stateDir,
    trust: { shippedRoot: o.root, sources: [{ type: 'http', url: o.url }] },
    board: { slots: { A: { path: o.board.slots.A, size: SLOT_SIZE }, B: { path: o.board.slots.B, size: SLOT_SIZE } }, boot: o.board.bootConfig, tries: o.tries },
    log: { level: 'warn' },
    install: { delta: o.delta ? 'auto' : 'off' },
  };
  await writeFile(path, JSON.stringify(raw, null, 2));
  return resolveConfig(raw, path);
}

export async function runIteration(seed: number, h: HarnessOptions, kinds?: readonly BoardKind[]): Promise<IterationResult> {
  return runPlan(planIteration(seed, undefined, kinds), h);
}

export const kindLabel = (b: BoardKind): string => (b.convention ? `${b.backend}/${b.convention}` : b.backend);

/** `backend/convention` as printed in a plan, or `backend` (its first kind) → the board kind. Throws on unknown names. */
export function parseKind(name: string): BoardKind {
  const k = BOARD_KINDS.find((b) => kindLabel(b) === name) ?? BOARD_KINDS.find((b) => b.backend === name);
  if (!k) throw new Error(`powercut: unknown board kind ${JSON.stringify(name)}; use one of ${BOARD_KINDS.map(kindLabel).join(', ')}`);
  return k;
}

/** Runs one plan (a seeded one, or a named fault case's explicit cuts). */
export async function runPlan(plan: IterationPlan, h: HarnessOptions): Promise<IterationResult> {
  const started = Date.now();
  const seed = plan.seed;
  const delta = h.fixtures.delta && plan.delta === true;
  const desc = `seed=${seed}${delta ? ' delta' : ''} board=${plan.kind.backend}${plan.kind.convention ? '/' + plan.kind.convention : ''} scenario=${plan.scenario} tries=${plan.tries} cuts=${plan.cuts.map((c) => (c.mode === 'op' ? `op${c.killAt}:${c.cut}` : `delay${c.ms}ms`)).join(',')}`;
  const violations: string[] = [];
  const dir = join(h.workDir, `it-${seed}`);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const boardDir = join(dir, 'board');
  const fx = h.fixtures;
  const driverPath = h.driverPath ?? defaultDriverPath();
  let cutsApplied = 0;
  let slotWriteCuts = 0;
  try {
    const board = await createBoard(boardDir, { backend: plan.kind.backend, ...(plan.kind.convention ? { convention: plan.kind.convention } : {}), slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
    const stateDir = join(dir, 'state');
    const cfgPath = join(dir, 'config.json');
    const url = (stage: string) => `${fx.server.url}${plan.scenario}/${stage}/`;
    const config = await writeConfig(cfgPath, { deviceId: `pc-${seed}`, stateDir, root: fx.roots[plan.scenario], url: url('stage1'), board, tries: plan.tries, delta });
    const obs: Observed = { maxSecurityVersion: 0, maxSaves: 0 };

    for (const [i, c] of plan.cuts.entries()) {
      const journal = join(dir, `journal-${i}.jsonl`);
      const args = ['--config', cfgPath, '--board', boardDir, '--journal', journal];
      const r = c.mode === 'op' ? await runDriver(driverPath, [...args, '--kill-at', String(c.killAt), '--cut', c.cut]) : await runDriver(driverPath, args, c.ms);
      if (r.signal === 'SIGKILL') {
        cutsApplied++;
        const ops = await readJournal(journal);
        if (ops.at(-1)?.op === 'slot-write') slotWriteCuts++;
        await loseUnsynced(ops, stateDir, plan.r);
        await checkAtPowerOn({ boardDir, config, fx, obs, label: `after cut ${i + 1}`, tries: plan.tries }, violations);
      } else if (r.code !== 0) {
        violations.push(`cut ${i + 1}: driver exited ${r.code}${r.signal ? ' ' + r.signal : ''} without being cut: ${(r.stderr.split('\n').find((l) => /Error|driver:/.test(l)) ?? '').trim()} … ${r.stderr.trim().split('\n').slice(-2).join(' / ')}`);
      }
      if (violations.length) break;
    }
    if (violations.length === 0) {
      // finish the attempt uncut
      const fin = await drive({ config, boardDir, maxReboots: 8 });
      if (fin.phase !== 'idle') violations.push(`recovery run ended in phase ${fin.phase}, not idle (reboots ${fin.reboots})`);
      const rec = await new FileStateStore({ stateDir, now: Date.now }).load();
      const last = rec.history.at(-1);
      const booted = await powerCycleless(boardDir);
      if (!last) violations.push('no attempt finished after recovery');
      else {
        const ver = fx.versions[plan.scenario];
        if (last.release.version !== ver) violations.push(`last attempt installed ${last.release.version}, expected ${ver}`);
        if (last.outcome === 'succeeded') {
          if (plan.scenario !== 'good') violations.push(`a ${plan.scenario} release was reported succeeded`);
          if (booted.version !== ver) violations.push(`succeeded but the board runs ${booted.version}`);
          if (rec.committedSecurityVersion !== 1) violations.push(`succeeded but committedSecurityVersion is ${rec.committedSecurityVersion}`);
        } else {
          if (booted.version !== '1.0.0') violations.push(`attempt ${last.outcome} but the board runs ${booted.version}, not the factory 1.0.0`);
          // an earlier attempt of the same release may have committed before a later cut made the
          // bootloader fall back (RAUC's GRUB script: a boot not confirmed again is a failed try),
          // after which the device tried it again: the committed securityVersion stays (never lowered)
          const committedBefore = rec.history.some((h) => h.release.version === ver && h.outcome === 'succeeded');
          if (rec.committedSecurityVersion !== (committedBefore ? 1 : 0)) violations.push(`attempt ${last.outcome} but committedSecurityVersion is ${rec.committedSecurityVersion} (${committedBefore ? 'an earlier attempt committed' : 'no attempt committed'})`);
          if (plan.scenario === 'good' && !['DAEMON_TRIAL_NOT_CONFIRMED', 'DAEMON_COMMIT_INTERRUPTED'].includes(last.reason?.code ?? '')) {
            violations.push(`a good release ended ${last.outcome} with ${last.reason?.code}: ${last.reason?.message}`);
          }
        }
      }
      // the next update completes
      const cfg2 = await writeConfig(cfgPath, { deviceId: `pc-${seed}`, stateDir, root: fx.roots[plan.scenario], url: url('stage2'), board, tries: plan.tries, delta });
      const next = await drive({ config: cfg2, boardDir, maxReboots: 8 });
      const rec2 = await new FileStateStore({ stateDir, now: Date.now }).load();
      const b2 = await powerCycleless(boardDir);
      if (!next.finished.some((f) => f.outcome === 'succeeded' && f.release.version === '1.2.0')) violations.push(`the next update did not complete: ${JSON.stringify(next.finished.map((f) => [f.release.version, f.outcome, f.reason?.code]))}`);
      if (b2.version !== '1.2.0') violations.push(`after the next update the board runs ${b2.version}`);
      if (rec2.committedSecurityVersion !== 2) violations.push(`after the next update committedSecurityVersion is ${rec2.committedSecurityVersion}`);
      const entries = await readOutbox(stateDir);
      violations.push(...checkOutboxTruth(entries, rec2.history));
    }
  } catch (e) {
    violations.push(`harness error: ${(e as Error).stack ?? String(e)}`);
  } finally {
    if (!h.keep && violations.length === 0) await rm(dir, { recursive: true, force: true });
  }
  return { seed, plan: desc, violations, cutsApplied, delta, slotWriteCuts, ms: Date.now() - started };
}

/** The running image per the cmdline (without power-cycling). */
async function powerCycleless(boardDir: string): Promise<{ slot: string | null; version?: string }> {
  const { boardStatus } = await import('../../hal/board.js');
  const s = await boardStatus(boardDir);
  return s.booted ? { slot: s.booted, ...(s.images[s.booted].version ? { version: s.images[s.booted].version! } : {}) } : { slot: null };
}

export async function readOutbox(stateDir: string): Promise<OutboxEntry[]> {
  const snap = await new FileOutboxStore(statePaths(stateDir).outbox).load();
  return snap?.entries ?? [];
}

export interface RunSummary {
  iterations: number;
  violations: number;
  failedSeeds: number[];
  cuts: number;
  deltaIterations: number;
  deltaCuts: number;
  deltaSlotWriteCuts: number;
  ms: number;
  results: IterationResult[];
}

/** Runs `iterations` iterations with seeds derived from `seed`, `parallel` at a time. */
export async function runPowercut(o: { iterations: number; seed: number; parallel?: number; workDir: string; driverPath?: string; keep?: boolean; kinds?: readonly BoardKind[]; onResult?: (r: IterationResult, i: number) => void }): Promise<RunSummary> {
  const started = Date.now();
  await mkdir(o.workDir, { recursive: true });
  const fixtures = await buildFixtures(join(o.workDir, 'fixtures'), { delta: true });
  const results: IterationResult[] = [];
  try {
    const seeds = Array.from({ length: o.iterations }, (_, i) => (Math.imul(o.seed ^ 0x9e3779b9, 2654435761) + i * 7919) >>> 0);
    let next = 0;
    const worker = async () => {
      while (next < seeds.length) {
        const i = next++;
        const r = await runIteration(seeds[i]!, { workDir: o.workDir, fixtures, ...(o.driverPath ? { driverPath: o.driverPath } : {}), ...(o.keep ? { keep: o.keep } : {}) }, o.kinds);
        results.push(r);
        o.onResult?.(r, i);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, o.parallel ?? 2) }, worker));
  } finally {
    await fixtures.stop();
  }
  const bad = results.filter((r) => r.violations.length > 0);
  return { iterations: results.length, violations: bad.reduce((n, r) => n + r.violations.length, 0), failedSeeds: bad.map((r) => r.seed), cuts: results.reduce((n, r) => n + r.cutsApplied, 0),
    deltaIterations: results.filter((r) => r.delta).length,
    deltaCuts: results.filter((r) => r.delta).reduce((n, r) => n + r.cutsApplied, 0),
    deltaSlotWriteCuts: results.filter((r) => r.delta).reduce((n, r) => n + r.slotWriteCuts, 0),
    ms: Date.now() - started, results };
}


/** The operations an uncut update performs on a fresh board (for named cuts: find the op number of
 * "the first environment write", "the commit", ...). Deterministic for a board kind and scenario. */
export async function calibrate(kind: BoardKind, scenario: Scenario, tries: number, fx: Fixtures, workDir: string, delta = false, inspect?: (stateDir: string) => Promise<void>): Promise<JournalEntry[]> {
  const dir = join(workDir, `calibrate-${kind.backend}-${kind.convention ?? 'none'}-${scenario}-${tries}${delta ? '-delta' : ''}`);
  await rm(dir, { recursive: true, force: true });
  const board = await createBoard(join(dir, 'board'), { backend: kind.backend, ...(kind.convention ? { convention: kind.convention } : {}), slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
  const config = await writeConfig(join(dir, 'config.json'), { deviceId: 'calibrate', stateDir: join(dir, 'state'), root: fx.roots[scenario], url: `${fx.server.url}${scenario}/stage1/`, board, tries, delta });
  await drive({ config, boardDir: join(dir, 'board'), journal: join(dir, 'journal.jsonl') });
  const j = await readJournal(join(dir, 'journal.jsonl'));
  await inspect?.(join(dir, 'state'));
  await rm(dir, { recursive: true, force: true });
  return j;
}

/** An explicit plan (no random cuts); the lost-write model still draws from `seed`. */
export function namedPlan(seed: number, kind: BoardKind, scenario: Scenario, tries: number, cuts: IterationPlan['cuts'], delta = false): IterationPlan {
  return { seed, kind, scenario, tries, cuts, r: rng(seed), delta };
}



/**
 * Model-based test (fast-check `fc.commands`) of the update machine + runner + agent against a
 * simulated board whose bootloader follows the trial/fallback rules, with a power cut at ANY
 * persistent operation (record save, boot-env write, slot write, reboot).
 *
 * A power cut is modelled as "every persistent operation from that instant on is lost": the
 * simulation goes dead (writes become no-ops) and the test then power-cycles the board and starts a
 * new agent on what was saved. After every crash and restart the device must boot a fully written,
 * verified image, nothing may be left pending, and the next update must complete.
 */
import t from 'tap';
import fc from 'fast-check';
import { pino } from 'pino';
import type { BootControl, SlotBootState, SlotName } from '../../hal/boot-control.js';
import { SlotflipError } from '../../hal/errors.js';
import type { SlotWriter } from '../../hal/slot-writer.js';
import type { Release } from '../../manifests/types.js';
import { Agent, runUpdateCycle, type Installer } from '../../daemon/agent.js';
import { releaseIdOf, type MachineState } from '../../daemon/machine.js';
import { MemoryStateStore, type UpdateRecord } from '../../daemon/state-store.js';

interface SimSlot { image: string; complete: boolean; state: 'good' | 'trial' | 'bad'; tries: number }

class SimBoard {
  slots: Record<SlotName, SimSlot> = {
    A: { image: 'factory', complete: true, state: 'good', tries: 0 },
    B: { image: 'factory', complete: true, state: 'good', tries: 0 },
  };
  primary: SlotName = 'A';
  booted: SlotName = 'A';
  /** power-ons so far: the kernel's boot id changes with every one (and never without one). */
  boots = 0;
  /** a bootloader that ignores the environment (wrong fw_env.config): it always boots this slot and
   * changes nothing, whatever the OS writes. */
  frozen: SlotName | undefined;
  /** set once `frozen` was used: verdicts of that time are allowed to say "ignored". */
  everFrozen = false;
  ops = 0;
  crashAt = Infinity;
  /** persistent operations that fail once with a transient error instead of happening (an EIO on
   * the boot environment, a reboot command that exits 1, a record save on a full disk). */
  failAt = new Set<number>();
  dead = false;
  violations: string[] = [];
  store = new MemoryStateStore();

  /** Called before each persistent operation: false once the power is cut. */
  step(): boolean {
    if (this.dead) return false;
    if (this.failAt.delete(this.ops)) {
      this.ops++;
      throw new SlotflipError('SIM_TRANSIENT', `transient failure at op ${this.ops - 1}`, { retryable: true });
    }
    if (this.ops++ >= this.crashAt) {
      this.dead = true;
      return false;
    }
    return true;
  }

  /** The bootloader's selection on power-on (a planned reboot keeps any pending crash point). */
  powerCycle(): void {
    this.boots++;
    if (this.frozen) {
      this.booted = this.frozen;
      if (!this.slots[this.frozen].complete) this.violations.push(`booted slot ${this.frozen} holding a partial image`);
      return;
    }
    const other: SlotName = this.primary === 'A' ? 'B' : 'A';
    const p = this.slots[this.primary];
    let pick: SlotName;
    if (p.state === 'good') pick = this.primary;
    else if (p.state === 'trial' && p.tries > 0) {
      p.tries--;
      pick = this.primary;
    } else {
      if (p.state === 'trial') p.state = 'bad';
      pick = other;
      this.primary = other;
      if (this.slots[other].state !== 'good') this.violations.push(`no good slot to fall back to from ${this.primary}`);
    }
    this.booted = pick;
    const s = this.slots[pick];
    if (!s.complete) this.violations.push(`booted slot ${pick} holding a partial image of ${s.image}`);
  }

  bootControl(): BootControl {
    const b = this;
    const other = (s: SlotName): SlotName => (s === 'A' ? 'B' : 'A');
    return {
      backend: 'sim',
      async bootedSlot() { return b.booted; },
      async slotState(slot): Promise<SlotBootState> {
        const s = b.slots[slot];
        return { state: s.state, primary: b.primary === slot, ...(s.state === 'trial' ? { triesLeft: s.tries } : {}) };
      },
      async markBad(slot) {
        if (slot === b.booted && b.slots[other(slot)].state !== 'good') throw new SlotflipError('HAL_MARK_BOOTED_BAD', 'refused');
        if (!b.step()) return;
        b.slots[slot].state = 'bad';
        if (b.primary === slot) b.primary = other(slot);
      },
      async armTrial(slot, tries) {
        if (!b.step()) return;
        if (!b.slots[slot].complete) b.violations.push(`armed slot ${slot} holding a partial image`);
        b.slots[slot].state = 'trial';
        b.slots[slot].tries = tries;
        b.primary = slot;
      },
      async commit(slot) {
        const o = b.slots[other(slot)];
        if (b.slots[slot].state === 'bad' && o.state === 'good' && o.complete) b.violations.push(`committed slot ${slot}, which reads bad, while slot ${other(slot)} is good`);
        if (!b.step()) return;
        b.slots[slot].state = 'good';
        b.primary = slot;
      },
    };
  }

  installer(): Installer {
    const b = this;
    return {
      async write(release, slot) {
        const s = b.slots[slot.slot];
        // two persistent steps: a power cut between them leaves a torn image
        if (!b.step()) return;
        if (slot.slot === b.booted) b.violations.push('wrote to the booted slot');
        if (s.state !== 'bad') b.violations.push(`wrote to slot ${slot.slot} while it was ${s.state}`);
        s.image = releaseIdOf(release);
        s.complete = false;
        if (!b.step()) return;
        s.complete = true;
      },
      async verify(release, slot) {
        const s = b.slots[slot.slot];
        if (!s.complete || s.image !== releaseIdOf(release)) throw new SlotflipError('DAEMON_VERIFY_MISMATCH', 'mismatch');
      },
    };
  }

  storeView(): MemoryStateStore {
    const b = this;
    const inner = this.store;
    return Object.assign(Object.create(MemoryStateStore.prototype) as MemoryStateStore, {
      saved: inner.saved,
      load: () => inner.load(),
      save: async (state: MachineState): Promise<UpdateRecord> => {
        if (!b.step()) return { ...state, schema: 1, savedAt: 0, saves: 0 };
        return inner.save(state);
      },
    });
  }
}

function makeRelease(n: number, healthy: boolean): Release {
  const sha = (n.toString(16).padStart(4, '0') + (healthy ? 'aa' : 'bb')).padEnd(64, '0');
  return {
    targetName: `releases/1.${n}.0/image.zst`, length: 1, hashes: { sha256: sha },
    custom: {
      slotflip: 1, hardware: ['sim,board'], version: `1.${n}.0`, securityVersion: n, channel: 'stable',
      payload: { compression: 'none', size: 1, sha256: sha, chunkSize: 1, chunks: [{ sha256: sha, offset: 0, length: 1 }] },
    },
  };
}

interface World {
  board: SimBoard;
  releases: Release[];
  healthy: Set<string>;
  tries: number;
}

const log = pino({ level: 'silent' });

function agentFor(w: World): Agent {
  const b = w.board;
  const slot = (s: SlotName): SlotWriter => ({ slot: s, path: `/sim/${s}`, capacity: async () => 1, open: async () => { throw new Error('unused'); } });
  return new Agent({
    identity: { deviceId: 'dev-1', hardware: 'sim,board', channel: 'stable' },
    bootControl: b.bootControl(),
    slots: { A: slot('A'), B: slot('B') },
    releases: { releases: async () => w.releases },
    installer: b.installer(),
    health: {
      run: async () => (w.healthy.has(b.slots[b.booted].image)
        // a healthy boot also fails a wanted (required: false) check: a warning every commit carries
        ? { ok: true, failures: [{ name: 'disk-space', output: 'low', required: false }] }
        : { ok: false, failures: [{ name: 'app', output: 'exit 1' }] }),
    },
    store: b.storeView(),
    reboot: async () => {
      if (!b.step()) return;
      b.powerCycle();
    },
    now: () => 1_700_000_000_000,
    log,
    tries: w.tries,
    // real boot ids and a bootloader whose tries are visible: the "bootloader ignored the trial"
    // evidence is checked at every crash point, and this bootloader never ignores one
    bootId: async () => `boot-${b.boots}`,
    triesVisible: true,
  });
}

function securityOf(image: string, w: World): number {
  if (image === 'factory') return 0;
  return w.releases.find((r) => releaseIdOf(r) === image)!.custom.securityVersion;
}

async function checkInvariants(w: World): Promise<void> {
  const b = w.board;
  if (b.violations.length) throw new Error(`violations: ${b.violations.join('; ')}`);
  const booted = b.slots[b.booted];
  if (!booted.complete) throw new Error(`booted slot ${b.booted} is not fully written`);
  if (booted.image !== 'factory' && !w.releases.some((r) => releaseIdOf(r) === booted.image)) throw new Error('booted an unknown image');
  const rec = await b.store.load();
  if (rec.phase !== 'idle') throw new Error(`left pending in phase ${rec.phase}`);
  const claimed = rec.history.find((h) => h.reason?.code === 'DAEMON_BOOTLOADER_IGNORED_ENV');
  // a commit is only reached through health checks that passed, whatever crashed in between: the
  // wanted check's failure must survive into every success (kept in the record until the commit)
  const lost = rec.history.find((h) => h.outcome === 'succeeded' && h.warnings?.[0]?.name !== 'disk-space');
  if (lost) throw new Error(`attempt ${lost.attempt} succeeded without the failed wanted check's warning`);
  if (claimed && !b.everFrozen) throw new Error(`attempt ${claimed.attempt} claimed the bootloader ignored its trial, but this bootloader never does`);
  if (booted.state !== 'good' || b.primary !== b.booted) throw new Error(`booted slot ${b.booted} is ${booted.state}, primary ${b.primary}`);
  if (rec.committedSecurityVersion !== securityOf(booted.image, w)) {
    throw new Error(`committed securityVersion ${rec.committedSecurityVersion} but running ${booted.image}`);
  }
}

/** Restart after a crash: power-cycle and let a fresh agent resume until nothing is pending. */
async function recover(w: World): Promise<void> {
  w.board.dead = false;
  w.board.crashAt = Infinity;
  w.board.powerCycle();
  await runUpdateCycle(() => agentFor(w), { check: false, maxReboots: 8 });
}

class PublishCommand implements fc.AsyncCommand<object, World> {
  constructor(readonly healthy: boolean) {}
  check(): boolean { return true; }
  async run(_m: object, w: World): Promise<void> {
    const r = makeRelease(w.releases.length + 1, this.healthy);
    w.releases.push(r);
    if (this.healthy) w.healthy.add(releaseIdOf(r));
  }
  toString(): string { return `publish(${this.healthy ? 'healthy' : 'unhealthy'})`; }
}

class UpdateCommand implements fc.AsyncCommand<object, World> {
  constructor(readonly crashAfter: number | null) {}
  check(): boolean { return true; }
  async run(_m: object, w: World): Promise<void> {
    const b = w.board;
    const before = (await b.store.load()).rolledBack.length;
    const newest = w.releases.at(-1);
    const newestId = newest ? releaseIdOf(newest) : undefined;
    const wasRunning = b.slots[b.booted].image;
    const alreadyRolledBack = newestId ? (await b.store.load()).rolledBack.includes(newestId) : false;
    if (this.crashAfter !== null) b.crashAt = b.ops + this.crashAfter;
    const r = await runUpdateCycle(() => agentFor(w), { maxReboots: 8 });
    if (b.dead) {
      await recover(w);
    } else {
      b.crashAt = Infinity;
      if (r.phase !== 'idle') throw new Error(`update ended in phase ${r.phase}`);
      // without a crash, the outcome is exactly what the release deserves
      if (newestId && !alreadyRolledBack && wasRunning !== newestId) {
        const out = r.finished.at(-1)?.outcome;
        const expected = w.healthy.has(newestId) ? 'succeeded' : 'rolledBack';
        if (out !== expected) throw new Error(`expected ${expected} for ${newestId}, got ${out}`);
        if (expected === 'succeeded' && b.slots[b.booted].image !== newestId) throw new Error('not running the new release');
        if (expected === 'rolledBack' && b.slots[b.booted].image !== wasRunning) throw new Error('not back on the old image');
        if (expected === 'rolledBack' && (await b.store.load()).rolledBack.length !== before + 1) throw new Error('rollback not remembered');
      }
    }
    await checkInvariants(w);
  }
  toString(): string { return `update(crash ${this.crashAfter ?? 'never'})`; }
}

class PowerCutCommand implements fc.AsyncCommand<object, World> {
  check(): boolean { return true; }
  async run(_m: object, w: World): Promise<void> {
    await recover(w);
    await checkInvariants(w);
  }
  toString(): string { return 'powerCut'; }
}

t.test('crash at any step: always a verified slot, and the next update completes', async (t) => {
  const commands = [
    fc.boolean().map((h) => new PublishCommand(h)),
    fc.option(fc.nat({ max: 24 }), { nil: null, freq: 3 }).map((c) => new UpdateCommand(c)),
    fc.constant(new PowerCutCommand()),
  ];
  let runs = 0;
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 1, max: 3 }), fc.commands(commands, { maxCommands: 14 }), async (tries, cmds) => {
      runs++;
      const w: World = { board: new SimBoard(), releases: [], healthy: new Set(), tries };
      await fc.asyncModelRun(() => ({ model: {}, real: w }), cmds);
      // the next update (a new healthy release, no crash) completes
      const fresh = makeRelease(w.releases.length + 1, true);
      w.releases.push(fresh);
      w.healthy.add(releaseIdOf(fresh));
      const r = await runUpdateCycle(() => agentFor(w), { maxReboots: 8 });
      if (r.finished.at(-1)?.outcome !== 'succeeded') throw new Error(`final update: ${JSON.stringify(r.finished.at(-1))}`);
      if (w.board.slots[w.board.booted].image !== releaseIdOf(fresh)) throw new Error('final update not running');
      await checkInvariants(w);
    }),
    { numRuns: 300 },
  );
  t.equal(runs >= 300, true, 'ran the model');
});

/** The service's retry: run cycles (no new check) until nothing is pending, as `slotflip daemon` does
 * after `retryAt`; a cycle that throws (a record save that failed) is simply run again. */
async function settle(w: World): Promise<void> {
  for (let round = 0; round < 40; round++) {
    try {
      const r = await runUpdateCycle(() => agentFor(w), { check: false, maxReboots: 8 });
      if (r.phase === 'idle' && (await w.board.store.load()).phase === 'idle') return;
    } catch {
      // e.g. the record could not be saved: the daemon logs it and retries
    }
  }
  throw new Error(`still pending in phase ${(await w.board.store.load()).phase} after 40 retries`);
}

/** One transient failure (not a power cut) at persistent operation `k` of an update, then a power
 * cut or not, then the daemon's retries. */
class FailStepCommand implements fc.AsyncCommand<object, World> {
  constructor(readonly failAfter: number[], readonly cutAfter: number | null) {}
  check(): boolean { return true; }
  async run(_m: object, w: World): Promise<void> {
    const b = w.board;
    const base = b.ops;
    for (const k of this.failAfter) b.failAt.add(base + k);
    if (this.cutAfter !== null) b.crashAt = base + this.cutAfter;
    try {
      await runUpdateCycle(() => agentFor(w), { maxReboots: 8 });
    } catch {
      // a failed save: the service retries
    }
    b.failAt.clear();
    if (b.dead) {
      b.dead = false;
      b.crashAt = Infinity;
      b.powerCycle();
    }
    b.crashAt = Infinity;
    await settle(w);
    await checkInvariants(w);
  }
  toString(): string { return `failStep(${this.failAfter.join(',')}, cut ${this.cutAfter ?? 'never'})`; }
}

t.test('transient failures at any step (and a power cut after): never a state without a good slot, nothing commits a bad slot', async (t) => {
  const commands = [
    fc.boolean().map((h) => new PublishCommand(h)),
    fc.option(fc.nat({ max: 24 }), { nil: null, freq: 3 }).map((c) => new UpdateCommand(c)),
    fc.tuple(fc.array(fc.nat({ max: 24 }), { minLength: 1, maxLength: 3 }), fc.option(fc.nat({ max: 30 }), { nil: null })).map(([f, c]) => new FailStepCommand(f, c)),
    fc.constant(new PowerCutCommand()),
  ];
  let runs = 0;
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 1, max: 3 }), fc.commands(commands, { maxCommands: 12 }), async (tries, cmds) => {
      runs++;
      const w: World = { board: new SimBoard(), releases: [], healthy: new Set(), tries };
      await fc.asyncModelRun(() => ({ model: {}, real: w }), cmds);
      const fresh = makeRelease(w.releases.length + 1, true);
      w.releases.push(fresh);
      w.healthy.add(releaseIdOf(fresh));
      await runUpdateCycle(() => agentFor(w), { maxReboots: 8 });
      await settle(w);
      if (w.board.slots[w.board.booted].image !== releaseIdOf(fresh)) throw new Error(`final update not running: ${JSON.stringify((await w.board.store.load()).history.at(-1))}`);
      await checkInvariants(w);
    }),
    { numRuns: 200 },
  );
  t.equal(runs >= 200, true, 'ran the model');
});

t.test('exhaustive sweep: one transient failure at every operation of an update, healthy and unhealthy', async (t) => {
  let cases = 0;
  for (const tries of [1, 3]) {
    for (const healthy of [true, false]) {
      for (let k = 0; k < 30; k++) {
        const w: World = { board: new SimBoard(), releases: [], healthy: new Set(), tries };
        await new PublishCommand(healthy).run({}, w);
        await new FailStepCommand([k], null).run({}, w);
        const rec = await w.board.store.load();
        const last = rec.history.at(-1);
        if (last?.outcome === 'succeeded') t.equal(w.board.slots[w.board.booted].image, releaseIdOf(w.releases[0]!), `k=${k}: running what it committed`);
        else t.equal(w.board.slots[w.board.booted].image, 'factory', `tries ${tries}, ${healthy ? 'healthy' : 'unhealthy'}, failure at op ${k}: back on the factory slot`);
        if (!healthy) t.not(last?.outcome, 'succeeded', `k=${k}: an unhealthy release never commits`);
        await new PublishCommand(true).run({}, w);
        await new UpdateCommand(null).run({}, w);
        t.equal(w.board.slots[w.board.booted].image, releaseIdOf(w.releases.at(-1)!), `tries ${tries}, ${healthy ? 'healthy' : 'unhealthy'}, failure at op ${k}: next update lands`);
        cases++;
      }
    }
  }
  t.equal(cases, 120);
});

t.test('exhaustive sweep: a power cut at every operation of an update, every tries setting', async (t) => {
  let cases = 0;
  for (const tries of [1, 2, 3]) {
    for (const healthy of [true, false]) {
      for (let crash = 0; crash < 40; crash++) {
        const w: World = { board: new SimBoard(), releases: [], healthy: new Set(), tries };
        await new PublishCommand(healthy).run({}, w);
        await new UpdateCommand(crash).run({}, w);
        await new PublishCommand(true).run({}, w);
        await new UpdateCommand(null).run({}, w);
        t.equal(w.board.slots[w.board.booted].image, releaseIdOf(w.releases.at(-1)!), `tries ${tries}, ${healthy ? 'healthy' : 'unhealthy'}, crash at op ${crash}: next update lands`);
        cases++;
      }
    }
  }
  t.equal(cases, 240);
});

t.test('a bootloader that ignores the environment: a power cut at every operation, always safe, then the fixed board updates', async (t) => {
  let claimed = 0;
  for (const tries of [1, 2, 3]) {
    for (let crash = 0; crash < 40; crash++) {
      const w: World = { board: new SimBoard(), releases: [], healthy: new Set(), tries };
      const b = w.board;
      b.frozen = 'A';
      b.everFrozen = true;
      await new PublishCommand(true).run({}, w);
      b.crashAt = b.ops + crash;
      const r = await runUpdateCycle(() => agentFor(w), { maxReboots: 8 });
      const crashed = b.dead;
      if (crashed) await recover(w);
      else {
        b.crashAt = Infinity;
        t.equal(r.finished.at(-1)?.reason?.code, 'DAEMON_BOOTLOADER_IGNORED_ENV', `tries ${tries}, no crash: claimed`);
      }
      await checkInvariants(w);
      const rec = await b.store.load();
      for (const h of rec.history) {
        t.match(h, { outcome: 'failed', reason: { code: 'DAEMON_BOOTLOADER_IGNORED_ENV' } }, `tries ${tries}, crash at op ${crash}: the only verdict is the device fault`);
        claimed++;
      }
      if (rec.history.length > 0) t.equal(b.slots.B.state, 'bad', 'the ignored trial slot is marked bad');
      // the board is fixed (its bootloader reads the environment again): a newer release lands
      b.frozen = undefined;
      await new PublishCommand(true).run({}, w);
      await new UpdateCommand(null).run({}, w);
      t.equal(b.slots[b.booted].image, releaseIdOf(w.releases.at(-1)!), `tries ${tries}, crash at op ${crash}: after the fix the next update lands`);
      if (!crashed) break; // the whole attempt ran uncut: later crash points cut nothing more
    }
  }
  t.ok(claimed > 0);
});

t.test('the simulation catches an unsafe order (the model test can fail)', async (t) => {
  // an installer that skips the read-back would let a torn image be armed: the invariant check sees it
  const w: World = { board: new SimBoard(), releases: [makeRelease(1, true)], healthy: new Set(), tries: 1 };
  const b = w.board;
  const agent = agentFor(w);
  // sabotage: mark-bad is "forgotten", so the write lands on a bootable slot
  (agent as unknown as { d: { bootControl: BootControl } }).d.bootControl.markBad = async () => undefined;
  b.crashAt = Infinity;
  await agent.runOnce();
  t.match(b.violations.join(';'), /wrote to slot B while it was good/);
});

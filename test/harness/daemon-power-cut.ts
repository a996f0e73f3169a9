/**
 * Power cuts on a real emulated board with the real components (file state store, boot-control
 * backend on the board's files, file slot writer, installer, TUF client): the power is cut at the
 * N-th persistent operation of an update — a record save, a bootloader write, a slot write or
 * flush, the reboot — for every N until the update completes uncut. From the cut on every
 * persistent operation fails (nothing more reaches the disk); then the board power-cycles and a new
 * agent resumes from what was saved.
 *
 * After every cut: the board boots (a complete, verified image), nothing is left pending, and the
 * next update completes.
 */
import type { Test } from 'tap';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createBoard, powerCycle, boardStatus, makeTestImage, type BoardBackend } from '../../hal/board.js';
import { createBootControl } from '../../hal/registry.js';
import { createSlotWriter } from '../../hal/file-slot.js';
import { writeFileAtomic } from '../../hal/atomic-file.js';
import { SlotflipError } from '../../hal/errors.js';
import type { BootControl, SlotName } from '../../hal/boot-control.js';
import type { SlotWriter } from '../../hal/slot-writer.js';
import { initRepo, addRelease } from '../../manifests/repo.js';
import { resolveConfig, type Config } from '../../daemon/config.js';
import { createAgent } from '../../daemon/compose.js';
import { runUpdateCycle } from '../../daemon/agent.js';
import { FileStateStore } from '../../daemon/state-store.js';

const SLOT_SIZE = 128 * 1024;

class PowerCut {
  ops = 0;
  constructor(public at: number) {}
  get tripped(): boolean { return this.ops > this.at; }
  op(what: string): void {
    if (this.ops++ >= this.at) throw new SlotflipError('TEST_POWER_CUT', `power cut at op ${this.at} (${what})`);
  }
}

function cutBoot(b: BootControl, cut: PowerCut): BootControl {
  return {
    backend: b.backend,
    bootedSlot: () => b.bootedSlot(),
    slotState: (s) => b.slotState(s),
    markBad: async (s) => { cut.op('markBad'); await b.markBad(s); },
    armTrial: async (s, n) => { cut.op('armTrial'); await b.armTrial(s, n); },
    commit: async (s) => { cut.op('commit'); await b.commit(s); },
  };
}

function cutSlot(w: SlotWriter, cut: PowerCut): SlotWriter {
  return {
    slot: w.slot,
    path: w.path,
    capacity: () => w.capacity(),
    async open() {
      const h = await w.open();
      return {
        writeAt: async (d, o) => { cut.op('writeAt'); await h.writeAt(d, o); },
        readAt: (l, o) => h.readAt(l, o),
        flush: async () => { cut.op('flush'); await h.flush(); },
        close: () => h.close(),
      };
    },
  };
}

async function setup(dir: string, backend: BoardBackend): Promise<{ config: Config; boardDir: string; publish: (v: string, sv: number) => Promise<void> }> {
  const boardDir = join(dir, 'board');
  const board = await createBoard(boardDir, { backend, slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
  const repo = join(dir, 'repo');
  await initRepo(repo);
  const publish = async (version: string, sv: number) => {
    const image = join(dir, `${version}.img`);
    await writeFile(image, makeTestImage({ version, size: 40 * 1024 }));
    await addRelease(repo, { image, version, securityVersion: sv, hardware: ['acme,board'], channel: 'stable', compression: 'gzip', chunkSize: 8 * 1024 });
  };
  const config = await resolveConfig({
    deviceId: 'dev-cut', hardware: 'acme,board', stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'dir', path: join(repo, 'repository') }] },
    board: { slots: { A: { path: board.slots.A, size: SLOT_SIZE }, B: { path: board.slots.B, size: SLOT_SIZE } }, boot: board.bootConfig, tries: 2 },
  });
  return { config, boardDir, publish };
}

/** Registers the sweep for one board backend on `t`. */
export async function powerCutSweep(t: Test, backend: BoardBackend): Promise<void> {
  let completedUncut = false;
  const root = t.testdir();
  for (let at = 0; at < 60 && !completedUncut; at++) {
    const dir = join(root, `cut-${at}`);
    const { config, boardDir, publish } = await setup(dir, backend);
    await publish('1.1.0', 1);
    const cut = new PowerCut(at);
    const make = (c: PowerCut | undefined) => () => createAgent(config, {
      outbox: null,
      bootControl: c ? cutBoot(createBootControl(config.board.boot), c) : undefined,
      slots: c ? { A: cutSlot(createSlotWriter('A', config.board.slots.A), c), B: cutSlot(createSlotWriter('B', config.board.slots.B), c) } : undefined,
      store: new FileStateStore({ stateDir: config.stateDir, now: Date.now, writeFileAtomic: async (p, d) => { if (c) c.op('save'); await writeFileAtomic(p, d); } }),
      reboot: async () => { if (c) c.op('reboot'); await powerCycle(boardDir); },
    });

    let crashed = false;
    try {
      await runUpdateCycle(make(cut));
    } catch (e) {
      crashed = true;
      t.equal((e as { code?: string }).code, 'TEST_POWER_CUT', `cut ${at}: only the power cut stops the agent`);
    }
    if (!crashed) {
      completedUncut = true;
      t.equal((await boardStatus(boardDir)).images[(await boardStatus(boardDir)).booted as SlotName].version, '1.1.0', `cut ${at}: no cut reached, update done`);
      t.pass(`the whole update takes ${at} persistent operations`);
      break;
    }

    // the machine comes back: bootloader, then a fresh daemon on what was saved
    const boot = await powerCycle(boardDir);
    t.not(boot.booted, null, `cut ${at}: the board boots`);
    const recovered = await runUpdateCycle(make(undefined), { check: false });
    t.equal(recovered.phase, 'idle', `cut ${at}: nothing left pending`);
    const s = await boardStatus(boardDir);
    const running = s.images[s.booted as SlotName];
    t.ok(running.boots && ['1.0.0', '1.1.0'].includes(running.version ?? ''), `cut ${at}: runs a complete image (${running.version})`);
    const agent = await make(undefined)();
    const st = await agent.status();
    t.match(st.slots.find((x) => x.booted), { boot: { state: 'good' } }, `cut ${at}: the running slot is committed`);

    // the next update completes (a newer release, in case this one was rolled back)
    await publish('1.2.0', 2);
    const next = await runUpdateCycle(make(undefined));
    t.match(next.finished.at(-1), { outcome: 'succeeded', release: { version: '1.2.0' } }, `cut ${at}: the next update completes`);
    const after = await boardStatus(boardDir);
    t.equal(after.images[after.booted as SlotName].version, '1.2.0');
  }
  t.ok(completedUncut, 'the sweep reached an uncut update');
}

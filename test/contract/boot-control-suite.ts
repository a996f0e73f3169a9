/**
 * THE contract suite for boot-control backends (not a test file itself): every backend is driven
 * through an emulated board whose power cycle runs that bootloader's own selection logic on its real
 * on-disk environment. The uboot and grub backends go through the real fw_setenv/fw_printenv and
 * grub-editenv. Run by boot-control.test.ts, boot-control-uboot.test.ts, boot-control-grub.test.ts
 * (split only so tap runs them in parallel).
 */
import type { Test } from 'tap';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createBoard, powerCycle, writeSlotImage, makeTestImage, corruptEnv, type BoardBackend, type PowerCycleResult } from '../../hal/board.js';
import { createBootControl, type GuardedBootControl } from '../../hal/registry.js';
import { checkSlotImage } from '../../hal/image.js';
import type { SlotName } from '../../hal/boot-control.js';

export interface Case {
  name: string;
  backend: BoardBackend;
  convention?: string;
  /** has a single environment block a power cut can tear (fault hook). */
  tearable: boolean;
}


const SLOT_SIZE = 64 * 1024;
const IMAGE_SIZE = 48 * 1024;
const NEW = makeTestImage({ version: '2.0.0', size: IMAGE_SIZE });

interface Harness {
  dir: string;
  bc: GuardedBootControl;
  /** a reboot by the OS (`trial`: the reboot right after armTrial, with the backend's argument). */
  reboot(opts?: { trial?: boolean }): Promise<PowerCycleResult>;
  /** a power cut: no reboot argument, no daemon action afterwards. */
  powerCut(): Promise<PowerCycleResult>;
}

/** A temp dir on tmpfs when there is one: the boards fsync every write like a bootloader, which on
 * this machine's disk costs ~4x the test time and proves nothing more. Removed in teardown. */
async function boardDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'slotflip-board-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function setup(t: Test, c: Case): Promise<Harness> {
  const dir = await boardDir(t);
  const board = await createBoard(dir, { backend: c.backend, ...(c.convention ? { convention: c.convention } : {}), slotSize: SLOT_SIZE });
  const bc = createBootControl(board.bootConfig);
  await bc.commit(await bc.bootedSlot()); // the daemon confirms the factory boot
  const afterBoot = async (r: PowerCycleResult) => {
    // what the daemon does on every healthy boot of a committed slot (rauc-mark-good's job)
    if (r.booted && (await bc.slotState(r.booted)).state === 'good') await bc.commit(r.booted);
    return r;
  };
  return {
    dir,
    bc,
    reboot: async (opts = {}) => afterBoot(await powerCycle(dir, opts.trial ? { rebootArgument: (await bc.rebootArgument()) ?? '' } : {})),
    powerCut: () => powerCycle(dir),
  };
}

async function install(h: Harness, slot: SlotName, tries: number, image = NEW): Promise<void> {
  await h.bc.markBad(slot);
  await writeSlotImage(h.dir, slot, image);
  await h.bc.armTrial(slot, tries);
}

/** bytes of every bootloader-visible file (env, entries, state), for "changes nothing" checks. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (!/^(slot-[ab]\.img|boot\.log|cmdline)$/.test(e.name)) out[p.slice(dir.length)] = (await readFile(p)).toString('base64');
    }
  };
  await walk(dir);
  return out;
}

export function runBootControlContract(t: Test, cases: readonly Case[]): void {
for (const c of cases) {
  t.test(c.name, async (t) => {
    t.test('a fresh board boots committed slot A; B is bad', async (t) => {
      const h = await setup(t, c);
      t.equal(await h.bc.bootedSlot(), 'A');
      t.match(await h.bc.slotState('A'), { state: 'good', primary: true });
      t.match(await h.bc.slotState('B'), { state: 'bad', primary: false });
      for (let i = 0; i < 3; i++) t.equal((await h.reboot()).booted, 'A');
    });

    t.test('a trial boots the new slot once', async (t) => {
      const h = await setup(t, c);
      await install(h, 'B', 1);
      t.match(await h.bc.slotState('B'), { state: 'trial' });
      const r = await h.reboot({ trial: true });
      t.equal(r.booted, 'B');
      t.equal(r.version, '2.0.0');
      t.equal(await h.bc.bootedSlot(), 'B');
      t.match(await h.bc.slotState('B'), { state: 'trial' });
      t.match(await h.bc.slotState('A'), { state: 'good' });
      t.equal((await h.reboot()).booted, 'A', 'unconfirmed: back to A');
      t.not((await h.bc.slotState('B')).state, 'good');
    });

    t.test('an unconfirmed trial falls back after its tries, and stays fallen back', async (t) => {
      const h = await setup(t, c);
      const tries = Math.min(3, h.bc.maxTries);
      await install(h, 'B', tries);
      for (let i = 0; i < tries; i++) t.equal((await h.reboot({ trial: i === 0 })).booted, 'B', `trial boot ${i + 1}`);
      for (let i = 0; i < 3; i++) t.equal((await h.reboot()).booted, 'A', `after the tries ${i + 1}`);
      t.not((await h.bc.slotState('B')).state, 'good');
      t.match(await h.bc.slotState('A'), { state: 'good', primary: true });
    });

    t.test('commit is idempotent and makes the slot the primary', async (t) => {
      const h = await setup(t, c);
      await install(h, 'B', 2);
      t.equal((await h.reboot({ trial: true })).booted, 'B');
      await h.bc.commit('B');
      const before = await snapshot(h.dir);
      await h.bc.commit('B');
      t.same(await snapshot(h.dir), before, 'second commit wrote nothing');
      t.match(await h.bc.slotState('B'), { state: 'good', primary: true });
      for (let i = 0; i < 4; i++) t.equal((await h.reboot()).booted, 'B');
      // and the next update goes the other way
      await install(h, 'A', 1, makeTestImage({ version: '3.0.0', size: IMAGE_SIZE }));
      const r = await h.reboot({ trial: true });
      t.equal(r.booted, 'A');
      t.equal(r.version, '3.0.0');
      await h.bc.commit('A');
      t.equal((await h.reboot()).booted, 'A');
    });

    t.test('a bad slot is never chosen', async (t) => {
      const h = await setup(t, c);
      await h.bc.markBad('B');
      await writeSlotImage(h.dir, 'B', NEW);
      for (let i = 0; i < 4; i++) t.equal((await h.reboot({ trial: true })).booted, 'A', 'marked bad, complete image: still A');
      // armed, then abandoned before the reboot
      await h.bc.armTrial('B', 1);
      await h.bc.markBad('B');
      t.equal((await h.bc.slotState('B')).state, 'bad');
      for (let i = 0; i < 3; i++) t.equal((await h.reboot({ trial: true })).booted, 'A', 'abandoned trial: A');
      // a kernel that never comes up uses up its tries within one power cycle and falls back
      await install(h, 'B', Math.min(2, h.bc.maxTries), makeTestImage({ version: '2.1.0', size: IMAGE_SIZE, boots: false }));
      const r = await h.reboot({ trial: true });
      t.equal(r.booted, 'A');
      t.ok(r.attempts.some((a) => a.slot === 'B' && !a.ok), 'B was attempted and failed');
      const after = await h.reboot();
      t.equal(after.booted, 'A');
      t.notOk(after.attempts.some((a) => a.slot === 'B'), 'B not attempted again');
      await t.rejects(h.bc.markBad('A'), { code: 'HAL_MARK_BOOTED_BAD' }, 'the booted slot cannot be marked bad without a good fallback');
    });

    t.test('armTrial refuses without a good fallback and rejects bad tries', async (t) => {
      const h = await setup(t, c);
      await t.rejects(h.bc.armTrial('A', 1), { code: 'HAL_NO_FALLBACK' });
      await t.rejects(h.bc.armTrial('B', 0), { code: 'HAL_BAD_ARGUMENT' });
      await t.rejects(h.bc.armTrial('B', 1.5), { code: 'HAL_BAD_ARGUMENT' });
    });

    // The daemon's install order, with a power cut after every step: whatever booted must hold a
    // complete image (the old one, or the new one once armed).
    const steps: Array<[string, (h: Harness) => Promise<unknown>]> = [
      ['markBad(B)', (h) => h.bc.markBad('B')],
      ['half the image written', (h) => writeSlotImage(h.dir, 'B', NEW, IMAGE_SIZE / 2)],
      ['whole image written', (h) => writeSlotImage(h.dir, 'B', NEW)],
      ['armTrial(B)', (h) => h.bc.armTrial('B', 2)],
      ['reboot into the trial', (h) => h.reboot({ trial: true })],
      ['commit(B)', (h) => h.bc.commit('B')],
    ];
    for (let k = 0; k <= steps.length; k++) {
      const label = k === 0 ? 'before any step' : `after ${steps[k - 1]![0]}`;
      t.test(`power cut ${label} leaves a bootable complete image`, async (t) => {
        const h = await setup(t, c);
        // slot B starts with an older, complete image, so a wrong choice would be visible too
        await writeSlotImage(h.dir, 'B', makeTestImage({ version: '1.5.0', size: IMAGE_SIZE }));
        for (const [, step] of steps.slice(0, k)) await step(h);
        for (const tear of c.tearable && k > 0 ? ([undefined, 'newest', 'both'] as const) : [undefined]) {
          if (tear) await corruptEnv(h.dir, tear);
          const r = await h.powerCut();
          t.ok(r.booted, `${tear ? `torn env (${tear}): ` : ''}something booted (${r.reason})`);
          const check = await checkSlotImage(join(h.dir, r.booted === 'B' ? 'slot-b.img' : 'slot-a.img'), SLOT_SIZE);
          t.ok(check.boots, 'the booted slot holds a complete image');
          if (r.booted === 'B') t.equal(r.version, '2.0.0', 'B boots only with the new image, once armed');
          if (k < 4) t.equal(r.booted, 'A', 'nothing armed yet: A');
          if (k === steps.length && !tear) t.equal(r.booted, 'B', 'committed: B');
        }
      });
    }
  });
}
}

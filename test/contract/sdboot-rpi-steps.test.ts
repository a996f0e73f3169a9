// systemd-boot and rpi-tryboot do one boot-control call in several atomic file steps (entry renames,
// entry and loader.conf / autoboot.txt replacements). This cuts the power before EVERY step of a whole
// update cycle (confirm the factory boot, install B, trial, commit, install A, trial, commit) and
// checks what the firmware of the emulated board then boots: the committed slot, or the slot whose
// trial was being armed — never a slot marked bad, and never nothing. Both systemd-boot id rules
// (v258: ids without the counter; v252: whole file names) run the shared boot-control contract too.
import t, { type Test } from 'tap';
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createBoard, makeTestImage, powerCycle, writeSlotImage, type BoardDescription } from '../../hal/board.js';
import { withGuards, type GuardedBootControl } from '../../hal/backends/core.js';
import { createSystemdBootBackend, nodeSystemdBootIo } from '../../hal/backends/systemd-boot.js';
import { createRpiTrybootBackend } from '../../hal/backends/rpi-tryboot.js';
import { writeFileAtomic } from '../../hal/atomic-file.js';
import type { SlotName } from '../../hal/boot-control.js';
import { runBootControlContract } from './boot-control-suite.js';

runBootControlContract(t, [{ name: 'systemd-boot (v252 ids)', backend: 'systemd-boot', convention: 'v252', tearable: false }]);

const SLOT_SIZE = 64 * 1024;
const img = (version: string) => makeTestImage({ version, size: 40 * 1024 });

class PowerLost extends Error {}

async function boardDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'slotflip-steps-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A boot control whose file steps count down to a power cut (`cutAt` = steps allowed to run). */
function backendFor(b: BoardDescription, budget: { left: number }): GuardedBootControl {
  const step = () => {
    if (budget.left-- <= 0) throw new PowerLost('power cut');
  };
  const cfg = b.bootConfig;
  if (cfg.type === 'systemd-boot') {
    return withGuards(createSystemdBootBackend(cfg, {
      rename: async (from, to) => { step(); await nodeSystemdBootIo.rename(from, to); },
      writeFile: async (p, d) => { step(); await nodeSystemdBootIo.writeFile(p, d); },
    }));
  }
  if (cfg.type === 'rpi-tryboot') return withGuards(createRpiTrybootBackend(cfg, { writeFile: async (p, d) => { step(); await writeFileAtomic(p, d); } }));
  throw new Error(`no step seam for ${cfg.type}`);
}

interface Cycle {
  committed: SlotName;
  /** the slot an armTrial call has started on (until its commit returned). */
  arming?: SlotName;
  /** the slot a commit call has started on. */
  committing?: SlotName;
}

/** The daemon's cycle: confirm A; install B, trial, commit; install A, trial, commit. */
async function cycle(b: BoardDescription, bc: GuardedBootControl, st: Cycle): Promise<void> {
  await bc.commit('A');
  for (const [slot, version] of [['B', '2.0.0'], ['A', '3.0.0']] as const) {
    await bc.markBad(slot);
    await writeSlotImage(b.dir, slot, img(version));
    st.arming = slot;
    await bc.armTrial(slot, 2);
    const r = await powerCycle(b.dir, { rebootArgument: (await bc.rebootArgument()) ?? '' });
    if (r.booted !== slot) throw new Error(`trial of ${slot} did not boot: ${r.reason}`);
    st.committing = slot;
    await bc.commit(slot);
    st.committed = slot;
    st.arming = undefined;
    st.committing = undefined;
  }
}

for (const kind of [{ backend: 'systemd-boot', convention: 'v258' }, { backend: 'systemd-boot', convention: 'v252' }, { backend: 'rpi-tryboot' }] as const) {
  const label = `${kind.backend}${'convention' in kind ? '/' + kind.convention : ''}`;
  t.test(`${label}: a power cut before any file step leaves the committed slot or the armed trial booting`, async (t) => {
    // count the steps of an uncut cycle
    const dir0 = await boardDir(t);
    const b0 = await createBoard(dir0, { ...kind, slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
    const count = { left: Number.MAX_SAFE_INTEGER };
    await cycle(b0, backendFor(b0, count), { committed: 'A' });
    const steps = Number.MAX_SAFE_INTEGER - count.left;
    t.ok(steps >= 4, `an uncut cycle takes ${steps} file steps`);
    for (let k = 0; k < steps; k++) {
      const dir = await boardDir(t);
      const b = await createBoard(dir, { ...kind, slotSize: SLOT_SIZE, factoryVersion: '1.0.0' });
      const st: Cycle = { committed: 'A' };
      await t.rejects(cycle(b, backendFor(b, { left: k }), st), { message: 'power cut' }, `cut before step ${k + 1}`);
      for (let i = 0; i < 3; i++) {
        const r = await powerCycle(dir); // power back on (no reboot argument), three times
        // a started trial may use its tries; once its commit has started it may boot for good
        const ok = r.booted === st.committed || (r.booted !== null && r.booted === st.arming && (i < 2 || st.committing === st.arming));
        t.ok(ok, `cut before step ${k + 1}/${steps}, power-on ${i + 1}: booted ${r.booted} (committed ${st.committed}, arming ${st.arming ?? '-'}): ${r.reason}`);
      }
      // the next daemon run finishes from here: the backend still reads its own state
      const bc = backendFor(b, { left: Number.MAX_SAFE_INTEGER });
      t.ok(['good', 'trial', 'bad'].includes((await bc.slotState('A')).state) && ['good', 'trial', 'bad'].includes((await bc.slotState('B')).state), 'slot states still read');
    }
  });
}

/**
 * Issue 22, proven from outside: one failed step during the trial never costs the last good slot.
 * Each sequence runs on every boot backend through the built CLI only (see trial-device.ts; which
 * boards run in `npm test`: `runSequence`):
 *
 * 1. the trial reboot fails (reboot.command exits 1), then power cuts;
 * 2. health checks fail, the target is marked bad, then the reboot fails;
 * 3. health checks fail and the boot environment is unwritable for that run (EROFS on the mark-bad).
 *
 * After each: the last good slot (A) holds exactly the bytes it held before and is good + primary,
 * the failed release is not tried again, and the next good release installs and commits.
 */
import t, { type Test } from 'tap';
import { BOARD_KINDS, kindName, slotOf, trialDevice, type BoardKind, type TrialDevice } from './trial-device.js';

/** Drives the device the way its owner's daemon would: run a cycle; when it asked for a reboot that
 * happened, reboot; when it left work pending, power-cut (the worst time for it) — until it is idle on
 * slot A or `rounds` is spent. Returns the cycles' exit codes. */
async function settle(t: Test, dev: TrialDevice, rounds = 14): Promise<number[]> {
  const codes: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const r = await dev.update();
    codes.push(r.code);
    if (await dev.rebootIfAsked()) continue;
    const s = await dev.status();
    if (s.phase === 'idle' && s.bootedSlot === 'A') return codes;
    if (s.phase !== 'idle') await dev.powerCut();
  }
  t.fail(`still not idle on slot A after ${rounds} cycles: ${JSON.stringify(await dev.status())}`);
  return codes;
}

/** What must hold after every sequence. */
async function lastGoodKept(t: Test, dev: TrialDevice, shaA: string, failed: string): Promise<void> {
  const s = await dev.status();
  t.equal(s.bootedSlot, 'A', 'running the last good slot');
  t.equal(await dev.sha('A'), shaA, 'slot A byte-identical to before the attempt');
  t.match(slotOf(s, 'A').boot, { state: 'good', primary: true }, 'slot A good and primary');
  t.not(slotOf(s, 'B').boot.state, 'good', 'the failed release is not confirmed');
  t.equal(s.phase, 'idle');
  t.not(s.lastResult?.outcome, 'succeeded', `the failed release ${failed} did not commit`);
  // not tried again: another check starts nothing and touches nothing
  const again = await dev.update();
  t.not(again.code, 1, `a further check is no error (${again.stderr.slice(-300)})`);
  const after = await dev.status();
  t.equal(after.phase, 'idle', 'no new attempt');
  t.match(after.lastCheck?.detail ?? '', new RegExp(`${failed.replace(/\./g, '\\.')}.*(rolled back before|waiting for a newer release)`), 'the check says why it is not retried');
  t.equal(await dev.sha('A'), shaA, 'slot A still byte-identical');
}

/** The device still takes the next good release. */
async function nextReleaseLands(t: Test, dev: TrialDevice): Promise<void> {
  await dev.setRebootExit(0);
  await dev.publish('1.2.0', 2, true);
  const r = await dev.update();
  t.equal(r.code, 0, `1.2.0 installed (${r.stderr.slice(-300)})`);
  t.ok(await dev.rebootIfAsked(), 'asked for the trial reboot');
  const v = await dev.update(false);
  t.equal(v.code, 0);
  const s = await dev.status();
  t.equal(s.bootedSlot, 'B');
  t.match(slotOf(s, 'B'), { boot: { state: 'good', primary: true }, release: { version: '1.2.0' } }, '1.2.0 committed in slot B');
  t.match(s.lastResult, { outcome: 'succeeded', release: { version: '1.2.0' } });
}

const SEQUENCES = {
  'trial reboot fails, then power cuts': async (t: Test, dev: TrialDevice) => {
    await dev.setRebootExit(1);
    await dev.update();
    const s = await dev.status();
    t.equal(s.phase, 'rebooting', 'the attempt is kept, not ended with the trial armed');
    t.equal(s.attempt?.stepFailures, 1);
    await dev.powerCut();
    await settle(t, dev);
  },
  'health fails, mark-bad succeeds, reboot fails': async (t: Test, dev: TrialDevice) => {
    const r = await dev.update();
    t.equal(r.code, 0);
    t.ok(await dev.rebootIfAsked(), 'trial reboot');
    t.equal((await dev.status()).bootedSlot, 'B', 'the trial booted');
    await dev.setRebootExit(1);
    const v = await dev.update();
    const s = await dev.status();
    t.equal(s.phase, 'rollingBack', `the rollback is kept while its reboot fails (exit ${v.code})`);
    t.equal(slotOf(s, 'B').boot.state, 'bad', 'the failed trial is marked bad');
    // a second cycle in the same boot must not confirm the bad slot nor start anything from it
    await dev.update();
    t.equal(slotOf(await dev.status(), 'B').boot.state, 'bad', 'still bad: nothing committed it');
    await dev.powerCut();
    await settle(t, dev);
  },
  'health fails and the boot environment is unwritable for that run': async (t: Test, dev: TrialDevice) => {
    const r = await dev.update();
    t.equal(r.code, 0);
    t.ok(await dev.rebootIfAsked(), 'trial reboot');
    t.equal((await dev.status()).bootedSlot, 'B', 'the trial booted');
    const v = await dev.readOnlyBoard(() => dev.update());
    const s = await dev.status();
    t.equal(s.phase, 'rollingBack', `the rollback is kept after its mark-bad failed (exit ${v.code})`);
    t.equal(s.attempt?.stepFailures, 1);
    await settle(t, dev);
  },
};

export type SequenceName = keyof typeof SEQUENCES;

/**
 * Runs sequence `name` on boards: in `npm test` on `quick` (each sequence on three backends, all
 * eight backends covered across the three files: the whole matrix costs ~10 CPU minutes of CLI
 * starts); on every backend with SLOTFLIP_E2E_FULL=1 (`npm run test:e2e:trial`);
 * SLOTFLIP_E2E_KINDS=uboot/rauc,grub/rauc picks boards by name.
 */
export function runSequence(name: SequenceName, quick: string[]): void {
  const seq = SEQUENCES[name]!;
  const env = process.env.SLOTFLIP_E2E_KINDS?.split(',');
  const picked = env ?? (process.env.SLOTFLIP_E2E_FULL === '1' ? BOARD_KINDS.map(kindName) : quick);
  const kinds: BoardKind[] = BOARD_KINDS.filter((k) => picked.includes(kindName(k)));
  // a flow is ~15 CLI processes: ~20 s on an idle 2-core machine, minutes under load
  t.setTimeout(240_000 * kinds.length);
  t.test(name, async (t) => {
    for (const kind of kinds) {
      t.test(kindName(kind), async (t) => {
        const dev = await trialDevice(t.testdir(), kind);
        t.teardown(() => dev.server.stop());
        await dev.publish('1.1.0', 1, false);
        const shaA = await dev.sha('A');
        await seq(t, dev);
        await lastGoodKept(t, dev, shaA, '1.1.0');
        await nextReleaseLands(t, dev);
      });
    }
  });
}

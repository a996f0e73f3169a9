/**
 * Raspberry Pi tryboot: the trial starts only with `reboot "0 tryboot"`, a one-shot flag in the
 * firmware, and nothing on disk says whether a tryboot boot happened. A power cut between arming
 * the trial and the reboot (or a reset before the firmware read the flag) therefore comes back in the
 * committed slot with the trial still armed. Before, the daemon read that as "the trial never
 * confirmed" and rolled back a good release (power-cut harness, seed 44). Now the tryboot reboot is
 * re-issued, a bounded number of times (MAX_ONE_SHOT_TRIAL_REBOOTS): a trial kernel that hangs before
 * the daemon runs looks the same, and must still roll back.
 *
 * Real agent, runner and machine; the emulated Pi firmware (hal/board.ts) reads autoboot.txt as the
 * documented firmware does; the rpi-tryboot backend writes it.
 */
import t from 'tap';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { powerCycle, boardStatus } from '../../hal/board.js';
import { runUpdateCycle } from '../../daemon/agent.js';
import { MAX_ONE_SHOT_TRIAL_REBOOTS } from '../../daemon/machine.js';
import { agentDevice } from '../harness/agent-device.js';

/** An rpi-tryboot device (one trial boot armed) with release 1.1.0 published. */
async function device(dir: string, opts: { boots: boolean }) {
  const d = await agentDevice(dir, 'rpi-tryboot', { tries: 1, ...(opts.boots ? {} : { boots: false }) });
  const trybootBoots = async () => (await readFile(join(d.boardDir, 'boot.log'), 'utf8')).split('\n').filter((l) => l.includes('"slot":"B"')).length;
  return { ...d, trybootBoots };
}

t.test('a power cut before the tryboot reboot: the reboot is issued again and the good release commits', async (t) => {
  const d = await device(t.testdir(), { boots: true });
  let cuts = 1;
  const reboot = async (arg: string | undefined) => {
    d.boot.id++;
    // the first reboot request never happens: the power fails first, the next power-on is normal
    if (cuts-- > 0) await powerCycle(d.boardDir);
    else await powerCycle(d.boardDir, { rebootArgument: arg ?? '' });
  };
  const r = await runUpdateCycle(() => d.agent(reboot));
  t.match(r.finished, [{ outcome: 'succeeded', release: { version: '1.1.0' } }], 'not rolled back: the lost tryboot reboot was re-issued');
  t.equal((await boardStatus(d.boardDir)).booted, 'B', 'the Pi runs 1.1.0 from B');
  t.equal(await d.trybootBoots(), 1, 'B was booted once, by the re-issued tryboot reboot');
});

t.test('a trial kernel that never comes up still rolls back after a bounded number of tryboot boots', async (t) => {
  const d = await device(t.testdir(), { boots: false });
  const r = await runUpdateCycle(() => d.agent(async (arg) => { d.boot.id++; await powerCycle(d.boardDir, { rebootArgument: arg ?? '' }); }), { maxReboots: 8 });
  t.match(r.finished, [{ outcome: 'rolledBack', release: { version: '1.1.0' }, reason: { code: 'DAEMON_TRIAL_NOT_CONFIRMED' } }], 'rolled back');
  t.equal((await boardStatus(d.boardDir)).booted, 'A', 'the Pi runs the committed 1.0.0');
  t.equal(await d.trybootBoots(), MAX_ONE_SHOT_TRIAL_REBOOTS, `the hanging trial got exactly ${MAX_ONE_SHOT_TRIAL_REBOOTS} tryboot boots, never a loop`);
});

/**
 * Issue 22: a booted trial with no update in flight (here: the state directory was lost after the
 * trial reboot) is validated, never used as the source of an update. Driven through the built CLI.
 */
import t from 'tap';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { BOARD_KINDS, kindName, slotOf, trialDevice } from './trial-device.js';

const QUICK = ['emulated', 'uboot/rauc', 'grub/greenboot'];
const picked = process.env.SLOTFLIP_E2E_FULL === '1' ? BOARD_KINDS.map(kindName) : QUICK;
t.setTimeout(240_000 * picked.length);

for (const kind of BOARD_KINDS.filter((k) => picked.includes(kindName(k)))) {
  t.test(`${kindName(kind)}: an unconfirmed trial without a record`, async (t) => {
    const dev = await trialDevice(t.testdir(), kind);
    t.teardown(() => dev.server.stop());
    const shaA = await dev.sha('A');

    // a failing release is armed and booted, then the record is lost
    await dev.publish('1.1.0', 1, false);
    await dev.update();
    t.ok(await dev.rebootIfAsked(), 'trial reboot');
    t.equal((await dev.status()).bootedSlot, 'B');
    await rm(join(dev.dir, 'state'), { recursive: true, force: true });

    // the next cycle validates the trial (its health check fails): B marked bad, reboot to A; slot A
    // is never marked bad nor written
    await dev.update();
    t.equal(await dev.sha('A'), shaA, 'slot A untouched');
    const s = await dev.status();
    t.equal(slotOf(s, 'B').boot.state, 'bad', 'the failed trial is marked bad');
    t.equal(slotOf(s, 'A').boot.state, 'good', 'slot A still good');
    t.ok(await dev.rebootIfAsked(), 'rebooted into the good slot');
    const back = await dev.status();
    t.equal(back.bootedSlot, 'A');
    t.match(slotOf(back, 'A').boot, { state: 'good', primary: true });

    // a healthy trial without a record is committed instead
    await dev.publish('1.2.0', 2, true);
    await dev.update();
    t.ok(await dev.rebootIfAsked(), 'trial reboot of 1.2.0');
    await rm(join(dev.dir, 'state'), { recursive: true, force: true });
    await dev.update(false);
    const c = await dev.status();
    t.equal(c.bootedSlot, 'B');
    t.match(slotOf(c, 'B').boot, { state: 'good', primary: true }, 'the healthy trial is committed');
    t.equal(await dev.sha('A'), shaA, 'slot A (now the fallback) untouched');
  });
}

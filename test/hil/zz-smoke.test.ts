import t from 'tap';
import { createUbootBoard } from './uboot-board.js';
import { EmulatorTracker } from './emulator.js';
import { ubootReferenceWriter } from './reference-conventions.js';
for (const conv of ['rauc', 'mender'] as const)
t.test('smoke ' + conv, async (t) => {
  const tr = new EmulatorTracker(); t.teardown(() => tr.killAll());
  const dir = t.testdir();
  const b = await createUbootBoard({ dir, convention: conv });
  const w = ubootReferenceWriter(conv, b.fwEnvConfig, dir);
  for (let i = 0; i < 6; i++) {
    if (i == 2) await w.armTrial('B', 2);
    const r = await b.powerOn(tr);
    console.log(i, r.durationMs, r.outcome, r.envCopy, r.savedCopy, r.altboot);
    if (i == 0 && conv == 'rauc') console.log(r.console.split('autoboot')[1]);
    console.log(await b.readEnv());
  }
});

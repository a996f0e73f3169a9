/**
 * Issue 19: a release that can be refused without touching the device is refused before the inactive
 * slot — which holds the previous good release, the device's way back — is marked bad. Driven through
 * the built CLI: a missing payload, a truncated one, one whose first chunk is corrupt. A payload corrupt
 * further on is still caught before its chunk is written, but after the mark-bad (the documented
 * trade-off: proving all of it first would download it twice).
 */
import t, { type Test } from 'tap';
import { readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { slotOf, trialDevice, type TrialDevice } from './trial-device.js';

t.setTimeout(600_000);

async function payloadOf(dev: TrialDevice, version: string): Promise<string> {
  const dir = join(dev.dir, 'repo/repository/targets/releases', version);
  const [file] = (await readdir(dir)).filter((f) => f.endsWith('.zst'));
  return join(dir, file!);
}

/** A device that committed 1.1.0 into B: A holds the factory release, good, the fallback. */
async function committedDevice(t: Test): Promise<{ dev: TrialDevice; shaA: string }> {
  const dev = await trialDevice(t.testdir(), { backend: 'uboot', convention: 'rauc' });
  t.teardown(() => dev.server.stop());
  await dev.publish('1.1.0', 1, true);
  await dev.update();
  await dev.rebootIfAsked();
  await dev.update(false);
  const s = await dev.status();
  t.match(slotOf(s, 'B').boot, { state: 'good', primary: true }, '1.1.0 committed in B');
  t.equal(slotOf(s, 'A').boot.state, 'good', 'A (factory) good: the fallback');
  return { dev, shaA: await dev.sha('A') };
}

const CASES: Record<string, { code: RegExp; spoil: (path: string) => Promise<void> }> = {
  'the payload is missing': { code: /^INSTALL_HTTP_STATUS/, spoil: (p) => rm(p) },
  'the payload is truncated': { code: /^INSTALL_PAYLOAD_TRUNCATED/, spoil: (p) => truncate(p, 1000) },
  'the first chunk is corrupt': {
    // format 2: the frame's own signed hash (packedSha256) catches it before it is decoded
    code: /^INSTALL_PACKED_HASH_MISMATCH/,
    spoil: async (p) => {
      const b = await readFile(p);
      b[Math.floor(b.length / 40)] ^= 0xff; // inside the first of ~5 frames
      await writeFile(p, b);
    },
  },
};

for (const [name, c] of Object.entries(CASES)) {
  t.test(`${name}: the fallback slot stays good and untouched`, async (t) => {
    const { dev, shaA } = await committedDevice(t);
    // no delta files: these cases are about the full payload, which a device with a delta to use never reads
    await dev.publish('1.2.0', 2, true, ['--no-delta']);
    await c.spoil(await payloadOf(dev, '1.2.0'));
    await dev.update();
    const s = await dev.status();
    t.equal(s.phase, 'idle', 'no attempt started');
    t.match(s.lastCheck, { result: 'failed', detail: c.code }, 'the check says why');
    t.match(slotOf(s, 'A').boot, { state: 'good' }, 'A still good');
    t.equal(await dev.sha('A'), shaA, 'A byte-identical');
    t.match(slotOf(s, 'B').boot, { state: 'good', primary: true }, 'B still the committed slot');
  });
}

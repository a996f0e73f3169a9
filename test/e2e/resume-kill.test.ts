/**
 * Resume after the process dies (issue 14): a real `slotflip daemon` downloading a release from a
 * real HTTP server is SIGKILLed at 25 %, 50 % and 75 % of the payload, then started again. It must
 * resume from what is already on the slot (re-hashed), not from chunk 0: the server's byte counter
 * says the device paid for at most 1.05 × the payload plus one chunk, and slot B holds the image.
 * A v1 release (no per-frame `packedSha256`; no `.index` target beside the payload) proves its
 * payload target's signed SHA-256 over the compressed stream: a new process cannot continue that
 * hash, so it re-reads the part before the kill point once to hash it (issue 19; not decoded, not
 * written): its bound adds those bytes. A v2 release keeps the 1.05x bound.
 * The release's chunk index (format 2) is fetched once: the restarted daemon re-verifies its cached
 * copy in the state directory instead of fetching it again.
 */
import t from 'tap';
import { readdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { startMosquitto } from '../harness/mosquitto.js';
import { resumeAfterKill, setupDownload } from './scenarios.js';

const broker = await startMosquitto();
t.teardown(() => broker.stop());

for (const pct of [25, 50, 75]) {
  t.test(`SIGKILL at ${pct} % of the download resumes from the slot (<= 1.05x payload + 1 chunk served)`, async (t) => {
    const dir = t.testdir();
    const env = await setupDownload(dir, { brokerUrl: broker.url, deviceId: `dev-kill-${pct}` });
    t.teardown(() => env.srv.stop());
    const r = await resumeAfterKill(env, [pct / 100]);
    t.comment(JSON.stringify({ killAt: pct, ...r.figures }));
    t.equal(r.slotSha256, env.rel.imageSha256, 'slot B holds the image after the resumed download');
    t.ok(r.resumedFromChunk > 0, `resumed from chunk ${r.resumedFromChunk}, not 0`);
    t.equal(env.srv.requests.filter((q) => q.path.endsWith('.index')).length, 1, 'the chunk index was fetched once: the restarted daemon used its verified cache');
    const v1 = !(await readdir(dirname(env.rel.payloadPath))).some((f) => f.endsWith('.index'));
    const bound = r.figures.bound + (v1 ? Math.ceil((pct / 100 + 0.1) * env.rel.length) + env.chunkSize : 0);
    t.ok(r.figures.served <= bound, `served ${r.figures.served} bytes <= ${bound} (1.05x payload ${env.rel.length} + one chunk${v1 ? ' + the v1 prefix re-read for the target hash' : ''})`);
  });
}

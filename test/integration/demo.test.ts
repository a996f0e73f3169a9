// The demo's loop, driven from a test: release 1.1 commits, release 1.2 fails its health check and
// rolls back; asserts the board's final slot, the committed securityVersion, the rollback reason and
// what the fleet saw on the broker.
import t from 'tap';
import { Writable } from 'node:stream';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runDemo } from '../../daemon/demo.js';
import { boardStatus } from '../../hal/board.js';

t.test('demo: 1.1 commits, 1.2 rolls back with the failing check named', async (t) => {
  const dir = t.testdir();
  let text = '';
  const out = new Writable({ write(c, _e, done) { text += c.toString(); done(); } });
  const r = await runDemo({ dir, out, imageSize: 2 << 20, compression: 'gzip' });
  t.ok(r.ok, 'demo reports success');
  const [good, bad] = r.steps;
  t.equal(good?.outcome, 'succeeded');
  t.equal(good?.bootedVersion, '1.1.0');
  t.equal(bad?.outcome, 'rolledBack');
  t.match(bad?.reason ?? '', /health check failed: application/);
  t.equal(bad?.committedSecurityVersion, 1, 'the rolled-back release did not raise the counter');

  const board = await boardStatus(join(dir, 'board'));
  t.equal(board.booted, 'B', 'the board runs slot B');
  t.equal(board.images.B.version, '1.1.0', 'slot B holds 1.1.0');
  t.equal(board.images.A.version, '1.2.0', 'slot A still holds the rejected 1.2.0');

  const types = r.brokerEvents.map((e) => `${e.type}@${e.release ?? ''}`);
  t.ok(types.indexOf('UpdateInstalled@1.1.0') < types.indexOf('UpdateCommitted@1.1.0'), 'installed is reported before committed');
  t.notOk(types.includes('UpdateCommitted@1.2.0'), '1.2.0 is never reported committed');
  t.ok(types.includes('UpdateRolledBack@1.2.0'));
  const seqs = r.brokerEvents.map((e) => e.seq);
  t.same(seqs, [...seqs].sort((a, b) => a - b), 'events arrive in sequence order');

  t.match(text, /download +\[#+\]/, 'a progress bar was drawn');
  t.match(text, /validating +→ rollingBack/, 'state changes are printed');
  t.match(text, /demo: OK/);
  const state = JSON.parse(await readFile(join(dir, 'device-state', 'state.json'), 'utf8').catch(() => '{}')) as Record<string, unknown>;
  t.ok(state, 'device state is readable');
});

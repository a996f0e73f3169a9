/**
 * The broker lane, single node, ejabberd 23.01 from Debian started by the harness as a child process on
 * loopback, driven with the built CLI: protocol fallback, v2 retained metadata, push → install →
 * commit, install from the HTTP repository after `fleet check` and by a late joiner. The body is
 * test/harness/single-node-lane.ts; the two-node cluster is `npm run test:brokers`.
 */
import t from 'tap';
import { brokerSkip, singleNodeLane } from '../harness/single-node-lane.js';

t.test('ejabberd: fallback, v2 retained metadata, push → install → commit, HTTP refresh', async (t) => {
  // npm test installs the broker (test/ci/deps.sh): one missing is a broken set-up, never a silent skip
  const missing = await brokerSkip('ejabberd');
  if (missing) return t.fail(missing);
  return singleNodeLane(t, 'ejabberd');
});

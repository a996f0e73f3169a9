// Topic layout, backoff arithmetic and the broker config fragment.
import t from 'tap';
import { Ajv } from 'ajv';
import { deviceTopics, metaTopic, metaFileOf, commandOf, isTopicLevel, META_FILTER } from '../../daemon/topics.js';
import { backoffDelay, brokerConfigSchema } from '../../daemon/mqtt.js';

t.test('topic layout v1', async (t) => {
  t.same(deviceTopics('dev-1'), {
    root: 'slotflip/v1/devices/dev-1',
    online: 'slotflip/v1/devices/dev-1/online',
    state: 'slotflip/v1/devices/dev-1/state',
    events: 'slotflip/v1/devices/dev-1/events',
    cmdCheck: 'slotflip/v1/devices/dev-1/cmd/check',
    cmdFilter: 'slotflip/v1/devices/dev-1/cmd/+',
  });
  t.equal(META_FILTER, 'slotflip/v1/meta/+');
  t.equal(metaTopic('1.root.json'), 'slotflip/v1/meta/1.root.json');
  t.equal(metaFileOf('slotflip/v1/meta/timestamp.json'), 'timestamp.json');
  for (const bad of ['slotflip/v1/meta/..', 'slotflip/v1/meta/a/b', 'slotflip/v1/meta/', 'slotflip/v1/meta/.hidden', 'slotflip/v1/other/x']) t.equal(metaFileOf(bad), undefined, bad);
  t.equal(commandOf(deviceTopics('d'), 'slotflip/v1/devices/d/cmd/check'), 'check');
  t.equal(commandOf(deviceTopics('d'), 'slotflip/v1/devices/e/cmd/check'), undefined);
  for (const bad of ['a/b', 'a+', '#', '', 'x'.repeat(129), '..', '-x'.replace('-', '.')]) t.notOk(isTopicLevel(bad), JSON.stringify(bad));
  t.throws(() => deviceTopics('dev/2'), RangeError);
  t.throws(() => metaTopic('../x'), RangeError);
});

t.test('backoff: exponential, capped, jittered between half and all of the base', async (t) => {
  const r = { minMs: 100, maxMs: 1000 };
  t.same([0, 1, 2, 3, 4, 10, 1000].map((n) => backoffDelay(n, r, () => 1)), [100, 200, 400, 800, 1000, 1000, 1000]);
  t.same([0, 1, 2, 3, 4].map((n) => backoffDelay(n, r, () => 0)), [50, 100, 200, 400, 500]);
  const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(3, r, Math.random)));
  t.ok(spread.size > 10, 'real jitter spreads a fleet out');
});

t.test('broker config schema', async (t) => {
  const v = new Ajv({ allErrors: true, useDefaults: true, strict: true }).compile(brokerConfigSchema);
  const c: Record<string, unknown> = { urls: ['mqtts://broker.example:8883'], tls: { ca: '/etc/slotflip/ca.pem', cert: '/etc/slotflip/dev.pem', key: '/etc/slotflip/dev.key' } };
  t.ok(v(c), JSON.stringify(v.errors));
  t.match(c, { protocolVersion: 5, keepaliveSeconds: 60, maxPacketSize: 262144, reconnect: { minMs: 1000, maxMs: 300000 } });
  t.notOk(v({ urls: ['mqtt://x'], tls: { cert: '/a' } }), 'cert without key');
  t.notOk(v({ urls: ['http://x'] }));
  t.notOk(v({ urls: ['mqtt://x'], protocolVersion: 3 }));
  t.notOk(v({ urls: ['mqtt://x'], password: 'inline' }), 'no inline secrets, unknown keys refused');
  t.notOk(v({ urls: [] }));
});

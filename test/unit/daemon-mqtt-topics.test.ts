// Topic layout, backoff arithmetic and the broker config fragment.
import t from 'tap';
import { Ajv } from 'ajv';
import { deviceTopics, metaTopic, metaFileOf, commandOf, isTopicLevel, META_FILTER, META_FILTERS, deviceLevel, deviceIdOfLevel, metaLevel, metaFileOfLevel } from '../../daemon/topics.js';
import { backoffDelay, brokerConfigSchema } from '../../daemon/mqtt.js';

t.test('topic layout v2: no dots in any level', async (t) => {
  t.same(deviceTopics('dev-1'), {
    root: 'slotflip/v2/devices/dev-1',
    online: 'slotflip/v2/devices/dev-1/online',
    state: 'slotflip/v2/devices/dev-1/state',
    events: 'slotflip/v2/devices/dev-1/events',
    cmdCheck: 'slotflip/v2/devices/dev-1/cmd/check',
    cmdFactoryReset: 'slotflip/v2/devices/dev-1/cmd/factory-reset',
    cmdFilter: 'slotflip/v2/devices/dev-1/cmd/+',
  });
  t.equal(deviceTopics('gw.7:a').root, 'slotflip/v2/devices/gw_2e7_3aa');
  t.equal(deviceIdOfLevel(deviceLevel('gw.7:a')), 'gw.7:a');
  t.equal(deviceTopics('dev-1', 'v1').root, 'slotflip/v1/devices/dev-1');
  t.equal(META_FILTER, 'slotflip/v2/meta/+');
  t.ok(META_FILTERS.includes('slotflip/v2/meta/timestamp'), 'timestamp subscribed exactly (RabbitMQ: no retained for wildcards)');
  t.equal(metaTopic('1.root.json'), 'slotflip/v2/meta/1_root');
  t.equal(metaTopic('timestamp.json'), 'slotflip/v2/meta/timestamp');
  t.equal(metaTopic('12.snapshot.json', 'v1'), 'slotflip/v1/meta/12.snapshot.json');
  for (const f of ['timestamp.json', '1.root.json', '7.snapshot.json', '3.targets.json', '2.my-role.json']) {
    const topic = metaTopic(f);
    t.match(topic.split('/').at(-1), /^[A-Za-z0-9_-]+$/, topic);
    t.equal(metaFileOf(topic), f, 'one-to-one');
    t.equal(metaFileOfLevel(metaLevel(f)!), f);
  }
  t.equal(metaFileOf('slotflip/v1/meta/timestamp.json'), 'timestamp.json', 'v1 still read');
  t.equal(metaLevel('2.role_x.json'), undefined, 'no v2 level: fetched over HTTP only');
  for (const bad of ['slotflip/v1/meta/..', 'slotflip/v1/meta/a/b', 'slotflip/v1/meta/', 'slotflip/v1/meta/.hidden', 'slotflip/v1/other/x', 'slotflip/v2/meta/a.b', 'slotflip/v2/meta/0_root', 'slotflip/v2/meta/']) t.equal(metaFileOf(bad), undefined, bad);
  t.equal(commandOf(deviceTopics('d'), 'slotflip/v2/devices/d/cmd/check'), 'check');
  t.equal(commandOf(deviceTopics('d'), 'slotflip/v2/devices/e/cmd/check'), undefined);
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
  t.equal(c.protocolVersion, undefined, 'absent: MQTT 5 with fallback to 3.1.1');
  t.match(c, { keepaliveSeconds: 60, maxRetainedMetadataBytes: 2097152, httpRefreshSeconds: 900, maxPacketSize: 262144, reconnect: { minMs: 1000, maxMs: 300000 } });
  t.notOk(v({ urls: ['mqtt://x'], tls: { cert: '/a' } }), 'cert without key');
  t.notOk(v({ urls: ['http://x'] }));
  t.notOk(v({ urls: ['mqtt://x'], protocolVersion: 3 }));
  t.notOk(v({ urls: ['mqtt://x'], password: 'inline' }), 'no inline secrets, unknown keys refused');
  t.notOk(v({ urls: [] }));
});

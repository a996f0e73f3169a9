// daemon/mqtt-connect.ts: TopicAliasLru stands in for lru-cache's LRUCache under MQTT.js's
// topic-alias-send.js; any sequence of the calls MQTT.js makes gives the same results on both.
import t from 'tap';
import fc from 'fast-check';
import { LRUCache } from 'lru-cache';
import { TopicAliasLru } from '../../daemon/mqtt-connect.js';

type Op = { op: 'get'; k: number } | { op: 'set'; k: number; v: string } | { op: 'clear' } | { op: 'keys' } | { op: 'size' };

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('get' as const), k: fc.integer({ min: 1, max: 12 }) }) },
  { weight: 5, arbitrary: fc.record({ op: fc.constant('set' as const), k: fc.integer({ min: 1, max: 12 }), v: fc.string({ maxLength: 3 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('clear' as const) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('keys' as const) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('size' as const) }) },
);

t.test('the same answers as lru-cache for get, set, clear, keys, size', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 8 }), fc.array(op, { maxLength: 60 }), (max, ops) => {
      const real = new LRUCache<number, string>({ max });
      const ours = new TopicAliasLru<number, string>({ max });
      for (const o of ops) {
        const a = o.op === 'get' ? real.get(o.k) : o.op === 'set' ? (real.set(o.k, o.v), real.size) : o.op === 'clear' ? (real.clear(), real.size) : o.op === 'keys' ? [...real.keys()] : real.size;
        const b = o.op === 'get' ? ours.get(o.k) : o.op === 'set' ? (ours.set(o.k, o.v), ours.size) : o.op === 'clear' ? (ours.clear(), ours.size) : o.op === 'keys' ? [...ours.keys()] : ours.size;
        if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`${JSON.stringify(o)}: lru-cache ${JSON.stringify(a)}, stand-in ${JSON.stringify(b)}`);
      }
    }),
    { numRuns: 3000 },
  );
  t.end();
});

t.test('getLruAlias as MQTT.js computes it: the least recently used alias is the last key', (t) => {
  const ours = new TopicAliasLru<number, string>({ max: 3 });
  ours.set(1, 'a').set(2, 'b').set(3, 'c');
  ours.get(1);
  t.same([...ours.keys()], [1, 3, 2], 'most recently used first');
  t.equal([...ours.keys()][ours.size - 1], 2, 'alias 2 is the least recently used');
  ours.set(4, 'd');
  t.equal(ours.get(2), undefined, 'the least recently used went when the fourth came');
  t.equal(ours.size, 3);
  t.end();
});

// Retained metadata from the broker: bounded memory, only what the trust client asks for, garbage
// refused on arrival, rejected copies dropped and refused until republished; the broker-first source
// that falls back to the repository.
import t from 'tap';
import { RetainedMeta, ProblemLog } from '../../daemon/retained-meta.js';
import { brokerFirstSource, refreshWithFallback } from '../../daemon/meta-source.js';
import { SlotflipError } from '../../hal/errors.js';

const doc = (version: number, pad = 0): Uint8Array => Buffer.from(JSON.stringify({ signed: { version }, pad: 'x'.repeat(pad) }));

t.test('holds only the newest of each role, roots bounded, a total cap', async (t) => {
  const view = new Map<string, Uint8Array>();
  const m = new RetainedMeta(view, { maxTotalBytes: 10_000, maxRoots: 3 });
  t.ok(m.accept('timestamp.json', 'v2', 't', doc(1)).ok);
  t.ok(m.accept('2.snapshot.json', 'v2', 't', doc(2)).ok);
  t.ok(m.accept('3.snapshot.json', 'v2', 't', doc(3)).ok);
  t.notOk(view.has('2.snapshot.json'), 'older snapshot dropped');
  t.notOk(m.accept('1.snapshot.json', 'v2', 't', doc(1)).ok, 'older snapshot refused');
  for (let i = 1; i <= 6; i++) m.accept(`${i}.root.json`, 'v2', 't', doc(i));
  t.same([...view.keys()].filter((k) => k.endsWith('root.json')).sort(), ['4.root.json', '5.root.json', '6.root.json']);
  for (let i = 0; i < 100; i++) t.equal(m.accept(`x${i}.bin`, 'v2', 't', doc(1)).ok, false);
  t.notOk(m.accept('snapshot.json', 'v2', 't', doc(1)).ok, 'unversioned non-timestamp files are never asked for');
  const big = m.accept('9.targets.json', 'v2', 't', doc(9, 20_000));
  t.match(big, { ok: false, code: 'DAEMON_MQTT_META_CAP' });
  t.ok(m.bytesHeld <= 10_000);
  m.accept('timestamp.json', 'v2', 't', new Uint8Array());
  t.notOk(view.has('timestamp.json'), 'empty retained message deletes');
});

t.test('garbage refused on arrival; a distrusted copy stays out until republished; v2 before v1', async (t) => {
  const view = new Map<string, Uint8Array>();
  const m = new RetainedMeta(view, { maxTotalBytes: 1 << 20, maxRoots: 32 });
  t.match(m.accept('2.root.json', 'v1', 'slotflip/v1/meta/2.root.json', Buffer.from('\x00garbage')), { ok: false, code: 'MANIFEST_PARSE' });
  t.notOk(view.has('2.root.json'));
  const v1 = doc(2, 1);
  const v2 = doc(2, 2);
  m.accept('2.root.json', 'v1', 'slotflip/v1/meta/2.root.json', v1);
  t.same(view.get('2.root.json'), v1);
  m.accept('2.root.json', 'v2', 'slotflip/v2/meta/2_root', v2);
  t.same(view.get('2.root.json'), v2, 'v2 read first');
  t.equal(m.distrust('2.root.json'), 'slotflip/v2/meta/2_root');
  t.notOk(view.has('2.root.json'));
  t.match(m.accept('2.root.json', 'v2', 'x', v2), { ok: false, code: 'DAEMON_MQTT_META_DISTRUSTED' }, 'same bytes after a reconnect: refused');
  t.ok(m.accept('2.root.json', 'v2', 'x', doc(2, 3)).ok, 'republished bytes: accepted');
});

t.test('problems are logged once per distinct cause', async (t) => {
  const p = new ProblemLog();
  t.ok(p.add({ code: 'MANIFEST_PARSE', file: 'a', topic: 'x', message: 'm', at: 1 }));
  t.notOk(p.add({ code: 'MANIFEST_PARSE', file: 'a', topic: 'x', message: 'm', at: 2 }));
  t.ok(p.add({ code: 'MANIFEST_SIGNATURE', file: 'a', topic: 'x', message: 'm', at: 3 }));
  p.clearFile('a');
  t.same(p.list(), []);
});

t.test('broker first, repository behind: newest timestamp wins, missing files fetched, rejected copies re-read', async (t) => {
  const broker = new Map<string, Uint8Array>([['timestamp.json', doc(5)], ['5.snapshot.json', Buffer.from('bad')]]);
  const repoFiles = new Map<string, Uint8Array>([['timestamp.json', doc(7)], ['5.snapshot.json', doc(5)], ['7.snapshot.json', doc(7)]]);
  const fetched: string[] = [];
  const src = brokerFirstSource(broker, { fetch: async (n) => { fetched.push(n); return repoFiles.get(n); } });
  t.same(JSON.parse(Buffer.from((await src.fetch('timestamp.json', 1e6))!).toString()).signed.version, 7, 'repository newer: it wins');
  broker.set('timestamp.json', doc(9));
  t.same(JSON.parse(Buffer.from((await src.fetch('timestamp.json', 1e6))!).toString()).signed.version, 9, 'broker newer: it wins');
  t.same(await src.fetch('7.snapshot.json', 1e6), doc(7), 'missing on the broker: repository');
  const dropped: string[] = [];
  let runs = 0;
  const r = await refreshWithFallback(src, { distrustMetadata: (f) => { dropped.push(f); broker.delete(f); }, metadataVerified: () => undefined }, async () => {
    runs++;
    const b = (await src.fetch('5.snapshot.json', 1e6))!;
    if (Buffer.from(b).toString() === 'bad') throw new SlotflipError('MANIFEST_PARSE', '5.snapshot.json is not valid UTF-8 JSON', { details: { where: '5.snapshot.json' } });
    return 'ok';
  });
  t.equal(r, 'ok');
  t.equal(runs, 2);
  t.same(dropped, ['5.snapshot.json']);
  await t.rejects(refreshWithFallback(src, undefined, async () => { throw new SlotflipError('MANIFEST_EXPIRED', 'x'); }), { code: 'MANIFEST_EXPIRED' }, 'nothing from the broker: no retry');
});

// One suite, every OutboxStore implementation (file, memory): what the Outbox relies on.
import t from 'tap';
import { readFile, writeFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Outbox, FileOutboxStore, MemoryOutboxStore, corruptSeqFloor, type OutboxStore } from '../../daemon/outbox.js';

interface Impl {
  name: string;
  make(t: { testdir(): string }): OutboxStore;
}

const impls: Impl[] = [
  { name: 'memory', make: () => new MemoryOutboxStore() },
  { name: 'file', make: (tt) => new FileOutboxStore(join(tt.testdir(), 'state')) },
];

for (const impl of impls) {
  t.test(impl.name, async (t) => {
    t.test('sequence numbers are monotonic and survive re-opening', async (t) => {
      const store = impl.make(t);
      const a = new Outbox({ store });
      t.same([await a.append({ type: 'A' }), await a.append({ type: 'B' })], [1, 2]);
      await a.ack(1);
      await a.ack(2);
      const b = new Outbox({ store });
      t.equal(await b.append({ type: 'C' }), 3, 'continues after a restart even when all were delivered');
      t.same((await b.pending()).map((e) => [e.seq, e.event.type]), [[3, 'C']]);
    });

    t.test('pending is ordered, ack is idempotent and persisted', async (t) => {
      const store = impl.make(t);
      const a = new Outbox({ store });
      for (const type of ['A', 'B', 'C']) await a.append({ type, detail: { n: type } });
      await a.ack(2);
      await a.ack(2);
      await a.ack(99);
      t.same((await a.pending()).map((e) => e.seq), [1, 3]);
      const b = new Outbox({ store });
      t.same((await b.pending()).map((e) => e.seq), [1, 3]);
      t.same((await b.entries()).map((e) => [e.seq, e.delivered]), [[1, false], [2, true], [3, false]]);
      t.same((await b.pending())[0]!.event, { type: 'A', detail: { n: 'A' } });
    });

    t.test('concurrent appends get distinct ordered seqs', async (t) => {
      const a = new Outbox({ store: impl.make(t) });
      const seqs = await Promise.all(Array.from({ length: 20 }, (_, i) => a.append({ type: 'E', i })));
      t.same(seqs, Array.from({ length: 20 }, (_, i) => i + 1));
      t.same((await a.pending()).map((e) => e.event.i), Array.from({ length: 20 }, (_, i) => i));
    });

    t.test('bounded: delivered dropped first, undelivered drops counted', async (t) => {
      const store = impl.make(t);
      const a = new Outbox({ store, maxEntries: 3 });
      await a.append({ type: 'A' });
      await a.append({ type: 'B' });
      await a.ack(2);
      await a.append({ type: 'C' });
      await a.append({ type: 'D' });
      t.same((await a.entries()).map((e) => e.seq), [1, 3, 4], 'the delivered #2 went first although #1 is older');
      await a.append({ type: 'E' });
      t.same((await a.pending()).map((e) => e.seq), [3, 4, 5]);
      const st = await new Outbox({ store, maxEntries: 3 }).stats();
      t.match(st, { nextSeq: 6, pending: 3, droppedDelivered: 1, droppedUndelivered: 1 });
    });

    t.test('events are copied at append time', async (t) => {
      const a = new Outbox({ store: impl.make(t) });
      const ev = { type: 'A', list: [1] };
      await a.append(ev);
      ev.list.push(2);
      t.same((await a.pending())[0]!.event.list, [1]);
      await t.rejects(a.append({ type: '' }), TypeError);
    });

    t.test('onAppend fires after the event is durable', async (t) => {
      const store = impl.make(t);
      const a = new Outbox({ store });
      const seen: number[] = [];
      const off = a.onAppend((e) => seen.push(e.seq));
      await a.append({ type: 'A' });
      off();
      await a.append({ type: 'B' });
      t.same(seen, [1]);
      t.equal((await store.load())?.nextSeq, 3);
    });
  });
}

t.test('file store: torn or corrupt file is quarantined, seqs stay monotonic', async (t) => {
  const dir = t.testdir();
  const store = new FileOutboxStore(dir, () => 1_700_000_000_000);
  const a = new Outbox({ store, now: () => 1_700_000_000_000 });
  await a.append({ type: 'A' });
  const path = join(dir, 'outbox.json');
  const good = await readFile(path, 'utf8');
  const flipped = good.replace('\\"A\\"', '\\"X\\"');
  t.not(flipped, good, 'the test really flips a byte of the body');
  await writeFile(path, flipped);
  const b = new Outbox({ store, now: () => 1_700_000_000_000 });
  const seq = await b.append({ type: 'B' });
  t.equal(seq, corruptSeqFloor(1_700_000_000_000));
  t.ok(seq > 1);
  t.match(await b.stats(), { recoveredFromCorruption: true });
  t.ok((await readdir(dir)).some((f) => f.startsWith('outbox.json.corrupt-')), 'corrupt copy kept for inspection');
  await writeFile(path, good.slice(0, 10));
  const c = new Outbox({ store, now: () => 1_700_000_000_001 });
  t.ok((await c.append({ type: 'C' })) > seq, 'a torn file also recovers above the last seq');
  t.same((await readdir(dir)).filter((f) => f.endsWith('.tmp')), [], 'no temp files left');
});

t.test('file store: a leftover temp file from a crashed write is ignored', async (t) => {
  const dir = t.testdir({ '.outbox.json.123.1.tmp': '{"half' });
  const a = new Outbox(dir);
  t.equal(await a.append({ type: 'A' }), 1);
});

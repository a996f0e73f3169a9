/**
 * Property test: whatever bytes the repository serves as timestamp, snapshot or targets (random
 * byte flips, truncations, JSON value swaps), a refresh either succeeds or fails with a registered
 * MANIFEST_* code — never an uncoded exception — and a failed refresh leaves the trusted directory
 * byte-identical.
 */
import t from 'tap';
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { RepoSim } from '../../manifests/sim.js';
import { TrustClient } from '../../manifests/client.js';
import { MANIFEST_CODES } from '../../manifests/codes.js';

const T0 = Date.parse('2026-06-01T00:00:00Z');

async function hashDir(dir: string): Promise<string> {
  const h = createHash('sha256');
  for (const n of (await readdir(dir)).sort()) h.update(n + '\0').update(await readFile(join(dir, n)));
  return h.digest('hex');
}

type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'value'; at: number; value: unknown };

function mutate(bytes: Uint8Array, m: Mutation): Uint8Array {
  const b = Buffer.from(bytes);
  if (m.kind === 'flip') {
    b[m.at % b.length]! ^= 1 << m.bit;
    return b;
  }
  if (m.kind === 'truncate') return b.subarray(0, m.at % b.length);
  // replace the n-th JSON value (any depth) with another value
  const doc = JSON.parse(b.toString()) as unknown;
  let n = m.at;
  const walk = (v: unknown): unknown => {
    if (n-- === 0) return m.value;
    if (Array.isArray(v)) return v.map(walk);
    if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x)]));
    return v;
  };
  return Buffer.from(JSON.stringify(walk(doc)));
}

const arbMutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('value' as const), at: fc.nat({ max: 40 }), value: fc.oneof(fc.constant(null), fc.integer({ min: -3, max: 5 }), fc.double(), fc.string({ maxLength: 5 }), fc.boolean(), fc.constant([]), fc.constant({})) }),
);

t.test('mutated metadata is accepted or rejected with a stable code, never anything else', async (t) => {
  const dir = t.testdir();
  const sim = new RepoSim(T0);
  const shipped = join(dir, 'root.json');
  await writeFile(shipped, sim.publishAll());
  const trusted = join(dir, 'trusted');
  const refresh = (): ReturnType<TrustClient['refresh']> => new TrustClient({ trustedDir: trusted, shippedRootPath: shipped, source: sim.source(), now: () => sim.now }).refresh();
  await refresh();
  sim.update();
  const good = new Map(sim.files);
  const codes = new Map<string, number>();
  let accepted = 0;
  await fc.assert(
    fc.asyncProperty(fc.constantFrom('timestamp.json', '2.snapshot.json', '2.targets.json', '2.root.json'), arbMutation, async (file, m) => {
      sim.files.clear();
      for (const [k, v] of good) sim.files.set(k, v);
      const base = file === '2.root.json' ? sim.files.get('1.root.json')! : sim.files.get(file)!;
      sim.files.set(file, mutate(base, m));
      const before = await hashDir(trusted);
      try {
        await refresh();
        accepted++;
        return true;
      } catch (e) {
        const code = (e as { code?: string }).code ?? 'UNCODED';
        codes.set(code, (codes.get(code) ?? 0) + 1);
        if (!(code in MANIFEST_CODES)) throw e;
        return (await hashDir(trusted)) === before;
      }
    }),
    { numRuns: 150, seed: 20261127 },
  );
  t.ok(codes.size >= 4, `rejections spread over ${[...codes.keys()].join(', ')}; ${accepted} accepted`);
});

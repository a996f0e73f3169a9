/**
 * `node dist/test/bench/heap-summary.js FILE.heapsnapshot [--top 30]`: what a V8 heap snapshot holds
 * (issue 16; `bench:memory --heap-snapshot DIR` writes one of the idle daemon). Prints the self
 * size by node type, the biggest kinds of object (type and constructor or system name), and the
 * loaded scripts' source text by origin — Node's own library (external strings: they live in the
 * node binary, not in the heap), slotflip's dist/, each npm package, and code made at run time
 * (`new Function`, e.g. a compiled Ajv validator). Self sizes only: no retainer analysis (open the
 * file in Chrome DevTools' Memory tab for that).
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values, positionals } = parseArgs({ options: { top: { type: 'string', default: '30' } }, allowPositionals: true });
if (positionals.length !== 1) throw new Error('usage: heap-summary.js FILE.heapsnapshot [--top N]');

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[]]; edge_fields: string[]; edge_types: [string[]] } };
  nodes: number[];
  edges: number[];
  strings: string[];
}

const snap = JSON.parse(readFileSync(positionals[0]!, 'utf8')) as Snapshot;
const { meta } = snap.snapshot;
const NF = meta.node_fields.length;
const EF = meta.edge_fields.length;
const TYPE = meta.node_fields.indexOf('type');
const NAME = meta.node_fields.indexOf('name');
const SELF = meta.node_fields.indexOf('self_size');
const EDGES = meta.node_fields.indexOf('edge_count');
const E_TYPE = meta.edge_fields.indexOf('type');
const E_NAME = meta.edge_fields.indexOf('name_or_index');
const E_TO = meta.edge_fields.indexOf('to_node');
const types = meta.node_types[0];
const etypes = meta.edge_types[0];
const { nodes: N, edges: E, strings: S } = snap;
const STRINGS = new Set(['string', 'concatenated string', 'sliced string']);

const byType = new Map<string, number>();
const byKind = new Map<string, number>();
const sources = new Map<string, { bytes: number; scripts: number }>();
const add = <K>(m: Map<K, number>, k: K, v: number): void => void m.set(k, (m.get(k) ?? 0) + v);

let total = 0;
for (let i = 0, e = 0; i < N.length; i += NF) {
  const type = types[N[i + TYPE]!]!;
  const name = S[N[i + NAME]!]!;
  const self = N[i + SELF]!;
  total += self;
  add(byType, type, self);
  add(byKind, STRINGS.has(type) ? `${type}` : `${type}: ${name.slice(0, 70)}`, self);
  const count = N[i + EDGES]!;
  // a Script ("code" node named by its URL) holds its source text under the edge "source"
  if (type === 'code') {
    for (let k = e; k < e + count; k++) {
      const et = etypes[E[k * EF + E_TYPE]!];
      if (et === 'element' || et === 'hidden' || S[E[k * EF + E_NAME]!] !== 'source') continue;
      const to = E[k * EF + E_TO]!;
      const origin = name.startsWith('node:') ? "Node's library (external, in the binary)"
        : /\/node_modules\//.test(name) ? `npm ${/.*\/node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(name)![1]}`
        : /\/dist\//.test(name) ? 'slotflip dist/'
        : name === '' ? 'made at run time (new Function, eval)' : name;
      const o = sources.get(origin) ?? { bytes: 0, scripts: 0 };
      o.bytes += N[to + SELF]!;
      o.scripts++;
      sources.set(origin, o);
    }
  }
  e += count;
}

const kib = (b: number): string => `${(b / 1024).toFixed(0).padStart(7)} KiB`;
const top = Number(values.top);
console.log(`${positionals[0]}: ${N.length / NF} objects, ${kib(total).trim()} self size in all`);
console.log('\nby type:');
for (const [k, v] of [...byType].sort((a, b) => b[1] - a[1])) console.log(`  ${kib(v)}  ${k}`);
console.log(`\nbiggest kinds (type: constructor or system name), top ${top}:`);
for (const [k, v] of [...byKind].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${kib(v)}  ${k}`);
console.log('\nscript sources by origin:');
for (const [k, v] of [...sources].sort((a, b) => b[1].bytes - a[1].bytes).slice(0, top)) console.log(`  ${kib(v.bytes)}  ${k} (${v.scripts} scripts)`);

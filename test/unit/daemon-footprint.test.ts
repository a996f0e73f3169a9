// daemon/footprint.ts: after interpretOnly() a hot function stays interpreted, inside
// withOptimizingCompilers it is optimized, and after it the compilers are off again. V8's own
// optimization status (--allow-natives-syntax) in a child process running the built module.
import t from 'tap';
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT, requireBuilt } from '../e2e/harness.js';

requireBuilt();

const PROBE = `
const { interpretOnly, withOptimizingCompilers } = await import(process.argv[2]);
// a distinct source each time: V8's compilation cache would otherwise hand one function's optimized code to the next
const make = (tag) => new Function('a', '/* ' + tag + ' */ let s = 0; for (let i = 0; i < a.length; i++) s = (s + a[i] * 31) | 0; return s;');
const arr = Array.from({ length: 1000 }, (_, i) => i);
// hot, with turns of the event loop (concurrent compilation finishes between them). Bits 16/32/64
// of the status: optimized by some tier — which bit says so differs between Node 22/24 and 26
// (Node 26's Maglev sets 32 only); interpreted or baseline code sets none of them
// Up to 30000 calls (at least 20000), stopping once optimized; a pause every 1000 gives the compiler thread its turn on a busy machine
const optimized = (f) => (%GetOptimizationStatus(f) & (16 | 32 | 64)) !== 0;
const hot = async (f) => { for (let k = 1; k <= 30000; k++) { f(arr); if (k % 1000 === 0) { if (k >= 20000 && optimized(f)) return true; await new Promise((r) => setTimeout(r, 1)); } } return optimized(f); };
const control = await hot(make('control'));
interpretOnly();
const before = await hot(make('before'));
const during = await withOptimizingCompilers(() => hot(make('during')));
const after = await hot(make('after'));
console.log(JSON.stringify({ control, before, during, after }));
`;

async function probe(dir: string, nodeFlags: string[]): Promise<unknown> {
  await writeFile(join(dir, 'probe.mjs'), PROBE);
  const out = await new Promise<string>((resolve, reject) => execFile(process.execPath, [...nodeFlags, '--allow-natives-syntax', join(dir, 'probe.mjs'), pathToFileURL(join(ROOT, 'dist/daemon/footprint.js')).href], { timeout: 60_000 }, (e, stdout, stderr) => (e ? reject(new Error(`${e.message}\n${stderr}`)) : resolve(String(stdout)))));
  return JSON.parse(out);
}

t.test('interpreted while idle, optimizing compilers on for the install only', async (t) => {
  t.same(await probe(t.testdir(), []), { control: true, before: false, during: true, after: false }, 'optimized before interpretOnly (the probe works), then only inside withOptimizingCompilers');
});

t.test('started with the compilers off (/usr/bin/slotflip daemon: --no-turbofan --no-maglev), the install still turns them on', async (t) => {
  t.same(await probe(t.testdir(), ['--no-turbofan', '--no-maglev']), { control: false, before: false, during: true, after: false }, 'interpreted from the start, optimized only inside withOptimizingCompilers');
});

// reclaimHeap: the idle collection also drops compiled code (V8 flags set for that collection only).
// V8's own bytecode statistics in a child run with --expose-gc and without the coverage collector
// (which makes V8 keep all bytecode): functions run once, then an ordinary full collection (control:
// their bytecode stays), then reclaimHeap (it goes), then run again (same results, compiled anew),
// then an ordinary collection again (the flags were reset: it stays).
const RECLAIM_PROBE = `
import v8 from 'node:v8';
const { exposedGc, reclaimHeap } = await import(process.argv[2]);
const gc = exposedGc();
const fns = Array.from({ length: 400 }, (_, i) => new Function('a', '/* f' + i + ' */ let s = ' + i + '; for (const x of a) s = (s * 31 + x + ' + i + ') | 0; return s;'));
const run = () => fns.map((f) => f([1, 2, 3]));
const bytecode = () => v8.getHeapCodeStatistics().bytecode_and_metadata_size;
const first = run();
gc({ type: 'major', execution: 'sync' });
const afterPlainGc = bytecode();
const r = reclaimHeap(gc);
const afterReclaim = bytecode();
const again = run();
gc({ type: 'major', execution: 'sync' });
const afterRerunAndPlainGc = bytecode();
console.log(JSON.stringify({ afterPlainGc, afterReclaim, afterRerunAndPlainGc, same: JSON.stringify(first) === JSON.stringify(again), ms: r.ms }));
`;

t.test('the idle reclaim also flushes the bytecode of functions not running, and only in that collection', async (t) => {
  const dir = t.testdir();
  await writeFile(join(dir, 'reclaim.mjs'), RECLAIM_PROBE);
  // a plain process: without the coverage collector (NODE_V8_COVERAGE) and without tap's --import
  // hooks in NODE_OPTIONS, which keep bytecode alive as well (under `tap` with coverage, as CI runs
  // it, the child dropped 85 KB instead of ~700 and never recompiled). tap puts both back into the
  // environment of any child it sees spawned, so `env -u` takes them out just before node starts.
  const out = await new Promise<string>((resolve, reject) => execFile('env', ['-u', 'NODE_OPTIONS', '-u', 'NODE_V8_COVERAGE', process.execPath, '--expose-gc', join(dir, 'reclaim.mjs'), pathToFileURL(join(ROOT, 'dist/daemon/footprint.js')).href], { timeout: 60_000 }, (e, stdout, stderr) => (e ? reject(new Error(`${e.message}\n${stderr}`)) : resolve(String(stdout)))));
  const r = JSON.parse(out) as { afterPlainGc: number; afterReclaim: number; afterRerunAndPlainGc: number; same: boolean; ms: number };
  t.ok(r.same, 'the functions give the same results after their code was flushed');
  // 400 functions' bytecode and metadata: well over 100 KB
  t.ok(r.afterPlainGc - r.afterReclaim > 100_000, `reclaimHeap dropped the bytecode an ordinary collection kept (${r.afterPlainGc} -> ${r.afterReclaim} bytes)`);
  t.ok(r.afterRerunAndPlainGc - r.afterReclaim > 100_000, `compiled again when run, and kept by the next ordinary collection (${r.afterRerunAndPlainGc} bytes): the flush flags were reset`);
});

/**
 * `node dist/test/bench/node-floor.js`: the floor Node itself sets (issue 16). Runs, for every --node
 * (default: this Node) and every --flags set (default: none), `node FLAGS -e SCRIPT` (default: nothing; every
 * run idles on a `setInterval`, i.e. a bare Node doing nothing) for --seconds, one at a time, and prints where its
 * resident memory is (test/bench/resident.ts: the node binary's resident pages by content, anonymous
 * memory, other files) and its V8 heap; --pid PID reads a running process instead (a daemon).
 *
 *   node dist/test/bench/node-floor.js [--node PATH]... [--flags=F]... [--seconds 20]
 *       [--script JS]... [--pid PID]... [--top N] [--brief] [--json]
 *
 * --flags takes one set of Node flags per occurrence (`--flags=` for none, `"--flags=--jitless --expose-gc"`);
 * --top N lists each category's N symbols with the most resident bytes; --brief prints one table row
 * per process. Flags V8 does not know make the child exit: reported as an error.
 */
import { execFile, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { parseArgs, promisify } from 'node:util';
import { formatReport, mib, residentReport, type Report } from './resident.js';

const run = promisify(execFile);

const { values } = parseArgs({
  options: {
    node: { type: 'string', multiple: true },
    flags: { type: 'string', multiple: true },
    seconds: { type: 'string', default: '20' },
    script: { type: 'string', multiple: true },
    pid: { type: 'string', multiple: true },
    json: { type: 'boolean', default: false },
    top: { type: 'string', default: '0' },
    brief: { type: 'boolean', default: false },
  },
});

// ---------------------------------------------------------------------------------------------

const PROBE = `;setInterval(() => {}, 1000); setTimeout(() => { const m = process.memoryUsage(); const h = require('v8').getHeapStatistics(); process.stdout.write(JSON.stringify({ heapTotal: m.heapTotal, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers, codeAndMetadata: h.total_heap_size && (require('v8').getHeapCodeStatistics().bytecode_and_metadata_size) }) + '\\n'); }, SECONDS * 1000 - 500);`;

async function bare(node: string, flags: string[], script: string, seconds: number): Promise<Report> {
  const child = spawn(node, [...flags, '-e', script + PROBE.replace('SECONDS', String(seconds))], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (c: string) => { out += c; });
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  await new Promise((r) => setTimeout(r, seconds * 1000));
  if (child.exitCode !== null) throw new Error(`${node} ${flags.join(' ')} exited ${child.exitCode} (a flag it does not know?)`);
  const version = (await run(node, ['--version'])).stdout.trim();
  let heap: Record<string, number> | undefined;
  try {
    heap = Object.fromEntries(Object.entries(JSON.parse(out.trim().split('\n').at(-1)!) as Record<string, number>).map(([k, v]) => [k, Math.round(v / 1024)]));
  } catch {
    heap = undefined;
  }
  const r = await residentReport(child.pid!, `${version} ${flags.join(' ') || '(no flags)'}${script ? ` -e ${script.slice(0, 60)}` : ''}`, { heap, top: Number(values.top) });
  child.kill('SIGTERM');
  await exited;
  return r;
}

function print(rs: Report[]): void {
  if (values.json) { console.log(JSON.stringify(rs)); return; }
  if (values.brief) {
    const sum = (r: Report, re: RegExp): string => mib(Object.entries(r.split).filter(([k]) => re.test(k)).reduce((n, [, v]) => n + v, 0)).toFixed(1);
    const b = (r: Report, k: string): string => mib(r.binary[k] ?? 0).toFixed(1);
    console.log('| process | VmRSS | node binary | of it: snapshot / JS sources / ICU data+code / V8 compilers | anonymous | other files | V8 heap used/total (MiB) |');
    console.log('| --- | --- | --- | --- | --- | --- | --- |');
    for (const r of rs) {
      const compilers = mib(['V8 TurboFan/Turboshaft', 'V8 Maglev', 'V8 Sparkplug'].reduce((n, k) => n + (r.binary[k] ?? 0), 0)).toFixed(1);
      const icu = mib((r.binary['ICU data table'] ?? 0) + (r.binary['ICU code'] ?? 0)).toFixed(1);
      const heap = r.heap ? `${(r.heap.heapUsed / 1024).toFixed(1)} / ${(r.heap.heapTotal / 1024).toFixed(1)}` : '';
      console.log(`| ${r.label} | ${r.rssMiB} | ${sum(r, /^node binary/)} | ${b(r, 'node startup snapshot (V8 heap image)')} / ${b(r, "node's JS library sources (lib/*.js)")} / ${icu} / ${compilers} | ${sum(r, /^anonymous/)} | ${sum(r, /^other files/)} | ${heap} |`);
    }
    return;
  }
  for (const r of rs) console.log(formatReport(r));
}

async function main(): Promise<void> {
  const out: Report[] = [];
  if (values.pid?.length) {
    for (const p of values.pid) out.push(await residentReport(Number(p), `pid ${p} ${readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').join(' ').trim()}`, { top: Number(values.top) }));
  } else {
    const nodes = values.node?.length ? values.node : [process.execPath];
    const flagSets = values.flags?.length ? values.flags : [''];
    const scripts = values.script?.length ? values.script : [''];
    for (const n of nodes) for (const f of flagSets) for (const sc of scripts) out.push(await bare(n, f.split(/\s+/).filter(Boolean), sc, Number(values.seconds)));
  }
  print(out);
}

await main();

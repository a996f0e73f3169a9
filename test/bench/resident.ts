/**
 * Where a Linux process's resident memory is (issue 16; used by test/bench/node-floor.ts and
 * bench:memory --where): VmRSS split into the node binary's mappings (code, read-only data, data),
 * other files (libc, ...) and anonymous memory (V8 heap, malloc, stacks), and the node binary's
 * RESIDENT pages attributed to what they hold: node's startup snapshot, node's JS library sources,
 * ICU's data table and code, V8's embedded builtins, V8's compilers (TurboFan/Turboshaft, Maglev,
 * Sparkplug), the rest of V8, OpenSSL, node, libuv, compression, unwind and dynamic-linking tables.
 * Resident = present in the process's page table (/proc/PID/pagemap bit 63), not merely in the page
 * cache (a file page counts once the process faulted it or the kernel mapped it around a fault);
 * a page is split between the symbols it overlaps (`nm -n -S -C`, `readelf`: binutils).
 * Needs read access to /proc/PID/pagemap (same user; page frame numbers are not used).
 */
import { execFile } from 'node:child_process';
import { closeSync, openSync, readFileSync, readlinkSync, readSync } from 'node:fs';
import { promisify } from 'node:util';

const run = promisify(execFile);
const PAGE = 4096;

// ---------------------------------------------------------------------------------------------
// what the binary holds, by address

/** Ordered: the first rule whose pattern matches a demangled symbol name names its category. */
const RULES: Array<[RegExp, string]> = [
  [/^icudt\d+_dat$/, 'ICU data table'],
  [/^icu_\d+::|_7\d$|^u(bidi|case|char|cnv|col|loc|norm|prop|res|script|set|str|text|trie|data|hash|list|vec|enum|mutex|init|cleanup)\w*/, 'ICU code'],
  [/^Builtins_|^v8_Default_embedded_blob/, 'V8 embedded builtins'],
  [/^v8::internal::compiler::|^v8::internal::turboshaft::/, 'V8 TurboFan/Turboshaft'],
  [/^v8::internal::maglev::/, 'V8 Maglev'],
  [/^v8::internal::baseline::/, 'V8 Sparkplug'],
  [/^v8::internal::wasm::|^v8::internal::Wasm/, 'V8 WebAssembly'],
  [/^v8_inspector::|^v8_crdtp::|^node::inspector::/, 'inspector'],
  [/^v8::|^cppgc::|^heap::base::/, 'V8 other'],
  [/^(ossl_|EVP_|SSL_|ssl|tls|OPENSSL_|CRYPTO_|BN_|bn_|EC_|ec_|RSA_|rsa_|X509|x509|ASN1_|asn1|ERR_|BIO_|aesni|aes_|sha\d|SHA\d|ecp_nistz|OBJ_|PEM_|DH_|DSA_|HMAC|CMS_|PKCS|OSSL_|nid_objs|chacha|poly1305|gcm_|_?x25519|ed25519|ML_|mlkem|PROV|provider)/, 'OpenSSL'],
  [/^uv_|^uv__/, 'libuv'],
  [/^sqlite3/, 'SQLite'],
  [/Brotli|^kBrotli|^kStaticDictionary|^ZSTD|^ZSTDv|^HUF_|^FSE_|^deflate|^inflate|^zng_|^crc32|^adler32|^Cr_z_|^z_|zlib/, 'compression (zlib, brotli, zstd)'],
  [/^node::/, 'node'],
  [/^(nghttp2|nghttp3|ngtcp2|llhttp|ada::|simdutf|simdjson|cares|ares_|uvwasi|base64|histogram|hdr_|postject)/i, 'node deps (http, url, simd, dns)'],
  [/^(std::|__gnu_cxx|__cxa|_Unwind|operator|__cxx)/, 'C++ runtime'],
];

/** Sections that hold no symbols of their own but a lot of bytes. */
const SECTION_CATEGORY: Record<string, string> = {
  '.eh_frame': 'unwind tables (.eh_frame)',
  '.eh_frame_hdr': 'unwind tables (.eh_frame)',
  '.gcc_except_table': 'unwind tables (.eh_frame)',
  '.dynsym': 'dynamic linking (.dynsym/.dynstr/.rela)',
  '.dynstr': 'dynamic linking (.dynsym/.dynstr/.rela)',
  '.rela.dyn': 'dynamic linking (.dynsym/.dynstr/.rela)',
  '.rela.plt': 'dynamic linking (.dynsym/.dynstr/.rela)',
  '.gnu.hash': 'dynamic linking (.dynsym/.dynstr/.rela)',
  '.gnu.version': 'dynamic linking (.dynsym/.dynstr/.rela)',
  '.gnu.version_r': 'dynamic linking (.dynsym/.dynstr/.rela)',
  '.data': 'writable data (.data/.bss/.got)',
  '.bss': 'writable data (.data/.bss/.got)',
  '.got': 'writable data (.data/.bss/.got)',
  '.data.rel.ro': 'writable data (.data/.bss/.got)',
  '.init_array': 'writable data (.data/.bss/.got)',
};

interface Span { start: number; end: number; category: string; name: string }

function categoryOf(name: string): string {
  for (const [re, c] of RULES) if (re.test(name)) return c;
  return 'other (libstdc++, misc symbols)';
}

/** Address spans of the binary (link addresses), each with its category, sorted by start. */
interface Segment { offset: number; vaddr: number; size: number }

async function spans(binary: string): Promise<{ spans: Span[]; segments: Segment[] }> {
  const { stdout: hdr } = await run('readelf', ['-l', '-S', '-W', binary], { maxBuffer: 64 << 20 });
  const segments = [...hdr.matchAll(/^\s*LOAD\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+\s+(0x[0-9a-f]+)/gm)].map((m) => ({ offset: Number(m[1]), vaddr: Number(m[2]), size: Number(m[3]) }));
  const sections: Array<Span & { fixed: boolean }> = [];
  for (const m of hdr.matchAll(/^\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)/gm)) {
    const start = parseInt(m[2], 16);
    const size = parseInt(m[3], 16);
    if (start > 0 && size > 0) sections.push({ start, end: start + size, category: SECTION_CATEGORY[m[1]] ?? `section ${m[1]}`, name: m[1], fixed: m[1] in SECTION_CATEGORY });
  }
  const { stdout } = await run('nm', ['-n', '-S', '-C', '--defined-only', binary], { maxBuffer: 1 << 30 });
  const syms: Array<{ addr: number; size: number; name: string }> = [];
  for (const line of stdout.split('\n')) {
    const m = /^([0-9a-f]+) (?:([0-9a-f]+) )?[tTrRdDbBuVvWw] (.*)$/.exec(line);
    if (m) syms.push({ addr: parseInt(m[1], 16), size: m[2] ? parseInt(m[2], 16) : 0, name: m[3] });
  }
  const fd = openSync(binary, 'r');
  const out: Span[] = [];
  try {
    for (const s of sections) {
      if (s.fixed) { out.push({ start: s.start, end: s.end, category: s.category, name: s.name }); continue; }
      // each symbol up to its size, or up to the next one when nm knows no size (the embedded builtins
      // are named one by one); a gap of a page or more after a sized symbol is data nm has no name for
      const inside = syms.filter((y) => y.addr >= s.start && y.addr < s.end);
      let at = s.start;
      let cat = s.category;
      let name = s.name;
      let sized = 0;
      const close = (to: number): void => {
        if (to <= at) return;
        const named = sized > 0 ? Math.min(to, at + sized) : to;
        out.push({ start: at, end: named, category: cat, name });
        if (named < to) {
          const gap = to - named < PAGE ? { category: cat, name } : unnamed(fd, segments, named, name);
          out.push({ start: named, end: to, ...gap });
        }
      };
      for (const y of inside) {
        close(y.addr);
        at = Math.max(at, y.addr);
        cat = categoryOf(y.name);
        name = y.name;
        sized = y.size;
      }
      close(s.end);
    }
  } finally {
    closeSync(fd);
  }
  out.sort((a, b) => a.start - b.start);
  return { spans: out, segments };
}

/** What an unnamed stretch of the binary at link address `at` holds, judged from its first bytes:
 * node's startup snapshot (a V8 heap image; its header carries V8's version, `13.6.233.17-node.63`),
 * node's own JavaScript library (lib/*.js as text), or data nm has no name for. */
function unnamed(fd: number, segments: Segment[], at: number, after: string): { category: string; name: string } {
  const seg = segments.find((g) => at >= g.vaddr && at < g.vaddr + g.size);
  const head = Buffer.alloc(256);
  if (seg) readSync(fd, head, 0, head.length, seg.offset + (at - seg.vaddr));
  const text = head.toString('latin1');
  if (/\d+\.\d+\.\d+\.\d+-node\.\d+/.test(text)) return { category: 'node startup snapshot (V8 heap image)', name: `(unnamed, after ${after})` };
  const printable = [...head].filter((b) => (b >= 32 && b < 127) || b === 10).length;
  if (printable > 0.75 * head.length) return { category: "node's JS library sources (lib/*.js)", name: `(unnamed, after ${after})` };
  return { category: 'unnamed data', name: `(unnamed, after ${after})` };
}

const spanCache = new Map<string, ReturnType<typeof spans>>();

// ---------------------------------------------------------------------------------------------
// one process

interface Mapping { start: number; end: number; perms: string; offset: number; path: string; rssKiB: number; anon: boolean }

function mappings(pid: number): Mapping[] {
  const out: Mapping[] = [];
  let cur: Mapping | undefined;
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const h = /^([0-9a-f]+)-([0-9a-f]+) (\S+) ([0-9a-f]+) \S+ (\d+)\s*(.*)$/.exec(line);
    if (h) {
      cur = { start: parseInt(h[1], 16), end: parseInt(h[2], 16), perms: h[3], offset: parseInt(h[4], 16), path: h[6], rssKiB: 0, anon: h[5] === '0' };
      out.push(cur);
      continue;
    }
    const r = /^Rss:\s+(\d+) kB/.exec(line);
    if (r && cur) cur.rssKiB = Number(r[1]);
  }
  return out;
}

/** Present pages (start addresses) of [start, end) in `pid`'s page table. */
function presentPages(pid: number, start: number, end: number): number[] {
  const n = (end - start) / PAGE;
  const buf = Buffer.alloc(n * 8);
  const fd = openSync(`/proc/${pid}/pagemap`, 'r');
  try {
    readSync(fd, buf, 0, buf.length, (start / PAGE) * 8);
  } finally {
    closeSync(fd);
  }
  const out: number[] = [];
  for (let i = 0; i < n; i++) if (buf.readBigUInt64LE(i * 8) >> 63n) out.push(start + i * PAGE);
  return out;
}

export interface Report {
  label: string;
  pid: number;
  rssMiB: number;
  split: Record<string, number>;
  binary: Record<string, number>;
  /** per category, its symbols with the most resident bytes (--top N) */
  top: Record<string, Array<[string, number]>>;
  heap?: Record<string, number>;
}

export const mib = (kib: number): number => Math.round(kib / 102.4) / 10;

export async function residentReport(pid: number, label: string, opts: { top?: number; heap?: Record<string, number> } = {}): Promise<Report> {
  const heap = opts.heap;
  const exe = readlinkSync(`/proc/${pid}/exe`);
  const maps = mappings(pid);
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKiB = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0);
  const split: Record<string, number> = {};
  const add = (k: string, kib: number): void => { split[k] = (split[k] ?? 0) + kib; };
  for (const m of maps) {
    if (m.path === exe) add(`node binary ${m.perms.includes('x') ? 'code (r-x)' : m.perms.includes('w') ? 'data (rw-)' : 'read-only (r--)'}`, m.rssKiB);
    else if (m.path.startsWith('/') && !m.path.startsWith('/memfd:')) add('other files (libc, libstdc++, ...)', m.rssKiB);
    else add(`anonymous${m.path ? ` ${m.path.replace(/^\[(\w+).*\]$/, '[$1]')}` : ''}`, m.rssKiB);
  }
  const { spans: sp, segments } = await (spanCache.get(exe) ?? (spanCache.set(exe, spans(exe)), spanCache.get(exe)!));
  const own = maps.filter((m) => m.path === exe);
  const binary: Record<string, number> = {};
  const bySymbol = new Map<Span, number>();
  for (const m of own) {
    // a mapping's link address, from its file offset: the same for a PIE's load bias and for V8's
    // second mapping of its embedded builtins next to its code range (short builtin calls)
    const seg = segments.find((g) => m.offset >= g.offset - (g.offset % PAGE) && m.offset < g.offset + g.size);
    if (!seg) continue;
    const bias = m.start - (seg.vaddr + (m.offset - seg.offset));
    for (const page of presentPages(pid, m.start, m.end)) {
      const a = page - bias;
      const b = a + PAGE;
      // the first span ending after a (spans are sorted and do not overlap)
      let lo = 0;
      for (let hi = sp.length; lo < hi; ) { const mid = (lo + hi) >> 1; if (sp[mid].end <= a) lo = mid + 1; else hi = mid; }
      const j = lo;
      let covered = 0;
      for (let k = j; k < sp.length && sp[k].start < b; k++) {
        const bytes = Math.min(b, sp[k].end) - Math.max(a, sp[k].start);
        if (bytes > 0) {
          binary[sp[k].category] = (binary[sp[k].category] ?? 0) + bytes / 1024;
          bySymbol.set(sp[k], (bySymbol.get(sp[k]) ?? 0) + bytes / 1024);
          covered += bytes;
        }
      }
      if (covered < PAGE) binary['headers, padding'] = (binary['headers, padding'] ?? 0) + (PAGE - covered) / 1024;
    }
  }
  const top: Record<string, Array<[string, number]>> = {};
  const n = opts.top ?? 0;
  if (n > 0) {
    for (const [span, kib] of [...bySymbol].sort((x, y) => y[1] - x[1])) {
      const list = (top[span.category] ??= []);
      if (list.length < n) list.push([span.name.slice(0, 110), Math.round(kib)]);
    }
  }
  return { label, pid, rssMiB: mib(rssKiB), split, binary, top, heap };
}

/** The report as text: VmRSS by kind of mapping, then the binary's resident pages by content (and
 * each category's top symbols when asked for), then V8's heap figures when known. */
export function formatReport(r: Report): string {
  const out = [`\n## ${r.label}  (pid ${r.pid}): VmRSS ${r.rssMiB} MiB`];
  for (const [k, v] of Object.entries(r.split).sort((a, b) => b[1] - a[1])) if (v >= 64) out.push(`  ${mib(v).toFixed(1).padStart(6)} MiB  ${k}`);
  out.push('  node binary, resident pages by content:');
  for (const [k, v] of Object.entries(r.binary).sort((a, b) => b[1] - a[1])) {
    if (v < 64) continue;
    out.push(`    ${mib(v).toFixed(1).padStart(6)} MiB  ${k}`);
    for (const [name, kib] of r.top[k] ?? []) out.push(`               ${String(kib).padStart(6)} KiB  ${name}`);
  }
  if (r.heap) out.push(`  V8 (KiB): ${Object.entries(r.heap).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  return out.join('\n');
}

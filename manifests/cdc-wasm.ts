/**
 * The FastCDC gear loop (cdc.ts cutPoint) as a few dozen bytes of WebAssembly, so cutting a slot into
 * chunks costs the same with or without V8's optimizing compilers (issue 25/16). The daemon runs
 * interpreted (daemon/footprint.ts); cdc.ts's JS loop then takes ~70 s of CPU per GiB, so a delta
 * install used to switch TurboFan and Maglev on while it cut a slot (~2-3 s per GiB, but +13 MiB of
 * RSS that stayed). WebAssembly is compiled by Liftoff, V8's baseline wasm compiler, whatever the JS
 * tiers: measured 0.5 s of CPU per GiB for the loop, and the compiled module is a few hundred bytes.
 *
 * The module is assembled here from named opcodes (no build tool, no binary blob to trust): one
 * function over one imported memory whose first 1 KiB holds the gear table (256 little-endian u32)
 * and the rest the read buffer:
 *
 *   (func $cut (param $w i32) (param $p i32) (param $normal i32) (param $limit i32)
 *              (param $maskS i32) (param $maskL i32) (result i32) (local $h i32)
 *     ;; warm-up: h over [w, p) without looking for a cut
 *     (block (loop (br_if 1 (i32.ge_u $w $p)) h = (h << 1) + gear[mem[w]]; w++ (br 0)))
 *     ;; [p, normal): the harder mask
 *     (block (loop (br_if 1 (i32.ge_u $p $normal)) h = (h << 1) + gear[mem[p]]; p++
 *                  (if (i32.eqz (i32.and h maskS)) (return p)) (br 0)))
 *     ;; [p, limit): the easier mask
 *     (block (loop (br_if 1 (i32.ge_u $p $limit)) h = (h << 1) + gear[mem[p]]; p++
 *                  (if (i32.eqz (i32.and h maskL)) (return p)) (br 0)))
 *     p)
 *
 *   (func $dir (param $b i32) (param $limit i32) (param $bs i32) (result i32) (local $o i32) ...)
 *     ;; the first block at b, b + bs, ... (b + bs <= limit) that looks like an ext4 directory block
 *     ;; (cdc.ts looksLikeDirBlock: entries whose rec_len chain fills it exactly), else -1
 *
 * It returns the absolute end of the chunk; cdc.ts turns positions into lengths. The JS `cutPoint`
 * stays the reference: test/unit/cdc-wasm.test.ts checks both cut identically on random and
 * structured data (a device and the publisher must cut alike, or nothing is found).
 */

/** Bytes at the start of the memory that hold the gear table. */
export const GEAR_BYTES = 1024;
const WASM_PAGE = 65536;

const op = {
  block: 0x02, loop: 0x03, if: 0x04, end: 0x0b, br: 0x0c, brIf: 0x0d, return: 0x0f,
  localGet: 0x20, localSet: 0x21, i32Load: 0x28, i32Load8u: 0x2d, i32Const: 0x41,
  i32Load16u: 0x2f, i32Eqz: 0x45, i32LtU: 0x49, i32GtU: 0x4b, i32GeU: 0x4f, i32Add: 0x6a, i32And: 0x71,
  i32Or: 0x72, i32Shl: 0x74, void: 0x40, i32: 0x7f,
} as const;

const uleb = (n: number): number[] => {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
};
const vec = (items: number[][]): number[] => [...uleb(items.length), ...items.flat()];
const section = (id: number, bytes: number[]): number[] => [id, ...uleb(bytes.length), ...bytes];
const name = (s: string): number[] => [...uleb(s.length), ...[...s].map((c) => c.charCodeAt(0))];

/** The module's bytes (see the header for its text). */
export function gearModuleBytes(): Uint8Array {
  const [W, P, NORMAL, LIMIT, MASK_S, MASK_L, H] = [0, 1, 2, 3, 4, 5, 6];
  const get = (i: number): number[] => [op.localGet, i];
  const set = (i: number): number[] => [op.localSet, i];
  const one = [op.i32Const, 1];
  // h = (h << 1) + gear[mem[ptr]]  (load8_u and load: alignment hint 0 and 2, offset 0)
  const step = (ptr: number): number[] => [...get(H), ...one, op.i32Shl, ...get(ptr), op.i32Load8u, 0, 0, op.i32Const, 2, op.i32Shl, op.i32Load, 2, 0, op.i32Add, ...set(H)];
  const inc = (i: number): number[] => [...get(i), ...one, op.i32Add, ...set(i)];
  const loop = (ptr: number, bound: number, inner: number[]): number[] => [op.block, op.void, op.loop, op.void, ...get(ptr), ...get(bound), op.i32GeU, op.brIf, 1, ...step(ptr), ...inc(ptr), ...inner, op.br, 0, op.end, op.end];
  const found = (mask: number): number[] => [...get(H), ...get(mask), op.i32And, op.i32Eqz, op.if, op.void, ...get(P), op.return, op.end];
  const cutBody = [...vec([[1, op.i32]]), ...loop(W, P, []), ...loop(P, NORMAL, found(MASK_S)), ...loop(P, LIMIT, found(MASK_L)), ...get(P), op.end];
  // $dir: params b, limit, bs; locals o, rec, nl
  const [B, LIM, BS, O, REC, NL] = [0, 1, 2, 3, 4, 5];
  const c = (n: number): number[] => [op.i32Const, n]; // 0..63 (one-byte LEB)
  const entries = [
    op.block, op.void, op.loop, op.void,
    // o reached bs exactly (entries filled the block): a directory block at b
    ...get(O), ...get(BS), op.i32GeU, op.if, op.void, ...get(B), op.return, op.end,
    ...get(O), ...c(8), op.i32Add, ...get(BS), op.i32GtU, op.brIf, 1,
    ...get(B), ...get(O), op.i32Add, op.i32Load16u, 1, 4, ...set(REC),
    ...get(B), ...get(O), op.i32Add, op.i32Load8u, 0, 6, ...set(NL),
    // rec_len < 8 | rec_len & 3 | o + rec_len > bs | (name_len != 0 & 8 + name_len > rec_len): not one
    ...get(REC), ...c(8), op.i32LtU, ...get(REC), ...c(3), op.i32And, op.i32Or,
    ...get(O), ...get(REC), op.i32Add, ...get(BS), op.i32GtU, op.i32Or,
    ...get(NL), ...c(8), op.i32Add, ...get(REC), op.i32GtU, ...get(NL), op.i32Eqz, op.i32Eqz, op.i32And, op.i32Or,
    op.brIf, 1,
    ...get(O), ...get(REC), op.i32Add, ...set(O),
    op.br, 0, op.end, op.end,
  ];
  const dirBody = [
    ...vec([[3, op.i32]]),
    op.block, op.void, op.loop, op.void,
    ...get(B), ...get(BS), op.i32Add, ...get(LIM), op.i32GtU, op.brIf, 1,
    ...c(0), ...set(O), ...entries,
    ...get(B), ...get(BS), op.i32Add, ...set(B),
    op.br, 0, op.end, op.end,
    op.i32Const, 0x7f, // -1
    op.end,
  ];
  const i32s = (n: number): number[] => vec(Array.from({ length: n }, () => [op.i32]));
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // "\0asm", version 1
    ...section(1, vec([[0x60, ...i32s(6), ...i32s(1)], [0x60, ...i32s(3), ...i32s(1)]])), // types: (i32 x6) -> i32, (i32 x3) -> i32
    ...section(2, vec([[...name('e'), ...name('m'), 0x02, 0x00, ...uleb(1)]])), // import memory e.m, min 1 page
    ...section(3, vec([uleb(0), uleb(1)])), // two functions, of types 0 and 1
    ...section(7, vec([[...name('cut'), 0x00, 0], [...name('dir'), 0x00, 1]])), // exported as "cut" and "dir"
    ...section(10, vec([[...uleb(cutBody.length), ...cutBody], [...uleb(dirBody.length), ...dirBody]])), // their code
  ]);
}

type Wasm = {
  Memory: new (d: { initial: number; maximum: number }) => { buffer: ArrayBuffer };
  Module: new (b: Uint8Array) => object;
  Instance: new (m: object, imports: object) => { exports: { cut: (w: number, p: number, normal: number, limit: number, maskS: number, maskL: number) => number; dir: (b: number, limit: number, bs: number) => number } };
};

let compiled: object | undefined;

/** A read buffer of `size` bytes in WebAssembly memory and the gear loop over it. */
export interface GearCutter {
  /** the read buffer (a view of the module's memory, after the gear table). */
  buf: Buffer;
  /**
   * The cut cutPoint(buf, start, end, p) finds, given its loop bounds as offsets into `buf`: the
   * warm-up start `w`, the first byte that may end a chunk `p`, `normal` and `limit`, and the masks.
   * Returns the offset in `buf` just past the chunk.
   */
  cut(w: number, p: number, normal: number, limit: number, maskS: number, maskL: number): number;
  /** The offset in `buf` of the first of the blocks at b, b + bs, ... (each ending by `limit`)
   * that looks like an ext4 directory block (cdc.ts looksLikeDirBlock), or -1. */
  dir(b: number, limit: number, bs: number): number;
}

/** A gear cutter with a `size`-byte buffer, or undefined where this runtime has no WebAssembly
 * (e.g. node --jitless): cdc.ts then cuts in JS. */
export function gearCutter(size: number, gear: Uint32Array): GearCutter | undefined {
  const wasm = (globalThis as unknown as { WebAssembly?: Wasm }).WebAssembly;
  if (wasm === undefined) return undefined;
  let instance;
  let memory;
  try {
    compiled ??= new wasm.Module(gearModuleBytes());
    const pages = Math.ceil((GEAR_BYTES + size) / WASM_PAGE);
    memory = new wasm.Memory({ initial: pages, maximum: pages });
    instance = new wasm.Instance(compiled, { e: { m: memory } });
  } catch {
    return undefined;
  }
  const table = new DataView(memory.buffer, 0, GEAR_BYTES);
  for (let i = 0; i < 256; i++) table.setUint32(i * 4, gear[i]!, true); // wasm loads are little-endian
  const { cut, dir } = instance.exports;
  const B = GEAR_BYTES;
  return {
    buf: Buffer.from(memory.buffer, B, size),
    // masks travel as i32 (their top bit set); positions shifted past the table and back
    cut: (w, p, normal, limit, maskS, maskL) => cut(w + B, p + B, normal + B, limit + B, maskS | 0, maskL | 0) - B,
    dir: (b, limit, bs) => {
      const at = dir(b + B, limit + B, bs);
      return at < 0 ? -1 : at - B;
    },
  };
}

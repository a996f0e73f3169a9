/**
 * Page-aligned buffers for O_DIRECT I/O. Node has no aligned allocator (a large Buffer comes from
 * malloc: page + 16 bytes) and JavaScript cannot learn a Buffer's address, so an aligned buffer is a
 * view of WebAssembly memory, which V8 maps page-aligned. Buffers made here are remembered (by their
 * ArrayBuffer, weakly) so that a writer can tell an aligned view from any other Uint8Array.
 */

/** O_DIRECT offsets, lengths and buffer addresses are multiples of this (covers 512e and 4Kn). */
export const DIRECT_ALIGN = 4096;
const WASM_PAGE = 65536;

const aligned = new WeakSet<ArrayBufferLike>();

/** A Buffer of `size` bytes whose first byte is page-aligned (a view of WebAssembly memory: one
 * mapping, committed as it is touched). Split it with `subarray` at multiples of DIRECT_ALIGN. */
export function alignedBuffer(size: number): Buffer {
  const pages = Math.max(1, Math.ceil(size / WASM_PAGE));
  // lib ES2023 carries no WebAssembly declarations; the global is always there in Node
  const wasm = (globalThis as unknown as { WebAssembly: { Memory: new (d: { initial: number; maximum: number }) => { buffer: ArrayBuffer } } }).WebAssembly;
  const mem = new wasm.Memory({ initial: pages, maximum: pages });
  aligned.add(mem.buffer);
  return Buffer.from(mem.buffer, 0, size);
}

/** True when `data` starts on a DIRECT_ALIGN boundary of memory made by `alignedBuffer`. */
export function isAligned(data: Uint8Array): boolean {
  return aligned.has(data.buffer) && data.byteOffset % DIRECT_ALIGN === 0;
}

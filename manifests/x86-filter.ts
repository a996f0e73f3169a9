/**
 * x86 branch filter for delta pack frames (format `slotflip-delta-2`, issue 25): the 32-bit
 * displacement of every `call rel32` (E8) and `jmp rel32` (E9) whose displacement fits 25 signed bits
 * is rewritten as the target's offset from the chunk's start, so repeated calls to one function —
 * different displacements from different places — become the same four bytes, which zstd matches.
 * The idea of xz's and 7-Zip's BCJ x86 filter, simplified: positions count from the chunk's start (a
 * chunk's frame depends on its content only, as content-defined chunks require), and the test that
 * picks a candidate (the displacement's top byte is 0x00 or 0xFF) is one the rewritten value passes
 * too (it is sign-extended from 25 bits), and the four bytes after every E8/E9 are skipped whether
 * rewritten or not, so decoding scans the same positions and undoes each one.
 *
 * Trade-off: a byte loop in JS on the device, only over fetched frames the index marks as filtered
 * (a one-package upgrade: ~6 MiB of library code); the publisher filters a chunk only where that made
 * its frame smaller. On the onepkg-repro pair (libssl3 upgraded) the frames of the missing chunks are
 * 2.518 MB unfiltered and 2.399 MB with the filter where it helps (−4.7 %).
 *
 * Pure; both functions rewrite `b` in place.
 */

function rewrite(b: Buffer, sign: 1 | -1): number {
  let count = 0;
  const end = b.length - 5;
  let i = 0;
  while (i <= end) {
    const op = b[i];
    if (op === 0xe8 || op === 0xe9) {
      const top = b[i + 4];
      if (top === 0x00 || top === 0xff) {
        const v = b.readInt32LE(i + 1);
        // 25-bit signed arithmetic: the result's top byte is 00 or FF again, so the decoder finds it
        b.writeInt32LE(((v + sign * (i + 5)) << 7) >> 7, i + 1);
        count++;
      }
      // the four bytes after every E8/E9 are skipped, rewritten or not: an opcode byte is then never
      // inside a rewritten displacement, and the test above sees the same byte when decoding
      i += 5;
    } else i++;
  }
  return count;
}

/** Filters `b` in place (publisher); returns how many branches it rewrote. */
export function x86Encode(b: Buffer): number {
  return rewrite(b, 1);
}

/** Undoes x86Encode in place (device, after decompressing a frame the index marks as filtered). */
export function x86Decode(b: Buffer): Buffer {
  rewrite(b, -1);
  return b;
}

/** A chunk is worth compressing filtered as well when at least one byte in this many starts a
 * rewritten branch (library code: ~1 in 40; other data: ~1 in 16000). Chosen on old-repro: the chunks
 * this passes are 118 of its 255 MiB of distinct chunks; filtering only those loses 15 bytes of the
 * 119 KB the filter saves on onepkg-repro's missing chunks. */
export const X86_CANDIDATE_EVERY = 512;

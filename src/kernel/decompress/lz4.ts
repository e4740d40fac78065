/**
 * LZ4's legacy frame format, the one the kernel's build uses (`lz4 -l`) and
 * lib/decompress_unlz4.c reads: the magic 0x184c2102, then blocks of a 32-bit
 * little-endian compressed size and an LZ4 block that expands to at most
 * 8 MiB. Blocks are independent (no match reaches into an earlier block). The
 * frame has no end marker: it ends with the input, at a repeated magic (a
 * concatenated frame), or, in a bzImage, at the 4-byte uncompressed size that
 * follows it.
 */
import { DecompressError, Output } from "./output.ts";

const FORMAT = "lz4";
const LEGACY_MAGIC = 0x184c2102;
const LEGACY_BLOCK_SIZE = 8 << 20;

function corrupt(what: string): never {
  throw new DecompressError(`${FORMAT}: corrupt data (${what})`);
}

/**
 * `expected`, when known (a bzImage gives it), also tells where the frame
 * stops: the last four input bytes are then the size word, not a block.
 */
export function decompressLz4Legacy(input: Uint8Array, limit: number, expected?: number): Uint8Array {
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  if (input.length < 4 || view.getUint32(0, true) !== LEGACY_MAGIC) corrupt("no legacy frame magic 0x184c2102");
  const out = new Output(FORMAT, limit, expected);
  let at = 4;
  while (input.length - at >= 4) {
    if (expected !== undefined && out.pos === expected) break;
    const size = view.getUint32(at, true);
    at += 4;
    if (size === LEGACY_MAGIC) continue;
    if (size > input.length - at) {
      // A trailing size word (uncompressed length) ends a kernel's payload.
      if (at === input.length && expected === undefined) break;
      corrupt(`block of ${size} bytes at offset ${at - 4} runs past the end of the data`);
    }
    decodeBlock(input, at, at + size, out, Math.min(LEGACY_BLOCK_SIZE, out.limit - out.pos));
    at += size;
  }
  if (expected !== undefined && out.pos !== expected) corrupt(`decoded ${out.pos} bytes, the image says ${expected}`);
  return out.result();
}

/** One LZ4 block (sequences of literals and matches) from input[start, end). */
export function decodeBlock(input: Uint8Array, start: number, end: number, out: Output, maxOutput: number): void {
  const blockStart = out.pos;
  const blockEnd = blockStart + maxOutput;
  let at = start;
  for (;;) {
    if (at >= end) corrupt("block ends inside a sequence");
    const token = input[at++]!;
    let literals = token >> 4;
    if (literals === 15) {
      let byte: number;
      do {
        if (at >= end) corrupt("block ends inside a literal length");
        byte = input[at++]!;
        literals += byte;
      } while (byte === 255);
    }
    if (at + literals > end) corrupt("literals run past the end of the block");
    if (out.pos + literals > blockEnd) corrupt("block expands past its maximum size");
    out.reserve(literals);
    out.buf.set(input.subarray(at, at + literals), out.pos);
    out.pos += literals;
    at += literals;
    if (at === end) return; // the last sequence has literals only
    if (at + 2 > end) corrupt("block ends inside a match offset");
    const offset = input[at]! | (input[at + 1]! << 8);
    at += 2;
    if (offset === 0 || offset > out.pos - blockStart) corrupt(`match offset ${offset} reaches before the start of the block`);
    let length = (token & 15) + 4;
    if ((token & 15) === 15) {
      let byte: number;
      do {
        if (at >= end) corrupt("block ends inside a match length");
        byte = input[at++]!;
        length += byte;
      } while (byte === 255);
    }
    if (out.pos + length > blockEnd) corrupt("block expands past its maximum size");
    out.reserve(length);
    const buf = out.buf;
    const pos = out.pos;
    const from = pos - offset;
    if (offset >= length) buf.copyWithin(pos, from, from + length);
    else for (let i = 0; i < length; i++) buf[pos + i] = buf[from + i]!;
    out.pos = pos + length;
  }
}

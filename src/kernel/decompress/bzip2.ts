/**
 * bzip2 decoding (the format of bzip2 1.0: "BZh" + level, then blocks of
 * Huffman-coded MTF/RLE2 symbols over a Burrows-Wheeler transform, each with
 * a CRC, then an end-of-stream marker with the combined CRC). Only what a
 * kernel payload needs: one stream; what follows it is ignored. Every CRC is
 * checked.
 */
import { DecompressError, Output } from "./output.ts";

const FORMAT = "bzip2";
const BLOCK_MAGIC_HI = 0x314159;
const BLOCK_MAGIC_LO = 0x265359;
const END_MAGIC_HI = 0x177245;
const END_MAGIC_LO = 0x385090;
const MAX_GROUPS = 6;
const GROUP_SIZE = 50;
const MAX_CODE_LENGTH = 20;
const RUN_A = 0;
const RUN_B = 1;

function corrupt(what: string): never {
  throw new DecompressError(`${FORMAT}: corrupt data (${what})`);
}

class BitReader {
  private readonly input: Uint8Array;
  private pos: number;
  private bitBuffer = 0;
  private bitCount = 0;

  constructor(input: Uint8Array, start: number) {
    this.input = input;
    this.pos = start;
  }

  /** Up to 24 bits, most significant first. */
  bits(n: number): number {
    while (this.bitCount < n) {
      if (this.pos >= this.input.length) corrupt("data is truncated");
      this.bitBuffer = ((this.bitBuffer << 8) | this.input[this.pos++]!) & 0xffff_ffff;
      this.bitCount += 8;
    }
    this.bitCount -= n;
    return (this.bitBuffer >>> this.bitCount) & ((1 << n) - 1);
  }

  bit(): number {
    return this.bits(1);
  }
}

let crcTable: Uint32Array | undefined;

/** bzip2's CRC: CRC-32 with the polynomial taken most significant bit first. */
function crcTableMsb(): Uint32Array {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let i = 0; i < 256; i++) {
      let c = i << 24;
      for (let k = 0; k < 8; k++) c = c & 0x8000_0000 ? (c << 1) ^ 0x04c1_1db7 : c << 1;
      crcTable[i] = c >>> 0;
    }
  }
  return crcTable;
}

export function decompressBzip2(input: Uint8Array, limit: number, expected?: number): Uint8Array {
  if (input.length < 4 || input[0] !== 0x42 || input[1] !== 0x5a || input[2] !== 0x68) corrupt("no 'BZh' stream header");
  const level = input[3]! - 0x30;
  if (level < 1 || level > 9) corrupt(`block size digit '${String.fromCharCode(input[3]!)}' is not 1-9`);
  const maxBlock = level * 100_000;
  const reader = new BitReader(input, 4);
  const out = new Output(FORMAT, limit, expected);
  const tt = new Uint32Array(maxBlock);
  const table = crcTableMsb();
  let combined = 0;
  for (;;) {
    const hi = reader.bits(24);
    const lo = reader.bits(24);
    const storedCrc = ((reader.bits(16) << 16) | reader.bits(16)) >>> 0;
    if (hi === END_MAGIC_HI && lo === END_MAGIC_LO) {
      if (storedCrc !== combined) corrupt("stream CRC mismatch");
      return out.result();
    }
    if (hi !== BLOCK_MAGIC_HI || lo !== BLOCK_MAGIC_LO) corrupt("bad block magic");
    const start = out.pos;
    decodeBlock(reader, tt, maxBlock, out);
    let crc = 0xffff_ffff;
    const buf = out.buf;
    for (let i = start; i < out.pos; i++) crc = ((crc << 8) ^ table[((crc >>> 24) ^ buf[i]!) & 0xff]!) >>> 0;
    crc = ~crc >>> 0;
    if (crc !== storedCrc) corrupt("block CRC mismatch");
    combined = (((combined << 1) | (combined >>> 31)) ^ crc) >>> 0;
  }
}

function decodeBlock(reader: BitReader, tt: Uint32Array, maxBlock: number, out: Output): void {
  if (reader.bit()) throw new DecompressError(`${FORMAT}: randomised blocks (bzip2 0.9.0) are not supported`);
  const origPtr = reader.bits(24);

  // Which byte values occur: 16 groups of 16.
  const used: number[] = [];
  const groupsUsed = reader.bits(16);
  for (let i = 0; i < 16; i++) {
    if (!(groupsUsed & (0x8000 >> i))) continue;
    const bits = reader.bits(16);
    for (let j = 0; j < 16; j++) if (bits & (0x8000 >> j)) used.push(i * 16 + j);
  }
  if (used.length === 0) corrupt("block uses no byte values");
  const alphaSize = used.length + 2;
  const endOfBlock = alphaSize - 1;

  const groupCount = reader.bits(3);
  if (groupCount < 2 || groupCount > MAX_GROUPS) corrupt(`${groupCount} Huffman tables`);
  const selectorCount = reader.bits(15);
  if (selectorCount === 0) corrupt("no selectors");
  const mtfGroups = Array.from({ length: groupCount }, (_, i) => i);
  const selectors = new Uint8Array(selectorCount);
  for (let i = 0; i < selectorCount; i++) {
    let j = 0;
    while (reader.bit()) if (++j >= groupCount) corrupt("selector out of range");
    const value = mtfGroups[j]!;
    mtfGroups.splice(j, 1);
    mtfGroups.unshift(value);
    selectors[i] = value;
  }

  const tables = [];
  for (let g = 0; g < groupCount; g++) {
    const lengths = new Uint8Array(alphaSize);
    let length = reader.bits(5);
    for (let s = 0; s < alphaSize; s++) {
      for (;;) {
        if (length < 1 || length > MAX_CODE_LENGTH) corrupt("Huffman code length out of range");
        if (!reader.bit()) break;
        length += reader.bit() ? -1 : 1;
      }
      lengths[s] = length;
    }
    tables.push(huffmanTable(lengths));
  }

  // Huffman → MTF/RLE2 → byte counts and tt (the BWT's last column).
  const mtf = Uint8Array.from(used);
  const counts = new Uint32Array(256);
  let count = 0;
  let runLength = 0;
  let runWeight = 1;
  let groupIndex = 0;
  let groupLeft = 0;
  let table = tables[0]!;
  const flushRun = () => {
    if (runLength === 0) return;
    const byte = mtf[0]!;
    if (count + runLength > maxBlock) corrupt("block is larger than its declared size");
    counts[byte]! += runLength;
    tt.fill(byte, count, count + runLength);
    count += runLength;
    runLength = 0;
    runWeight = 1;
  };
  for (;;) {
    if (groupLeft === 0) {
      if (groupIndex >= selectorCount) corrupt("ran out of selectors");
      table = tables[selectors[groupIndex++]!]!;
      groupLeft = GROUP_SIZE;
    }
    groupLeft--;
    const symbol = decodeSymbol(reader, table);
    if (symbol === RUN_A || symbol === RUN_B) {
      if (runWeight > maxBlock) corrupt("run is longer than a block");
      runLength += runWeight << symbol; // RUNA adds 1×weight, RUNB 2×weight
      runWeight <<= 1;
      continue;
    }
    flushRun();
    if (symbol === endOfBlock) break;
    const index = symbol - 1;
    if (index >= used.length) corrupt("MTF index out of range");
    const byte = mtf[index]!;
    mtf.copyWithin(1, 0, index);
    mtf[0] = byte;
    if (count >= maxBlock) corrupt("block is larger than its declared size");
    counts[byte]!++;
    tt[count++] = byte;
  }
  if (origPtr >= count) corrupt("BWT origin pointer out of range");

  // Inverse BWT: build the successor links in the high bits of tt.
  const starts = new Uint32Array(256);
  for (let i = 0, sum = 0; i < 256; i++) {
    starts[i] = sum;
    sum += counts[i]!;
  }
  for (let i = 0; i < count; i++) {
    const byte = tt[i]! & 0xff;
    tt[starts[byte]!]! |= i << 8;
    starts[byte]!++;
  }

  // Walk the links and undo the initial run-length encoding (4 equal bytes, then a count).
  let pointer = tt[origPtr]! >>> 8;
  let last = -1;
  let repeat = 0;
  for (let i = 0; i < count; i++) {
    const entry = tt[pointer]!;
    const byte = entry & 0xff;
    pointer = entry >>> 8;
    if (repeat === 4) {
      out.reserve(byte);
      out.buf.fill(last, out.pos, out.pos + byte);
      out.pos += byte;
      repeat = 0;
      last = -1;
      continue;
    }
    repeat = byte === last ? repeat + 1 : 1;
    last = byte;
    out.reserve(1);
    out.buf[out.pos++] = byte;
  }
}

interface HuffmanTable {
  minLength: number;
  /** limit[len]: the largest code of that length (or -1). */
  limit: Int32Array;
  /** base[len]: subtract from a code of that length to index perm. */
  base: Int32Array;
  perm: Uint16Array;
}

function huffmanTable(lengths: Uint8Array): HuffmanTable {
  let minLength = MAX_CODE_LENGTH;
  let maxLength = 0;
  for (const l of lengths) {
    minLength = Math.min(minLength, l);
    maxLength = Math.max(maxLength, l);
  }
  const perm = new Uint16Array(lengths.length);
  let p = 0;
  for (let len = minLength; len <= maxLength; len++) {
    for (let s = 0; s < lengths.length; s++) if (lengths[s] === len) perm[p++] = s;
  }
  const limit = new Int32Array(MAX_CODE_LENGTH + 2).fill(-1);
  const base = new Int32Array(MAX_CODE_LENGTH + 2);
  let code = 0;
  let index = 0;
  for (let len = minLength; len <= maxLength; len++) {
    let n = 0;
    for (const l of lengths) if (l === len) n++;
    base[len] = code - index;
    code += n;
    index += n;
    limit[len] = code - 1;
    code <<= 1;
  }
  return { minLength, limit, base, perm };
}

function decodeSymbol(reader: BitReader, table: HuffmanTable): number {
  let len = table.minLength;
  let code = reader.bits(len);
  while (len <= MAX_CODE_LENGTH) {
    if (code <= table.limit[len]!) {
      const index = code - table.base[len]!;
      if (index < 0 || index >= table.perm.length) corrupt("invalid Huffman code");
      return table.perm[index]!;
    }
    code = (code << 1) | reader.bit();
    len++;
  }
  return corrupt("invalid Huffman code");
}

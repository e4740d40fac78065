/**
 * The .xz container (tukaani.org xz-file-format 1.1.0) with the filters a
 * kernel build uses: LZMA2, optionally after the x86 BCJ filter
 * (scripts/xz_wrap.sh: `xz --check=crc32 --x86 --lzma2=,dict=32MiB`).
 * Decodes the first stream; what follows it (the bzImage's size word) is
 * ignored. Block checks (CRC32, CRC64, SHA-256) are verified, so a corrupt
 * payload fails here rather than producing a kernel that crashes.
 */
import { createHash } from "node:crypto";
import { decodeLzma2 } from "./lzma.ts";
import { DecompressError, Output } from "./output.ts";

const FORMAT = "xz";
const HEADER_MAGIC = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
const FILTER_X86 = 0x04;
const FILTER_LZMA2 = 0x21;
const CHECK_SIZES: Record<number, number> = { 0: 0, 1: 4, 4: 8, 10: 32 };

function corrupt(what: string): never {
  throw new DecompressError(`${FORMAT}: corrupt data (${what})`);
}

export function decompressXz(input: Uint8Array, limit: number, expected?: number): Uint8Array {
  if (input.length < 12 || !HEADER_MAGIC.every((b, i) => input[i] === b)) corrupt("no xz stream header");
  if (input[6] !== 0 || (input[7]! & 0xf0) !== 0) corrupt("unsupported stream flags");
  if (crc32(input.subarray(6, 8)) !== readU32(input, 8)) corrupt("stream header CRC mismatch");
  const checkType = input[7]!;
  const checkSize = CHECK_SIZES[checkType];
  if (checkSize === undefined) throw new DecompressError(`${FORMAT}: unsupported check type ${checkType}`);

  const out = new Output(FORMAT, limit, expected);
  let at = 12;
  for (;;) {
    if (at >= input.length) corrupt("truncated before the index");
    const sizeByte = input[at]!;
    if (sizeByte === 0) break; // the index: every block has been read
    const headerSize = (sizeByte + 1) * 4;
    if (at + headerSize > input.length) corrupt("block header truncated");
    const header = input.subarray(at, at + headerSize);
    if (crc32(header.subarray(0, headerSize - 4)) !== readU32(header, headerSize - 4)) corrupt("block header CRC mismatch");
    const filters = parseBlockHeader(header);
    at += headerSize;

    const blockStart = out.pos;
    const dataStart = at;
    at = decodeLzma2(input, at, input.length, out, FORMAT);
    if (filters.compressedSize !== undefined && at - dataStart !== filters.compressedSize) corrupt("block's compressed size differs from its header");
    if (filters.uncompressedSize !== undefined && out.pos - blockStart !== filters.uncompressedSize) corrupt("block's uncompressed size differs from its header");
    if (filters.x86Start !== undefined) bcjX86Decode(out.buf.subarray(blockStart, out.pos), filters.x86Start);
    while ((at - dataStart) % 4 !== 0) {
      if (input[at++] !== 0) corrupt("non-zero block padding");
    }
    if (at + checkSize > input.length) corrupt("block check truncated");
    verifyCheck(checkType, out.buf.subarray(blockStart, out.pos), input.subarray(at, at + checkSize));
    at += checkSize;
  }
  return out.result();
}

interface BlockFilters {
  compressedSize?: number;
  uncompressedSize?: number;
  /** Start offset of the x86 BCJ filter, when the block uses it. */
  x86Start?: number;
}

function parseBlockHeader(header: Uint8Array): BlockFilters {
  const flags = header[1]!;
  if (flags & 0x3c) corrupt("reserved block flags set");
  const filterCount = (flags & 3) + 1;
  let at = 2;
  const varint = (): number => {
    let value = 0;
    for (let i = 0; i < 9; i++) {
      if (at >= header.length - 4) corrupt("block header field runs past the header");
      const byte = header[at++]!;
      value += (byte & 0x7f) * 2 ** (7 * i);
      if ((byte & 0x80) === 0) return value;
    }
    return corrupt("block header number too long");
  };
  const result: BlockFilters = {};
  if (flags & 0x40) result.compressedSize = varint();
  if (flags & 0x80) result.uncompressedSize = varint();
  const ids: number[] = [];
  for (let i = 0; i < filterCount; i++) {
    const id = varint();
    const propsSize = varint();
    if (at + propsSize > header.length - 4) corrupt("filter properties run past the header");
    const props = header.subarray(at, at + propsSize);
    at += propsSize;
    ids.push(id);
    if (id === FILTER_LZMA2) {
      if (i !== filterCount - 1) corrupt("LZMA2 is not the last filter");
      if (propsSize !== 1 || props[0]! > 40) corrupt("invalid LZMA2 properties");
    } else if (id === FILTER_X86) {
      if (propsSize !== 0 && propsSize !== 4) corrupt("invalid x86 filter properties");
      result.x86Start = propsSize === 4 ? readU32(props, 0) : 0;
    } else {
      throw new DecompressError(`${FORMAT}: filter 0x${id.toString(16)} is not supported (Volt decodes LZMA2 with or without the x86 BCJ filter)`);
    }
  }
  if (ids.at(-1) !== FILTER_LZMA2) corrupt("the last filter is not LZMA2");
  if (filterCount > 2) throw new DecompressError(`${FORMAT}: ${filterCount} filters in one block are not supported`);
  for (; at < header.length - 4; at++) if (header[at] !== 0) corrupt("non-zero block header padding");
  return result;
}

/**
 * Undoes the x86 branch converter: E8/E9 (call/jmp rel32) targets were made
 * absolute before compression. A transcription of xz-embedded's bcj_x86 over
 * a whole block at once; the last four bytes are never converted.
 */
export function bcjX86Decode(buf: Uint8Array, startOffset: number): void {
  const allowed = [true, true, true, false, true, false, false, false];
  const bitNum = [0, 1, 2, 2, 3, 3, 3, 3];
  const isMsByte = (b: number) => b === 0x00 || b === 0xff;
  const size = buf.length - 4;
  let prevPos = -1;
  let prevMask = 0;
  for (let i = 0; i < size; i++) {
    if ((buf[i]! & 0xfe) !== 0xe8) continue;
    const distance = i - prevPos;
    if (distance > 3) {
      prevMask = 0;
    } else {
      prevMask = (prevMask << (distance - 1)) & 7;
      if (prevMask !== 0) {
        const b = buf[i + 4 - bitNum[prevMask]!]!;
        if (!allowed[prevMask] || isMsByte(b)) {
          prevPos = i;
          prevMask = (prevMask << 1) | 1;
          continue;
        }
      }
    }
    prevPos = i;
    if (isMsByte(buf[i + 4]!)) {
      let src = (buf[i + 1]! | (buf[i + 2]! << 8) | (buf[i + 3]! << 16) | (buf[i + 4]! << 24)) >>> 0;
      let dest: number;
      for (;;) {
        dest = (src - ((startOffset + i + 5) >>> 0)) >>> 0;
        if (prevMask === 0) break;
        const j = bitNum[prevMask]! * 8;
        const b = (dest >>> (24 - j)) & 0xff;
        if (!isMsByte(b)) break;
        src = (dest ^ ((1 << (32 - j)) - 1)) >>> 0;
      }
      dest &= 0x01ff_ffff;
      if (dest & 0x0100_0000) dest |= 0xff00_0000;
      buf[i + 1] = dest & 0xff;
      buf[i + 2] = (dest >>> 8) & 0xff;
      buf[i + 3] = (dest >>> 16) & 0xff;
      buf[i + 4] = (dest >>> 24) & 0xff;
      i += 4;
    } else {
      prevMask = (prevMask << 1) | 1;
    }
  }
}

function verifyCheck(type: number, data: Uint8Array, stored: Uint8Array): void {
  let ok = true;
  if (type === 1) ok = crc32(data) === readU32(stored, 0);
  else if (type === 4) ok = crc64(data) === new DataView(stored.buffer, stored.byteOffset, 8).getBigUint64(0, true);
  else if (type === 10) ok = Buffer.from(createHash("sha256").update(data).digest()).equals(stored);
  if (!ok) corrupt("block check mismatch: the decompressed data is damaged");
}

export function crc32(data: Uint8Array): number {
  return Bun.hash.crc32(data) >>> 0;
}

let crc64Table: BigUint64Array | undefined;

function crc64(data: Uint8Array): bigint {
  if (!crc64Table) {
    crc64Table = new BigUint64Array(256);
    const poly = 0xc96c5795d7870f42n;
    for (let i = 0; i < 256; i++) {
      let c = BigInt(i);
      for (let k = 0; k < 8; k++) c = c & 1n ? (c >> 1n) ^ poly : c >> 1n;
      crc64Table[i] = c;
    }
  }
  let crc = 0xffff_ffff_ffff_ffffn;
  for (const byte of data) crc = crc64Table[Number((crc ^ BigInt(byte)) & 0xffn)]! ^ (crc >> 8n);
  return crc ^ 0xffff_ffff_ffff_ffffn;
}

function readU32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

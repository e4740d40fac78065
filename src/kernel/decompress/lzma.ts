/**
 * LZMA and LZMA2 decoding, after Igor Pavlov's public-domain LzmaSpec and the
 * LZMA2 chunk format as XZ Utils and the kernel's xz_dec read it. The whole
 * output is the dictionary (Volt decompresses a kernel in one piece), so a
 * match may reach back to any byte since the last dictionary reset.
 *
 * Used for bzImage payloads made by `lzma -9` (the .lzma "alone" format) and,
 * through xz.ts, by `xz --x86 --lzma2`.
 */
import { DecompressError, Output } from "./output.ts";

const NUM_STATES = 12;
const POS_STATES_MAX = 16;
const END_POS_MODEL_INDEX = 14;
const NUM_FULL_DISTANCES = 128;
const NUM_ALIGN_BITS = 4;
const LEN_TO_POS_STATES = 4;
const MATCH_MIN_LEN = 2;

// Offsets of each probability array in one Uint16Array (LzmaDec.c does the same).
const IS_MATCH = 0;
const IS_REP = IS_MATCH + NUM_STATES * POS_STATES_MAX;
const IS_REP_G0 = IS_REP + NUM_STATES;
const IS_REP_G1 = IS_REP_G0 + NUM_STATES;
const IS_REP_G2 = IS_REP_G1 + NUM_STATES;
const IS_REP0_LONG = IS_REP_G2 + NUM_STATES;
const POS_SLOT = IS_REP0_LONG + NUM_STATES * POS_STATES_MAX;
const SPEC_POS = POS_SLOT + LEN_TO_POS_STATES * 64;
const ALIGN = SPEC_POS + 1 + NUM_FULL_DISTANCES - END_POS_MODEL_INDEX;
const LEN_CODER = ALIGN + (1 << NUM_ALIGN_BITS);
const LEN_CODER_SIZE = 2 + POS_STATES_MAX * 8 * 2 + 256;
const REP_LEN_CODER = LEN_CODER + LEN_CODER_SIZE;
const LITERAL = REP_LEN_CODER + LEN_CODER_SIZE;
// Within a length coder.
const LEN_CHOICE = 0;
const LEN_CHOICE2 = 1;
const LEN_LOW = 2;
const LEN_MID = LEN_LOW + POS_STATES_MAX * 8;
const LEN_HIGH = LEN_MID + POS_STATES_MAX * 8;

const PROB_INIT = 1024;
const TOP = 1 << 24;

export interface LzmaProperties {
  lc: number;
  lp: number;
  pb: number;
}

/** Decodes the lc/lp/pb byte of an LZMA header or an LZMA2 chunk. */
export function parseLzmaProperties(byte: number, format: string): LzmaProperties {
  if (byte >= 9 * 5 * 5) throw new DecompressError(`${format}: invalid LZMA properties byte 0x${byte.toString(16)}`);
  const lc = byte % 9;
  const rest = Math.floor(byte / 9);
  return { lc, lp: rest % 5, pb: Math.floor(rest / 5) };
}

/** A range-coded LZMA decoder writing into `out`; state survives between LZMA2 chunks. */
export class LzmaDecoder {
  private readonly format: string;
  private readonly out: Output;
  private probs = new Uint16Array(0);
  private lc = 0;
  private lp = 0;
  private pb = 0;
  private state = 0;
  private rep0 = 0;
  private rep1 = 0;
  private rep2 = 0;
  private rep3 = 0;
  /** Output position of the last dictionary reset: no match may reach before it. */
  dictStart = 0;
  // Range decoder.
  private input: Uint8Array = new Uint8Array(0);
  private inPos = 0;
  private inEnd = 0;
  private range = 0;
  private code = 0;

  constructor(format: string, out: Output) {
    this.format = format;
    this.out = out;
  }

  setProperties(props: LzmaProperties): void {
    this.lc = props.lc;
    this.lp = props.lp;
    this.pb = props.pb;
    const size = LITERAL + (0x300 << (props.lc + props.lp));
    if (this.probs.length !== size) this.probs = new Uint16Array(size);
  }

  resetState(): void {
    this.probs.fill(PROB_INIT);
    this.state = 0;
    this.rep0 = this.rep1 = this.rep2 = this.rep3 = 0;
  }

  /** Starts a range decoder on input[start, end): a zero byte, then the 32-bit code. */
  initRangeDecoder(input: Uint8Array, start: number, end: number): void {
    if (end - start < 5) this.corrupt("compressed data too short");
    if (input[start] !== 0) this.corrupt("range coder does not start with a zero byte");
    this.input = input;
    this.inEnd = end;
    this.range = 0xffff_ffff;
    this.code = ((input[start + 1]! << 24) | (input[start + 2]! << 16) | (input[start + 3]! << 8) | input[start + 4]!) >>> 0;
    this.inPos = start + 5;
    if (this.code === this.range) this.corrupt("range coder initial code is invalid");
  }

  /** Input bytes the range decoder has consumed so far (its position). */
  get inputPosition(): number {
    return this.inPos;
  }

  /** True when the range decoder ended cleanly (its code is zero), as an LZMA stream must. */
  get finishedCleanly(): boolean {
    return this.code === 0;
  }

  /**
   * Decodes until the output reaches `outEnd`, or until an end marker when
   * `outEnd` is undefined (or when `endMarkerAllowed`). Returns true if it
   * stopped at an end marker.
   */
  decode(outEnd: number | undefined, endMarkerAllowed: boolean): boolean {
    const out = this.out;
    const probs = this.probs;
    const pbMask = (1 << this.pb) - 1;
    const lpMask = (1 << this.lp) - 1;
    const lc = this.lc;
    let state = this.state;
    let rep0 = this.rep0;
    let rep1 = this.rep1;
    let rep2 = this.rep2;
    let rep3 = this.rep3;
    try {
      for (;;) {
        if (outEnd !== undefined && out.pos >= outEnd) {
          if (!endMarkerAllowed) return false;
          // The stream may still carry an end marker after exactly the declared size.
          if (this.code === 0) return false;
        }
        const pos = out.pos;
        const posState = pos & pbMask;
        if (this.bit(IS_MATCH + (state << 4) + posState) === 0) {
          if (outEnd !== undefined && pos >= outEnd) this.corrupt("data continues past the declared size");
          // Literal.
          out.reserve(1);
          const buf = out.buf;
          const prevByte = pos > this.dictStart ? buf[pos - 1]! : 0;
          const base = LITERAL + 0x300 * (((pos & lpMask) << lc) + (prevByte >> (8 - lc)));
          let symbol = 1;
          if (state >= 7) {
            let matchByte = buf[pos - rep0 - 1]!;
            do {
              const matchBit = (matchByte >> 7) & 1;
              matchByte <<= 1;
              const bit = this.bit(base + ((1 + matchBit) << 8) + symbol);
              symbol = (symbol << 1) | bit;
              if (matchBit !== bit) break;
            } while (symbol < 0x100);
          }
          while (symbol < 0x100) symbol = (symbol << 1) | this.bit(base + symbol);
          buf[pos] = symbol - 0x100;
          out.pos = pos + 1;
          state = state < 4 ? 0 : state < 10 ? state - 3 : state - 6;
          continue;
        }
        let len: number;
        if (this.bit(IS_REP + state) !== 0) {
          if (pos === this.dictStart) this.corrupt("repeated match at the start of the dictionary");
          if (this.bit(IS_REP_G0 + state) === 0) {
            if (this.bit(IS_REP0_LONG + (state << 4) + posState) === 0) {
              // Short rep: one byte from rep0.
              if (outEnd !== undefined && pos >= outEnd) this.corrupt("data continues past the declared size");
              out.reserve(1);
              out.buf[pos] = out.buf[pos - rep0 - 1]!;
              out.pos = pos + 1;
              state = state < 7 ? 9 : 11;
              continue;
            }
          } else {
            let dist: number;
            if (this.bit(IS_REP_G1 + state) === 0) {
              dist = rep1;
            } else {
              if (this.bit(IS_REP_G2 + state) === 0) {
                dist = rep2;
              } else {
                dist = rep3;
                rep3 = rep2;
              }
              rep2 = rep1;
            }
            rep1 = rep0;
            rep0 = dist;
          }
          len = this.decodeLength(REP_LEN_CODER, posState);
          state = state < 7 ? 8 : 11;
        } else {
          rep3 = rep2;
          rep2 = rep1;
          rep1 = rep0;
          len = this.decodeLength(LEN_CODER, posState);
          state = state < 7 ? 7 : 10;
          rep0 = this.decodeDistance(len);
          if (rep0 === 0xffff_ffff) {
            if (!endMarkerAllowed) this.corrupt("unexpected end marker");
            if (this.code !== 0) this.corrupt("range coder not finished at the end marker");
            return true;
          }
        }
        len += MATCH_MIN_LEN;
        if (rep0 >= pos - this.dictStart) this.corrupt(`match distance ${rep0 + 1} reaches before the start of the data`);
        if (outEnd !== undefined && pos + len > outEnd) this.corrupt("match runs past the declared size");
        out.reserve(len);
        const buf = out.buf;
        const from = pos - rep0 - 1;
        if (rep0 + 1 >= len) {
          buf.copyWithin(pos, from, from + len);
        } else {
          for (let i = 0; i < len; i++) buf[pos + i] = buf[from + i]!;
        }
        out.pos = pos + len;
      }
    } finally {
      this.state = state;
      this.rep0 = rep0;
      this.rep1 = rep1;
      this.rep2 = rep2;
      this.rep3 = rep3;
    }
  }

  private decodeLength(base: number, posState: number): number {
    if (this.bit(base + LEN_CHOICE) === 0) return this.bitTree(base + LEN_LOW + posState * 8, 3);
    if (this.bit(base + LEN_CHOICE2) === 0) return 8 + this.bitTree(base + LEN_MID + posState * 8, 3);
    return 16 + this.bitTree(base + LEN_HIGH, 8);
  }

  private decodeDistance(len: number): number {
    const lenState = len < LEN_TO_POS_STATES - 1 ? len : LEN_TO_POS_STATES - 1;
    const posSlot = this.bitTree(POS_SLOT + (lenState << 6), 6);
    if (posSlot < 4) return posSlot;
    const numDirectBits = (posSlot >> 1) - 1;
    let dist = (2 | (posSlot & 1)) * 2 ** numDirectBits;
    if (posSlot < END_POS_MODEL_INDEX) {
      dist += this.reverseBitTree(SPEC_POS + dist - posSlot, numDirectBits);
    } else {
      dist += this.directBits(numDirectBits - NUM_ALIGN_BITS) * 16;
      dist += this.reverseBitTree(ALIGN, NUM_ALIGN_BITS);
    }
    return dist;
  }

  private bitTree(base: number, numBits: number): number {
    let m = 1;
    for (let i = 0; i < numBits; i++) m = (m << 1) | this.bit(base + m);
    return m - (1 << numBits);
  }

  private reverseBitTree(base: number, numBits: number): number {
    let m = 1;
    let symbol = 0;
    for (let i = 0; i < numBits; i++) {
      const bit = this.bit(base + m);
      m = (m << 1) | bit;
      symbol |= bit << i;
    }
    return symbol;
  }

  private directBits(numBits: number): number {
    let result = 0;
    for (let i = 0; i < numBits; i++) {
      this.range >>>= 1;
      let code = (this.code - this.range) >>> 0;
      const negative = code >>> 31;
      if (negative) code = (code + this.range) >>> 0;
      this.code = code;
      if (code === this.range) this.corrupt("range coder error in direct bits");
      this.normalize();
      result = result * 2 + (1 - negative);
    }
    return result;
  }

  private bit(index: number): number {
    const probs = this.probs;
    const p = probs[index]!;
    const bound = (this.range >>> 11) * p;
    let bit: number;
    if (this.code < bound) {
      this.range = bound;
      probs[index] = p + ((2048 - p) >> 5);
      bit = 0;
    } else {
      this.code -= bound;
      this.range -= bound;
      probs[index] = p - (p >> 5);
      bit = 1;
    }
    if (this.range < TOP) this.normalize();
    return bit;
  }

  private normalize(): void {
    if (this.range < TOP) {
      if (this.inPos >= this.inEnd) this.corrupt("compressed data is truncated");
      this.range = (this.range * 256) >>> 0;
      this.code = ((this.code * 256) >>> 0) + this.input[this.inPos++]!;
      this.code >>>= 0;
    }
  }

  private corrupt(what: string): never {
    throw new DecompressError(`${this.format}: corrupt data (${what})`);
  }
}

/**
 * The .lzma "alone" format: properties byte, 32-bit dictionary size, 64-bit
 * uncompressed size (all ones: unknown, ended by an end marker), then the
 * range-coded data. Anything after the stream (the bzImage's size word) is
 * ignored.
 */
export function decompressLzmaAlone(input: Uint8Array, limit: number, expected?: number): Uint8Array {
  const format = "lzma";
  if (input.length < 13) throw new DecompressError(`${format}: header truncated (${input.length} bytes)`);
  const props = parseLzmaProperties(input[0]!, format);
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  const sizeLow = view.getUint32(5, true);
  const sizeHigh = view.getUint32(9, true);
  const sizeKnown = !(sizeLow === 0xffff_ffff && sizeHigh === 0xffff_ffff);
  const declared = sizeHigh * 2 ** 32 + sizeLow;
  if (sizeKnown && declared > limit) throw new DecompressError(`${format}: header declares ${declared} bytes, more than the expected ${limit}`);
  const out = new Output(format, sizeKnown ? declared : limit, sizeKnown ? declared : expected);
  const decoder = new LzmaDecoder(format, out);
  decoder.setProperties(props);
  decoder.resetState();
  decoder.initRangeDecoder(input, 13, input.length);
  decoder.decode(sizeKnown ? declared : undefined, true);
  if (sizeKnown && out.pos !== declared) throw new DecompressError(`${format}: corrupt data (ended after ${out.pos} of ${declared} bytes)`);
  return out.result();
}

/**
 * LZMA2 chunks from input[start, end) into `out`; returns the input position
 * after the end-of-stream byte. Each chunk says whether it resets the
 * dictionary, the LZMA state or its properties.
 */
export function decodeLzma2(input: Uint8Array, start: number, end: number, out: Output, format: string): number {
  const decoder = new LzmaDecoder(format, out);
  let at = start;
  let needDictReset = true;
  let needProps = true;
  const corrupt = (what: string): never => {
    throw new DecompressError(`${format}: corrupt LZMA2 data (${what})`);
  };
  for (;;) {
    if (at >= end) corrupt("truncated before the end-of-stream chunk");
    const control = input[at++]!;
    if (control === 0x00) return at;
    if (control === 0x01 || control === 0x02) {
      // Uncompressed chunk (0x01 also resets the dictionary).
      if (control === 0x01) {
        decoder.dictStart = out.pos;
        needDictReset = false;
      } else if (needDictReset) corrupt("first chunk does not reset the dictionary");
      if (at + 2 > end) corrupt("truncated chunk header");
      const size = ((input[at]! << 8) | input[at + 1]!) + 1;
      at += 2;
      if (at + size > end) corrupt("uncompressed chunk runs past the end of the data");
      out.reserve(size);
      out.buf.set(input.subarray(at, at + size), out.pos);
      out.pos += size;
      at += size;
      continue;
    }
    if (control < 0x80) corrupt(`invalid chunk control byte 0x${control.toString(16)}`);
    if (at + 4 > end) corrupt("truncated chunk header");
    const unpacked = (control & 0x1f) * 65536 + ((input[at]! << 8) | input[at + 1]!) + 1;
    const packed = ((input[at + 2]! << 8) | input[at + 3]!) + 1;
    at += 4;
    const reset = (control >> 5) & 3;
    if (reset === 3) {
      decoder.dictStart = out.pos;
      needDictReset = false;
    } else if (needDictReset) corrupt("first chunk does not reset the dictionary");
    if (reset >= 2) {
      if (at >= end) corrupt("truncated chunk header");
      const props = parseLzmaProperties(input[at++]!, format);
      if (props.lc + props.lp > 4) corrupt("lc + lp exceeds 4");
      decoder.setProperties(props);
      needProps = false;
    } else if (needProps) corrupt("chunk without properties before any were given");
    if (reset >= 1) decoder.resetState();
    if (at + packed > end) corrupt("compressed chunk runs past the end of the data");
    decoder.initRangeDecoder(input, at, at + packed);
    decoder.decode(out.pos + unpacked, false);
    if (!decoder.finishedCleanly) corrupt("chunk did not end cleanly");
    at += packed;
  }
}

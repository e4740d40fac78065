/**
 * A small encoder for ACPI Machine Language (ACPI 6.5, chapter 20): only the
 * terms Volt's DSDT uses — names, scopes, devices, integers, strings,
 * packages and resource-template buffers. Every encoder returns the term's
 * bytes; composite terms take their children's bytes.
 */

/** Encoded AML: a term, or a list of terms concatenated. */
export type Aml = Uint8Array;

export class AmlError extends RangeError {
  override name = "AmlError";
}

const ZERO_OP = 0x00;
const ONE_OP = 0x01;
const NAME_OP = 0x08;
const BYTE_PREFIX = 0x0a;
const WORD_PREFIX = 0x0b;
const DWORD_PREFIX = 0x0c;
const STRING_PREFIX = 0x0d;
const QWORD_PREFIX = 0x0e;
const SCOPE_OP = 0x10;
const BUFFER_OP = 0x11;
const PACKAGE_OP = 0x12;
const DUAL_NAME_PREFIX = 0x2e;
const MULTI_NAME_PREFIX = 0x2f;
const ROOT_CHAR = 0x5c;
const PARENT_PREFIX_CHAR = 0x5e;
const EXT_OP_PREFIX = 0x5b;
const DEVICE_OP = 0x82;

const U32_MAX = 0xffff_ffff;
const U64_MAX = (1n << 64n) - 1n;

export function concat(...parts: readonly Aml[]): Aml {
  const out = new Uint8Array(parts.reduce((total, part) => total + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

// ---------------------------------------------------------------- lengths

/** Largest value each PkgLength size can hold: 6 bits in one byte, then 4 + 8k bits. */
const PKG_LENGTH_LIMITS = [0x3f, 0xfff, 0xf_ffff, 0xfff_ffff] as const;

/**
 * Encodes a PkgLength whose value is `value` (ACPI 20.2.4). The value counts
 * the PkgLength bytes themselves; see `withPkgLength` for that arithmetic.
 */
export function encodePkgLength(value: number): Aml {
  if (!Number.isInteger(value) || value < 0 || value > PKG_LENGTH_LIMITS[3]) {
    throw new AmlError(`AML PkgLength ${value} is out of range`);
  }
  if (value <= PKG_LENGTH_LIMITS[0]) return Uint8Array.of(value);
  const extraBytes = value <= PKG_LENGTH_LIMITS[1] ? 1 : value <= PKG_LENGTH_LIMITS[2] ? 2 : 3;
  const out = new Uint8Array(1 + extraBytes);
  // Lead byte: the count of following bytes in bits 7-6, the low nibble in bits 3-0 (bits 5-4 stay 0).
  out[0] = (extraBytes << 6) | (value & 0x0f);
  for (let i = 1; i <= extraBytes; i++) out[i] = (value >>> (4 + 8 * (i - 1))) & 0xff;
  return out;
}

/** `body` preceded by the smallest PkgLength that covers both itself and `body`. */
export function withPkgLength(body: Aml): Aml {
  for (let size = 1; size <= PKG_LENGTH_LIMITS.length; size++) {
    if (body.length + size <= PKG_LENGTH_LIMITS[size - 1]!) return concat(encodePkgLength(body.length + size), body);
  }
  throw new AmlError(`AML package body of ${body.length} bytes is too long`);
}

// ---------------------------------------------------------------- names

const LEAD_NAME_CHAR = /^[A-Z_]$/;
const NAME_CHAR = /^[A-Z0-9_]$/;

/** A NameSeg: four characters, the first not a digit; shorter names are padded with '_'. */
export function nameSeg(name: string): Aml {
  if (name.length < 1 || name.length > 4) throw new AmlError(`AML NameSeg "${name}" must be 1-4 characters`);
  const padded = name.padEnd(4, "_");
  if (!LEAD_NAME_CHAR.test(padded[0]!) || ![...padded.slice(1)].every((c) => NAME_CHAR.test(c))) {
    throw new AmlError(`AML NameSeg "${name}" may use only A-Z, 0-9 and '_' and must not start with a digit`);
  }
  return new TextEncoder().encode(padded);
}

/**
 * A NameString in ASL spelling: an optional root '\' or parent '^' prefixes,
 * then '.'-separated segments ("\_SB.COM1", "^FOO", "_S5").
 */
export function nameString(path: string): Aml {
  let at = 0;
  const prefix: number[] = [];
  if (path.startsWith("\\")) {
    prefix.push(ROOT_CHAR);
    at = 1;
  } else {
    while (path[at] === "^") {
      prefix.push(PARENT_PREFIX_CHAR);
      at++;
    }
  }
  const rest = path.slice(at);
  const segments = rest === "" ? [] : rest.split(".").map(nameSeg);
  let namePath: Aml;
  if (segments.length === 0) namePath = Uint8Array.of(ZERO_OP); // NullName
  else if (segments.length === 1) namePath = segments[0]!;
  else if (segments.length === 2) namePath = concat(Uint8Array.of(DUAL_NAME_PREFIX), ...segments);
  else if (segments.length <= 255) namePath = concat(Uint8Array.of(MULTI_NAME_PREFIX, segments.length), ...segments);
  else throw new AmlError(`AML name "${path}" has too many segments`);
  return concat(Uint8Array.from(prefix), namePath);
}

// ---------------------------------------------------------------- data

/** ComputationalData for an unsigned integer, in the shortest form (Zero, One, Byte/Word/DWord/QWordConst). */
export function integer(value: number | bigint): Aml {
  if (typeof value === "number" && !Number.isSafeInteger(value)) throw new AmlError(`AML integer ${value} is not exact`);
  const big = BigInt(value);
  if (big < 0n || big > U64_MAX) throw new AmlError(`AML integer ${value} is outside 0..2^64-1`);
  if (big === 0n) return Uint8Array.of(ZERO_OP);
  if (big === 1n) return Uint8Array.of(ONE_OP);
  const width = big <= 0xffn ? 1 : big <= 0xffffn ? 2 : big <= BigInt(U32_MAX) ? 4 : 8;
  const prefix = { 1: BYTE_PREFIX, 2: WORD_PREFIX, 4: DWORD_PREFIX, 8: QWORD_PREFIX }[width]!;
  const out = new Uint8Array(1 + width);
  out[0] = prefix;
  for (let i = 0; i < width; i++) out[1 + i] = Number((big >> BigInt(8 * i)) & 0xffn);
  return out;
}

/** A String: ASCII 0x01-0x7F, NUL-terminated. */
export function string(text: string): Aml {
  const bytes = new TextEncoder().encode(text);
  if (bytes.length !== text.length || bytes.some((b) => b === 0 || b > 0x7f)) {
    throw new AmlError(`AML string ${JSON.stringify(text)} must be ASCII without NUL`);
  }
  return concat(Uint8Array.of(STRING_PREFIX), bytes, Uint8Array.of(0));
}

/**
 * The 32-bit compressed EISA id of a PNP id such as "PNP0501" (ASL's EisaId):
 * three letters in 5 bits each and four hex digits, stored big-endian.
 */
export function eisaIdValue(id: string): number {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new AmlError(`EISA id "${id}" must be three capital letters and four hex digits`);
  const letter = (i: number) => id.charCodeAt(i) - 0x40;
  const value = ((letter(0) << 26) | (letter(1) << 21) | (letter(2) << 16) | Number.parseInt(id.slice(3), 16)) >>> 0;
  // The id reads in memory order (most significant byte first), so the little-endian DWord is byte-swapped.
  return (((value & 0xff) << 24) | ((value & 0xff00) << 8) | ((value >>> 8) & 0xff00) | (value >>> 24)) >>> 0;
}

export function eisaId(id: string): Aml {
  const value = eisaIdValue(id);
  const out = new Uint8Array(5);
  out[0] = DWORD_PREFIX;
  new DataView(out.buffer).setUint32(1, value, true);
  return out;
}

/** Package () { elements }: each element is a data object (integer, string, package, buffer). */
export function packageOf(elements: readonly Aml[]): Aml {
  if (elements.length > 255) throw new AmlError(`AML Package of ${elements.length} elements needs VarPackage`);
  return concat(Uint8Array.of(PACKAGE_OP), withPkgLength(concat(Uint8Array.of(elements.length), ...elements)));
}

/** Buffer () { bytes }, with the size as an integer term. */
export function buffer(bytes: Uint8Array): Aml {
  return concat(Uint8Array.of(BUFFER_OP), withPkgLength(concat(integer(bytes.length), bytes)));
}

// ---------------------------------------------------------------- namespace

/** Name (name, object). */
export function name(path: string, object: Aml): Aml {
  return concat(Uint8Array.of(NAME_OP), nameString(path), object);
}

/** Scope (path) { terms }. */
export function scope(path: string, terms: readonly Aml[]): Aml {
  return concat(Uint8Array.of(SCOPE_OP), withPkgLength(concat(nameString(path), ...terms)));
}

/** Device (path) { terms }. */
export function device(path: string, terms: readonly Aml[]): Aml {
  return concat(Uint8Array.of(EXT_OP_PREFIX, DEVICE_OP), withPkgLength(concat(nameString(path), ...terms)));
}

// ---------------------------------------------------------------- resource descriptors (ACPI 6.4)

/** IO (Decode16, min, max, alignment, length): small item 0x08, 7 bytes. */
export function ioPort(minimum: number, maximum: number, alignment: number, length: number): Aml {
  checkRange("IO minimum", minimum, 0xffff);
  checkRange("IO maximum", maximum, 0xffff);
  checkRange("IO alignment", alignment, 0xff);
  checkRange("IO length", length, 0xff);
  const out = new Uint8Array(8);
  const view = new DataView(out.buffer);
  out[0] = 0x47; // small item name 0x08, length 7
  out[1] = 0x01; // decodes all 16 address bits
  view.setUint16(2, minimum, true);
  view.setUint16(4, maximum, true);
  out[6] = alignment;
  out[7] = length;
  return out;
}

/** IRQNoFlags () { irq }: the 2-byte IRQ descriptor, which means edge, active high, exclusive. */
export function irqNoFlags(irq: number): Aml {
  checkRange("IRQ", irq, 15);
  const out = new Uint8Array(3);
  out[0] = 0x22; // small item name 0x04, length 2
  new DataView(out.buffer).setUint16(1, 1 << irq, true);
  return out;
}

/** Memory32Fixed (ReadWrite|ReadOnly, base, length): large item 0x06. */
export function memory32Fixed(writable: boolean, base: number, length: number): Aml {
  checkRange("Memory32Fixed base", base, U32_MAX);
  checkRange("Memory32Fixed length", length, U32_MAX);
  const out = new Uint8Array(12);
  const view = new DataView(out.buffer);
  out[0] = 0x86;
  view.setUint16(1, 9, true);
  out[3] = writable ? 1 : 0;
  view.setUint32(4, base, true);
  view.setUint32(8, length, true);
  return out;
}

export interface InterruptFlags {
  readonly consumer: boolean;
  readonly edge: boolean;
  readonly activeLow: boolean;
  readonly shared: boolean;
}

/** Interrupt (consumer/producer, edge/level, polarity, sharing) { gsi }: the extended interrupt descriptor, large item 0x09. */
export function extendedInterrupt(flags: InterruptFlags, gsi: number): Aml {
  checkRange("Interrupt number", gsi, U32_MAX);
  const out = new Uint8Array(9);
  const view = new DataView(out.buffer);
  out[0] = 0x89;
  view.setUint16(1, 6, true);
  out[3] = (flags.consumer ? 1 : 0) | (flags.edge ? 2 : 0) | (flags.activeLow ? 4 : 0) | (flags.shared ? 8 : 0);
  out[4] = 1; // one interrupt in the table
  view.setUint32(5, gsi, true);
  return out;
}

/** ResourceTemplate () { descriptors }: a buffer ending in an End Tag whose checksum 0 means "none". */
export function resourceTemplate(descriptors: readonly Aml[]): Aml {
  return buffer(concat(...descriptors, Uint8Array.of(0x79, 0x00)));
}

function checkRange(what: string, value: number, max: number): void {
  if (!Number.isInteger(value) || value < 0 || value > max) throw new AmlError(`${what} ${value} must be 0..${max}`);
}

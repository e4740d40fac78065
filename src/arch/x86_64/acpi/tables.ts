/**
 * ACPI system description tables as bytes: the common header and its
 * checksum, the RSDP, XSDT, FADT, MADT and DSDT. Layouts and field names
 * follow the ACPI 6.5 specification (chapter 5.2) and Linux's
 * include/acpi/actbl*.h; the tests read the bytes back at the spec's offsets.
 * Addresses are parameters: where tables go is the machine's business.
 */
import { defineStruct, embed, type FieldSpec, type StructLayout, StructView } from "../../../kvm/struct.ts";
import type { Aml } from "./aml.ts";

export class AcpiTableError extends RangeError {
  override name = "AcpiTableError";
}

// ---------------------------------------------------------------- layouts

const acpi_table_header = defineStruct("struct acpi_table_header", 36, {
  signature: [0, "u8", 4],
  length: [4, "u32"],
  revision: [8, "u8"],
  checksum: [9, "u8"],
  oem_id: [10, "u8", 6],
  oem_table_id: [16, "u8", 8],
  oem_revision: [24, "u32"],
  asl_compiler_id: [28, "u8", 4],
  asl_compiler_revision: [32, "u32"],
});
export const ACPI_TABLE_HEADER_SIZE = acpi_table_header.size;

const acpi_generic_address = defineStruct("struct acpi_generic_address", 12, {
  space_id: [0, "u8"],
  bit_width: [1, "u8"],
  bit_offset: [2, "u8"],
  access_width: [3, "u8"],
  address: [4, "u64"],
});

const acpi_table_rsdp = defineStruct("struct acpi_table_rsdp", 36, {
  signature: [0, "u8", 8],
  checksum: [8, "u8"],
  oem_id: [9, "u8", 6],
  revision: [15, "u8"],
  rsdt_physical_address: [16, "u32"],
  length: [20, "u32"],
  xsdt_physical_address: [24, "u64"],
  extended_checksum: [32, "u8"],
  reserved: [33, "u8", 3],
});
/** The ACPI 1.0 part of the RSDP, which the first checksum covers. */
const RSDP_V1_SIZE = 20;
export const RSDP_SIZE = acpi_table_rsdp.size;

/**
 * ACPI 6.5 table 5.9, only the fields a hardware-reduced x86 FADT sets; the
 * rest (FACS, SCI, SMI, PM1/PM2 blocks, PM timer, GPEs, ...) stay zero.
 */
const acpi_table_fadt = defineStruct("struct acpi_table_fadt", 276, {
  dsdt: [40, "u32"],
  boot_flags: [109, "u16"],
  flags: [112, "u32"],
  ...embed("reset_register", 116, acpi_generic_address),
  reset_value: [128, "u8"],
  minor_revision: [131, "u8"],
  Xdsdt: [140, "u64"],
  ...embed("sleep_control", 244, acpi_generic_address),
  ...embed("sleep_status", 256, acpi_generic_address),
  hypervisor_id: [268, "u8", 8],
});
export const FADT_SIZE = acpi_table_fadt.size;

const acpi_table_madt = defineStruct("struct acpi_table_madt", 44, {
  address: [36, "u32"],
  flags: [40, "u32"],
});

// ---------------------------------------------------------------- header and checksum

/** Who made a table: OEM id (6 chars), OEM table id (8), OEM revision, creator id (4) and revision. */
export interface TableIds {
  readonly oemId: string;
  readonly oemTableId: string;
  readonly oemRevision: number;
  readonly creatorId: string;
  readonly creatorRevision: number;
}

/** Sum of all bytes mod 256: 0 for a valid table. */
export function byteSum(bytes: Uint8Array): number {
  return bytes.reduce((total, byte) => total + byte, 0) % 256;
}

/** The byte that makes `region` (its checksum field still 0) sum to 0 mod 256. */
export function checksumByte(region: Uint8Array): number {
  return (256 - byteSum(region)) % 256;
}

/** `text` as exactly `size` ASCII bytes, space padded as ACPI id fields are. */
function asciiField(what: string, text: string, size: number, pad = " "): Uint8Array {
  if (text.length > size || !/^[\x20-\x7e]*$/.test(text)) throw new AcpiTableError(`ACPI ${what} "${text}" must be at most ${size} printable ASCII characters`);
  return new TextEncoder().encode(text.padEnd(size, pad));
}

/** A complete table: header (with length and checksum) followed by `body`. */
export function buildTable(signature: string, revision: number, body: Uint8Array, ids: TableIds): Uint8Array {
  if (signature.length !== 4) throw new AcpiTableError(`ACPI signature "${signature}" must be 4 characters`);
  const bytes = new Uint8Array(acpi_table_header.size + body.length);
  bytes.set(body, acpi_table_header.size);
  const header = new StructView(acpi_table_header, bytes)
    .set("length", bytes.length)
    .set("revision", revision)
    .set("oem_revision", ids.oemRevision)
    .set("asl_compiler_revision", ids.creatorRevision);
  bytes.set(asciiField("signature", signature, 4), acpi_table_header.fields.signature.offset);
  bytes.set(asciiField("OEM id", ids.oemId, 6), acpi_table_header.fields.oem_id.offset);
  bytes.set(asciiField("OEM table id", ids.oemTableId, 8), acpi_table_header.fields.oem_table_id.offset);
  bytes.set(asciiField("creator id", ids.creatorId, 4), acpi_table_header.fields.asl_compiler_id.offset);
  header.set("checksum", checksumByte(bytes));
  return bytes;
}

/**
 * A table whose fixed part is `layout` (header included) followed by `tail`:
 * `fill` sets the fixed fields, then the header and checksum are written.
 */
function buildFixedTable<F extends Readonly<Record<string, FieldSpec>>>(
  signature: string,
  revision: number,
  layout: StructLayout<F>,
  tail: Uint8Array,
  ids: TableIds,
  fill: (view: StructView<F>) => void,
): Uint8Array {
  const fixed = new StructView(layout, new Uint8Array(layout.size));
  fill(fixed);
  const body = new Uint8Array(layout.size - acpi_table_header.size + tail.length);
  body.set(fixed.bytes.subarray(acpi_table_header.size));
  body.set(tail, layout.size - acpi_table_header.size);
  return buildTable(signature, revision, body, ids);
}

// ---------------------------------------------------------------- RSDP, XSDT

/** RSDP revision 2 (ACPI 2.0+): points only at the XSDT; the RSDT address stays 0. */
export function buildRsdp(xsdtAddress: number, oemId: string): Uint8Array {
  const rsdp = new StructView(acpi_table_rsdp)
    .set("revision", 2)
    .set("length", acpi_table_rsdp.size)
    .set("xsdt_physical_address", BigInt(xsdtAddress));
  rsdp.bytes.set(asciiField("RSDP signature", "RSD PTR ", 8), 0);
  rsdp.bytes.set(asciiField("OEM id", oemId, 6), acpi_table_rsdp.fields.oem_id.offset);
  rsdp.set("checksum", checksumByte(rsdp.bytes.subarray(0, RSDP_V1_SIZE)));
  // The extended checksum covers the whole structure, the first checksum included.
  rsdp.set("extended_checksum", checksumByte(rsdp.bytes));
  return rsdp.bytes;
}

/** XSDT revision 1: 64-bit addresses of the other tables (the DSDT is reached through the FADT). */
export function buildXsdt(tableAddresses: readonly number[], ids: TableIds): Uint8Array {
  const body = new Uint8Array(8 * tableAddresses.length);
  const view = new DataView(body.buffer);
  tableAddresses.forEach((address, i) => view.setBigUint64(8 * i, BigInt(address), true));
  return buildTable("XSDT", 1, body, ids);
}

// ---------------------------------------------------------------- FADT

/** Generic Address Structure address spaces and access sizes (ACPI 5.2.3.2). */
export const ACPI_SPACE_SYSTEM_MEMORY = 0;
export const ACPI_SPACE_SYSTEM_IO = 1;
export const ACPI_ACCESS_BYTE = 1;

export interface GenericAddress {
  readonly spaceId: number;
  readonly bitWidth: number;
  readonly bitOffset: number;
  readonly accessSize: number;
  readonly address: number;
}

/** One 8-bit register in I/O port space. */
export function ioPortRegister(port: number): GenericAddress {
  if (!Number.isInteger(port) || port < 0 || port > 0xffff) throw new AcpiTableError(`I/O port 0x${port.toString(16)} must be 0..0xffff`);
  return { spaceId: ACPI_SPACE_SYSTEM_IO, bitWidth: 8, bitOffset: 0, accessSize: ACPI_ACCESS_BYTE, address: port };
}

/** FADT Flags (ACPI 6.5 table 5.10). */
export const FADT_PWR_BUTTON = 1 << 4; // set: there is no fixed-feature power button
export const FADT_SLP_BUTTON = 1 << 5; // set: there is no fixed-feature sleep button
export const FADT_RESET_REG_SUP = 1 << 10;
export const FADT_HW_REDUCED_ACPI = 1 << 20;

/** IA-PC Boot Architecture Flags (ACPI 6.5 table 5.11). */
export const IAPC_BOOT_ARCH_LEGACY_DEVICES = 1 << 0;
export const IAPC_BOOT_ARCH_8042 = 1 << 1;
export const IAPC_BOOT_ARCH_VGA_NOT_PRESENT = 1 << 2;
export const IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED = 1 << 3;
export const IAPC_BOOT_ARCH_PCIE_ASPM_CONTROLS = 1 << 4;
export const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT = 1 << 5;

/** FADT 6.5: major revision 6, minor 5. */
export const FADT_REVISION = 6;
export const FADT_MINOR_REVISION = 5;

export interface FadtOptions {
  readonly dsdtAddress: number;
  readonly flags: number;
  readonly iapcBootArch: number;
  readonly resetRegister?: GenericAddress;
  readonly resetValue?: number;
  readonly sleepControl?: GenericAddress;
  readonly sleepStatus?: GenericAddress;
  /** Up to 8 ASCII characters, NUL padded, in the Hypervisor Vendor Identity field. */
  readonly hypervisorVendor: string;
}

export function buildFadt(options: FadtOptions, ids: TableIds): Uint8Array {
  if (!Number.isInteger(options.dsdtAddress) || options.dsdtAddress <= 0 || options.dsdtAddress > 0xffff_ffff) {
    throw new AcpiTableError(`DSDT address 0x${options.dsdtAddress.toString(16)} must be a non-zero 32-bit address`);
  }
  return buildFixedTable("FACP", FADT_REVISION, acpi_table_fadt, new Uint8Array(0), ids, (fadt) => {
    // Both DSDT pointers, equal, so a reader of either finds the same table (ACPICA warns when they differ).
    fadt.set("dsdt", options.dsdtAddress).set("Xdsdt", BigInt(options.dsdtAddress));
    fadt.set("flags", options.flags >>> 0).set("boot_flags", options.iapcBootArch).set("minor_revision", FADT_MINOR_REVISION);
    if (options.resetRegister) setGas(fadt, "reset_register", options.resetRegister);
    if (options.resetValue !== undefined) fadt.set("reset_value", options.resetValue);
    if (options.sleepControl) setGas(fadt, "sleep_control", options.sleepControl);
    if (options.sleepStatus) setGas(fadt, "sleep_status", options.sleepStatus);
    fadt.bytes.set(asciiField("hypervisor vendor", options.hypervisorVendor, 8, "\0"), acpi_table_fadt.fields.hypervisor_id.offset);
  });
}

type GasField = "reset_register" | "sleep_control" | "sleep_status";

function setGas(fadt: StructView<(typeof acpi_table_fadt)["fields"]>, field: GasField, gas: GenericAddress): void {
  fadt
    .set(`${field}.space_id`, gas.spaceId)
    .set(`${field}.bit_width`, gas.bitWidth)
    .set(`${field}.bit_offset`, gas.bitOffset)
    .set(`${field}.access_width`, gas.accessSize)
    .set(`${field}.address`, BigInt(gas.address));
}

// ---------------------------------------------------------------- MADT

/** MADT revision of ACPI 6.5. */
export const MADT_REVISION = 6;
/** MADT flags: the system also has a PC-AT dual 8259. */
export const MADT_PCAT_COMPAT = 1;
/** Processor Local APIC flags. */
export const MADT_LAPIC_ENABLED = 1;
/** Local APIC NMI: this processor UID means every processor. */
export const MADT_ALL_PROCESSORS = 0xff;

export const MADT_TYPE_LOCAL_APIC = 0;
export const MADT_TYPE_IO_APIC = 1;
export const MADT_TYPE_LOCAL_APIC_NMI = 4;

function checkField(what: string, value: number, max = 0xff): void {
  if (!Number.isInteger(value) || value < 0 || value > max) throw new AcpiTableError(`MADT ${what} ${value} must be 0..${max}`);
}

/** Processor Local APIC structure (type 0, 8 bytes). */
export function madtLocalApic(processorUid: number, apicId: number, flags: number): Uint8Array {
  checkField("processor UID", processorUid);
  checkField("APIC id", apicId);
  const out = Uint8Array.of(MADT_TYPE_LOCAL_APIC, 8, processorUid, apicId, 0, 0, 0, 0);
  new DataView(out.buffer).setUint32(4, flags, true);
  return out;
}

/** I/O APIC structure (type 1, 12 bytes). */
export function madtIoApic(ioApicId: number, address: number, gsiBase: number): Uint8Array {
  checkField("I/O APIC id", ioApicId);
  checkField("I/O APIC address", address, 0xffff_ffff);
  checkField("GSI base", gsiBase, 0xffff_ffff);
  const out = new Uint8Array(12);
  const view = new DataView(out.buffer);
  out.set([MADT_TYPE_IO_APIC, 12, ioApicId, 0]);
  view.setUint32(4, address, true);
  view.setUint32(8, gsiBase, true);
  return out;
}

/** Local APIC NMI structure (type 4, 6 bytes): which LINT pin of which processors carries NMI. */
export function madtLocalApicNmi(processorUid: number, flags: number, lint: number): Uint8Array {
  checkField("processor UID", processorUid);
  checkField("MPS INTI flags", flags, 0xffff);
  checkField("LINT", lint, 1);
  const out = Uint8Array.of(MADT_TYPE_LOCAL_APIC_NMI, 6, processorUid, 0, 0, lint);
  new DataView(out.buffer).setUint16(3, flags, true);
  return out;
}

export function buildMadt(localApicAddress: number, flags: number, entries: readonly Uint8Array[], ids: TableIds): Uint8Array {
  const tail = new Uint8Array(entries.reduce((total, entry) => total + entry.length, 0));
  let at = 0;
  for (const entry of entries) {
    tail.set(entry, at);
    at += entry.length;
  }
  return buildFixedTable("APIC", MADT_REVISION, acpi_table_madt, tail, ids, (madt) => {
    madt.set("address", localApicAddress).set("flags", flags);
  });
}

// ---------------------------------------------------------------- DSDT

/** Revision 2 and up makes AML integers 64 bits wide. */
export const DSDT_REVISION = 2;

export function buildDsdt(aml: Aml, ids: TableIds): Uint8Array {
  return buildTable("DSDT", DSDT_REVISION, aml, ids);
}

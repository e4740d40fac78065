/**
 * Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI
 * learns its CPUs, its IOAPIC and how ISA IRQs reach the IOAPIC. Linux scans
 * the start of the EBDA for the floating pointer ("_MP_"), which points at
 * the configuration table ("PCMP") that follows it.
 *
 * Layouts follow Linux's arch/x86/include/asm/mpspec_def.h (not exported to
 * userspace); the tests parse the written bytes back field by field.
 */
import { defineStruct, type FieldSpec, type StructLayout, StructView } from "../../kvm/struct.ts";
import type { GuestMemoryView } from "../../memory/guest-memory.ts";
import { HIMEM_ADDRESS, IOAPIC_ADDRESS, LAPIC_ADDRESS, MPTABLE_ADDRESS } from "./layout.ts";

const mpf_intel = defineStruct("struct mpf_intel", 16, {
  signature: [0, "u8", 4],
  physptr: [4, "u32"],
  length: [8, "u8"],
  specification: [9, "u8"],
  checksum: [10, "u8"],
  feature1: [11, "u8"],
  feature2: [12, "u8"],
});

const mpc_table = defineStruct("struct mpc_table", 44, {
  signature: [0, "u8", 4],
  length: [4, "u16"],
  spec: [6, "u8"],
  checksum: [7, "u8"],
  oem: [8, "u8", 8],
  productid: [16, "u8", 12],
  oemptr: [28, "u32"],
  oemsize: [32, "u16"],
  oemcount: [34, "u16"],
  lapic: [36, "u32"],
  reserved: [40, "u32"],
});

const mpc_cpu = defineStruct("struct mpc_cpu", 20, {
  type: [0, "u8"],
  apicid: [1, "u8"],
  apicver: [2, "u8"],
  cpuflag: [3, "u8"],
  cpufeature: [4, "u32"],
  featureflag: [8, "u32"],
});

const mpc_bus = defineStruct("struct mpc_bus", 8, {
  type: [0, "u8"],
  busid: [1, "u8"],
  bustype: [2, "u8", 6],
});

const mpc_ioapic = defineStruct("struct mpc_ioapic", 8, {
  type: [0, "u8"],
  apicid: [1, "u8"],
  apicver: [2, "u8"],
  flags: [3, "u8"],
  apicaddr: [4, "u32"],
});

/** Both interrupt entry kinds (mpc_intsrc, mpc_lintsrc) share this shape. */
const mpc_intsrc = defineStruct("struct mpc_intsrc", 8, {
  type: [0, "u8"],
  irqtype: [1, "u8"],
  irqflag: [2, "u16"],
  srcbus: [4, "u8"],
  srcbusirq: [5, "u8"],
  dstapic: [6, "u8"],
  dstirq: [7, "u8"],
});

export const MP_PROCESSOR = 0;
export const MP_BUS = 1;
export const MP_IOAPIC = 2;
export const MP_INTSRC = 3;
export const MP_LINTSRC = 4;
export const MP_INT = 0;
export const MP_NMI = 1;
export const MP_EXTINT = 3;
export const CPU_ENABLED = 1;
export const CPU_BOOTPROCESSOR = 2;
const MPC_APIC_USABLE = 1;
/** Version 1.4 of the spec, encoded as its minor number. */
const MP_SPEC_REVISION = 4;
/** Integrated local APIC (0x1x) as KVM emulates it, and the 82093AA-style IOAPIC. */
const LAPIC_VERSION = 0x14;
const IOAPIC_VERSION = 0x11;
/** CPU signature family 6; feature flags FPU and APIC, which Linux checks before using the entry. */
const CPU_SIGNATURE = 0x600;
const CPU_FEATURES = (1 << 0) | (1 << 9);
const ISA_BUS_ID = 0;
const ISA_IRQS = 16;
/** Destination "all local APICs" for the NMI line. */
const ALL_LAPICS = 0xff;

/** APIC ids are 8 bits, and the IOAPIC takes the id after the last vCPU. */
export const MAX_MP_VCPUS = 255;

export class MpTableError extends RangeError {
  override name = "MpTableError";
}

/** Bytes the tables take for `vcpuCount` vCPUs. */
export function mpTableSize(vcpuCount: number): number {
  return (
    mpf_intel.size +
    mpc_table.size +
    vcpuCount * mpc_cpu.size +
    mpc_bus.size +
    mpc_ioapic.size +
    ISA_IRQS * mpc_intsrc.size +
    2 * mpc_intsrc.size
  );
}

/**
 * Writes the floating pointer at MPTABLE_ADDRESS with the configuration table
 * right after it. With many vCPUs the table runs past 0xa0000 into the VGA
 * hole; the E820 map reports 0x9fc00-0xfffff reserved, so the guest never
 * uses those bytes as RAM.
 */
export function writeMpTable(memory: GuestMemoryView, vcpuCount: number): { address: number; size: number } {
  if (!Number.isInteger(vcpuCount) || vcpuCount < 1 || vcpuCount > MAX_MP_VCPUS) {
    throw new MpTableError(`MP table: vCPU count ${vcpuCount} must be 1..${MAX_MP_VCPUS}`);
  }
  const size = mpTableSize(vcpuCount);
  if (MPTABLE_ADDRESS + size > HIMEM_ADDRESS || !memory.contains(MPTABLE_ADDRESS, size)) {
    throw new MpTableError(`MP table: ${size} bytes at 0x${MPTABLE_ADDRESS.toString(16)} do not fit below 1 MiB in guest RAM`);
  }
  const bytes = new Uint8Array(size);
  const tableStart = mpf_intel.size;
  let at = tableStart + mpc_table.size;
  let entries = 0;
  const entry = <F extends Readonly<Record<string, FieldSpec>>>(layout: StructLayout<F>): StructView<F> => {
    const view = new StructView(layout, bytes.subarray(at, at + layout.size));
    at += layout.size;
    entries++;
    return view;
  };
  const ioapicId = vcpuCount;

  for (let cpu = 0; cpu < vcpuCount; cpu++) {
    entry(mpc_cpu)
      .set("type", MP_PROCESSOR)
      .set("apicid", cpu)
      .set("apicver", LAPIC_VERSION)
      .set("cpuflag", CPU_ENABLED | (cpu === 0 ? CPU_BOOTPROCESSOR : 0))
      .set("cpufeature", CPU_SIGNATURE)
      .set("featureflag", CPU_FEATURES);
  }
  const bus = entry(mpc_bus).set("type", MP_BUS).set("busid", ISA_BUS_ID);
  bus.bytes.set(ascii("ISA   "), mpc_bus.fields.bustype.offset);
  entry(mpc_ioapic)
    .set("type", MP_IOAPIC)
    .set("apicid", ioapicId)
    .set("apicver", IOAPIC_VERSION)
    .set("flags", MPC_APIC_USABLE)
    .set("apicaddr", IOAPIC_ADDRESS);
  // ISA IRQ n arrives on IOAPIC pin n: KVM's default GSI routing is the identity.
  for (let irq = 0; irq < ISA_IRQS; irq++) {
    entry(mpc_intsrc)
      .set("type", MP_INTSRC)
      .set("irqtype", MP_INT)
      .set("irqflag", 0) // polarity and trigger "conform to the bus": ISA is edge, active high
      .set("srcbus", ISA_BUS_ID)
      .set("srcbusirq", irq)
      .set("dstapic", ioapicId)
      .set("dstirq", irq);
  }
  // The 8259 PIC's output on the BSP's LINT0 (virtual wire mode), NMI on every CPU's LINT1.
  entry(mpc_intsrc).set("type", MP_LINTSRC).set("irqtype", MP_EXTINT).set("srcbus", ISA_BUS_ID).set("dstapic", 0).set("dstirq", 0);
  entry(mpc_intsrc).set("type", MP_LINTSRC).set("irqtype", MP_NMI).set("srcbus", ISA_BUS_ID).set("dstapic", ALL_LAPICS).set("dstirq", 1);

  const table = new StructView(mpc_table, bytes.subarray(tableStart, tableStart + mpc_table.size))
    .set("length", size - tableStart)
    .set("spec", MP_SPEC_REVISION)
    .set("oemcount", entries)
    .set("lapic", LAPIC_ADDRESS);
  table.bytes.set(ascii("PCMP"), 0);
  table.bytes.set(ascii("VOLT    "), mpc_table.fields.oem.offset);
  table.bytes.set(ascii("MICROVM     "), mpc_table.fields.productid.offset);
  table.set("checksum", checksumByte(bytes.subarray(tableStart)));

  const floating = new StructView(mpf_intel, bytes.subarray(0, mpf_intel.size))
    .set("physptr", MPTABLE_ADDRESS + tableStart)
    .set("length", 1) // in 16-byte units
    .set("specification", MP_SPEC_REVISION);
  floating.bytes.set(ascii("_MP_"), 0);
  floating.set("checksum", checksumByte(floating.bytes));

  memory.write(MPTABLE_ADDRESS, bytes);
  return { address: MPTABLE_ADDRESS, size };
}

/** The byte that makes all bytes of `region` (whose checksum field is still 0) sum to 0 mod 256. */
function checksumByte(region: Uint8Array): number {
  const sum = region.reduce((total, byte) => total + byte, 0);
  return (256 - (sum % 256)) % 256;
}

function ascii(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/**
 * Volt's x86-64 machine described in hardware-reduced ACPI, as Firecracker
 * and Cloud Hypervisor do it: no PM timer, no SCI, no FACS; power-off and
 * reset through the FADT's sleep control and reset registers. Distribution
 * kernels need this to find virtio-mmio devices at all (their virtio_mmio
 * driver matches the ACPI id LNRO0005; `virtio_mmio.device=` exists only when
 * the driver is built with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES), and to power
 * off.
 *
 * The tables live in the BIOS area, RSDP first, where Linux scans for it on
 * 16-byte boundaries when the boot protocol does not pass its address; the
 * E820 map reports 0x9fc00-0xfffff reserved, so the guest never reuses them.
 */
import type { GuestMemoryView } from "../../../memory/guest-memory.ts";
import { HIMEM_ADDRESS, I8042_PORT_BASE, IOAPIC_ADDRESS, IOAPIC_PINS, KEYBOARD_IRQ, LAPIC_ADDRESS, SERIAL_IRQ, SERIAL_PORT_BASE } from "../layout.ts";
import * as aml from "./aml.ts";
import {
  ACPI_TABLE_HEADER_SIZE,
  AcpiTableError,
  buildDsdt,
  buildFadt,
  buildMadt,
  buildRsdp,
  buildXsdt,
  FADT_HW_REDUCED_ACPI,
  FADT_PWR_BUTTON,
  FADT_RESET_REG_SUP,
  FADT_SIZE,
  FADT_SLP_BUTTON,
  IAPC_BOOT_ARCH_8042,
  IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED,
  IAPC_BOOT_ARCH_PCIE_ASPM_CONTROLS,
  IAPC_BOOT_ARCH_VGA_NOT_PRESENT,
  ioPortRegister,
  MADT_ALL_PROCESSORS,
  MADT_LAPIC_ENABLED,
  madtIoApic,
  madtLocalApic,
  madtLocalApicNmi,
  RSDP_SIZE,
  type TableIds,
} from "./tables.ts";

/** The RSDP's address; the other tables follow it. Inside the e820-reserved BIOS area, below 1 MiB. */
export const ACPI_TABLES_ADDRESS = 0x000e_0000;
/** SLP_TYP for S5 in \_S5; what the guest writes (shifted) to the sleep control register to power off. */
export const ACPI_S5_SLEEP_TYPE = 5;
/** APIC ids 0..n-1 for the vCPUs and n for the IOAPIC, all below the xAPIC broadcast id 0xff. */
export const MAX_ACPI_VCPUS = 254;

export interface AcpiMachine {
  readonly vcpus: number;
  /** virtio-mmio slots, each one page with an edge-triggered IOAPIC pin of its own. */
  readonly virtioDevices: readonly { address: number; size: number; irq: number }[];
  readonly power: {
    readonly sleepControlPort: number;
    readonly sleepStatusPort: number;
    readonly resetPort: number;
    readonly resetValue: number;
  };
}

const IDS = { oemId: "VOLT  ", oemRevision: 1, creatorId: "VOLT", creatorRevision: 1 } as const;
const ids = (oemTableId: string): TableIds => ({ ...IDS, oemTableId });
const HYPERVISOR_VENDOR = "VOLT";
const TABLE_ALIGNMENT = 16;
/**
 * PCAT_COMPAT clear, as in Firecracker's and Cloud Hypervisor's MADT. It
 * changes nothing for Linux here: on a hardware-reduced platform it replaces
 * the 8259 with a null PIC before reading the MADT (acpi_reduced_hw_init),
 * whatever the flag says; the flag only skips the PIC probe otherwise.
 */
const MADT_FLAGS = 0;
/** A 16550 decodes eight consecutive ports. */
const UART_PORTS = 8;
/** The i8042's status/command port, beside its data port at I8042_PORT_BASE. */
const I8042_COMMAND_PORT = I8042_PORT_BASE + 4;
/** Device names are "V" and three digits. */
const MAX_VIRTIO_DEVICES = 1000;

export class AcpiError extends AcpiTableError {
  override name = "AcpiError";
}

/** All tables as one image for ACPI_TABLES_ADDRESS, the RSDP at its start. */
export function buildAcpiTables(machine: AcpiMachine): { rsdpAddress: number; bytes: Uint8Array } {
  validate(machine);
  const dsdt = buildDsdt(dsdtAml(machine), ids("VOLTDSDT"));
  const madt = buildMadt(LAPIC_ADDRESS, MADT_FLAGS, madtEntries(machine.vcpus), ids("VOLTAPIC"));

  const xsdtTables = 2; // FADT and MADT
  const xsdtAddress = align(ACPI_TABLES_ADDRESS + RSDP_SIZE);
  const fadtAddress = align(xsdtAddress + ACPI_TABLE_HEADER_SIZE + 8 * xsdtTables);
  const madtAddress = align(fadtAddress + FADT_SIZE);
  const dsdtAddress = align(madtAddress + madt.length);
  const end = dsdtAddress + dsdt.length;
  if (end > HIMEM_ADDRESS) {
    throw new AcpiError(`ACPI tables end at 0x${end.toString(16)}, past the BIOS area that ends at 0x${HIMEM_ADDRESS.toString(16)}`);
  }

  const fadt = buildFadt(
    {
      dsdtAddress,
      // Hardware-reduced: no fixed-feature registers, so no fixed power or sleep button either.
      flags: FADT_HW_REDUCED_ACPI | FADT_RESET_REG_SUP | FADT_PWR_BUTTON | FADT_SLP_BUTTON,
      // No VGA to probe, and no PCI: nothing that could use MSI or ASPM (as Firecracker says).
      // The 8042 flag makes Linux probe the controller without a PNP entry: its keyboard is how Ctrl-Alt-Del arrives.
      iapcBootArch: IAPC_BOOT_ARCH_8042 | IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED | IAPC_BOOT_ARCH_PCIE_ASPM_CONTROLS,
      resetRegister: ioPortRegister(machine.power.resetPort),
      resetValue: machine.power.resetValue,
      sleepControl: ioPortRegister(machine.power.sleepControlPort),
      sleepStatus: ioPortRegister(machine.power.sleepStatusPort),
      hypervisorVendor: HYPERVISOR_VENDOR,
    },
    ids("VOLTFACP"),
  );
  const xsdt = buildXsdt([fadtAddress, madtAddress], ids("VOLTXSDT"));
  const rsdp = buildRsdp(xsdtAddress, IDS.oemId);

  const bytes = new Uint8Array(end - ACPI_TABLES_ADDRESS);
  for (const [address, table] of [
    [ACPI_TABLES_ADDRESS, rsdp],
    [xsdtAddress, xsdt],
    [fadtAddress, fadt],
    [madtAddress, madt],
    [dsdtAddress, dsdt],
  ] as const) {
    bytes.set(table, address - ACPI_TABLES_ADDRESS);
  }
  return { rsdpAddress: ACPI_TABLES_ADDRESS, bytes };
}

/** Writes the tables into guest RAM; the RSDP address goes to boot_params / the PVH start info. */
export function writeAcpiTables(memory: GuestMemoryView, machine: AcpiMachine): { rsdpAddress: number; size: number } {
  const { rsdpAddress, bytes } = buildAcpiTables(machine);
  if (!memory.contains(ACPI_TABLES_ADDRESS, bytes.length)) {
    throw new AcpiError(`ACPI tables: ${bytes.length} bytes at 0x${ACPI_TABLES_ADDRESS.toString(16)} are not guest RAM`);
  }
  memory.write(ACPI_TABLES_ADDRESS, bytes);
  return { rsdpAddress, size: bytes.length };
}


/**
 * A Local APIC per vCPU (UID = APIC id = index, as the MP table numbers them),
 * the IOAPIC with id `vcpus` and GSIs from 0 (the MP table's too), and NMI on
 * every CPU's LINT1 as the MP table's local interrupt entry says. No interrupt
 * source overrides: KVM routes ISA IRQ n to IOAPIC pin n.
 */
function madtEntries(vcpus: number): Uint8Array[] {
  const entries: Uint8Array[] = [];
  for (let cpu = 0; cpu < vcpus; cpu++) entries.push(madtLocalApic(cpu, cpu, MADT_LAPIC_ENABLED));
  entries.push(madtIoApic(vcpus, IOAPIC_ADDRESS, 0));
  // Flags 0: polarity and trigger conform to the bus, which for NMI means edge, active high.
  entries.push(madtLocalApicNmi(MADT_ALL_PROCESSORS, 0, 1));
  return entries;
}

function dsdtAml(machine: AcpiMachine): aml.Aml {
  // Linux reads SLP_TYPa/b for S5 from \_S5 and writes SLP_TYPa to the sleep control register.
  const s5 = aml.name("_S5", aml.packageOf([aml.integer(ACPI_S5_SLEEP_TYPE), aml.integer(0), aml.integer(0), aml.integer(0)]));
  // Without a legacy PIC, Linux hands out IRQ numbers for IOAPIC pins dynamically,
  // so the ISA default "ttyS0 is IRQ 4" no longer holds: the 8250 PNP driver must
  // learn GSI 4 from here for the console to be interrupt driven.
  const com1 = aml.device("COM1", [
    aml.name("_HID", aml.eisaId("PNP0501")),
    aml.name("_UID", aml.integer(0)),
    // Edge, active high, as Volt's serial raises its line and as ISA IRQs are.
    aml.name("_CRS", aml.resourceTemplate([aml.ioPort(SERIAL_PORT_BASE, SERIAL_PORT_BASE, 0, UART_PORTS), aml.irqNoFlags(SERIAL_IRQ)])),
  ]);
  // The same for the i8042: without this entry Linux finds the controller by probing, but cannot get IRQ 1
  // (request_irq fails with EINVAL) and gives up on the keyboard, which is how Ctrl-Alt-Del arrives.
  const keyboard = aml.device("PS2K", [
    aml.name("_HID", aml.eisaId("PNP0303")),
    aml.name("_CRS", aml.resourceTemplate([aml.ioPort(I8042_PORT_BASE, I8042_PORT_BASE, 0, 1), aml.ioPort(I8042_COMMAND_PORT, I8042_COMMAND_PORT, 0, 1), aml.irqNoFlags(KEYBOARD_IRQ)])),
  ]);
  const virtio = machine.virtioDevices.map((dev, index) =>
    aml.device(`V${index.toString().padStart(3, "0")}`, [
      aml.name("_HID", aml.string("LNRO0005")),
      aml.name("_UID", aml.integer(index)),
      aml.name("_CCA", aml.integer(1)), // DMA is cache coherent
      aml.name(
        "_CRS",
        aml.resourceTemplate([
          aml.memory32Fixed(true, dev.address, dev.size),
          // Edge: Volt signals these through KVM irqfds without a resample fd, so nothing would ever lower a level.
          aml.extendedInterrupt({ consumer: true, edge: true, activeLow: false, shared: false }, dev.irq),
        ]),
      ),
    ]),
  );
  return aml.concat(s5, aml.scope("\\_SB", [com1, keyboard, ...virtio]));
}

function validate(machine: AcpiMachine): void {
  const { vcpus, virtioDevices, power } = machine;
  if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > MAX_ACPI_VCPUS) {
    throw new AcpiError(`ACPI tables: vCPU count ${vcpus} must be 1..${MAX_ACPI_VCPUS}`);
  }
  if (virtioDevices.length > MAX_VIRTIO_DEVICES) throw new AcpiError(`ACPI tables: at most ${MAX_VIRTIO_DEVICES} virtio devices`);
  const irqs = new Set<number>([SERIAL_IRQ, KEYBOARD_IRQ]);
  for (const [index, dev] of virtioDevices.entries()) {
    if (!Number.isInteger(dev.address) || !Number.isInteger(dev.size) || dev.size < 1 || dev.address < 0 || dev.address + dev.size > 0x1_0000_0000) {
      throw new AcpiError(`ACPI tables: virtio device ${index} at 0x${dev.address.toString(16)}+0x${dev.size.toString(16)} must lie below 4 GiB`);
    }
    if (!Number.isInteger(dev.irq) || dev.irq < 0 || dev.irq >= IOAPIC_PINS) {
      throw new AcpiError(`ACPI tables: virtio device ${index} IRQ ${dev.irq} must be an IOAPIC pin 0..${IOAPIC_PINS - 1}`);
    }
    // The descriptors say Exclusive; a shared pin would make that a lie.
    if (irqs.has(dev.irq)) throw new AcpiError(`ACPI tables: virtio device ${index} IRQ ${dev.irq} is already in use`);
    irqs.add(dev.irq);
  }
  for (const [what, port] of Object.entries(power)) {
    const max = what === "resetValue" ? 0xff : 0xffff;
    if (!Number.isInteger(port) || port < 0 || port > max) throw new AcpiError(`ACPI tables: power.${what} ${port} must be 0..0x${max.toString(16)}`);
  }
}

function align(address: number): number {
  return Math.ceil(address / TABLE_ALIGNMENT) * TABLE_ALIGNMENT;
}

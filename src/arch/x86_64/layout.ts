/**
 * Where Volt puts things in guest-physical memory on x86-64. Everything the
 * boot code writes, and every address the guest is told about, comes from
 * here, so two pieces can never silently claim the same bytes.
 *
 * Below 1 MiB the PC keeps its historic shape because Linux still looks there:
 * it scans the EBDA and the top of conventional memory for the MP floating
 * pointer, and treats 0xa0000-0xfffff as the VGA hole and BIOS ROM.
 */
export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const PAGE_SIZE = 4 * KiB;

// ---------------------------------------------------------------- below 1 MiB
/** Boot GDT; 0x500 is the first byte above the BIOS data area, which nothing here uses. */
export const BOOT_GDT_ADDRESS = 0x500;
/** Room for the boot GDT: null, code, data, TSS descriptors (8 bytes each). */
export const BOOT_GDT_MAX_ENTRIES = 4;
/** One empty IDT entry right after the GDT: the guest installs its own before enabling interrupts. */
export const BOOT_IDT_ADDRESS = 0x520;
/** hvm_start_info for PVH boots; the module list and memory map follow it in the same page. */
export const PVH_INFO_ADDRESS = 0x6000;
export const PVH_MODLIST_ADDRESS = 0x6040;
export const PVH_MEMMAP_ADDRESS = 0x6100;
/** The zero page (struct boot_params) for the Linux boot protocol; RSI points here. */
export const ZERO_PAGE_ADDRESS = 0x7000;
/** Initial stack, just under the page tables; the kernel switches to its own early. */
export const BOOT_STACK_POINTER = 0x8ff0;
/** Identity-mapping page tables for the 64-bit entry (one page each). */
export const PML4_ADDRESS = 0x9000;
export const PDPTE_ADDRESS = 0xa000;
export const PDE_ADDRESS = 0xb000;
/** Kernel command line; 0x20000 leaves 0x80000 bytes below the EBDA, far more than any cmdline_size. */
export const CMDLINE_ADDRESS = 0x20000;
/** Start of the Extended BIOS Data Area: conventional memory usable by the guest ends here. */
export const EBDA_ADDRESS = 0x9fc00;
/** The MP floating pointer goes at the EBDA's start, one of the places Linux scans for "_MP_". */
export const MPTABLE_ADDRESS = EBDA_ADDRESS;

// ---------------------------------------------------------------- above 1 MiB
/** First byte above the legacy hole; bzImage protected-mode kernels load here. */
export const HIMEM_ADDRESS = 0x100000;

/**
 * The 32-bit MMIO gap: no RAM between 3 GiB and 4 GiB. 1 GiB (rather than
 * Firecracker's 768 MiB) keeps the gap's start 1 GiB aligned, which makes RAM
 * below it a whole number of 2 MiB and 1 GiB pages, and leaves room for a
 * 32-bit PCI window later beside the virtio-mmio devices. A microVM with 3 GiB
 * or less has all its RAM below the gap; the rest goes above 4 GiB.
 */
export const MMIO_GAP_START = 0xc000_0000;
export const MMIO_GAP_END = 0x1_0000_0000;
export const MMIO_GAP_SIZE = MMIO_GAP_END - MMIO_GAP_START;
/** Where guest RAM beyond the gap continues. */
export const HIGH_RAM_START = MMIO_GAP_END;

/** virtio-mmio devices: one 4 KiB page each from the start of the gap, 16 MiB in all. */
export const VIRTIO_MMIO_BASE = MMIO_GAP_START;
export const VIRTIO_MMIO_DEVICE_SIZE = 0x1000;
export const VIRTIO_MMIO_WINDOW_SIZE = 16 * MiB;

/** IOAPIC and local APIC registers, at the addresses every x86 OS assumes. */
export const IOAPIC_ADDRESS = 0xfec0_0000;
export const LAPIC_ADDRESS = 0xfee0_0000;
/** The IOAPIC KVM emulates has 24 pins; 0-15 are the ISA IRQs, devices get 5..23 as Firecracker does. */
export const IOAPIC_PINS = 24;

/**
 * KVM_SET_IDENTITY_MAP_ADDR and KVM_SET_TSS_ADDR: one page and three pages
 * (Intel VMX needs them for real-mode emulation) that must not be RAM or MMIO.
 * Placed just below the BIOS ROM's top-of-4G alias, where QEMU puts them too.
 */
export const KVM_IDENTITY_MAP_ADDRESS = 0xfffb_c000;
export const KVM_TSS_ADDRESS = 0xfffb_d000;

// ---------------------------------------------------------------- legacy devices
/** COM1: where every PC console driver looks first, on its ISA interrupt. */
export const SERIAL_PORT_BASE = 0x3f8;
export const SERIAL_IRQ = 4;
/** The ISA keyboard interrupt: the i8042 raises it when the keyboard has a byte for the guest. */
export const KEYBOARD_IRQ = 1;
/** Volt's hardware-reduced ACPI sleep control, sleep status and reset registers (Cloud Hypervisor uses 0x600 too). */
export const ACPI_POWER_PORT_BASE = 0x600;
/** The i8042 keyboard controller (data 0x60, command/status 0x64): its reset command is how `reboot=k` guests reboot. */
export const I8042_PORT_BASE = 0x60;
/**
 * The boot timer's page, just past the virtio-mmio window in the MMIO gap, so
 * its address never moves as devices are added (a guest /init writes to it).
 */
export const BOOT_TIMER_ADDRESS = VIRTIO_MMIO_BASE + VIRTIO_MMIO_WINDOW_SIZE;

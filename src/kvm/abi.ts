/**
 * The KVM userspace ABI (x86-64) as Volt uses it: ioctl request numbers,
 * capability and exit-reason constants, and struct layouts. Every value here
 * is compared with <linux/kvm.h> by test/unit/kvm-abi.test.ts.
 */
import { defineStruct, embed } from "./struct.ts";

// ---------------------------------------------------------------- ioctl encoding (asm-generic/ioctl.h)
const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;
const KVMIO = 0xae;

function ioc(direction: number, nr: number, size: number): number {
  // >>> 0 keeps the result an unsigned 32-bit number (direction bits reach bit 31)
  return ((direction << 30) | (size << 16) | (KVMIO << 8) | nr) >>> 0;
}
const io = (nr: number) => ioc(IOC_NONE, nr, 0);
const ior = (nr: number, size: number) => ioc(IOC_READ, nr, size);
const iow = (nr: number, size: number) => ioc(IOC_WRITE, nr, size);
const iowr = (nr: number, size: number) => ioc(IOC_READ | IOC_WRITE, nr, size);

// ---------------------------------------------------------------- structs
export const kvm_userspace_memory_region = defineStruct("struct kvm_userspace_memory_region", 32, {
  slot: [0, "u32"],
  flags: [4, "u32"],
  guest_phys_addr: [8, "u64"],
  memory_size: [16, "u64"],
  userspace_addr: [24, "u64"],
});

export const kvm_regs = defineStruct("struct kvm_regs", 144, {
  rax: [0, "u64"],
  rbx: [8, "u64"],
  rcx: [16, "u64"],
  rdx: [24, "u64"],
  rsi: [32, "u64"],
  rdi: [40, "u64"],
  rsp: [48, "u64"],
  rbp: [56, "u64"],
  r8: [64, "u64"],
  r9: [72, "u64"],
  r10: [80, "u64"],
  r11: [88, "u64"],
  r12: [96, "u64"],
  r13: [104, "u64"],
  r14: [112, "u64"],
  r15: [120, "u64"],
  rip: [128, "u64"],
  rflags: [136, "u64"],
});

export const kvm_segment = defineStruct("struct kvm_segment", 24, {
  base: [0, "u64"],
  limit: [8, "u32"],
  selector: [12, "u16"],
  type: [14, "u8"],
  present: [15, "u8"],
  dpl: [16, "u8"],
  db: [17, "u8"],
  s: [18, "u8"],
  l: [19, "u8"],
  g: [20, "u8"],
  avl: [21, "u8"],
  unusable: [22, "u8"],
});

export const kvm_dtable = defineStruct("struct kvm_dtable", 16, {
  base: [0, "u64"],
  limit: [8, "u16"],
});

export const SEGMENT_REGISTERS = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const;
export type SegmentRegister = (typeof SEGMENT_REGISTERS)[number];

export const kvm_sregs = defineStruct("struct kvm_sregs", 312, {
  ...embed("cs", 0, kvm_segment),
  ...embed("ds", 24, kvm_segment),
  ...embed("es", 48, kvm_segment),
  ...embed("fs", 72, kvm_segment),
  ...embed("gs", 96, kvm_segment),
  ...embed("ss", 120, kvm_segment),
  ...embed("tr", 144, kvm_segment),
  ...embed("ldt", 168, kvm_segment),
  ...embed("gdt", 192, kvm_dtable),
  ...embed("idt", 208, kvm_dtable),
  cr0: [224, "u64"],
  cr2: [232, "u64"],
  cr3: [240, "u64"],
  cr4: [248, "u64"],
  cr8: [256, "u64"],
  efer: [264, "u64"],
  apic_base: [272, "u64"],
  interrupt_bitmap: [280, "u64", 4],
});

/** The fixed part of the shared vCPU run page; the mapping itself is KVM_GET_VCPU_MMAP_SIZE long. */
export const kvm_run = defineStruct("struct kvm_run", 2352, {
  request_interrupt_window: [0, "u8"],
  immediate_exit: [1, "u8"],
  exit_reason: [8, "u32"],
  ready_for_interrupt_injection: [12, "u8"],
  if_flag: [13, "u8"],
  flags: [14, "u16"],
  cr8: [16, "u64"],
  apic_base: [24, "u64"],
  "hw.hardware_exit_reason": [32, "u64"],
  "fail_entry.hardware_entry_failure_reason": [32, "u64"],
  "fail_entry.cpu": [40, "u32"],
  "ex.exception": [32, "u32"],
  "ex.error_code": [36, "u32"],
  "io.direction": [32, "u8"],
  "io.size": [33, "u8"],
  "io.port": [34, "u16"],
  "io.count": [36, "u32"],
  "io.data_offset": [40, "u64"],
  "mmio.phys_addr": [32, "u64"],
  "mmio.data": [40, "u8", 8],
  "mmio.len": [48, "u32"],
  "mmio.is_write": [52, "u8"],
  "internal.suberror": [32, "u32"],
  "internal.ndata": [36, "u32"],
  "internal.data": [40, "u64", 16],
  "system_event.type": [32, "u32"],
  "system_event.ndata": [36, "u32"],
  "system_event.data": [40, "u64", 16],
});

export const kvm_pit_config = defineStruct("struct kvm_pit_config", 64, {
  flags: [0, "u32"],
});

export const kvm_irq_level = defineStruct("struct kvm_irq_level", 8, {
  irq: [0, "u32"],
  level: [4, "u32"],
});

export const kvm_irqfd = defineStruct("struct kvm_irqfd", 32, {
  fd: [0, "u32"],
  gsi: [4, "u32"],
  flags: [8, "u32"],
  resamplefd: [12, "u32"],
});

export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0;
export const KVM_IOEVENTFD_FLAG_PIO = 1 << 1;
export const KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2;
export const KVM_IRQFD_FLAG_DEASSIGN = 1 << 0;

export const kvm_ioeventfd = defineStruct("struct kvm_ioeventfd", 64, {
  datamatch: [0, "u64"],
  addr: [8, "u64"],
  len: [16, "u32"],
  fd: [20, "i32"],
  flags: [24, "u32"],
});

/** Header of a variable-length CPUID table; entries (kvm_cpuid_entry2) follow at `entries`. */
export const kvm_cpuid2 = defineStruct("struct kvm_cpuid2", 8, {
  nent: [0, "u32"],
});
export const KVM_CPUID2_ENTRIES_OFFSET = 8;

export const kvm_cpuid_entry2 = defineStruct("struct kvm_cpuid_entry2", 40, {
  function: [0, "u32"],
  index: [4, "u32"],
  flags: [8, "u32"],
  eax: [12, "u32"],
  ebx: [16, "u32"],
  ecx: [20, "u32"],
  edx: [24, "u32"],
});

/** Header of a variable-length MSR list; kvm_msr_entry items follow at `entries`. */
export const kvm_msrs = defineStruct("struct kvm_msrs", 8, {
  nmsrs: [0, "u32"],
});
export const KVM_MSRS_ENTRIES_OFFSET = 8;

export const kvm_msr_entry = defineStruct("struct kvm_msr_entry", 16, {
  index: [0, "u32"],
  data: [8, "u64"],
});

export const kvm_msr_list = defineStruct("struct kvm_msr_list", 4, {
  nmsrs: [0, "u32"],
});
export const KVM_MSR_LIST_INDICES_OFFSET = 4;

export const kvm_mp_state = defineStruct("struct kvm_mp_state", 4, {
  mp_state: [0, "u32"],
});

export const kvm_fpu = defineStruct("struct kvm_fpu", 416, {
  fpr: [0, "u8", 128],
  fcw: [128, "u16"],
  fsw: [130, "u16"],
  ftwx: [132, "u8"],
  last_opcode: [134, "u16"],
  last_ip: [136, "u64"],
  last_dp: [144, "u64"],
  xmm: [152, "u8", 256],
  mxcsr: [408, "u32"],
});

export const kvm_lapic_state = defineStruct("struct kvm_lapic_state", 1024, {
  regs: [0, "u8", 1024],
});

// ---------------------------------------------------------------- vCPU and VM state (snapshots; see state.ts)

/** The legacy XSAVE area: KVM_GET_XSAVE/KVM_SET_XSAVE move exactly these 4096 bytes. */
export const kvm_xsave = defineStruct("struct kvm_xsave", 4096, {
  region: [0, "u32", 1024],
});

export const KVM_MAX_XCRS = 16;

export const kvm_xcr = defineStruct("struct kvm_xcr", 16, {
  xcr: [0, "u32"],
  reserved: [4, "u32"],
  value: [8, "u64"],
});

/** Extended control registers (XCR0); `nr_xcrs` kvm_xcr entries from KVM_XCRS_ENTRIES_OFFSET. */
export const kvm_xcrs = defineStruct("struct kvm_xcrs", 392, {
  nr_xcrs: [0, "u32"],
  flags: [4, "u32"],
  xcrs: [8, "u8", KVM_MAX_XCRS * 16],
  padding: [264, "u64", 16],
});
export const KVM_XCRS_ENTRIES_OFFSET = 8;

/** Pending exceptions, interrupts, NMIs and SMIs that live outside the registers. */
export const kvm_vcpu_events = defineStruct("struct kvm_vcpu_events", 64, {
  "exception.injected": [0, "u8"],
  "exception.nr": [1, "u8"],
  "exception.has_error_code": [2, "u8"],
  "exception.pending": [3, "u8"],
  "exception.error_code": [4, "u32"],
  "interrupt.injected": [8, "u8"],
  "interrupt.nr": [9, "u8"],
  "interrupt.soft": [10, "u8"],
  "interrupt.shadow": [11, "u8"],
  "nmi.injected": [12, "u8"],
  "nmi.pending": [13, "u8"],
  "nmi.masked": [14, "u8"],
  "nmi.pad": [15, "u8"],
  sipi_vector: [16, "u32"],
  flags: [20, "u32"],
  "smi.smm": [24, "u8"],
  "smi.pending": [25, "u8"],
  "smi.smm_inside_nmi": [26, "u8"],
  "smi.latched_init": [27, "u8"],
  "triple_fault.pending": [28, "u8"],
  reserved: [29, "u8", 26],
  exception_has_payload: [55, "u8"],
  exception_payload: [56, "u64"],
});

/** kvm_vcpu_events.flags: which optional fields KVM_SET_VCPU_EVENTS applies. */
export const KVM_VCPUEVENT_VALID_NMI_PENDING = 0x01;
export const KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x02;
export const KVM_VCPUEVENT_VALID_SHADOW = 0x04;
export const KVM_VCPUEVENT_VALID_SMM = 0x08;
export const KVM_VCPUEVENT_VALID_PAYLOAD = 0x10;
export const KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x20;

export const kvm_debugregs = defineStruct("struct kvm_debugregs", 128, {
  db: [0, "u64", 4],
  dr6: [32, "u64"],
  dr7: [40, "u64"],
  flags: [48, "u64"],
  reserved: [56, "u64", 9],
});

/** kvm_mp_state.mp_state values. */
export const KVM_MP_STATE_RUNNABLE = 0;
export const KVM_MP_STATE_UNINITIALIZED = 1;
export const KVM_MP_STATE_INIT_RECEIVED = 2;
export const KVM_MP_STATE_HALTED = 3;
export const KVM_MP_STATE_SIPI_RECEIVED = 4;

export const kvm_pic_state = defineStruct("struct kvm_pic_state", 16, {
  last_irr: [0, "u8"],
  irr: [1, "u8"],
  imr: [2, "u8"],
  isr: [3, "u8"],
  priority_add: [4, "u8"],
  irq_base: [5, "u8"],
  read_reg_select: [6, "u8"],
  poll: [7, "u8"],
  special_mask: [8, "u8"],
  init_state: [9, "u8"],
  auto_eoi: [10, "u8"],
  rotate_on_auto_eoi: [11, "u8"],
  special_fully_nested_mode: [12, "u8"],
  init4: [13, "u8"],
  elcr: [14, "u8"],
  elcr_mask: [15, "u8"],
});

export const KVM_IOAPIC_NUM_PINS = 24;

/** The redirection entries are C bitfields; `redirtbl` gives each one as its raw 64 bits. */
export const kvm_ioapic_state = defineStruct("struct kvm_ioapic_state", 216, {
  base_address: [0, "u64"],
  ioregsel: [8, "u32"],
  id: [12, "u32"],
  irr: [16, "u32"],
  pad: [20, "u32"],
  redirtbl: [24, "u64", KVM_IOAPIC_NUM_PINS],
});

export const KVM_IRQCHIP_PIC_MASTER = 0;
export const KVM_IRQCHIP_PIC_SLAVE = 1;
export const KVM_IRQCHIP_IOAPIC = 2;

/** One in-kernel interrupt controller, chosen by `chip_id`; `chip` holds a kvm_pic_state or kvm_ioapic_state. */
export const kvm_irqchip = defineStruct("struct kvm_irqchip", 520, {
  chip_id: [0, "u32"],
  pad: [4, "u32"],
  "chip.dummy": [8, "u8", 512],
  ...embed("chip.pic", 8, kvm_pic_state),
  ...embed("chip.ioapic", 8, kvm_ioapic_state),
});
export const KVM_IRQCHIP_CHIP_OFFSET = 8;
export const KVM_IRQCHIP_CHIP_SIZE = 512;

/** C's count_load_time is __s64 (host ktime in ns); read here as its unsigned bits. */
export const kvm_pit_channel_state = defineStruct("struct kvm_pit_channel_state", 24, {
  count: [0, "u32"],
  latched_count: [4, "u16"],
  count_latched: [6, "u8"],
  status_latched: [7, "u8"],
  status: [8, "u8"],
  read_state: [9, "u8"],
  write_state: [10, "u8"],
  write_latch: [11, "u8"],
  rw_mode: [12, "u8"],
  mode: [13, "u8"],
  bcd: [14, "u8"],
  gate: [15, "u8"],
  count_load_time: [16, "u64"],
});

export const kvm_pit_state2 = defineStruct("struct kvm_pit_state2", 112, {
  ...embed("channels[0]", 0, kvm_pit_channel_state),
  ...embed("channels[1]", 24, kvm_pit_channel_state),
  ...embed("channels[2]", 48, kvm_pit_channel_state),
  flags: [72, "u32"],
  reserved: [76, "u32", 9],
});

export const KVM_PIT_FLAGS_HPET_LEGACY = 0x1;

/** kvmclock: the guest's paravirtual clock, in ns. */
export const kvm_clock_data = defineStruct("struct kvm_clock_data", 48, {
  clock: [0, "u64"],
  flags: [8, "u32"],
  pad0: [12, "u32"],
  realtime: [16, "u64"],
  host_tsc: [24, "u64"],
  pad: [32, "u32", 4],
});

/** kvm_clock_data.flags (KVM_CHECK_EXTENSION(KVM_CAP_ADJUST_CLOCK) says which this host supports). */
export const KVM_CLOCK_TSC_STABLE = 2;
export const KVM_CLOCK_REALTIME = 1 << 2;
export const KVM_CLOCK_HOST_TSC = 1 << 3;

// ---------------------------------------------------------------- ioctl requests
export const KVM_IOCTL = {
  // system (/dev/kvm)
  KVM_GET_API_VERSION: io(0x00),
  KVM_CREATE_VM: io(0x01),
  KVM_GET_MSR_INDEX_LIST: iowr(0x02, kvm_msr_list.size),
  KVM_CHECK_EXTENSION: io(0x03),
  KVM_GET_VCPU_MMAP_SIZE: io(0x04),
  KVM_GET_SUPPORTED_CPUID: iowr(0x05, kvm_cpuid2.size),
  // VM
  KVM_CREATE_VCPU: io(0x41),
  KVM_SET_USER_MEMORY_REGION: iow(0x46, kvm_userspace_memory_region.size),
  KVM_SET_TSS_ADDR: io(0x47),
  KVM_SET_IDENTITY_MAP_ADDR: iow(0x48, 8),
  KVM_CREATE_IRQCHIP: io(0x60),
  KVM_IRQ_LINE: iow(0x61, kvm_irq_level.size),
  KVM_IRQFD: iow(0x76, kvm_irqfd.size),
  KVM_CREATE_PIT2: iow(0x77, kvm_pit_config.size),
  KVM_IOEVENTFD: iow(0x79, kvm_ioeventfd.size),
  KVM_GET_IRQCHIP: iowr(0x62, kvm_irqchip.size),
  // _IOR although userspace writes: the header has always said so
  KVM_SET_IRQCHIP: ior(0x63, kvm_irqchip.size),
  KVM_SET_CLOCK: iow(0x7b, kvm_clock_data.size),
  KVM_GET_CLOCK: ior(0x7c, kvm_clock_data.size),
  KVM_GET_PIT2: ior(0x9f, kvm_pit_state2.size),
  KVM_SET_PIT2: iow(0xa0, kvm_pit_state2.size),
  // vCPU
  KVM_RUN: io(0x80),
  KVM_GET_REGS: ior(0x81, kvm_regs.size),
  KVM_SET_REGS: iow(0x82, kvm_regs.size),
  KVM_GET_SREGS: ior(0x83, kvm_sregs.size),
  KVM_SET_SREGS: iow(0x84, kvm_sregs.size),
  KVM_GET_MSRS: iowr(0x88, kvm_msrs.size),
  KVM_SET_MSRS: iow(0x89, kvm_msrs.size),
  KVM_GET_FPU: ior(0x8c, kvm_fpu.size),
  KVM_SET_FPU: iow(0x8d, kvm_fpu.size),
  KVM_GET_LAPIC: ior(0x8e, kvm_lapic_state.size),
  KVM_SET_LAPIC: iow(0x8f, kvm_lapic_state.size),
  KVM_SET_CPUID2: iow(0x90, kvm_cpuid2.size),
  KVM_GET_MP_STATE: ior(0x98, kvm_mp_state.size),
  KVM_SET_MP_STATE: iow(0x99, kvm_mp_state.size),
  KVM_GET_CPUID2: iowr(0x91, kvm_cpuid2.size),
  KVM_GET_VCPU_EVENTS: ior(0x9f, kvm_vcpu_events.size),
  KVM_SET_VCPU_EVENTS: iow(0xa0, kvm_vcpu_events.size),
  KVM_GET_DEBUGREGS: ior(0xa1, kvm_debugregs.size),
  KVM_SET_DEBUGREGS: iow(0xa2, kvm_debugregs.size),
  KVM_SET_TSC_KHZ: io(0xa2),
  KVM_GET_TSC_KHZ: io(0xa3),
  KVM_GET_XSAVE: ior(0xa4, kvm_xsave.size),
  KVM_SET_XSAVE: iow(0xa5, kvm_xsave.size),
  KVM_GET_XCRS: ior(0xa6, kvm_xcrs.size),
  KVM_SET_XCRS: iow(0xa7, kvm_xcrs.size),
  KVM_KVMCLOCK_CTRL: io(0xad),
  KVM_GET_XSAVE2: ior(0xcf, kvm_xsave.size),
} as const;

export const KVM_API_VERSION = 12;

// ---------------------------------------------------------------- capabilities
export const KVM_CAP = {
  KVM_CAP_IRQCHIP: 0,
  KVM_CAP_HLT: 1,
  KVM_CAP_USER_MEMORY: 3,
  KVM_CAP_SET_TSS_ADDR: 4,
  KVM_CAP_EXT_CPUID: 7,
  KVM_CAP_NR_VCPUS: 9,
  KVM_CAP_MP_STATE: 14,
  KVM_CAP_IRQ_ROUTING: 25,
  KVM_CAP_IRQFD: 32,
  KVM_CAP_PIT2: 33,
  KVM_CAP_PIT_STATE2: 35,
  KVM_CAP_IOEVENTFD: 36,
  KVM_CAP_SET_IDENTITY_MAP_ADDR: 37,
  KVM_CAP_ADJUST_CLOCK: 39,
  KVM_CAP_VCPU_EVENTS: 41,
  KVM_CAP_DEBUGREGS: 50,
  KVM_CAP_XSAVE: 55,
  KVM_CAP_XCRS: 56,
  KVM_CAP_TSC_CONTROL: 60,
  KVM_CAP_GET_TSC_KHZ: 61,
  KVM_CAP_MAX_VCPUS: 66,
  KVM_CAP_TSC_DEADLINE_TIMER: 72,
  KVM_CAP_KVMCLOCK_CTRL: 76,
  KVM_CAP_SIGNAL_MSI: 77,
  KVM_CAP_CHECK_EXTENSION_VM: 105,
  KVM_CAP_IMMEDIATE_EXIT: 136,
  KVM_CAP_XSAVE2: 208,
} as const;
export type KvmCapability = keyof typeof KVM_CAP;

// ---------------------------------------------------------------- exits
export const KVM_EXIT = {
  KVM_EXIT_UNKNOWN: 0,
  KVM_EXIT_EXCEPTION: 1,
  KVM_EXIT_IO: 2,
  KVM_EXIT_HYPERCALL: 3,
  KVM_EXIT_DEBUG: 4,
  KVM_EXIT_HLT: 5,
  KVM_EXIT_MMIO: 6,
  KVM_EXIT_IRQ_WINDOW_OPEN: 7,
  KVM_EXIT_SHUTDOWN: 8,
  KVM_EXIT_FAIL_ENTRY: 9,
  KVM_EXIT_INTR: 10,
  KVM_EXIT_NMI: 16,
  KVM_EXIT_INTERNAL_ERROR: 17,
  KVM_EXIT_SYSTEM_EVENT: 24,
} as const;
export type KvmExitName = keyof typeof KVM_EXIT;

const EXIT_NAME_BY_NUMBER = new Map<number, KvmExitName>(
  (Object.entries(KVM_EXIT) as [KvmExitName, number][]).map(([name, value]) => [value, name]),
);

export function exitReasonName(reason: number): string {
  return EXIT_NAME_BY_NUMBER.get(reason) ?? `KVM exit ${reason}`;
}

export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

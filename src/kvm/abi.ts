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
  KVM_CAP_MAX_VCPUS: 66,
  KVM_CAP_TSC_DEADLINE_TIMER: 72,
  KVM_CAP_KVMCLOCK_CTRL: 76,
  KVM_CAP_SIGNAL_MSI: 77,
  KVM_CAP_IMMEDIATE_EXIT: 136,
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

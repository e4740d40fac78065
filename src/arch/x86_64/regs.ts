/**
 * The boot vCPU's initial state, as plain data keyed by the field names of
 * kvm_regs / kvm_sregs (src/kvm/abi.ts), plus the tables in guest memory that
 * state points at. Nothing here calls KVM: the vCPU code copies these values
 * into StructViews, and tests can read them directly.
 *
 * Two ways in:
 * - linux64: the 64-bit Linux boot protocol. Long mode with paging on, flat
 *   segments, an identity map of the first 1 GiB, RSI = zero page.
 * - pvh: Xen's PVH entry. 32-bit protected mode, paging off, flat segments,
 *   EBX = hvm_start_info; the kernel builds its own page tables.
 */
import type { RegsValues as KvmRegsValues, SregsValues as KvmSregsValues } from "../../kvm/vcpu.ts";
import type { GuestMemoryView } from "../../memory/guest-memory.ts";
import {
  BOOT_GDT_ADDRESS,
  BOOT_GDT_MAX_ENTRIES,
  BOOT_IDT_ADDRESS,
  BOOT_STACK_POINTER,
  GiB,
  PDE_ADDRESS,
  PDPTE_ADDRESS,
  PML4_ADDRESS,
  PVH_INFO_ADDRESS,
  ZERO_PAGE_ADDRESS,
} from "./layout.ts";

// The vCPU's own value types, writable here because the boot state is assembled field by field.
type Writable<T> = { -readonly [K in keyof T]: T[K] };
export type RegsValues = Writable<KvmRegsValues>;
export type SregsValues = Writable<KvmSregsValues>;

export interface VcpuBootState {
  readonly regs: RegsValues;
  readonly sregs: SregsValues;
}

export type BootProtocol = "linux64" | "pvh";

// Control register and EFER bits (Intel SDM vol. 3, 2.5 and 2.2.1). CR0.ET is
// hard-wired to 1 on every CPU since the 486; setting it keeps our state equal
// to what KVM reads back.
export const X86_CR0_PE = 0x1n;
export const X86_CR0_ET = 0x10n;
export const X86_CR0_PG = 0x8000_0000n;
export const X86_CR4_PAE = 0x20n;
export const EFER_LME = 0x100n;
export const EFER_LMA = 0x400n;
/** Bit 1 of RFLAGS is reserved and reads as 1; KVM rejects a state without it on some hosts. */
const RFLAGS_RESERVED = 0x2n;

/**
 * GDT descriptor flags in the layout Firecracker and QEMU use: bits 0-7 are
 * the access byte (present, DPL, S, type), bits 12-15 the flags nibble
 * (G, D/B, L, AVL).
 */
export const GDT_CODE64 = 0xa09b; // G, L; present, code, execute/read, accessed
export const GDT_CODE32 = 0xc09b; // G, D/B (32-bit); present, code, execute/read, accessed
export const GDT_DATA = 0xc093; // G, D/B; present, data, read/write, accessed
export const GDT_TSS64 = 0x808b; // G; present, busy 64-bit TSS
export const GDT_TSS32 = 0x008b; // byte granular; present, busy TSS

/** Descriptor index → selector: index * 8, table indicator GDT, RPL 0. */
const CODE_SELECTOR = 0x08;
const DATA_SELECTOR = 0x10;
const TSS_SELECTOR = 0x18;

/** One 8-byte GDT descriptor from (flags, base, limit) with the base and limit scattered as the CPU wants. */
export function gdtEntry(flags: number, base: number, limit: number): bigint {
  const b = BigInt(base);
  const l = BigInt(limit);
  return (
    ((b & 0xff00_0000n) << 32n) |
    ((b & 0x00ff_ffffn) << 16n) |
    (l & 0xffffn) |
    (((l >> 16n) & 0xfn) << 48n) |
    ((BigInt(flags) & 0xf0ffn) << 40n)
  );
}

type SegmentName = "cs" | "ds" | "es" | "fs" | "gs" | "ss" | "tr";

/** The kvm_segment the CPU would load from `descriptor` at `selector`, as sregs fields of `name`. */
function segmentFromDescriptor(name: SegmentName, selector: number, descriptor: bigint): SregsValues {
  const bits = (shift: bigint, mask: bigint) => Number((descriptor >> shift) & mask);
  const base = (((descriptor >> 56n) & 0xffn) << 24n) | ((descriptor >> 16n) & 0xff_ffffn);
  const rawLimit = Number(((descriptor >> 48n) & 0xfn) << 16n | (descriptor & 0xffffn));
  const granular = bits(55n, 1n);
  const present = bits(47n, 1n);
  const segment: Record<string, number | bigint> = {
    [`${name}.base`]: base,
    // A page-granular limit counts 4 KiB units: the byte limit is (limit << 12) | 0xfff.
    [`${name}.limit`]: granular ? (rawLimit * 0x1000 + 0xfff) >>> 0 : rawLimit,
    [`${name}.selector`]: selector,
    [`${name}.type`]: bits(40n, 0xfn),
    [`${name}.present`]: present,
    [`${name}.dpl`]: bits(45n, 3n),
    [`${name}.db`]: bits(54n, 1n),
    [`${name}.s`]: bits(44n, 1n),
    [`${name}.l`]: bits(53n, 1n),
    [`${name}.g`]: granular,
    [`${name}.avl`]: bits(52n, 1n),
    [`${name}.unusable`]: present ? 0 : 1,
  };
  return segment as SregsValues;
}

/** The boot GDT for a protocol: null, code, data, TSS. */
export function bootGdt(protocol: BootProtocol): bigint[] {
  return protocol === "linux64"
    ? [0n, gdtEntry(GDT_CODE64, 0, 0xfffff), gdtEntry(GDT_DATA, 0, 0xfffff), gdtEntry(GDT_TSS64, 0, 0xfffff)]
    : [0n, gdtEntry(GDT_CODE32, 0, 0xfffff), gdtEntry(GDT_DATA, 0, 0xfffff), gdtEntry(GDT_TSS32, 0, 0x67)];
}

function flatSegments(gdt: readonly bigint[]): SregsValues {
  const data = gdt[2]!;
  return {
    ...segmentFromDescriptor("cs", CODE_SELECTOR, gdt[1]!),
    ...segmentFromDescriptor("ds", DATA_SELECTOR, data),
    ...segmentFromDescriptor("es", DATA_SELECTOR, data),
    ...segmentFromDescriptor("fs", DATA_SELECTOR, data),
    ...segmentFromDescriptor("gs", DATA_SELECTOR, data),
    ...segmentFromDescriptor("ss", DATA_SELECTOR, data),
    ...segmentFromDescriptor("tr", TSS_SELECTOR, gdt[3]!),
    "gdt.base": BigInt(BOOT_GDT_ADDRESS),
    "gdt.limit": gdt.length * 8 - 1,
    "idt.base": BigInt(BOOT_IDT_ADDRESS),
    "idt.limit": 8 - 1,
  };
}

/** Registers for the 64-bit Linux boot protocol entry at `entry` (startup_64). */
export function linux64BootState(entry: number): VcpuBootState {
  return {
    regs: {
      rip: BigInt(entry),
      rsi: BigInt(ZERO_PAGE_ADDRESS),
      rsp: BigInt(BOOT_STACK_POINTER),
      rbp: BigInt(BOOT_STACK_POINTER),
      rflags: RFLAGS_RESERVED,
    },
    sregs: {
      ...flatSegments(bootGdt("linux64")),
      cr0: X86_CR0_PE | X86_CR0_ET | X86_CR0_PG,
      cr3: BigInt(PML4_ADDRESS),
      cr4: X86_CR4_PAE,
      efer: EFER_LME | EFER_LMA,
    },
  };
}

/** Registers for the PVH entry at `entry`: 32-bit protected mode, paging off, EBX = hvm_start_info. */
export function pvhBootState(entry: number): VcpuBootState {
  return {
    regs: {
      rip: BigInt(entry),
      rbx: BigInt(PVH_INFO_ADDRESS),
      rflags: RFLAGS_RESERVED,
    },
    sregs: {
      ...flatSegments(bootGdt("pvh")),
      cr0: X86_CR0_PE | X86_CR0_ET,
      cr4: 0n,
      efer: 0n,
    },
  };
}

/** Page-table entry bits: present, writable, and (in a PDE) a 2 MiB page. */
const PTE_PRESENT = 0x1n;
const PTE_WRITABLE = 0x2n;
const PDE_LARGE_PAGE = 0x80n;
const LARGE_PAGE_SIZE = 2n * 1024n * 1024n;
/** One PDE page maps 512 x 2 MiB = 1 GiB: enough for the kernel until it builds its own tables. */
export const IDENTITY_MAPPED_BYTES = GiB;

/**
 * Writes the boot GDT and an empty IDT, and for linux64 the identity page
 * tables CR3 points at, then returns the vCPU state that uses them.
 */
export function setupBootCpu(memory: GuestMemoryView, protocol: BootProtocol, entry: number): VcpuBootState {
  const gdt = bootGdt(protocol);
  if (gdt.length > BOOT_GDT_MAX_ENTRIES) throw new RangeError(`boot GDT has ${gdt.length} entries; layout reserves ${BOOT_GDT_MAX_ENTRIES}`);
  gdt.forEach((descriptor, i) => memory.writeU64(BOOT_GDT_ADDRESS + i * 8, descriptor));
  memory.writeU64(BOOT_IDT_ADDRESS, 0n);
  if (protocol === "pvh") return pvhBootState(entry);
  writeIdentityPageTables(memory);
  return linux64BootState(entry);
}

function writeIdentityPageTables(memory: GuestMemoryView): void {
  // Clear whole pages so no stale entry maps something unintended.
  for (const table of [PML4_ADDRESS, PDPTE_ADDRESS, PDE_ADDRESS]) memory.slice(table, 0x1000).fill(0);
  memory.writeU64(PML4_ADDRESS, BigInt(PDPTE_ADDRESS) | PTE_PRESENT | PTE_WRITABLE);
  memory.writeU64(PDPTE_ADDRESS, BigInt(PDE_ADDRESS) | PTE_PRESENT | PTE_WRITABLE);
  for (let i = 0n; i < 512n; i++) {
    memory.writeU64(PDE_ADDRESS + Number(i) * 8, (i * LARGE_PAGE_SIZE) | PTE_PRESENT | PTE_WRITABLE | PDE_LARGE_PAGE);
  }
}

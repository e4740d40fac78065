/**
 * Per-vCPU state every x86-64 guest needs before its first instruction:
 * CPUID (KVM presents nothing until told), boot MSRs, FPU control words and
 * the local APIC's LINT pins. Pure data transforms; src/vmm applies them.
 */
import type { CpuidEntry } from "../../kvm/cpuid.ts";
import type { MsrValue } from "../../kvm/vcpu.ts";

const CPUID_LEAF_FEATURES = 0x1;
const CPUID_LEAF_EXTENDED_TOPOLOGY = 0xb;
const CPUID_LEAF_V2_EXTENDED_TOPOLOGY = 0x1f;
const ECX_HYPERVISOR = 1 << 31;
const EDX_HTT = 1 << 28;

/** The host's supported CPUID, adjusted so vCPU `id` of `count` sees its own APIC id and the VM's size. */
export function vcpuCpuid(supported: readonly CpuidEntry[], id: number, count: number): CpuidEntry[] {
  return supported.map((leaf) => {
    const entry = { ...leaf };
    switch (entry.function) {
      case CPUID_LEAF_FEATURES:
        // EBX[31:24] initial APIC id; EBX[23:16] logical processors per package.
        entry.ebx = ((id & 0xff) << 24) | ((Math.min(count, 0xff) & 0xff) << 16) | (entry.ebx & 0xffff);
        entry.ecx |= ECX_HYPERVISOR;
        entry.edx = count > 1 ? entry.edx | EDX_HTT : entry.edx & ~EDX_HTT;
        break;
      case CPUID_LEAF_EXTENDED_TOPOLOGY:
      case CPUID_LEAF_V2_EXTENDED_TOPOLOGY:
        // EDX is the x2APIC id on every sub-leaf.
        entry.edx = id;
        break;
    }
    for (const r of ["eax", "ebx", "ecx", "edx"] as const) entry[r] >>>= 0;
    return entry;
  });
}

export const MSR = {
  IA32_TSC: 0x10,
  IA32_SYSENTER_CS: 0x174,
  IA32_SYSENTER_ESP: 0x175,
  IA32_SYSENTER_EIP: 0x176,
  IA32_MISC_ENABLE: 0x1a0,
  MTRR_DEF_TYPE: 0x2ff,
  STAR: 0xc0000081,
  LSTAR: 0xc0000082,
  CSTAR: 0xc0000083,
  SYSCALL_MASK: 0xc0000084,
  KERNEL_GS_BASE: 0xc0000102,
} as const;

const MISC_ENABLE_FAST_STRING = 1n;
// MTRRs enabled, default memory type write-back: without it guests run RAM uncached.
const MTRR_ENABLE = 1n << 11n;
const MTRR_TYPE_WRITE_BACK = 6n;

/** The MSR values a freshly reset CPU should have for Linux (as Firecracker sets them). */
export const BOOT_MSRS: readonly MsrValue[] = [
  { index: MSR.IA32_SYSENTER_CS, value: 0n },
  { index: MSR.IA32_SYSENTER_ESP, value: 0n },
  { index: MSR.IA32_SYSENTER_EIP, value: 0n },
  { index: MSR.STAR, value: 0n },
  { index: MSR.CSTAR, value: 0n },
  { index: MSR.KERNEL_GS_BASE, value: 0n },
  { index: MSR.SYSCALL_MASK, value: 0n },
  { index: MSR.LSTAR, value: 0n },
  { index: MSR.IA32_TSC, value: 0n },
  { index: MSR.IA32_MISC_ENABLE, value: MISC_ENABLE_FAST_STRING },
  { index: MSR.MTRR_DEF_TYPE, value: MTRR_ENABLE | MTRR_TYPE_WRITE_BACK },
];

/** x87 control word and MXCSR after FNINIT / reset: all exceptions masked. */
export const BOOT_FPU = { fcw: 0x37f, mxcsr: 0x1f80 } as const;

const APIC_LVT0 = 0x350;
const APIC_LVT1 = 0x360;
const APIC_MODE_NMI = 0x4;
const APIC_MODE_EXTINT = 0x7;

function setDeliveryMode(lapic: DataView, register: number, mode: number): void {
  const value = lapic.getUint32(register, true);
  lapic.setUint32(register, ((value & ~0x700) | (mode << 8)) >>> 0, true);
}

/** LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, as on a PC: returns a modified copy. */
export function lapicWithLegacyLints(lapic: Uint8Array): Uint8Array {
  const copy = lapic.slice();
  const view = new DataView(copy.buffer);
  setDeliveryMode(view, APIC_LVT0, APIC_MODE_EXTINT);
  setDeliveryMode(view, APIC_LVT1, APIC_MODE_NMI);
  return copy;
}

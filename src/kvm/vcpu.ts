/**
 * A vCPU file descriptor and its shared kvm_run page (rust-vmm's `VcpuFd`).
 * Usable from any thread: the fd and the mapping belong to the process, so the
 * thread that creates a vCPU maps its run page once and hands the address to
 * the worker that runs it; both see the same bytes.
 */
import { toArrayBuffer } from "bun:ffi";
import { ERRNO } from "../ffi/errno.ts";
import { MAP_SHARED, PROT_READ, PROT_WRITE, ioctlBuffer, ioctlRaw, mmap, munmap } from "../ffi/syscalls.ts";
import { SyscallError } from "../ffi/errno.ts";
import { KVM_IOCTL, KVM_MSRS_ENTRIES_OFFSET, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_msrs, kvm_regs, kvm_run, kvm_sregs } from "./abi.ts";
import { writeCpuidEntries, type CpuidEntry } from "./cpuid.ts";
import { StructView } from "./struct.ts";

export interface MsrValue {
  readonly index: number;
  readonly value: bigint;
}

type Settable<F> = { readonly [K in keyof F]?: F[K] extends { type: "u64" } ? bigint : number };
export type RegsValues = Settable<(typeof kvm_regs)["fields"]>;
export type SregsValues = Settable<(typeof kvm_sregs)["fields"]>;

/** Everything a worker needs to drive a vCPU (structured-clone safe). */
export interface VcpuHandle {
  readonly id: number;
  readonly fd: number;
  readonly runAddress: number;
  readonly runSize: number;
}

export function mapRunPage(vcpuFd: number, runSize: number): number {
  return mmap(0, runSize, PROT_READ | PROT_WRITE, MAP_SHARED, vcpuFd, 0, "kvm_run page");
}

export function unmapRunPage(handle: VcpuHandle): void {
  munmap(handle.runAddress, handle.runSize);
}

/** KVM_RUN came back because a signal (the kick) interrupted it, not because the guest exited. */
export const RUN_INTERRUPTED = -1;

export class Vcpu {
  readonly handle: VcpuHandle;
  /** The kvm_run page: exit details and the immediate_exit flag. */
  readonly run: StructView<typeof kvm_run.fields>;
  /** The whole mapping, for data that KVM places at an offset (port I/O data). */
  readonly runBytes: Uint8Array;

  constructor(handle: VcpuHandle) {
    this.handle = handle;
    this.runBytes = new Uint8Array(toArrayBuffer(handle.runAddress, 0, handle.runSize));
    this.run = new StructView(kvm_run, this.runBytes);
  }

  getRegs(): StructView<typeof kvm_regs.fields> {
    const regs = new StructView(kvm_regs);
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_GET_REGS, regs.bytes, "KVM_GET_REGS");
    return regs;
  }

  setRegs(regs: StructView<typeof kvm_regs.fields>): void {
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_SET_REGS, regs.bytes, "KVM_SET_REGS");
  }

  getSregs(): StructView<typeof kvm_sregs.fields> {
    const sregs = new StructView(kvm_sregs);
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_GET_SREGS, sregs.bytes, "KVM_GET_SREGS");
    return sregs;
  }

  setSregs(sregs: StructView<typeof kvm_sregs.fields>): void {
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_SET_SREGS, sregs.bytes, "KVM_SET_SREGS");
  }

  /** Changes only the named registers (read-modify-write), so callers state just what they mean. */
  updateRegs(values: RegsValues): void {
    const regs = this.getRegs();
    for (const [name, value] of Object.entries(values)) regs.set(name as keyof typeof kvm_regs.fields, value as bigint);
    this.setRegs(regs);
  }

  updateSregs(values: SregsValues): void {
    const sregs = this.getSregs();
    for (const [name, value] of Object.entries(values)) sregs.set(name as keyof typeof kvm_sregs.fields, value as never);
    this.setSregs(sregs);
  }

  setCpuid(entries: readonly CpuidEntry[]): void {
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_SET_CPUID2, writeCpuidEntries(entries), "KVM_SET_CPUID2");
  }

  setMsrs(msrs: readonly MsrValue[]): void {
    const bytes = new Uint8Array(KVM_MSRS_ENTRIES_OFFSET + msrs.length * kvm_msr_entry.size);
    new StructView(kvm_msrs, bytes).set("nmsrs", msrs.length);
    msrs.forEach((msr, i) => {
      const offset = KVM_MSRS_ENTRIES_OFFSET + i * kvm_msr_entry.size;
      new StructView(kvm_msr_entry, bytes.subarray(offset, offset + kvm_msr_entry.size)).set("index", msr.index).set("data", msr.value);
    });
    // KVM_SET_MSRS returns how many it set; it stops at the first one it refuses.
    const written = ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_SET_MSRS, bytes, "KVM_SET_MSRS");
    if (written !== msrs.length) {
      const refused = msrs[written]!;
      throw new SyscallError("ioctl", ERRNO.EINVAL, `KVM_SET_MSRS refused MSR 0x${refused.index.toString(16)}`);
    }
  }

  setFpu(values: { fcw: number; mxcsr: number }): void {
    const fpu = new StructView(kvm_fpu).set("fcw", values.fcw).set("mxcsr", values.mxcsr);
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_SET_FPU, fpu.bytes, "KVM_SET_FPU");
  }

  /** The local APIC's register page (1 KiB, laid out as the APIC's MMIO registers). */
  getLapic(): Uint8Array {
    const lapic = new Uint8Array(kvm_lapic_state.size);
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_GET_LAPIC, lapic, "KVM_GET_LAPIC");
    return lapic;
  }

  setLapic(lapic: Uint8Array): void {
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_SET_LAPIC, lapic, "KVM_SET_LAPIC");
  }

  /** Enters the guest until it exits; returns the exit reason, or RUN_INTERRUPTED after a kick. */
  enter(): number {
    const result = ioctlRaw(this.handle.fd, KVM_IOCTL.KVM_RUN);
    if (result === -ERRNO.EINTR || result === -ERRNO.EAGAIN) {
      // immediate_exit makes KVM return EINTR without entering; clear it so the next entry runs.
      this.run.set("immediate_exit", 0);
      return RUN_INTERRUPTED;
    }
    if (result < 0) throw new SyscallError("ioctl", -result, `KVM_RUN on vCPU ${this.handle.id}`);
    return this.run.get("exit_reason");
  }
}

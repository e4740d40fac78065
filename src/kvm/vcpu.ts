/**
 * A vCPU file descriptor and its shared kvm_run page (rust-vmm's `VcpuFd`).
 * Usable from any thread: the fd and the mapping belong to the process, so the
 * thread that creates a vCPU maps its run page once and hands the address to
 * the worker that runs it; both see the same bytes.
 */
import { toArrayBuffer } from "bun:ffi";
import { ERRNO } from "../ffi/errno.ts";
import { MAP_SHARED, PROT_READ, PROT_WRITE, ioctl, ioctlBuffer, ioctlRaw, mmap, munmap } from "../ffi/syscalls.ts";
import { SyscallError } from "../ffi/errno.ts";
import {
  KVM_CPUID2_ENTRIES_OFFSET,
  KVM_IOCTL,
  KVM_MAX_XCRS,
  KVM_MSRS_ENTRIES_OFFSET,
  KVM_XCRS_ENTRIES_OFFSET,
  kvm_cpuid2,
  kvm_cpuid_entry2,
  kvm_debugregs,
  kvm_fpu,
  kvm_lapic_state,
  kvm_mp_state,
  kvm_msr_entry,
  kvm_msrs,
  kvm_regs,
  kvm_run,
  kvm_sregs,
  kvm_vcpu_events,
  kvm_xcr,
  kvm_xcrs,
  kvm_xsave,
} from "./abi.ts";
import { readCpuidEntries, writeCpuidEntries, type CpuidEntry } from "./cpuid.ts";
import { StructView } from "./struct.ts";

export interface MsrValue {
  readonly index: number;
  readonly value: bigint;
}

/** One extended control register (XCR0 is the only one KVM has today). */
export interface XcrValue {
  readonly xcr: number;
  readonly value: bigint;
}

/**
 * KVM refuses KVM_GET_MSRS/KVM_SET_MSRS with 256 or more entries (MAX_IO_MSRS
 * in arch/x86/kvm/x86.c is an exclusive bound; it is not in the uapi headers).
 */
export const MAX_MSRS_PER_IOCTL = 255;

/** KVM_MAX_CPUID_ENTRIES in the kernel (not in the uapi headers): no vCPU has more CPUID entries. */
export const MAX_CPUID_ENTRIES = 256;

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

  /**
   * KVM_GET_MSRS for at most MAX_MSRS_PER_IOCTL indices. KVM reads them in
   * order and stops at the first one it cannot read, so the result is the
   * leading run it did read: shorter than `indices` means
   * `indices[result.length]` was refused.
   */
  getMsrs(indices: readonly number[]): MsrValue[] {
    if (indices.length > MAX_MSRS_PER_IOCTL) throw new RangeError(`KVM_GET_MSRS takes at most ${MAX_MSRS_PER_IOCTL} MSRs, not ${indices.length}`);
    const bytes = new Uint8Array(KVM_MSRS_ENTRIES_OFFSET + indices.length * kvm_msr_entry.size);
    new StructView(kvm_msrs, bytes).set("nmsrs", indices.length);
    const entry = (i: number) => {
      const offset = KVM_MSRS_ENTRIES_OFFSET + i * kvm_msr_entry.size;
      return new StructView(kvm_msr_entry, bytes.subarray(offset, offset + kvm_msr_entry.size));
    };
    indices.forEach((index, i) => entry(i).set("index", index));
    const read = ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_GET_MSRS, bytes, "KVM_GET_MSRS");
    const values: MsrValue[] = [];
    for (let i = 0; i < Math.min(read, indices.length); i++) values.push({ index: entry(i).get("index"), value: entry(i).get("data") });
    return values;
  }

  /** The CPUID table KVM_SET_CPUID2 gave this vCPU (empty before the first one). */
  getCpuid(): CpuidEntry[] {
    const bytes = new Uint8Array(KVM_CPUID2_ENTRIES_OFFSET + MAX_CPUID_ENTRIES * kvm_cpuid_entry2.size);
    new StructView(kvm_cpuid2, bytes).set("nent", MAX_CPUID_ENTRIES);
    // KVM writes the entries and sets nent to how many there are.
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_GET_CPUID2, bytes, "KVM_GET_CPUID2");
    return readCpuidEntries(bytes);
  }

  /** KVM_MP_STATE_RUNNABLE, _HALTED, _INIT_RECEIVED, ... (needs the in-kernel irqchip for anything but RUNNABLE). */
  getMpState(): number {
    const state = new StructView(kvm_mp_state);
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_GET_MP_STATE, state.bytes, "KVM_GET_MP_STATE");
    return state.get("mp_state");
  }

  setMpState(mpState: number): void {
    const state = new StructView(kvm_mp_state).set("mp_state", mpState);
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_SET_MP_STATE, state.bytes, "KVM_SET_MP_STATE");
  }

  /**
   * The vCPU's XSAVE area (x87, SSE, AVX, ... in the standard, non-compacted
   * format). `size` is KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM when that
   * says more than 4096 (dynamic features such as AMX enabled with
   * arch_prctl): then KVM_GET_XSAVE2 writes that many bytes. Otherwise the
   * legacy KVM_GET_XSAVE (4096 bytes; KVM refuses it when the area is larger).
   */
  getXsave(size: number = kvm_xsave.size): Uint8Array {
    if (!Number.isInteger(size) || size < kvm_xsave.size) throw new RangeError(`an XSAVE area is at least ${kvm_xsave.size} bytes, not ${size}`);
    const region = new Uint8Array(size);
    if (size > kvm_xsave.size) ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_GET_XSAVE2, region, "KVM_GET_XSAVE2");
    else ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_GET_XSAVE, region, "KVM_GET_XSAVE");
    return region;
  }

  /**
   * KVM_SET_XSAVE reads as many bytes as KVM_CAP_XSAVE2 says (4096 unless
   * dynamic features are enabled): `region` must be at least that long.
   */
  setXsave(region: Uint8Array): void {
    if (region.byteLength < kvm_xsave.size) throw new RangeError(`an XSAVE area is at least ${kvm_xsave.size} bytes, not ${region.byteLength}`);
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_SET_XSAVE, region, "KVM_SET_XSAVE");
  }

  getXcrs(): XcrValue[] {
    const bytes = new Uint8Array(kvm_xcrs.size);
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_GET_XCRS, bytes, "KVM_GET_XCRS");
    const count = Math.min(new StructView(kvm_xcrs, bytes).get("nr_xcrs"), KVM_MAX_XCRS);
    const xcrs: XcrValue[] = [];
    for (let i = 0; i < count; i++) {
      const offset = KVM_XCRS_ENTRIES_OFFSET + i * kvm_xcr.size;
      const entry = new StructView(kvm_xcr, bytes.subarray(offset, offset + kvm_xcr.size));
      xcrs.push({ xcr: entry.get("xcr"), value: entry.get("value") });
    }
    return xcrs;
  }

  setXcrs(xcrs: readonly XcrValue[]): void {
    if (xcrs.length > KVM_MAX_XCRS) throw new RangeError(`KVM takes at most ${KVM_MAX_XCRS} XCRs, not ${xcrs.length}`);
    const bytes = new Uint8Array(kvm_xcrs.size);
    new StructView(kvm_xcrs, bytes).set("nr_xcrs", xcrs.length);
    xcrs.forEach((xcr, i) => {
      const offset = KVM_XCRS_ENTRIES_OFFSET + i * kvm_xcr.size;
      new StructView(kvm_xcr, bytes.subarray(offset, offset + kvm_xcr.size)).set("xcr", xcr.xcr).set("value", xcr.value);
    });
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_SET_XCRS, bytes, "KVM_SET_XCRS");
  }

  /** Pending and injected exceptions, interrupts, NMIs, SMIs and the interrupt shadow. */
  getVcpuEvents(): StructView<typeof kvm_vcpu_events.fields> {
    const events = new StructView(kvm_vcpu_events);
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_GET_VCPU_EVENTS, events.bytes, "KVM_GET_VCPU_EVENTS");
    return events;
  }

  /** Applies only the optional parts whose KVM_VCPUEVENT_VALID_* bit is set in `flags`. */
  setVcpuEvents(events: StructView<typeof kvm_vcpu_events.fields>): void {
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_SET_VCPU_EVENTS, events.bytes, "KVM_SET_VCPU_EVENTS");
  }

  getDebugRegs(): StructView<typeof kvm_debugregs.fields> {
    const regs = new StructView(kvm_debugregs);
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_GET_DEBUGREGS, regs.bytes, "KVM_GET_DEBUGREGS");
    return regs;
  }

  setDebugRegs(regs: StructView<typeof kvm_debugregs.fields>): void {
    ioctlBuffer(this.handle.fd, KVM_IOCTL.KVM_SET_DEBUGREGS, regs.bytes, "KVM_SET_DEBUGREGS");
  }

  /** The guest's TSC frequency in kHz (KVM_CAP_GET_TSC_KHZ); throws EIO when KVM does not know it. */
  getTscKhz(): number {
    return ioctl(this.handle.fd, KVM_IOCTL.KVM_GET_TSC_KHZ, 0, "KVM_GET_TSC_KHZ");
  }

  /** Scales the guest's TSC to `khz` (KVM_CAP_TSC_CONTROL: hardware TSC scaling). */
  setTscKhz(khz: number): void {
    ioctl(this.handle.fd, KVM_IOCTL.KVM_SET_TSC_KHZ, khz, `KVM_SET_TSC_KHZ ${khz}`);
  }

  /**
   * KVM_KVMCLOCK_CTRL: tells the guest's kvmclock that the vCPU was paused, so
   * its soft-lockup watchdog does not blame the guest for the gap. Returns
   * false when the guest has no kvmclock to tell (EINVAL: not enabled, or a
   * guest that never set one up); other errors throw.
   */
  kvmclockCtrl(): boolean {
    const result = ioctlRaw(this.handle.fd, KVM_IOCTL.KVM_KVMCLOCK_CTRL);
    if (result === -ERRNO.EINVAL) return false;
    if (result < 0) throw new SyscallError("ioctl", -result, "KVM_KVMCLOCK_CTRL");
    return true;
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

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
import { KVM_IOCTL, kvm_regs, kvm_run, kvm_sregs } from "./abi.ts";
import { StructView } from "./struct.ts";

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

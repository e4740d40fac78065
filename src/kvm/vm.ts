/** A KVM virtual machine file descriptor (rust-vmm's `VmFd`). */
import { close, ioctl, ioctlBuffer } from "../ffi/syscalls.ts";
import { KVM_IOCTL, kvm_userspace_memory_region } from "./abi.ts";
import { StructView } from "./struct.ts";

export interface MemorySlot {
  readonly slot: number;
  readonly guestAddress: number;
  readonly size: number;
  readonly hostAddress: number;
  readonly flags?: number;
}

export class Vm {
  readonly fd: number;
  /** Length of each vCPU's shared kvm_run mapping. */
  readonly vcpuMmapSize: number;

  constructor(fd: number, vcpuMmapSize: number) {
    this.fd = fd;
    this.vcpuMmapSize = vcpuMmapSize;
  }

  setUserMemoryRegion(region: MemorySlot): void {
    const request = new StructView(kvm_userspace_memory_region)
      .set("slot", region.slot)
      .set("flags", region.flags ?? 0)
      .set("guest_phys_addr", BigInt(region.guestAddress))
      .set("memory_size", BigInt(region.size))
      .set("userspace_addr", BigInt(region.hostAddress));
    ioctlBuffer(this.fd, KVM_IOCTL.KVM_SET_USER_MEMORY_REGION, request.bytes, `KVM_SET_USER_MEMORY_REGION slot ${region.slot}`);
  }

  /** Returns the new vCPU's file descriptor; a worker maps and runs it (see vcpu.ts). */
  createVcpu(id: number): number {
    return ioctl(this.fd, KVM_IOCTL.KVM_CREATE_VCPU, id, `KVM_CREATE_VCPU ${id}`);
  }

  close(): void {
    close(this.fd);
  }
}

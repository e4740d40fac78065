/** A KVM virtual machine file descriptor (rust-vmm's `VmFd`). */
import { close, ioctl, ioctlBuffer } from "../ffi/syscalls.ts";
import {
  KVM_CAP,
  KVM_IOCTL,
  KVM_IOEVENTFD_FLAG_DATAMATCH,
  kvm_clock_data,
  kvm_ioeventfd,
  kvm_irq_level,
  kvm_irqchip,
  kvm_irqfd,
  kvm_pit_config,
  kvm_pit_state2,
  kvm_userspace_memory_region,
  type KvmCapability,
} from "./abi.ts";
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

  /** Where KVM keeps the real-mode TSS it needs on Intel; three pages that must not be guest RAM. */
  setTssAddress(address: number): void {
    ioctl(this.fd, KVM_IOCTL.KVM_SET_TSS_ADDR, address, "KVM_SET_TSS_ADDR");
  }

  setIdentityMapAddress(address: number): void {
    ioctlBuffer(this.fd, KVM_IOCTL.KVM_SET_IDENTITY_MAP_ADDR, new Uint8Array(new BigUint64Array([BigInt(address)]).buffer), "KVM_SET_IDENTITY_MAP_ADDR");
  }

  /** In-kernel PIC, IOAPIC and LAPICs: interrupts and HLT never leave the kernel. */
  createIrqchip(): void {
    ioctl(this.fd, KVM_IOCTL.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP");
  }

  createPit(): void {
    // No speaker port emulation in the kernel: port 0x61 reads come to Volt (and read as 0xff).
    const config = new StructView(kvm_pit_config).set("flags", 0);
    ioctlBuffer(this.fd, KVM_IOCTL.KVM_CREATE_PIT2, config.bytes, "KVM_CREATE_PIT2");
  }

  /** Drives an interrupt line of the in-kernel irqchip; usable from any thread. */
  setIrqLine(irq: number, level: 0 | 1): void {
    const request = new StructView(kvm_irq_level).set("irq", irq).set("level", level);
    ioctlBuffer(this.fd, KVM_IOCTL.KVM_IRQ_LINE, request.bytes, `KVM_IRQ_LINE ${irq}`);
  }

  /**
   * Guest writes of `length` bytes to MMIO `address` (equal to `datamatch`
   * when given) signal `eventFd` inside KVM instead of exiting to Volt.
   */
  registerIoeventfd(eventFd: number, address: number, length: number, datamatch?: number): void {
    const request = new StructView(kvm_ioeventfd)
      .set("addr", BigInt(address))
      .set("len", length)
      .set("fd", eventFd)
      .set("flags", datamatch === undefined ? 0 : KVM_IOEVENTFD_FLAG_DATAMATCH)
      .set("datamatch", BigInt(datamatch ?? 0));
    ioctlBuffer(this.fd, KVM_IOCTL.KVM_IOEVENTFD, request.bytes, `KVM_IOEVENTFD 0x${address.toString(16)}`);
  }

  /** Each signal of `eventFd` becomes an edge on irqchip input `gsi`, raised inside KVM from any thread. */
  registerIrqfd(eventFd: number, gsi: number): void {
    const request = new StructView(kvm_irqfd).set("fd", eventFd).set("gsi", gsi);
    ioctlBuffer(this.fd, KVM_IOCTL.KVM_IRQFD, request.bytes, `KVM_IRQFD gsi ${gsi}`);
  }

  /**
   * KVM_CHECK_EXTENSION on this VM (KVM_CAP_CHECK_EXTENSION_VM): some answers
   * depend on the VM, e.g. KVM_CAP_XSAVE2's XSAVE area size.
   */
  checkExtension(capability: KvmCapability): number {
    return ioctl(this.fd, KVM_IOCTL.KVM_CHECK_EXTENSION, KVM_CAP[capability], capability);
  }

  /** One in-kernel interrupt controller's state: KVM_IRQCHIP_PIC_MASTER, _PIC_SLAVE or _IOAPIC. */
  getIrqchip(chipId: number): StructView<typeof kvm_irqchip.fields> {
    const chip = new StructView(kvm_irqchip).set("chip_id", chipId);
    ioctlBuffer(this.fd, KVM_IOCTL.KVM_GET_IRQCHIP, chip.bytes, `KVM_GET_IRQCHIP ${chipId}`);
    return chip;
  }

  setIrqchip(chip: StructView<typeof kvm_irqchip.fields>): void {
    ioctlBuffer(this.fd, KVM_IOCTL.KVM_SET_IRQCHIP, chip.bytes, `KVM_SET_IRQCHIP ${chip.get("chip_id")}`);
  }

  /** The in-kernel PIT (after createPit): its three channels and flags. */
  getPit2(): StructView<typeof kvm_pit_state2.fields> {
    const pit = new StructView(kvm_pit_state2);
    ioctlBuffer(this.fd, KVM_IOCTL.KVM_GET_PIT2, pit.bytes, "KVM_GET_PIT2");
    return pit;
  }

  setPit2(pit: StructView<typeof kvm_pit_state2.fields>): void {
    ioctlBuffer(this.fd, KVM_IOCTL.KVM_SET_PIT2, pit.bytes, "KVM_SET_PIT2");
  }

  /** kvmclock now, in ns; `flags` says which of `realtime` and `host_tsc` KVM filled in. */
  getClock(): StructView<typeof kvm_clock_data.fields> {
    const clock = new StructView(kvm_clock_data);
    ioctlBuffer(this.fd, KVM_IOCTL.KVM_GET_CLOCK, clock.bytes, "KVM_GET_CLOCK");
    return clock;
  }

  /**
   * Sets kvmclock to `clock` ns. With KVM_CLOCK_REALTIME in `flags`, KVM first
   * adds the host CLOCK_REALTIME time elapsed since `realtime`.
   */
  setClock(clock: StructView<typeof kvm_clock_data.fields>): void {
    ioctlBuffer(this.fd, KVM_IOCTL.KVM_SET_CLOCK, clock.bytes, "KVM_SET_CLOCK");
  }

  close(): void {
    close(this.fd);
  }
}

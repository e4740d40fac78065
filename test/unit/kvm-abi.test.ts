/**
 * Every size, offset, ioctl number and constant the TypeScript side uses is
 * compiled against the kernel's own headers and compared, so a wrong offset in
 * src/kvm/abi.ts fails here rather than corrupting a guest.
 */
import { describe, expect, test } from "bun:test";
import * as abi from "../../src/kvm/abi.ts";
import { ERRNO } from "../../src/ffi/errno.ts";
import * as sys from "../../src/ffi/syscalls.ts";
import type { StructLayout } from "../../src/kvm/struct.ts";
import { cValues, layoutsOf, mismatches, tsExpectations } from "./c-abi.ts";

const layouts = layoutsOf(abi);

const constants: Record<string, number> = {
  KVM_API_VERSION: abi.KVM_API_VERSION,
  KVM_EXIT_IO_IN: abi.KVM_EXIT_IO_IN,
  KVM_EXIT_IO_OUT: abi.KVM_EXIT_IO_OUT,
  KVM_IOEVENTFD_FLAG_DATAMATCH: abi.KVM_IOEVENTFD_FLAG_DATAMATCH,
  KVM_IOEVENTFD_FLAG_PIO: abi.KVM_IOEVENTFD_FLAG_PIO,
  KVM_IOEVENTFD_FLAG_DEASSIGN: abi.KVM_IOEVENTFD_FLAG_DEASSIGN,
  KVM_IRQFD_FLAG_DEASSIGN: abi.KVM_IRQFD_FLAG_DEASSIGN,
  KVM_MAX_XCRS: abi.KVM_MAX_XCRS,
  "offsetof(struct kvm_xcrs, xcrs)": abi.KVM_XCRS_ENTRIES_OFFSET,
  KVM_VCPUEVENT_VALID_NMI_PENDING: abi.KVM_VCPUEVENT_VALID_NMI_PENDING,
  KVM_VCPUEVENT_VALID_SIPI_VECTOR: abi.KVM_VCPUEVENT_VALID_SIPI_VECTOR,
  KVM_VCPUEVENT_VALID_SHADOW: abi.KVM_VCPUEVENT_VALID_SHADOW,
  KVM_VCPUEVENT_VALID_SMM: abi.KVM_VCPUEVENT_VALID_SMM,
  KVM_VCPUEVENT_VALID_PAYLOAD: abi.KVM_VCPUEVENT_VALID_PAYLOAD,
  KVM_VCPUEVENT_VALID_TRIPLE_FAULT: abi.KVM_VCPUEVENT_VALID_TRIPLE_FAULT,
  KVM_MP_STATE_RUNNABLE: abi.KVM_MP_STATE_RUNNABLE,
  KVM_MP_STATE_UNINITIALIZED: abi.KVM_MP_STATE_UNINITIALIZED,
  KVM_MP_STATE_INIT_RECEIVED: abi.KVM_MP_STATE_INIT_RECEIVED,
  KVM_MP_STATE_HALTED: abi.KVM_MP_STATE_HALTED,
  KVM_MP_STATE_SIPI_RECEIVED: abi.KVM_MP_STATE_SIPI_RECEIVED,
  KVM_IOAPIC_NUM_PINS: abi.KVM_IOAPIC_NUM_PINS,
  KVM_IRQCHIP_PIC_MASTER: abi.KVM_IRQCHIP_PIC_MASTER,
  KVM_IRQCHIP_PIC_SLAVE: abi.KVM_IRQCHIP_PIC_SLAVE,
  KVM_IRQCHIP_IOAPIC: abi.KVM_IRQCHIP_IOAPIC,
  "offsetof(struct kvm_irqchip, chip)": abi.KVM_IRQCHIP_CHIP_OFFSET,
  "sizeof(((struct kvm_irqchip *)0)->chip)": abi.KVM_IRQCHIP_CHIP_SIZE,
  KVM_PIT_FLAGS_HPET_LEGACY: abi.KVM_PIT_FLAGS_HPET_LEGACY,
  KVM_CLOCK_TSC_STABLE: abi.KVM_CLOCK_TSC_STABLE,
  KVM_CLOCK_REALTIME: abi.KVM_CLOCK_REALTIME,
  KVM_CLOCK_HOST_TSC: abi.KVM_CLOCK_HOST_TSC,
  ...abi.KVM_IOCTL,
  ...abi.KVM_CAP,
  ...abi.KVM_EXIT,
  ...ERRNO,
  ...Object.fromEntries(Object.entries(sys.SYSCALL_NUMBERS).map(([name, nr]) => [`SYS_${name}`, nr])),
  PROT_READ: sys.PROT_READ,
  PROT_WRITE: sys.PROT_WRITE,
  MAP_SHARED: sys.MAP_SHARED,
  MAP_PRIVATE: sys.MAP_PRIVATE,
  MAP_FIXED: sys.MAP_FIXED,
  MAP_ANONYMOUS: sys.MAP_ANONYMOUS,
  MFD_CLOEXEC: sys.MFD_CLOEXEC,
  O_RDWR: sys.O_RDWR,
  O_CLOEXEC: sys.O_CLOEXEC,
  EFD_CLOEXEC: sys.EFD_CLOEXEC,
  EFD_NONBLOCK: sys.EFD_NONBLOCK,
  POLLIN: sys.POLLIN,
  F_DUPFD_CLOEXEC: sys.F_DUPFD_CLOEXEC,
  CLOCK_MONOTONIC: sys.CLOCK_MONOTONIC,
  TFD_CLOEXEC: sys.TFD_CLOEXEC,
  TFD_NONBLOCK: sys.TFD_NONBLOCK,
  POLLOUT: sys.POLLOUT,
  POLLERR: sys.POLLERR,
  POLLHUP: sys.POLLHUP,
};

describe("KVM ABI matches <linux/kvm.h>", () => {
  const expected = tsExpectations(layouts, constants);
  const actual = cValues(
    {
      includes: ["errno.h", "sys/mman.h", "sys/syscall.h", "fcntl.h", "poll.h", "sys/eventfd.h", "sys/timerfd.h", "time.h", "linux/memfd.h", "linux/kvm.h"],
    },
    [...expected.keys()],
  );

  test("covers every struct layout the TypeScript side defines", () => {
    expect(layouts.length).toBeGreaterThanOrEqual(15);
    expect(expected.size).toBeGreaterThan(200);
  });

  test("every size, offset, ioctl number and constant agrees with C", () => {
    expect(mismatches(expected, actual)).toEqual([]);
  });

  test("a wrong offset is caught (the check can fail)", () => {
    const broken: StructLayout = {
      ...abi.kvm_regs,
      fields: { ...abi.kvm_regs.fields, rip: { offset: abi.kvm_regs.fields.rip.offset + 8, type: "u64" } },
    };
    const brokenExpected = tsExpectations([broken], {});
    expect(mismatches(brokenExpected, actual)).toEqual([
      "offsetof(struct kvm_regs, rip): TypeScript says 136, C says 128",
    ]);
  });
});

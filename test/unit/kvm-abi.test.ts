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
  POLLOUT: sys.POLLOUT,
  POLLERR: sys.POLLERR,
  POLLHUP: sys.POLLHUP,
};

describe("KVM ABI matches <linux/kvm.h>", () => {
  const expected = tsExpectations(layouts, constants);
  const actual = cValues(
    {
      includes: ["errno.h", "sys/mman.h", "sys/syscall.h", "fcntl.h", "poll.h", "sys/eventfd.h", "linux/memfd.h", "linux/kvm.h"],
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

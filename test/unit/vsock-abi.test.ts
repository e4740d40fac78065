/**
 * virtio-vsock's binary interfaces against the C headers: the socket system
 * call numbers, flags and errnos of src/ffi/socket-syscalls.ts
 * (<sys/syscall.h>, <sys/socket.h>, <errno.h>), struct sockaddr_un
 * (<sys/un.h>), and the packet header, config and event structs and
 * constants of <linux/virtio_vsock.h>.
 */
import { describe, expect, test } from "bun:test";
import { VIRTIO_ID } from "../../src/devices/virtio/device.ts";
import {
  VIRTIO_VSOCK_EVENT_TRANSPORT_RESET,
  VIRTIO_VSOCK_F_SEQPACKET,
  virtio_vsock_config,
  virtio_vsock_event,
  virtio_vsock_hdr,
} from "../../src/devices/virtio/vsock.ts";
import { VSOCK_HOST_CID, VSOCK_OP, VSOCK_SHUTDOWN, VSOCK_TYPE_STREAM } from "../../src/devices/virtio/vsock-muxer.ts";
import {
  SOCKADDR_UN_SIZE,
  SOCKET_CONSTANTS,
  SOCKET_ERRNO,
  SOCKET_SYSCALL_NUMBERS,
  SUN_PATH_BYTES,
  SUN_PATH_OFFSET,
  sockaddrUn,
} from "../../src/ffi/socket-syscalls.ts";
import { defineStruct, type StructLayout } from "../../src/kvm/struct.ts";
import { cValues, mismatches, tsExpectations } from "./c-abi.ts";

/** struct sockaddr_un as socket-syscalls.ts builds it. */
const sockaddr_un = defineStruct("struct sockaddr_un", SOCKADDR_UN_SIZE, {
  sun_family: [0, "u16"],
  sun_path: [SUN_PATH_OFFSET, "u8", SUN_PATH_BYTES],
});

const layouts: StructLayout[] = [sockaddr_un, virtio_vsock_hdr, virtio_vsock_config, virtio_vsock_event];

const constants: Record<string, number> = {
  ...Object.fromEntries(Object.entries(SOCKET_SYSCALL_NUMBERS).map(([name, nr]) => [`SYS_${name}`, nr])),
  ...SOCKET_CONSTANTS,
  ...SOCKET_ERRNO,
  VIRTIO_ID_VSOCK: VIRTIO_ID.VSOCK,
  VIRTIO_VSOCK_F_SEQPACKET,
  VIRTIO_VSOCK_EVENT_TRANSPORT_RESET,
  VIRTIO_VSOCK_TYPE_STREAM: VSOCK_TYPE_STREAM,
  VMADDR_CID_HOST: VSOCK_HOST_CID,
  ...Object.fromEntries(Object.entries(VSOCK_OP).map(([name, op]) => [`VIRTIO_VSOCK_OP_${name}`, op])),
  ...Object.fromEntries(Object.entries(VSOCK_SHUTDOWN).map(([name, flag]) => [`VIRTIO_VSOCK_SHUTDOWN_${name}`, flag])),
};

describe("vsock ABI matches the C headers", () => {
  const expected = tsExpectations(layouts, constants);
  const actual = cValues(
    {
      includes: [
        "errno.h",
        "sys/syscall.h",
        "sys/socket.h",
        "sys/un.h",
        "linux/virtio_ids.h",
        "linux/virtio_vsock.h",
        "linux/vm_sockets.h",
      ],
    },
    [...expected.keys()],
  );

  test("covers the structs and every constant", () => {
    expect(expected.get("sizeof(struct virtio_vsock_hdr)")).toBe(44);
    expect(expected.size).toBeGreaterThan(60);
  });

  test("every size, offset, syscall number, flag and errno agrees with C", () => {
    expect(mismatches(expected, actual)).toEqual([]);
  });

  test("a wrong offset is caught (the check can fail)", () => {
    const broken: StructLayout = {
      ...virtio_vsock_hdr,
      fields: { ...virtio_vsock_hdr.fields, op: { offset: 28, type: "u16" } },
    };
    expect(mismatches(tsExpectations([broken], {}), actual)).toEqual([
      "offsetof(struct virtio_vsock_hdr, op): TypeScript says 28, C says 30",
    ]);
  });

  test("sockaddrUn fills sun_family and a NUL-terminated sun_path", () => {
    const address = sockaddrUn("/tmp/v.sock");
    expect(address.byteLength).toBe(SOCKADDR_UN_SIZE);
    expect(new DataView(address.buffer).getUint16(0, true)).toBe(SOCKET_CONSTANTS.AF_UNIX);
    expect(new TextDecoder().decode(address.subarray(SUN_PATH_OFFSET, SUN_PATH_OFFSET + 11))).toBe("/tmp/v.sock");
    expect(address[SUN_PATH_OFFSET + 11]).toBe(0);
    expect(() => sockaddrUn("x".repeat(SUN_PATH_BYTES - 1))).not.toThrow();
    expect(() => sockaddrUn("x".repeat(SUN_PATH_BYTES))).toThrow(/at most 107/);
    expect(() => sockaddrUn("a\0b")).toThrow(RangeError);
  });
});

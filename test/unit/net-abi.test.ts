/**
 * virtio-net's kernel ABI, compiled against the headers: syscall numbers, TUN
 * ioctls and flags (<linux/if_tun.h>), struct ifreq (<net/if.h>), socket and
 * poll constants, and virtio-net's feature bits, header and config layout
 * (<linux/virtio_net.h>). A wrong number here would attach the wrong tap mode
 * or misread every packet header.
 */
import { describe, expect, test } from "bun:test";
import { VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_ID } from "../../src/devices/virtio/device.ts";
import {
  ETH_HLEN,
  VIRTIO_NET_F,
  VIRTIO_NET_HDR_F,
  VIRTIO_NET_HDR_GSO,
  VIRTIO_NET_S_LINK_UP,
  virtio_net_config,
  virtio_net_hdr_v1,
} from "../../src/devices/virtio/net.ts";
import { VNET_HDR_SIZE } from "../../src/devices/virtio/tap.ts";
import {
  IFF,
  IFNAMSIZ,
  NET_CONSTANTS,
  NET_ERRNO,
  NET_SYSCALL_NUMBERS,
  TUN_F,
  TUN_IOCTL,
  ifreq,
} from "../../src/ffi/net-syscalls.ts";
import type { StructLayout } from "../../src/kvm/struct.ts";
import { cValues, mismatches, tsExpectations } from "./c-abi.ts";

const prefixed = (prefix: string, table: Record<string, number>) =>
  Object.fromEntries(Object.entries(table).map(([name, value]) => [`${prefix}${name}`, value]));

const layouts: StructLayout[] = [ifreq, virtio_net_config, virtio_net_hdr_v1];

const constants: Record<string, number> = {
  ...prefixed("SYS_", NET_SYSCALL_NUMBERS),
  ...TUN_IOCTL,
  ...IFF,
  ...TUN_F,
  ...NET_CONSTANTS,
  ...NET_ERRNO,
  IFNAMSIZ,
  ...prefixed("VIRTIO_NET_F_", VIRTIO_NET_F),
  ...prefixed("VIRTIO_NET_HDR_F_", VIRTIO_NET_HDR_F),
  ...prefixed("VIRTIO_NET_HDR_GSO_", VIRTIO_NET_HDR_GSO),
  VIRTIO_NET_S_LINK_UP,
  VIRTIO_ID_NET: VIRTIO_ID.NET,
  VIRTIO_RING_F_EVENT_IDX: VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC: VIRTIO_F_RING_INDIRECT_DESC,
  ETH_HLEN,
  "sizeof(struct virtio_net_hdr_mrg_rxbuf)": VNET_HDR_SIZE,
  // Volt exposes the config up to (not including) max_virtqueue_pairs.
  "offsetof(struct virtio_net_config, max_virtqueue_pairs)": virtio_net_config.size,
};

describe("virtio-net ABI matches <linux/if_tun.h>, <net/if.h> and <linux/virtio_net.h>", () => {
  const expected = tsExpectations(layouts, constants);
  // Newer headers append fields (RSS, ...); only the prefix Volt exposes must agree.
  expected.delete("sizeof(struct virtio_net_config)");
  const source = {
    includes: [
      "errno.h",
      "fcntl.h",
      "poll.h",
      "sys/syscall.h",
      "sys/socket.h",
      "sys/ioctl.h",
      "net/if.h",
      "linux/if_tun.h",
      "sys/uio.h",
      "linux/if_ether.h",
      "linux/virtio_ids.h",
      "linux/virtio_ring.h",
      "linux/virtio_net.h",
    ],
  };
  const actual = cValues(source, [...expected.keys()]);

  test("covers the tap, socket and virtio-net constants", () => {
    expect(expected.size).toBeGreaterThan(60);
    for (const name of ["TUNSETIFF", "TUNSETOFFLOAD", "TUNSETVNETHDRSZ", "IFF_VNET_HDR", "SYS_writev", "offsetof(struct ifreq, ifr_flags)"]) {
      expect(expected.has(name)).toBe(true);
    }
  });

  test("every size, offset, ioctl number and constant agrees with C", () => {
    expect(mismatches(expected, actual)).toEqual([]);
  });

  test("a wrong offset is caught (the check can fail)", () => {
    const broken: StructLayout = { ...ifreq, fields: { ...ifreq.fields, ifr_flags: { offset: 18, type: "u16" } } };
    expect(mismatches(tsExpectations([broken]), actual)).toContain(
      "offsetof(struct ifreq, ifr_flags): TypeScript says 18, C says 16",
    );
  });
});

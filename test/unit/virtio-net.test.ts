import { afterEach, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import {
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  VIRTIO_ID,
  featureBit,
  type DescriptorBuffer,
  type DescriptorChain,
  type QueueHandle,
} from "../../src/devices/virtio/device.ts";
import {
  NET_MAX_PACKET,
  NET_MAX_RX_PACKET,
  NET_QUEUE_SIZE,
  NET_RX_BURST,
  NET_TX_BURST,
  VIRTIO_NET_F,
  VIRTIO_NET_HDR_F,
  VIRTIO_NET_HDR_GSO,
  VIRTIO_NET_S_LINK_UP,
  VirtioNet,
  VirtioNetError,
  defaultMac,
  formatMac,
  parseMac,
  virtio_net_config,
} from "../../src/devices/virtio/net.ts";
import { TAP_GUEST_OFFLOADS, TapDevice, TapError, VNET_HDR_SIZE, validateTapName, type NetBackend } from "../../src/devices/virtio/tap.ts";
import { ERRNO } from "../../src/ffi/errno.ts";
import {
  IFF,
  NET_CONSTANTS,
  NET_ERRNO,
  TUN_F,
  TUN_IOCTL,
  ifreq,
  readRaw,
  socketpair,
  writeRaw,
} from "../../src/ffi/net-syscalls.ts";
import { POLLERR, POLLIN, POLLOUT, close, ioctlBuffer, poll } from "../../src/ffi/syscalls.ts";
import { StructView } from "../../src/kvm/struct.ts";
import { GuestMemoryView } from "../../src/memory/guest-memory.ts";
import { FakeQueue } from "./virtio-fake-queue.ts";
import { RateLimiter } from "../../src/devices/virtio/rate-limiter.ts";

const MEMORY_SIZE = 4 << 20;
const FAKE_FD = 1000;
const F = VIRTIO_NET_F;
const bit = (b: number) => featureBit(b);


/** A backend in memory: packets to read, packets written, and scripted results. */
class FakeBackend implements NetBackend {
  readonly name = "fake0";
  readonly fd = FAKE_FD;
  readonly inbound: Uint8Array[] = [];
  readonly written: Uint8Array[] = [];
  /** Results returned (instead of doing the work) by the next writes / reads. */
  readonly writeResults: number[] = [];
  readonly readResults: number[] = [];
  readonly offloadCalls: number[] = [];
  reads = 0;
  closed = false;

  constructor(readonly offloadCapabilities = 0) {}

  readPacket(into: Uint8Array): number {
    this.reads++;
    const scripted = this.readResults.shift();
    if (scripted !== undefined) return scripted;
    const packet = this.inbound.shift();
    if (!packet) return -ERRNO.EAGAIN;
    into.set(packet.subarray(0, Math.min(packet.byteLength, into.byteLength)));
    return packet.byteLength; // like a tap: the full length, even when truncated
  }
  writePacket(parts: readonly Uint8Array[]): number {
    const scripted = this.writeResults.shift();
    if (scripted !== undefined) return scripted;
    const packet = concat(...parts);
    this.written.push(packet);
    return packet.byteLength;
  }
  setOffloads(flags: number): void {
    this.offloadCalls.push(flags);
  }
  close(): void {
    this.closed = true;
  }
}

function concat(...parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, p) => sum + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

interface HeaderFields {
  flags?: number;
  gso?: number;
  hdrLen?: number;
  gsoSize?: number;
  csumStart?: number;
  csumOffset?: number;
  numBuffers?: number;
}

function header(fields: HeaderFields = {}): Uint8Array {
  const bytes = new Uint8Array(VNET_HDR_SIZE);
  const view = new DataView(bytes.buffer);
  view.setUint8(0, fields.flags ?? 0);
  view.setUint8(1, fields.gso ?? 0);
  view.setUint16(2, fields.hdrLen ?? 0, true);
  view.setUint16(4, fields.gsoSize ?? 0, true);
  view.setUint16(6, fields.csumStart ?? 0, true);
  view.setUint16(8, fields.csumOffset ?? 0, true);
  view.setUint16(10, fields.numBuffers ?? 0, true);
  return bytes;
}

/** An Ethernet frame of `length` bytes whose every byte depends on `seed` and its position. */
function frame(length: number, seed = 1): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return out;
}

const readHeader = (bytes: Uint8Array) => {
  const view = new DataView(bytes.buffer, bytes.byteOffset, VNET_HDR_SIZE);
  return {
    flags: view.getUint8(0),
    gso: view.getUint8(1),
    hdrLen: view.getUint16(2, true),
    gsoSize: view.getUint16(4, true),
    csumStart: view.getUint16(6, true),
    csumOffset: view.getUint16(8, true),
    numBuffers: view.getUint16(10, true),
  };
};

const opened: VirtioNet[] = [];
afterEach(() => {
  for (const device of opened.splice(0)) device.close();
});

function net(options: { acked?: bigint; offloads?: number; backend?: NetBackend; mac?: string; ringSize?: number } = {}) {
  const backend = options.backend ?? new FakeBackend(options.offloads ?? 0);
  const device = new VirtioNet(backend, options.mac !== undefined ? { mac: options.mac } : {});
  opened.push(device);
  const memory = new GuestMemoryView({ regions: [{ guestAddress: 0, size: MEMORY_SIZE, buffer: new SharedArrayBuffer(MEMORY_SIZE) }] });
  const rx = new FakeQueue();
  const tx = new FakeQueue();
  if (options.ringSize !== undefined) rx.size = options.ringSize;
  const activate = (acked = options.acked ?? device.features) =>
    device.activate({ memory, ackedFeatures: acked, queues: [rx, tx] });
  activate();

  let next = 0x1000;
  let head = 0;
  const buffer = (content: Uint8Array | number, writable: boolean): DescriptorBuffer => {
    const bytes = typeof content === "number" ? new Uint8Array(content).fill(0xee) : content;
    const address = next;
    next += (bytes.byteLength + 15) & ~15;
    memory.write(address, bytes);
    return { address, length: bytes.byteLength, writable };
  };
  const chain = (queue: FakeQueue, ...buffers: DescriptorBuffer[]) => {
    queue.chains.push({ head, buffers });
    return head++;
  };
  /** A transmit chain from pieces (each becomes one readable buffer). */
  const send = (...pieces: Uint8Array[]) => chain(tx, ...pieces.map((p) => buffer(p, false)));
  /** A receive chain of writable buffers of these sizes; returns its head and buffers. */
  const rxChain = (...sizes: number[]) => {
    const buffers = sizes.map((size) => buffer(size, true));
    return { head: chain(rx, ...buffers), buffers };
  };
  const bytesOf = (b: DescriptorBuffer, length = b.length) => memory.read(b.address, length);
  const fake = backend instanceof FakeBackend ? backend : undefined;
  return { device, backend: fake!, memory, rx, tx, activate, buffer, chain, send, rxChain, bytesOf };
}

const eventsFor = (device: VirtioNet) => device.pollFds().find((p) => p.fd === FAKE_FD)?.events ?? 0;

describe("virtio-net: device identity and config", () => {
  test("is device 1 with receiveq0 and transmitq0 of 256 entries", () => {
    const { device } = net();
    expect(device.deviceType).toBe(VIRTIO_ID.NET);
    expect(device.queueMaxSizes).toEqual([NET_QUEUE_SIZE, NET_QUEUE_SIZE]);
  });

  test("offers MAC, STATUS, MRG_RXBUF, EVENT_IDX, indirect tables and transmit offloads; no UFO, no control queue", () => {
    const { device } = net();
    for (const b of [F.MAC, F.STATUS, F.MRG_RXBUF, F.CSUM, F.HOST_TSO4, F.HOST_TSO6, F.HOST_ECN, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC]) {
      expect(device.features & bit(b)).toBe(bit(b));
    }
    for (const b of [F.GUEST_CSUM, F.GUEST_TSO4, F.GUEST_TSO6, F.GUEST_ECN, F.GUEST_UFO, F.HOST_UFO, F.CTRL_VQ]) {
      expect(device.features & bit(b)).toBe(0n);
    }
  });

  test("offers the receive offloads the backend can take", () => {
    const { device } = net({ offloads: TAP_GUEST_OFFLOADS });
    for (const b of [F.GUEST_CSUM, F.GUEST_TSO4, F.GUEST_TSO6, F.GUEST_ECN]) expect(device.features & bit(b)).toBe(bit(b));
    expect(device.features & bit(F.GUEST_UFO)).toBe(0n);
    const csumOnly = net({ offloads: TUN_F.TUN_F_CSUM }).device;
    expect(csumOnly.features & bit(F.GUEST_CSUM)).toBe(bit(F.GUEST_CSUM));
    expect(csumOnly.features & bit(F.GUEST_TSO4)).toBe(0n);
  });

  test("config space: the MAC at 0 and LINK_UP at 6, little-endian", () => {
    const { device } = net({ mac: "52:54:00:12:34:56" });
    expect(device.config.byteLength).toBe(virtio_net_config.size);
    expect([...device.config.subarray(0, 6)]).toEqual([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    expect(device.config[6]).toBe(VIRTIO_NET_S_LINK_UP);
    expect(device.config[7]).toBe(0);
    expect(device.mac).toBe("52:54:00:12:34:56");
  });

  test("the default MAC is locally administered, unicast, and stable per host and tap", () => {
    const a = defaultMac("tap0", "host-a");
    expect(a[0]).toBe(0x02);
    expect(formatMac(defaultMac("tap0", "host-a"))).toBe(formatMac(a));
    expect(formatMac(defaultMac("tap1", "host-a"))).not.toBe(formatMac(a));
    expect(formatMac(defaultMac("tap0", "host-b"))).not.toBe(formatMac(a));
    const { device } = net();
    expect(device.mac).toBe(formatMac(defaultMac("fake0")));
    expect([...device.config.subarray(0, 6)]).toEqual([...defaultMac("fake0")]);
  });
});

describe("virtio-net: MAC addresses", () => {
  test("parses six hex bytes in either case", () => {
    expect([...parseMac("52:54:00:12:34:56")]).toEqual([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    expect(formatMac(parseMac("02:AB:cd:EF:00:01"))).toBe("02:ab:cd:ef:00:01");
  });

  test.each([
    ["52:54:00:12:34", "six hex bytes"],
    ["52:54:00:12:34:56:78", "six hex bytes"],
    ["52-54-00-12-34-56", "six hex bytes"],
    ["52:54:00:12:34:5", "six hex bytes"],
    ["zz:54:00:12:34:56", "six hex bytes"],
    [" 52:54:00:12:34:56", "six hex bytes"],
    ["", "six hex bytes"],
    ["01:00:5e:00:00:01", "multicast"],
    ["ff:ff:ff:ff:ff:ff", "multicast"],
    ["00:00:00:00:00:00", "all zeros"],
  ])("refuses %p, naming it", (text, why) => {
    expect(() => parseMac(text)).toThrow(VirtioNetError);
    expect(() => parseMac(text)).toThrow(JSON.stringify(text));
    expect(() => parseMac(text)).toThrow(why);
  });

  test("open() refuses a bad MAC before touching the tap, naming both", () => {
    expect(() => VirtioNet.open({ tap: "voltnope0", mac: "01:02:03:04:05:06" })).toThrow(
      'tap voltnope0: MAC address "01:02:03:04:05:06" is a multicast address',
    );
    expect(existsSync("/sys/class/net/voltnope0")).toBe(false);
  });

  test("tap names are checked as the kernel would", () => {
    validateTapName("tap0");
    validateTapName("a".repeat(15));
    for (const bad of ["", "a".repeat(16), "ta p", "a/b", "a:b", ".", "..", "tap%d", "tapé"]) {
      expect(() => validateTapName(bad)).toThrow(TapError);
      expect(() => validateTapName(bad)).toThrow(`tap ${JSON.stringify(bad)}`);
    }
    expect(() => VirtioNet.open({ tap: "a-much-too-long-name" })).toThrow("at most 15");
  });
});

describe("virtio-net: transmit", () => {
  test("header and frame reach the backend intact, one packet per chain, in order", () => {
    const n = net();
    const first = frame(1500, 1);
    const second = frame(60, 2);
    const h1 = n.send(header(), first.subarray(0, 100), first.subarray(100));
    const h2 = n.send(concat(header(), second));
    n.device.processQueue(1);
    expect(n.backend.written.length).toBe(2);
    expect(n.backend.written[0]).toEqual(concat(header(), first));
    expect(n.backend.written[1]).toEqual(concat(header(), second));
    expect(n.tx.used).toEqual([
      { head: h1, written: 0 },
      { head: h2, written: 0 },
    ]);
    expect(n.tx.notifications).toBe(1);
    expect(n.device.stats).toMatchObject({ txPackets: 2, txBytes: 1560, txDropped: 0, invalid: 0 });
  });

  test("a header split across descriptors is gathered (any layout is legal)", () => {
    const n = net();
    const hdr = header({ flags: VIRTIO_NET_HDR_F.NEEDS_CSUM, csumStart: 34, csumOffset: 16 });
    const data = frame(200);
    n.send(hdr.subarray(0, 3), hdr.subarray(3, 10), concat(hdr.subarray(10), data.subarray(0, 50)), data.subarray(50));
    n.device.processQueue(1);
    expect(n.backend.written).toEqual([concat(hdr, data)]);
    expect(n.device.stats.invalid).toBe(0);
  });

  test("offload headers pass only for negotiated features; unknown flags and num_buffers are cleared", () => {
    const tso = header({ flags: VIRTIO_NET_HDR_F.NEEDS_CSUM | VIRTIO_NET_HDR_F.DATA_VALID, gso: VIRTIO_NET_HDR_GSO.TCPV4 | VIRTIO_NET_HDR_GSO.ECN, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16, numBuffers: 9 });
    const n = net();
    n.send(tso, frame(3000));
    n.device.processQueue(1);
    expect(readHeader(n.backend.written[0]!)).toEqual({
      flags: VIRTIO_NET_HDR_F.NEEDS_CSUM,
      gso: VIRTIO_NET_HDR_GSO.TCPV4 | VIRTIO_NET_HDR_GSO.ECN,
      hdrLen: 54,
      gsoSize: 1448,
      csumStart: 34,
      csumOffset: 16,
      numBuffers: 0,
    });

    // A driver that accepted none of them may use none of them.
    const plain = net({ acked: bit(F.MAC) | bit(F.MRG_RXBUF) });
    plain.send(header({ flags: VIRTIO_NET_HDR_F.NEEDS_CSUM }), frame(60));
    plain.send(header({ gso: VIRTIO_NET_HDR_GSO.TCPV4 }), frame(60));
    plain.send(header({ gso: VIRTIO_NET_HDR_GSO.TCPV6 }), frame(60));
    plain.send(header({ gso: VIRTIO_NET_HDR_GSO.UDP }), frame(60));
    plain.send(header({ gso: VIRTIO_NET_HDR_GSO.ECN }), frame(60));
    plain.send(header({ flags: VIRTIO_NET_HDR_F.DATA_VALID }), frame(60));
    plain.device.processQueue(1);
    expect(plain.backend.written.length).toBe(1);
    expect(readHeader(plain.backend.written[0]!).flags).toBe(0);
    expect(plain.tx.used.map((u) => u.written)).toEqual([0, 0, 0, 0, 0, 0]);
    expect(plain.device.stats).toMatchObject({ txPackets: 1, invalid: 5 });

    // ECN needs HOST_ECN as well as a TCP GSO type.
    const noEcn = net({ acked: bit(F.CSUM) | bit(F.HOST_TSO4) });
    noEcn.send(header({ flags: 1, gso: VIRTIO_NET_HDR_GSO.TCPV4 | VIRTIO_NET_HDR_GSO.ECN, gsoSize: 1448 }), frame(3000));
    noEcn.send(header({ flags: 1, gso: VIRTIO_NET_HDR_GSO.TCPV4, gsoSize: 1448 }), frame(3000));
    noEcn.device.processQueue(1);
    expect(noEcn.device.stats).toMatchObject({ txPackets: 1, invalid: 1 });
  });

  test("hostile chains are returned with length 0 and counted, never sent, never thrown", () => {
    const n = net();
    const heads = [
      n.chain(n.tx), // no buffers at all
      n.send(header()), // a header without a frame
      n.send(header(), frame(13)), // shorter than an Ethernet header
      n.send(header().subarray(0, 8)), // not even a header
      n.chain(n.tx, n.buffer(concat(header(), frame(60)), false), n.buffer(64, true)), // device-writable on transmit
      n.chain(n.tx, n.buffer(concat(header(), frame(60)), true)), // only device-writable
      n.chain(n.tx, { address: MEMORY_SIZE - 16, length: 4096, writable: false }), // outside guest RAM
    ];
    const oversize = n.send(header(), frame(NET_MAX_PACKET - VNET_HDR_SIZE + 1));
    const fine = n.send(header(), frame(NET_MAX_PACKET - VNET_HDR_SIZE));
    expect(() => n.device.processQueue(1)).not.toThrow();
    expect(n.tx.used).toEqual([...heads, oversize, fine].map((head) => ({ head, written: 0 })));
    expect(n.backend.written.length).toBe(1);
    expect(n.backend.written[0]!.byteLength).toBe(NET_MAX_PACKET);
    expect(n.device.stats).toMatchObject({ txPackets: 1, txDropped: 1, invalid: heads.length });
  });

  test("a full backend (EAGAIN) keeps the chain, watches POLLOUT, and resumes on it", () => {
    const n = net();
    const heads = [n.send(header(), frame(100, 1)), n.send(header(), frame(100, 2)), n.send(header(), frame(100, 3))];
    // The first goes, the second finds the tap full.
    const original = n.backend.writePacket.bind(n.backend);
    let calls = 0;
    n.backend.writePacket = (parts) => (++calls === 2 ? -ERRNO.EAGAIN : original(parts));
    n.device.processQueue(1);
    expect(n.tx.used).toEqual([{ head: heads[0]!, written: 0 }]);
    expect(n.backend.written.length).toBe(1);
    expect(eventsFor(n.device) & POLLOUT).toBe(POLLOUT);
    expect(n.tx.chains.length).toBe(1); // the third is still in the ring: nothing popped past the blocked one

    // A notification while blocked does not retry (POLLOUT will).
    n.device.processQueue(1);
    expect(calls).toBe(2);

    n.device.processBackend(FAKE_FD, POLLOUT);
    expect(n.tx.used.map((u) => u.head)).toEqual(heads);
    expect(n.backend.written.map((p) => p[VNET_HDR_SIZE + 99])).toEqual([1, 2, 3].map((seed) => frame(100, seed)[99]));
    expect(eventsFor(n.device) & POLLOUT).toBe(0);
    expect(n.device.stats).toMatchObject({ txPackets: 3, txDropped: 0 });
  });

  test("a long queue is sent in bursts, POLLOUT bringing the worker back for the rest", () => {
    const n = net();
    for (let i = 0; i < NET_TX_BURST + 10; i++) n.send(header(), frame(60, i));
    n.device.processQueue(1);
    expect(n.tx.used.length).toBe(NET_TX_BURST);
    expect(eventsFor(n.device) & POLLOUT).toBe(POLLOUT);
    n.device.processBackend(FAKE_FD, POLLOUT);
    expect(n.tx.used.length).toBe(NET_TX_BURST + 10);
    expect(eventsFor(n.device) & POLLOUT).toBe(0);
  });

  test("host errors: EINVAL is the guest's packet, EIO a drop; EBADFD ends the backend, once, loudly", () => {
    const n = net();
    n.send(header(), frame(60));
    n.send(header(), frame(60));
    n.backend.writeResults.push(-ERRNO.EINVAL, -ERRNO.EIO);
    n.device.processQueue(1);
    expect(n.device.stats).toMatchObject({ invalid: 1, txDropped: 1, txPackets: 0 });
    expect(n.device.lastBackendError).toContain("EIO");
    expect(n.tx.used.length).toBe(2);

    n.send(header(), frame(60));
    n.backend.writeResults.push(-NET_ERRNO.EBADFD);
    expect(() => n.device.processQueue(1)).toThrow("tap fake0: write failed: EBADFD");
    expect(n.device.pollFds()).toEqual([]);
    // After the I/O worker's reset and the driver's restart, packets are dropped, not sent.
    n.device.reset();
    n.activate();
    n.send(header(), frame(60));
    n.device.processQueue(1);
    expect(n.device.stats.txDropped).toBe(3); // EIO, EBADFD, and the one after
    expect(n.device.pollFds()).toEqual([]);
  });
});

describe("virtio-net: receive", () => {
  test("a packet spans two mergeable buffers with a 12-byte header and num_buffers 2", () => {
    const n = net();
    const a = n.rxChain(1500);
    const b = n.rxChain(1000, 500);
    const data = frame(2000);
    n.backend.inbound.push(concat(header({ numBuffers: 0xbeef }), data));
    n.device.processQueue(0);
    expect(n.rx.used).toEqual([
      { head: a.head, written: 1500 },
      { head: b.head, written: 512 },
    ]);
    expect(n.rx.publishes).toEqual([2]); // both buffers published together
    const landed = concat(n.bytesOf(a.buffers[0]!), n.bytesOf(b.buffers[0]!), n.bytesOf(b.buffers[1]!));
    expect(readHeader(landed)).toEqual({ flags: 0, gso: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0, numBuffers: 2 });
    expect(landed.subarray(VNET_HDR_SIZE, VNET_HDR_SIZE + data.byteLength)).toEqual(data);
    expect(landed.subarray(VNET_HDR_SIZE + data.byteLength).every((x) => x === 0xee)).toBe(true);
    expect(n.rx.notifications).toBeGreaterThanOrEqual(1);
    expect(n.device.stats).toMatchObject({ rxPackets: 1, rxBytes: 2000, rxDropped: 0 });
  });

  test("a packet that fits one buffer says num_buffers 1; several packets, in order", () => {
    const n = net();
    const chains = [n.rxChain(1526), n.rxChain(1526), n.rxChain(1526)];
    n.backend.inbound.push(concat(header(), frame(60, 1)), concat(header(), frame(1514, 2)));
    n.device.processQueue(0);
    expect(n.rx.used).toEqual([
      { head: chains[0]!.head, written: 72 },
      { head: chains[1]!.head, written: 1526 },
    ]);
    expect(readHeader(n.bytesOf(chains[0]!.buffers[0]!)).numBuffers).toBe(1);
    expect(n.bytesOf(chains[1]!.buffers[0]!).subarray(VNET_HDR_SIZE)).toEqual(frame(1514, 2));
    expect(eventsFor(n.device) & POLLIN).toBe(POLLIN); // one chain left: keep reading
  });

  test("no receive buffers: the tap is not read and POLLIN is not watched until the driver adds some", () => {
    const n = net();
    n.backend.inbound.push(concat(header(), frame(100)));
    n.device.processQueue(0);
    expect(n.backend.reads).toBe(0);
    expect(eventsFor(n.device) & POLLIN).toBe(0);
    // Spurious readiness changes nothing.
    n.device.processBackend(FAKE_FD, POLLIN);
    expect(n.backend.reads).toBe(0);

    const c = n.rxChain(2048);
    n.device.processQueue(0);
    expect(n.rx.used).toEqual([{ head: c.head, written: 112 }]);
    expect(n.backend.inbound.length).toBe(0);
    // Out of buffers again after that one.
    n.backend.inbound.push(concat(header(), frame(100)));
    n.device.processBackend(FAKE_FD, POLLIN);
    expect(eventsFor(n.device) & POLLIN).toBe(0);
  });

  test("a ring that runs dry mid-packet keeps the packet until the driver adds buffers", () => {
    const n = net();
    const a = n.rxChain(1500);
    n.backend.inbound.push(concat(header(), frame(3000)), concat(header(), frame(60, 9)));
    n.device.processQueue(0);
    expect(n.rx.used).toEqual([]);
    expect(eventsFor(n.device) & POLLIN).toBe(0);
    expect(n.backend.inbound.length).toBe(1); // only the one packet was taken

    const b = n.rxChain(1000);
    const c = n.rxChain(1000);
    n.device.processQueue(0);
    expect(n.rx.used).toEqual([
      { head: a.head, written: 1500 },
      { head: b.head, written: 1000 },
      { head: c.head, written: 512 },
    ]);
    expect(readHeader(n.bytesOf(a.buffers[0]!)).numBuffers).toBe(3);
    const landed = concat(n.bytesOf(a.buffers[0]!), n.bytesOf(b.buffers[0]!), n.bytesOf(c.buffers[0]!, 512));
    expect(landed.subarray(VNET_HDR_SIZE)).toEqual(frame(3000));
    expect(n.device.stats).toMatchObject({ rxPackets: 1, rxDropped: 0 });
  });

  test("a packet larger than the whole ring can hold is dropped; the buffers serve the next one", () => {
    const n = net({ ringSize: 2 });
    const a = n.rxChain(100);
    n.rxChain(100);
    n.backend.inbound.push(concat(header(), frame(1000)), concat(header(), frame(60, 3)));
    n.device.processQueue(0);
    expect(n.device.stats).toMatchObject({ rxDropped: 1, rxPackets: 1 });
    expect(n.rx.used).toEqual([{ head: a.head, written: 72 }]);
    expect(n.bytesOf(a.buffers[0]!, 72).subarray(VNET_HDR_SIZE)).toEqual(frame(60, 3));
  });

  test("without MRG_RXBUF each packet takes one chain; one that does not fit it is dropped", () => {
    const n = net({ acked: bit(F.MAC) });
    const small = n.rxChain(100);
    n.backend.inbound.push(concat(header(), frame(500)), concat(header(), frame(80, 4)));
    n.device.processQueue(0);
    expect(n.device.stats).toMatchObject({ rxDropped: 1, rxPackets: 1 });
    expect(n.rx.used).toEqual([{ head: small.head, written: 92 }]);
    expect(readHeader(n.bytesOf(small.buffers[0]!)).numBuffers).toBe(1);
  });

  test("hostile receive chains are returned with length 0 and counted; good ones still used", () => {
    const n = net();
    const readable = n.chain(n.rx, n.buffer(100, false), n.buffer(2000, true));
    const tiny = n.chain(n.rx, n.buffer(6, true), n.buffer(5, true));
    const outside = n.chain(n.rx, { address: MEMORY_SIZE - 8, length: 64, writable: true });
    const empty = n.chain(n.rx);
    const good = n.rxChain(2000);
    n.backend.inbound.push(concat(header(), frame(100)));
    expect(() => n.device.processQueue(0)).not.toThrow();
    expect(n.rx.used).toEqual([
      { head: readable, written: 0 },
      { head: tiny, written: 0 },
      { head: outside, written: 0 },
      { head: empty, written: 0 },
      { head: good.head, written: 112 },
    ]);
    expect(n.device.stats).toMatchObject({ invalid: 4, rxPackets: 1 });
  });

  test("packets from the backend that are truncated or runts are dropped", () => {
    const n = net();
    n.rxChain(NET_MAX_RX_PACKET + 100);
    n.rxChain(2000);
    n.backend.inbound.push(concat(header(), frame(NET_MAX_RX_PACKET - VNET_HDR_SIZE + 1))); // one byte too long
    n.backend.inbound.push(concat(header(), frame(10))); // shorter than an Ethernet header
    n.backend.inbound.push(concat(header(), frame(NET_MAX_RX_PACKET - VNET_HDR_SIZE)));
    n.device.processQueue(0);
    expect(n.device.stats).toMatchObject({ rxDropped: 2, rxPackets: 1, rxBytes: NET_MAX_RX_PACKET - VNET_HDR_SIZE });
  });

  test("receive headers follow what the driver accepted", () => {
    const plain = net({ acked: bit(F.MRG_RXBUF) });
    const c = plain.rxChain(2000);
    plain.rxChain(2000);
    plain.backend.inbound.push(concat(header({ flags: VIRTIO_NET_HDR_F.DATA_VALID }), frame(60)));
    plain.backend.inbound.push(concat(header({ flags: VIRTIO_NET_HDR_F.NEEDS_CSUM, csumStart: 34, csumOffset: 16 }), frame(60)));
    plain.backend.inbound.push(concat(header({ gso: VIRTIO_NET_HDR_GSO.TCPV4, gsoSize: 1448 }), frame(3000)));
    plain.device.processQueue(0);
    expect(readHeader(plain.bytesOf(c.buffers[0]!)).flags).toBe(0); // 5.1.6.4.1: flags 0 without GUEST_CSUM
    expect(plain.device.stats).toMatchObject({ rxPackets: 1, rxDropped: 2 });

    const offloading = net({ offloads: TAP_GUEST_OFFLOADS });
    const d = offloading.rxChain(4000);
    const gso = header({ flags: VIRTIO_NET_HDR_F.NEEDS_CSUM | VIRTIO_NET_HDR_F.RSC_INFO, gso: VIRTIO_NET_HDR_GSO.TCPV6 | VIRTIO_NET_HDR_GSO.ECN, hdrLen: 74, gsoSize: 1428, csumStart: 54, csumOffset: 16 });
    offloading.backend.inbound.push(concat(gso, frame(3000)));
    offloading.device.processQueue(0);
    expect(readHeader(offloading.bytesOf(d.buffers[0]!))).toEqual({
      flags: VIRTIO_NET_HDR_F.NEEDS_CSUM,
      gso: VIRTIO_NET_HDR_GSO.TCPV6 | VIRTIO_NET_HDR_GSO.ECN,
      hdrLen: 74,
      gsoSize: 1428,
      csumStart: 54,
      csumOffset: 16,
      numBuffers: 1,
    });
  });

  test("at most a burst of packets per call, so other work gets a turn; POLLIN stays watched", () => {
    const n = net();
    for (let i = 0; i < NET_RX_BURST + 5; i++) {
      n.rxChain(128);
      n.backend.inbound.push(concat(header(), frame(60, i)));
    }
    n.device.processQueue(0);
    expect(n.device.stats.rxPackets).toBe(NET_RX_BURST);
    expect(eventsFor(n.device) & POLLIN).toBe(POLLIN);
    n.device.processBackend(FAKE_FD, POLLIN);
    expect(n.device.stats.rxPackets).toBe(NET_RX_BURST + 5);
  });

  test("a read error other than EAGAIN/EINTR ends the backend with an error naming the tap", () => {
    const n = net();
    n.rxChain(2000);
    n.backend.readResults.push(-ERRNO.EINTR, -NET_ERRNO.EBADFD);
    expect(() => n.device.processQueue(0)).toThrow("tap fake0: read failed: EBADFD");
    expect(n.device.pollFds()).toEqual([]);
  });
});

describe("virtio-net: lifecycle and backend", () => {
  test("offloads: the tap gets exactly what the driver accepted, and none after a reset", () => {
    const n = net({ offloads: TAP_GUEST_OFFLOADS, acked: bit(F.GUEST_CSUM) | bit(F.GUEST_TSO4) | bit(F.MRG_RXBUF) });
    expect(n.backend.offloadCalls).toEqual([TUN_F.TUN_F_CSUM | TUN_F.TUN_F_TSO4]);
    n.device.reset();
    expect(n.backend.offloadCalls).toEqual([TUN_F.TUN_F_CSUM | TUN_F.TUN_F_TSO4, 0]);
    n.activate(n.device.features);
    expect(n.backend.offloadCalls.at(-1)).toBe(TAP_GUEST_OFFLOADS);
    n.device.reset();
    // TSO without GUEST_CSUM is not a thing: nothing is enabled.
    n.activate(bit(F.GUEST_TSO4) | bit(F.GUEST_TSO6));
    expect(n.backend.offloadCalls.at(-1)).toBe(0);
    const none = net({ acked: bit(F.MRG_RXBUF) });
    expect(none.backend.offloadCalls).toEqual([]);
  });

  test("nothing is polled before DRIVER_OK or after a reset; readiness then does nothing", () => {
    const backend = new FakeBackend();
    const device = new VirtioNet(backend);
    opened.push(device);
    expect(device.pollFds()).toEqual([]);
    backend.inbound.push(concat(header(), frame(60)));
    device.processBackend(FAKE_FD, POLLIN | POLLOUT);
    device.processQueue(0);
    device.processQueue(1);
    expect(backend.reads).toBe(0);

    const n = net();
    expect(n.device.pollFds()).toEqual([{ fd: FAKE_FD, events: POLLIN }]);
    n.device.reset();
    expect(n.device.pollFds()).toEqual([]);
  });

  test("a reset forgets held chains and a pending packet; the device works again after it", () => {
    const n = net();
    n.rxChain(100);
    n.backend.inbound.push(concat(header(), frame(500)));
    n.device.processQueue(0); // held: one chain, and the packet waiting for more
    n.device.reset();
    expect(n.device.stats.rxDropped).toBe(1);
    n.activate();
    const c = n.rxChain(2000);
    n.backend.inbound.push(concat(header(), frame(60)));
    n.device.processQueue(0);
    expect(n.rx.used).toEqual([{ head: c.head, written: 72 }]);
  });

  test("POLLERR (the tap was deleted) throws once naming the tap; the fd is never polled again", () => {
    const n = net();
    expect(() => n.device.processBackend(FAKE_FD, POLLERR)).toThrow(TapError);
    expect(n.device.lastBackendError).toContain("tap fake0: poll reports POLLERR");
    expect(n.device.pollFds()).toEqual([]);
    expect(() => n.device.processBackend(FAKE_FD, POLLERR)).not.toThrow();
  });

  test("another descriptor's readiness is ignored; close closes the backend", () => {
    const n = net();
    n.rxChain(2000);
    n.backend.inbound.push(concat(header(), frame(60)));
    n.device.processBackend(FAKE_FD + 1, POLLIN);
    expect(n.backend.reads).toBe(0);
    n.device.close();
    expect(n.backend.closed).toBe(true);
  });
});

describe("TapDevice over a SOCK_SEQPACKET socketpair (the real read/writev path, no CAP_NET_ADMIN)", () => {
  const { AF_UNIX, SOCK_SEQPACKET, SOCK_NONBLOCK, SOCK_CLOEXEC } = NET_CONSTANTS;
  function pair() {
    const [ours, peer] = socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC);
    const tap = new TapDevice(ours, "pair0");
    return { tap, peer, done: () => (tap.close(), close(peer)) };
  }

  test("writePacket sends its pieces as one packet; readPacket reads one; EAGAIN when empty", () => {
    const { tap, peer, done } = pair();
    try {
      const parts = [header({ numBuffers: 1 }), frame(700, 1), frame(5, 2), new Uint8Array(0), frame(300, 3)];
      expect(tap.writePacket(parts)).toBe(VNET_HDR_SIZE + 1005);
      const got: Uint8Array = new Uint8Array(4096);
      expect(readRaw(peer, got)).toBe(VNET_HDR_SIZE + 1005);
      expect(got.subarray(0, VNET_HDR_SIZE + 1005)).toEqual(concat(...parts));

      const into: Uint8Array = new Uint8Array(2048);
      expect(tap.readPacket(into)).toBe(-ERRNO.EAGAIN);
      expect(writeRaw(peer, concat(header(), frame(100)))).toBe(112);
      expect(writeRaw(peer, concat(header(), frame(50)))).toBe(62);
      expect(tap.readPacket(into)).toBe(112);
      expect(into.subarray(VNET_HDR_SIZE, 112)).toEqual(frame(100));
      expect(tap.readPacket(into)).toBe(62);
    } finally {
      done();
    }
  });

  test("more pieces than one writev takes are joined", () => {
    const { tap, peer, done } = pair();
    try {
      const parts = Array.from({ length: 1500 }, (_, i) => frame(3, i));
      expect(tap.writePacket(parts)).toBe(4500);
      const got: Uint8Array = new Uint8Array(8192);
      expect(readRaw(peer, got)).toBe(4500);
      expect(got.subarray(0, 4500)).toEqual(concat(...parts));
    } finally {
      done();
    }
  });

  test("VirtioNet end to end: guest frames out, host frames in, zero-copy from guest memory", () => {
    const { tap, peer, done } = pair();
    try {
      const n = net({ backend: tap, acked: bit(F.MRG_RXBUF) | bit(F.MAC) });
      n.send(header(), frame(1000, 5));
      n.device.processQueue(1);
      const got: Uint8Array = new Uint8Array(4096);
      expect(readRaw(peer, got)).toBe(1012);
      expect(got.subarray(VNET_HDR_SIZE, 1012)).toEqual(frame(1000, 5));

      const a = n.rxChain(700);
      const b = n.rxChain(700);
      writeRaw(peer, concat(header(), frame(1200, 6)));
      expect(poll([{ fd: tap.fd, events: POLLIN }], 1000)[0]! & POLLIN).toBe(POLLIN);
      n.device.processBackend(tap.fd, POLLIN);
      expect(n.rx.used).toEqual([
        { head: a.head, written: 700 },
        { head: b.head, written: 512 },
      ]);
      const landed = concat(n.bytesOf(a.buffers[0]!), n.bytesOf(b.buffers[0]!, 512));
      expect(readHeader(landed).numBuffers).toBe(2);
      expect(landed.subarray(VNET_HDR_SIZE)).toEqual(frame(1200, 6));
      opened.splice(opened.indexOf(n.device), 1);
    } finally {
      done();
    }
  });
});

/** A real tap needs /dev/net/tun and CAP_NET_ADMIN (root here); anything else skips, loudly. */
function tapUnavailable(): string | undefined {
  if (!existsSync("/dev/net/tun")) return "/dev/net/tun is missing";
  if (process.getuid?.() !== 0) return "not root (creating a tap needs CAP_NET_ADMIN)";
  return undefined;
}

const TEST_TAP = "volttest0";

describe("TapDevice on a real tap", () => {
  const why = tapUnavailable();
  if (why) {
    console.warn(`\n*** SKIPPING real-tap tests: ${why} ***\n`);
    test.skip(`real tap (${why})`, () => {});
    return;
  }

  test("creates the tap with VNET_HDR and a 12-byte header; it disappears on close", () => {
    let device: VirtioNet;
    try {
      device = VirtioNet.open({ tap: TEST_TAP });
    } catch (error) {
      if (error instanceof TapError && /EPERM|EACCES/.test(error.message)) {
        console.warn(`\n*** SKIPPING real-tap test: ${error.message} ***\n`);
        return;
      }
      throw error;
    }
    try {
      const tap = device.backend as TapDevice;
      expect(tap.created).toBe(true);
      expect(existsSync(`/sys/class/net/${TEST_TAP}`)).toBe(true);
      const request = new StructView(ifreq);
      ioctlBuffer(tap.fd, TUN_IOCTL.TUNGETIFF, request.bytes);
      expect(new TextDecoder().decode(request.bytes.subarray(0, TEST_TAP.length))).toBe(TEST_TAP);
      const want = IFF.IFF_TAP | IFF.IFF_NO_PI | IFF.IFF_VNET_HDR;
      expect(request.get("ifr_flags") & want).toBe(want);
      const size = new Int32Array(1);
      ioctlBuffer(tap.fd, TUN_IOCTL.TUNGETVNETHDRSZ, new Uint8Array(size.buffer));
      expect(size[0]).toBe(VNET_HDR_SIZE);
      expect(tap.offloadCapabilities).toBe(TAP_GUEST_OFFLOADS);
      expect(device.features & bit(F.GUEST_TSO4)).toBe(bit(F.GUEST_TSO4));
      // Empty and non-blocking: a read says EAGAIN rather than waiting.
      expect(tap.readPacket(new Uint8Array(NET_MAX_RX_PACKET))).toBe(-ERRNO.EAGAIN);
      // A single-queue tap takes one user at a time.
      expect(() => VirtioNet.open({ tap: TEST_TAP })).toThrow(`tap ${TEST_TAP}: TUNSETIFF failed: EBUSY`);
    } finally {
      device.close();
    }
    expect(existsSync(`/sys/class/net/${TEST_TAP}`)).toBe(false);
  });

  test("an ARP request sent by the guest is answered by the host through the tap", () => {
    let device: VirtioNet;
    try {
      device = VirtioNet.open({ tap: TEST_TAP, mac: "52:54:00:12:34:56" });
    } catch (error) {
      if (error instanceof TapError && /EPERM|EACCES/.test(error.message)) return;
      throw error;
    }
    try {
      // Link-local addresses, so nothing on the host's real networks is touched; the tap vanishes on close.
      const ip = (...args: string[]) => Bun.spawnSync(["ip", ...args]);
      if (ip("-V").exitCode !== 0) {
        console.warn("\n*** SKIPPING the ARP round trip: no `ip` command ***\n");
        return;
      }
      expect(ip("addr", "add", "169.254.213.1/24", "dev", TEST_TAP).exitCode).toBe(0);
      expect(ip("link", "set", TEST_TAP, "up").exitCode).toBe(0);

      const memory = new GuestMemoryView({ regions: [{ guestAddress: 0, size: MEMORY_SIZE, buffer: new SharedArrayBuffer(MEMORY_SIZE) }] });
      const rx = new FakeQueue();
      const tx = new FakeQueue();
      device.activate({ memory, ackedFeatures: device.features, queues: [rx, tx] });
      for (let i = 0; i < 16; i++) rx.chains.push({ head: i, buffers: [{ address: 0x10000 + i * 0x1000, length: 0x1000, writable: true }] });
      device.processQueue(0);

      const guestMac = parseMac("52:54:00:12:34:56");
      const arp = concat(
        new Uint8Array(6).fill(0xff), // broadcast
        guestMac,
        Uint8Array.of(0x08, 0x06), // ARP
        Uint8Array.of(0, 1, 0x08, 0, 6, 4, 0, 1), // Ethernet/IPv4, request
        guestMac,
        Uint8Array.of(169, 254, 213, 2),
        new Uint8Array(6),
        Uint8Array.of(169, 254, 213, 1),
      );
      memory.write(0x80000, concat(header(), arp));
      tx.chains.push({ head: 0, buffers: [{ address: 0x80000, length: VNET_HDR_SIZE + arp.byteLength, writable: false }] });
      device.processQueue(1);
      expect(device.stats).toMatchObject({ txPackets: 1, invalid: 0, txDropped: 0 });

      // Wait for the reply (other packets, IPv6 router solicitations say, may come first).
      const deadline = Date.now() + 5000;
      let reply: Uint8Array | undefined;
      while (!reply && Date.now() < deadline) {
        const polls = device.pollFds();
        const revents = poll(polls, 200);
        polls.forEach((p, i) => revents[i] && device.processBackend(p.fd, revents[i]!));
        for (const { head, written } of rx.used) {
          const packet = memory.read(0x10000 + head * 0x1000, written).subarray(VNET_HDR_SIZE);
          if (packet[12] === 0x08 && packet[13] === 0x06 && packet[21] === 2) reply = packet;
        }
      }
      expect(reply).toBeDefined();
      expect(reply!.subarray(0, 6)).toEqual(guestMac); // to us
      expect([...reply!.subarray(28, 32)]).toEqual([169, 254, 213, 1]); // "169.254.213.1 is at ..."
      expect(device.stats.rxPackets).toBeGreaterThanOrEqual(1);
    } finally {
      device.close();
    }
    expect(existsSync(`/sys/class/net/${TEST_TAP}`)).toBe(false);
  });
});

describe("virtio-net: rate limiting", () => {
  function limiter(config: ConstructorParameters<typeof RateLimiter>[0], clock: () => number, fd: number) {
    const armed: number[] = [];
    return { armed, limiter: new RateLimiter(config, { fd, arm: (ms) => void armed.push(ms), acknowledge: () => {}, close: () => {} }, clock) };
  }

  test("transmit: packets beyond the ops budget wait for the limiter's timer, then go in order", () => {
    let now = 0;
    const n = net();
    const tx = limiter({ ops: { size: 1, refillTimeMs: 100 } }, () => now, 501);
    n.device.setRateLimiters({ tx: tx.limiter });
    n.send(concat(header(), frame(60, 1)));
    n.send(concat(header(), frame(60, 2)));
    n.device.processQueue(1);
    expect(n.backend.written.length).toBe(1);
    expect(tx.armed).toEqual([100]);
    expect(n.device.pollFds()).toContainEqual({ fd: 501, events: POLLIN });
    n.device.processQueue(1); // a notification does not bypass the limiter
    expect(n.backend.written.length).toBe(1);
    now = 100;
    n.device.processBackend(501, POLLIN);
    expect(n.backend.written.length).toBe(2);
    expect(n.device.stats.throttled).toBe(1);
  });

  test("receive: after the bandwidth is spent the tap is not read (not polled) until the timer fires", () => {
    let now = 0;
    const n = net();
    const rx = limiter({ bandwidth: { size: 2000, refillTimeMs: 1000 } }, () => now, 502);
    n.device.setRateLimiters({ rx: rx.limiter });
    for (let i = 0; i < 3; i++) n.rxChain(1600);
    for (let i = 0; i < 3; i++) n.backend.inbound.push(concat(header(), frame(1500, i)));
    n.device.processQueue(0);
    // The first packet (1512 bytes with its header) fits; the second is read on credit; the third waits.
    expect(n.rx.used.length).toBe(2);
    expect(n.backend.inbound.length).toBe(1);
    const polls = n.device.pollFds();
    expect(polls).toContainEqual({ fd: 502, events: POLLIN });
    expect(polls.some((p) => p.fd === n.backend.fd && (p.events & POLLIN) !== 0)).toBe(false);
    now = 1000;
    n.device.processBackend(502, POLLIN);
    expect(n.rx.used.length).toBe(3);
  });
});

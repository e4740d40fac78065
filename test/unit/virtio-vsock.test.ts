/**
 * virtio-vsock over fake guest memory and fake queues, with real Unix sockets
 * in a temporary directory on the host side, driven synchronously: the test
 * plays the guest driver (chains on the tx queue, receive buffers on the rx
 * queue), the host programs (non-blocking sockets) and the I/O worker
 * (`pump`: poll the device's descriptors without waiting and hand it what is
 * ready).
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { existsSync, lstatSync, mkdtempSync, readdirSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_ID,
  featureBit,
  type DescriptorBuffer,
  type DescriptorChain,
  type QueueHandle,
} from "../../src/devices/virtio/device.ts";
import {
  VIRTIO_VSOCK_EVENT_TRANSPORT_RESET,
  VSOCK_HEADER_SIZE,
  VSOCK_QUEUE_SIZE,
  VirtioVsock,
  decodeVsockHeader,
  encodeVsockHeader,
} from "../../src/devices/virtio/vsock.ts";
import {
  VSOCK_CONNECTION_BUFFER,
  VSOCK_FIRST_HOST_PORT,
  VSOCK_MAX_CONNECTIONS,
  VSOCK_MAX_PAYLOAD,
  VSOCK_MAX_PENDING_CONTROL,
  VSOCK_OP,
  VSOCK_SHUTDOWN,
  type VsockHeader,
} from "../../src/devices/virtio/vsock-muxer.ts";
import { VsockConfigError, type VsockHostSockets } from "../../src/devices/virtio/vsock-unix.ts";
import { ERRNO } from "../../src/ffi/errno.ts";
import {
  SOCKET_CONSTANTS,
  accept4Raw,
  bindUnix,
  closeRaw,
  connectUnix,
  listen,
  readRaw,
  sendRaw,
  shutdownRaw,
  socket,
} from "../../src/ffi/socket-syscalls.ts";
import { POLLIN, POLLOUT, poll } from "../../src/ffi/syscalls.ts";
import { GuestMemoryView } from "../../src/memory/guest-memory.ts";
import { FakeQueue } from "./virtio-fake-queue.ts";

const GUEST_CID = 3;
const MEMORY_SIZE = 16 << 20;
const TX_AREA = 1 << 20;
const RX_BUFFER = VSOCK_HEADER_SIZE + 4096;
const { AF_UNIX, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC } = SOCKET_CONSTANTS;

const scratch = mkdtempSync(join(tmpdir(), "volt-vsock-"));
const descriptorsAtStart = readdirSync("/proc/self/fd").length;
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

const cleanups: (() => void)[] = [];
/** Host-program descriptors still open; closed after each test unless the test closed them. */
const hostFds = new Set<number>();
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
  for (const fd of hostFds) closeRaw(fd);
  hostFds.clear();
});


interface Packet {
  header: VsockHeader;
  payload: Uint8Array;
  written: number;
}

/** A guest header with the usual fields; tests override what they probe. */
function guestHeader(fields: Partial<VsockHeader>): VsockHeader {
  return {
    srcCid: BigInt(GUEST_CID),
    dstCid: 2n,
    srcPort: 5000,
    dstPort: 52,
    len: 0,
    type: 1,
    op: VSOCK_OP.RW,
    flags: 0,
    bufAlloc: VSOCK_CONNECTION_BUFFER,
    fwdCnt: 0,
    ...fields,
  };
}

let pathCount = 0;
function freshPath(): string {
  return join(scratch, `v${pathCount++}.sock`);
}

// ---- host programs: plain non-blocking sockets ----

function hostSocket(): number {
  const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC);
  hostFds.add(fd);
  return fd;
}

function hostConnect(path: string): number {
  const fd = hostSocket();
  connectUnix(fd, path);
  return fd;
}

function hostListen(path: string): number {
  const fd = hostSocket();
  bindUnix(fd, path);
  listen(fd, 16);
  return fd;
}

function hostAccept(listener: number): number {
  const fd = accept4Raw(listener, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) throw new Error(`accept: errno ${-fd}`);
  hostFds.add(fd);
  return fd;
}

function hostClose(fd: number): void {
  hostFds.delete(fd);
  closeRaw(fd);
}

function hostSend(fd: number, data: string | Uint8Array): void {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  expect(sendRaw(fd, bytes)).toBe(bytes.byteLength);
}

/** Everything readable now; `eof` when the other end finished. */
function hostRecv(fd: number): { bytes: Uint8Array; text: string; eof: boolean } {
  const parts: number[] = [];
  const buffer = new Uint8Array(65536);
  let eof = false;
  for (;;) {
    const n = readRaw(fd, buffer);
    if (n === -ERRNO.EAGAIN) break;
    if (n <= 0) {
      eof = true;
      break;
    }
    for (let i = 0; i < n; i++) parts.push(buffer[i]!);
  }
  const bytes = Uint8Array.from(parts);
  return { bytes, text: new TextDecoder().decode(bytes), eof };
}

// ---- the guest driver and the I/O worker ----

function rig(options: { sockets?: VsockHostSockets; path?: string } = {}) {
  const udsPath = options.path ?? freshPath();
  const device = options.sockets ? new VirtioVsock(GUEST_CID, options.sockets) : VirtioVsock.open({ guestCid: GUEST_CID, udsPath });
  cleanups.push(() => device.close());
  const memory = new GuestMemoryView({ regions: [{ guestAddress: 0, size: MEMORY_SIZE, buffer: new SharedArrayBuffer(MEMORY_SIZE) }] });
  const rx = new FakeQueue();
  const tx = new FakeQueue();
  const event = new FakeQueue();
  device.activate({ memory, ackedFeatures: device.features, queues: [rx, tx, event] });
  let head = 0;
  let rxNext = TX_AREA;
  const rxChains = new Map<number, DescriptorChain>();
  let taken = 0;

  /** Puts one packet on the tx queue (header and payload in separate descriptors, or as `split` says) and notifies. */
  const send = (fields: Partial<VsockHeader>, payload: Uint8Array | string = new Uint8Array(0), split?: number[]) => {
    const data = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
    const header = guestHeader({ len: data.byteLength, ...fields });
    const bytes = new Uint8Array(VSOCK_HEADER_SIZE + data.byteLength);
    encodeVsockHeader(header, bytes);
    bytes.set(data, VSOCK_HEADER_SIZE);
    memory.write(0, bytes);
    const sizes = split ?? (data.byteLength > 0 ? [VSOCK_HEADER_SIZE, data.byteLength] : [VSOCK_HEADER_SIZE]);
    const buffers: DescriptorBuffer[] = [];
    let at = 0;
    for (const size of sizes) {
      buffers.push({ address: at, length: size, writable: false });
      at += size;
    }
    tx.chains.push({ head: head++, buffers });
    device.processQueue(1);
  };
  /** Raw chain on the tx queue. */
  const sendChain = (buffers: DescriptorBuffer[]) => {
    tx.chains.push({ head: head++, buffers });
    device.processQueue(1);
  };
  /** Gives the device `count` receive buffers of `sizes` (one descriptor each) and notifies. */
  const giveRx = (count = 1, sizes: number[] = [RX_BUFFER]) => {
    for (let i = 0; i < count; i++) {
      const buffers = sizes.map((length) => {
        const buffer = { address: rxNext, length, writable: true };
        rxNext += (length + 15) & ~15;
        return buffer;
      });
      const chain = { head: head++, buffers };
      rxChains.set(chain.head, chain);
      rx.chains.push(chain);
    }
    if (rxNext > MEMORY_SIZE) throw new Error("test ran out of guest memory");
    device.processQueue(0);
  };
  /** Packets the device put on the rx queue since the last call. */
  const received = (): Packet[] => {
    const out: Packet[] = [];
    for (const { head: usedHead, written } of rx.used.slice(taken)) {
      const chain = rxChains.get(usedHead)!;
      const bytes = new Uint8Array(written);
      let done = 0;
      for (const buffer of chain.buffers) {
        const take = Math.min(buffer.length, written - done);
        bytes.set(memory.read(buffer.address, take), done);
        done += take;
      }
      out.push({
        header: written >= VSOCK_HEADER_SIZE ? decodeVsockHeader(bytes) : (undefined as unknown as VsockHeader),
        payload: bytes.subarray(VSOCK_HEADER_SIZE),
        written,
      });
    }
    taken = rx.used.length;
    return out;
  };
  /** The I/O worker's loop without waiting: poll the device's descriptors and hand it what is ready, until nothing is. */
  const pump = () => {
    for (let round = 0; round < 200; round++) {
      const entries = device.pollFds();
      if (entries.length === 0) return;
      const revents = poll(entries, 0);
      let any = false;
      revents.forEach((ready, i) => {
        if (!ready) return;
        any = true;
        device.processBackend(entries[i]!.fd, ready);
      });
      if (!any) return;
    }
    throw new Error("pump: the device stayed ready for 200 rounds (busy loop)");
  };
  /** Host connects to uds_path and asks for `port`; the guest accepts with `bufAlloc`. */
  const hostInitiated = (port: number, bufAlloc = VSOCK_CONNECTION_BUFFER) => {
    const host = hostConnect(udsPath);
    hostSend(host, `CONNECT ${port}\n`);
    pump();
    giveRx();
    const [request] = received();
    expect(request?.header.op).toBe(VSOCK_OP.REQUEST);
    const localPort = request!.header.srcPort;
    send({ op: VSOCK_OP.RESPONSE, srcPort: port, dstPort: localPort, bufAlloc });
    expect(hostRecv(host).text).toBe(`OK ${localPort}\n`);
    return { host, localPort, guestPort: port };
  };
  /** A host program listens at uds_path_<hostPort>; the guest connects from guestPort. */
  const guestInitiated = (hostPort: number, guestPort: number, bufAlloc = VSOCK_CONNECTION_BUFFER) => {
    const listener = hostListen(`${udsPath}_${hostPort}`);
    send({ op: VSOCK_OP.REQUEST, srcPort: guestPort, dstPort: hostPort, bufAlloc });
    giveRx();
    const [response] = received();
    expect(response?.header.op).toBe(VSOCK_OP.RESPONSE);
    return { host: hostAccept(listener), listener };
  };
  return { device, memory, rx, tx, event, udsPath, send, sendChain, giveRx, received, pump, hostInitiated, guestInitiated };
}

const ops = (packets: Packet[]) => packets.map((p) => p.header.op);
const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
}

describe("virtio-vsock device", () => {
  test("is device 19 with rx, tx and event queues of 256, EVENT_IDX only, and guest_cid in its config", () => {
    const { device } = rig();
    expect(device.deviceType).toBe(VIRTIO_ID.VSOCK);
    expect(device.queueMaxSizes).toEqual([VSOCK_QUEUE_SIZE, VSOCK_QUEUE_SIZE, VSOCK_QUEUE_SIZE]);
    expect(device.features).toBe(featureBit(VIRTIO_F_RING_EVENT_IDX));
    expect(Array.from(device.config)).toEqual([3, 0, 0, 0, 0, 0, 0, 0]);
  });

  test("open refuses bad CIDs and unusable paths with errors naming them", () => {
    const path = freshPath();
    for (const cid of [0, 1, 2, 2.5, 0xffff_ffff]) {
      expect(() => VirtioVsock.open({ guestCid: cid, udsPath: path })).toThrow(new RegExp(`guest CID ${cid}`));
    }
    expect(existsSync(path)).toBe(false);

    const missing = join(scratch, "no-such-dir", "v.sock");
    expect(() => VirtioVsock.open({ guestCid: GUEST_CID, udsPath: missing })).toThrow(VsockConfigError);
    expect(() => VirtioVsock.open({ guestCid: GUEST_CID, udsPath: missing })).toThrow(missing);

    const file = freshPath();
    writeFileSync(file, "keep me");
    expect(() => VirtioVsock.open({ guestCid: GUEST_CID, udsPath: file })).toThrow(`vsock uds_path ${file}: exists and is not a socket`);
    expect(lstatSync(file).isFile()).toBe(true);

    const live = freshPath();
    hostListen(live);
    expect(() => VirtioVsock.open({ guestCid: GUEST_CID, udsPath: live })).toThrow(/is in use: another program is listening/);

    const long = join(scratch, "x".repeat(120));
    expect(() => VirtioVsock.open({ guestCid: GUEST_CID, udsPath: long })).toThrow(/at most 107/);
  });

  test("a stale socket file (nobody listening) is replaced; close removes the socket file", () => {
    const path = freshPath();
    const old = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
    bindUnix(old, path);
    listen(old, 1);
    closeRaw(old);
    expect(lstatSync(path).isSocket()).toBe(true);
    const device = VirtioVsock.open({ guestCid: GUEST_CID, udsPath: path });
    hostConnect(path); // the new listener answers
    device.close();
    expect(existsSync(path)).toBe(false);
    device.close(); // idempotent
  });

  test("close leaves a file that replaced Volt's socket alone", () => {
    const path = freshPath();
    const device = VirtioVsock.open({ guestCid: GUEST_CID, udsPath: path });
    unlinkSync(path);
    writeFileSync(path, "someone else's");
    device.close();
    expect(lstatSync(path).isFile()).toBe(true);
  });
});

describe("host-initiated connections (CONNECT <port>)", () => {
  test("CONNECT → REQUEST to the guest port → RESPONSE → OK <port> → bytes both ways → guest close → RST", () => {
    const r = rig();
    const host = hostConnect(r.udsPath);
    hostSend(host, "CONNECT 52\n");
    r.pump();
    expect(r.device.muxer.connectionCount).toBe(1);
    r.giveRx();
    const [request] = r.received();
    expect(request!.header).toEqual({
      srcCid: 2n,
      dstCid: 3n,
      srcPort: VSOCK_FIRST_HOST_PORT,
      dstPort: 52,
      len: 0,
      type: 1,
      op: VSOCK_OP.REQUEST,
      flags: 0,
      bufAlloc: VSOCK_CONNECTION_BUFFER,
      fwdCnt: 0,
    });
    expect(request!.written).toBe(VSOCK_HEADER_SIZE);
    expect(r.rx.notifications).toBeGreaterThan(0);
    expect(hostRecv(host).bytes.byteLength).toBe(0); // no OK before the guest accepts

    r.send({ op: VSOCK_OP.RESPONSE, srcPort: 52, dstPort: VSOCK_FIRST_HOST_PORT });
    expect(hostRecv(host).text).toBe(`OK ${VSOCK_FIRST_HOST_PORT}\n`);

    hostSend(host, "hello from the host");
    r.pump();
    r.giveRx();
    const [data] = r.received();
    expect(data!.header.op).toBe(VSOCK_OP.RW);
    expect(data!.header.srcPort).toBe(VSOCK_FIRST_HOST_PORT);
    expect(data!.header.dstPort).toBe(52);
    expect(text(data!.payload)).toBe("hello from the host");

    r.send({ op: VSOCK_OP.RW, srcPort: 52, dstPort: VSOCK_FIRST_HOST_PORT }, "hello from the guest");
    expect(hostRecv(host).text).toBe("hello from the guest");
    expect(r.tx.used.every((u) => u.written === 0)).toBe(true);

    // The guest closes: the host sees end of stream, the guest gets its RST.
    r.send({ op: VSOCK_OP.SHUTDOWN, srcPort: 52, dstPort: VSOCK_FIRST_HOST_PORT, flags: VSOCK_SHUTDOWN.RCV | VSOCK_SHUTDOWN.SEND });
    expect(hostRecv(host).eof).toBe(true);
    r.giveRx();
    const [rst] = r.received();
    expect(rst!.header.op).toBe(VSOCK_OP.RST);
    expect(r.device.muxer.connectionCount).toBe(0);
    expect(r.device.stats).toMatchObject({ hostConnections: 1, txBytes: 20, rxBytes: 19, resetsSent: 1 });
  });

  test("bytes the host sends right after the CONNECT line reach the guest, not the parser", () => {
    const r = rig();
    const host = hostConnect(r.udsPath);
    hostSend(host, "CONNECT 7\nearly bytes");
    r.pump();
    r.giveRx();
    const [request] = r.received();
    r.send({ op: VSOCK_OP.RESPONSE, srcPort: 7, dstPort: request!.header.srcPort });
    expect(hostRecv(host).text).toBe(`OK ${request!.header.srcPort}\n`);
    r.pump();
    r.giveRx();
    expect(text(r.received()[0]!.payload)).toBe("early bytes");
  });

  test("each host connection gets its own local port", () => {
    const r = rig();
    const a = r.hostInitiated(52);
    const b = r.hostInitiated(52);
    expect(a.localPort).toBe(VSOCK_FIRST_HOST_PORT);
    expect(b.localPort).toBe(VSOCK_FIRST_HOST_PORT + 1);
    r.send({ op: VSOCK_OP.RW, srcPort: 52, dstPort: b.localPort }, "to b");
    expect(hostRecv(b.host).text).toBe("to b");
    expect(hostRecv(a.host).text).toBe("");
  });

  test("the guest refusing (RST) closes the host socket", () => {
    const r = rig();
    const host = hostConnect(r.udsPath);
    hostSend(host, "CONNECT 99\n");
    r.pump();
    r.giveRx();
    const [request] = r.received();
    r.send({ op: VSOCK_OP.RST, srcPort: 99, dstPort: request!.header.srcPort });
    expect(hostRecv(host)).toMatchObject({ text: "", eof: true });
    expect(r.device.muxer.connectionCount).toBe(0);
    expect(r.device.stats.hostConnectionsRefused).toBe(1);
  });

  test("a line that is not CONNECT <port> closes the host socket", () => {
    const r = rig();
    const bad = ["HELLO\n", "CONNECT\n", "CONNECT -1\n", "CONNECT 4294967296\n", "CONNECT 1 2\n", "x".repeat(40)];
    const hosts = bad.map((line) => {
      const host = hostConnect(r.udsPath);
      hostSend(host, line);
      return host;
    });
    r.pump();
    for (const host of hosts) expect(hostRecv(host).eof).toBe(true);
    expect(r.device.stats.badConnectLines).toBe(bad.length);
    expect(r.device.muxer.connectionCount).toBe(0);
    expect(r.device.muxer.handshakeCount).toBe(0);
  });

  test("a CONNECT line may arrive in pieces", () => {
    const r = rig();
    const host = hostConnect(r.udsPath);
    hostSend(host, "CONN");
    r.pump();
    expect(r.device.muxer.handshakeCount).toBe(1);
    hostSend(host, "ECT 4294967295\n");
    r.pump();
    r.giveRx();
    expect(r.received()[0]!.header).toMatchObject({ op: VSOCK_OP.REQUEST, dstPort: 0xffff_ffff });
  });

  test("the host closing makes a SHUTDOWN(SEND); the guest's next write to the closed socket resets", () => {
    const r = rig();
    const { host, localPort } = r.hostInitiated(52);
    hostSend(host, "last words");
    hostClose(host);
    r.pump();
    r.giveRx(2);
    const packets = r.received();
    expect(ops(packets)).toEqual([VSOCK_OP.RW, VSOCK_OP.SHUTDOWN]);
    expect(text(packets[0]!.payload)).toBe("last words");
    expect(packets[1]!.header.flags).toBe(VSOCK_SHUTDOWN.SEND);
    r.send({ op: VSOCK_OP.RW, srcPort: 52, dstPort: localPort }, "anyone there?");
    r.giveRx();
    expect(ops(r.received())).toEqual([VSOCK_OP.RST]);
    expect(r.device.stats.hostErrors).toBe(1);
    expect(r.device.muxer.connectionCount).toBe(0);
  });

  test("the listener is only served while the driver runs; reset closes every connection", () => {
    const r = rig();
    const { host } = r.hostInitiated(52);
    r.device.reset();
    expect(hostRecv(host).eof).toBe(true);
    expect(r.device.muxer.connectionCount).toBe(0);
    const waiting = hostConnect(r.udsPath);
    hostSend(waiting, "CONNECT 52\n");
    r.pump();
    expect(r.device.muxer.handshakeCount).toBe(0); // left in the backlog
    r.device.activate({ memory: r.memory, ackedFeatures: r.device.features, queues: [r.rx, r.tx, r.event] });
    r.pump();
    r.giveRx();
    expect(r.received().map((p) => p.header.op)).toEqual([VSOCK_OP.REQUEST]);
  });
});

describe("guest-initiated connections (uds_path_<port>)", () => {
  test("REQUEST to CID 2 port P reaches the listener at uds_path_P; RESPONSE; bytes both ways", () => {
    const r = rig();
    const listener = hostListen(`${r.udsPath}_1234`);
    r.send({ op: VSOCK_OP.REQUEST, srcPort: 40000, dstPort: 1234 });
    r.giveRx();
    const [response] = r.received();
    expect(response!.header).toMatchObject({ srcCid: 2n, dstCid: 3n, srcPort: 1234, dstPort: 40000, op: VSOCK_OP.RESPONSE, type: 1 });
    const host = hostAccept(listener);

    r.send({ op: VSOCK_OP.RW, srcPort: 40000, dstPort: 1234 }, "ping");
    expect(hostRecv(host).text).toBe("ping");
    hostSend(host, "pong");
    r.pump();
    r.giveRx();
    const [pong] = r.received();
    expect(pong!.header).toMatchObject({ op: VSOCK_OP.RW, srcPort: 1234, dstPort: 40000, len: 4 });
    expect(text(pong!.payload)).toBe("pong");
    expect(r.device.stats.guestConnections).toBe(1);
  });

  test("with nothing listening at uds_path_P the guest gets RST", () => {
    const r = rig();
    r.send({ op: VSOCK_OP.REQUEST, srcPort: 40000, dstPort: 4321 });
    r.giveRx();
    const [rst] = r.received();
    expect(rst!.header).toMatchObject({ op: VSOCK_OP.RST, srcPort: 4321, dstPort: 40000, srcCid: 2n, dstCid: 3n });
    expect(r.device.stats.guestConnectionsRefused).toBe(1);
    expect(r.device.lastHostError).toContain(`${r.udsPath}_4321`);
    expect(r.device.muxer.connectionCount).toBe(0);
  });

  test("guest SHUTDOWN(SEND) gives the host end of stream after the bytes, and the host can still answer", () => {
    const r = rig();
    const { host } = r.guestInitiated(80, 41000);
    r.send({ op: VSOCK_OP.RW, srcPort: 41000, dstPort: 80 }, "GET /");
    r.send({ op: VSOCK_OP.SHUTDOWN, srcPort: 41000, dstPort: 80, flags: VSOCK_SHUTDOWN.SEND });
    expect(hostRecv(host)).toMatchObject({ text: "GET /", eof: true });
    hostSend(host, "200 OK");
    shutdownRaw(host, SOCKET_CONSTANTS.SHUT_WR);
    r.pump();
    r.giveRx(2);
    const packets = r.received();
    expect(ops(packets)).toEqual([VSOCK_OP.RW, VSOCK_OP.SHUTDOWN]);
    expect(text(packets[0]!.payload)).toBe("200 OK");
    r.send({ op: VSOCK_OP.SHUTDOWN, srcPort: 41000, dstPort: 80, flags: VSOCK_SHUTDOWN.RCV | VSOCK_SHUTDOWN.SEND });
    r.giveRx();
    expect(ops(r.received())).toEqual([VSOCK_OP.RST]);
    expect(r.device.muxer.connectionCount).toBe(0);
  });

  test("header and payload may be split across descriptors anywhere, both ways", () => {
    const r = rig();
    const { host } = r.guestInitiated(80, 41000);
    const payload = pattern(3000, 1);
    // Header in two pieces, then payload in three.
    r.send({ op: VSOCK_OP.RW, srcPort: 41000, dstPort: 80 }, payload, [20, 24 + 100, 1000, 1900]);
    expect(hostRecv(host).bytes).toEqual(payload);

    // Old Linux drivers: header and payload in separate receive descriptors.
    hostSend(host, pattern(4096, 2));
    r.pump();
    r.giveRx(1, [VSOCK_HEADER_SIZE, 4096]);
    const [packet] = r.received();
    expect(packet!.header.len).toBe(4096);
    expect(packet!.payload).toEqual(pattern(4096, 2));
  });
});

describe("credit", () => {
  test("host bytes beyond the guest's credit wait until CREDIT_UPDATE (one CREDIT_REQUEST meanwhile)", () => {
    const r = rig();
    const { host, localPort } = r.hostInitiated(52, 10);
    hostSend(host, "abcdefghijklmnopqrstuvwxy");
    r.pump();
    r.giveRx(4);
    let packets = r.received();
    expect(ops(packets)).toEqual([VSOCK_OP.RW, VSOCK_OP.CREDIT_REQUEST]);
    expect(text(packets[0]!.payload)).toBe("abcdefghij");
    // Nothing more however often the worker looks: the socket is not even polled without credit.
    r.pump();
    r.giveRx();
    expect(r.received()).toEqual([]);
    expect(r.device.pollFds().filter((p) => p.events & POLLIN)).toHaveLength(1); // the listener only

    r.send({ op: VSOCK_OP.CREDIT_UPDATE, srcPort: 52, dstPort: localPort, bufAlloc: 10, fwdCnt: 10 });
    packets = r.received();
    expect(ops(packets)).toEqual([VSOCK_OP.RW, VSOCK_OP.CREDIT_REQUEST]);
    expect(text(packets[0]!.payload)).toBe("klmnopqrst");

    // A bigger buffer: the rest, and nothing asked for.
    r.send({ op: VSOCK_OP.CREDIT_UPDATE, srcPort: 52, dstPort: localPort, bufAlloc: 1000, fwdCnt: 20 });
    r.giveRx(2);
    packets = r.received();
    expect(ops(packets)).toEqual([VSOCK_OP.RW]);
    expect(text(packets[0]!.payload)).toBe("uvwxy");
  });

  test("CREDIT_REQUEST is answered with CREDIT_UPDATE carrying Volt's buf_alloc and fwd_cnt", () => {
    const r = rig();
    const { host, localPort } = r.hostInitiated(52);
    r.send({ op: VSOCK_OP.RW, srcPort: 52, dstPort: localPort }, "12345");
    hostRecv(host);
    r.send({ op: VSOCK_OP.CREDIT_REQUEST, srcPort: 52, dstPort: localPort });
    r.giveRx();
    expect(r.received()[0]!.header).toMatchObject({ op: VSOCK_OP.CREDIT_UPDATE, bufAlloc: VSOCK_CONNECTION_BUFFER, fwdCnt: 5 });
  });

  test("a host that stops reading: Volt holds at most buf_alloc, polls POLLOUT, and the credit comes back as the host reads", () => {
    const r = rig();
    const { host } = r.guestInitiated(80, 41000);
    let sent = 0;
    let heardFwd = 0;
    let seed = 0;
    const expected: Uint8Array[] = [];
    // A well-behaved guest: send while the credit it last heard allows.
    for (let i = 0; i < 200; i++) {
      const credit = VSOCK_CONNECTION_BUFFER - (sent - heardFwd);
      if (credit === 0) break;
      const chunk = pattern(Math.min(VSOCK_MAX_PAYLOAD, credit), seed++);
      expected.push(chunk);
      r.send({ op: VSOCK_OP.RW, srcPort: 41000, dstPort: 80 }, chunk);
      sent += chunk.byteLength;
      r.giveRx(2);
      for (const p of r.received()) heardFwd = p.header.fwdCnt;
    }
    const held = r.device.muxer.bufferedBytes(80, 41000)!;
    expect(held).toBeGreaterThan(0);
    expect(held).toBeLessThanOrEqual(VSOCK_CONNECTION_BUFFER);
    expect(r.device.pollFds().some((p) => p.events & POLLOUT)).toBe(true);
    expect(r.device.stats.creditViolations).toBe(0);

    // The host drains its socket; Volt refills it from what it holds and tells the guest.
    const got: number[] = [];
    for (let i = 0; i < 100 && got.length < sent; i++) {
      for (const byte of hostRecv(host).bytes) got.push(byte);
      r.pump();
    }
    const all = new Uint8Array(sent);
    let at = 0;
    for (const chunk of expected) {
      all.set(chunk, at);
      at += chunk.byteLength;
    }
    expect(Uint8Array.from(got)).toEqual(all);
    expect(r.device.muxer.bufferedBytes(80, 41000)).toBe(0);
    expect(r.device.pollFds().some((p) => p.events & POLLOUT)).toBe(false);
    // Updates come when the guest's view of the credit runs low, so it was told enough to keep sending...
    r.giveRx(4);
    const updates = r.received();
    expect(updates.length).toBeGreaterThan(0);
    for (const p of updates) heardFwd = p.header.fwdCnt;
    expect(VSOCK_CONNECTION_BUFFER - (sent - heardFwd)).toBeGreaterThanOrEqual(VSOCK_MAX_PAYLOAD);
    // ...and asking gives the exact count.
    r.send({ op: VSOCK_OP.CREDIT_REQUEST, srcPort: 41000, dstPort: 80 });
    expect(r.received()[0]!.header).toMatchObject({ op: VSOCK_OP.CREDIT_UPDATE, fwdCnt: sent });
  });

  test("a guest sending beyond its credit gets the connection reset, and Volt never holds more than buf_alloc", () => {
    const r = rig();
    const { host } = r.guestInitiated(80, 41000);
    let maxHeld = 0;
    for (let i = 0; i < 40 && r.device.muxer.connectionCount > 0; i++) {
      r.send({ op: VSOCK_OP.RW, srcPort: 41000, dstPort: 80 }, pattern(VSOCK_MAX_PAYLOAD, i));
      maxHeld = Math.max(maxHeld, r.device.muxer.bufferedBytes(80, 41000) ?? 0);
    }
    expect(r.device.muxer.connectionCount).toBe(0);
    expect(maxHeld).toBeLessThanOrEqual(VSOCK_CONNECTION_BUFFER);
    expect(r.device.stats.creditViolations).toBe(1);
    r.giveRx(4);
    expect(ops(r.received()).filter((op) => op === VSOCK_OP.RST)).toHaveLength(1);
    // The host gets what was written before the reset, then end of stream.
    for (let i = 0; i < 20 && !hostRecv(host).eof; i++);
    expect(hostRecv(host).eof).toBe(true);
  });
});

describe("hostile guests", () => {
  test("bad CIDs, types, ops and lengths are answered with RST and counted, never thrown", () => {
    const r = rig();
    const cases: [Partial<VsockHeader>, string][] = [
      [{ srcCid: 4n, op: VSOCK_OP.REQUEST }, "badAddress"],
      [{ dstCid: 7n, op: VSOCK_OP.REQUEST }, "badAddress"],
      [{ dstCid: 2n + (1n << 32n), op: VSOCK_OP.REQUEST }, "badAddress"],
      [{ type: 2, op: VSOCK_OP.REQUEST }, "badType"],
      [{ op: 0 }, "unknownOps"],
      [{ op: 9 }, "unknownOps"],
      [{ op: 0xffff }, "unknownOps"],
      [{ op: VSOCK_OP.RW }, "protocolErrors"], // no such connection
      [{ op: VSOCK_OP.RESPONSE }, "protocolErrors"],
      [{ op: VSOCK_OP.SHUTDOWN }, "protocolErrors"],
      [{ op: VSOCK_OP.CREDIT_UPDATE }, "protocolErrors"],
      [{ op: VSOCK_OP.CREDIT_REQUEST }, "protocolErrors"],
    ];
    cases.forEach(([fields], i) => expect(() => r.send({ srcPort: 6000 + i, dstPort: 700 + i, ...fields })).not.toThrow());
    r.giveRx(cases.length + 1);
    const packets = r.received();
    expect(packets).toHaveLength(cases.length);
    packets.forEach((p, i) =>
      expect(p.header).toMatchObject({ op: VSOCK_OP.RST, srcCid: 2n, dstCid: 3n, srcPort: 700 + i, dstPort: 6000 + i }),
    );
    expect(r.device.stats).toMatchObject({ badAddress: 3, badType: 1, unknownOps: 3, protocolErrors: 5, resetsSent: cases.length });
  });

  test("len beyond the chain or above 64 KiB: RST; a chain shorter than a header: dropped; an RST is never answered", () => {
    const r = rig();
    const { host } = r.guestInitiated(80, 41000);
    // len says 100, the chain has 10: the connection it names is reset, nothing reaches the host.
    const header = new Uint8Array(VSOCK_HEADER_SIZE + 10);
    encodeVsockHeader(guestHeader({ srcPort: 41000, dstPort: 80, op: VSOCK_OP.RW, len: 100 }), header);
    r.memory.write(0x2000, header);
    r.sendChain([{ address: 0x2000, length: header.byteLength, writable: false }]);
    expect(hostRecv(host)).toMatchObject({ text: "", eof: true });

    // len above 64 KiB although the chain has it.
    const big = VSOCK_MAX_PAYLOAD + 1;
    encodeVsockHeader(guestHeader({ srcPort: 6001, dstPort: 81, op: VSOCK_OP.RW, len: big }), header);
    r.memory.write(0x2000, header.subarray(0, VSOCK_HEADER_SIZE));
    r.sendChain([
      { address: 0x2000, length: VSOCK_HEADER_SIZE, writable: false },
      { address: 0x10_0000, length: big, writable: false },
    ]);
    // len near 2^32: no overflow anywhere.
    encodeVsockHeader(guestHeader({ srcPort: 6002, dstPort: 82, op: VSOCK_OP.RW, len: 0xffff_ffff }), header);
    r.memory.write(0x2000, header.subarray(0, VSOCK_HEADER_SIZE));
    r.sendChain([{ address: 0x2000, length: VSOCK_HEADER_SIZE, writable: false }]);

    // Too short for a header, writable-only, empty: dropped without a reply.
    r.sendChain([{ address: 0x2000, length: 43, writable: false }]);
    r.sendChain([{ address: 0x2000, length: 64, writable: true }]);
    r.sendChain([]);
    // An invalid RST gets no RST back.
    r.send({ op: VSOCK_OP.RST, srcCid: 9n, srcPort: 6003, dstPort: 83 });
    r.send({ op: VSOCK_OP.RST, srcPort: 6004, dstPort: 84 });

    r.giveRx(10);
    const packets = r.received();
    expect(packets.map((p) => [p.header.op, p.header.dstPort])).toEqual([
      [VSOCK_OP.RST, 41000],
      [VSOCK_OP.RST, 6001],
      [VSOCK_OP.RST, 6002],
    ]);
    expect(r.device.stats.malformed).toBe(6);
    expect(r.tx.used.every((u) => u.written === 0)).toBe(true);
    expect(r.device.stats.internalErrors).toBe(0);
  });

  test("RESPONSE or data for a connection still being requested, and a second REQUEST, reset it", () => {
    const r = rig();
    const host = hostConnect(r.udsPath);
    hostSend(host, "CONNECT 52\n");
    r.pump();
    r.giveRx();
    const localPort = r.received()[0]!.header.srcPort;
    r.send({ op: VSOCK_OP.RW, srcPort: 52, dstPort: localPort }, "too soon");
    expect(hostRecv(host)).toMatchObject({ text: "", eof: true });
    r.giveRx();
    expect(ops(r.received())).toEqual([VSOCK_OP.RST]);

    const { host: other } = r.guestInitiated(80, 41000);
    r.send({ op: VSOCK_OP.REQUEST, srcPort: 41000, dstPort: 80 });
    expect(hostRecv(other).eof).toBe(true);
    r.giveRx(2);
    expect(ops(r.received())).toEqual([VSOCK_OP.RST]);
    expect(r.device.stats.protocolErrors).toBe(2);
    expect(r.device.muxer.connectionCount).toBe(0);
  });

  test("receive buffers too small for a header are returned empty", () => {
    const r = rig();
    r.send({ op: VSOCK_OP.REQUEST, srcPort: 40000, dstPort: 4321 }); // refused: an RST waits
    r.giveRx(1, [20]);
    r.giveRx(1, [10, 10]);
    expect(r.received().map((p) => p.written)).toEqual([0, 0]);
    expect(r.device.stats.rxBuffersTooSmall).toBe(2);
    r.giveRx(1, [VSOCK_HEADER_SIZE]); // a header fits: fine for an RST
    expect(ops(r.received())).toEqual([VSOCK_OP.RST]);
  });

  test("the connection table is bounded (fake host sockets), and so is the queue of pending RSTs", () => {
    const sockets = new FakeSockets();
    const r = rig({ sockets });
    for (let i = 0; i < VSOCK_MAX_CONNECTIONS; i++) r.send({ op: VSOCK_OP.REQUEST, srcPort: 10000 + i, dstPort: 80 });
    expect(r.device.muxer.connectionCount).toBe(VSOCK_MAX_CONNECTIONS);
    r.send({ op: VSOCK_OP.REQUEST, srcPort: 9999, dstPort: 80 });
    expect(r.device.stats.tableFull).toBe(1);
    expect(sockets.connects).toBe(VSOCK_MAX_CONNECTIONS);
    r.giveRx(VSOCK_MAX_CONNECTIONS + 1, [VSOCK_HEADER_SIZE + 16]);
    const packets = r.received();
    expect(packets).toHaveLength(VSOCK_MAX_CONNECTIONS + 1);
    expect(packets[0]!.header).toMatchObject({ op: VSOCK_OP.RST, dstPort: 9999 });
    expect(packets.slice(1).every((p) => p.header.op === VSOCK_OP.RESPONSE)).toBe(true);

    // A host connection while full is accepted and closed at once.
    sockets.waiting.push(777);
    r.device.processBackend(sockets.listenerFd, POLLIN);
    expect(sockets.closed).toContain(777);
    expect(r.device.stats.tableFull).toBe(2);

    // Garbage with no receive buffers: the RSTs owed are capped.
    const extra = 100;
    for (let i = 0; i < VSOCK_MAX_PENDING_CONTROL + extra; i++) r.send({ op: 42, srcPort: i, dstPort: 1 });
    expect(r.device.stats.controlDropped).toBe(extra);
    r.device.close();
    expect(sockets.closed.length).toBe(VSOCK_MAX_CONNECTIONS + 1);
    expect(sockets.listenerClosed).toBe(true);
  });

  test("a host socket that looked readable but is not keeps the receive buffer for the next packet", () => {
    const sockets = new FakeSockets();
    const r = rig({ sockets });
    r.send({ op: VSOCK_OP.REQUEST, srcPort: 10000, dstPort: 80 });
    r.giveRx(1);
    expect(ops(r.received())).toEqual([VSOCK_OP.RESPONSE]);
    const fd = sockets.lastConnected;
    r.giveRx(1);
    r.device.processBackend(fd, POLLIN); // read says EAGAIN
    expect(r.rx.used).toHaveLength(1);
    sockets.incoming.set(fd, new TextEncoder().encode("late"));
    r.device.processBackend(fd, POLLIN);
    const [packet] = r.received();
    expect(text(packet!.payload)).toBe("late");
  });
});

describe("events and teardown", () => {
  test("transportReset puts VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue and drops the connections", () => {
    const r = rig();
    const { host } = r.hostInitiated(52);
    expect(r.device.transportReset()).toBe(false); // no event buffer yet
    r.event.chains.push({ head: 500, buffers: [{ address: 0x3000, length: 8, writable: true }] });
    r.memory.writeU32(0x3000, 0xdead);
    expect(r.device.transportReset()).toBe(true);
    expect(r.event.used).toEqual([{ head: 500, written: 4 }]);
    expect(r.memory.readU32(0x3000)).toBe(VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
    expect(hostRecv(host).eof).toBe(true);
    expect(r.device.muxer.connectionCount).toBe(0);
    // The listener still works.
    r.hostInitiated(53);
  });

  test("close closes every host socket and removes the listening socket", () => {
    const r = rig();
    const a = r.hostInitiated(52);
    const b = r.guestInitiated(80, 41000);
    const pending = hostConnect(r.udsPath);
    hostSend(pending, "CONN");
    r.pump();
    r.device.close();
    expect(hostRecv(a.host).eof).toBe(true);
    expect(hostRecv(b.host).eof).toBe(true);
    expect(hostRecv(pending).eof).toBe(true);
    expect(existsSync(r.udsPath)).toBe(false);
    expect(r.device.pollFds()).toEqual([]);
  });
});

/** Host sockets without a kernel: connects always succeed, writes always fit, reads have what `incoming` holds. */
class FakeSockets implements VsockHostSockets {
  readonly listenerFd = 1000;
  readonly path = "/fake/v.sock";
  readonly waiting: number[] = [];
  readonly closed: number[] = [];
  readonly incoming = new Map<number, Uint8Array>();
  connects = 0;
  lastConnected = -1;
  listenerClosed = false;
  private nextFd = 2000;

  accept(): number {
    return this.waiting.shift() ?? -ERRNO.EAGAIN;
  }
  connect(): number {
    this.connects++;
    this.lastConnected = this.nextFd++;
    return this.lastConnected;
  }
  read(fd: number, into: Uint8Array): number {
    const data = this.incoming.get(fd);
    if (!data) return -ERRNO.EAGAIN;
    const n = Math.min(into.byteLength, data.byteLength);
    into.set(data.subarray(0, n));
    if (n === data.byteLength) this.incoming.delete(fd);
    else this.incoming.set(fd, data.subarray(n));
    return n;
  }
  write(_fd: number, data: Uint8Array): number {
    return data.byteLength;
  }
  shutdownWrite(): void {}
  close(fd: number): void {
    this.closed.push(fd);
  }
  closeListener(): void {
    this.listenerClosed = true;
  }
}

describe("descriptors", () => {
  test("every socket opened by the tests above was closed (by the device or the test)", () => {
    expect(readdirSync("/proc/self/fd").length).toBe(descriptorsAtStart);
  });
});

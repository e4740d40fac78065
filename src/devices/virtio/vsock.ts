/**
 * virtio-vsock (virtio 1.2, section 5.10): stream sockets between the guest
 * (AF_VSOCK, its CID >= 3) and programs on the host (CID 2), with
 * Firecracker's host side: the host end of every connection is an AF_UNIX
 * stream socket.
 * - Host-initiated: Volt listens at `uds_path`; a host program connects,
 *   writes "CONNECT <port>\n", and Volt asks the guest (REQUEST) for a
 *   connection to <port>. When the guest accepts (RESPONSE), Volt writes
 *   "OK <host port>\n" and the socket carries the stream; when it refuses
 *   (RST), Volt closes the socket.
 * - Guest-initiated: a guest connect to CID 2, port P makes Volt connect to
 *   `${uds_path}_${P}`; when nothing listens there the guest gets RST.
 *
 * Queues: rx (0) carries packets to the guest, tx (1) packets from it, event
 * (2) only VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (`transportReset`). Stream
 * state and credit live in vsock-muxer.ts, the sockets in vsock-unix.ts.
 *
 * Decisions:
 * - Packet framing follows the chain's bytes, not its descriptors (as in
 *   block.ts): the 44-byte header is the first 44 readable bytes of a tx
 *   chain, or the first 44 writable bytes of an rx chain, across descriptor
 *   boundaries (older Linux puts header and payload in separate descriptors,
 *   newer in one).
 * - A tx chain shorter than a header is returned and counted (there are no
 *   ports to answer); `len` is checked against the chain's readable bytes and
 *   64 KiB before any byte is used. Device-writable buffers in a tx chain
 *   are ignored. Tx chains are always returned with used length 0.
 * - Host bytes are read straight into the first writable buffer after the
 *   header (capped at 64 KiB and the guest's credit), so they are never
 *   copied or held by Volt. An rx chain with no room for a header is returned
 *   empty, which Linux discards.
 * - The rx queue has no way to hand a chain back, so when Volt takes one and
 *   then finds nothing to send (a socket that looked readable said EAGAIN),
 *   it keeps that one chain for the next packet.
 * - Only VIRTIO_F_RING_EVENT_IDX is offered: no SEQPACKET (Firecracker does
 *   not offer it either), no DGRAM (not in the spec for virtio).
 * - processQueue and processBackend never throw for anything the guest or a
 *   host program did; only `pop()` (a broken ring) propagates.
 */
import { defineStruct } from "../../kvm/struct.ts";
import type { GuestMemoryView } from "../../memory/guest-memory.ts";
import {
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_ID,
  featureBit,
  type ActivationContext,
  type BackendPoll,
  type DescriptorBuffer,
  type DescriptorChain,
  type QueueHandle,
  type VirtioDevice,
} from "./device.ts";
import { VSOCK_MAX_PAYLOAD, VsockMuxer, newVsockStats, type VsockHeader, type VsockStats } from "./vsock-muxer.ts";
import { UnixVsockSockets, VsockConfigError, type VsockHostSockets } from "./vsock-unix.ts";

export const VSOCK_QUEUE_SIZE = 256;
export const VSOCK_QUEUE = { RX: 0, TX: 1, EVENT: 2 } as const;
/** Feature bit Volt does not offer (5.10.3). */
export const VIRTIO_VSOCK_F_SEQPACKET = 1;
export const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET = 0;
/** Guest CIDs: 0-2 are the hypervisor, local and host; 0xffffffff is VMADDR_CID_ANY. */
export const VSOCK_MIN_GUEST_CID = 3;
export const VSOCK_MAX_GUEST_CID = 0xffff_fffe;

/** The packet header; checked against <linux/virtio_vsock.h> (packed, 44 bytes). */
export const virtio_vsock_hdr = defineStruct("struct virtio_vsock_hdr", 44, {
  src_cid: [0, "u64"],
  dst_cid: [8, "u64"],
  src_port: [16, "u32"],
  dst_port: [20, "u32"],
  len: [24, "u32"],
  type: [28, "u16"],
  op: [30, "u16"],
  flags: [32, "u32"],
  buf_alloc: [36, "u32"],
  fwd_cnt: [40, "u32"],
});

export const virtio_vsock_config = defineStruct("struct virtio_vsock_config", 8, {
  guest_cid: [0, "u64"],
});

export const virtio_vsock_event = defineStruct("struct virtio_vsock_event", 4, {
  id: [0, "u32"],
});

export const VSOCK_HEADER_SIZE = virtio_vsock_hdr.size;

export interface VirtioVsockOptions {
  /** The guest's CID, >= 3. */
  readonly guestCid: number;
  /** Host socket path; guest connections to port P go to `${udsPath}_${P}`. */
  readonly udsPath: string;
}

export function decodeVsockHeader(bytes: Uint8Array): VsockHeader {
  const view = new DataView(bytes.buffer, bytes.byteOffset, VSOCK_HEADER_SIZE);
  const f = virtio_vsock_hdr.fields;
  return {
    srcCid: view.getBigUint64(f.src_cid.offset, true),
    dstCid: view.getBigUint64(f.dst_cid.offset, true),
    srcPort: view.getUint32(f.src_port.offset, true),
    dstPort: view.getUint32(f.dst_port.offset, true),
    len: view.getUint32(f.len.offset, true),
    type: view.getUint16(f.type.offset, true),
    op: view.getUint16(f.op.offset, true),
    flags: view.getUint32(f.flags.offset, true),
    bufAlloc: view.getUint32(f.buf_alloc.offset, true),
    fwdCnt: view.getUint32(f.fwd_cnt.offset, true),
  };
}

export function encodeVsockHeader(header: VsockHeader, into: Uint8Array): void {
  const view = new DataView(into.buffer, into.byteOffset, VSOCK_HEADER_SIZE);
  const f = virtio_vsock_hdr.fields;
  view.setBigUint64(f.src_cid.offset, header.srcCid, true);
  view.setBigUint64(f.dst_cid.offset, header.dstCid, true);
  view.setUint32(f.src_port.offset, header.srcPort, true);
  view.setUint32(f.dst_port.offset, header.dstPort, true);
  view.setUint32(f.len.offset, header.len, true);
  view.setUint16(f.type.offset, header.type, true);
  view.setUint16(f.op.offset, header.op, true);
  view.setUint32(f.flags.offset, header.flags, true);
  view.setUint32(f.buf_alloc.offset, header.bufAlloc, true);
  view.setUint32(f.fwd_cnt.offset, header.fwdCnt, true);
}

export class VirtioVsock implements VirtioDevice {
  readonly deviceType = VIRTIO_ID.VSOCK;
  readonly queueMaxSizes = [VSOCK_QUEUE_SIZE, VSOCK_QUEUE_SIZE, VSOCK_QUEUE_SIZE] as const;
  readonly features = featureBit(VIRTIO_F_RING_EVENT_IDX);
  readonly config: Uint8Array;
  readonly stats: VsockStats = newVsockStats();
  readonly guestCid: number;
  readonly muxer: VsockMuxer;

  private memory: GuestMemoryView | undefined;
  private queues: readonly QueueHandle[] | undefined;
  /** An rx chain taken but not filled (see the decisions above). */
  private spareRx: DescriptorChain | undefined;
  private readonly header = new Uint8Array(VSOCK_HEADER_SIZE);
  private closed = false;

  /** Checks the CID and listens at `udsPath`; throws VsockConfigError naming what is wrong (at VM build). */
  static open(options: VirtioVsockOptions): VirtioVsock {
    checkGuestCid(options.guestCid, options.udsPath);
    return new VirtioVsock(options.guestCid, UnixVsockSockets.listen(options.udsPath));
  }

  /** Takes ownership of `sockets` (closed by `close`). */
  constructor(guestCid: number, sockets: VsockHostSockets) {
    checkGuestCid(guestCid, sockets.path);
    this.guestCid = guestCid;
    this.muxer = new VsockMuxer(sockets, BigInt(guestCid), this.stats);
    const config = new Uint8Array(virtio_vsock_config.size);
    new DataView(config.buffer).setBigUint64(virtio_vsock_config.fields.guest_cid.offset, BigInt(guestCid), true);
    this.config = config;
  }

  /** The last host-side failure (refused connect, socket error), for diagnostics. */
  get lastHostError(): string | undefined {
    return this.muxer.lastHostError;
  }

  activate(context: ActivationContext): void {
    if (context.queues.length < this.queueMaxSizes.length) throw new Error("virtio-vsock activated without its three queues");
    this.memory = context.memory;
    this.queues = context.queues;
    this.spareRx = undefined;
    this.muxer.setActive(!this.closed);
  }

  /** rx: the guest gave buffers; tx: it sent packets; event: nothing to do until Volt has an event. Throws only if `pop()` does. */
  processQueue(index: number): void {
    if (!this.queues) return;
    if (index === VSOCK_QUEUE.TX) this.processTx();
    if (index === VSOCK_QUEUE.TX || index === VSOCK_QUEUE.RX) this.fillRx();
  }

  /** The guest forgot every connection: so does Volt (host sockets closed); the listener stays. */
  reset(): void {
    this.memory = undefined;
    this.queues = undefined;
    this.spareRx = undefined;
    this.muxer.setActive(false);
  }

  pollFds(): readonly BackendPoll[] {
    return this.closed ? [] : this.muxer.pollFds();
  }

  processBackend(fd: number, revents: number): void {
    if (this.closed) return;
    try {
      this.muxer.ready(fd, revents);
    } catch (error) {
      this.internalError(error);
    }
    if (this.queues) this.fillRx();
  }

  /** Closes every connection and the listener, and removes the listening socket's file. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.reset();
    this.muxer.close();
  }

  /** After a restore every host connection is gone: tell the driver, as Firecracker does. */
  restored(): void {
    this.transportReset();
  }

  /**
   * Tells the guest its connections are gone (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET),
   * as after a snapshot restore, and closes Volt's side of them. False when
   * the driver is not running or gave no event buffer.
   */
  transportReset(): boolean {
    const queues = this.queues;
    const memory = this.memory;
    if (!queues || !memory) return false;
    this.muxer.setActive(false);
    this.muxer.setActive(true);
    this.spareRx = undefined;
    const events = queues[VSOCK_QUEUE.EVENT]!;
    for (let chain = events.pop(); chain !== undefined; chain = events.pop()) {
      const event = new Uint8Array(virtio_vsock_event.size);
      new DataView(event.buffer).setUint32(virtio_vsock_event.fields.id.offset, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, true);
      const writable = chain.buffers.filter((buffer) => buffer.writable);
      if (scatter(memory, writable, event) < event.byteLength) {
        events.addUsed(chain.head, 0);
        continue;
      }
      events.addUsed(chain.head, event.byteLength);
      events.notifyIfNeeded();
      return true;
    }
    events.notifyIfNeeded();
    return false;
  }

  private processTx(): void {
    const tx = this.queues![VSOCK_QUEUE.TX]!;
    for (let chain = tx.pop(); chain !== undefined; chain = tx.pop()) {
      try {
        this.handleTx(chain);
      } catch (error) {
        // Nothing a packet does may escape processQueue, not even a bug.
        this.internalError(error);
      }
      tx.addUsed(chain.head, 0);
    }
    tx.notifyIfNeeded();
  }

  private handleTx(chain: DescriptorChain): void {
    const memory = this.memory!;
    const readable = chain.buffers.filter((buffer) => !buffer.writable && buffer.length > 0);
    if (gather(memory, readable, this.header) < VSOCK_HEADER_SIZE) {
      this.stats.txPackets++;
      this.stats.malformed++;
      return;
    }
    const header = decodeVsockHeader(this.header);
    let available = 0;
    const payload: Uint8Array[] = [];
    // The payload is cut from the chain only when `len` fits it (the muxer rejects the packet otherwise).
    let wanted = header.len <= VSOCK_MAX_PAYLOAD ? header.len : 0;
    let skip = VSOCK_HEADER_SIZE;
    for (const buffer of readable) {
      if (skip >= buffer.length) {
        skip -= buffer.length;
        continue;
      }
      const length = buffer.length - skip;
      available += length;
      const take = Math.min(length, wanted);
      if (take > 0) payload.push(memory.slice(buffer.address + skip, take));
      wanted -= take;
      skip = 0;
    }
    this.muxer.fromGuest(header, header.len <= available ? payload : [], available);
  }

  /** Gives the guest every packet that is ready, as long as it has receive buffers. */
  private fillRx(): void {
    const rx = this.queues?.[VSOCK_QUEUE.RX];
    if (!rx) return;
    let used = false;
    while (this.muxer.hasPendingRx()) {
      const chain = this.spareRx ?? rx.pop();
      this.spareRx = undefined;
      if (!chain) break;
      let written: number | undefined;
      try {
        written = this.fillChain(chain);
      } catch (error) {
        this.internalError(error);
        written = 0;
      }
      if (written === undefined) {
        this.spareRx = chain;
        break;
      }
      rx.addUsed(chain.head, written);
      used = true;
    }
    if (used) rx.notifyIfNeeded();
  }

  /** Writes one packet into `chain`: its used length, or undefined when there was nothing to send after all. */
  private fillChain(chain: DescriptorChain): number | undefined {
    const memory = this.memory!;
    const writable = chain.buffers.filter((buffer) => buffer.writable && buffer.length > 0);
    let room = 0;
    for (const buffer of writable) room += buffer.length;
    if (room < VSOCK_HEADER_SIZE) {
      this.stats.rxBuffersTooSmall++;
      return 0;
    }
    const payloadSpace = firstSpanAfter(memory, writable, VSOCK_HEADER_SIZE);
    const header = this.muxer.nextRx(payloadSpace);
    if (!header) {
      // A chain with no payload room cannot carry the data that is waiting: return it rather than keep it forever.
      if (payloadSpace.byteLength === 0) {
        this.stats.rxBuffersTooSmall++;
        return 0;
      }
      return undefined;
    }
    encodeVsockHeader(header, this.header);
    scatter(memory, writable, this.header);
    this.stats.rxPackets++;
    return VSOCK_HEADER_SIZE + header.len;
  }

  private internalError(error: unknown): void {
    this.stats.internalErrors++;
    this.muxer.lastHostError = `internal error: ${error instanceof Error ? error.message : String(error)}`;
  }
}

function checkGuestCid(guestCid: number, path: string): void {
  if (!Number.isInteger(guestCid) || guestCid < VSOCK_MIN_GUEST_CID || guestCid > VSOCK_MAX_GUEST_CID) {
    throw new VsockConfigError(
      `vsock ${path}: guest CID ${guestCid} must be an integer from ${VSOCK_MIN_GUEST_CID} to ${VSOCK_MAX_GUEST_CID} (0-2 are reserved for the hypervisor, loopback and host)`,
    );
  }
}

/** Copies the first bytes of `buffers` into `into`; returns how many there were. */
function gather(memory: GuestMemoryView, buffers: readonly DescriptorBuffer[], into: Uint8Array): number {
  let done = 0;
  for (const buffer of buffers) {
    if (done === into.byteLength) break;
    const take = Math.min(buffer.length, into.byteLength - done);
    into.set(memory.slice(buffer.address, take), done);
    done += take;
  }
  return done;
}

/** Copies `data` into the start of `buffers`; returns how much fitted. */
function scatter(memory: GuestMemoryView, buffers: readonly DescriptorBuffer[], data: Uint8Array): number {
  let done = 0;
  for (const buffer of buffers) {
    if (done === data.byteLength) break;
    const take = Math.min(buffer.length, data.byteLength - done);
    memory.slice(buffer.address, take).set(data.subarray(done, done + take));
    done += take;
  }
  return done;
}

/** A live view of the first run of bytes `offset` bytes into `buffers` (at most one buffer, 64 KiB); empty if none. */
function firstSpanAfter(memory: GuestMemoryView, buffers: readonly DescriptorBuffer[], offset: number): Uint8Array {
  let skip = offset;
  for (const buffer of buffers) {
    if (skip >= buffer.length) {
      skip -= buffer.length;
      continue;
    }
    return memory.slice(buffer.address + skip, Math.min(buffer.length - skip, VSOCK_MAX_PAYLOAD));
  }
  return new Uint8Array(0);
}

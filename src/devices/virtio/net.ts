/**
 * virtio-net (virtio 1.2, section 5.1): one receive and one transmit queue
 * over a packet backend (a TAP interface, tap.ts), served on the VM's I/O
 * worker. Every packet between Volt and the tap is a 12-byte virtio_net_hdr
 * and an Ethernet frame, the same header the guest uses, so offloads pass
 * through untouched.
 *
 * Decisions:
 * - Features: MAC, STATUS (always LINK_UP), MRG_RXBUF, RING_EVENT_IDX and
 *   RING_INDIRECT_DESC (the queue follows indirect tables anyway; Linux then
 *   sends a TSO packet's ~20 pieces as one ring entry). Transmit offloads
 *   CSUM, HOST_TSO4, HOST_TSO6 and HOST_ECN are always offered: the tap
 *   accepts partial checksums and GSO packets from a virtio_net_hdr and the
 *   kernel checks them (tun marks them SKB_GSO_DODGY). Receive offloads
 *   GUEST_CSUM, GUEST_TSO4, GUEST_TSO6 and GUEST_ECN are offered when the tap
 *   accepted TUNSETOFFLOAD at open, and at DRIVER_OK the tap is told exactly
 *   the TUN_F_* flags matching what the driver accepted (none without
 *   GUEST_CSUM), so the kernel segments and checksums whatever the guest
 *   cannot take. No UFO either way (Linux removed UDP fragmentation offload
 *   and keeps it only for old guests), no USO, no control queue, one queue
 *   pair.
 * - Transmit headers are copied out of the guest (they may be split across
 *   descriptors) and checked against the negotiated features before the tap
 *   sees them: NEEDS_CSUM without CSUM, or a GSO type whose HOST_ feature was
 *   not accepted, is a malformed packet; other flag bits are cleared. The
 *   frame itself goes to the tap straight from guest memory (writev).
 * - A receive header from the tap is checked the other way: without
 *   GUEST_CSUM its flags become 0 (5.1.6.4.1) and a packet needing a checksum
 *   is dropped; a GSO type the driver did not accept is dropped. (Both can
 *   only happen for packets the kernel queued before a reset renegotiated.)
 * - Default MAC: 02:xx:xx:xx:xx:xx (locally administered, unicast) with the
 *   first five bytes of SHA-256("volt-net\0" + host name + "\0" + tap name):
 *   stable across restarts of the same VM on the same host, so the guest
 *   keeps its DHCP lease, and different for two hosts that both call their
 *   tap "tap0" on one bridge.
 * - Receive: a packet is read from the tap into a bounce buffer only when at
 *   least one receive chain is in hand, then spread over as many mergeable
 *   chains as it needs (num_buffers). If the ring runs dry mid-packet, the
 *   packet waits in the bounce buffer and the tap is not polled for POLLIN
 *   until the driver adds buffers (processQueue(0)); the tap's own queue
 *   holds the rest, and the kernel drops beyond it. A packet is dropped
 *   (rxDropped) only if it can never fit: it needs more chains than the
 *   whole ring has, or, without MRG_RXBUF, more than the chain it gets, or
 *   it is longer than NET_MAX_RX_PACKET. At most NET_RX_BURST packets per
 *   call, so transmit and the VM's other devices get their turn.
 * - Transmit: each chain is one packet. EAGAIN from the tap keeps the chain
 *   and waits for POLLOUT; after NET_TX_BURST chains Volt also asks for
 *   POLLOUT (a tap is nearly always writable) to come back for the rest in
 *   the next round, because with EVENT_IDX the driver will not notify again
 *   for entries Volt has not reached.
 * - Nothing the guest does makes processQueue throw (only `pop()` may, for a
 *   broken ring): malformed chains are returned with used length 0 and
 *   counted in `invalid`. A backend that fails for good (the tap was deleted:
 *   poll reports POLLERR, reads say EBADFD) throws TapError out of
 *   processBackend/processQueue once, so the I/O worker reports it; the fd is
 *   never polled again and later packets are dropped and counted. Other
 *   write errors only drop the packet (txDropped, lastBackendError): a tap
 *   the host has not brought up yet refuses writes with EIO.
 * - Before DRIVER_OK the tap is not polled: packets queue in the kernel.
 */
import { createHash } from "node:crypto";
import { hostname } from "node:os";
import { ERRNO } from "../../ffi/errno.ts";
import { NET_ERRNO, POLLNVAL, TUN_F, netErrnoName } from "../../ffi/net-syscalls.ts";
import { POLLERR, POLLHUP, POLLIN, POLLOUT } from "../../ffi/syscalls.ts";
import type { RateLimiter } from "./rate-limiter.ts";
import { defineStruct, StructView } from "../../kvm/struct.ts";
import type { GuestMemoryView } from "../../memory/guest-memory.ts";
import {
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  VIRTIO_ID,
  featureBit,
  type ActivationContext,
  type BackendPoll,
  type DescriptorChain,
  type QueueHandle,
  type VirtioDevice,
} from "./device.ts";
import { TapDevice, TapError, VNET_HDR_SIZE, type NetBackend } from "./tap.ts";

/** Feature bits (section 5.1.3). */
export const VIRTIO_NET_F = {
  CSUM: 0,
  GUEST_CSUM: 1,
  MAC: 5,
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  GUEST_ECN: 9,
  GUEST_UFO: 10,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
  HOST_ECN: 13,
  HOST_UFO: 14,
  MRG_RXBUF: 15,
  STATUS: 16,
  CTRL_VQ: 17,
} as const;

export const VIRTIO_NET_S_LINK_UP = 1;

/** virtio_net_hdr flags. */
export const VIRTIO_NET_HDR_F = { NEEDS_CSUM: 1, DATA_VALID: 2, RSC_INFO: 4 } as const;

/** virtio_net_hdr gso_type values; ECN is a bit on top of TCPV4/TCPV6. */
export const VIRTIO_NET_HDR_GSO = { NONE: 0, TCPV4: 1, UDP: 3, TCPV6: 4, ECN: 0x80 } as const;

/**
 * The configuration space Volt exposes: the MAC and the status, all that its
 * features use (max_virtqueue_pairs and later fields need MQ, MTU, ...).
 */
export const virtio_net_config = defineStruct("struct virtio_net_config", 8, {
  mac: [0, "u8", 6],
  status: [6, "u16"],
});

/** The header before every frame on both queues (VERSION_1: always with num_buffers). */
export const virtio_net_hdr_v1 = defineStruct("struct virtio_net_hdr_v1", VNET_HDR_SIZE, {
  flags: [0, "u8"],
  gso_type: [1, "u8"],
  hdr_len: [2, "u16"],
  gso_size: [4, "u16"],
  csum_start: [6, "u16"],
  csum_offset: [8, "u16"],
  num_buffers: [10, "u16"],
});

export const NET_RX_QUEUE = 0;
export const NET_TX_QUEUE = 1;
export const NET_QUEUE_SIZE = 256;
/** Largest frame either way: 64 KiB of GSO payload plus the Ethernet header. */
export const NET_MAX_FRAME = 65550;
/** Largest transmit packet (header + frame); longer chains are dropped. */
export const NET_MAX_PACKET = VNET_HDR_SIZE + NET_MAX_FRAME;
/** Largest receive packet: the kernel may add a VLAN tag to a maximal frame. */
export const NET_MAX_RX_PACKET = NET_MAX_PACKET + 4;
/** The shortest frame a tap takes: an Ethernet header. */
export const ETH_HLEN = 14;
export const NET_RX_BURST = 64;
export const NET_TX_BURST = 256;

export interface VirtioNetOptions {
  /** The tap interface's name. */
  readonly tap: string;
  /** "52:54:00:12:34:56"; default: derived from the host and tap names (see the header). */
  readonly mac?: string;
}

/** Counters for metrics; plain numbers. Bytes count frames, not virtio_net_hdr. */
export interface NetStats {
  rxPackets: number;
  rxBytes: number;
  txPackets: number;
  txBytes: number;
  /** Packets from the tap that could not be given to the guest. */
  rxDropped: number;
  /** Guest packets the tap did not take (oversize, host errors, backend gone). */
  txDropped: number;
  /** Malformed chains or headers from the driver, returned unused. */
  invalid: number;
  /** Times a rate limiter held packets back. */
  throttled: number;
}

export class VirtioNetError extends Error {
  override name = "VirtioNetError";
}

interface Span {
  readonly address: number;
  readonly length: number;
}

/** A receive chain checked and held until a packet needs it. */
interface RxChain {
  readonly head: number;
  readonly spans: readonly Span[];
  readonly capacity: number;
}

const AGAIN = Symbol("again");

export class VirtioNet implements VirtioDevice {
  readonly deviceType = VIRTIO_ID.NET;
  readonly queueMaxSizes = [NET_QUEUE_SIZE, NET_QUEUE_SIZE] as const;
  readonly features: bigint;
  readonly config: Uint8Array;
  readonly stats: NetStats = { rxPackets: 0, rxBytes: 0, txPackets: 0, txBytes: 0, rxDropped: 0, txDropped: 0, invalid: 0, throttled: 0 };
  /** The guest's MAC, as "02:ab:...". */
  readonly mac: string;
  readonly backend: NetBackend;
  /** The last host-side failure (a tap error), for diagnostics. */
  lastBackendError: string | undefined;

  private memory: GuestMemoryView | undefined;
  private rxQueue: QueueHandle | undefined;
  private txQueue: QueueHandle | undefined;
  private active = false;
  private acked = 0n;
  private mergeable = false;
  private rxRingSize = NET_QUEUE_SIZE;
  /** TUN_F_* flags the tap was last given. */
  private offloads = 0;
  private backendFailed = false;

  private readonly rxChains: RxChain[] = [];
  private rxChainBytes = 0;
  /** Length of the packet waiting in rxBuffer (0: none). */
  private rxPending = 0;
  /** The ring ran dry: do not poll for POLLIN until the driver adds buffers. */
  private rxStarved = false;
  /** One byte more than any packet Volt accepts, so a packet the kernel truncated to fit is recognised. */
  private readonly rxBuffer = new Uint8Array(NET_MAX_RX_PACKET + 1);
  private readonly rxView = new DataView(this.rxBuffer.buffer);

  /** A chain the tap refused with EAGAIN, sent first when it becomes writable. */
  private txPendingChain: DescriptorChain | undefined;
  private txWaitWritable = false;
  private rxLimiter: RateLimiter | undefined;
  private txLimiter: RateLimiter | undefined;
  /** The held transmit chain already took its tokens (it waits for POLLOUT, not for the limiter). */
  private txLimiterPaid = false;
  /** A burst ended with chains possibly left in the ring. */
  private txMore = false;
  private readonly txHeader = new Uint8Array(VNET_HDR_SIZE);
  private readonly txParts: Uint8Array[] = [];

  /** Opens tap `options.tap` (see tap.ts); every error names the tap. */
  static open(options: VirtioNetOptions): VirtioNet {
    let mac: Uint8Array;
    try {
      mac = options.mac === undefined ? defaultMac(options.tap) : parseMac(options.mac);
    } catch (error) {
      throw new VirtioNetError(`tap ${options.tap}: ${(error as Error).message}`);
    }
    return new VirtioNet(TapDevice.open(options.tap), { mac });
  }

  /** Serves `backend` (already open; closed by `close`). `mac` defaults as for `open`. */
  constructor(backend: NetBackend, options: { readonly mac?: string | Uint8Array } = {}) {
    this.backend = backend;
    const mac = options.mac === undefined ? defaultMac(backend.name) : typeof options.mac === "string" ? parseMac(options.mac) : checkMac(options.mac);
    this.mac = formatMac(mac);

    let features =
      featureBit(VIRTIO_NET_F.MAC) |
      featureBit(VIRTIO_NET_F.STATUS) |
      featureBit(VIRTIO_NET_F.MRG_RXBUF) |
      featureBit(VIRTIO_NET_F.CSUM) |
      featureBit(VIRTIO_NET_F.HOST_TSO4) |
      featureBit(VIRTIO_NET_F.HOST_TSO6) |
      featureBit(VIRTIO_NET_F.HOST_ECN) |
      featureBit(VIRTIO_F_RING_EVENT_IDX) |
      featureBit(VIRTIO_F_RING_INDIRECT_DESC);
    const can = backend.offloadCapabilities;
    if (can & TUN_F.TUN_F_CSUM) {
      features |= featureBit(VIRTIO_NET_F.GUEST_CSUM);
      if (can & TUN_F.TUN_F_TSO4) features |= featureBit(VIRTIO_NET_F.GUEST_TSO4);
      if (can & TUN_F.TUN_F_TSO6) features |= featureBit(VIRTIO_NET_F.GUEST_TSO6);
      if (can & TUN_F.TUN_F_TSO_ECN && can & (TUN_F.TUN_F_TSO4 | TUN_F.TUN_F_TSO6)) features |= featureBit(VIRTIO_NET_F.GUEST_ECN);
    }
    this.features = features;

    const config = new StructView(virtio_net_config);
    mac.forEach((byte, i) => config.set("mac", byte, i));
    config.set("status", VIRTIO_NET_S_LINK_UP);
    this.config = config.bytes;
  }

  activate(context: ActivationContext): void {
    const [rx, tx] = context.queues;
    if (!rx || !tx) throw new Error("virtio-net activated without its receive and transmit queues");
    this.clearQueueState();
    this.memory = context.memory;
    this.rxQueue = rx;
    this.txQueue = tx;
    this.acked = context.ackedFeatures & this.features;
    this.mergeable = this.accepted(VIRTIO_NET_F.MRG_RXBUF);
    this.rxRingSize = queueSize(rx);
    const offloads = this.tunOffloads();
    if (offloads !== this.offloads && !this.backendFailed) {
      this.backend.setOffloads(offloads);
      this.offloads = offloads;
    }
    this.active = true;
  }

  /** Queue 0: the driver added receive buffers. Queue 1: it queued packets to send. Throws only if `pop()` does. */
  processQueue(index: number): void {
    if (!this.active) return;
    if (index === NET_RX_QUEUE) {
      this.rxStarved = false;
      if (!this.rxLimiter?.isThrottled) this.receive();
    } else if (index === NET_TX_QUEUE && !this.txWaitWritable && !this.txLimiter?.isThrottled) {
      // While the tap is full, POLLOUT (processBackend) resumes transmission.
      this.transmit();
    }
  }

  /** Not polled before DRIVER_OK, nor once the backend failed; POLLIN only while there are receive buffers. */
  pollFds(): readonly BackendPoll[] {
    if (!this.active || this.backendFailed) return [];
    const rxThrottled = this.rxLimiter?.isThrottled ?? false;
    const txThrottled = this.txLimiter?.isThrottled ?? false;
    const events = (this.rxStarved || rxThrottled ? 0 : POLLIN) | (!txThrottled && (this.txWaitWritable || this.txMore) ? POLLOUT : 0);
    const polls: BackendPoll[] = events === 0 ? [] : [{ fd: this.backend.fd, events }];
    if (rxThrottled) polls.push({ fd: this.rxLimiter!.timerFd, events: POLLIN });
    if (txThrottled) polls.push({ fd: this.txLimiter!.timerFd, events: POLLIN });
    return polls;
  }

  /** Rate limits for what the guest receives and sends (from the interface's config); the device owns them. */
  setRateLimiters(limits: { rx?: RateLimiter; tx?: RateLimiter }): void {
    this.rxLimiter = limits.rx;
    this.txLimiter = limits.tx;
  }

  processBackend(fd: number, revents: number): void {
    if (!this.active || this.backendFailed) return;
    if (this.rxLimiter && fd === this.rxLimiter.timerFd) {
      this.rxLimiter.timerFired();
      this.receive();
      return;
    }
    if (this.txLimiter && fd === this.txLimiter.timerFd) {
      this.txLimiter.timerFired();
      this.transmit();
      return;
    }
    if (fd !== this.backend.fd) return;
    if (revents & (POLLERR | POLLHUP | POLLNVAL)) {
      this.backendFailure(`poll reports ${describeRevents(revents)} (was the interface deleted?)`);
    }
    if (revents & POLLOUT) {
      this.txWaitWritable = false;
      this.transmit();
    }
    if (revents & POLLIN) this.receive();
  }

  /** The driver reset the device: forget its queues and the chains Volt held; keep the tap. */
  reset(): void {
    this.active = false;
    if (this.rxPending > 0) this.stats.rxDropped++;
    this.clearQueueState();
    this.memory = undefined;
    this.rxQueue = undefined;
    this.txQueue = undefined;
    this.acked = 0n;
    if (this.offloads !== 0 && !this.backendFailed) {
      try {
        this.backend.setOffloads(0);
        this.offloads = 0;
      } catch (error) {
        this.lastBackendError = (error as Error).message;
      }
    }
  }

  /** Closes the backend; the device is unusable afterwards. */
  close(): void {
    this.reset();
    this.backend.close();
    this.rxLimiter?.close();
    this.txLimiter?.close();
  }

  // ---- receive -------------------------------------------------------------

  private receive(): void {
    const queue = this.rxQueue!;
    try {
      for (let burst = 0; burst < NET_RX_BURST && !this.backendFailed; burst++) {
        if (this.rxPending === 0) {
          if (this.rxLimiter && !this.rxLimiter.canConsume(1)) {
            // A received packet's size is known only once read; stop reading until the buckets allow one more.
            this.rxLimiter.waitFor(1);
            this.stats.throttled++;
            break;
          }
          if (!this.holdRxChains(1)) {
            this.rxStarved = true;
            break;
          }
          const length = this.readPacket();
          if (length === 0) break;
          if (length < 0 || !this.acceptRxHeader(length)) continue;
          this.rxLimiter?.charge(length);
          this.rxPending = length;
        }
        if (!this.deliver()) {
          this.rxStarved = true;
          break;
        }
      }
    } finally {
      queue.notifyIfNeeded();
    }
  }

  /** Reads the next packet into rxBuffer: its length; 0 if none is waiting; -1 if it was dropped (and counted). */
  private readPacket(): number {
    let result: number;
    do result = this.backend.readPacket(this.rxBuffer);
    while (result === -ERRNO.EINTR);
    if (result === -ERRNO.EAGAIN) return 0;
    if (result < 0) this.backendFailure(`read failed: ${netErrnoName(-result)}`);
    if (result > NET_MAX_RX_PACKET || result < VNET_HDR_SIZE + ETH_HLEN) {
      // Longer than any frame Volt expects (perhaps truncated), or a runt: never the guest's to see.
      this.stats.rxDropped++;
      return -1;
    }
    return result;
  }

  /** Makes the tap's header what the driver agreed to; false (and counted) if the packet cannot be delivered. */
  private acceptRxHeader(length: number): boolean {
    const header = this.rxBuffer;
    const flags = header[0]!;
    const gso = header[1]!;
    let ok = true;
    if (!this.accepted(VIRTIO_NET_F.GUEST_CSUM)) {
      if (flags & VIRTIO_NET_HDR_F.NEEDS_CSUM) ok = false;
      header[0] = 0;
    } else {
      header[0] = flags & (VIRTIO_NET_HDR_F.NEEDS_CSUM | VIRTIO_NET_HDR_F.DATA_VALID);
    }
    const type = gso & ~VIRTIO_NET_HDR_GSO.ECN;
    if (type === VIRTIO_NET_HDR_GSO.TCPV4) ok &&= this.accepted(VIRTIO_NET_F.GUEST_TSO4);
    else if (type === VIRTIO_NET_HDR_GSO.TCPV6) ok &&= this.accepted(VIRTIO_NET_F.GUEST_TSO6);
    else if (type !== VIRTIO_NET_HDR_GSO.NONE) ok = false;
    if (gso & VIRTIO_NET_HDR_GSO.ECN) ok &&= type !== VIRTIO_NET_HDR_GSO.NONE && this.accepted(VIRTIO_NET_F.GUEST_ECN);
    if (!ok) {
      this.stats.rxDropped++;
      return false;
    }
    return true;
  }

  /**
   * Puts the pending packet into the chains it needs and returns them.
   * False if the ring ran dry first (the packet stays pending).
   */
  private deliver(): boolean {
    const length = this.rxPending;
    const needed = this.mergeable ? length : 1;
    if (!this.mergeable) {
      if (!this.holdRxChains(1)) return false;
      if (this.rxChains[0]!.capacity < length) return this.dropPending();
    } else if (!this.holdRxChains(needed)) {
      // Every chain of the ring is already here: more will never come.
      if (this.rxChains.length >= this.rxRingSize) return this.dropPending();
      return false;
    }
    // Which chains, and how much of the packet each gets.
    let count = 0;
    let placed = 0;
    while (placed < length) {
      placed += Math.min(this.rxChains[count]!.capacity, length - placed);
      count++;
    }
    this.rxView.setUint16(virtio_net_hdr_v1.fields.num_buffers.offset, count, true);
    const memory = this.memory!;
    const used: number[] = [];
    let at = 0;
    for (let i = 0; i < count; i++) {
      const chain = this.rxChains[i]!;
      const start = at;
      for (const span of chain.spans) {
        if (at === length) break;
        const take = Math.min(span.length, length - at);
        memory.slice(span.address, take).set(this.rxBuffer.subarray(at, at + take));
        at += take;
      }
      used.push(at - start);
    }
    const queue = this.rxQueue!;
    const entries: { head: number; written: number }[] = [];
    for (let i = 0; i < count; i++) {
      const chain = this.rxChains.shift()!;
      this.rxChainBytes -= chain.capacity;
      entries.push({ head: chain.head, written: used[i]! });
    }
    // One used-index move for the whole packet: the driver never sees num_buffers before all its buffers.
    queue.addUsedBatch(entries);
    this.stats.rxPackets++;
    this.stats.rxBytes += length - VNET_HDR_SIZE;
    this.rxPending = 0;
    return true;
  }

  private dropPending(): boolean {
    this.stats.rxDropped++;
    this.rxPending = 0;
    return true;
  }

  /**
   * Pops receive chains until Volt holds `bytes` of buffer space (with
   * MRG_RXBUF) or at least `bytes` chains (without: called with 1). Malformed
   * chains are returned at once. False if the ring ran dry first.
   */
  private holdRxChains(bytes: number): boolean {
    const queue = this.rxQueue!;
    const enough = () => (this.mergeable ? this.rxChainBytes >= bytes : this.rxChains.length >= bytes);
    while (!enough()) {
      const chain = queue.pop();
      if (!chain) return false;
      const held = this.checkRxChain(chain);
      if (!held) {
        this.stats.invalid++;
        queue.addUsed(chain.head, 0);
        continue;
      }
      this.rxChains.push(held);
      this.rxChainBytes += held.capacity;
    }
    return true;
  }

  /** A receive chain is writable buffers only, in guest RAM, with room for at least the header (5.1.6.3.1). */
  private checkRxChain(chain: DescriptorChain): RxChain | undefined {
    const memory = this.memory!;
    const spans: Span[] = [];
    let capacity = 0;
    for (const buffer of chain.buffers) {
      if (buffer.length === 0) continue;
      if (!buffer.writable || !memory.contains(buffer.address, buffer.length)) return undefined;
      spans.push({ address: buffer.address, length: buffer.length });
      capacity += buffer.length;
    }
    if (capacity < VNET_HDR_SIZE) return undefined;
    return { head: chain.head, spans, capacity };
  }

  // ---- transmit ------------------------------------------------------------

  private transmit(): void {
    const queue = this.txQueue!;
    this.txMore = false;
    try {
      for (let sent = 0; ; sent++) {
        if (sent === NET_TX_BURST) {
          this.txMore = true;
          break;
        }
        const chain = this.txPendingChain ?? queue.pop();
        if (!chain) break;
        this.txPendingChain = undefined;
        if (this.txLimiter && !this.txLimiterPaid && !this.txLimiter.consume(chainBytes(chain))) {
          // Out of tokens: hold the packet until the limiter's timer fires.
          this.txPendingChain = chain;
          this.stats.throttled++;
          break;
        }
        this.txLimiterPaid = true; // a packet held for POLLOUT has been paid for already
        if (this.send(chain) === AGAIN) {
          this.txPendingChain = chain;
          this.txWaitWritable = true;
          break;
        }
        this.txLimiterPaid = false;
        queue.addUsed(chain.head, 0);
      }
    } finally {
      queue.notifyIfNeeded();
    }
  }

  /** Writes one chain's packet to the backend; AGAIN if the backend is full (the chain is kept). */
  private send(chain: DescriptorChain): typeof AGAIN | undefined {
    const memory = this.memory!;
    if (this.backendFailed) {
      this.stats.txDropped++;
      return;
    }
    let total = 0;
    for (const buffer of chain.buffers) {
      if (buffer.writable || !memory.contains(buffer.address, buffer.length)) return this.invalidTx();
      total += buffer.length;
    }
    if (total < VNET_HDR_SIZE + ETH_HLEN) return this.invalidTx();
    if (total > NET_MAX_PACKET) {
      this.stats.txDropped++;
      return;
    }
    // The header, gathered from however many buffers hold it; then views of the frame.
    const parts = this.txParts;
    parts.length = 0;
    parts.push(this.txHeader);
    let headerBytes = 0;
    for (const buffer of chain.buffers) {
      const view = memory.slice(buffer.address, buffer.length);
      const forHeader = Math.min(view.byteLength, VNET_HDR_SIZE - headerBytes);
      if (forHeader > 0) {
        this.txHeader.set(view.subarray(0, forHeader), headerBytes);
        headerBytes += forHeader;
      }
      if (forHeader < view.byteLength) parts.push(view.subarray(forHeader));
    }
    if (!this.acceptTxHeader()) return this.invalidTx();
    let result: number;
    do result = this.backend.writePacket(parts);
    while (result === -ERRNO.EINTR);
    parts.length = 0;
    if (result === -ERRNO.EAGAIN) return AGAIN;
    if (result >= 0) {
      this.stats.txPackets++;
      this.stats.txBytes += total - VNET_HDR_SIZE;
      return;
    }
    if (result === -ERRNO.EINVAL) return this.invalidTx(); // the kernel refused the header or frame
    this.stats.txDropped++;
    if (result === -ERRNO.EBADF || result === -NET_ERRNO.EBADFD) this.backendFailure(`write failed: ${netErrnoName(-result)}`);
    this.lastBackendError = `tap ${this.backend.name}: write failed: ${netErrnoName(-result)}`;
    return;
  }

  /** Checks the guest's header against the negotiated transmit features and clears what the tap must not see. */
  private acceptTxHeader(): boolean {
    const header = this.txHeader;
    const flags = header[0]!;
    const gso = header[1]!;
    if (flags & VIRTIO_NET_HDR_F.NEEDS_CSUM && !this.accepted(VIRTIO_NET_F.CSUM)) return false;
    const type = gso & ~VIRTIO_NET_HDR_GSO.ECN;
    if (type === VIRTIO_NET_HDR_GSO.TCPV4) {
      if (!this.accepted(VIRTIO_NET_F.HOST_TSO4)) return false;
    } else if (type === VIRTIO_NET_HDR_GSO.TCPV6) {
      if (!this.accepted(VIRTIO_NET_F.HOST_TSO6)) return false;
    } else if (type !== VIRTIO_NET_HDR_GSO.NONE) {
      return false;
    }
    if (gso & VIRTIO_NET_HDR_GSO.ECN && (type === VIRTIO_NET_HDR_GSO.NONE || !this.accepted(VIRTIO_NET_F.HOST_ECN))) return false;
    // 5.1.6.2.2: flags the device does not use are ignored; num_buffers is unused on transmit.
    header[0] = flags & VIRTIO_NET_HDR_F.NEEDS_CSUM;
    header[10] = 0;
    header[11] = 0;
    return true;
  }

  private invalidTx(): undefined {
    this.stats.invalid++;
    return undefined;
  }

  // ---- shared --------------------------------------------------------------

  private accepted(bit: number): boolean {
    return (this.acked & featureBit(bit)) !== 0n;
  }

  /** TUN_F_* flags matching the receive offloads the driver accepted. */
  private tunOffloads(): number {
    if (!this.accepted(VIRTIO_NET_F.GUEST_CSUM)) return 0;
    let flags = TUN_F.TUN_F_CSUM;
    if (this.accepted(VIRTIO_NET_F.GUEST_TSO4)) flags |= TUN_F.TUN_F_TSO4;
    if (this.accepted(VIRTIO_NET_F.GUEST_TSO6)) flags |= TUN_F.TUN_F_TSO6;
    if (this.accepted(VIRTIO_NET_F.GUEST_ECN) && flags & (TUN_F.TUN_F_TSO4 | TUN_F.TUN_F_TSO6)) flags |= TUN_F.TUN_F_TSO_ECN;
    return flags & this.backend.offloadCapabilities;
  }

  /** The backend is gone for good: stop polling it, drop what it held, and tell the I/O worker once. */
  private backendFailure(reason: string): never {
    const message = `tap ${this.backend.name}: ${reason}`;
    this.backendFailed = true;
    this.lastBackendError = message;
    if (this.rxPending > 0) this.dropPending();
    throw new TapError(message);
  }

  private clearQueueState(): void {
    this.rxChains.length = 0;
    this.rxChainBytes = 0;
    this.rxPending = 0;
    this.rxStarved = false;
    this.txPendingChain = undefined;
    this.txWaitWritable = false;
    this.txMore = false;
  }
}

/** The ring size the driver chose (never more than the device offered). */
function queueSize(queue: QueueHandle): number {
  return queue.size > 0 ? Math.min(queue.size, NET_QUEUE_SIZE) : NET_QUEUE_SIZE;
}

function describeRevents(revents: number): string {
  const names: string[] = [];
  if (revents & POLLERR) names.push("POLLERR");
  if (revents & POLLHUP) names.push("POLLHUP");
  if (revents & POLLNVAL) names.push("POLLNVAL");
  return names.join("|");
}

/** Parses "52:54:00:12:34:56" (hex, either case); refuses multicast and all-zero addresses. Errors name the value. */
export function parseMac(text: string): Uint8Array {
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(text)) {
    throw new VirtioNetError(`MAC address ${JSON.stringify(text)} is not six hex bytes separated by ':' (like 52:54:00:12:34:56)`);
  }
  return checkMac(Uint8Array.from(text.split(":"), (part) => Number.parseInt(part, 16)), text);
}

function checkMac(bytes: Uint8Array, text = formatMac(bytes)): Uint8Array {
  if (bytes.byteLength !== 6) throw new VirtioNetError(`MAC address ${JSON.stringify(text)} must be 6 bytes`);
  if (bytes[0]! & 1) {
    throw new VirtioNetError(`MAC address ${JSON.stringify(text)} is a multicast address (low bit of the first byte set); a NIC needs a unicast one`);
  }
  if (bytes.every((byte) => byte === 0)) throw new VirtioNetError(`MAC address ${JSON.stringify(text)} is all zeros`);
  return Uint8Array.from(bytes);
}

export function formatMac(bytes: Uint8Array): string {
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join(":");
}

/** The default MAC for tap `tap` on this host: 02 + five bytes of SHA-256 (see the header). */
export function defaultMac(tap: string, host: string = hostname()): Uint8Array {
  const digest = createHash("sha256").update(`volt-net\0${host}\0${tap}`).digest();
  const mac = new Uint8Array(6);
  mac[0] = 0x02;
  mac.set(digest.subarray(0, 5), 1);
  return mac;
}

/** A transmitted chain's size, for the bandwidth bucket. */
function chainBytes(chain: DescriptorChain): number {
  return chain.buffers.reduce((sum, buffer) => sum + buffer.length, 0);
}

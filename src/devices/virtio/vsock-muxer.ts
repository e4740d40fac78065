/**
 * virtio-vsock's connection table and stream state machine (virtio 1.2,
 * 5.10.6), between the guest's packets and host Unix sockets. The device
 * (vsock.ts) moves packets between this and the virtqueues; the sockets are
 * behind VsockHostSockets (vsock-unix.ts).
 *
 * A connection is keyed by (local port, peer port): "local" is the host end
 * (CID 2), "peer" the guest's. Each one keeps the spec's credit accounting
 * in both directions:
 * - guest to host: Volt advertises `buf_alloc` = VSOCK_CONNECTION_BUFFER and
 *   `fwd_cnt` = bytes written to the host socket. Bytes the socket does not
 *   take at once wait in a per-connection buffer, which a guest that honours
 *   its credit can never overflow; a guest that sends beyond it gets the
 *   connection reset (counted as a credit violation). So a host program that
 *   stops reading costs at most VSOCK_CONNECTION_BUFFER bytes, and the guest
 *   simply stops being able to send.
 * - host to guest: the guest's `buf_alloc` / `fwd_cnt` (from every packet it
 *   sends) and Volt's `tx_cnt` give its free space, buf_alloc - (tx_cnt -
 *   fwd_cnt). Host bytes are read straight into a guest receive buffer, never
 *   more than that credit, so host-to-guest data is never buffered in Volt at
 *   all; with no credit the host socket is not even polled, and Volt sends one
 *   CREDIT_REQUEST.
 *
 * Decisions:
 * - Invalid packets (wrong source or destination CID, type other than STREAM,
 *   unknown op, `len` beyond the chain or above 64 KiB, an op the connection's
 *   state does not allow, or one for no connection) are answered with RST,
 *   and an existing connection they name is closed. An RST is never answered.
 *   Each kind has a counter. Nothing the guest sends throws.
 * - At most VSOCK_MAX_CONNECTIONS connections, counting host connections
 *   still sending their CONNECT line. Beyond that a guest REQUEST gets RST
 *   and a host connection is accepted and closed at once (so the listener's
 *   backlog never keeps the I/O worker awake).
 * - Replies that belong to no connection (RSTs) wait in a queue of at most
 *   VSOCK_MAX_PENDING_CONTROL; beyond that they are dropped and counted. A
 *   guest that sends garbage without giving receive buffers cannot grow it.
 * - Host end of stream is SHUTDOWN with SEND only: the host program may have
 *   only shut its write side (socat does on end of input) and still wait for
 *   the answer. If it closed entirely, the guest's next write fails (EPIPE)
 *   and resets the connection; when the guest closes (SHUTDOWN with both
 *   flags) Volt flushes what it holds, closes the socket and answers RST, as
 *   the Linux driver expects.
 * - Guest SHUTDOWN with SEND: after the buffered bytes reach the socket, its
 *   write side is shut, so the host program reads end of stream.
 * - No timers (the I/O worker waits in ppoll without a timeout): a REQUEST
 *   the guest never answers keeps its slot until the guest resets the device.
 *   Linux always answers (RESPONSE, or RST when nothing listens).
 * - Host-initiated connections get local ports from 2^30 upwards, skipping
 *   ports in use, as Firecracker does; "OK <port>\n" tells the host which.
 * - The CONNECT line is read a byte at a time so bytes the host sends right
 *   after it stay in the socket for the guest.
 * - While the driver is not running (before DRIVER_OK, after a reset) the
 *   listener is not polled: host programs wait in its backlog. A reset closes
 *   every connection (the guest forgot them all).
 */
import { ERRNO } from "../../ffi/errno.ts";
import { socketErrnoName } from "../../ffi/socket-syscalls.ts";
import { POLLIN, POLLOUT } from "../../ffi/syscalls.ts";
import type { BackendPoll } from "./device.ts";
import type { VsockHostSockets } from "./vsock-unix.ts";

export const VSOCK_HOST_CID = 2;
export const VSOCK_TYPE_STREAM = 1;
/** Packet operations (5.10.6). */
export const VSOCK_OP = {
  INVALID: 0,
  REQUEST: 1,
  RESPONSE: 2,
  RST: 3,
  SHUTDOWN: 4,
  RW: 5,
  CREDIT_UPDATE: 6,
  CREDIT_REQUEST: 7,
} as const;
/** SHUTDOWN flags. */
export const VSOCK_SHUTDOWN = { RCV: 1, SEND: 2 } as const;

/** Largest payload in one packet, either way (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE). */
export const VSOCK_MAX_PAYLOAD = 64 * 1024;
/** buf_alloc Volt advertises: guest bytes it holds per connection at most. */
export const VSOCK_CONNECTION_BUFFER = 256 * 1024;
export const VSOCK_MAX_CONNECTIONS = 1024;
export const VSOCK_MAX_PENDING_CONTROL = 1024;
/** First local port of host-initiated connections. */
export const VSOCK_FIRST_HOST_PORT = 2 ** 30;
/** "CONNECT 4294967295\n" is 19 bytes; a longer line is not a CONNECT. */
export const VSOCK_CONNECT_LINE_MAX = 32;
/** Host connections accepted per listener wake-up, so one burst cannot hold the I/O worker. */
const ACCEPTS_PER_ROUND = 32;
const U32 = 2 ** 32;

/** struct virtio_vsock_hdr, decoded. CIDs are u64. */
export interface VsockHeader {
  srcCid: bigint;
  dstCid: bigint;
  srcPort: number;
  dstPort: number;
  len: number;
  type: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
}

/** Counters for metrics; plain numbers. */
export interface VsockStats {
  /** Packets taken from the guest (tx queue) and given to it (rx queue). */
  txPackets: number;
  rxPackets: number;
  /** Stream bytes guest to host and host to guest. */
  txBytes: number;
  rxBytes: number;
  /** Host-initiated connections the guest accepted, and those it refused (RST). */
  hostConnections: number;
  hostConnectionsRefused: number;
  /** Guest-initiated connections that reached a host listener, and those that found none. */
  guestConnections: number;
  guestConnectionsRefused: number;
  resetsSent: number;
  resetsReceived: number;
  /** A chain shorter than a header, or `len` beyond the chain or above 64 KiB. */
  malformed: number;
  /** src_cid not the guest's, or dst_cid not the host's. */
  badAddress: number;
  /** type other than STREAM. */
  badType: number;
  unknownOps: number;
  /** An op the connection's state does not allow, or for no connection. */
  protocolErrors: number;
  /** Connections refused because the table was full. */
  tableFull: number;
  /** Guest data beyond the credit Volt gave (connection reset). */
  creditViolations: number;
  /** RSTs not sent because the pending queue was full. */
  controlDropped: number;
  /** Receive buffers too small for a header, returned empty. */
  rxBuffersTooSmall: number;
  /** Host connections whose first line was not "CONNECT <port>\n". */
  badConnectLines: number;
  /** Host socket failures (accept, read, write) other than would-block. */
  hostErrors: number;
  /** Bugs caught so they could not escape to the I/O worker. */
  internalErrors: number;
}

export function newVsockStats(): VsockStats {
  return {
    txPackets: 0,
    rxPackets: 0,
    txBytes: 0,
    rxBytes: 0,
    hostConnections: 0,
    hostConnectionsRefused: 0,
    guestConnections: 0,
    guestConnectionsRefused: 0,
    resetsSent: 0,
    resetsReceived: 0,
    malformed: 0,
    badAddress: 0,
    badType: 0,
    unknownOps: 0,
    protocolErrors: 0,
    tableFull: 0,
    creditViolations: 0,
    controlDropped: 0,
    rxBuffersTooSmall: 0,
    badConnectLines: 0,
    hostErrors: 0,
    internalErrors: 0,
  };
}

type ConnectionState = "requesting" | "established";

/** Guest bytes waiting for the host socket; `counted` is false for Volt's own "OK <port>\n". */
interface Pending {
  bytes: Uint8Array;
  offset: number;
  readonly counted: boolean;
}

class Connection {
  /** Guest bytes accepted and not yet written to the host socket. */
  buffered = 0;
  readonly pending: Pending[] = [];
  /** Guest to host: bytes forwarded to the socket, and the value the guest last heard. */
  fwdCnt = 0;
  lastFwdCntSent = 0;
  /** Guest to host: payload bytes received from the guest (the guest's tx_cnt). */
  received = 0;
  /** Host to guest: payload bytes sent, and the guest's advertised buffer. */
  txCnt = 0;
  peerBufAlloc = 0;
  peerFwdCnt = 0;

  /** The host socket may have bytes (POLLIN seen, no EAGAIN since). */
  hostReadable = false;
  hostEof = false;
  hostWriteShut = false;
  /** SHUTDOWN flags the guest sent. */
  peerShutdown = 0;

  needRequest = false;
  needResponse = false;
  needCreditUpdate = false;
  creditRequested = false;
  queued = false;
  closed = false;

  constructor(
    readonly fd: number,
    readonly localPort: number,
    readonly peerPort: number,
    public state: ConnectionState,
  ) {}

  get key(): string {
    return connectionKey(this.localPort, this.peerPort);
  }

  /** Bytes the guest can still take: buf_alloc - (tx_cnt - fwd_cnt), in u32 arithmetic, never negative. */
  peerCredit(): number {
    const inFlight = (this.txCnt - this.peerFwdCnt + U32) % U32;
    return Math.max(0, this.peerBufAlloc - inFlight);
  }

  wantsHostBytes(): boolean {
    return this.state === "established" && !this.hostEof && (this.peerShutdown & VSOCK_SHUTDOWN.RCV) === 0;
  }

  canSendData(): boolean {
    return this.hostReadable && this.wantsHostBytes() && this.peerCredit() > 0;
  }

  /** Readable host bytes wait for credit the guest has not been asked for yet. */
  needsCreditRequest(): boolean {
    return this.hostReadable && this.wantsHostBytes() && this.peerCredit() === 0 && !this.creditRequested;
  }

  hasRxWork(): boolean {
    return this.needRequest || this.needResponse || this.needCreditUpdate || this.canSendData() || this.needsCreditRequest();
  }
}

interface Handshake {
  readonly fd: number;
  readonly line: number[];
}

function connectionKey(localPort: number, peerPort: number): string {
  return `${localPort}:${peerPort}`;
}

const oneByte = new Uint8Array(1);
const textEncoder = new TextEncoder();

export class VsockMuxer {
  readonly stats: VsockStats;
  /** The last host-side failure, for diagnostics (the guest only sees RST). */
  lastHostError: string | undefined;

  private readonly connections = new Map<string, Connection>();
  private readonly byFd = new Map<number, Connection>();
  private readonly handshakes = new Map<number, Handshake>();
  private readonly localPortUse = new Map<number, number>();
  /** Connections with something for the guest, in arrival order. */
  private rxQueue: Connection[] = [];
  /** RSTs for no connection: [local port, peer port]. */
  private control: [number, number][] = [];
  private nextHostPort = VSOCK_FIRST_HOST_PORT;
  private listening = false;
  /** accept failed for want of descriptors: wait until a connection closes. */
  private acceptPaused = false;
  private closedForGood = false;

  constructor(
    private readonly sockets: VsockHostSockets,
    readonly guestCid: bigint,
    stats: VsockStats = newVsockStats(),
  ) {
    this.stats = stats;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Host connections still sending their CONNECT line. */
  get handshakeCount(): number {
    return this.handshakes.size;
  }

  /** Guest bytes held for the host on connection (local, peer), or undefined without such a connection. */
  bufferedBytes(localPort: number, peerPort: number): number | undefined {
    return this.connections.get(connectionKey(localPort, peerPort))?.buffered;
  }

  /** The driver is running (accept host connections) or not (stop, and forget every connection). */
  setActive(active: boolean): void {
    if (this.closedForGood) return;
    if (!active) {
      for (const connection of [...this.connections.values()]) this.remove(connection);
      this.rxQueue = [];
      this.control = [];
    }
    this.listening = active;
    this.acceptPaused = false;
  }

  /** Closes every socket, the listener included (which removes its file). */
  close(): void {
    this.setActive(false);
    this.closedForGood = true;
    for (const handshake of this.handshakes.values()) this.sockets.close(handshake.fd);
    this.handshakes.clear();
    this.sockets.closeListener();
  }

  pollFds(): BackendPoll[] {
    const polls: BackendPoll[] = [];
    if (this.listening && !this.acceptPaused) polls.push({ fd: this.sockets.listenerFd, events: POLLIN });
    for (const handshake of this.handshakes.values()) polls.push({ fd: handshake.fd, events: POLLIN });
    for (const connection of this.connections.values()) {
      let events = 0;
      // Known-readable sockets are not polled again until a read says EAGAIN: poll is level-triggered.
      if (!connection.hostReadable && connection.wantsHostBytes() && connection.peerCredit() > 0) events |= POLLIN;
      if (connection.pending.length > 0) events |= POLLOUT;
      // A descriptor with nothing asked is left out: poll would still report its hang-up, every round.
      if (events !== 0) polls.push({ fd: connection.fd, events });
    }
    return polls;
  }

  /** A host descriptor is ready. Errors and hang-ups show in the calls' results, so `revents` only says where to look. */
  ready(fd: number, revents: number): void {
    if (fd === this.sockets.listenerFd) {
      if (this.listening) this.acceptConnections();
      return;
    }
    const handshake = this.handshakes.get(fd);
    if (handshake) {
      this.readConnectLine(handshake);
      return;
    }
    const connection = this.byFd.get(fd);
    if (!connection) return;
    if (revents & ~POLLOUT && connection.wantsHostBytes()) {
      connection.hostReadable = true;
      this.enqueue(connection);
    }
    if (connection.pending.length > 0) this.flush(connection);
  }

  /**
   * One packet from the guest. `payload` holds the bytes after the header,
   * up to `len` (the device cut them from the chain); `available` is how many
   * the chain really had after the header.
   */
  fromGuest(header: VsockHeader, payload: readonly Uint8Array[], available: number): void {
    const stats = this.stats;
    stats.txPackets++;
    if (header.srcCid !== this.guestCid || header.dstCid !== BigInt(VSOCK_HOST_CID)) {
      stats.badAddress++;
      return this.reject(header);
    }
    if (header.type !== VSOCK_TYPE_STREAM) {
      stats.badType++;
      return this.reject(header);
    }
    if (header.len > available || header.len > VSOCK_MAX_PAYLOAD) {
      stats.malformed++;
      return this.reject(header);
    }
    const connection = this.connections.get(connectionKey(header.dstPort, header.srcPort));
    if (connection) this.updatePeerCredit(connection, header);

    switch (header.op) {
      case VSOCK_OP.REQUEST:
        return connection ? this.protocolError(header) : this.guestConnect(header);
      case VSOCK_OP.RESPONSE:
        if (!connection || connection.state !== "requesting" || connection.needRequest) return this.protocolError(header);
        return this.hostConnectAccepted(connection);
      case VSOCK_OP.RST:
        stats.resetsReceived++;
        if (!connection) return;
        if (connection.state === "requesting") stats.hostConnectionsRefused++;
        return this.remove(connection);
      case VSOCK_OP.SHUTDOWN:
        if (!connection || connection.state !== "established") return this.protocolError(header);
        connection.peerShutdown |= header.flags & (VSOCK_SHUTDOWN.RCV | VSOCK_SHUTDOWN.SEND);
        return this.afterGuestBytes(connection);
      case VSOCK_OP.RW:
        if (!connection || connection.state !== "established" || connection.peerShutdown & VSOCK_SHUTDOWN.SEND) {
          return this.protocolError(header);
        }
        return this.toHost(connection, payload, header.len);
      case VSOCK_OP.CREDIT_UPDATE:
        if (!connection) return this.protocolError(header);
        return;
      case VSOCK_OP.CREDIT_REQUEST:
        if (!connection) return this.protocolError(header);
        connection.needCreditUpdate = true;
        this.enqueue(connection);
        return;
      default:
        stats.unknownOps++;
        return this.reject(header);
    }
  }

  /** Something waits for a guest receive buffer. */
  hasPendingRx(): boolean {
    return this.control.length > 0 || this.rxQueue.length > 0;
  }

  /**
   * The next packet for the guest, its payload (if any) read into `payloadSpace`
   * (`len` says how much); undefined when nothing can be sent now.
   */
  nextRx(payloadSpace: Uint8Array): VsockHeader | undefined {
    const rst = this.control.shift();
    if (rst) return this.packet(VSOCK_OP.RST, rst[0], rst[1]);
    // Each queued connection gets one look: one that cannot send now (its socket said EAGAIN) drops out.
    for (let budget = this.rxQueue.length; budget > 0; budget--) {
      const connection = this.rxQueue.shift()!;
      connection.queued = false;
      if (connection.closed) continue;
      const header = this.packetFor(connection, payloadSpace);
      if (!connection.closed && connection.hasRxWork()) this.enqueue(connection);
      if (header) return header;
    }
    return undefined;
  }

  private packetFor(connection: Connection, payloadSpace: Uint8Array): VsockHeader | undefined {
    if (connection.needRequest) {
      connection.needRequest = false;
      return this.packetOn(connection, VSOCK_OP.REQUEST);
    }
    if (connection.needResponse) {
      connection.needResponse = false;
      return this.packetOn(connection, VSOCK_OP.RESPONSE);
    }
    if (connection.canSendData() && payloadSpace.byteLength > 0) {
      const room = Math.min(payloadSpace.byteLength, connection.peerCredit(), VSOCK_MAX_PAYLOAD);
      const result = this.sockets.read(connection.fd, payloadSpace.subarray(0, room));
      if (result > 0) {
        connection.txCnt = (connection.txCnt + result) % U32;
        this.stats.rxBytes += result;
        return this.packetOn(connection, VSOCK_OP.RW, 0, result);
      }
      connection.hostReadable = false;
      if (result === 0) {
        connection.hostEof = true;
        return this.packetOn(connection, VSOCK_OP.SHUTDOWN, VSOCK_SHUTDOWN.SEND);
      }
      if (result !== -ERRNO.EAGAIN) {
        this.hostFailure("read", result);
        this.remove(connection);
        this.stats.resetsSent++;
        return this.packet(VSOCK_OP.RST, connection.localPort, connection.peerPort);
      }
    }
    if (connection.needsCreditRequest()) {
      connection.creditRequested = true;
      return this.packetOn(connection, VSOCK_OP.CREDIT_REQUEST);
    }
    if (connection.needCreditUpdate) return this.packetOn(connection, VSOCK_OP.CREDIT_UPDATE);
    return undefined;
  }

  /** A packet on a live connection; it carries Volt's credit, so no separate update is owed after it. */
  private packetOn(connection: Connection, op: number, flags = 0, len = 0): VsockHeader {
    connection.lastFwdCntSent = connection.fwdCnt;
    connection.needCreditUpdate = false;
    const header = this.packet(op, connection.localPort, connection.peerPort, flags, len);
    header.bufAlloc = VSOCK_CONNECTION_BUFFER;
    header.fwdCnt = connection.fwdCnt;
    return header;
  }

  private packet(op: number, localPort: number, peerPort: number, flags = 0, len = 0): VsockHeader {
    return {
      srcCid: BigInt(VSOCK_HOST_CID),
      dstCid: this.guestCid,
      srcPort: localPort,
      dstPort: peerPort,
      len,
      type: VSOCK_TYPE_STREAM,
      op,
      flags,
      bufAlloc: 0,
      fwdCnt: 0,
    };
  }

  private updatePeerCredit(connection: Connection, header: VsockHeader): void {
    connection.peerBufAlloc = header.bufAlloc;
    connection.peerFwdCnt = header.fwdCnt;
    if (connection.peerCredit() > 0) {
      connection.creditRequested = false;
      if (connection.canSendData()) this.enqueue(connection);
    }
  }

  private guestConnect(header: VsockHeader): void {
    if (this.connections.size + this.handshakes.size >= VSOCK_MAX_CONNECTIONS) {
      this.stats.tableFull++;
      return this.queueRst(header.dstPort, header.srcPort);
    }
    const fd = this.sockets.connect(header.dstPort);
    if (fd < 0) {
      this.stats.guestConnectionsRefused++;
      this.lastHostError = `connect ${this.sockets.path}_${header.dstPort}: ${socketErrnoName(-fd)}`;
      return this.queueRst(header.dstPort, header.srcPort);
    }
    const connection = new Connection(fd, header.dstPort, header.srcPort, "established");
    this.add(connection);
    this.updatePeerCredit(connection, header);
    connection.needResponse = true;
    this.stats.guestConnections++;
    this.enqueue(connection);
  }

  private hostConnectAccepted(connection: Connection): void {
    connection.state = "established";
    this.stats.hostConnections++;
    connection.pending.push({ bytes: textEncoder.encode(`OK ${connection.localPort}\n`), offset: 0, counted: false });
    this.flush(connection);
  }

  /** Guest stream bytes for the host socket: written at once if it takes them, else held (within credit). */
  private toHost(connection: Connection, payload: readonly Uint8Array[], length: number): void {
    if (connection.buffered + length > VSOCK_CONNECTION_BUFFER) {
      this.stats.creditViolations++;
      return this.reset(connection);
    }
    connection.received = (connection.received + length) % U32;
    this.stats.txBytes += length;
    for (const piece of payload) {
      let offset = 0;
      if (connection.pending.length === 0) {
        const written = this.sockets.write(connection.fd, piece);
        if (written < 0 && written !== -ERRNO.EAGAIN) {
          this.hostFailure("write", written);
          return this.reset(connection);
        }
        offset = Math.max(0, written);
        connection.fwdCnt = (connection.fwdCnt + offset) % U32;
      }
      if (offset < piece.byteLength) {
        // Guest memory is only borrowed for this call: what the socket did not take is copied.
        connection.pending.push({ bytes: piece.slice(offset), offset: 0, counted: true });
        connection.buffered += piece.byteLength - offset;
      }
    }
    this.afterGuestBytes(connection);
  }

  /** Writes held bytes; on a write error the connection is reset. */
  private flush(connection: Connection): void {
    while (connection.pending.length > 0) {
      const head = connection.pending[0]!;
      const written = this.sockets.write(connection.fd, head.bytes.subarray(head.offset));
      if (written === -ERRNO.EAGAIN) break;
      if (written < 0) {
        this.hostFailure("write", written);
        return this.reset(connection);
      }
      head.offset += written;
      if (head.counted) {
        connection.buffered -= written;
        connection.fwdCnt = (connection.fwdCnt + written) % U32;
      }
      if (head.offset < head.bytes.byteLength) break;
      connection.pending.shift();
    }
    this.afterGuestBytes(connection);
  }

  /** After guest bytes moved: owe a credit update, pass on the guest's shutdown once everything is written. */
  private afterGuestBytes(connection: Connection): void {
    if (connection.closed) return;
    if (connection.pending.length === 0) {
      if (connection.peerShutdown === (VSOCK_SHUTDOWN.RCV | VSOCK_SHUTDOWN.SEND)) {
        // The guest closed: it waits for RST to finish its side.
        return this.reset(connection);
      }
      if (connection.peerShutdown & VSOCK_SHUTDOWN.SEND && !connection.hostWriteShut) {
        connection.hostWriteShut = true;
        this.sockets.shutdownWrite(connection.fd);
      }
    }
    // The guest's idea of Volt's free space: buf_alloc - (its tx_cnt - the fwd_cnt it last heard).
    const unheard = (connection.received - connection.lastFwdCntSent + U32) % U32;
    const guestSees = VSOCK_CONNECTION_BUFFER - unheard;
    if (connection.fwdCnt !== connection.lastFwdCntSent && guestSees < VSOCK_MAX_PAYLOAD) {
      connection.needCreditUpdate = true;
      this.enqueue(connection);
    }
  }

  private acceptConnections(): void {
    for (let i = 0; i < ACCEPTS_PER_ROUND; i++) {
      const fd = this.sockets.accept();
      if (fd === -ERRNO.EAGAIN) return;
      if (fd < 0) {
        // EMFILE and the like: the listener stays readable, so stop polling it until a descriptor frees up.
        this.hostFailure("accept", fd);
        this.acceptPaused = true;
        return;
      }
      if (this.connections.size + this.handshakes.size >= VSOCK_MAX_CONNECTIONS) {
        this.stats.tableFull++;
        this.sockets.close(fd);
        continue;
      }
      const handshake: Handshake = { fd, line: [] };
      this.handshakes.set(fd, handshake);
      // The client may have written its CONNECT line before we accepted.
      this.readConnectLine(handshake);
    }
  }

  private readConnectLine(handshake: Handshake): void {
    for (;;) {
      const result = this.sockets.read(handshake.fd, oneByte);
      if (result === -ERRNO.EAGAIN) return;
      if (result <= 0) {
        // The host program went away (or its socket failed) before asking for a port.
        if (result < 0) this.hostFailure("read", result);
        return this.dropHandshake(handshake);
      }
      const byte = oneByte[0]!;
      if (byte !== 0x0a) {
        handshake.line.push(byte);
        if (handshake.line.length >= VSOCK_CONNECT_LINE_MAX) return this.badConnectLine(handshake);
        continue;
      }
      const match = /^CONNECT ([0-9]{1,10})$/.exec(String.fromCharCode(...handshake.line));
      const port = match ? Number(match[1]) : NaN;
      if (!(port < U32)) return this.badConnectLine(handshake);
      this.handshakes.delete(handshake.fd);
      const connection = new Connection(handshake.fd, this.allocateHostPort(), port, "requesting");
      connection.needRequest = true;
      this.add(connection);
      this.enqueue(connection);
      return;
    }
  }

  private badConnectLine(handshake: Handshake): void {
    this.stats.badConnectLines++;
    this.dropHandshake(handshake);
  }

  private dropHandshake(handshake: Handshake): void {
    this.handshakes.delete(handshake.fd);
    this.sockets.close(handshake.fd);
    this.acceptPaused = false;
  }

  private allocateHostPort(): number {
    // At most VSOCK_MAX_CONNECTIONS ports are in use, so this ends quickly.
    while (this.localPortUse.has(this.nextHostPort)) this.advanceHostPort();
    const port = this.nextHostPort;
    this.advanceHostPort();
    return port;
  }

  private advanceHostPort(): void {
    this.nextHostPort = this.nextHostPort + 1 >= U32 ? VSOCK_FIRST_HOST_PORT : this.nextHostPort + 1;
  }

  private add(connection: Connection): void {
    this.connections.set(connection.key, connection);
    this.byFd.set(connection.fd, connection);
    this.localPortUse.set(connection.localPort, (this.localPortUse.get(connection.localPort) ?? 0) + 1);
  }

  /** Forgets a connection and closes its host socket; no packet is sent. */
  private remove(connection: Connection): void {
    if (connection.closed) return;
    connection.closed = true;
    this.connections.delete(connection.key);
    this.byFd.delete(connection.fd);
    const uses = (this.localPortUse.get(connection.localPort) ?? 1) - 1;
    if (uses > 0) this.localPortUse.set(connection.localPort, uses);
    else this.localPortUse.delete(connection.localPort);
    this.sockets.close(connection.fd);
    this.acceptPaused = false;
  }

  /** Closes a connection and tells the guest with RST. */
  private reset(connection: Connection): void {
    this.remove(connection);
    this.queueRst(connection.localPort, connection.peerPort);
  }

  private protocolError(header: VsockHeader): void {
    this.stats.protocolErrors++;
    this.reject(header);
  }

  /** An invalid packet: RST for its port pair (closing a connection there), unless it was an RST. */
  private reject(header: VsockHeader): void {
    if (header.op === VSOCK_OP.RST) return;
    const connection = this.connections.get(connectionKey(header.dstPort, header.srcPort));
    if (connection) this.remove(connection);
    this.queueRst(header.dstPort, header.srcPort);
  }

  private queueRst(localPort: number, peerPort: number): void {
    if (this.control.length >= VSOCK_MAX_PENDING_CONTROL) {
      this.stats.controlDropped++;
      return;
    }
    this.control.push([localPort, peerPort]);
    this.stats.resetsSent++;
  }

  private enqueue(connection: Connection): void {
    if (connection.queued || connection.closed) return;
    connection.queued = true;
    this.rxQueue.push(connection);
  }

  private hostFailure(call: string, result: number): void {
    this.stats.hostErrors++;
    this.lastHostError = `${call} on a vsock host socket (${this.sockets.path}): ${socketErrnoName(-result)}`;
  }
}

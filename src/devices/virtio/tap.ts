/**
 * The TAP backend of virtio-net: a Linux tap interface opened through
 * /dev/net/tun, whose file descriptor carries one Ethernet frame per read or
 * write, each preceded by a 12-byte virtio_net_hdr (IFF_VNET_HDR with
 * TUNSETVNETHDRSZ 12), so checksum and segmentation offloads pass between the
 * guest and the host kernel unchanged and no header is rebuilt in JS.
 *
 * Opening a tap (`TapDevice.open`):
 * - TUNSETIFF attaches to an existing tap if this process may use it (it owns
 *   it, is in its group, or has CAP_NET_ADMIN), or creates it if it does not
 *   exist and the process has CAP_NET_ADMIN. A tap Volt creates is not
 *   persistent: the kernel removes it when Volt closes it, that is when the
 *   VM ends (and in between Volt configures nothing on the host side: the
 *   interface starts down, without addresses or bridge, and until someone
 *   brings it up the kernel refuses the guest's packets with EIO). For a tap that
 *   outlives Volt, or that an unprivileged user may open, create it
 *   beforehand: `ip tuntap add NAME mode tap user USER` (TUNSETPERSIST).
 * - The tap must be single-queue (no IFF_MULTI_QUEUE) and a tap, not a tun:
 *   TUNSETIFF refuses otherwise (EINVAL), and a single-queue tap takes one
 *   user at a time (EBUSY).
 * - The descriptor is non-blocking: the I/O worker polls it and never waits
 *   in read or write.
 * - Which offloads the kernel may put in packets Volt reads (TUNSETOFFLOAD) is
 *   probed once at open, then left at none (plain, checksummed frames) until
 *   a driver negotiates what it accepts.
 *
 * Every open error names the tap and says what would fix it.
 */
import { existsSync } from "node:fs";
import { ERRNO, SyscallError, errnoName } from "../../ffi/errno.ts";
import {
  IFF,
  IFNAMSIZ,
  IovecArray,
  O_NONBLOCK,
  TUN_F,
  TUN_IOCTL,
  ifreq,
  readRaw,
} from "../../ffi/net-syscalls.ts";
import { O_CLOEXEC, O_RDWR, close, ioctl, ioctlBuffer, openPath } from "../../ffi/syscalls.ts";
import { StructView } from "../../kvm/struct.ts";

/** Size of the header before every frame: struct virtio_net_hdr_v1 (with num_buffers). */
export const VNET_HDR_SIZE = 12;

/** Offloads Volt lets the kernel hand the guest when the driver accepts them (no UFO: see net.ts). */
export const TAP_GUEST_OFFLOADS = TUN_F.TUN_F_CSUM | TUN_F.TUN_F_TSO4 | TUN_F.TUN_F_TSO6 | TUN_F.TUN_F_TSO_ECN;

export const TUN_DEVICE_PATH = "/dev/net/tun";

/**
 * What VirtioNet needs of a packet backend; TapDevice is the real one, and
 * tests use fakes. Packets are a 12-byte virtio_net_hdr followed by a frame.
 * The packet calls return the kernel's raw result: a byte count, or -errno
 * (-EAGAIN: nothing to read, or no room to write, right now).
 */
export interface NetBackend {
  /** The interface name, for messages. */
  readonly name: string;
  /** The descriptor the I/O worker polls (POLLIN: a packet is waiting; POLLOUT: a write would not block). */
  readonly fd: number;
  /** TUN_F_* offloads the backend can accept with setOffloads (0: none; the guest then gets plain frames). */
  readonly offloadCapabilities: number;
  /**
   * Reads one packet into `into`. Returns the packet's length, which is more
   * than `into` holds when the packet was truncated, or -errno.
   */
  readPacket(into: Uint8Array): number;
  /** Writes the concatenation of `parts` as one packet; returns the bytes written or -errno. */
  writePacket(parts: readonly Uint8Array[]): number;
  /** TUNSETOFFLOAD: which TUN_F_* offloads the kernel may use in packets it hands over. Throws on failure. */
  setOffloads(flags: number): void;
  close(): void;
}

export class TapError extends Error {
  override name = "TapError";
}

export interface TapDeviceOptions {
  /** TUN_F_* offloads setOffloads may enable (what `open` probed). */
  readonly offloadCapabilities?: number;
  /** Whether `open` created the interface (it then disappears when the descriptor is closed). */
  readonly created?: boolean;
}

/** An open tap (or, in tests, any packet-preserving descriptor such as a SOCK_SEQPACKET socket). */
export class TapDevice implements NetBackend {
  readonly name: string;
  readonly offloadCapabilities: number;
  readonly created: boolean;
  private descriptor: number;
  private readonly iovecs = new IovecArray();
  /** Pieces beyond UIO_MAXIOV are joined here (a packet is at most 64 KiB or so). */
  private joined: Uint8Array | undefined;

  /**
   * Adopts an open, non-blocking descriptor; no ioctl is made. The device
   * closes it in `close`.
   */
  constructor(fd: number, name: string, options: TapDeviceOptions = {}) {
    this.descriptor = fd;
    this.name = name;
    this.offloadCapabilities = options.offloadCapabilities ?? 0;
    this.created = options.created ?? false;
  }

  /** Opens (or, with CAP_NET_ADMIN, creates) tap `name` for virtio-net; throws TapError naming it. */
  static open(name: string): TapDevice {
    validateTapName(name);
    const existed = existsSync(`/sys/class/net/${name}`);
    let fd: number;
    try {
      fd = openPath(TUN_DEVICE_PATH, O_RDWR | O_CLOEXEC | O_NONBLOCK);
    } catch (error) {
      throw new TapError(`tap ${name}: cannot open ${TUN_DEVICE_PATH}: ${describeOpenError(error)}`);
    }
    try {
      const request = new StructView(ifreq);
      request.bytes.set(new TextEncoder().encode(name));
      request.set("ifr_flags", IFF.IFF_TAP | IFF.IFF_NO_PI | IFF.IFF_VNET_HDR);
      attempt(name, "TUNSETIFF", () => ioctlBuffer(fd, TUN_IOCTL.TUNSETIFF, request.bytes, name), setIffHint);
      attempt(name, "TUNSETVNETHDRSZ", () => ioctlBuffer(fd, TUN_IOCTL.TUNSETVNETHDRSZ, int32(VNET_HDR_SIZE), name));
      // The header's fields are little-endian (virtio 1.x). That is already the
      // default on x86-64; say so anyway, as QEMU does. Old kernels lack it.
      try {
        ioctlBuffer(fd, TUN_IOCTL.TUNSETVNETLE, int32(1), name);
      } catch {
        // Harmless on a little-endian host.
      }
      let offloadCapabilities = 0;
      try {
        ioctl(fd, TUN_IOCTL.TUNSETOFFLOAD, TAP_GUEST_OFFLOADS, name);
        offloadCapabilities = TAP_GUEST_OFFLOADS;
      } catch {
        // The guest then gets plain, checksummed frames.
      }
      attempt(name, "TUNSETOFFLOAD", () => ioctl(fd, TUN_IOCTL.TUNSETOFFLOAD, 0, name));
      return new TapDevice(fd, name, { offloadCapabilities, created: !existed });
    } catch (error) {
      close(fd);
      throw error;
    }
  }

  get fd(): number {
    return this.descriptor;
  }

  readPacket(into: Uint8Array): number {
    if (this.descriptor < 0) return -ERRNO.EBADF;
    return readRaw(this.descriptor, into);
  }

  writePacket(parts: readonly Uint8Array[]): number {
    if (this.descriptor < 0) return -ERRNO.EBADF;
    const iovecs = this.iovecs;
    iovecs.clear();
    let fits = true;
    for (const part of parts) {
      if (!iovecs.push(part)) {
        fits = false;
        break;
      }
    }
    if (!fits) {
      // More pieces than one writev takes: join them (rare: Linux sends at most ~20).
      const total = parts.reduce((sum, part) => sum + part.byteLength, 0);
      if (!this.joined || this.joined.byteLength < total) this.joined = new Uint8Array(total);
      let at = 0;
      for (const part of parts) {
        this.joined.set(part, at);
        at += part.byteLength;
      }
      iovecs.clear();
      iovecs.push(this.joined.subarray(0, total));
    }
    if (iovecs.length === 0) return 0;
    return iovecs.writev(this.descriptor);
  }

  setOffloads(flags: number): void {
    if ((flags & ~this.offloadCapabilities) !== 0) {
      throw new TapError(`tap ${this.name}: offloads 0x${flags.toString(16)} were not offered (0x${this.offloadCapabilities.toString(16)} can be)`);
    }
    attempt(this.name, "TUNSETOFFLOAD", () => ioctl(this.descriptor, TUN_IOCTL.TUNSETOFFLOAD, flags, this.name));
  }

  /** Closes the descriptor; a tap Volt created disappears with it. */
  close(): void {
    if (this.descriptor < 0) return;
    const fd = this.descriptor;
    this.descriptor = -1;
    close(fd);
  }
}

/** Interface names as the kernel accepts them (dev_valid_name): 1..15 bytes, no '/', ':', or white space; not "." or "..". */
export function validateTapName(name: string): void {
  const bytes = new TextEncoder().encode(name).byteLength;
  let problem: string | undefined;
  if (bytes === 0) problem = "is empty";
  else if (bytes >= IFNAMSIZ) problem = `is ${bytes} bytes long; interface names have at most ${IFNAMSIZ - 1}`;
  else if (name === "." || name === "..") problem = "is not an interface name";
  else if (/[/:\s]/.test(name)) problem = "contains '/', ':' or white space";
  else if (name.includes("%")) problem = "contains '%' (Volt does not let the kernel choose the name)";
  else if (!/^[\x21-\x7e]+$/.test(name)) problem = "must be printable ASCII";
  if (problem) throw new TapError(`tap ${JSON.stringify(name)}: the name ${problem}`);
}

function int32(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setInt32(0, value, true);
  return bytes;
}

/** Runs one ioctl of opening; a failure becomes a TapError naming the tap, the request and a hint. */
function attempt(name: string, request: string, action: () => unknown, hint: (errno: number) => string = () => ""): void {
  try {
    action();
  } catch (error) {
    if (!(error instanceof SyscallError)) throw error;
    const extra = hint(error.errno);
    throw new TapError(`tap ${name}: ${request} failed: ${errnoName(error.errno)}${extra ? ` (${extra})` : ""}`);
  }
}

function setIffHint(errno: number): string {
  switch (errno) {
    case ERRNO.EPERM:
    case ERRNO.EACCES:
      return "needs CAP_NET_ADMIN, or an existing tap this user may open: ip tuntap add NAME mode tap user USER";
    case ERRNO.EBUSY:
      return "it is already open: a single-queue tap takes one user at a time";
    case ERRNO.EINVAL:
      return "an interface of this name exists but is not a single-queue tap (a tun, a multi_queue tap, or not tun/tap at all)";
    default:
      return "";
  }
}

function describeOpenError(error: unknown): string {
  if (!(error instanceof SyscallError)) return error instanceof Error ? error.message : String(error);
  const name = errnoName(error.errno);
  switch (error.errno) {
    case ERRNO.ENOENT:
    case ERRNO.ENODEV:
    case ERRNO.ENXIO:
      return `${name} (the tun driver is missing: modprobe tun)`;
    case ERRNO.EPERM:
    case ERRNO.EACCES:
      return `${name} (needs CAP_NET_ADMIN or an existing tap owned by this user, and read-write access to ${TUN_DEVICE_PATH})`;
    default:
      return name;
  }
}

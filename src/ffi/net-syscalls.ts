/**
 * The system calls and kernel constants virtio-net's TAP backend needs, in the
 * style of syscalls.ts: x86-64 numbers, rawSyscall, and `check` for the calls
 * that throw SyscallError. The packet path (read, writev) instead returns the
 * kernel's raw result (-errno on failure), because EAGAIN is its normal flow
 * control and throwing for it on every full or empty queue would be costly.
 *
 * Every number here is compiled against <sys/syscall.h>, <linux/if_tun.h>,
 * <net/if.h>, <sys/socket.h>, <poll.h>, <fcntl.h> and <sys/uio.h> by
 * test/unit/net-abi.test.ts.
 */
import { ptr } from "bun:ffi";
import { defineStruct } from "../kvm/struct.ts";
import { SyscallError, errnoName } from "./errno.ts";
import { rawSyscall } from "./shim.ts";

export const NET_SYSCALL_NUMBERS = {
  read: 0,
  write: 1,
  readv: 19,
  writev: 20,
  socketpair: 53,
  preadv: 295,
  pwritev: 296,
} as const;

/** TUN/TAP ioctls (<linux/if_tun.h>); the `_IOW('T', n, int)` encodings for x86-64. */
export const TUN_IOCTL = {
  TUNSETIFF: 0x400454ca,
  TUNSETPERSIST: 0x400454cb,
  TUNGETFEATURES: 0x800454cf,
  TUNSETOFFLOAD: 0x400454d0,
  TUNGETIFF: 0x800454d2,
  TUNGETVNETHDRSZ: 0x800454d7,
  TUNSETVNETHDRSZ: 0x400454d8,
  TUNSETVNETLE: 0x400454dc,
} as const;

/** `ifr_flags` for TUNSETIFF (<linux/if_tun.h>). */
export const IFF = {
  IFF_TUN: 0x0001,
  IFF_TAP: 0x0002,
  IFF_MULTI_QUEUE: 0x0100,
  IFF_NO_PI: 0x1000,
  IFF_VNET_HDR: 0x4000,
} as const;

/** TUNSETOFFLOAD bits: what the kernel may hand over in packets read from the tap. */
export const TUN_F = {
  TUN_F_CSUM: 0x01,
  TUN_F_TSO4: 0x02,
  TUN_F_TSO6: 0x04,
  TUN_F_TSO_ECN: 0x08,
  TUN_F_UFO: 0x10,
} as const;

export const IFNAMSIZ = 16;

/**
 * struct ifreq (<net/if.h>), only the members TUNSETIFF uses: the interface
 * name and the flags, which share the union after it. `ifr_name` and
 * `ifr_flags` are C macros for `ifr_ifrn.ifrn_name` and `ifr_ifru.ifru_flags`.
 */
export const ifreq = defineStruct("struct ifreq", 40, {
  ifr_name: [0, "u8", IFNAMSIZ],
  ifr_flags: [16, "u16"],
});

/** Other constants: open(2), poll(2), socket(2), iovec limits. */
export const NET_CONSTANTS = {
  O_NONBLOCK: 0x800,
  POLLNVAL: 0x20,
  AF_UNIX: 1,
  SOCK_SEQPACKET: 5,
  SOCK_NONBLOCK: 0x800,
  SOCK_CLOEXEC: 0x80000,
  /** Most iovecs one readv/writev takes (<sys/uio.h>; IOV_MAX in <limits.h>). */
  UIO_MAXIOV: 1024,
} as const;

/** errno values the packet path tells apart that errno.ts does not list. */
export const NET_ERRNO = {
  /** A tap descriptor whose interface was deleted. */
  EBADFD: 77,
} as const;

/** errnoName, knowing NET_ERRNO too. */
export function netErrnoName(errno: number): string {
  return errno === NET_ERRNO.EBADFD ? "EBADFD" : errnoName(errno);
}

export const O_NONBLOCK = NET_CONSTANTS.O_NONBLOCK;
export const POLLNVAL = NET_CONSTANTS.POLLNVAL;
export const UIO_MAXIOV = NET_CONSTANTS.UIO_MAXIOV;

function check(call: string, result: number, context?: string): number {
  if (result < 0 && result > -4096) throw new SyscallError(call, -result, context);
  return result;
}

/** read(2) into `buffer`: bytes read, or -errno (-EAGAIN on an empty non-blocking descriptor). */
export function readRaw(fd: number, buffer: Uint8Array): number {
  if (buffer.byteLength === 0) return 0;
  return rawSyscall(NET_SYSCALL_NUMBERS.read, fd, ptr(buffer), buffer.byteLength);
}

/** write(2) of `buffer`: bytes written, or -errno. */
export function writeRaw(fd: number, buffer: Uint8Array): number {
  if (buffer.byteLength === 0) return rawSyscall(NET_SYSCALL_NUMBERS.write, fd, 0, 0);
  return rawSyscall(NET_SYSCALL_NUMBERS.write, fd, ptr(buffer), buffer.byteLength);
}

/**
 * A reusable struct iovec array: `set` the pieces (live views, e.g. of guest
 * memory: the kernel reads or fills them in place), then `writev` / `readv`.
 */
export class IovecArray {
  readonly capacity: number;
  private readonly table: BigUint64Array;
  private readonly tableAddress: number;
  private used = 0;

  constructor(capacity = UIO_MAXIOV) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > UIO_MAXIOV) {
      throw new RangeError(`an iovec array holds 1..${UIO_MAXIOV} entries, not ${capacity}`);
    }
    this.capacity = capacity;
    this.table = new BigUint64Array(capacity * 2);
    this.tableAddress = ptr(this.table);
  }

  get length(): number {
    return this.used;
  }

  clear(): void {
    this.used = 0;
  }

  /** Appends `view` (empty views are skipped); false when the array is full. */
  push(view: Uint8Array): boolean {
    if (view.byteLength === 0) return true;
    if (this.used === this.capacity) return false;
    this.table[this.used * 2] = BigInt(ptr(view));
    this.table[this.used * 2 + 1] = BigInt(view.byteLength);
    this.used++;
    return true;
  }

  /** writev(2) of the pieces as one write (one packet on a tap): bytes written, or -errno. */
  writev(fd: number): number {
    return rawSyscall(NET_SYSCALL_NUMBERS.writev, fd, this.tableAddress, this.used);
  }

  /** readv(2) into the pieces: bytes read, or -errno. */
  readv(fd: number): number {
    return rawSyscall(NET_SYSCALL_NUMBERS.readv, fd, this.tableAddress, this.used);
  }

  /** preadv(2) at `position` (disk images): bytes read (0 at end of file), or -errno. */
  preadv(fd: number, position: number): number {
    // x86-64 takes the offset as (low, high) words; the high one only matters on 32-bit kernels.
    return rawSyscall(NET_SYSCALL_NUMBERS.preadv, fd, this.tableAddress, this.used, position, 0);
  }

  /** pwritev(2) at `position`: bytes written, or -errno. */
  pwritev(fd: number, position: number): number {
    return rawSyscall(NET_SYSCALL_NUMBERS.pwritev, fd, this.tableAddress, this.used, position, 0);
  }
}

/** A connected pair of sockets (AF_UNIX): SOCK_SEQPACKET keeps packet boundaries, as a tap does. */
export function socketpair(domain: number, type: number, protocol = 0): [number, number] {
  const fds = new Int32Array(2);
  check("socketpair", rawSyscall(NET_SYSCALL_NUMBERS.socketpair, domain, type, protocol, ptr(fds)));
  return [fds[0]!, fds[1]!];
}

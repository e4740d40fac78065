/**
 * The socket system calls behind virtio-vsock's host side (AF_UNIX stream
 * sockets), in the style of syscalls.ts: numbers are x86-64's, and every
 * number, flag and errno here is compared with the C headers by
 * test/unit/vsock-abi.test.ts.
 *
 * Two kinds of wrapper:
 * - setup calls (socket, bind, listen, unlink) throw SocketError, which names
 *   the call, the path and the errno;
 * - data-path calls (`...Raw`) return the kernel's result, -errno on failure,
 *   because on a non-blocking socket EAGAIN, EPIPE or ECONNREFUSED are
 *   ordinary outcomes for the I/O worker to act on, not exceptions.
 *
 * Sending uses sendto(MSG_NOSIGNAL) rather than write(2): a host program that
 * closes its end must cost Volt an EPIPE, not a SIGPIPE.
 */
import { ptr } from "bun:ffi";
import { SyscallError, errnoName } from "./errno.ts";
import { rawSyscall } from "./shim.ts";

export const SOCKET_SYSCALL_NUMBERS = {
  read: 0,
  write: 1,
  close: 3,
  socket: 41,
  connect: 42,
  sendto: 44,
  recvfrom: 45,
  shutdown: 48,
  bind: 49,
  listen: 50,
  unlink: 87,
  accept4: 288,
} as const;

/** <sys/socket.h> values (x86-64 Linux). */
export const SOCKET_CONSTANTS = {
  AF_UNIX: 1,
  SOCK_STREAM: 1,
  SOCK_NONBLOCK: 0x800,
  SOCK_CLOEXEC: 0x80000,
  SHUT_RD: 0,
  SHUT_WR: 1,
  SHUT_RDWR: 2,
  MSG_DONTWAIT: 0x40,
  MSG_NOSIGNAL: 0x4000,
} as const;

/** The errnos sockets add to those errno.ts names. */
export const SOCKET_ERRNO = {
  EAGAIN: 11,
  EPIPE: 32,
  ENAMETOOLONG: 36,
  ENOTSOCK: 88,
  EADDRINUSE: 98,
  ECONNABORTED: 103,
  ECONNRESET: 104,
  ENOTCONN: 107,
  ECONNREFUSED: 111,
  EINPROGRESS: 115,
} as const;

/** struct sockaddr_un: sun_family, then a NUL-terminated path of at most 107 bytes. */
export const SOCKADDR_UN_SIZE = 110;
export const SUN_PATH_OFFSET = 2;
export const SUN_PATH_BYTES = 108;

const SOCKET_NAME_BY_NUMBER = new Map<number, string>(Object.entries(SOCKET_ERRNO).map(([name, value]) => [value, name]));

/** errno's name, covering the socket errnos too ("ECONNREFUSED" rather than "errno 111"). */
export function socketErrnoName(errno: number): string {
  return SOCKET_NAME_BY_NUMBER.get(errno) ?? errnoName(errno);
}

/** A failed socket call; `errno` and `is()` as for SyscallError, with socket errnos named in the message. */
export class SocketError extends SyscallError {
  constructor(call: string, errno: number, context?: string) {
    super(call, errno, context);
    this.name = "SocketError";
    this.message = `${call}${context ? ` (${context})` : ""} failed: ${socketErrnoName(errno)}`;
  }
}

function check(call: string, result: number, context?: string): number {
  if (result < 0 && result > -4096) throw new SocketError(call, -result, context);
  return result;
}

/** The path's bytes as sun_path needs them; RangeError when it does not fit (107 bytes + NUL) or holds a NUL. */
export function sockaddrUn(path: string): Uint8Array {
  const name = new TextEncoder().encode(path);
  if (name.byteLength === 0 || name.includes(0)) throw new RangeError(`socket path ${JSON.stringify(path)} is empty or contains a NUL byte`);
  if (name.byteLength >= SUN_PATH_BYTES) {
    throw new RangeError(`socket path ${path} is ${name.byteLength} bytes; a Unix socket path holds at most ${SUN_PATH_BYTES - 1}`);
  }
  const address = new Uint8Array(SOCKADDR_UN_SIZE);
  new DataView(address.buffer).setUint16(0, SOCKET_CONSTANTS.AF_UNIX, true);
  address.set(name, SUN_PATH_OFFSET);
  return address;
}

/** socket(2); `type` may carry SOCK_NONBLOCK | SOCK_CLOEXEC. */
export function socket(domain: number, type: number, protocol = 0): number {
  return check("socket", rawSyscall(SOCKET_SYSCALL_NUMBERS.socket, domain, type, protocol));
}

/** socket(2) returning -errno (EMFILE at run time is the caller's to handle). */
export function socketRaw(domain: number, type: number, protocol = 0): number {
  return rawSyscall(SOCKET_SYSCALL_NUMBERS.socket, domain, type, protocol);
}

export function bindUnix(fd: number, path: string): void {
  const address = sockaddrUn(path);
  check("bind", rawSyscall(SOCKET_SYSCALL_NUMBERS.bind, fd, ptr(address), address.byteLength), path);
}

export function listen(fd: number, backlog: number, context?: string): void {
  check("listen", rawSyscall(SOCKET_SYSCALL_NUMBERS.listen, fd, backlog), context);
}

/** connect(2) to a Unix socket path: 0, or -errno (-ENAMETOOLONG for a path sun_path cannot hold). */
export function connectUnixRaw(fd: number, path: string): number {
  let address: Uint8Array;
  try {
    address = sockaddrUn(path);
  } catch {
    return -SOCKET_ERRNO.ENAMETOOLONG;
  }
  return rawSyscall(SOCKET_SYSCALL_NUMBERS.connect, fd, ptr(address), address.byteLength);
}

export function connectUnix(fd: number, path: string): void {
  check("connect", connectUnixRaw(fd, path), path);
}

/** accept4(2) without the peer address: the new descriptor, or -errno (-EAGAIN when nobody waits). */
export function accept4Raw(fd: number, flags: number): number {
  return rawSyscall(SOCKET_SYSCALL_NUMBERS.accept4, fd, 0, 0, flags);
}

/** read(2) into `into`: bytes read (0 at end of stream), or -errno. */
export function readRaw(fd: number, into: Uint8Array): number {
  if (into.byteLength === 0) return 0;
  return rawSyscall(SOCKET_SYSCALL_NUMBERS.read, fd, ptr(into), into.byteLength);
}

/** write(2): bytes written, or -errno. For sockets prefer `sendRaw`, which cannot raise SIGPIPE. */
export function writeRaw(fd: number, data: Uint8Array): number {
  if (data.byteLength === 0) return 0;
  return rawSyscall(SOCKET_SYSCALL_NUMBERS.write, fd, ptr(data), data.byteLength);
}

/** send(2) as sendto(fd, data, flags, NULL, 0): bytes sent, or -errno. */
export function sendRaw(fd: number, data: Uint8Array, flags: number = SOCKET_CONSTANTS.MSG_NOSIGNAL): number {
  if (data.byteLength === 0) return 0;
  return rawSyscall(SOCKET_SYSCALL_NUMBERS.sendto, fd, ptr(data), data.byteLength, flags, 0, 0);
}

/** shutdown(2): 0 or -errno. */
export function shutdownRaw(fd: number, how: number): number {
  return rawSyscall(SOCKET_SYSCALL_NUMBERS.shutdown, fd, how);
}

/** close(2): 0 or -errno (the descriptor is gone either way). */
export function closeRaw(fd: number): number {
  return rawSyscall(SOCKET_SYSCALL_NUMBERS.close, fd);
}

export function unlink(path: string): void {
  check("unlink", unlinkRaw(path), path);
}

/** unlink(2): 0 or -errno. */
export function unlinkRaw(path: string): number {
  const name = new TextEncoder().encode(`${path}\0`);
  return rawSyscall(SOCKET_SYSCALL_NUMBERS.unlink, ptr(name));
}

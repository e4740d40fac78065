/**
 * The system calls Volt makes itself, as typed functions that throw
 * SyscallError. Numbers are x86-64's (checked against <sys/syscall.h> by the
 * ABI test). Plain file work stays with Bun's fs APIs; this is for what they
 * do not offer: ioctl, mmap over a chosen address, memfd, thread ids, signals.
 */
import { ptr } from "bun:ffi";
import { SyscallError } from "./errno.ts";
import { rawSyscall } from "./shim.ts";

export const SYSCALL_NUMBERS = {
  read: 0,
  write: 1,
  close: 3,
  lseek: 8,
  mmap: 9,
  munmap: 11,
  ioctl: 16,
  getpid: 39,
  ftruncate: 77,
  gettid: 186,
  tgkill: 234,
  openat: 257,
  ppoll: 271,
  fallocate: 285,
  eventfd2: 290,
  timerfd_create: 283,
  timerfd_settime: 286,
  fcntl: 72,
  memfd_create: 319,
} as const;

export const PROT_READ = 0x1;
export const PROT_WRITE = 0x2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MFD_CLOEXEC = 0x1;
export const O_RDONLY = 0x0;
export const O_RDWR = 0x2;
export const O_CLOEXEC = 0x80000;
export const EFD_CLOEXEC = 0x80000;
export const EFD_NONBLOCK = 0x800;
export const POLLIN = 0x1;
export const F_DUPFD_CLOEXEC = 1030;
export const CLOCK_MONOTONIC = 1;
export const TFD_CLOEXEC = 0x80000;
export const TFD_NONBLOCK = 0x800;
const AT_FDCWD = -100;

function check(call: string, result: number, context?: string): number {
  if (result < 0 && result > -4096) throw new SyscallError(call, -result, context);
  return result;
}

function cString(text: string): Uint8Array {
  return new TextEncoder().encode(`${text}\0`);
}

export function openPath(path: string, flags: number): number {
  const name = cString(path);
  return check("open", rawSyscall(SYSCALL_NUMBERS.openat, AT_FDCWD, ptr(name), flags, 0), path);
}

export function close(fd: number): void {
  check("close", rawSyscall(SYSCALL_NUMBERS.close, fd));
}

/** ioctl with an integer (or no) argument. */
export function ioctl(fd: number, request: number, arg: number | bigint = 0, context?: string): number {
  return check("ioctl", rawSyscall(SYSCALL_NUMBERS.ioctl, fd, request, arg), context);
}

/** ioctl whose argument points at a buffer the kernel reads and/or writes. */
export function ioctlBuffer(fd: number, request: number, buffer: Uint8Array | DataView, context?: string): number {
  return check("ioctl", rawSyscall(SYSCALL_NUMBERS.ioctl, fd, request, ptr(buffer)), context);
}

/** ioctl returning the raw result, for callers that expect and handle some errnos (e.g. EINTR). */
export function ioctlRaw(fd: number, request: number, arg: number | bigint = 0): number {
  return rawSyscall(SYSCALL_NUMBERS.ioctl, fd, request, arg);
}

export function mmap(address: number, length: number, prot: number, flags: number, fd: number, offset = 0, context?: string): number {
  return check("mmap", rawSyscall(SYSCALL_NUMBERS.mmap, address, length, prot, flags, fd, offset), context);
}

export function munmap(address: number, length: number): void {
  check("munmap", rawSyscall(SYSCALL_NUMBERS.munmap, address, length));
}

export function memfdCreate(name: string, flags = MFD_CLOEXEC): number {
  const cName = cString(name);
  return check("memfd_create", rawSyscall(SYSCALL_NUMBERS.memfd_create, ptr(cName), flags), name);
}

export function ftruncate(fd: number, length: number): void {
  check("ftruncate", rawSyscall(SYSCALL_NUMBERS.ftruncate, fd, length));
}

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const ENXIO = 6;

/**
 * The [start, end) byte ranges of `fd` within [from, to) that hold data, by
 * SEEK_DATA/SEEK_HOLE: on a memfd (tmpfs), pages never written are holes and
 * read as zeros, so what lies outside the ranges needs no reading at all.
 */
export function dataRanges(fd: number, from: number, to: number): [number, number][] {
  const ranges: [number, number][] = [];
  let at = from;
  while (at < to) {
    const start = rawSyscall(SYSCALL_NUMBERS.lseek, fd, at, SEEK_DATA);
    if (start === -ENXIO) break; // nothing but holes from `at` to the end of the file
    check("lseek", start, "SEEK_DATA");
    if (start >= to) break;
    const hole = check("lseek", rawSyscall(SYSCALL_NUMBERS.lseek, fd, start, SEEK_HOLE), "SEEK_HOLE");
    ranges.push([start, Math.min(hole, to)]);
    at = hole;
  }
  return ranges;
}

export function getpid(): number {
  return rawSyscall(SYSCALL_NUMBERS.getpid);
}

export function gettid(): number {
  return rawSyscall(SYSCALL_NUMBERS.gettid);
}

export function tgkill(pid: number, tid: number, signal: number): void {
  check("tgkill", rawSyscall(SYSCALL_NUMBERS.tgkill, pid, tid, signal));
}

/** fallocate(2): `mode` is a FALLOC_FL_* mask (<linux/falloc.h>); offset and length are bytes. */
export function fallocate(fd: number, mode: number, offset: number, length: number, context?: string): void {
  check("fallocate", rawSyscall(SYSCALL_NUMBERS.fallocate, fd, mode, offset, length), context);
}

/** An eventfd: KVM's ioeventfds and irqfds, and Volt's own wake-ups between threads. */
export function eventfd(flags = EFD_CLOEXEC | EFD_NONBLOCK): number {
  return check("eventfd2", rawSyscall(SYSCALL_NUMBERS.eventfd2, 0, flags));
}

const eventfdValue = new BigUint64Array(1);

/** Adds one to an eventfd's counter (wakes whoever polls it). */
export function signalEventfd(fd: number): void {
  eventfdValue[0] = 1n;
  check("write", rawSyscall(SYSCALL_NUMBERS.write, fd, ptr(eventfdValue), 8), "eventfd");
}

/** Reads and clears a non-blocking eventfd's counter; 0 when it was not signalled. */
export function drainEventfd(fd: number): number {
  const result = rawSyscall(SYSCALL_NUMBERS.read, fd, ptr(eventfdValue), 8);
  if (result === -11) return 0; // EAGAIN
  check("read", result, "eventfd");
  return Number(eventfdValue[0]);
}

export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;

/**
 * ppoll(2): blocks until one of `entries` has one of its `events` (or an
 * error/hang-up), or `timeoutMs` passes (negative: no limit). Returns each
 * entry's revents; EINTR counts as nothing ready.
 */
export function poll(entries: readonly { fd: number; events: number }[], timeoutMs: number): number[] {
  const table = new Int32Array(entries.length * 2);
  entries.forEach((entry, i) => {
    table[i * 2] = entry.fd;
    table[i * 2 + 1] = entry.events & 0xffff; // events (u16); revents (u16) above it starts at 0
  });
  const timespec = new BigInt64Array(2);
  if (timeoutMs >= 0) {
    timespec[0] = BigInt(Math.floor(timeoutMs / 1000));
    timespec[1] = BigInt(Math.round((timeoutMs % 1000) * 1e6));
  }
  const result = rawSyscall(SYSCALL_NUMBERS.ppoll, ptr(table), entries.length, timeoutMs >= 0 ? ptr(timespec) : 0, 0, 8);
  if (result === -4) return entries.map(() => 0); // EINTR
  check("ppoll", result);
  return entries.map((_, i) => table[i * 2 + 1]! >>> 16);
}

/** Which of `fds` are readable within `timeoutMs` (see `poll`). */
export function pollReadable(fds: readonly number[], timeoutMs: number): boolean[] {
  return poll(
    fds.map((fd) => ({ fd, events: POLLIN })),
    timeoutMs,
  ).map((revents) => (revents & POLLIN) !== 0);
}

/** A second descriptor for the same open file (close-on-exec), so two owners can each close their own. */
export function duplicateFd(fd: number): number {
  return check("fcntl", rawSyscall(SYSCALL_NUMBERS.fcntl, fd, F_DUPFD_CLOEXEC, 0), "F_DUPFD_CLOEXEC");
}

/** A non-blocking monotonic timerfd: readable once armed time has passed (poll it with the device's descriptors). */
export function timerfd(): number {
  return check("timerfd_create", rawSyscall(SYSCALL_NUMBERS.timerfd_create, CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
}

/** Arms `fd` to fire once after `delayMs` (0 disarms). */
export function armTimerfd(fd: number, delayMs: number): void {
  const spec = new BigInt64Array(4); // it_interval {sec, nsec}, it_value {sec, nsec}
  const ns = BigInt(Math.max(0, Math.ceil(delayMs * 1e6)));
  spec[2] = ns / 1_000_000_000n;
  spec[3] = ns % 1_000_000_000n;
  // A zero it_value would disarm; an armed timer needs at least 1 ns.
  if (delayMs > 0 && ns === 0n) spec[3] = 1n;
  check("timerfd_settime", rawSyscall(SYSCALL_NUMBERS.timerfd_settime, fd, 0, ptr(spec), 0));
}

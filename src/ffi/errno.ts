/** Linux errno values Volt reports by name (x86-64; checked against <errno.h> by the ABI test). */
export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  ENOTDIR: 20,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  ENOSPC: 28,
  ENOSYS: 38,
  EOPNOTSUPP: 95,
} as const;

export type ErrnoName = keyof typeof ERRNO;

const NAME_BY_NUMBER = new Map<number, ErrnoName>(
  (Object.entries(ERRNO) as [ErrnoName, number][]).map(([name, value]) => [value, name]),
);

export function errnoName(errno: number): string {
  return NAME_BY_NUMBER.get(errno) ?? `errno ${errno}`;
}

/** A failed system call: names the call, what it was for, and the errno. */
export class SyscallError extends Error {
  readonly errno: number;
  readonly call: string;

  constructor(call: string, errno: number, context?: string) {
    super(`${call}${context ? ` (${context})` : ""} failed: ${errnoName(errno)}`);
    this.name = "SyscallError";
    this.call = call;
    this.errno = errno;
  }

  is(name: ErrnoName): boolean {
    return this.errno === ERRNO[name];
  }
}

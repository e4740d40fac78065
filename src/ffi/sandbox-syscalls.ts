/**
 * The system calls and kernel constants behind Volt's sandbox (src/sandbox/):
 * prctl, seccomp, the three Landlock calls and execve, in the style of
 * syscalls.ts (x86-64 numbers, rawSyscall, `check` throwing SyscallError).
 *
 * Numbers, flags and struct layouts are compiled against <sys/syscall.h>,
 * <sys/prctl.h>, <linux/seccomp.h>, <linux/filter.h>, <linux/audit.h> and
 * <linux/landlock.h> by test/unit/sandbox-abi.test.ts. Landlock constants the
 * build machine's headers predate (ABI 3 and later) are checked there against
 * the running kernel instead, when it is new enough.
 */
import { ptr } from "bun:ffi";
import { defineStruct } from "../kvm/struct.ts";
import { SyscallError } from "./errno.ts";
import { rawSyscall } from "./shim.ts";

export const SANDBOX_SYSCALL_NUMBERS = {
  close: 3,
  execve: 59,
  prctl: 157,
  openat: 257,
  seccomp: 317,
  landlock_create_ruleset: 444,
  landlock_add_rule: 445,
  landlock_restrict_self: 446,
} as const;

/** prctl(2) options (<linux/prctl.h>). */
export const PR = {
  PR_SET_DUMPABLE: 4,
  PR_GET_DUMPABLE: 3,
  PR_SET_NAME: 15,
  PR_GET_NAME: 16,
  PR_GET_SECCOMP: 21,
  PR_SET_NO_NEW_PRIVS: 38,
  PR_GET_NO_NEW_PRIVS: 39,
  /** PR_SET_VMA ('S','V','M','A'): JavaScriptCore names its anonymous mappings with it. */
  PR_SET_VMA: 0x53564d41,
} as const;

/** seccomp(2) operations and filter flags (<linux/seccomp.h>). */
export const SECCOMP = {
  SECCOMP_SET_MODE_STRICT: 0,
  SECCOMP_SET_MODE_FILTER: 1,
  SECCOMP_GET_ACTION_AVAIL: 2,
  SECCOMP_FILTER_FLAG_TSYNC: 1,
  SECCOMP_FILTER_FLAG_LOG: 2,
  SECCOMP_FILTER_FLAG_SPEC_ALLOW: 4,
  /** prctl(PR_GET_SECCOMP) result once a filter is installed. */
  SECCOMP_MODE_FILTER: 2,
} as const;

/** Filter return values (<linux/seccomp.h>); ERRNO and TRAP carry 16 bits of data. */
export const SECCOMP_RET = {
  SECCOMP_RET_KILL_PROCESS: 0x80000000,
  SECCOMP_RET_KILL_THREAD: 0x00000000,
  SECCOMP_RET_TRAP: 0x00030000,
  SECCOMP_RET_ERRNO: 0x00050000,
  SECCOMP_RET_USER_NOTIF: 0x7fc00000,
  SECCOMP_RET_TRACE: 0x7ff00000,
  SECCOMP_RET_LOG: 0x7ffc0000,
  SECCOMP_RET_ALLOW: 0x7fff0000,
  SECCOMP_RET_ACTION_FULL: 0xffff0000,
  SECCOMP_RET_DATA: 0x0000ffff,
} as const;

/** Classic BPF opcode parts (<linux/filter.h>, <linux/bpf_common.h>). */
export const BPF = {
  BPF_LD: 0x00,
  BPF_LDX: 0x01,
  BPF_ST: 0x02,
  BPF_STX: 0x03,
  BPF_ALU: 0x04,
  BPF_JMP: 0x05,
  BPF_RET: 0x06,
  BPF_MISC: 0x07,
  BPF_W: 0x00,
  BPF_H: 0x08,
  BPF_B: 0x10,
  BPF_IMM: 0x00,
  BPF_ABS: 0x20,
  BPF_IND: 0x40,
  BPF_MEM: 0x60,
  BPF_ADD: 0x00,
  BPF_SUB: 0x10,
  BPF_MUL: 0x20,
  BPF_DIV: 0x30,
  BPF_OR: 0x40,
  BPF_AND: 0x50,
  BPF_LSH: 0x60,
  BPF_RSH: 0x70,
  BPF_NEG: 0x80,
  BPF_JA: 0x00,
  BPF_JEQ: 0x10,
  BPF_JGT: 0x20,
  BPF_JGE: 0x30,
  BPF_JSET: 0x40,
  BPF_K: 0x00,
  BPF_X: 0x08,
  BPF_A: 0x10,
  BPF_MAXINSNS: 4096,
} as const;

/** <linux/audit.h>: the arch values seccomp_data.arch carries. */
export const AUDIT_ARCH = {
  AUDIT_ARCH_X86_64: 0xc000003e,
  AUDIT_ARCH_I386: 0x40000003,
} as const;

/** x32 system calls run on x86-64 with this bit set in the number (<asm/unistd.h>). */
export const X32_SYSCALL_BIT = 0x40000000;

/**
 * Terminal and descriptor ioctls Bun issues on stdin/stdout/stderr
 * (<asm-generic/ioctls.h>): isatty and raw mode (TCGETS, TCSETS*), the
 * window size, ttyname's TIOCGPTN, and descriptor flags.
 */
export const TERMINAL_IOCTL = {
  TCGETS: 0x5401,
  TCSETS: 0x5402,
  TCSETSW: 0x5403,
  TCSETSF: 0x5404,
  TIOCGPGRP: 0x540f,
  TIOCGWINSZ: 0x5413,
  FIONREAD: 0x541b,
  FIONBIO: 0x5421,
  FIONCLEX: 0x5450,
  FIOCLEX: 0x5451,
  TIOCGPTN: 0x80045430,
} as const;

/** One classic BPF instruction. */
export const sock_filter = defineStruct("struct sock_filter", 8, {
  code: [0, "u16"],
  jt: [2, "u8"],
  jf: [3, "u8"],
  k: [4, "u32"],
});

/** What seccomp(2) takes: an instruction count and a pointer to the instructions. */
export const sock_fprog = defineStruct("struct sock_fprog", 16, {
  len: [0, "u16"],
  filter: [8, "u64"],
});

/** What a seccomp filter reads with BPF_LD|BPF_W|BPF_ABS (each argument is 64 bits, read as two 32-bit words). */
export const seccomp_data = defineStruct("struct seccomp_data", 64, {
  nr: [0, "i32"],
  arch: [4, "u32"],
  instruction_pointer: [8, "u64"],
  args: [16, "u64", 6],
});

/** Offset of the low 32 bits of argument `index` in seccomp_data (little-endian: the high word is 4 bytes on). */
export function argLowOffset(index: number): number {
  if (!Number.isInteger(index) || index < 0 || index > 5) throw new RangeError(`a system call has arguments 0..5, not ${index}`);
  return seccomp_data.fields.args.offset + index * 8;
}

// ---------------------------------------------------------------- Landlock

/** landlock_create_ruleset(2) flags. */
export const LANDLOCK_CREATE_RULESET = {
  LANDLOCK_CREATE_RULESET_VERSION: 1,
  LANDLOCK_CREATE_RULESET_ERRATA: 2,
} as const;

export const LANDLOCK_RULE_PATH_BENEATH = 1;
export const LANDLOCK_RULE_NET_PORT = 2;

/** Filesystem rights, with the ABI version that introduced each. */
export const LANDLOCK_ACCESS_FS = {
  LANDLOCK_ACCESS_FS_EXECUTE: 1n << 0n,
  LANDLOCK_ACCESS_FS_WRITE_FILE: 1n << 1n,
  LANDLOCK_ACCESS_FS_READ_FILE: 1n << 2n,
  LANDLOCK_ACCESS_FS_READ_DIR: 1n << 3n,
  LANDLOCK_ACCESS_FS_REMOVE_DIR: 1n << 4n,
  LANDLOCK_ACCESS_FS_REMOVE_FILE: 1n << 5n,
  LANDLOCK_ACCESS_FS_MAKE_CHAR: 1n << 6n,
  LANDLOCK_ACCESS_FS_MAKE_DIR: 1n << 7n,
  LANDLOCK_ACCESS_FS_MAKE_REG: 1n << 8n,
  LANDLOCK_ACCESS_FS_MAKE_SOCK: 1n << 9n,
  LANDLOCK_ACCESS_FS_MAKE_FIFO: 1n << 10n,
  LANDLOCK_ACCESS_FS_MAKE_BLOCK: 1n << 11n,
  LANDLOCK_ACCESS_FS_MAKE_SYM: 1n << 12n,
  /** ABI 2. */
  LANDLOCK_ACCESS_FS_REFER: 1n << 13n,
  /** ABI 3. */
  LANDLOCK_ACCESS_FS_TRUNCATE: 1n << 14n,
  /** ABI 5: ioctl on character and block devices opened after the restriction. */
  LANDLOCK_ACCESS_FS_IOCTL_DEV: 1n << 15n,
} as const;

/** Network rights (ABI 4): TCP bind and connect, by port. */
export const LANDLOCK_ACCESS_NET = {
  LANDLOCK_ACCESS_NET_BIND_TCP: 1n << 0n,
  LANDLOCK_ACCESS_NET_CONNECT_TCP: 1n << 1n,
} as const;

/** IPC scopes (ABI 6): no abstract Unix sockets or signals outside the domain. */
export const LANDLOCK_SCOPE = {
  LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET: 1n << 0n,
  LANDLOCK_SCOPE_SIGNAL: 1n << 1n,
} as const;

/** landlock_restrict_self(2) flags (ABI 7): audit logging of denials. */
export const LANDLOCK_RESTRICT_SELF = {
  LANDLOCK_RESTRICT_SELF_LOG_SAME_EXEC_OFF: 1,
  LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON: 2,
  LANDLOCK_RESTRICT_SELF_LOG_SUBDOMAINS_OFF: 4,
} as const;

/**
 * struct landlock_ruleset_attr as of ABI 6. The kernel takes a size and reads
 * only what it knows, so older kernels get the first 8 (ABI 1-3) or 16 (ABI
 * 4-5) bytes: see `rulesetAttrSize`.
 */
export const landlock_ruleset_attr = defineStruct("struct landlock_ruleset_attr", 24, {
  handled_access_fs: [0, "u64"],
  handled_access_net: [8, "u64"],
  scoped: [16, "u64"],
});

/** Packed in C: no padding after parent_fd. */
export const landlock_path_beneath_attr = defineStruct("struct landlock_path_beneath_attr", 12, {
  allowed_access: [0, "u64"],
  parent_fd: [8, "i32"],
});

/** The ruleset attribute size an ABI version understands. */
export function rulesetAttrSize(abi: number): number {
  return abi >= 6 ? 24 : abi >= 4 ? 16 : 8;
}

/** open(2) flags the sandbox uses. */
export const SANDBOX_OPEN = {
  O_RDONLY: 0,
  O_CLOEXEC: 0x80000,
  O_PATH: 0x200000,
  O_DIRECTORY: 0x10000,
} as const;

const AT_FDCWD = -100;

function check(call: string, result: number, context?: string): number {
  if (result < 0 && result > -4096) throw new SyscallError(call, -result, context);
  return result;
}

function cString(text: string): Uint8Array {
  return new TextEncoder().encode(`${text}\0`);
}

/** prctl(2) returning the raw result (-errno on failure). */
export function prctlRaw(option: number, a1: number | bigint = 0, a2: number | bigint = 0, a3: number | bigint = 0, a4: number | bigint = 0): number {
  return rawSyscall(SANDBOX_SYSCALL_NUMBERS.prctl, option, a1, a2, a3, a4);
}

export function prctl(option: number, a1: number | bigint = 0, a2: number | bigint = 0, a3: number | bigint = 0, a4: number | bigint = 0): number {
  return check("prctl", prctlRaw(option, a1, a2, a3, a4), `option ${option}`);
}

/** Sets no_new_privs: required for an unprivileged seccomp filter or Landlock domain, and kept across execve. */
export function setNoNewPrivs(): void {
  prctl(PR.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
}

/** seccomp(SECCOMP_SET_MODE_FILTER, flags, prog) for an encoded program (8 bytes per instruction). */
export function seccompSetModeFilter(program: Uint8Array, flags: number): number {
  if (program.byteLength % sock_filter.size !== 0) throw new RangeError("a BPF program is a whole number of 8-byte instructions");
  const count = program.byteLength / sock_filter.size;
  if (count === 0 || count > BPF.BPF_MAXINSNS) throw new RangeError(`a seccomp program has 1..${BPF.BPF_MAXINSNS} instructions, not ${count}`);
  const fprog = new DataView(new ArrayBuffer(sock_fprog.size));
  fprog.setUint16(sock_fprog.fields.len.offset, count, true);
  fprog.setBigUint64(sock_fprog.fields.filter.offset, BigInt(ptr(program)), true);
  // With TSYNC, a positive result is the id of a thread that could not be synchronised.
  const result = rawSyscall(SANDBOX_SYSCALL_NUMBERS.seccomp, SECCOMP.SECCOMP_SET_MODE_FILTER, flags, ptr(fprog));
  return check("seccomp", result, "SECCOMP_SET_MODE_FILTER");
}

/** seccomp(SECCOMP_GET_ACTION_AVAIL): whether the kernel knows a return action. */
export function seccompActionAvailable(action: number): boolean {
  const value = new Uint32Array([action >>> 0]);
  return rawSyscall(SANDBOX_SYSCALL_NUMBERS.seccomp, SECCOMP.SECCOMP_GET_ACTION_AVAIL, 0, ptr(value)) === 0;
}

/** landlock_create_ruleset(NULL, 0, VERSION): the ABI version, or -errno (ENOSYS: not built; EOPNOTSUPP: disabled at boot). */
export function landlockAbiVersionRaw(): number {
  return rawSyscall(SANDBOX_SYSCALL_NUMBERS.landlock_create_ruleset, 0, 0, LANDLOCK_CREATE_RULESET.LANDLOCK_CREATE_RULESET_VERSION);
}

/** A new ruleset descriptor handling the given rights; `abi` picks the attribute size. */
export function landlockCreateRuleset(handledFs: bigint, handledNet: bigint, scoped: bigint, abi: number): number {
  const attr = new DataView(new ArrayBuffer(landlock_ruleset_attr.size));
  attr.setBigUint64(landlock_ruleset_attr.fields.handled_access_fs.offset, handledFs, true);
  attr.setBigUint64(landlock_ruleset_attr.fields.handled_access_net.offset, handledNet, true);
  attr.setBigUint64(landlock_ruleset_attr.fields.scoped.offset, scoped, true);
  return check(
    "landlock_create_ruleset",
    rawSyscall(SANDBOX_SYSCALL_NUMBERS.landlock_create_ruleset, ptr(attr), rulesetAttrSize(abi), 0),
  );
}

/** landlock_add_rule(PATH_BENEATH): `allowed` rights beneath the file or directory `parentFd` refers to. */
export function landlockAddPathRule(rulesetFd: number, parentFd: number, allowed: bigint, context?: string): void {
  const attr = new DataView(new ArrayBuffer(landlock_path_beneath_attr.size));
  attr.setBigUint64(landlock_path_beneath_attr.fields.allowed_access.offset, allowed, true);
  attr.setInt32(landlock_path_beneath_attr.fields.parent_fd.offset, parentFd, true);
  check(
    "landlock_add_rule",
    rawSyscall(SANDBOX_SYSCALL_NUMBERS.landlock_add_rule, rulesetFd, LANDLOCK_RULE_PATH_BENEATH, ptr(attr), 0),
    context,
  );
}

/** landlock_restrict_self: the calling thread (and what it execs or clones afterwards) enters the domain. */
export function landlockRestrictSelf(rulesetFd: number, flags = 0): void {
  check("landlock_restrict_self", rawSyscall(SANDBOX_SYSCALL_NUMBERS.landlock_restrict_self, rulesetFd, flags));
}

/** open(path, O_PATH | O_CLOEXEC): a handle naming a file or directory for a Landlock rule. */
export function openPathHandle(path: string): number {
  const name = cString(path);
  return check(
    "open",
    rawSyscall(SANDBOX_SYSCALL_NUMBERS.openat, AT_FDCWD, ptr(name), SANDBOX_OPEN.O_PATH | SANDBOX_OPEN.O_CLOEXEC, 0),
    path,
  );
}

export function closeFd(fd: number): void {
  rawSyscall(SANDBOX_SYSCALL_NUMBERS.close, fd);
}

/**
 * execve(2). Returns only on failure (throwing SyscallError); on success the
 * process image is replaced and every other thread is gone.
 */
export function execve(path: string, argv: readonly string[], env: readonly string[]): never {
  const strings = [path, ...argv, ...env].map(cString);
  const pathBytes = strings[0]!;
  const argvTable = new BigUint64Array(argv.length + 1);
  const envTable = new BigUint64Array(env.length + 1);
  argv.forEach((_, i) => (argvTable[i] = BigInt(ptr(strings[1 + i]!))));
  env.forEach((_, i) => (envTable[i] = BigInt(ptr(strings[1 + argv.length + i]!))));
  const result = rawSyscall(SANDBOX_SYSCALL_NUMBERS.execve, ptr(pathBytes), ptr(argvTable), ptr(envTable));
  // Keep the strings reachable until the call has returned.
  void strings.length;
  check("execve", result, path);
  throw new Error(`execve(${path}) returned ${result}`);
}

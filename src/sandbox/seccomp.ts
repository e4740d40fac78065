/**
 * The seccomp allowlist for a Volt VMM process, written declaratively: each
 * entry names a system call, says why Volt or Bun needs it, and for the
 * dangerous ones lists the argument values allowed. bpf.ts compiles it and
 * `installSeccomp` loads it for every thread of the process
 * (SECCOMP_FILTER_FLAG_TSYNC); threads created later inherit it. Anything not
 * listed kills the whole process with SIGSYS (exit status 159 in a shell).
 *
 * The list was found by tracing Bun 1.4 running Volt-like work (fs reads,
 * Bun.file, workers, timers, Unix sockets, FFI, the GC, raw-mode terminals)
 * with strace and with a logging filter (`installSeccomp(policy, { log:
 * true })`, then `dmesg | grep type=1326`), plus every system call Volt's own
 * code makes (src/ffi/*). It covers a VM's life after the filter goes on:
 * running, devices, pause/resume, snapshots (to memory; to disk and the chunk
 * store only with `snapshotsToDisk`), a rotating console log (only with
 * `consoleLog`), shutdown. Start-up (dlopen, opening /dev/kvm, reading the
 * kernel, spawning anything) happens before.
 */
import { KVM_IOCTL } from "../kvm/abi.ts";
import { BLKGETSIZE64 } from "../devices/virtio/block-backend.ts";
import { ERRNO } from "../ffi/errno.ts";
import { TUN_IOCTL } from "../ffi/net-syscalls.ts";
import { SOCKET_CONSTANTS } from "../ffi/socket-syscalls.ts";
import { PR, SECCOMP, TERMINAL_IOCTL, seccompSetModeFilter, setNoNewPrivs } from "../ffi/sandbox-syscalls.ts";
import {
  ACTION,
  actionValue,
  compileFilter,
  describeReturn,
  encodeProgram,
  type ArgCondition,
  type FilterPolicy,
  type Instruction,
  type RuleCase,
  type SeccompAction,
} from "./bpf.ts";

/** x86-64 system call numbers (<asm/unistd_64.h>; checked against <sys/syscall.h> by sandbox-abi.test.ts). */
export const X86_64_SYSCALLS = {
  read: 0,
  write: 1,
  open: 2,
  close: 3,
  stat: 4,
  fstat: 5,
  lstat: 6,
  poll: 7,
  lseek: 8,
  mmap: 9,
  mprotect: 10,
  munmap: 11,
  brk: 12,
  rt_sigaction: 13,
  rt_sigprocmask: 14,
  rt_sigreturn: 15,
  ioctl: 16,
  pread64: 17,
  pwrite64: 18,
  readv: 19,
  writev: 20,
  access: 21,
  pipe: 22,
  sched_yield: 24,
  mremap: 25,
  madvise: 28,
  dup: 32,
  dup2: 33,
  nanosleep: 35,
  getpid: 39,
  socket: 41,
  connect: 42,
  accept: 43,
  sendto: 44,
  recvfrom: 45,
  sendmsg: 46,
  recvmsg: 47,
  shutdown: 48,
  bind: 49,
  listen: 50,
  getsockname: 51,
  getpeername: 52,
  socketpair: 53,
  setsockopt: 54,
  getsockopt: 55,
  clone: 56,
  fork: 57,
  vfork: 58,
  execve: 59,
  exit: 60,
  wait4: 61,
  kill: 62,
  uname: 63,
  fcntl: 72,
  fsync: 74,
  fdatasync: 75,
  ftruncate: 77,
  getcwd: 79,
  chdir: 80,
  rename: 82,
  mkdir: 83,
  rmdir: 84,
  link: 86,
  unlink: 87,
  symlink: 88,
  readlink: 89,
  chmod: 90,
  chown: 92,
  gettimeofday: 96,
  getrlimit: 97,
  getrusage: 98,
  sysinfo: 99,
  ptrace: 101,
  getuid: 102,
  getgid: 104,
  setuid: 105,
  geteuid: 107,
  getegid: 108,
  rt_sigsuspend: 130,
  sigaltstack: 131,
  mknod: 133,
  personality: 135,
  statfs: 137,
  fstatfs: 138,
  pivot_root: 155,
  prctl: 157,
  arch_prctl: 158,
  chroot: 161,
  mount: 165,
  umount2: 166,
  reboot: 169,
  init_module: 175,
  gettid: 186,
  tkill: 200,
  futex: 202,
  sched_getaffinity: 204,
  getdents64: 217,
  set_tid_address: 218,
  restart_syscall: 219,
  clock_gettime: 228,
  clock_getres: 229,
  clock_nanosleep: 230,
  exit_group: 231,
  epoll_wait: 232,
  epoll_ctl: 233,
  tgkill: 234,
  kexec_load: 246,
  add_key: 248,
  keyctl: 250,
  openat: 257,
  mkdirat: 258,
  mknodat: 259,
  newfstatat: 262,
  unlinkat: 263,
  renameat: 264,
  linkat: 265,
  symlinkat: 266,
  readlinkat: 267,
  utimensat: 280,
  faccessat: 269,
  ppoll: 271,
  unshare: 272,
  set_robust_list: 273,
  epoll_pwait: 281,
  fallocate: 285,
  accept4: 288,
  eventfd2: 290,
  epoll_create1: 291,
  dup3: 292,
  pipe2: 293,
  preadv: 295,
  pwritev: 296,
  perf_event_open: 298,
  prlimit64: 302,
  setns: 308,
  process_vm_readv: 310,
  process_vm_writev: 311,
  finit_module: 313,
  renameat2: 316,
  seccomp: 317,
  getrandom: 318,
  memfd_create: 319,
  bpf: 321,
  execveat: 322,
  userfaultfd: 323,
  membarrier: 324,
  statx: 332,
  rseq: 334,
  io_uring_setup: 425,
  io_uring_enter: 426,
  io_uring_register: 427,
  open_tree: 428,
  move_mount: 429,
  fsopen: 430,
  pidfd_open: 434,
  clone3: 435,
  close_range: 436,
  openat2: 437,
  pidfd_getfd: 438,
  faccessat2: 439,
  epoll_pwait2: 441,
  landlock_create_ruleset: 444,
  landlock_add_rule: 445,
  landlock_restrict_self: 446,
} as const;

export type SyscallName = keyof typeof X86_64_SYSCALLS;

/** clone(2) flags (<linux/sched.h>). */
export const CLONE = {
  CLONE_VM: 0x00000100,
  CLONE_FS: 0x00000200,
  CLONE_FILES: 0x00000400,
  CLONE_SIGHAND: 0x00000800,
  CLONE_PIDFD: 0x00001000,
  CLONE_PTRACE: 0x00002000,
  CLONE_VFORK: 0x00004000,
  CLONE_PARENT: 0x00008000,
  CLONE_THREAD: 0x00010000,
  CLONE_NEWNS: 0x00020000,
  CLONE_SYSVSEM: 0x00040000,
  CLONE_SETTLS: 0x00080000,
  CLONE_PARENT_SETTID: 0x00100000,
  CLONE_CHILD_CLEARTID: 0x00200000,
  CLONE_UNTRACED: 0x00800000,
  CLONE_CHILD_SETTID: 0x01000000,
  CLONE_NEWCGROUP: 0x02000000,
  CLONE_NEWUTS: 0x04000000,
  CLONE_NEWIPC: 0x08000000,
  CLONE_NEWUSER: 0x10000000,
  CLONE_NEWPID: 0x20000000,
  CLONE_NEWNET: 0x40000000,
  CLONE_IO: 0x80000000,
} as const;

/** open(2) flags the filter looks at (<fcntl.h>). */
export const OPEN_FLAGS = {
  O_CREAT: 0x40,
  /** __O_TMPFILE (O_TMPFILE is this | O_DIRECTORY). */
  __O_TMPFILE: 0x400000,
} as const;

/** The flags a thread must have, and the namespace flags it must not. */
const THREAD_FLAGS = CLONE.CLONE_VM | CLONE.CLONE_SIGHAND | CLONE.CLONE_THREAD;
const NAMESPACE_FLAGS =
  CLONE.CLONE_NEWNS | CLONE.CLONE_NEWCGROUP | CLONE.CLONE_NEWUTS | CLONE.CLONE_NEWIPC | CLONE.CLONE_NEWUSER | CLONE.CLONE_NEWPID | CLONE.CLONE_NEWNET;
const CREATE_FLAGS = OPEN_FLAGS.O_CREAT | OPEN_FLAGS.__O_TMPFILE;

// ---------------------------------------------------------------- the policy

export interface SeccompEntry {
  readonly syscall: SyscallName;
  readonly why: string;
  /** Argument cases (see bpf.ts RuleCase); none: the call is allowed outright (or gets `otherwise`). */
  readonly cases?: readonly RuleCase[];
  readonly otherwise?: SeccompAction;
  /** Names for argument values, for `describePolicy`. */
  readonly valueNames?: ReadonlyMap<bigint, string>;
}

export interface SeccompPolicy {
  readonly name: string;
  readonly defaultAction: SeccompAction;
  readonly entries: readonly SeccompEntry[];
}

export interface VmmSeccompOptions {
  /** The process whose threads tgkill may signal (Volt's vCPU kicks, the GC's thread suspension). Default: this process. */
  readonly pid?: number;
  /**
   * Snapshots written to a directory at run time (the API's snapshot/create
   * with a dir, and the chunk store) make directories, create files, rename,
   * hard-link and touch them: allow mkdir, rmdir, rename, link, utimensat and
   * O_CREAT. Off by default.
   */
  readonly snapshotsToDisk?: boolean;
  /** A console log file that is created and rotated (renamed) at run time: allow O_CREAT and rename. Off by default. */
  readonly consoleLog?: boolean;
  /** More ioctl request numbers to allow (each with a name, for the listing). */
  readonly extraIoctls?: Readonly<Record<string, number>>;
}

/** Every ioctl request Volt (and Bun on the terminal) issues, by name. */
export function vmmIoctls(extra: Readonly<Record<string, number>> = {}): Map<string, number> {
  return new Map<string, number>([
    ...Object.entries(KVM_IOCTL),
    ...Object.entries(TUN_IOCTL),
    ["BLKGETSIZE64", BLKGETSIZE64],
    ...Object.entries(TERMINAL_IOCTL),
    ...Object.entries(extra),
  ]);
}

const allow = (syscall: SyscallName, why: string): SeccompEntry => ({ syscall, why });

/**
 * The VMM's allowlist. Kill by default; clone only for threads; clone3
 * answers ENOSYS (its flags live in memory, which seccomp cannot read, so it
 * cannot be filtered; glibc then falls back to clone); no execve, fork or
 * namespaces; sockets only AF_UNIX; ioctl only Volt's requests.
 */
export function vmmSeccompPolicy(options: VmmSeccompOptions = {}): SeccompPolicy {
  const pid = options.pid ?? process.pid;
  const ioctls = vmmIoctls(options.extraIoctls);
  const ioctlNames = new Map<bigint, string>();
  for (const [name, value] of ioctls) if (!ioctlNames.has(BigInt(value))) ioctlNames.set(BigInt(value), name);
  // Unless snapshots or a console log are written, nothing is ever created: open calls may not carry O_CREAT or O_TMPFILE.
  const createsFiles = options.snapshotsToDisk === true || options.consoleLog === true;
  const noCreate = (flagsArg: 1 | 2): { cases?: RuleCase[] } =>
    createsFiles ? {} : { cases: [{ when: [{ arg: flagsArg, width: 32, op: "masked-eq", mask: CREATE_FLAGS, value: 0 }] }] };
  const entries: SeccompEntry[] = [
    // memory
    allow("mmap", "guest RAM, vCPU run areas, memory files; JSC heaps and JIT code"),
    allow("munmap", "unmapping guest RAM and heaps"),
    allow("mprotect", "the JIT and heap guard pages"),
    allow("madvise", "the allocators (mimalloc, JSC) returning memory"),
    allow("mremap", "glibc realloc of large blocks"),
    allow("brk", "glibc malloc"),
    // threads and synchronisation
    {
      syscall: "clone",
      why: "new threads (workers, Bun's pool, the GC) only: CLONE_THREAD|CLONE_VM|CLONE_SIGHAND set, no namespaces",
      cases: [{ when: [{ arg: 0, op: "masked-eq", mask: THREAD_FLAGS | NAMESPACE_FLAGS, value: THREAD_FLAGS }] }],
    },
    {
      syscall: "clone3",
      why: "its flags are in memory seccomp cannot read: refused with ENOSYS so glibc falls back to clone",
      otherwise: ACTION.errno(ERRNO.ENOSYS),
    },
    allow("futex", "locks, condition variables, Atomics.wait"),
    allow("set_robust_list", "every new thread (glibc)"),
    allow("rseq", "every new thread (glibc)"),
    allow("sched_getaffinity", "Bun sizing its thread pool"),
    allow("sched_yield", "spin locks (JSC, mimalloc)"),
    allow("gettid", "thread ids for vCPU kicks"),
    allow("getpid", "Volt and Bun asking for the process id"),
    allow("exit", "a thread ending"),
    allow("exit_group", "the process ending"),
    allow("restart_syscall", "the kernel restarting a call interrupted by a signal"),
    allow("membarrier", "JSC/mimalloc may issue process-wide barriers"),
    // signals
    allow("rt_sigaction", "signal handlers (SIGINT/SIGTERM, the vCPU kick)"),
    allow("rt_sigprocmask", "signal masks around thread start and the GC"),
    allow("rt_sigreturn", "returning from a signal handler"),
    allow("rt_sigsuspend", "the GC suspends threads with a signal"),
    allow("sigaltstack", "signal stacks for new threads"),
    {
      syscall: "tgkill",
      why: "signals to this process's own threads only: Volt's vCPU kick, the GC's SIGPWR",
      cases: [{ when: [{ arg: 0, width: 32, op: "eq", value: pid }] }],
    },
    {
      syscall: "prctl",
      why: "thread names (PR_SET_NAME/PR_GET_NAME) and JSC's VMA names (PR_SET_VMA); other options get EPERM",
      cases: [{ when: [{ arg: 0, width: 32, op: "in", values: [PR.PR_SET_NAME, PR.PR_GET_NAME, PR.PR_SET_VMA] }] }],
      otherwise: ACTION.errno(ERRNO.EPERM),
      valueNames: new Map([
        [BigInt(PR.PR_SET_NAME), "PR_SET_NAME"],
        [BigInt(PR.PR_GET_NAME), "PR_GET_NAME"],
        [BigInt(PR.PR_SET_VMA), "PR_SET_VMA"],
      ]),
    },
    // time
    allow("clock_gettime", "clocks (normally the vDSO; the call is the fallback)"),
    allow("clock_getres", "clock resolution"),
    allow("gettimeofday", "the vDSO fallback for time"),
    allow("nanosleep", "sleeps"),
    allow("clock_nanosleep", "sleeps (Bun.sleepSync, timers)"),
    // event loop and waiting
    allow("epoll_create1", "event loops (main thread, each worker)"),
    allow("epoll_ctl", "event loops"),
    allow("epoll_wait", "event loops"),
    allow("epoll_pwait", "event loops"),
    allow("epoll_pwait2", "event loops (Bun's)"),
    allow("eventfd2", "KVM ioeventfds/irqfds and wake-ups between threads"),
    allow("ppoll", "the I/O worker waiting on taps, sockets and eventfds"),
    allow("poll", "waiting on descriptors"),
    allow("pipe2", "Bun's internal wake-up pipes"),
    // descriptors and files
    allow("read", "descriptors of every kind"),
    allow("write", "descriptors of every kind"),
    allow("readv", "tap packets"),
    allow("writev", "tap packets"),
    allow("pread64", "disk images, positional fs.readSync"),
    allow("pwrite64", "disk images, snapshot memory files"),
    allow("preadv", "disk images"),
    allow("pwritev", "disk images"),
    allow("lseek", "seeking in files (Bun's fs)"),
    allow("close", "descriptors"),
    allow("fcntl", "descriptor flags (non-blocking, close-on-exec, dup)"),
    allow("dup", "Bun duplicating stdio"),
    allow("dup3", "Bun duplicating stdio"),
    allow("fstat", "sizes of open files"),
    allow("newfstatat", "fs.statSync and friends"),
    allow("stat", "fs.statSync (Bun calls stat directly)"),
    allow("lstat", "fs.lstatSync"),
    allow("statx", "fs.statSync"),
    allow("statfs", "Bun's fs"),
    allow("fstatfs", "Bun's fs"),
    {
      syscall: "openat",
      why: createsFiles
        ? "opening and creating files (where: Landlock decides)"
        : "opening existing files only: no O_CREAT/O_TMPFILE (where: Landlock decides)",
      ...noCreate(2),
    },
    {
      syscall: "open",
      why: createsFiles ? "Bun's legacy open of /proc files" : "Bun's legacy open of /proc files: no O_CREAT/O_TMPFILE",
      ...noCreate(1),
    },
    allow("access", "existence checks"),
    allow("faccessat", "existence checks"),
    allow("faccessat2", "existence checks"),
    allow("readlink", "Bun resolving /proc/self/fd and paths"),
    allow("readlinkat", "path resolution"),
    allow("getcwd", "path resolution"),
    allow("getdents64", "listing directories (module resolution, rmSync)"),
    allow("fsync", "durable snapshot files and disk flushes"),
    allow("fdatasync", "virtio-blk flush"),
    allow("ftruncate", "snapshot memory files, memfds"),
    allow("fallocate", "virtio-blk discard and write-zeroes"),
    allow("unlink", "stale Unix socket files (API, vsock)"),
    allow("unlinkat", "stale socket files; removing a replaced snapshot"),
    allow("memfd_create", "in-memory snapshots"),
    {
      syscall: "ioctl",
      why: "only the KVM, TUN, block-size and terminal requests Volt and Bun use",
      cases: [{ when: [{ arg: 1, width: 32, op: "in", values: [...ioctls.values()] }] }],
      valueNames: ioctlNames,
    },
    // sockets
    {
      syscall: "socket",
      why: "AF_UNIX only: the API socket and vsock's host side",
      cases: [{ when: [{ arg: 0, width: 32, op: "eq", value: SOCKET_CONSTANTS.AF_UNIX }] }],
      valueNames: new Map([[BigInt(SOCKET_CONSTANTS.AF_UNIX), "AF_UNIX"]]),
    },
    {
      syscall: "socketpair",
      why: "AF_UNIX only",
      cases: [{ when: [{ arg: 0, width: 32, op: "eq", value: SOCKET_CONSTANTS.AF_UNIX }] }],
      valueNames: new Map([[BigInt(SOCKET_CONSTANTS.AF_UNIX), "AF_UNIX"]]),
    },
    allow("bind", "binding Unix sockets"),
    allow("listen", "Unix socket servers"),
    allow("accept", "Unix socket servers"),
    allow("accept4", "Unix socket servers"),
    allow("connect", "vsock's host side connecting to uds_path_<port>"),
    allow("sendto", "socket data (MSG_NOSIGNAL)"),
    allow("recvfrom", "socket data"),
    allow("sendmsg", "socket data (Bun)"),
    allow("recvmsg", "socket data (Bun)"),
    allow("shutdown", "closing socket directions"),
    allow("getsockname", "Bun's socket bookkeeping"),
    allow("getpeername", "Bun's socket bookkeeping"),
    allow("getsockopt", "socket errors (SO_ERROR)"),
    allow("setsockopt", "socket options (Bun sets TCP_NODELAY even on Unix sockets; it fails harmlessly)"),
    // information
    allow("getrandom", "crypto.getRandomValues (virtio-rng) and hash seeds"),
    allow("uname", "os.* and Bun's platform checks"),
    allow("sysinfo", "memory totals for the GC"),
    allow("getrusage", "process.resourceUsage / timing"),
    {
      syscall: "prlimit64",
      why: "reading limits only (new limit NULL)",
      cases: [{ when: [{ arg: 2, op: "eq", value: 0 }] }],
    },
    allow("getrlimit", "reading limits"),
    allow("getuid", "identity checks"),
    allow("geteuid", "identity checks"),
    allow("getgid", "identity checks"),
    allow("getegid", "identity checks"),
  ];
  if (createsFiles) {
    const why = options.snapshotsToDisk ? "moving a finished snapshot or chunk into place; rotating the console log" : "rotating the console log";
    entries.push(allow("rename", why), allow("renameat", why), allow("renameat2", why));
  }
  if (options.snapshotsToDisk) {
    entries.push(
      allow("mkdir", "snapshot directories (written beside the target, then renamed) and chunk-store fan-out"),
      allow("mkdirat", "snapshot directories"),
      allow("rmdir", "removing a failed or replaced snapshot"),
      allow("link", "the chunk store names a finished chunk by hard link (never replacing one)"),
      allow("linkat", "the chunk store's hard links"),
      allow("utimensat", "the chunk store refreshes a reused chunk's mtime (garbage collection)"),
      allow("symlink", "Firecracker's snapshot create names the memory file at mem_file_path by symlink"),
      allow("symlinkat", "the same symlink"),
    );
  }
  const name = ["vmm", ...(options.snapshotsToDisk ? ["snapshots-to-disk"] : []), ...(options.consoleLog ? ["console-log"] : [])].join("+");
  return { name, defaultAction: ACTION.killProcess, entries };
}

// ---------------------------------------------------------------- compile and install

/** The policy as bpf.ts compiles it (names resolved to numbers). */
export function toFilterPolicy(policy: SeccompPolicy): FilterPolicy {
  return {
    defaultAction: policy.defaultAction,
    rules: policy.entries.map((entry) => ({
      nr: X86_64_SYSCALLS[entry.syscall],
      name: entry.syscall,
      ...(entry.cases ? { cases: entry.cases } : {}),
      ...(entry.otherwise ? { otherwise: entry.otherwise } : {}),
    })),
  };
}

export function compilePolicy(policy: SeccompPolicy): Instruction[] {
  return compileFilter(toFilterPolicy(policy));
}

export interface InstallOptions {
  /**
   * Replace the default action (KILL_PROCESS) with SECCOMP_RET_LOG: nothing
   * is refused, and each call the policy would have killed appears in the
   * kernel log as `audit: type=1326 ... syscall=N`. For finding what a
   * workload needs, never for production.
   */
  readonly log?: boolean;
  /** Extra SECCOMP_FILTER_FLAG_* bits (TSYNC is always set). */
  readonly flags?: number;
}

export interface InstalledFilter {
  readonly policy: string;
  readonly instructions: number;
  readonly defaultAction: string;
}

/**
 * Sets no_new_privs and installs the policy for every thread of the process
 * (TSYNC). There is no way back: only the process's end removes it. Throws
 * SyscallError if the kernel refuses; with TSYNC, a thread that cannot be
 * synchronised (one with a different filter) makes the call fail with its id.
 */
export function installSeccomp(policy: SeccompPolicy, options: InstallOptions = {}): InstalledFilter {
  const effective: SeccompPolicy = options.log ? { ...policy, defaultAction: ACTION.log } : policy;
  const program = compilePolicy(effective);
  setNoNewPrivs();
  const result = seccompSetModeFilter(encodeProgram(program), SECCOMP.SECCOMP_FILTER_FLAG_TSYNC | (options.flags ?? 0));
  if (result > 0) throw new Error(`seccomp: thread ${result} could not be synchronised to the filter`);
  return { policy: effective.name, instructions: program.length, defaultAction: describeReturn(actionValue(effective.defaultAction)) };
}

// ---------------------------------------------------------------- listing

function hex(value: bigint): string {
  return `0x${value.toString(16)}`;
}

function describeCondition(cond: ArgCondition, names?: ReadonlyMap<bigint, string>): string {
  const width = cond.width ?? 64;
  const arg = width === 32 ? `arg${cond.arg} (low 32 bits)` : `arg${cond.arg}`;
  const name = (value: number | bigint) => {
    const big = BigInt.asUintN(width, BigInt(value));
    return names?.get(big) ?? hex(big);
  };
  switch (cond.op) {
    case "masked-eq":
      return `${arg} & ${hex(BigInt(cond.mask))} == ${hex(BigInt(cond.value))}`;
    case "in":
      return `${arg} in {${cond.values.map(name).join(", ")}}`;
    default: {
      const symbol = { eq: "==", ne: "!=", gt: ">", ge: ">=", lt: "<", le: "<=" }[cond.op];
      return `${arg} ${symbol} ${name(cond.value)}`;
    }
  }
}

export interface PolicyListing {
  readonly name: string;
  readonly arch: "x86_64";
  readonly defaultAction: string;
  readonly x32: string;
  readonly instructions: number;
  readonly syscalls: readonly {
    readonly syscall: string;
    readonly nr: number;
    readonly action: string;
    readonly cases?: readonly { readonly when: readonly string[]; readonly action: string }[];
    readonly why: string;
  }[];
}

/** The policy in words and numbers (JSON-friendly), for `volt sandbox show`. */
export function describePolicy(policy: SeccompPolicy = vmmSeccompPolicy()): PolicyListing {
  const defaultAction = describeReturn(actionValue(policy.defaultAction));
  return {
    name: policy.name,
    arch: "x86_64",
    defaultAction,
    x32: defaultAction,
    instructions: compilePolicy(policy).length,
    syscalls: [...policy.entries]
      .sort((a, b) => X86_64_SYSCALLS[a.syscall] - X86_64_SYSCALLS[b.syscall])
      .map((entry) => {
        const otherwise = entry.otherwise ?? (entry.cases?.length ? policy.defaultAction : ACTION.allow);
        return {
          syscall: entry.syscall,
          nr: X86_64_SYSCALLS[entry.syscall],
          action: entry.cases?.length ? `${describeReturn(actionValue(otherwise))} unless a case matches` : describeReturn(actionValue(otherwise)),
          ...(entry.cases?.length
            ? {
                cases: entry.cases.map((ruleCase) => ({
                  when: ruleCase.when.map((cond) => describeCondition(cond, entry.valueNames)),
                  action: describeReturn(actionValue(ruleCase.action ?? ACTION.allow)),
                })),
              }
            : {}),
          why: entry.why,
        };
      }),
  };
}

/** describePolicy as lines of text. */
export function formatPolicy(listing: PolicyListing = describePolicy()): string[] {
  const lines = [
    `seccomp policy ${listing.name}: ${listing.syscalls.length} system calls, ${listing.instructions} BPF instructions`,
    `  other arch, x32 calls and anything unlisted: ${listing.defaultAction}`,
  ];
  for (const entry of listing.syscalls) {
    lines.push(`  ${entry.syscall} (${entry.nr}): ${entry.action} — ${entry.why}`);
    for (const ruleCase of entry.cases ?? []) lines.push(`      ${ruleCase.action} if ${ruleCase.when.join(" and ")}`);
  }
  return lines;
}

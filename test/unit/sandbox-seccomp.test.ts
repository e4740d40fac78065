/**
 * Volt's VMM seccomp allowlist (src/sandbox/seccomp.ts): first its rules,
 * evaluated with the BPF interpreter; then installed for real in child
 * processes (a filter cannot be removed), where everything a VMM does keeps
 * working and each forbidden call kills the process with SIGSYS (exit status
 * 159 from a shell).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BLKGETSIZE64 } from "../../src/devices/virtio/block-backend.ts";
import { PR, SECCOMP_RET, TERMINAL_IOCTL } from "../../src/ffi/sandbox-syscalls.ts";
import { TUN_IOCTL } from "../../src/ffi/net-syscalls.ts";
import { KVM_IOCTL } from "../../src/kvm/abi.ts";
import { actionValue, ACTION } from "../../src/sandbox/bpf.ts";
import {
  CLONE,
  X86_64_SYSCALLS,
  compilePolicy,
  describePolicy,
  formatPolicy,
  vmmSeccompPolicy,
  type SyscallName,
} from "../../src/sandbox/seccomp.ts";
import { runFilter } from "./fixtures/sandbox/bpf-interpreter.ts";

const ALLOW = SECCOMP_RET.SECCOMP_RET_ALLOW;
const KILL = SECCOMP_RET.SECCOMP_RET_KILL_PROCESS;
const PID = 4242;

const policy = vmmSeccompPolicy({ pid: PID });
const program = compilePolicy(policy);
const withSnapshots = compilePolicy(vmmSeccompPolicy({ pid: PID, snapshotsToDisk: true }));

function verdict(name: SyscallName, args: (number | bigint)[] = [], filter = program): number {
  return runFilter(filter, { nr: X86_64_SYSCALLS[name], args }).value;
}

/** glibc's pthread_create flags (strace of Bun creating a worker). */
const GLIBC_THREAD =
  CLONE.CLONE_VM |
  CLONE.CLONE_FS |
  CLONE.CLONE_FILES |
  CLONE.CLONE_SIGHAND |
  CLONE.CLONE_THREAD |
  CLONE.CLONE_SYSVSEM |
  CLONE.CLONE_SETTLS |
  CLONE.CLONE_PARENT_SETTID |
  CLONE.CLONE_CHILD_CLEARTID;

describe("the VMM allowlist", () => {
  test("every entry says why, names a known call once, and the program fits the kernel's limit", () => {
    const names = policy.entries.map((entry) => entry.syscall);
    expect(new Set(names).size).toBe(names.length);
    for (const entry of policy.entries) {
      expect(entry.why.length).toBeGreaterThan(5);
      expect(X86_64_SYSCALLS[entry.syscall]).toBeNumber();
    }
    expect(program.length).toBeLessThan(4096);
  });

  test("what a VMM and Bun need at steady state is allowed", () => {
    const needed: SyscallName[] = [
      "read", "write", "close", "mmap", "munmap", "mprotect", "madvise", "futex", "epoll_pwait2", "epoll_ctl",
      "eventfd2", "ppoll", "readv", "writev", "pread64", "pwrite64", "fsync", "fdatasync", "fallocate", "ftruncate",
      "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigsuspend", "sigaltstack", "rseq", "set_robust_list",
      "sched_getaffinity", "gettid", "getpid", "exit", "exit_group", "restart_syscall", "getrandom", "memfd_create",
      "bind", "listen", "accept4", "connect", "sendto", "recvfrom", "shutdown", "unlink", "newfstatat", "statx",
    ];
    for (const name of needed) expect({ name, verdict: verdict(name) }).toEqual({ name, verdict: ALLOW });
  });

  test("calls that let a compromised VMM escape or spread are killed", () => {
    const forbidden: SyscallName[] = [
      "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2",
      "pivot_root", "chroot", "unshare", "setns", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
      "io_uring_enter", "io_uring_register", "kexec_load", "init_module", "finit_module", "reboot", "keyctl",
      "add_key", "kill", "tkill", "personality", "setuid", "mknod", "mknodat", "chmod", "chown", "link", "linkat",
      "symlink", "mkdir", "mkdirat", "rmdir", "rename", "renameat", "renameat2", "utimensat", "seccomp", "pidfd_open",
      "pidfd_getfd", "open_tree", "move_mount", "fsopen", "openat2", "landlock_create_ruleset", "wait4", "chdir",
      "arch_prctl",
    ];
    for (const name of forbidden) expect({ name, verdict: verdict(name) }).toEqual({ name, verdict: KILL });
  });

  test("ioctl: every KVM, TUN, block-size and terminal request Volt uses, nothing else", () => {
    for (const request of [...Object.values(KVM_IOCTL), ...Object.values(TUN_IOCTL), BLKGETSIZE64, ...Object.values(TERMINAL_IOCTL)]) {
      expect({ request, verdict: verdict("ioctl", [3, request]) }).toEqual({ request, verdict: ALLOW });
    }
    // TIOCSTI (fake terminal input), TIOCSCTTY, FIOASYNC, KVM_SET_GSI_ROUTING, TUNSETOWNER, BLKDISCARD: not Volt's.
    for (const request of [0x5412, 0x540e, 0x5452, 0x4008ae6a, 0x400454cc, 0x1277]) {
      expect({ request, verdict: verdict("ioctl", [3, request]) }).toEqual({ request, verdict: KILL });
    }
    // The request is an unsigned int: the kernel ignores the register's high half, and so does the filter.
    expect(verdict("ioctl", [3, 0xffff_ffff_0000_0000n | BigInt(KVM_IOCTL.KVM_RUN)])).toBe(ALLOW);
    expect(verdict("ioctl", [3, 0xffff_ffff_0000_0000n | 0x5412n])).toBe(KILL);
  });

  test("clone only makes threads; clone3 answers ENOSYS so glibc falls back to clone", () => {
    expect(verdict("clone", [GLIBC_THREAD])).toBe(ALLOW);
    expect(verdict("clone", [17 /* SIGCHLD: fork */])).toBe(KILL);
    expect(verdict("clone", [CLONE.CLONE_VM | CLONE.CLONE_VFORK | 17 /* posix_spawn */])).toBe(KILL);
    expect(verdict("clone", [GLIBC_THREAD & ~CLONE.CLONE_THREAD])).toBe(KILL);
    expect(verdict("clone", [GLIBC_THREAD | CLONE.CLONE_NEWUSER])).toBe(KILL);
    expect(verdict("clone", [GLIBC_THREAD | CLONE.CLONE_NEWNET])).toBe(KILL);
    expect(verdict("clone", [CLONE.CLONE_THREAD])).toBe(KILL); // a thread without shared memory is not one
    expect(verdict("clone3")).toBe(actionValue(ACTION.errno(38)));
  });

  test("sockets: AF_UNIX only", () => {
    expect(verdict("socket", [1, 1, 0])).toBe(ALLOW);
    expect(verdict("socketpair", [1, 5, 0])).toBe(ALLOW);
    for (const family of [2 /* INET */, 10 /* INET6 */, 16 /* NETLINK */, 17 /* PACKET */, 40 /* VSOCK */, 0x1_0000_0002n]) {
      expect({ family, verdict: verdict("socket", [family, 1, 0]) }).toEqual({ family, verdict: KILL });
      expect({ family, verdict: verdict("socketpair", [family, 1, 0]) }).toEqual({ family, verdict: KILL });
    }
  });

  test("signals go only to this process's threads; prlimit64 only reads; prctl names threads", () => {
    expect(verdict("tgkill", [PID, 17, 34])).toBe(ALLOW);
    expect(verdict("tgkill", [1, 1, 9])).toBe(KILL);
    expect(verdict("prlimit64", [0, 7, 0, 0x7fff0000])).toBe(ALLOW);
    expect(verdict("prlimit64", [0, 7, 0x7fff0000, 0])).toBe(KILL);
    expect(verdict("prctl", [PR.PR_SET_NAME, 0x1000])).toBe(ALLOW);
    expect(verdict("prctl", [PR.PR_SET_VMA, 0])).toBe(ALLOW);
    expect(verdict("prctl", [PR.PR_SET_DUMPABLE, 1])).toBe(actionValue(ACTION.errno(1)));
  });

  test("nothing is created, unless snapshots go to disk", () => {
    const O_RDONLY = 0;
    const O_RDWR = 2;
    const O_CREAT = 0x40;
    const O_TMPFILE = 0x410000;
    expect(verdict("openat", [-100, 0x1000, O_RDONLY | 0x80000])).toBe(ALLOW);
    expect(verdict("openat", [-100, 0x1000, O_RDWR])).toBe(ALLOW);
    expect(verdict("openat", [-100, 0x1000, O_RDWR | O_CREAT])).toBe(KILL);
    expect(verdict("openat", [-100, 0x1000, O_RDWR | O_TMPFILE])).toBe(KILL);
    expect(verdict("open", [0x1000, O_CREAT | 1])).toBe(KILL);
    expect(verdict("mkdir")).toBe(KILL);
    expect(verdict("openat", [-100, 0x1000, O_RDWR | O_CREAT], withSnapshots)).toBe(ALLOW);
    for (const name of ["mkdir", "mkdirat", "rmdir", "rename", "renameat", "renameat2", "link", "linkat", "utimensat", "symlink", "symlinkat"] as const) {
      expect(verdict(name, [], withSnapshots)).toBe(ALLOW);
    }
    // A rotated console log creates and renames files, and nothing more.
    const withLog = compilePolicy(vmmSeccompPolicy({ pid: PID, consoleLog: true }));
    expect(verdict("openat", [-100, 0x1000, O_RDWR | O_CREAT], withLog)).toBe(ALLOW);
    expect(verdict("rename", [], withLog)).toBe(ALLOW);
    for (const name of ["mkdir", "rmdir", "link", "utimensat", "symlink", "symlinkat"] as const) expect(verdict(name, [], withLog)).toBe(KILL);
    expect(vmmSeccompPolicy({ snapshotsToDisk: true, consoleLog: true }).name).toBe("vmm+snapshots-to-disk+console-log");
  });

  test("describePolicy lists every call with its reason, and names ioctl requests", () => {
    const listing = describePolicy(policy);
    expect(listing.defaultAction).toBe("KILL_PROCESS");
    expect(listing.syscalls).toHaveLength(policy.entries.length);
    const ioctl = listing.syscalls.find((entry) => entry.syscall === "ioctl")!;
    expect(ioctl.nr).toBe(16);
    expect(ioctl.cases![0]!.when[0]).toContain("KVM_RUN");
    expect(ioctl.cases![0]!.when[0]).toContain("TUNSETIFF");
    expect(ioctl.cases![0]!.when[0]).toContain("TCSETSW");
    expect(listing.syscalls.find((entry) => entry.syscall === "clone3")!.action).toBe("ERRNO(38)");
    expect(JSON.parse(JSON.stringify(listing))).toEqual(listing);
    const text = formatPolicy(listing).join("\n");
    expect(text).toContain("socket (41): KILL_PROCESS unless a case matches");
    expect(text).toContain("arg0 (low 32 bits) == AF_UNIX");
  });
});

// ---------------------------------------------------------------- installed for real

const CHILD = join(import.meta.dir, "fixtures", "sandbox", "seccomp-child.ts");
const scratch: string[] = [];
afterAll(() => {
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});

function runChild(mode: string) {
  const dir = mkdtempSync(join(tmpdir(), "volt-seccomp-test-"));
  scratch.push(dir);
  return Bun.spawnSync([process.execPath, CHILD, mode], { env: { ...process.env, SANDBOX_DIR: dir }, stdout: "pipe", stderr: "pipe" });
}

describe("installed in a child process", () => {
  test("with the filter on, file reads, Bun.file, new workers, timers, Unix sockets, eventfd, memfd and the GC all work", () => {
    const child = runChild("allowed");
    const lines = child.stdout.toString().trim().split("\n");
    expect({ exit: child.exitCode, signal: child.signalCode ?? null, stderr: child.stderr.toString() }).toEqual({ exit: 0, signal: null, stderr: "" });
    expect(lines.at(-1)).toBe("survived");
    const result = JSON.parse(lines[0]!);
    expect(result).toMatchObject({
      installed: { policy: "vmm", defaultAction: "KILL_PROCESS" },
      readSync: 29,
      readAsync: 29,
      worker0: { doubled: 42, sync: 29, async: 29 },
      worker1: { doubled: 42, sync: 29, async: 29 },
      timers: 3,
      ffiSocket: "ping",
      netSocket: "pong",
      socketpair: true,
      eventfd: true,
      memfd: true,
      ioctlTcgets: -25, // ENOTTY from the kernel: the filter let it through
      tgkill: true,
      clone3: -38, // ENOSYS
      prctlOther: -1, // EPERM
      gc: true,
    });
  }, 20_000);

  const forbidden = ["execve", "spawn", "socket-inet", "mkdir", "create", "ioctl", "tgkill-other", "fork"];
  for (const mode of forbidden) {
    test(`${mode}: the process is killed with SIGSYS`, () => {
      const child = runChild(mode);
      expect(child.stdout.toString()).not.toContain("survived");
      expect(child.signalCode).toBe("SIGSYS");
    }, 20_000);
  }

  test("from a shell, a killed VMM's exit status is 159 (128 + SIGSYS)", () => {
    const dir = mkdtempSync(join(tmpdir(), "volt-seccomp-test-"));
    scratch.push(dir);
    const shell = Bun.spawnSync(["sh", "-c", `"$0" "$1" mkdir; echo "status $?"`, process.execPath, CHILD], {
      env: { ...process.env, SANDBOX_DIR: dir },
      stdout: "pipe",
      stderr: "pipe",
    });
    expect(shell.stdout.toString()).toContain("status 159");
  }, 20_000);
});

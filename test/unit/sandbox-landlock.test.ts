/**
 * Landlock (src/sandbox/landlock.ts) and the VM path policy
 * (src/sandbox/policy.ts).
 *
 * Planning is checked for every ABI version with faked paths; the rights per
 * ABI are checked against the running kernel (it accepts exactly those); and
 * restrict-and-reexec runs for real in child processes, from source and as a
 * compiled binary: inside, a file outside the policy is EACCES from the main
 * thread, from a Worker and from Bun's async file API (its thread pool),
 * while an allowed file reads fine. An unavailable Landlock is reported, not
 * thrown.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SyscallError } from "../../src/ffi/errno.ts";
import {
  LANDLOCK_ACCESS_FS,
  LANDLOCK_RESTRICT_SELF,
  SANDBOX_SYSCALL_NUMBERS,
  closeFd,
  landlockAddPathRule,
  landlockCreateRuleset,
  openPathHandle,
} from "../../src/ffi/sandbox-syscalls.ts";
import { rawSyscall } from "../../src/ffi/shim.ts";
import {
  FILE_RIGHTS,
  LandlockPolicyError,
  describePlan,
  fsRightNames,
  fsRightsForAbi,
  isSandboxed,
  netRightsForAbi,
  planLandlock,
  probeLandlock,
  reexecCommand,
  restrictAndReexec,
  scopesForAbi,
  type LandlockPolicy,
  type PathKind,
} from "../../src/sandbox/landlock.ts";
import {
  RuntimeDirError,
  elfInterpreter,
  executableMappings,
  extractedLibraries,
  prepareRuntime,
  runtimeFacts,
  runtimeRules,
  socketDirs,
  vmLandlockPolicy,
  type RuntimeFacts,
} from "../../src/sandbox/policy.ts";

const FS = LANDLOCK_ACCESS_FS;
const host = probeLandlock();
const hostAbi = host.available ? host.abi : 0;

const scratch: string[] = [];
afterAll(() => {
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});
function scratchDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "volt-landlock-test-"));
  scratch.push(dir);
  return dir;
}

describe("probing the kernel's Landlock", () => {
  test("a version number means available; ENOSYS and EOPNOTSUPP are reported with the reason", () => {
    expect(probeLandlock(() => 7)).toEqual({ available: true, abi: 7 });
    const noSys = probeLandlock(() => -38);
    expect(noSys).toMatchObject({ available: false, errno: 38 });
    expect(noSys.available ? "" : noSys.reason).toContain("not built in");
    const disabled = probeLandlock(() => -95);
    expect(disabled).toMatchObject({ available: false, errno: 95 });
    expect(disabled.available ? "" : disabled.reason).toContain("disabled");
  });

  test("restrictAndReexec on a kernel without Landlock says so instead of throwing or exec'ing", () => {
    const outcome = restrictAndReexec(
      { rules: [] },
      { probe: { available: false, errno: 38, reason: "faked" }, env: {} },
    );
    expect(outcome).toEqual({ status: "unavailable", reason: "faked", errno: 38 });
  });

  test("this machine's kernel answers the probe", () => {
    // The project's machines run 6.18 (ABI 7); the nested L1 kernel 6.1 (ABI 2).
    if (host.available) expect(host.abi).toBeGreaterThanOrEqual(1);
    else expect([38, 95]).toContain(host.errno);
  });
});

describe("rights per ABI version", () => {
  test("filesystem rights grow with the ABI: REFER at 2, TRUNCATE at 3, IOCTL_DEV at 5", () => {
    expect(fsRightsForAbi(1)).toBe((1n << 13n) - 1n);
    expect(fsRightsForAbi(2)).toBe(fsRightsForAbi(1) | FS.LANDLOCK_ACCESS_FS_REFER);
    expect(fsRightsForAbi(3)).toBe(fsRightsForAbi(2) | FS.LANDLOCK_ACCESS_FS_TRUNCATE);
    expect(fsRightsForAbi(4)).toBe(fsRightsForAbi(3));
    expect(fsRightsForAbi(5)).toBe(fsRightsForAbi(4) | FS.LANDLOCK_ACCESS_FS_IOCTL_DEV);
    expect(fsRightsForAbi(7)).toBe(fsRightsForAbi(5));
    expect(netRightsForAbi(3)).toBe(0n);
    expect(netRightsForAbi(4)).toBe(3n);
    expect(scopesForAbi(5)).toBe(0n);
    expect(scopesForAbi(6)).toBe(3n);
  });

  test.skipIf(!host.available)("the kernel accepts exactly the rights Volt says its ABI has", () => {
    const tryCreate = (fs: bigint, net: bigint, scoped: bigint) => {
      try {
        closeFd(landlockCreateRuleset(fs, net, scoped, hostAbi));
        return "ok";
      } catch (error) {
        return error instanceof SyscallError ? error.errno : String(error);
      }
    };
    const fs = fsRightsForAbi(hostAbi);
    expect(tryCreate(fs, 0n, 0n)).toBe("ok");
    expect(tryCreate(fs | (fs + 1n), 0n, 0n)).toBe(22); // the next bit up: EINVAL
    if (hostAbi >= 4) {
      expect(tryCreate(fs, netRightsForAbi(hostAbi), 0n)).toBe("ok");
      expect(tryCreate(fs, netRightsForAbi(hostAbi) | 4n, 0n)).toBe(22);
    }
    if (hostAbi >= 6) {
      expect(tryCreate(fs, 0n, scopesForAbi(hostAbi))).toBe("ok");
      expect(tryCreate(fs, 0n, scopesForAbi(hostAbi) | 4n)).toBe(22);
    }
  });

  test.skipIf(!host.available)("the kernel refuses directory rights on a file (EINVAL), as the planner assumes", () => {
    const dir = scratchDir();
    const file = join(dir, "f");
    writeFileSync(file, "x");
    const ruleset = landlockCreateRuleset(fsRightsForAbi(hostAbi), 0n, 0n, hostAbi);
    const fileFd = openPathHandle(file);
    const dirFd = openPathHandle(dir);
    try {
      landlockAddPathRule(ruleset, fileFd, FILE_RIGHTS & fsRightsForAbi(hostAbi));
      landlockAddPathRule(ruleset, dirFd, fsRightsForAbi(hostAbi));
      expect(() => landlockAddPathRule(ruleset, fileFd, FS.LANDLOCK_ACCESS_FS_READ_DIR)).toThrow(/EINVAL/);
    } finally {
      for (const fd of [fileFd, dirFd, ruleset]) closeFd(fd);
    }
  });

  test.skipIf(hostAbi < 7 || process.getuid?.() !== 0)("ABI 7: the audit flags Volt passes are known to landlock_restrict_self", () => {
    // A bad descriptor with known flags is EBADF; an unknown flag is EINVAL (checked first). Nothing is restricted.
    const call = (flags: number) => rawSyscall(SANDBOX_SYSCALL_NUMBERS.landlock_restrict_self, -1, flags);
    expect(call(LANDLOCK_RESTRICT_SELF.LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON)).toBe(-9);
    expect(call(LANDLOCK_RESTRICT_SELF.LANDLOCK_RESTRICT_SELF_LOG_SAME_EXEC_OFF)).toBe(-9);
    expect(call(8)).toBe(-22);
  });
});

describe("planning a policy", () => {
  const kinds: Record<string, PathKind> = {
    "/vm/kernel": "file",
    "/vm/disk.img": "file",
    "/vm/sockets": "directory",
    "/vm/snapshots": "directory",
    "/dev/kvm": "file",
    "/gone": "missing",
  };
  const kindOf = (path: string) => kinds[path] ?? "missing";
  const policy: LandlockPolicy = {
    rules: [
      { path: "/vm/kernel", access: "read", why: "kernel" },
      { path: "/vm/disk.img", access: "read-write" },
      { path: "/vm/sockets", access: "unix-sockets" },
      { path: "/vm/snapshots", access: ["read-write", "make-dirs"] },
      { path: "/dev/kvm", access: "device" },
      { path: "/gone", access: "read", optional: true },
    ],
  };

  test("ABI 7: everything handled, files get file rights only, TCP denied, IPC scoped, denials logged after exec", () => {
    const plan = planLandlock(policy, 7, kindOf);
    expect(plan.handledFs).toBe(fsRightsForAbi(7));
    expect(plan.handledNet).toBe(3n);
    expect(plan.scoped).toBe(3n);
    expect(plan.restrictFlags).toBe(LANDLOCK_RESTRICT_SELF.LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON);
    expect(plan.unrestricted).toEqual([]);
    const byPath = Object.fromEntries(plan.rules.map((rule) => [rule.path, rule]));
    expect(fsRightNames(byPath["/vm/kernel"]!.allowed)).toEqual(["read_file"]);
    expect(fsRightNames(byPath["/vm/kernel"]!.droppedForFile)).toEqual(["read_dir"]);
    expect(fsRightNames(byPath["/vm/disk.img"]!.allowed)).toEqual(["write_file", "read_file", "truncate"]);
    expect(fsRightNames(byPath["/vm/sockets"]!.allowed)).toEqual(["remove_file", "make_sock"]);
    expect(fsRightNames(byPath["/vm/snapshots"]!.allowed)).toEqual([
      "write_file", "read_file", "read_dir", "remove_dir", "remove_file", "make_dir", "make_reg", "refer", "truncate",
    ]);
    expect(fsRightNames(byPath["/dev/kvm"]!.allowed)).toEqual(["write_file", "read_file", "ioctl_dev"]);
    expect(plan.skipped).toEqual([{ path: "/gone" }]);
    for (const rule of plan.rules) if (rule.kind === "file") expect(rule.allowed & ~FILE_RIGHTS).toBe(0n);
  });

  test("ABI 2 (the nested L1 kernel): rights the ABI lacks are dropped and reported, with what stays unrestricted", () => {
    const plan = planLandlock(policy, 2, kindOf);
    expect(plan.handledFs).toBe(fsRightsForAbi(2));
    expect(plan.handledNet).toBe(0n);
    expect(plan.scoped).toBe(0n);
    expect(plan.restrictFlags).toBe(0);
    const kvm = plan.rules.find((rule) => rule.path === "/dev/kvm")!;
    expect(fsRightNames(kvm.droppedForAbi)).toEqual(["ioctl_dev"]);
    const disk = plan.rules.find((rule) => rule.path === "/vm/disk.img")!;
    expect(fsRightNames(disk.droppedForAbi)).toEqual(["truncate"]);
    expect(plan.unrestricted).toEqual([
      "fs.truncate",
      "fs.ioctl_dev",
      "net.bind_tcp",
      "net.connect_tcp",
      "scope.abstract_unix_socket",
      "scope.signal",
    ]);
    const described = describePlan(plan);
    expect(described).toMatchObject({ abi: 2, denyTcp: false, scoped: [] });
    expect(JSON.stringify(described)).toContain('"droppedForAbi":["ioctl_dev"]');
  });

  test("ABI 1 cannot grant REFER: make-dirs keeps its other rights", () => {
    const plan = planLandlock(policy, 1, kindOf);
    const snapshots = plan.rules.find((rule) => rule.path === "/vm/snapshots")!;
    expect(fsRightNames(snapshots.droppedForAbi)).toEqual(["refer", "truncate"]);
    expect(snapshots.allowed & FS.LANDLOCK_ACCESS_FS_MAKE_DIR).not.toBe(0n);
  });

  test("a missing required path, or a rule that leaves a file nothing, is a policy error", () => {
    expect(() => planLandlock({ rules: [{ path: "/gone", access: "read" }] }, 7, kindOf)).toThrow(LandlockPolicyError);
    expect(() => planLandlock({ rules: [{ path: "/vm/kernel", access: "read-dir" }] }, 7, kindOf)).toThrow(/leaves nothing/);
    expect(() => planLandlock({ rules: [{ path: "/vm/kernel", access: "unix-sockets" }] }, 7, kindOf)).toThrow(/leaves nothing/);
    expect(() => planLandlock({ rules: [{ path: "/dev/kvm", access: "ioctl" }] }, 2, kindOf)).toThrow(/ABI 2/);
  });

  test("TCP and IPC scoping can be left alone", () => {
    const plan = planLandlock({ ...policy, denyTcp: false, scopeIpc: false }, 7, kindOf);
    expect(plan.handledNet).toBe(0n);
    expect(plan.scoped).toBe(0n);
  });
});

describe("re-exec command and marker", () => {
  test("from source: bun, its flags, the script and the arguments", () => {
    expect(reexecCommand("/usr/bin/bun", ["/usr/bin/bun", "/src/cli/main.ts", "run", "--x"], ["--smol"])).toEqual({
      path: "/usr/bin/bun",
      argv: ["/usr/bin/bun", "--smol", "/src/cli/main.ts", "run", "--x"],
    });
  });

  test("compiled: the binary and the user's arguments, without Bun's /$bunfs entry point", () => {
    expect(reexecCommand("/opt/volt", ["bun", "/$bunfs/root/volt", "run", "--x"], [])).toEqual({
      path: "/opt/volt",
      argv: ["/opt/volt", "run", "--x"],
    });
  });

  test("the marker counts only together with no_new_privs", () => {
    expect(isSandboxed({ VOLT_SANDBOXED: "7" }, () => true)).toBe(true);
    expect(isSandboxed({ VOLT_SANDBOXED: "7" }, () => false)).toBe(false);
    expect(isSandboxed({}, () => true)).toBe(false);
    expect(isSandboxed({ VOLT_SANDBOXED: "0" }, () => true)).toBe(false);
  });
});

describe("the VM policy's runtime entries", () => {
  test("executable mappings are read from /proc/<pid>/maps, without anonymous or deleted ones", () => {
    const maps = [
      "00400000-00500000 r--p 00000000 08:01 1 /usr/bin/bun",
      "00500000-00900000 r-xp 00100000 08:01 1 /usr/bin/bun",
      "7f00-7f10 r-xp 00000000 08:01 2 /lib/x86_64-linux-gnu/libc.so.6",
      "7f10-7f20 rw-p 00000000 00:00 0 ",
      "7f20-7f30 r-xp 00000000 00:00 0 [vdso]",
      "7f30-7f40 r-xp 00000000 08:01 3 /tmp/.bun-0-abc.so (deleted)",
      "7f40-7f50 r-xp 00000000 08:01 4 /home/me/my lib.so",
      "7f50-7f60 rw-s 00000000 00:01 5 /memfd:guest (deleted)",
    ].join("\n");
    expect(executableMappings(maps)).toEqual(["/usr/bin/bun", "/lib/x86_64-linux-gnu/libc.so.6", "/home/me/my lib.so"]);
  });

  test("the ELF interpreter comes from PT_INTERP", () => {
    expect(elfInterpreter(process.execPath)).toBe("/lib64/ld-linux-x86-64.so.2");
    const dir = scratchDir();
    writeFileSync(join(dir, "not-elf"), "#!/bin/sh\n".padEnd(100, " "));
    expect(elfInterpreter(join(dir, "not-elf"))).toBeUndefined();
  });

  test("this process's facts: bun, its loader, libc, Volt's shim, the source tree", () => {
    const facts = runtimeFacts();
    expect(facts.pid).toBe(process.pid);
    expect(facts.execPath).toBe(statSync(facts.execPath).isFile() ? facts.execPath : "");
    expect(facts.interpreter).toMatch(/ld-linux-x86-64\.so\.2$/);
    expect(facts.mappedFiles.some((file) => /\/libc\.so\.6$/.test(file))).toBe(true);
    expect(facts.mappedFiles.some((file) => file.endsWith("/build/volt_shim.so"))).toBe(true);
    expect(facts.sourceRoot).toBe(join(import.meta.dir, "..", ".."));
    const rules = runtimeRules(facts);
    expect(rules[0]).toMatchObject({ path: facts.execPath, access: "exec" });
    expect(rules[1]).toMatchObject({ path: facts.interpreter, access: "exec" });
    expect(rules.find((rule) => rule.path === `/proc/${process.pid}`)).toMatchObject({ access: "read" });
    expect(rules.find((rule) => rule.path === facts.sourceRoot)).toMatchObject({ access: "read" });
    expect(rules.filter((rule) => rule.path === facts.execPath)).toHaveLength(1);
    for (const rule of rules) expect(rule.why).toBeString();
  });

  test("a compiled binary's extracted libraries are copied into a private runtime directory, found through TMPDIR", () => {
    const base = scratchDir();
    const lib = join(base, ".bun-0-0123456789abcdef.so");
    writeFileSync(lib, "not really a library");
    const facts: RuntimeFacts = { pid: 1, execPath: "/opt/volt", mappedFiles: ["/lib/libc.so.6", lib, join(base, "other.so")] };
    expect(extractedLibraries(facts.mappedFiles, base)).toEqual([lib]);
    const prepared = prepareRuntime(facts, base);
    const dir = join(base, `volt-runtime-${process.getuid!()}`);
    expect(prepared.env).toEqual({ TMPDIR: dir });
    expect(prepared.facts.runtimeDir).toBe(dir);
    expect(prepared.facts.mappedFiles).toEqual(["/lib/libc.so.6", join(base, "other.so")]);
    expect(readFileSync(join(dir, ".bun-0-0123456789abcdef.so"), "utf8")).toBe("not really a library");
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(runtimeRules(prepared.facts).find((rule) => rule.path === dir)).toMatchObject({ access: "read" });
    // Again: reused as is.
    expect(prepareRuntime(facts, base).env).toEqual({ TMPDIR: dir });
    // A runtime directory others can write to is refused.
    chmodSync(dir, 0o777);
    expect(() => prepareRuntime(facts, base)).toThrow(RuntimeDirError);
    // Nothing extracted: no runtime directory, no TMPDIR.
    expect(prepareRuntime({ ...facts, mappedFiles: ["/lib/libc.so.6"] }, base).env).toEqual({});
    // From source, Bun's transpiler cache (which creates files) is switched off for the re-exec'd process.
    expect(prepareRuntime({ ...facts, mappedFiles: ["/lib/libc.so.6"], sourceRoot: "/src/volt" }, base).env).toEqual({
      BUN_RUNTIME_TRANSPILER_CACHE_PATH: "0",
    });
  });

  test("a VM's policy: its files, /dev/kvm, the tap device, socket and snapshot directories, then the runtime", () => {
    const dir = scratchDir();
    const kernel = join(dir, "vmlinux");
    const disk = join(dir, "disk.img");
    writeFileSync(kernel, "k");
    writeFileSync(disk, "d");
    mkdirSync(join(dir, "snapshots"));
    const facts: RuntimeFacts = { pid: 99, execPath: "/opt/volt", mappedFiles: ["/opt/volt", "/lib/libc.so.6"] };
    const policy = vmLandlockPolicy(
      {
        readOnlyFiles: [kernel],
        readWriteFiles: [disk],
        readWriteDirs: [join(dir, "snapshots")],
        unixSocketDirs: socketDirs([join(dir, "api.sock"), join(dir, "vsock.sock"), undefined]),
        tap: true,
      },
      facts,
    );
    expect(policy.denyTcp).toBe(true);
    expect(policy.scopeIpc).toBe(true);
    const byPath = Object.fromEntries(policy.rules.map((rule) => [rule.path, rule.access]));
    expect(byPath).toMatchObject({
      "/dev/kvm": ["device"],
      "/dev/net/tun": ["device"],
      [kernel]: ["read"],
      [disk]: ["read-write"],
      [join(dir, "snapshots")]: ["read-write", "make-dirs"],
      [dir]: ["unix-sockets"],
      "/opt/volt": ["exec"],
      "/lib/libc.so.6": ["read"],
      "/proc/99": ["read"],
    });
    expect(policy.rules.filter((rule) => rule.path === dir)).toHaveLength(1); // both sockets share one directory
  });
});

// ---------------------------------------------------------------- restrict and re-exec, for real

const FIXTURES = join(import.meta.dir, "fixtures", "sandbox");
const CHILD = join(FIXTURES, "landlock-child.ts");

function childEnv(extra: Record<string, string> = {}) {
  const dir = scratchDir();
  const allowedDir = join(dir, "allowed");
  mkdirSync(allowedDir);
  writeFileSync(join(allowedDir, "ok.txt"), "allowed\n");
  writeFileSync(join(dir, "secret.txt"), "forbidden\n");
  return {
    ...process.env,
    SANDBOX_ALLOWED_DIR: allowedDir,
    SANDBOX_ALLOWED_FILE: join(allowedDir, "ok.txt"),
    SANDBOX_FORBIDDEN_FILE: join(dir, "secret.txt"),
    ...extra,
  };
}

function expectSandboxed(child: ReturnType<typeof Bun.spawnSync>, abi = hostAbi) {
  const stdout = child.stdout?.toString() ?? "";
  expect({ exit: child.exitCode, stderr: child.stderr?.toString() ?? "" }).toEqual({ exit: 0, stderr: "" });
  const report = JSON.parse(stdout.trim().split("\n").at(-1)!);
  expect(report).toMatchObject({
    sandboxed: true,
    abi: String(abi),
    argv: ["one", "two words"],
    main: { allowedSync: "ok", allowedAsync: "ok", forbiddenSync: "EACCES", forbiddenAsync: "EACCES" },
    worker: { allowedSync: "ok", forbiddenSync: "EACCES", forbiddenAsync: "EACCES" },
  });
  return report;
}

describe.skipIf(!host.available)("restrict and re-exec (every thread inside the domain)", () => {
  test("from source: outside the policy is EACCES on the main thread, in a Worker and through Bun.file", () => {
    const child = Bun.spawnSync([process.execPath, CHILD, "one", "two words"], { env: childEnv(), stdout: "pipe", stderr: "pipe" });
    const report = expectSandboxed(child);
    expect(report.tmpdir).toBe(process.env.TMPDIR ?? null);
  }, 30_000);

  test("planned for ABI 2 (the nested L1 kernel's), the older ruleset still confines every thread", () => {
    const child = Bun.spawnSync([process.execPath, CHILD, "one", "two words"], {
      env: childEnv({ SANDBOX_FAKE_ABI: "2" }),
      stdout: "pipe",
      stderr: "pipe",
    });
    expectSandboxed(child, 2);
  }, 30_000);

  test("as a compiled binary (process.execPath is the program; the C shim comes from the private runtime directory)", () => {
    const dir = scratchDir();
    const binary = join(dir, "landlock-child");
    const build = Bun.spawnSync(
      [process.execPath, "build", "--compile", CHILD, join(FIXTURES, "landlock-worker.ts"), "--outfile", binary],
      { stdout: "pipe", stderr: "pipe" },
    );
    expect({ exit: build.exitCode, stderr: build.exitCode === 0 ? "" : build.stderr.toString() }).toEqual({ exit: 0, stderr: "" });
    const child = Bun.spawnSync([binary, "one", "two words"], { env: childEnv(), stdout: "pipe", stderr: "pipe" });
    const report = expectSandboxed(child);
    expect(report.tmpdir).toMatch(/volt-runtime-\d+$/);
  }, 60_000);
});

test("when Landlock is unavailable the child runs on and reports it, rather than failing silently", () => {
  const child = Bun.spawnSync([process.execPath, CHILD], {
    env: childEnv({ SANDBOX_FAKE_ABI: "unavailable" }),
    stdout: "pipe",
    stderr: "pipe",
  });
  expect(child.exitCode).toBe(0);
  expect(JSON.parse(child.stdout.toString().trim())).toEqual({
    sandboxed: false,
    outcome: { status: "unavailable", reason: "faked: no Landlock", errno: 38 },
  });
}, 30_000);

/**
 * The jail (`volt run --jail`): what goes into it and where, the rewritten VM
 * config, the jailer's command line, the refusals, device numbers, cgroup
 * settings. These need neither root nor KVM. The last group, run only as root
 * (with a static busybox), builds a real jail and runs the C jailer in it.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inLibraryDir, parseBytes, parseJailFlags, passedFlags, jailRequested, runJailed } from "../../src/cli/commands/jail.ts";
import {
  JailError,
  accessibleBy,
  cgroup2Mount,
  deviceNumbers,
  jailerArgv,
  kernelDeviceNumber,
  planCgroup,
  planJail,
  prepareJail,
  removeJail,
  type FileFacts,
  type JailSettings,
  type JailedVm,
  type StatFn,
  type VoltRuntime,
} from "../../src/sandbox/jail.ts";
import { elfInterpreter } from "../../src/sandbox/policy.ts";

const root = join(import.meta.dir, "..", "..");

const file = (mode: number, uid = 0, gid = 0): FileFacts => ({ kind: "file", mode, uid, gid });
const dir = (mode: number, uid = 0, gid = 0): FileFacts => ({ kind: "directory", mode, uid, gid });
const chr: FileFacts = { kind: "char-device", mode: 0o666, uid: 0, gid: 0 };

const HOST: Record<string, FileFacts> = {
  "/dev/kvm": chr,
  "/dev/null": chr,
  "/dev/urandom": chr,
  "/dev/net/tun": chr,
  "/opt/volt/volt": file(0o755),
  "/img/root.ext4": file(0o660, 0, 1000),
  "/img/data.img": file(0o644),
  "/dev/sdb": { kind: "block-device", mode: 0o660, uid: 0, gid: 6 },
  "/srv/vm1": dir(0o770, 0, 1000),
  "/srv/snaps": dir(0o700, 1000, 1000),
  "/tmp": dir(0o1777),
};
const stat: StatFn = (path) => HOST[path];

const RUNTIME: VoltRuntime = {
  execPath: "/opt/volt/volt",
  interpreter: { path: "/lib64/ld-linux-x86-64.so.2", file: "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" },
  libraries: ["/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6"],
};

const SETTINGS: JailSettings = { id: "jail-abc", uid: 1000, gid: 1000, dir: "/run/volt/jail/jail-abc" };

function vm(overrides: Partial<JailedVm> = {}): JailedVm {
  return {
    config: {
      kernelPath: "/boot/vmlinux",
      initrdPath: "/boot/initrd.img",
      cmdline: "quiet",
      memoryMiB: 256,
      vcpus: 2,
      virtioDevices: [
        { kind: "block", path: "/img/root.ext4", readOnly: false, root: true, rateLimit: { bandwidth: { size: 1000, refillTimeMs: 100 } } },
        { kind: "block", path: "/img/data.img", readOnly: true, id: "data" },
        { kind: "vsock", guestCid: 3, udsPath: "/srv/vm1/vsock.sock" },
        { kind: "rng" },
      ],
    },
    onReboot: "restart",
    apiSocket: "/srv/vm1/api.sock",
    snapshotDirs: ["/srv/snaps"],
    passFlags: ["--json", "--no-seccomp"],
    ...overrides,
  };
}

describe("planning a jail", () => {
  test("the VM's files are copied or bound to in-jail paths, with device nodes, /proc, a private /tmp and the program's libraries", () => {
    const plan = planJail(vm(), SETTINGS, RUNTIME, stat);
    expect(plan.root).toBe("/run/volt/jail/jail-abc/root");
    expect(plan.jailer).toBe("/run/volt/jail/jail-abc/volt_jailer");
    const byPath = new Map(plan.entries.map((e) => [e.path, e]));
    expect(byPath.get("/")).toMatchObject({ kind: "dir", owner: "root", mode: 0o755 });
    expect(byPath.get("/dev/kvm")).toEqual({ kind: "device", path: "/dev/kvm", from: "/dev/kvm", owner: "jail", mode: 0o600 });
    expect(byPath.get("/dev/null")).toMatchObject({ kind: "device", owner: "root", mode: 0o666 });
    expect(byPath.has("/dev/net/tun")).toBe(false);
    expect(byPath.get("/proc")).toMatchObject({ kind: "dir", mode: 0o555 });
    expect(byPath.get("/tmp")).toMatchObject({ kind: "dir", owner: "jail", mode: 0o700 });
    expect(byPath.get("/volt")).toEqual({ kind: "bind", path: "/volt", from: "/opt/volt/volt", directory: false, readOnly: true });
    expect(byPath.get("/lib64/ld-linux-x86-64.so.2")).toMatchObject({ kind: "copy", from: "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" });
    expect(byPath.get("/usr/lib/x86_64-linux-gnu/libc.so.6")).toMatchObject({ kind: "copy", from: "/usr/lib/x86_64-linux-gnu/libc.so.6" });
    expect(byPath.get("/vm/kernel")).toEqual({ kind: "copy", path: "/vm/kernel", from: "/boot/vmlinux", owner: "jail-group", mode: 0o440 });
    expect(byPath.get("/vm/initrd")).toMatchObject({ kind: "copy", from: "/boot/initrd.img" });
    expect(byPath.get("/vm/drive0-root.ext4")).toEqual({ kind: "bind", path: "/vm/drive0-root.ext4", from: "/img/root.ext4", directory: false, readOnly: false });
    expect(byPath.get("/vm/drive1-data.img")).toMatchObject({ kind: "bind", from: "/img/data.img", readOnly: true });
    // Socket and snapshot directories are shared at their own paths.
    expect(byPath.get("/srv/vm1")).toEqual({ kind: "bind", path: "/srv/vm1", from: "/srv/vm1", directory: true, readOnly: false });
    expect(byPath.get("/srv/snaps")).toMatchObject({ kind: "bind", directory: true });
    expect(byPath.get("/srv")).toMatchObject({ kind: "dir", owner: "root" });
    // Parents always come before what is in them.
    const order = plan.entries.map((e) => e.path);
    for (const [index, path] of order.entries()) {
      if (path === "/") continue;
      const parent = path.slice(0, path.lastIndexOf("/")) || "/";
      expect(order.indexOf(parent)).toBeLessThan(index);
    }
  });

  test("the VM config is rewritten to in-jail paths and keeps every setting; the jailed volt reads it with the passed flags", () => {
    const plan = planJail(vm(), SETTINGS, RUNTIME, stat);
    expect(plan.vmFile).toEqual({
      kernel: "/vm/kernel",
      initrd: "/vm/initrd",
      cmdline: "quiet",
      memMiB: 256,
      vcpus: 2,
      bootTimer: false,
      onReboot: "restart",
      rng: true,
      drives: [
        { path: "/vm/drive0-root.ext4", root: true, rateLimit: { bandwidth: { size: 1000, refillTimeMs: 100 } } },
        { path: "/vm/drive1-data.img", readOnly: true, id: "data" },
      ],
      vsock: { guestCid: 3, udsPath: "/srv/vm1/vsock.sock" },
    });
    const written = plan.entries.find((e) => e.path === "/vm/vm.json");
    expect(written?.kind === "write" && JSON.parse(written.text)).toEqual(plan.vmFile);
    expect(plan.voltArgv).toEqual(["/volt", "run", "--config", "/vm/vm.json", "--api-socket", "/srv/vm1/api.sock", "--snapshot-dir", "/srv/snaps", "--json", "--no-seccomp"]);
  });

  test("the jailer's command line: root, ids, cgroup, netns, rlimits, binds in order, then the jailed volt", () => {
    const cgroup = planCgroup("/sys/fs/cgroup", "jail-abc", { cpuPercent: 50, memoryMax: 512 * 1024 * 1024 });
    const settings: JailSettings = { ...SETTINGS, cgroup, netns: "/run/netns/vm1", rlimitNofile: 1024, rlimitFsize: 1 << 30 };
    const nets = vm({ config: { ...vm().config, virtioDevices: [{ kind: "net", tap: "tap0", mac: "52:54:00:12:34:56" }] }, apiSocket: undefined, snapshotDirs: [], passFlags: [] });
    const plan = planJail(nets, settings, RUNTIME, stat);
    expect(jailerArgv(plan)).toEqual([
      "/run/volt/jail/jail-abc/volt_jailer",
      "--root", "/run/volt/jail/jail-abc/root",
      "--uid", "1000", "--gid", "1000",
      "--cgroup", "/sys/fs/cgroup/volt/jail-abc",
      "--netns", "/run/netns/vm1",
      "--rlimit-nofile", "1024",
      "--rlimit-fsize", String(1 << 30),
      "--bind-ro", "/opt/volt/volt", "/volt",
      "--",
      "/volt", "run", "--config", "/vm/vm.json",
    ]);
    expect(plan.entries.find((e) => e.path === "/dev/net/tun")).toMatchObject({ kind: "device", owner: "jail", mode: 0o600 });
    expect(plan.vmFile.nets).toEqual([{ tap: "tap0", mac: "52:54:00:12:34:56" }]);
  });

  test("a block device drive becomes a device node the jail's group may use, read-only when the drive is", () => {
    const config = { ...vm().config, virtioDevices: [{ kind: "block" as const, path: "/dev/sdb", readOnly: true }] };
    const plan = planJail(vm({ config, apiSocket: undefined, snapshotDirs: [] }), SETTINGS, RUNTIME, stat);
    expect(plan.entries.find((e) => e.path === "/vm/drive0-sdb")).toEqual({ kind: "device", path: "/vm/drive0-sdb", from: "/dev/sdb", owner: "jail-group", mode: 0o440 });
  });

  test("refusals name what the jailed uid could not use", () => {
    const plan = (overrides: Partial<JailedVm>, facts: Record<string, FileFacts | undefined> = {}) =>
      planJail(vm(overrides), SETTINGS, RUNTIME, (path) => (path in facts ? facts[path] : HOST[path]));
    // A writable drive the uid may only read.
    expect(() => plan({}, { "/img/root.ext4": file(0o644) })).toThrow("uid 1000 (gid 1000) cannot read and write the drive /img/root.ext4");
    // A read-only drive it may not read at all.
    expect(() => plan({}, { "/img/data.img": file(0o600) })).toThrow("cannot read the drive /img/data.img");
    // Sockets in a directory it cannot write.
    expect(() => plan({}, { "/srv/vm1": dir(0o755) })).toThrow("cannot create files in /srv/vm1");
    // A socket directory that would cover the jail's own /tmp.
    expect(() => plan({ apiSocket: "/tmp/api.sock" })).toThrow("/tmp cannot be shared into the jail");
    expect(() => plan({ snapshotDirs: ["/"] })).toThrow("/ cannot be shared into the jail");
    // No KVM, or a volt the uid cannot run.
    expect(() => plan({}, { "/dev/kvm": undefined })).toThrow("KVM: /dev/kvm is not a device on this host");
    expect(() => plan({}, { "/opt/volt/volt": file(0o700) })).toThrow("cannot read and execute /opt/volt/volt");
    expect(() => plan({}, { "/img/data.img": dir(0o755) })).toThrow(JailError);
  });

  test("a directory inside another shared one is covered by it; the nested one is not bound twice", () => {
    const plan = planJail(vm({ snapshotDirs: ["/srv/vm1/snaps", "/srv/vm1"] }), SETTINGS, RUNTIME, (p) => HOST[p] ?? (p === "/srv/vm1/snaps" ? dir(0o777) : undefined));
    expect(plan.entries.filter((e) => e.kind === "bind" && e.directory).map((e) => e.path)).toEqual(["/srv/vm1"]);
  });
});

describe("permissions, device numbers, cgroups", () => {
  test("accessibleBy uses the owner, else the group, else the other bits (no supplementary groups)", () => {
    expect(accessibleBy(file(0o600, 1000, 5), 1000, 1000, { read: true, write: true })).toBe(true);
    expect(accessibleBy(file(0o060, 1000, 1000), 1000, 1000, { read: true })).toBe(false);
    expect(accessibleBy(file(0o640, 0, 1000), 1000, 1000, { read: true })).toBe(true);
    expect(accessibleBy(file(0o640, 0, 1000), 1000, 1000, { write: true })).toBe(false);
    expect(accessibleBy(file(0o755), 1000, 1000, { read: true, execute: true })).toBe(true);
    expect(accessibleBy(file(0o750), 1000, 1000, { read: true })).toBe(false);
  });

  test("device numbers: glibc's dev_t in, the kernel's mknod number out", () => {
    expect(deviceNumbers(statSync("/dev/null").rdev)).toEqual({ major: 1, minor: 3 });
    expect(deviceNumbers((10 << 8) | 232)).toEqual({ major: 10, minor: 232 });
    // Minor 300 of major 259 (an NVMe partition): the minor's high bits sit at bit 20 in both encodings.
    const glibc = (259n << 8n) | (300n & 0xffn) | ((300n & ~0xffn) << 12n);
    expect(deviceNumbers(glibc)).toEqual({ major: 259, minor: 300 });
    expect(kernelDeviceNumber(259, 300)).toBe(Number(glibc));
    expect(kernelDeviceNumber(10, 232)).toBe(2792);
    expect(() => kernelDeviceNumber(5000, 1)).toThrow(JailError);
  });

  test("the cgroup v2 mount comes from mountinfo; cpu.max is the percentage of a 100 ms period", () => {
    const mountinfo = [
      "22 1 0:21 / /proc rw,nosuid - proc proc rw",
      "35 24 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu",
      "36 24 0:31 / /sys/fs/cgroup/my\\040unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate",
    ].join("\n");
    expect(cgroup2Mount(mountinfo)).toBe("/sys/fs/cgroup/my unified");
    expect(cgroup2Mount("22 1 0:21 / /proc rw - proc proc rw")).toBeUndefined();
    expect(planCgroup("/sys/fs/cgroup", "j1", { cpuPercent: 150, memoryMax: 1 << 30 })).toEqual({
      root: "/sys/fs/cgroup",
      path: "/sys/fs/cgroup/volt/j1",
      cpuMax: "150000 100000",
      memoryMax: 1 << 30,
    });
    expect(planCgroup("/c", "j2", {})).toEqual({ root: "/c", path: "/c/volt/j2" });
  });
});

describe("the --jail flags", () => {
  const base = { jail: true, uid: "1000", gid: "1001" };

  test("parsed and checked: ids, sizes with K/M/G, percentages, rlimits", () => {
    expect(parseJailFlags({ ...base, "jail-memory-max": "512M", "jail-cpu-quota": "50", "jail-rlimit-nofile": "256", "jail-rlimit-fsize": "2G", "jail-dir": "/srv/j" })).toEqual({
      uid: 1000,
      gid: 1001,
      dir: "/srv/j",
      memoryMax: 512 * 1024 * 1024,
      cpuPercent: 50,
      rlimitNofile: 256,
      rlimitFsize: 2 * 1024 ** 3,
    });
    expect(parseBytes("x", "4096")).toBe(4096);
    expect(parseBytes("x", "1k")).toBe(1024);
    expect(() => parseBytes("x", "1.5G")).toThrow("--x must be a number of bytes");
    expect(() => parseBytes("x", "0")).toThrow();
  });

  test("refused: a jail flag without --jail, missing or zero ids, bad numbers, --detach and --id", () => {
    expect(jailRequested({ uid: "1000" })).toBe(true);
    expect(jailRequested({ json: true })).toBe(false);
    expect(() => parseJailFlags({ uid: "1000" })).toThrow("--uid needs --jail");
    expect(() => parseJailFlags({ jail: true, gid: "1000" })).toThrow("--jail needs --uid");
    expect(() => parseJailFlags({ jail: true, uid: "1000" })).toThrow("--jail needs --gid");
    expect(() => parseJailFlags({ ...base, uid: "0" })).toThrow("--uid 0 would leave the jailed VMM root");
    expect(() => parseJailFlags({ ...base, gid: "-1" })).toThrow("--gid must be a whole number");
    expect(() => parseJailFlags({ ...base, "jail-cpu-quota": "0" })).toThrow("--jail-cpu-quota must be a whole number from 1");
    expect(() => parseJailFlags({ ...base, "jail-rlimit-nofile": "8" })).toThrow("--jail-rlimit-nofile must be a whole number from 64");
    expect(() => parseJailFlags({ ...base, detach: true })).toThrow("--detach is not supported with --jail");
    expect(() => parseJailFlags({ ...base, id: "web1" })).toThrow("--id is not supported with --jail");
    expect(() => parseJailFlags({ ...base, "jail-netns": "/nonexistent/netns" })).toThrow("--jail-netns /nonexistent/netns does not exist");
    expect(passedFlags({ json: true, "no-landlock": true, "no-seccomp": false })).toEqual(["--json", "--no-landlock"]);
  });

  test("the libraries copied into the jail: those in the loader's directories, not a native addon from a node_modules", () => {
    for (const path of ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib64/libc.so.6", "/lib64/libdl.so.2", "/usr/local/lib/libfoo.so.1"]) {
      expect(inLibraryDir(path)).toBe(true);
    }
    for (const path of ["/work/main/node_modules/@msgpackr-extract/msgpackr-extract-linux-x64/node.napi.glibc.node", "/tmp/.bun-123-volt_shim.so", "/usr/lib/x86_64-linux-gnu/sub/dir/libx.so", "/opt/lib/liby.so"]) {
      expect(inLibraryDir(path)).toBe(false);
    }
  });

  test("runJailed refuses without root, and from source (the jail runs the one compiled binary)", async () => {
    const input = { parsed: base, rawArgs: [], config: { kernelPath: "/k", memoryMiB: 128, vcpus: 1 }, onReboot: "exit" as const };
    const realGetuid = process.getuid;
    process.getuid = () => 1000;
    try {
      await expect(runJailed(input)).rejects.toThrow("the jail needs root");
    } finally {
      process.getuid = realGetuid;
    }
    if (process.getuid?.() === 0) await expect(runJailed(input)).rejects.toThrow("the jail needs the compiled volt (bun run build)");
  });

  test("volt run --jail from source exits 2 with the reason", () => {
    const result = Bun.spawnSync(["bun", "src/cli/main.ts", "run", "--jail", "--uid", "1000", "--gid", "1000", "--kernel", "/bin/sh", "--initrd", "/bin/sh"], { cwd: root, stdin: "ignore" });
    expect(result.exitCode).toBe(2);
    expect(result.stderr.toString()).toMatch(/the jail needs (root|the compiled volt)/);
  });
});

// ---------------------------------------------------------------- as root: a real jail, no KVM

const busybox = "/bin/busybox";
// A static busybox (no ELF interpreter) runs in a jail holding nothing but itself.
const canJail = process.getuid?.() === 0 && existsSync(busybox) && elfInterpreter(busybox) === undefined && existsSync(join(root, "build", "volt_jailer"));

describe.skipIf(!canJail)("a real jail (root; busybox stands in for volt)", () => {
  test("the jailed program runs as the uid in its own namespaces, sees only the jail, and cannot write what is read-only", async () => {
    const work = mkdtempSync(join(tmpdir(), "volt-jail-unit-"));
    try {
      const kernel = join(work, "vmlinux");
      writeFileSync(kernel, "kernel bytes");
      const rw = join(work, "rw.img");
      const ro = join(work, "ro.img");
      writeFileSync(rw, "rw");
      writeFileSync(ro, "ro");
      Bun.spawnSync(["chown", "1000:1000", rw]);
      const sockets = join(work, "sockets");
      Bun.spawnSync(["mkdir", "-m", "0777", sockets]);
      const settings: JailSettings = { id: "unit", uid: 1000, gid: 1000, dir: join(work, "jail"), rlimitNofile: 100 };
      const plan = planJail(
        {
          config: {
            kernelPath: kernel,
            memoryMiB: 128,
            vcpus: 1,
            // No KVM needed: /dev/null stands in as the device whose numbers the jail's /dev/kvm copies.
            kvmPath: "/dev/null",
            virtioDevices: [
              { kind: "block", path: rw, readOnly: false },
              { kind: "block", path: ro, readOnly: true },
            ],
          },
          onReboot: "exit",
          apiSocket: join(sockets, "api.sock"),
          snapshotDirs: [],
          passFlags: [],
        },
        settings,
        // busybox is static: no interpreter; it is copied in as if it were a library.
        { execPath: busybox, libraries: [busybox] },
      );
      prepareJail(plan, readFileSync(join(root, "build", "volt_jailer")));
      expect(statSync(join(plan.root, "dev", "kvm")).uid).toBe(1000);
      expect(statSync(join(plan.root, "dev", "kvm")).isCharacterDevice()).toBe(true);
      expect(statSync(join(plan.root, "vm", "kernel")).mode & 0o7777).toBe(0o440);
      const script = [
        "echo uid=$(id -u) gid=$(id -g) groups=$(id -G)",
        "echo pids=$(ls /proc | grep -E '^[0-9]+$' | tr '\\n' ,)",
        "echo root=$(ls / | tr '\\n' ,)",
        "echo kernel=$(cat /vm/kernel)",
        "echo x > /vm/kernel 2>/dev/null && echo kernel-writable || echo kernel-read-only",
        "echo x >> /vm/drive1-ro.img 2>/dev/null && echo ro-writable || echo ro-read-only",
        "echo x >> /vm/drive0-rw.img && echo rw-writable",
        "touch /tmp/scratch && echo tmp-writable",
        `touch ${sockets}/made-inside && echo sockets-writable`,
        "echo nofile=$(ulimit -n)",
        "echo hostname=$(hostname) cgroups-not-at-root=$(grep -vc ':/$' /proc/self/cgroup)",
        "echo net=$(cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | tr '\\n' ,)",
        "exit 7",
      ].join("\n");
      const argv = jailerArgv({ ...plan, voltArgv: [busybox, "sh", "-c", script] });
      const result = Bun.spawnSync(argv, { env: { PATH: "/bin" }, stdin: "ignore" });
      const out = result.stdout.toString();
      if (result.exitCode !== 7) console.error(out, result.stderr.toString());
      expect(result.exitCode).toBe(7);
      expect(out).toContain("uid=1000 gid=1000 groups=1000");
      expect(out).toContain("pids=1,");
      // Only the jail: the busybox "library" put /bin there; no etc, home, usr, ...
      expect(out).toContain("root=bin,dev,proc,tmp,vm,volt,");
      expect(out).toContain(`kernel=kernel bytes`);
      expect(out).toContain("kernel-read-only");
      expect(out).toContain("ro-read-only");
      expect(out).toContain("rw-writable");
      expect(out).toContain("tmp-writable");
      expect(out).toContain("sockets-writable");
      expect(out).toContain("nofile=100");
      // Its own host name, and a cgroup namespace: no host names show.
      expect(out).toContain("hostname=volt cgroups-not-at-root=0");
      expect(out).toContain("net=lo,");
      // What the jail wrote through its binds is on the host; its own /tmp is not.
      expect(readFileSync(rw, "utf8")).toBe("rwx\n");
      expect(readFileSync(ro, "utf8")).toBe("ro");
      expect(existsSync(join(sockets, "made-inside"))).toBe(true);
      expect(existsSync("/tmp/scratch")).toBe(false);

      // A failing step is named, with status 127; the jail directory is removed without touching what was bound.
      const failed = Bun.spawnSync(jailerArgv({ ...plan, voltArgv: ["/no/such/program"] }), { stdin: "ignore" });
      expect(failed.exitCode).toBe(127);
      expect(failed.stderr.toString()).toContain("volt_jailer: execve /no/such/program");
      // The jailer passes SIGTERM on (pid 1 of a namespace only gets signals it handles); a signal that ends the program comes back as 128+n.
      const trapping = Bun.spawn(jailerArgv({ ...plan, voltArgv: [busybox, "sh", "-c", "trap 'exit 3' TERM; echo ready; sleep 30 & wait"] }), { stdin: "ignore", stdout: "pipe" });
      await trapping.stdout.getReader().read();
      trapping.kill("SIGTERM");
      expect(await trapping.exited).toBe(3);
      const killed = Bun.spawn(jailerArgv({ ...plan, voltArgv: [busybox, "sh", "-c", "echo ready; sleep 30"] }), { stdin: "ignore", stdout: "pipe" });
      await killed.stdout.getReader().read();
      const inner = readFileSync(`/proc/${killed.pid}/task/${killed.pid}/children`, "utf8").trim();
      process.kill(Number(inner), "SIGKILL");
      expect(await killed.exited).toBe(128 + 9);
      removeJail(plan);
      expect(existsSync(settings.dir)).toBe(false);
      expect(readFileSync(rw, "utf8")).toBe("rwx\n");
      expect(existsSync(join(sockets, "made-inside"))).toBe(true);
      // A jail directory is never reused.
      prepareJail(plan, new Uint8Array());
      expect(() => prepareJail(plan, new Uint8Array())).toThrow("already exists");
      removeJail(plan);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
});

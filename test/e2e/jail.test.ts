/**
 * `volt run --jail` on real KVM, as root (issue #6, item 4): a guest boots
 * while the VMM is jailed, and from the host the test shows that the VMM
 *  - sees only the jail's files: /proc/<pid>/root lists the jail and nothing
 *    of the host (not the checkout, not /etc);
 *  - sees no host process: its own /proc (read through /proc/<pid>/root/proc)
 *    lists one pid, itself as 1, and NSpid says the same;
 *  - runs as the requested uid and gid, with no supplementary groups, in its
 *    own mount, PID, IPC, UTS and network namespaces (only `lo`), with the
 *    rlimits and cgroup v2 limits asked for, and still under Landlock and seccomp;
 * and that the jail directory and cgroup are gone afterwards.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildInitramfs } from "../../src/image/initramfs.ts";
import { cgroup2Mount } from "../../src/sandbox/jail.ts";
import { requireKvm, sandboxViolations } from "./kvm.ts";

const root = join(import.meta.dir, "..", "..");
const volt = join(root, "dist", "volt");
const work = mkdtempSync(join(tmpdir(), "volt-jail-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const kvmUsable = requireKvm();
const kernel = process.env.VOLT_TEST_VMLINUX ?? process.env.VOLT_TEST_BZIMAGE;
const isRoot = process.getuid?.() === 0;
const UID = 1000;
const GID = 1000;

/** Direct children of a process, from /proc/<pid>/stat. */
function childrenOf(parent: number): number[] {
  const pids: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === parent) pids.push(Number(name));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

function statusField(pid: number, field: string): string {
  const line = readFileSync(`/proc/${pid}/status`, "utf8")
    .split("\n")
    .find((l) => l.startsWith(`${field}:`));
  return (line ?? "").slice(field.length + 1).trim();
}

/** Every path under dir (relative), not descending into the directories named in `skip`. */
function listTree(dir: string, skip: readonly string[], prefix = ""): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const rel = prefix === "" ? name : `${prefix}/${name}`;
    out.push(rel);
    if (skip.includes(rel)) continue;
    const info = statSync(join(dir, name), { throwIfNoEntry: false });
    if (info?.isDirectory()) out.push(...listTree(join(dir, name), skip, rel));
  }
  return out;
}

/**
 * A cgroup v2 hierarchy with the cpu and memory controllers, or undefined. In
 * the nested harness L1 mounts none, so the test mounts one there (L1 is
 * thrown away after the run); a host's own hierarchy is used as it is.
 */
function cgroupRoot(): string | undefined {
  let mount = cgroup2Mount(readFileSync("/proc/self/mountinfo", "utf8"));
  if (mount === undefined && process.env.VOLT_KVM_MODE === "nested") {
    if (Bun.spawnSync(["mount", "-t", "cgroup2", "none", "/sys/fs/cgroup"]).exitCode === 0) mount = "/sys/fs/cgroup";
  }
  if (mount === undefined) return undefined;
  const controllers = readFileSync(join(mount, "cgroup.controllers"), "utf8").split(/\s+/);
  return controllers.includes("cpu") && controllers.includes("memory") ? mount : undefined;
}

describe.skipIf(!kvmUsable || !isRoot)(`volt run --jail (${process.env.VOLT_KVM_MODE ?? "unknown"} KVM)`, () => {
  test("the jailed VMM boots a guest, sees only its jail's files and its own pid, runs as uid/gid 1000 in new namespaces with its limits", async () => {
    expect(kernel).toBeDefined();
    // A host file the VMM must not see.
    const secret = join(work, "host-secret.txt");
    writeFileSync(secret, "host only\n");
    const initrd = join(work, "jail.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ script: 'echo VOLT-JAIL-READY\nread -r line\necho "VOLT-JAIL-GOT:$line"', exit: "reboot" }));

    const cgroup = cgroupRoot();
    if (cgroup === undefined) console.warn("jail e2e: no cgroup v2 hierarchy with cpu and memory here: cgroup limits not tested");
    const args = [
      "run", "--jail", "--uid", String(UID), "--gid", String(GID),
      "--kernel", kernel!, "--initrd", initrd, "--mem", "128",
      "--jail-rlimit-nofile", "512", "--jail-rlimit-fsize", "1G",
      // A CPU quota above what L1 has (2 CPUs) is written but never throttles: a throttled vCPU thread inside the
      // emulated SVM of the nested setup coincided with L1 kernel crashes (stack guard page hit in KVM_RUN).
      ...(cgroup !== undefined ? ["--jail-memory-max", "1G", "--jail-cpu-quota", "400"] : []),
    ];
    const child = Bun.spawn([volt, ...args], { cwd: root, env: { ...process.env, NO_COLOR: "1" }, stdin: "pipe", stdout: "pipe", stderr: "pipe" });
    const killer = setTimeout(() => child.kill("SIGKILL"), 300_000);
    let consoleText = "";
    let stderrText = "";
    const stderrDone = (async () => {
      for await (const chunk of child.stderr) stderrText += new TextDecoder().decode(chunk);
    })();
    // Read the console to its end (leaving the pipe would fail volt's next write with EPIPE); wait for the marker meanwhile.
    let stdoutEnded = false;
    const stdoutDone = (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of child.stdout) consoleText += decoder.decode(chunk);
      stdoutEnded = true;
    })();
    while (!consoleText.includes("VOLT-JAIL-READY") && !stdoutEnded) await Bun.sleep(50);
    const booted = consoleText.includes("VOLT-JAIL-READY");
    if (!booted) {
      clearTimeout(killer);
      await stderrDone;
      console.error(`the jailed guest did not get ready:\n${consoleText.slice(-3000)}\n${stderrText.slice(-3000)}`);
    }
    expect(booted).toBe(true);

    // The processes: volt (root, host) -> volt_jailer (root) -> the jailed volt.
    const jailers = childrenOf(child.pid);
    expect(jailers.length).toBe(1);
    const jailer = jailers[0]!;
    expect(readFileSync(`/proc/${jailer}/cmdline`, "utf8").split("\0")[0]).toEndWith("/volt_jailer");
    const vmms = childrenOf(jailer);
    expect(vmms.length).toBe(1);
    const vmm = vmms[0]!;
    const id = /volt: jail (\S+):/.exec(stderrText)?.[1];
    expect(id).toBeDefined();
    console.log(`jail ${id}: host volt ${child.pid}, jailer ${jailer}, VMM ${vmm}`);

    // Runs as the requested uid and gid, no groups; pid 1 of its own PID namespace; Landlock's no_new_privs and seccomp on.
    expect(statusField(vmm, "Uid").split(/\s+/)).toEqual([String(UID), String(UID), String(UID), String(UID)]);
    expect(statusField(vmm, "Gid").split(/\s+/)).toEqual([String(GID), String(GID), String(GID), String(GID)]);
    expect(statusField(vmm, "Groups")).toBe("");
    expect(statusField(vmm, "NSpid").split(/\s+/)).toEqual([String(vmm), "1"]);
    expect(statusField(vmm, "NoNewPrivs")).toBe("1");
    expect(statusField(vmm, "Seccomp")).toBe("2");
    expect(statusField(vmm, "CapEff")).toBe("0000000000000000");
    for (const ns of ["mnt", "pid", "net", "ipc", "uts"]) {
      expect(readlinkSync(`/proc/${vmm}/ns/${ns}`)).not.toBe(readlinkSync(`/proc/self/ns/${ns}`));
    }

    // Its files: only the jail's. The host's root has /etc, the checkout and the secret; the VMM's has none of them.
    const jailRoot = `/proc/${vmm}/root`;
    const tree = listTree(jailRoot, ["proc", "tmp"]);
    console.log(`the VMM's file system:\n  ${tree.join("\n  ")}`);
    expect(readdirSync(jailRoot).filter((name) => !["dev", "lib64", "usr", "lib", "proc", "tmp", "vm", "volt"].includes(name))).toEqual([]);
    for (const name of ["volt", "vm/kernel", "vm/initrd", "vm/vm.json", "dev/kvm", "dev/null", "dev/urandom"]) expect(tree).toContain(name);
    for (const path of tree) {
      // Beyond the VM's files and devices: the program and its shared libraries, and their directories.
      const ok = /^(dev|dev\/(kvm|null|urandom)|proc|tmp|vm|vm\/(kernel|initrd|vm\.json)|volt|lib64|lib64\/ld-linux[^/]*|(usr\/)?lib(\/x86_64-linux-gnu)?|usr|(usr\/)?lib(\/x86_64-linux-gnu)?\/[^/]+\.so[^/]*)$/.test(path);
      if (!ok) console.error(`unexpected in the jail: ${path}`);
      expect(ok).toBe(true);
    }
    expect(existsSync("/etc/passwd") || existsSync("/etc/hostname")).toBe(true);
    expect(existsSync(`${jailRoot}/etc`)).toBe(false);
    expect(existsSync(`${jailRoot}${secret}`)).toBe(false);
    expect(existsSync(`${jailRoot}${root}`)).toBe(false);
    expect(statSync(`${jailRoot}/dev/kvm`).uid).toBe(UID);

    // Its processes: its own /proc lists itself alone, as pid 1; the host has many.
    const hostPids = readdirSync("/proc").filter((n) => /^\d+$/.test(n));
    const jailPids = readdirSync(`${jailRoot}/proc`).filter((n) => /^\d+$/.test(n));
    console.log(`pids: ${hostPids.length} on the host, the VMM sees ${JSON.stringify(jailPids)}`);
    expect(jailPids).toEqual(["1"]);
    expect(hostPids.length).toBeGreaterThan(3);
    expect(readFileSync(`${jailRoot}/proc/1/cmdline`, "utf8").split("\0").slice(0, 4)).toEqual(["/volt", "run", "--config", "/vm/vm.json"]);
    // Its own host name (a new UTS namespace), asked from inside that namespace.
    const hostname = Bun.spawnSync(["nsenter", "-t", String(vmm), "-u", "hostname"]);
    if (hostname.exitCode === 0) expect(hostname.stdout.toString().trim()).toBe("volt");
    // Its network: a namespace with only the loopback interface.
    const interfaces = readFileSync(`/proc/${vmm}/net/dev`, "utf8").split("\n").slice(2).map((l) => l.split(":")[0]!.trim()).filter((n) => n !== "");
    expect(interfaces).toEqual(["lo"]);

    // Limits.
    const limits = readFileSync(`/proc/${vmm}/limits`, "utf8");
    expect(limits).toMatch(/Max open files\s+512\s+512/);
    expect(limits).toMatch(/Max file size\s+1073741824\s+1073741824/);
    if (cgroup !== undefined) {
      expect(readFileSync(`/proc/${vmm}/cgroup`, "utf8").trim()).toBe(`0::/volt/${id}`);
      expect(readFileSync(join(cgroup, "volt", id!, "memory.max"), "utf8").trim()).toBe(String(1024 ** 3));
      expect(readFileSync(join(cgroup, "volt", id!, "cpu.max"), "utf8").trim()).toBe("400000 100000");
    }

    // The guest carries on and ends; the jailed volt's status comes back through the jailer.
    child.stdin.write("through the jail\n");
    child.stdin.flush();
    const exitCode = await child.exited;
    clearTimeout(killer);
    await stderrDone;
    await stdoutDone;
    if (exitCode !== 0 || !consoleText.includes("VOLT-JAIL-GOT")) {
      // Also to a file: a nested run's relayed output can lose a long message.
      const report = `exit status ${exitCode}\n--- volt's stderr\n${stderrText}\n--- console (end)\n${consoleText.slice(-3000)}\n--- dmesg (end)\n${Bun.spawnSync(["dmesg"]).stdout.toString().slice(-4000)}`;
      console.error(report);
      writeFileSync(join(root, "build", "test-reports", "e2e-jail-failure.txt"), report);
    }
    expect(consoleText).toContain("VOLT-JAIL-GOT:through the jail");
    expect(exitCode).toBe(0);
    // Cleaned up: the jail directory and the cgroup.
    const runtimeBase = process.env.XDG_RUNTIME_DIR || "/run";
    expect(existsSync(join(runtimeBase, "volt", "jail", id!))).toBe(false);
    if (cgroup !== undefined) expect(existsSync(join(cgroup, "volt", id!))).toBe(false);
    expect(sandboxViolations()).toEqual([]);
  }, 400_000);

  test("without root-only prerequisites the jail refuses clearly: uid 0, --net without --jail-netns, a flag without --jail", () => {
    const initrd = join(work, "refuse.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ script: "true", exit: "reboot" }));
    const run = (extra: string[]) => Bun.spawnSync([volt, "run", "--kernel", kernel!, "--initrd", initrd, "--mem", "128", ...extra], { cwd: root, stdin: "ignore" });
    const uid0 = run(["--jail", "--uid", "0", "--gid", "1000"]);
    expect(uid0.exitCode).toBe(2);
    expect(uid0.stderr.toString()).toContain("--uid 0 would leave the jailed VMM root");
    const net = run(["--jail", "--uid", "1000", "--gid", "1000", "--net", "tap=tap9"]);
    expect(net.exitCode).toBe(2);
    expect(net.stderr.toString()).toContain("--jail-netns");
    const noJail = run(["--uid", "1000"]);
    expect(noJail.exitCode).toBe(2);
    expect(noJail.stderr.toString()).toContain("--uid needs --jail");
  });
});

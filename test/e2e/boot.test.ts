/**
 * `volt run` boots real Linux guests on real KVM. Each boot costs seconds to
 * tens of seconds here, so each booted guest answers several checks at once.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildInitramfs } from "../../src/image/initramfs.ts";
import { requireKvm } from "./kvm.ts";

const root = join(import.meta.dir, "..", "..");
const volt = join(root, "dist", "volt");
const work = mkdtempSync(join(tmpdir(), "volt-boot-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const kvmUsable = requireKvm();
const bzImage = process.env.VOLT_TEST_BZIMAGE;
const vmlinux = process.env.VOLT_TEST_VMLINUX;
// Under CI the harness always provides both kernels; a missing one must fail the boot test, not skip it.
const inCi = process.env.CI === "true";

/** An initramfs whose /init runs `script` and reboots (reboot=k: the i8042 reset ends volt with 0). */
function initramfs(name: string, script: string): string {
  const path = join(work, `${name}.cpio.gz`);
  writeFileSync(path, buildInitramfs({ script, exit: "reboot" }));
  return path;
}

function runVolt(args: string[], timeoutMs = 300_000) {
  const started = performance.now();
  const child = Bun.spawnSync([volt, ...args], { cwd: root, env: { ...process.env, NO_COLOR: "1" }, timeout: timeoutMs, stdin: "ignore" });
  return { exitCode: child.exitCode, stdout: child.stdout.toString(), stderr: child.stderr.toString(), seconds: (performance.now() - started) / 1000 };
}

const PROBE = [
  "echo VOLT-PROBE-START",
  'echo "nproc=$(nproc)"',
  "grep MemTotal /proc/meminfo",
  "echo VOLT-PROBE-END",
].join("\n");

function parseProbe(stdout: string) {
  const nproc = Number(stdout.match(/nproc=(\d+)/)?.[1]);
  const memTotalKiB = Number(stdout.match(/MemTotal:\s+(\d+) kB/)?.[1]);
  return { nproc, memTotalKiB };
}

describe.skipIf(!kvmUsable)(`volt run boots Linux (${process.env.VOLT_KVM_MODE ?? "unknown"} KVM)`, () => {
  test("environment provides a guest kernel", () => {
    expect(bzImage ?? vmlinux).toBeDefined();
  });

  test.skipIf(!bzImage && !inCi)("Debian's bzImage with a busybox initramfs reaches /init, 2 vCPUs and 256 MiB are what the guest sees, exit 0", () => {
    const result = runVolt(["run", "--kernel", bzImage!, "--initrd", initramfs("probe", PROBE), "--mem", "256", "--vcpus", "2", "--json"]);
    console.log(`bzImage boot took ${result.seconds.toFixed(1)} s`);
    if (result.exitCode !== 0) console.error(result.stderr.slice(-4000));
    expect(result.stderr).toContain("VOLT-PROBE-END");
    const outcome = JSON.parse(result.stdout);
    expect(outcome).toMatchObject({ ok: true, outcome: "reboot", kernel: { format: "bzimage", protocol: "linux64" } });
    expect(result.exitCode).toBe(0);
    const probe = parseProbe(result.stderr);
    expect(probe.nproc).toBe(2);
    // MemTotal excludes what the kernel reserves for itself; it must still be most of 256 MiB and not more.
    expect(probe.memTotalKiB).toBeGreaterThan(200 * 1024);
    expect(probe.memTotalKiB).toBeLessThanOrEqual(256 * 1024);
  });

  test.skipIf(!vmlinux && !inCi)("an ELF vmlinux boots through PVH", () => {
    const result = runVolt(["run", "--kernel", vmlinux!, "--initrd", initramfs("pvh", PROBE), "--mem", "128", "--json"]);
    console.log(`vmlinux (PVH) boot took ${result.seconds.toFixed(1)} s`);
    if (result.exitCode !== 0) console.error(result.stderr.slice(-4000));
    expect(result.stderr).toContain("VOLT-PROBE-END");
    expect(JSON.parse(result.stdout)).toMatchObject({ ok: true, kernel: { format: "elf", protocol: "pvh" } });
    expect(parseProbe(result.stderr).nproc).toBe(1);
  });
});

describe.skipIf(!kvmUsable)(`guest lifecycle: poweroff, panic, interactive console (${process.env.VOLT_KVM_MODE ?? "unknown"} KVM)`, () => {
  // The fastest kernel at hand: these checks are about Volt, not the kernel.
  const kernel = vmlinux ?? bzImage;

  test("`poweroff -f` in the guest ends volt with status 0 and outcome poweroff", () => {
    const image = join(work, "poweroff.cpio.gz");
    writeFileSync(image, buildInitramfs({ script: "echo VOLT-POWEROFF-NEXT", exit: "poweroff" }));
    const result = runVolt(["run", "--kernel", kernel!, "--initrd", image, "--json"]);
    if (result.exitCode !== 0) console.error(result.stderr.slice(-3000));
    expect(result.stderr).toContain("VOLT-POWEROFF-NEXT");
    expect(JSON.parse(result.stdout)).toMatchObject({ ok: true, outcome: "poweroff" });
    expect(result.exitCode).toBe(0);
  });

  test("a guest kernel panic ends volt within seconds with status 5", () => {
    // An init that exits makes every Linux panic ("Attempted to kill init").
    const result = runVolt(["run", "--kernel", kernel!, "--initrd", initramfs("panic", "true"), "--cmdline", "rdinit=/bin/busybox", "--json"], 120_000);
    if (result.exitCode !== 5) console.error(result.stderr.slice(-3000));
    expect(result.stderr).toContain("Kernel panic - not syncing");
    expect(JSON.parse(result.stdout)).toMatchObject({ ok: false, outcome: "panic", exitCode: 5 });
    expect(result.exitCode).toBe(5);
  });

  test("the guest's shell answers a command typed on the console", async () => {
    const image = initramfs("interactive", 'echo VOLT-READY\nread -r line\necho "VOLT-GOT:$line"');
    const child = Bun.spawn([volt, "run", "--kernel", kernel!, "--initrd", image, "--json"], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
    const timer = setTimeout(() => child.kill("SIGKILL"), 240_000);
    let console = "";
    let typed = false;
    const decoder = new TextDecoder();
    for await (const chunk of child.stderr) {
      console += decoder.decode(chunk);
      if (!typed && console.includes("VOLT-READY")) {
        typed = true;
        child.stdin.write("hello from the host\n");
        child.stdin.flush();
      }
    }
    clearTimeout(timer);
    const exitCode = await child.exited;
    const outcome = await new Response(child.stdout).text();
    if (exitCode !== 0 || !console.includes("VOLT-GOT")) globalThis.console.error(`exit ${exitCode}, outcome ${outcome}\n${console.slice(-1500)}`);
    expect(console).toContain("VOLT-GOT:hello from the host");
    expect(exitCode).toBe(0);
  });
});

describe("volt run rejects bad input before creating a VM", () => {
  const kernel = bzImage ?? vmlinux ?? "/bin/sh";
  test.each([
    ["a missing kernel", ["--kernel", "/no/such/kernel"], "cannot read kernel /no/such/kernel: no such file"],
    ["a file that is not a kernel", ["--kernel", "/etc/hostname"], "not a Linux kernel"],
    ["--mem 0", ["--kernel", kernel, "--mem", "0"], "mem 0 MiB"],
    ["--vcpus 0", ["--kernel", kernel, "--vcpus", "0"], "vcpus must be a whole number from 1 to 64"],
    ["--mem that is not a number", ["--kernel", kernel, "--mem", "lots"], "--mem must be a whole number"],
    ["an unknown option", ["--kernel", kernel, "--memory", "64"], "unknown option '--memory'"],
  ])("%s", (_, args, message) => {
    const result = runVolt(["run", ...args]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(message);
  });
});

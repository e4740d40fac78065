/**
 * `volt run` boots real Linux guests on real KVM. Each boot costs seconds to
 * tens of seconds here, so each booted guest answers several checks at once.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BOOT_TIMER_ADDRESS } from "../../src/arch/x86_64/layout.ts";
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

  test.skipIf(!vmlinux && !inCi)("an ELF vmlinux boots through PVH from a config file: 4 vCPUs, 512 MiB, the boot timer reports", () => {
    // The guest's /init writes the boot timer's magic byte first, as a benchmark guest would.
    const script = `devmem 0x${BOOT_TIMER_ADDRESS.toString(16)} 8 123\n${PROBE}`;
    const config = join(work, "pvh-vm.json");
    // Relative paths in a config file are relative to the file.
    const initrd = initramfs("pvh", script);
    writeFileSync(config, JSON.stringify({ kernel: vmlinux, initrd: initrd.slice(work.length + 1), memMiB: 512, vcpus: 4, bootTimer: true }));
    const result = runVolt(["run", "--config", config, "--json"]);
    console.log(`vmlinux (PVH) boot took ${result.seconds.toFixed(1)} s`);
    if (result.exitCode !== 0) console.error(result.stderr.slice(-4000));
    expect(result.stderr).toContain("VOLT-PROBE-END");
    const outcome = JSON.parse(result.stdout);
    expect(outcome).toMatchObject({ ok: true, kernel: { format: "elf", protocol: "pvh" } });
    const probe = parseProbe(result.stderr);
    expect(probe.nproc).toBe(4);
    expect(probe.memTotalKiB).toBeGreaterThan(450 * 1024);
    expect(probe.memTotalKiB).toBeLessThanOrEqual(512 * 1024);
    // From VMM start to the write: positive, and shorter than the whole run.
    expect(outcome.bootTimeMs).toBeGreaterThan(0);
    expect(outcome.bootTimeMs).toBeLessThan(result.seconds * 1000);
  });
});

describe.skipIf(!kvmUsable)(`guest lifecycle: poweroff, panic, interactive console (${process.env.VOLT_KVM_MODE ?? "unknown"} KVM)`, () => {
  // The fastest kernel at hand: these checks are about Volt, not the kernel.
  const kernel = vmlinux ?? bzImage;

  test("`poweroff -f` in the guest ends volt with status 0 and outcome poweroff; without --boot-timer a timer write reports nothing", () => {
    const image = join(work, "poweroff.cpio.gz");
    const script = `devmem 0x${BOOT_TIMER_ADDRESS.toString(16)} 8 123\necho VOLT-POWEROFF-NEXT`;
    writeFileSync(image, buildInitramfs({ script, exit: "poweroff" }));
    const result = runVolt(["run", "--kernel", kernel!, "--initrd", image, "--json"]);
    if (result.exitCode !== 0) console.error(result.stderr.slice(-3000));
    expect(result.stderr).toContain("VOLT-POWEROFF-NEXT");
    const outcome = JSON.parse(result.stdout);
    expect(outcome).toMatchObject({ ok: true, outcome: "poweroff" });
    expect(outcome.bootTimeMs).toBeUndefined();
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

  /** Starts volt on `script` and calls `onConsole` with the console so far after each chunk; resolves when volt exits. */
  async function watchVolt(args: string[], onConsole: (console: string, child: Bun.Subprocess<"pipe", "pipe", "pipe">) => void) {
    const child = Bun.spawn([volt, ...args, "--json"], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
    const timer = setTimeout(() => child.kill("SIGKILL"), 240_000);
    let console = "";
    const decoder = new TextDecoder();
    for await (const chunk of child.stderr) {
      console += decoder.decode(chunk);
      onConsole(console, child);
    }
    clearTimeout(timer);
    const exitCode = await child.exited;
    const stdout = await new Response(child.stdout).text();
    return { exitCode, console, stdout };
  }

  test("--on-reboot restart boots the guest again after a reboot; SIGTERM then stops it with status 143", async () => {
    const image = initramfs("restart", "echo VOLT-BOOTED-MARK");
    let signalled = false;
    const result = await watchVolt(["run", "--kernel", kernel!, "--initrd", image, "--on-reboot", "restart"], (console, child) => {
      if (!signalled && console.split("VOLT-BOOTED-MARK").length > 2) {
        signalled = true;
        child.kill("SIGTERM");
      }
    });
    if (result.exitCode !== 143) globalThis.console.error(`exit ${result.exitCode}, outcome ${result.stdout}\n${result.console.slice(-2000)}`);
    expect(signalled).toBe(true);
    expect(result.exitCode).toBe(143);
    const outcome = JSON.parse(result.stdout);
    expect(outcome).toMatchObject({ ok: false, outcome: "signal", exitCode: 143 });
    expect(outcome.restarts).toBeGreaterThanOrEqual(1);
  });

  test("the guest's shell answers a command typed on the console; SIGINT then stops volt with status 130", async () => {
    const image = initramfs("interactive", 'echo VOLT-READY\nread -r line\necho "VOLT-GOT:$line"\nsleep 600');
    let typed = false;
    let interrupted = false;
    const result = await watchVolt(["run", "--kernel", kernel!, "--initrd", image], (console, child) => {
      if (!typed && console.includes("VOLT-READY")) {
        typed = true;
        child.stdin.write("hello from the host\n");
        child.stdin.flush();
      }
      if (!interrupted && console.includes("VOLT-GOT:hello from the host")) {
        interrupted = true;
        child.kill("SIGINT");
      }
    });
    if (result.exitCode !== 130) globalThis.console.error(`exit ${result.exitCode}, outcome ${result.stdout}\n${result.console.slice(-1500)}`);
    expect(result.console).toContain("VOLT-GOT:hello from the host");
    expect(result.exitCode).toBe(130);
    expect(JSON.parse(result.stdout)).toMatchObject({ ok: false, outcome: "signal", detail: "stopped by SIGINT", exitCode: 130 });
  });

  test("with no kernel and no initrd, volt run boots the store's default kernel into a busybox shell", async () => {
    // A private kernel store and cache, so the test neither sees nor changes the user's.
    const env = { ...process.env, VOLT_DATA_DIR: join(work, "data"), XDG_CACHE_HOME: join(work, "cache"), NO_COLOR: "1" };
    const add = Bun.spawnSync([volt, "kernel", "add", kernel!, "--name", "test-kernel", "--default", "--json"], { env });
    if (add.exitCode !== 0) globalThis.console.error(add.stderr.toString());
    expect(add.exitCode).toBe(0);
    const child = Bun.spawn([volt, "run", "--json"], { env, stdin: "pipe", stdout: "pipe", stderr: "pipe" });
    const timer = setTimeout(() => child.kill("SIGKILL"), 240_000);
    let console = "";
    let typed = false;
    const decoder = new TextDecoder();
    for await (const chunk of child.stderr) {
      console += decoder.decode(chunk);
      if (!typed && console.includes("busybox shell on the console")) {
        typed = true;
        await Bun.sleep(500);
        child.stdin.write("echo VOLT-SHELL-$((6*7))\nexit\n");
        child.stdin.flush();
      }
    }
    clearTimeout(timer);
    const exitCode = await child.exited;
    if (exitCode !== 0) globalThis.console.error(console.slice(-2000));
    expect(console).toContain("VOLT-SHELL-42");
    expect(exitCode).toBe(0);
  });
});

/**
 * The proof for `volt kernel build`: a kernel it built from Debian's
 * linux-source with Volt's config (compiled on the host by the harness, once,
 * cached: test/harness/guest-assets.ts) boots to a busybox /init with its root
 * on a virtio-blk ext4 image and no initramfs, and its time from VMM start to
 * /init (the boot timer, written first thing by /init) is reported next to
 * Debian's kernel booting a busybox initramfs the way the other e2e tests do.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BOOT_TIMER_ADDRESS } from "../../src/arch/x86_64/layout.ts";
import { buildExt4Image } from "../../src/image/ext4.ts";
import { buildInitramfs } from "../../src/image/initramfs.ts";
import { requireKvm } from "./kvm.ts";

const root = join(import.meta.dir, "..", "..");
const volt = join(root, "dist", "volt");
const work = mkdtempSync(join(tmpdir(), "volt-kernel-build-e2e-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const kvmUsable = requireKvm();
const inCi = process.env.CI === "true";
const built = process.env.VOLT_TEST_BUILT_KERNEL;
const builtError = process.env.VOLT_TEST_BUILT_KERNEL_ERROR;
const buildInfo = process.env.VOLT_TEST_BUILT_KERNEL_INFO ? (JSON.parse(process.env.VOLT_TEST_BUILT_KERNEL_INFO) as { release?: string; seconds?: number; compiledFiles?: number }) : undefined;
const debianBzImage = process.env.VOLT_TEST_BZIMAGE;
const debianVmlinux = process.env.VOLT_TEST_DEBIAN_VMLINUX;
/** Locally the harness may have been told not to build (VOLT_TEST_BUILD_KERNEL=0); under CI, or after a failed build, the test runs and fails. */
const builtWanted = built !== undefined || builtError !== undefined || inCi;

const TIMER = `0x${BOOT_TIMER_ADDRESS.toString(16)}`;
const times: { label: string; ms: number }[] = [];

function runVolt(args: string[], timeoutMs = 300_000) {
  const started = performance.now();
  const child = Bun.spawnSync([volt, ...args], { cwd: root, env: { ...process.env, NO_COLOR: "1" }, timeout: timeoutMs, stdin: "ignore" });
  return { exitCode: child.exitCode, stdout: child.stdout.toString(), stderr: child.stderr.toString(), seconds: (performance.now() - started) / 1000 };
}

/** An ext4 root holding only a static busybox and an /init that writes the boot timer first, reports, and powers off. */
function rootImage(): string {
  const tree = join(work, "rootfs");
  for (const dir of ["bin", "dev", "proc", "sys", "tmp", "etc"]) mkdirSync(join(tree, dir), { recursive: true });
  copyFileSync("/bin/busybox", join(tree, "bin/busybox"));
  const init = [
    "#!/bin/busybox sh",
    `/bin/busybox devmem ${TIMER} 8 123`,
    "b=/bin/busybox",
    "echo VOLT-BUILT-INIT-RUNS",
    "$b mount -t proc proc /proc",
    "$b mount -t sysfs sys /sys",
    'echo "VOLT-ROOT=$($b grep " / " /proc/mounts)"',
    'echo "VOLT-NPROC=$($b nproc)"',
    'echo "VOLT-VIRTIO=$($b ls /sys/bus/virtio/devices | $b wc -l)"',
    'echo "VOLT-CMDLINE=$($b cat /proc/cmdline)"',
    "echo VOLT-BUILT-INIT-DONE",
    "$b poweroff -f",
    "",
  ].join("\n");
  writeFileSync(join(tree, "init"), init, { mode: 0o755 });
  const image = join(work, "root.ext4");
  // force: a retried test builds it again.
  buildExt4Image({ sourceDir: tree, out: image, sizeMiB: 16, force: true });
  return image;
}

function debianInitramfs(): string {
  const path = join(work, "debian-probe.cpio.gz");
  writeFileSync(path, buildInitramfs({ script: `devmem ${TIMER} 8 123\necho VOLT-DEBIAN-INIT-RUNS`, exit: "poweroff" }));
  return path;
}

describe.skipIf(!kvmUsable)(`a kernel from volt kernel build boots (${process.env.VOLT_KVM_MODE ?? "unknown"} KVM)`, () => {
  test.skipIf(!builtWanted)("boots to a busybox /init with root on virtio-blk ext4 and no initramfs, 2 vCPUs, and powers off", () => {
    if (built === undefined) throw new Error(`the harness did not provide a kernel from volt kernel build: ${builtError ?? "VOLT_TEST_BUILT_KERNEL is unset"}`);
    const image = rootImage();
    const result = runVolt([
      "run", "--kernel", built, "--drive", `path=${image},root`, "--cmdline", "init=/init",
      "--mem", "256", "--vcpus", "2", "--boot-timer", "--json",
    ]);
    console.log(`built kernel (${buildInfo?.release ?? "?"}) boot took ${result.seconds.toFixed(1)} s of wall time`);
    if (result.exitCode !== 0) console.error(`exit ${result.exitCode}\n${result.stdout}\n${result.stderr.slice(-4000)}`);
    const consoleText = result.stderr;
    expect(consoleText).toContain("VOLT-BUILT-INIT-RUNS");
    expect(consoleText).toContain("VOLT-BUILT-INIT-DONE");
    // The root is the ext4 image on virtio-blk, mounted by the kernel itself: no initramfs was given or unpacked.
    expect(consoleText).toMatch(/VFS: Mounted root \(ext4 filesystem\)/);
    expect(consoleText).toMatch(/VOLT-ROOT=\/dev\/root \/ ext4 rw/);
    expect(consoleText).not.toContain("Unpacking initramfs");
    expect(consoleText).not.toContain("Trying to unpack rootfs");
    expect(consoleText).toContain("VOLT-NPROC=2");
    expect(consoleText).toMatch(/VOLT-VIRTIO=1\b/);
    expect(consoleText).toMatch(/VOLT-CMDLINE=.*root=\/dev\/vda/);
    const outcome = JSON.parse(result.stdout);
    expect(outcome).toMatchObject({ ok: true, outcome: "poweroff", kernel: { format: "elf", protocol: "pvh" } });
    // Built without ACPI (Linux 6.1 cannot load ACPI tables without PCI): the drive came as a virtio_mmio.device=
    // parameter, and the power-off was recognised from the kernel's console line.
    expect(outcome.acpi).toBe(false);
    expect(outcome.cmdline).toContain("virtio_mmio.device=");
    expect(result.exitCode).toBe(0);
    expect(outcome.bootTimeMs).toBeGreaterThan(0);
    expect(outcome.bootTimeMs).toBeLessThan(result.seconds * 1000);
    times.push({ label: "volt kernel build (PVH, root on virtio-blk, no initramfs)", ms: outcome.bootTimeMs });
  });

  test.skipIf(!debianBzImage && !inCi)("Debian's kernel (bzImage) with a busybox initramfs: start to /init", () => {
    const result = runVolt(["run", "--kernel", debianBzImage!, "--initrd", debianInitramfs(), "--mem", "256", "--vcpus", "2", "--boot-timer", "--json"]);
    if (result.exitCode !== 0) console.error(`exit ${result.exitCode}\n${result.stdout}\n${result.stderr.slice(-4000)}`);
    expect(result.stderr).toContain("VOLT-DEBIAN-INIT-RUNS");
    const outcome = JSON.parse(result.stdout);
    expect(outcome).toMatchObject({ ok: true, outcome: "poweroff" });
    expect(outcome.bootTimeMs).toBeGreaterThan(0);
    times.push({ label: "Debian 6.1 bzImage + initramfs", ms: outcome.bootTimeMs });
  });

  test.skipIf(!debianVmlinux && !inCi)("Debian's kernel as an ELF vmlinux (PVH, as the built one) with a busybox initramfs: start to /init", () => {
    const result = runVolt(["run", "--kernel", debianVmlinux!, "--initrd", debianInitramfs(), "--mem", "256", "--vcpus", "2", "--boot-timer", "--json"]);
    if (result.exitCode !== 0) console.error(`exit ${result.exitCode}\n${result.stdout}\n${result.stderr.slice(-4000)}`);
    expect(result.stderr).toContain("VOLT-DEBIAN-INIT-RUNS");
    const outcome = JSON.parse(result.stdout);
    expect(outcome).toMatchObject({ ok: true, outcome: "poweroff", kernel: { protocol: "pvh" } });
    expect(outcome.bootTimeMs).toBeGreaterThan(0);
    times.push({ label: "Debian 6.1 vmlinux (PVH) + initramfs", ms: outcome.bootTimeMs });
  });

  test.skipIf(!builtWanted)("start-to-/init times, side by side", () => {
    const line = times.map((t) => `${t.label}: ${t.ms.toFixed(0)} ms`).join(" | ");
    const build = buildInfo ? ` (kernel ${buildInfo.release}, ${buildInfo.compiledFiles} files compiled in ${buildInfo.seconds} s on the host)` : "";
    console.log(`BOOT TIME start->/init (${process.env.VOLT_KVM_MODE ?? "?"} KVM, 256 MiB, 2 vCPUs): ${line}${build}`);
    expect(times.some((t) => t.label.startsWith("volt kernel build"))).toBe(true);
    expect(times.length).toBeGreaterThanOrEqual(2);
  });
});

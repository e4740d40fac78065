/**
 * The first real VM: dist/volt (the compiled binary, as users run it) opens
 * /dev/kvm, checks the API version and capabilities, runs a few bytes of
 * real-mode code in a vCPU worker and reports the exact exits.
 */
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { requireKvm } from "./kvm.ts";

const root = join(import.meta.dir, "..", "..");
const volt = join(root, "dist", "volt");

function runVolt(args: string[]) {
  const child = Bun.spawnSync([volt, ...args], { cwd: root, env: { ...process.env, NO_COLOR: "1" }, timeout: 120_000 });
  return { exitCode: child.exitCode, stdout: child.stdout.toString(), stderr: child.stderr.toString() };
}

const kvmUsable = requireKvm();

describe.skipIf(!kvmUsable)(`real-mode guest on real KVM (${process.env.VOLT_KVM_MODE ?? "unknown"} mode)`, () => {
  const result = runVolt(["kvm-check", "--smoke", "--json"]);
  const report = JSON.parse(result.stdout || "{}");

  test("volt kvm-check --smoke succeeds", () => {
    if (result.exitCode !== 0) console.error(result.stderr);
    expect(result.exitCode).toBe(0);
    expect(report.ok).toBe(true);
  });

  test("reports KVM API version 12 and no missing capability", () => {
    expect(report.kvm.apiVersion).toBe(12);
    expect(report.kvm.missingCapabilities).toEqual([]);
    // Hardware-backed KVM (native with svm/vmx, or kvm_amd inside L1): no software-KVM warning.
    expect(report.warnings).toEqual([]);
    expect(report.kvm.capabilities.KVM_CAP_IRQCHIP).toBeGreaterThan(0);
    expect(report.kvm.capabilities.KVM_CAP_IMMEDIATE_EXIT).toBeGreaterThan(0);
  });

  test("the guest's exits are exactly: port write 'K' to 0x3f8, then HLT", () => {
    const [writeThenHalt] = report.smoke;
    expect(writeThenHalt.exits).toEqual([
      { reason: "KVM_EXIT_IO", direction: "out", port: 0x3f8, size: 1, count: 1, data: ["K".charCodeAt(0)] },
      { reason: "KVM_EXIT_HLT" },
    ]);
    expect(writeThenHalt.finish).toBe("hlt");
    console.log(`real-mode guest ran in ${writeThenHalt.elapsedMs.toFixed(1)} ms (${process.env.VOLT_KVM_MODE} KVM)`);
  });

  test("a spinning vCPU is kicked out of KVM_RUN by stop", () => {
    const [, kick] = report.smoke;
    expect(kick.finish).toBe("stopped");
    expect(kick.exits).toEqual([]);
  });

  test("the binary is self-contained: with the source tree hidden its vCPU worker still starts", () => {
    // Bun's bytecode build bakes the build machine's source path into import.meta.url; a binary that trusted it ran
    // its workers from that tree (and broke in a jail). A private mount namespace hides src/ from this one run.
    const hidden = Bun.spawnSync(["unshare", "-m", "sh", "-c", `mount -t tmpfs none "$1/src" && exec "$2" kvm-check --smoke --json`, "sh", root, volt], {
      cwd: "/",
      timeout: 120_000,
    });
    const stderr = hidden.stderr.toString();
    if (hidden.exitCode !== 0) console.error(stderr);
    expect(stderr).not.toContain("ModuleNotFound");
    expect(hidden.exitCode).toBe(0);
    expect(JSON.parse(hidden.stdout.toString()).smoke[0].finish).toBe("hlt");
  });

  test("text output names the API version and passes both smoke checks", () => {
    const text = runVolt(["kvm-check", "--smoke"]);
    expect(text.exitCode).toBe(0);
    expect(text.stdout).toContain("API version:     12");
    expect(text.stdout.match(/Smoke: PASS/g)?.length).toBe(2);
  });
});

import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostVirtualisation, kvmBackendWarning } from "../../src/diagnostics/host.ts";

const dir = mkdtempSync(join(tmpdir(), "volt-host-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function host(flags: string, modules: string[]) {
  const cpuinfo = join(dir, `cpuinfo-${flags.replace(/\W/g, "")}-${modules.join("")}`);
  writeFileSync(cpuinfo, `processor\t: 0\nflags\t\t: fpu ${flags} sse2\n`);
  const modulesDir = mkdtempSync(join(dir, "modules-"));
  for (const m of modules) mkdirSync(join(modulesDir, m));
  return hostVirtualisation(cpuinfo, modulesDir);
}

describe("host virtualisation", () => {
  test("svm or vmx with kvm_amd/kvm_intel: no warning", () => {
    expect(host("svm", ["kvm_amd"])).toEqual({ hardware: "svm", kvmPvmLoaded: false });
    expect(kvmBackendWarning(host("vmx", ["kvm_intel"]))).toBeUndefined();
  });

  test("kvm_pvm without svm/vmx: a warning naming kvm_pvm", () => {
    expect(kvmBackendWarning(host("", ["kvm_pvm"]))).toContain("kvm_pvm, a software KVM");
  });

  test("an unreadable /proc/cpuinfo (inside the sandbox) says nothing rather than something wrong", () => {
    const unknown = hostVirtualisation(join(dir, "no-such-cpuinfo"), dir);
    expect(unknown.hardware).toBe("unknown");
    expect(kvmBackendWarning(unknown)).toBeUndefined();
  });

  test("no svm/vmx at all: a warning about missing hardware virtualisation", () => {
    expect(kvmBackendWarning(host("", []))).toContain("no svm/vmx flag");
  });
});

import { describe, expect, test } from "bun:test";
import { decideKvmMode, type HostKvmFacts } from "../../test/harness/kvm-mode.ts";

const host = (facts: Partial<HostKvmFacts>) => (): HostKvmFacts => ({
  devKvmOpenError: null,
  cpuFlags: new Set(["fpu", "sse2"]),
  kvmPvmLoaded: false,
  ...facts,
});
const unreachable = () => {
  throw new Error("the host must not be probed when VOLT_KVM decides");
};

describe("decideKvmMode", () => {
  test("VOLT_KVM=native or nested is obeyed without probing", () => {
    expect(decideKvmMode({ VOLT_KVM: "native" }, unreachable)).toEqual({ mode: "native", reason: "VOLT_KVM=native" });
    expect(decideKvmMode({ VOLT_KVM: "nested" }, unreachable)).toEqual({ mode: "nested", reason: "VOLT_KVM=nested" });
  });
  test("an unknown VOLT_KVM value is an error, not a silent auto", () => {
    expect(() => decideKvmMode({ VOLT_KVM: "yes" }, unreachable)).toThrow(/VOLT_KVM=yes is not one of native, nested, auto/);
  });
  test("auto: native with hardware virtualisation and an openable /dev/kvm", () => {
    const decision = decideKvmMode({}, host({ cpuFlags: new Set(["sse2", "vmx"]) }));
    expect(decision.mode).toBe("native");
    expect(decision.reason).toContain("vmx");
    expect(decideKvmMode({ VOLT_KVM: "auto" }, host({ cpuFlags: new Set(["svm"]) })).mode).toBe("native");
  });
  test("auto: a kvm_pvm /dev/kvm that opens is still nested (it cannot run real guests)", () => {
    expect(decideKvmMode({}, host({ kvmPvmLoaded: true }))).toEqual({
      mode: "nested",
      reason: "no svm/vmx on host: /dev/kvm is kvm_pvm",
    });
    expect(decideKvmMode({}, host({ kvmPvmLoaded: true, cpuFlags: new Set(["svm"]) })).mode).toBe("nested");
  });
  test("auto: nested without /dev/kvm, or without svm/vmx", () => {
    expect(decideKvmMode({}, host({ devKvmOpenError: "/dev/kvm: ENOENT", cpuFlags: new Set(["svm"]) }))).toEqual({
      mode: "nested",
      reason: "host /dev/kvm unusable (/dev/kvm: ENOENT)",
    });
    expect(decideKvmMode({}, host({})).mode).toBe("nested");
  });
});

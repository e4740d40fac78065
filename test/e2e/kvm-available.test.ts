/**
 * The first end-to-end check: wherever run-e2e puts the tests (host or L1),
 * a real, hardware-backed (or SVM-emulated, in L1) KVM is there.
 */
import { expect, test } from "bun:test";
import { existsSync, statSync } from "node:fs";
import { requireKvm } from "./kvm.ts";

const KVM_MISC_MINOR = 232; // /dev/kvm is misc device 10:232
const usable = requireKvm();

test.skipIf(!usable)("/dev/kvm is the real KVM device, backed by a hardware-virtualisation module", () => {
  console.log(`VOLT_KVM_MODE=${process.env.VOLT_KVM_MODE ?? "(unset: not started by run-e2e)"}`);
  const rdev = Number(statSync("/dev/kvm").rdev);
  expect(statSync("/dev/kvm").isCharacterDevice()).toBe(true);
  expect({ major: (rdev >> 8) & 0xfff, minor: (rdev & 0xff) | ((rdev >> 12) & 0xfff00) }).toEqual({
    major: 10,
    minor: KVM_MISC_MINOR,
  });
  expect(existsSync("/sys/module/kvm")).toBe(true);
  const vendorModules = ["kvm_amd", "kvm_intel"].filter((name) => existsSync(`/sys/module/${name}`));
  console.log(`KVM vendor module: ${vendorModules.join(", ") || "none"}`);
  expect(vendorModules.length).toBeGreaterThan(0);
});

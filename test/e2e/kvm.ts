/**
 * Shared guard for end-to-end tests that need real KVM. Under CI a missing
 * KVM is a failure, never a silent skip; on a developer machine the test may
 * skip, after saying loudly why.
 */
import { closeSync, existsSync, openSync, statSync } from "node:fs";

/** Why /dev/kvm cannot be used here, or null when it can. */
export function kvmUnavailableReason(): string | null {
  if (!existsSync("/dev/kvm")) return "/dev/kvm does not exist";
  if (!statSync("/dev/kvm").isCharacterDevice()) return "/dev/kvm is not a character device";
  try {
    closeSync(openSync("/dev/kvm", "r+"));
  } catch (error) {
    return `/dev/kvm does not open read-write (${(error as NodeJS.ErrnoException).code ?? String(error)})`;
  }
  return null;
}

/**
 * Returns true when KVM is usable. Otherwise throws under CI=true, and
 * elsewhere prints a loud message and returns false so the caller can skip
 * (e.g. `test.skipIf(!requireKvm())`).
 */
export function requireKvm(): boolean {
  const reason = kvmUnavailableReason();
  if (reason === null) return true;
  const advice = "run end-to-end tests through `bun test/harness/run-e2e.ts`, which provides KVM (nested if need be)";
  if (process.env.CI === "true") {
    throw new Error(`KVM is required under CI but unavailable: ${reason}; ${advice}`);
  }
  const banner = "#".repeat(78);
  console.warn(`${banner}\n# SKIPPING KVM TESTS: ${reason}\n# ${advice}\n${banner}`);
  return false;
}

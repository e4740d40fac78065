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

/**
 * seccomp kills and logged denials ("audit: type=1326 ... syscall=N") in the
 * kernel log, so a test can show a sandboxed VM ran without one. Returns the
 * matching lines; empty when the log cannot be read (then there is nothing to show).
 */
export function sandboxViolations(): string[] {
  const dmesg = Bun.spawnSync(["dmesg"]);
  if (dmesg.exitCode !== 0) return [];
  return dmesg.stdout
    .toString()
    .split("\n")
    .filter((line) => /type=1326|seccomp|landlock.*denied/i.test(line));
}

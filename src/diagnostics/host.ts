/**
 * Facts about the host that decide whether its /dev/kvm can run Linux guests.
 * Some machines (this project's CI among them) expose kvm_pvm, a software KVM
 * that runs simple code but fails Linux with "KVM internal error ...
 * emulation failure"; saying so up front saves an operator a confusing crash.
 */
import { existsSync, readFileSync } from "node:fs";

export interface HostVirtualisation {
  /** "svm" or "vmx" when the CPU offers hardware virtualisation to this host; "unknown" when /proc/cpuinfo cannot be read (e.g. inside the sandbox). */
  readonly hardware: "svm" | "vmx" | "unknown" | undefined;
  readonly kvmPvmLoaded: boolean;
}

export function hostVirtualisation(cpuinfoPath = "/proc/cpuinfo", modulesDir = "/sys/module"): HostVirtualisation {
  let flags: Set<string>;
  try {
    const line = readFileSync(cpuinfoPath, "utf8").split("\n").find((l) => l.startsWith("flags"));
    flags = new Set((line?.split(":")[1] ?? "").trim().split(/\s+/));
  } catch {
    // Unreadable (no /proc, or the sandbox): nothing can be said either way.
    return { hardware: "unknown", kvmPvmLoaded: existsSync(`${modulesDir}/kvm_pvm`) };
  }
  const hardware = flags.has("svm") ? "svm" : flags.has("vmx") ? "vmx" : undefined;
  return { hardware, kvmPvmLoaded: existsSync(`${modulesDir}/kvm_pvm`) };
}

/** A warning for operators when /dev/kvm is unlikely to boot Linux, or undefined. */
export function kvmBackendWarning(host: HostVirtualisation = hostVirtualisation()): string | undefined {
  if (host.hardware === "unknown") return undefined;
  if (host.kvmPvmLoaded && host.hardware === undefined) {
    return "/dev/kvm here is kvm_pvm, a software KVM: simple guests run, but Linux guests usually stop with a KVM emulation failure";
  }
  if (host.hardware === undefined) {
    return "this CPU shows no svm/vmx flag: /dev/kvm is not backed by hardware virtualisation and may not boot Linux guests";
  }
  return undefined;
}

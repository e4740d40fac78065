/**
 * Decides where the end-to-end tests get real KVM from: the host's own
 * /dev/kvm ("native") or a /dev/kvm inside an emulated L1 Linux ("nested").
 *
 * "/dev/kvm opens" is not enough for native: some hosts (this project's
 * machines among them) expose a software KVM (kvm_pvm) that runs toy
 * real-mode code but fails real Linux guests with emulation errors. Native is
 * chosen only with hardware virtualisation (svm/vmx) and without kvm_pvm.
 */
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";

export type KvmMode = "native" | "nested";

export interface KvmDecision {
  mode: KvmMode;
  /** Human-readable reason, e.g. "no svm/vmx on host: /dev/kvm is kvm_pvm". */
  reason: string;
}

/** What the decision looks at on the host; injectable for tests. */
export interface HostKvmFacts {
  /** null when /dev/kvm opens read-write, else why not (e.g. "ENOENT"). */
  devKvmOpenError: string | null;
  cpuFlags: ReadonlySet<string>;
  kvmPvmLoaded: boolean;
}

export function decideKvmMode(
  env: Record<string, string | undefined> = process.env,
  facts: () => HostKvmFacts = probeHostKvm,
): KvmDecision {
  const requested = (env.VOLT_KVM ?? "auto").trim().toLowerCase();
  if (requested === "native") return { mode: "native", reason: "VOLT_KVM=native" };
  if (requested === "nested") return { mode: "nested", reason: "VOLT_KVM=nested" };
  if (requested !== "auto" && requested !== "") {
    throw new Error(`VOLT_KVM=${env.VOLT_KVM} is not one of native, nested, auto`);
  }
  const host = facts();
  const virtualisation = ["svm", "vmx"].find((flag) => host.cpuFlags.has(flag));
  if (host.devKvmOpenError !== null) {
    return { mode: "nested", reason: `host /dev/kvm unusable (${host.devKvmOpenError})` };
  }
  if (virtualisation === undefined) {
    const what = host.kvmPvmLoaded ? "/dev/kvm is kvm_pvm" : "/dev/kvm has no hardware support";
    return { mode: "nested", reason: `no svm/vmx on host: ${what}` };
  }
  if (host.kvmPvmLoaded) {
    return { mode: "nested", reason: "host /dev/kvm may be kvm_pvm (module loaded), not hardware KVM" };
  }
  return { mode: "native", reason: `/dev/kvm opens and the CPU has ${virtualisation}` };
}

export function probeHostKvm(): HostKvmFacts {
  let devKvmOpenError: string | null = null;
  try {
    closeSync(openSync("/dev/kvm", "r+"));
  } catch (error) {
    devKvmOpenError = `/dev/kvm: ${(error as NodeJS.ErrnoException).code ?? String(error)}`;
  }
  let cpuFlags = new Set<string>();
  try {
    const flagsLine = /^flags\s*:(.*)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "";
    cpuFlags = new Set(flagsLine.trim().split(/\s+/));
  } catch {
    // no /proc/cpuinfo: treat as no hardware virtualisation
  }
  return { devKvmOpenError, cpuFlags, kvmPvmLoaded: existsSync("/sys/module/kvm_pvm") };
}

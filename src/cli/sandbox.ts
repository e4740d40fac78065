/**
 * Volt's sandbox around a VM, on by default (issue #6):
 *
 * 1. Landlock, before anything opens /dev/kvm: the process restricts itself
 *    to the paths the VM needs and re-executes itself, so every thread of the
 *    new process (Bun starts helper threads before any user code) is inside
 *    the domain. The new process repeats argument parsing and goes on.
 * 2. seccomp, once the VM is built and before its vCPUs run: an allowlist of
 *    system calls (ioctl limited to KVM/TUN/terminal requests, clone to
 *    threads, no exec, AF_UNIX sockets only) for every thread, killing the
 *    process on anything else.
 *
 * `--no-sandbox`, `--no-landlock` and `--no-seccomp` turn them off, loudly.
 */
import { resolve } from "node:path";
import { SANDBOX_ENV_MARKER, isSandboxed, probeLandlock, restrictAndReexec, planLandlock, describePlan } from "../sandbox/landlock.ts";
import { prepareRuntime, runtimeFacts, socketDirs, vmLandlockPolicy, type VmPathNeeds } from "../sandbox/policy.ts";
import { describePolicy, formatPolicy, installSeccomp, vmmSeccompPolicy } from "../sandbox/seccomp.ts";
import type { VmConfig } from "../vmm/config.ts";
import { log as rootLog, logEnvironment } from "../log/index.ts";

const log = rootLog.withTag("sandbox");

export interface SandboxChoice {
  readonly landlock: boolean;
  readonly seccomp: boolean;
}

export const SANDBOX_FLAGS = {
  "no-sandbox": { type: "boolean", description: "Run without Landlock and seccomp (not recommended; prints a warning)" },
  "no-landlock": { type: "boolean", description: "Run without the Landlock file-system sandbox (prints a warning)" },
  "no-seccomp": { type: "boolean", description: "Run without the seccomp system-call filter (prints a warning)" },
  "snapshot-dir": {
    type: "string",
    description: "A directory snapshots may be written to (repeatable); under the sandbox, disk snapshots elsewhere are refused",
    valueHint: "dir",
  },
} as const;

/**
 * Whether a `--no-X` switch was given. citty 0.2 parses `--no-sandbox` as `sandbox: false` (its negation rule),
 * never as `"no-sandbox": true`, so both spellings count (the latter is what callers and tests pass directly).
 */
export function switchedOff(parsed: Record<string, unknown>, name: `no-${string}`): boolean {
  return parsed[name] === true || parsed[name.slice(3)] === false;
}

/** Reads the sandbox flags and warns about anything turned off. */
export function sandboxChoice(parsed: Record<string, unknown>): SandboxChoice {
  const off = (name: `no-${string}`) => switchedOff(parsed, name);
  const choice = { landlock: !off("no-sandbox") && !off("no-landlock"), seccomp: !off("no-sandbox") && !off("no-seccomp") };
  // Warn once: in the first process, not again after the re-exec into the sandbox.
  if (!isSandboxed()) {
    if (!choice.landlock && !choice.seccomp) log.warn("running without the sandbox (--no-sandbox): a compromised volt can reach everything this user can");
    else if (!choice.landlock) log.warn("running without Landlock (--no-landlock): volt's file access is not restricted");
    else if (!choice.seccomp) log.warn("running without seccomp (--no-seccomp): volt's system calls are not filtered");
  }
  return choice;
}

export interface VmSandboxInputs {
  readonly config: VmConfig;
  readonly apiSocket?: string;
  readonly snapshotDirs: readonly string[];
  /** Files a restore maps (memory file, chunk store, another process's memfd) or reads. */
  readonly extraReadOnly?: readonly string[];
  /** More directories where Unix sockets are made (a registered VM's runtime root). */
  readonly extraSocketDirs?: readonly string[];
}

/** What the VM will touch, as the Landlock policy needs it. */
export function vmPathNeeds(inputs: VmSandboxInputs): VmPathNeeds {
  const { config } = inputs;
  const readOnly = [config.kernelPath, ...(config.initrdPath ? [config.initrdPath] : []), ...(inputs.extraReadOnly ?? [])];
  const readWrite: string[] = [];
  const sockets: (string | undefined)[] = [inputs.apiSocket];
  let tap = false;
  for (const device of config.virtioDevices ?? []) {
    if (device.kind === "block") (device.readOnly ? readOnly : readWrite).push(device.path);
    else if (device.kind === "net") tap = true;
    else if (device.kind === "vsock") sockets.push(device.udsPath);
  }
  return {
    readOnlyFiles: readOnly.map((p) => resolve(p)),
    readWriteFiles: readWrite.map((p) => resolve(p)),
    readWriteDirs: inputs.snapshotDirs.map((p) => resolve(p)),
    unixSocketDirs: [...socketDirs(sockets), ...(inputs.extraSocketDirs ?? []).map((p) => resolve(p))],
    tap,
    ...(config.kvmPath ? { kvmDevice: config.kvmPath } : {}),
  };
}

/**
 * Step 1: restrict this process with Landlock and re-exec into the domain.
 * Returns only in the sandboxed process (or when Landlock is unavailable,
 * after a warning, or when it is turned off).
 */
export function enterLandlock(choice: SandboxChoice, needs: VmPathNeeds, extraEnv: Record<string, string> = {}): void {
  if (!choice.landlock) return;
  if (isSandboxed()) {
    log.debug("running inside Landlock (re-executed)", { abi: process.env[SANDBOX_ENV_MARKER] });
    return;
  }
  const runtime = prepareRuntime();
  log.debug("restricting with Landlock and re-executing", {
    readOnlyFiles: needs.readOnlyFiles.length,
    readWriteFiles: needs.readWriteFiles.length,
    readWriteDirs: needs.readWriteDirs.length,
    unixSocketDirs: needs.unixSocketDirs.length,
  });
  // The log settings ride along in the environment (main.ts put them there), like everything else volt needs.
  const outcome = restrictAndReexec(vmLandlockPolicy(needs, runtime.facts), { env: { ...process.env, ...logEnvironment(), ...runtime.env, ...extraEnv } });
  if (outcome.status === "unavailable") log.warn(`Landlock is unavailable here (${outcome.reason}); running without it`);
}

/** Step 2: the seccomp filter for every thread; call after the VM is built, before its vCPUs start. */
export function enterSeccomp(choice: SandboxChoice, options: { snapshotsToDisk: boolean }): void {
  if (!choice.seccomp) return;
  const policy = vmmSeccompPolicy({ snapshotsToDisk: options.snapshotsToDisk });
  installSeccomp(policy);
  log.debug("seccomp filter installed for every thread", { policy: policy.name, rules: policy.entries.length });
}

/** What `volt sandbox show` prints: the seccomp allowlist and the Landlock plan for these needs on this kernel. */
export function describeSandbox(needs: VmPathNeeds) {
  const probe = probeLandlock();
  const policy = vmLandlockPolicy(needs, runtimeFacts());
  return {
    seccomp: describePolicy(vmmSeccompPolicy()),
    seccompText: formatPolicy(describePolicy(vmmSeccompPolicy())),
    landlock: probe.available ? { available: true, abi: probe.abi, plan: describePlan(planLandlock(policy, probe.abi)) } : { available: false, reason: probe.reason },
  };
}

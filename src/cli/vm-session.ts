/**
 * What `volt run` and `volt snapshot restore` share: run a built VM with its
 * console on this terminal, serve its control API if asked, and report the
 * outcome (text or one JSON document) with Volt's exit statuses.
 */
import { ApiSocketError, claimSocketPath, startApiServer, type ApiServer } from "../api/server.ts";
import { KvmError } from "../kvm/errors.ts";
import { VmBuildError } from "../vmm/errors.ts";
import type { BuiltVm } from "../vmm/builder.ts";
import { RunningVm, type ConsoleIo, type DeviceSnapshot, type VmOutcome } from "../vmm/vmm.ts";
import { EXIT, type ExitCode } from "./exit-codes.ts";
import { CliError, printJson } from "./output.ts";
import { log as rootLog } from "../log/index.ts";

const log = rootLog.withTag("vm");

/** Builds through `build`, turning build errors into CLI errors (bad input: exit 2; no KVM: exit 3). */
export function buildOrExplain<T>(build: () => T): T {
  try {
    return build();
  } catch (error) {
    if (error instanceof VmBuildError) throw new CliError(error.kind, error.message, EXIT.usage, { cause: error });
    if (error instanceof KvmError) throw new CliError(`kvm-${error.kind}`, error.message, EXIT.kvmUnavailable, { cause: error });
    throw error;
  }
}

/** Checks the API socket path before any VM exists, so a busy path is bad input (exit 2), not a half-started VM. */
export async function checkApiSocket(path: string | undefined): Promise<void> {
  if (path === undefined) return;
  try {
    await claimSocketPath(path);
  } catch (error) {
    if (error instanceof ApiSocketError) throw new CliError("api-socket", error.message, EXIT.usage, { cause: error });
    throw error;
  }
}

/** A debug line once a VM is built (cheap: once per boot, never per exit). */
export function logBuilt(built: BuiltVm, how: "boot" | "restore"): void {
  if (!log.enabled("debug")) return;
  log.debug(how === "boot" ? "VM built" : "VM built from the snapshot", {
    kernel: built.kernel.format,
    protocol: built.kernel.protocol,
    vcpus: built.vcpus.length,
    memoryMiB: built.config.memoryMiB,
    acpi: built.acpi,
    devices: (built.config.virtioDevices ?? []).map((device) => device.kind).join(",") || undefined,
    cmdline: built.cmdline,
  });
}

export interface SessionOptions {
  readonly console: ConsoleIo;
  readonly startedAtMs: number;
  readonly apiSocket?: string;
  readonly restore?: DeviceSnapshot;
  /** Under the sandbox: where the API may write disk snapshots (elsewhere is refused with a clear error). */
  readonly snapshotDirs?: readonly string[];
}

/** Runs `built` to its outcome (disposing it after), with the API served meanwhile when asked. */
export async function runSession(built: BuiltVm, options: SessionOptions): Promise<VmOutcome> {
  let api: ApiServer | undefined;
  try {
    const running = await RunningVm.start(built, {
      console: options.console,
      startedAtMs: options.startedAtMs,
      onDeviceError: (message) => log.withTag("device").error(message),
      ...(options.restore ? { restore: options.restore } : {}),
    });
    log.debug(options.restore ? "vCPUs started (restored)" : "vCPUs started", { vcpus: built.vcpus.length });
    if (options.apiSocket !== undefined) {
      try {
        api = await startApiServer(options.apiSocket, running, options.snapshotDirs !== undefined ? { snapshotDirs: options.snapshotDirs } : {});
        log.debug("control API listening", { apiSocket: options.apiSocket });
      } catch (error) {
        running.stop("error", `cannot serve the API on ${options.apiSocket}: ${(error as Error).message}`);
      }
    }
    const outcome = await running.outcome;
    log.debug("VM ended", { outcome: outcome.kind, detail: outcome.detail });
    return outcome;
  } finally {
    api?.stop();
    built.dispose();
  }
}

export function exitCodeFor(outcome: VmOutcome): ExitCode {
  switch (outcome.kind) {
    case "poweroff":
    case "reboot":
      return EXIT.ok;
    case "panic":
      return EXIT.guestPanic;
    case "error":
      return EXIT.vmFailed;
    case "signal":
      return outcome.detail.includes("SIGTERM") ? EXIT.terminated : outcome.detail.includes("SIGINT") ? EXIT.interrupted : EXIT.ok;
  }
}

/** Prints the outcome (one JSON document with `extra`, or a line on stderr when it is not a success) and returns the exit status. */
export function reportOutcome(outcome: VmOutcome, built: BuiltVm, json: boolean, extra: Record<string, unknown> = {}): ExitCode {
  const exitCode = exitCodeFor(outcome);
  if (json) {
    printJson({
      ok: exitCode === EXIT.ok,
      outcome: outcome.kind,
      detail: outcome.detail,
      exitCode,
      kernel: built.kernel,
      cmdline: built.cmdline,
      acpi: built.acpi,
      ...extra,
      ...(outcome.deviceStats ? { devices: outcome.deviceStats } : {}),
      ...(outcome.deviceErrors ? { deviceErrors: outcome.deviceErrors } : {}),
      ...(outcome.bootTimeMs !== undefined ? { bootTimeMs: outcome.bootTimeMs } : {}),
    });
  } else if (exitCode !== EXIT.ok) {
    log.error(outcome.detail, { outcome: outcome.kind, exitCode });
  }
  return exitCode;
}

/** Guest console on `output`; host stdin to the guest, in raw mode on a terminal (restored on every exit path). */
export function terminalConsole(output: NodeJS.WriteStream): ConsoleIo {
  return {
    write: (bytes) => output.write(bytes),
    attachInput(deliver) {
      const stdin = process.stdin;
      const raw = stdin.isTTY === true;
      if (raw) stdin.setRawMode(true);
      const onData = (chunk: Buffer) => deliver(new Uint8Array(chunk));
      stdin.on("data", onData);
      stdin.on("error", () => {});
      const restore = () => {
        if (raw) stdin.setRawMode(false);
      };
      process.once("exit", restore);
      return () => {
        stdin.off("data", onData);
        stdin.pause();
        restore();
      };
    },
  };
}

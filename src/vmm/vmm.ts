/**
 * Runs a built VM until the guest ends it: starts one worker per vCPU, pumps
 * the serial console to the host, feeds host input to the guest, and turns
 * how the vCPUs finished into an outcome.
 *
 * How Volt learns that the guest ended (no ACPI yet, see the README):
 *   reboot  — i8042 reset (reboot=k), the ACPI reset register (reboot=acpi) or a triple fault (reboot=t);
 *   poweroff — ACPI S5 on the sleep control register; for kernels without ACPI, the
 *              kernel's "reboot: Power down" / "System halted" console line;
 *   panic   — the kernel's "Kernel panic - not syncing" console line.
 */
import { takeSerialOutput } from "../devices/legacy/serial.ts";
import type { Finished } from "../vcpu/vcpu-thread.ts";
import { VcpuThread } from "../vcpu/vcpu-thread.ts";
import { IoThread } from "../devices/virtio/io-thread.ts";
import type { BuiltVm } from "./builder.ts";
import { buildMachineDevices, createMachineShared } from "./machine.ts";

export type OutcomeKind = "poweroff" | "reboot" | "panic" | "error" | "signal";

export interface VmOutcome {
  readonly kind: OutcomeKind;
  readonly detail: string;
  /** Milliseconds from VMM start to the guest's boot-timer write, when it made one. */
  readonly bootTimeMs?: number;
  /** Per virtio device counters, in device order. */
  readonly deviceStats?: readonly object[];
  /** Virtio devices a misbehaving driver broke (each was reset-only from then on; the VM went on). */
  readonly deviceErrors?: readonly string[];
}

export interface ConsoleIo {
  /** Receives the guest's console output as it comes. */
  write(bytes: Uint8Array): void;
  /** Host input for the guest; call the function with each chunk. Returns a detach function. */
  attachInput?(deliver: (bytes: Uint8Array) => void): () => void;
}

export interface RunOptions {
  readonly console: ConsoleIo;
  /** performance.timeOrigin-based ms when the VMM started, for the boot time. */
  readonly startedAtMs: number;
  /** A guest driver broke a virtio device (the VM goes on). */
  readonly onDeviceError?: (message: string) => void;
}

const POWER_OFF_PATTERN = /reboot: (Power down|System halted)/;
const PANIC_PATTERN = /Kernel panic - not syncing/;
const PUMP_INTERVAL_MS = 5;
const STOP_GRACE_MS = 5000;

export async function runVm(built: BuiltVm, options: RunOptions): Promise<VmOutcome> {
  const shared = createMachineShared(built.vm.fd, built.virtio, { bootTimer: built.config.bootTimer ?? false });
  let bootTimeMs: number | undefined;
  let consoleTail = "";
  let consoleVerdict: { kind: OutcomeKind; detail: string } | undefined;
  const ended = Promise.withResolvers<{ kind: OutcomeKind; detail: string }>();

  const pump = () => {
    const bytes = takeSerialOutput(shared.serial);
    if (bytes.length === 0) return;
    options.console.write(bytes);
    // Scan a sliding window so a marker split across two drains is still seen.
    consoleTail = (consoleTail + new TextDecoder().decode(bytes)).slice(-512);
    if (!consoleVerdict && PANIC_PATTERN.test(consoleTail)) consoleVerdict = { kind: "panic", detail: "the guest kernel panicked" };
    if (!consoleVerdict && POWER_OFF_PATTERN.test(consoleTail)) {
      consoleVerdict = { kind: "poweroff", detail: "the guest powered off" };
      ended.resolve(consoleVerdict);
    }
  };
  const pumpTimer = setInterval(pump, PUMP_INTERVAL_MS);

  // The VMM thread's own view of the devices, to raise the UART's receive interrupt for host input.
  const hostSide = buildMachineDevices(shared, { onResetRequest: () => {}, onPowerOff: () => {}, onBoot: () => {} });
  const detachInput = options.console.attachInput?.((bytes) => {
    hostSide.serial.deliverInput(bytes);
  });

  const onSignal = (signal: NodeJS.Signals) => ended.resolve({ kind: "signal", detail: `stopped by ${signal}` });
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const threads: VcpuThread[] = [];
  let io: IoThread | undefined;
  try {
    if (built.virtio.slots.length > 0) {
      io = await IoThread.start(built.memory.share(), built.virtio, options.onDeviceError);
      io.finished.then((result) => {
        // The I/O thread only ends on its own when it fails; the guest cannot go on without its devices.
        if (result.error !== undefined) ended.resolve({ kind: "error", detail: `virtio I/O thread: ${result.error}` });
      });
    }
    for (const handle of built.vcpus) {
      const thread = await VcpuThread.start(handle, {
        machine: shared,
        onBoot: (atMs) => {
          bootTimeMs ??= atMs - options.startedAtMs;
        },
      });
      threads.push(thread);
      thread.finished.then(
        (finished) => ended.resolve(outcomeOf(finished)),
        (error: Error) => ended.resolve({ kind: "error", detail: error.message }),
      );
    }
    const result = await ended.promise;
    for (const thread of threads) thread.stop();
    await Promise.race([Promise.allSettled(threads.map((t) => t.finished)), Bun.sleep(STOP_GRACE_MS)]);
    // After the vCPUs: a request the guest queued before stopping may still be completing.
    io?.stop();
    const ioResult = io ? await Promise.race([io.finished, Bun.sleep(STOP_GRACE_MS).then(() => undefined)]) : undefined;
    pump();
    // A panic reboots the guest (panic=1): the console line says what really happened.
    const final = consoleVerdict?.kind === "panic" ? consoleVerdict : result;
    return {
      ...final,
      ...(bootTimeMs !== undefined ? { bootTimeMs } : {}),
      ...(ioResult ? { deviceStats: ioResult.stats } : {}),
      ...(io && io.deviceErrors.length > 0 ? { deviceErrors: io.deviceErrors } : {}),
    };
  } finally {
    clearInterval(pumpTimer);
    detachInput?.();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    for (const thread of threads) thread.terminate();
    io?.terminate();
  }
}

function outcomeOf(finished: Finished): { kind: OutcomeKind; detail: string } {
  switch (finished.reason) {
    case "reset":
      return { kind: "reboot", detail: "the guest rebooted (reset request)" };
    case "poweroff":
      return { kind: "poweroff", detail: "the guest powered off (ACPI)" };
    case "shutdown":
      // Linux with reboot=t ends this way on purpose; otherwise it is a crash, and where it happened matters.
      return { kind: "reboot", detail: `the guest rebooted (triple fault on vCPU ${finished.vcpuId}${finished.state ? `: ${finished.state}` : ""})` };
    case "stopped":
      return { kind: "signal", detail: "stopped" };
    case "hlt":
      return { kind: "error", detail: `vCPU ${finished.vcpuId} halted outside the in-kernel irqchip` };
    case "exit-limit":
    case "error": {
      const exit = finished.exits[0];
      const what = finished.error ?? (exit ? `unexpected ${JSON.stringify(exit)}` : "unknown failure");
      return { kind: "error", detail: `vCPU ${finished.vcpuId}: ${what}${finished.state ? ` (${finished.state})` : ""}` };
    }
  }
}

/**
 * Runs a built VM until the guest ends it: starts one worker per vCPU, pumps
 * the serial console to the host, feeds host input to the guest, and turns
 * how the vCPUs finished into an outcome.
 *
 * How Volt learns that the guest ended:
 *   reboot  — i8042 reset (reboot=k), the ACPI reset register (reboot=acpi) or a triple fault (reboot=t);
 *   poweroff — ACPI S5 on the sleep control register; for kernels without ACPI, the
 *              kernel's "reboot: Power down" / "System halted" console line;
 *   panic   — the kernel's "Kernel panic - not syncing" console line.
 */
import type { I8042, KeyPressResult } from "../devices/legacy/i8042.ts";
import { takeSerialOutput } from "../devices/legacy/serial.ts";
import type { Finished } from "../vcpu/vcpu-thread.ts";
import { VcpuThread } from "../vcpu/vcpu-thread.ts";
import { IoThread, type VirtioDeviceState } from "../devices/virtio/io-thread.ts";
import type { MachineShared } from "../vcpu/protocol.ts";
import { readExitCounters, type ExitKind } from "../vcpu/exit-counters.ts";
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
  /** Device state from a snapshot, for a restored VM. */
  readonly restore?: DeviceSnapshot;
  /** Start paused: every vCPU parks before its first KVM_RUN, so the guest runs nothing until resume(). */
  readonly paused?: boolean;
}

const POWER_OFF_PATTERN = /reboot: (Power down|System halted)/;
const PANIC_PATTERN = /Kernel panic - not syncing/;
/** Console drain interval while the guest writes, and the most it backs off to while it is quiet (idle wake-ups). */
const PUMP_BUSY_MS = 2;
const PUMP_IDLE_MS = 32;
const STOP_GRACE_MS = 5000;

export type VmRunState = "running" | "paused" | "stopping";

export interface VmMetrics {
  readonly state: VmRunState;
  readonly uptimeMs: number;
  readonly bootTimeMs?: number;
  /** Exits that reached Volt (port I/O, MMIO, others); kicks out of KVM_RUN are counted apart, as "interrupted". */
  readonly exitsTotal: number;
  readonly vcpus: readonly { readonly id: number; readonly exits: Record<ExitKind, number> }[];
  readonly devices: readonly object[];
}

/** Everything the guest left in Volt's devices, for a snapshot (or from one, to restore). */
export interface DeviceSnapshot {
  readonly serial: Uint8Array;
  /** Absent in snapshots made before the i8042 kept state. */
  readonly i8042?: Uint8Array;
  readonly bootTimer?: Uint8Array;
  /** Per virtio slot: the transport's shared registers. */
  readonly virtioTransports: readonly Uint8Array[];
  readonly virtioDevices: readonly VirtioDeviceState[];
}

/**
 * A VM whose vCPUs and I/O thread are running: it can be paused, resumed,
 * stopped and asked for its device state, and `outcome` settles when the
 * guest ends (or Volt stops it).
 */
export class RunningVm {
  readonly built: BuiltVm;
  readonly outcome: Promise<VmOutcome>;
  private readonly shared: MachineShared;
  private readonly threads: VcpuThread[];
  private readonly io: IoThread | undefined;
  private readonly end: (result: { kind: OutcomeKind; detail: string }) => void;
  private runState: VmRunState = "running";
  /** Serialises pause/resume/snapshot requests: each sees the state the previous one left. */
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    built: BuiltVm,
    shared: MachineShared,
    threads: VcpuThread[],
    io: IoThread | undefined,
    outcome: Promise<VmOutcome>,
    end: (result: { kind: OutcomeKind; detail: string }) => void,
    private readonly startedAtMs: number,
    private readonly timing: { bootTimeMs?: number },
    private readonly keyboard: I8042,
  ) {
    this.built = built;
    this.shared = shared;
    this.threads = threads;
    this.io = io;
    this.outcome = outcome;
    this.end = end;
    outcome.finally(() => (this.runState = "stopping")).catch(() => {});
  }

  get state(): VmRunState {
    return this.runState;
  }

  static async start(built: BuiltVm, options: RunOptions): Promise<RunningVm> {
    const shared = createMachineShared(built.vm.fd, built.virtio, { bootTimer: built.config.bootTimer ?? false, vcpus: built.vcpus.length }, options.restore);
    const timing: { bootTimeMs?: number } = {};
    let consoleTail = "";
    let consoleVerdict: { kind: OutcomeKind; detail: string } | undefined;
    const ended = Promise.withResolvers<{ kind: OutcomeKind; detail: string }>();

    const pump = (): number => {
      const bytes = takeSerialOutput(shared.serial);
      if (bytes.length === 0) return 0;
      options.console.write(bytes);
      // Scan a sliding window so a marker split across two drains is still seen.
      consoleTail = (consoleTail + new TextDecoder().decode(bytes)).slice(-512);
      if (!consoleVerdict && PANIC_PATTERN.test(consoleTail)) consoleVerdict = { kind: "panic", detail: "the guest kernel panicked" };
      if (!consoleVerdict && POWER_OFF_PATTERN.test(consoleTail)) {
        consoleVerdict = { kind: "poweroff", detail: "the guest powered off" };
        ended.resolve(consoleVerdict);
      }
      return bytes.length;
    };
    // Polled on Bun's timers, backing off while the guest is quiet: soon after output, then up to PUMP_IDLE_MS.
    // (An Atomics.waitAsync woken by the writing vCPU was tried: under Bun, a notify from a worker did not always
    // wake the event loop, and consoles stalled for minutes.)
    let pumpDelay = PUMP_BUSY_MS;
    let pumpTimer: ReturnType<typeof setTimeout> | undefined;
    const schedulePump = () => {
      pumpTimer = setTimeout(() => {
        pumpDelay = pump() > 0 ? PUMP_BUSY_MS : Math.min(pumpDelay * 2, PUMP_IDLE_MS);
        schedulePump();
      }, pumpDelay);
    };
    schedulePump();

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
    const cleanup = () => {
      clearTimeout(pumpTimer);
      detachInput?.();
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      for (const thread of threads) thread.terminate();
      io?.terminate();
    };
    try {
      if (built.virtio.slots.length > 0) {
        io = await IoThread.start(built.memory.share(), built.virtio, options.onDeviceError, options.restore?.virtioDevices);
        io.finished.then((result) => {
          // The I/O thread only ends on its own when it fails; the guest cannot go on without its devices.
          if (result.error !== undefined) ended.resolve({ kind: "error", detail: `virtio I/O thread: ${result.error}` });
        });
      }
      for (const handle of built.vcpus) {
        const thread = await VcpuThread.start(handle, {
          machine: shared,
          ...(options.paused ? { startPaused: true } : {}),
          onBoot: (atMs) => {
            timing.bootTimeMs ??= atMs - options.startedAtMs;
          },
        });
        threads.push(thread);
        thread.finished.then(
          (finished) => ended.resolve(outcomeOf(finished)),
          (error: Error) => ended.resolve({ kind: "error", detail: error.message }),
        );
      }
    } catch (error) {
      cleanup();
      throw error;
    }

    const outcome = (async (): Promise<VmOutcome> => {
      try {
        const result = await ended.promise;
        for (const thread of threads) thread.stop();
        await withinGrace(Promise.allSettled(threads.map((t) => t.finished)));
        // After the vCPUs: a request the guest queued before stopping may still be completing.
        io?.stop();
        const ioResult = io ? await withinGrace(io.finished) : undefined;
        pump();
        // A panic reboots the guest (panic=1): the console line says what really happened.
        const final = consoleVerdict?.kind === "panic" ? consoleVerdict : result;
        return {
          ...final,
          ...(timing.bootTimeMs !== undefined ? { bootTimeMs: timing.bootTimeMs } : {}),
          ...(ioResult ? { deviceStats: ioResult.stats } : {}),
          ...(io && io.deviceErrors.length > 0 ? { deviceErrors: io.deviceErrors } : {}),
        };
      } finally {
        cleanup();
      }
    })();
    const vm = new RunningVm(built, shared, threads, io, outcome, (result) => ended.resolve(result), options.startedAtMs, timing, hostSide.i8042);
    // The vCPUs are parked already; this quiesces the devices and records the state, as any pause does.
    if (options.paused) await vm.pause();
    return vm;
  }

  /** Every vCPU parked outside KVM_RUN and every device quiesced. */
  pause(): Promise<void> {
    return this.serialised(() => this.pauseNow());
  }

  resume(): Promise<void> {
    return this.serialised(() => this.resumeNow());
  }

  /** Runs `task` with the VM paused, then lets it run again if it was running before. */
  whilePaused<T>(task: () => Promise<T> | T): Promise<T> {
    return this.serialised(async () => {
      const wasRunning = this.runState === "running";
      await this.pauseNow();
      try {
        return await task();
      } finally {
        if (wasRunning) await this.resumeNow();
      }
    });
  }

  private async pauseNow(): Promise<void> {
    if (this.runState !== "running") return;
    await Promise.all(this.threads.map((thread) => thread.pause()));
    this.pausedDevices = (await this.io?.pause()) ?? [];
    this.runState = "paused";
  }

  private async resumeNow(): Promise<void> {
    if (this.runState !== "paused") return;
    // Devices first, so a request the guest makes the moment it runs is served.
    await this.io?.resume();
    await Promise.all(this.threads.map((thread) => thread.resume()));
    this.pausedDevices = undefined;
    this.runState = "running";
  }

  /** The device state of a paused VM (what a snapshot records). */
  deviceSnapshot(): DeviceSnapshot {
    if (this.runState !== "paused" || !this.pausedDevices) throw new Error("the VM must be paused to capture its devices");
    return {
      serial: new Uint8Array(this.shared.serial.buffer).slice(),
      i8042: new Uint8Array(this.shared.i8042.buffer).slice(),
      ...(this.shared.bootTimer ? { bootTimer: new Uint8Array(this.shared.bootTimer.buffer).slice() } : {}),
      virtioTransports: this.built.virtio.slots.map((slot) => new Uint8Array(slot.transport.buffer).slice()),
      virtioDevices: this.pausedDevices,
    };
  }

  /** Counters for operators: exits per vCPU and kind, each device's counters, boot time, uptime. */
  async metrics(): Promise<VmMetrics> {
    const vcpus = readExitCounters(this.shared.exitCounters);
    const exitsTotal = vcpus.reduce((sum, row) => sum + row.io + row.mmio + row.other, 0);
    return {
      state: this.runState,
      uptimeMs: performance.timeOrigin + performance.now() - this.startedAtMs,
      ...(this.timing.bootTimeMs !== undefined ? { bootTimeMs: this.timing.bootTimeMs } : {}),
      exitsTotal,
      vcpus: vcpus.map((exits, id) => ({ id, exits })),
      devices: (await this.io?.stats()) ?? [],
    };
  }

  /**
   * Presses Ctrl-Alt-Del on the guest's keyboard. What follows is the guest's
   * choice: Linux reboots at once unless its init asked to be told instead
   * (busybox and systemd inits do, and shut down cleanly).
   */
  sendCtrlAltDel(): KeyPressResult {
    return this.keyboard.pressCtrlAltDel();
  }

  /** Ends the VM as if the guest had, with this outcome. */
  stop(kind: OutcomeKind = "signal", detail = "stopped on request"): void {
    this.runState = "stopping";
    // A paused vCPU wakes from its park to stop; a paused I/O thread too.
    this.end({ kind, detail });
  }

  /** Runs `task` after every earlier pause/resume/snapshot request has finished. */
  private serialised<T>(task: () => Promise<T>): Promise<T> {
    const next = this.queue.then(task, task);
    this.queue = next.catch(() => {});
    return next;
  }

  private pausedDevices: readonly VirtioDeviceState[] | undefined;
}

/**
 * `work`'s result, or undefined after STOP_GRACE_MS. The timer is cleared as
 * soon as the work is done: a pending timer would keep the process alive
 * (volt used to linger 5 s after every VM ended).
 */
async function withinGrace<T>(work: Promise<T>): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const grace = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), STOP_GRACE_MS);
  });
  try {
    return await Promise.race([work, grace]);
  } finally {
    clearTimeout(timer);
  }
}

export async function runVm(built: BuiltVm, options: RunOptions): Promise<VmOutcome> {
  return (await RunningVm.start(built, options)).outcome;
}

export function outcomeOf(finished: Finished): { kind: OutcomeKind; detail: string } {
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

/**
 * Messages between the VMM thread and a vCPU worker. KVM_RUN blocks the
 * worker's event loop, so a worker cannot read messages while the guest runs:
 * requests to stop go through the shared control word plus a kick (signal +
 * immediate_exit), and the worker reads them each time KVM_RUN returns.
 */
import type { BootTimerState } from "../devices/legacy/boot-timer.ts";
import type { I8042State } from "../devices/legacy/i8042.ts";
import type { SerialState } from "../devices/legacy/serial.ts";
import type { VirtioShared } from "../devices/virtio/io-thread.ts";
import type { ExitCounterState } from "./exit-counters.ts";
import type { VcpuHandle } from "../kvm/vcpu.ts";

export type ExitRecord =
  | { readonly reason: "KVM_EXIT_IO"; readonly direction: "in" | "out"; readonly port: number; readonly size: number; readonly count: number; readonly data: readonly number[] }
  | { readonly reason: "KVM_EXIT_MMIO"; readonly address: number; readonly length: number; readonly isWrite: boolean; readonly data: readonly number[] }
  | { readonly reason: "KVM_EXIT_HLT" }
  | { readonly reason: "KVM_EXIT_SHUTDOWN" }
  | { readonly reason: "KVM_EXIT_FAIL_ENTRY"; readonly hardwareReason: string }
  | { readonly reason: "KVM_EXIT_INTERNAL_ERROR"; readonly suberror: number }
  | { readonly reason: string; readonly raw: number };

/**
 * Why a vCPU left its loop. "reset": the guest pulsed the i8042 reset line or
 * wrote the ACPI reset register; "poweroff": it entered ACPI S5;
 * "shutdown": a triple fault (how `reboot=t` guests reboot); "error": an exit
 * Volt cannot handle, or a failure in Volt.
 */
export type FinishReason = "hlt" | "shutdown" | "reset" | "poweroff" | "stopped" | "exit-limit" | "error";

/** Shared state of the machine's devices; each worker builds its own device instances over it. */
export interface MachineShared {
  /** The VM fd, for KVM_IRQ_LINE from device interrupt lines. */
  readonly vmFd: number;
  readonly serial: SerialState;
  readonly i8042: I8042State;
  /** The virtio-mmio devices: transport state (served on vCPU exits) and eventfds. */
  readonly virtio: VirtioShared;
  /** Present when the VM maps the boot-timer device. */
  readonly bootTimer?: BootTimerState;
  /** Exits per vCPU and kind, for metrics. */
  readonly exitCounters: ExitCounterState;
}

export interface StartMessage {
  readonly type: "start";
  readonly vcpu: VcpuHandle;
  /** Int32Array over it: [CONTROL_COMMAND] written by the VMM thread. */
  readonly control: SharedArrayBuffer;
  /** Stop after this many exits (a guard for diagnostics; the VMM proper runs unbounded). */
  readonly maxExits: number;
  /** Present for a real VM: exits go to its devices. Absent: diagnostics mode, exits are recorded. */
  readonly machine?: MachineShared;
}

export type ToWorker = StartMessage;

export type FromWorker =
  | { readonly type: "started"; readonly vcpuId: number; readonly threadId: number }
  | { readonly type: "booted"; readonly vcpuId: number; readonly atMs: number }
  | { readonly type: "paused"; readonly vcpuId: number }
  | { readonly type: "resumed"; readonly vcpuId: number }
  | {
      readonly type: "finished";
      readonly vcpuId: number;
      readonly reason: FinishReason;
      readonly exits: readonly ExitRecord[];
      readonly error?: string;
      /** Registers at an unexpected end (triple fault, unhandled exit), for the operator. */
      readonly state?: string;
    };

export const CONTROL_COMMAND = 0;
export const CONTROL_WORDS = 2;
export const COMMAND_RUN = 0;
export const COMMAND_STOP = 1;
/**
 * Park outside KVM_RUN until the command changes back to RUN (or to STOP).
 * A parked vCPU has completed its last exit (KVM finished any pending I/O
 * emulation), so its registers can be read and written from the VMM thread.
 */
export const COMMAND_PAUSE = 2;

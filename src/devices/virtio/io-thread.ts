/**
 * The virtio I/O thread: one Bun worker per VM runs every virtio device.
 * It sleeps in ppoll on the queues' ioeventfds (which KVM signals when the
 * driver writes QueueNotify, without an exit to Volt) and on a control
 * eventfd (status changes, stop), and interrupts the guest through irqfds.
 * So neither a vCPU worker nor the VMM's main thread touches the data path.
 *
 * Like a vCPU worker, it blocks its own event loop and cannot read messages:
 * stopping it goes through a shared flag plus a signal on the control eventfd.
 */
import type { SharedGuestMemory } from "../../memory/guest-memory.ts";
import { close, signalEventfd } from "../../ffi/syscalls.ts";
import { workerUrl } from "../../workers.ts";
import type { VirtioDeviceSpec } from "./factory.ts";
import type { VirtioMmioState } from "./mmio.ts";

/** One virtio-mmio device slot: where it is, what it is, and its eventfds. */
export interface VirtioSlot {
  readonly spec: VirtioDeviceSpec;
  readonly mmioBase: number;
  /** IOAPIC pin (GSI) its irqfd drives. */
  readonly irq: number;
  readonly transport: VirtioMmioState;
  /** queueEventFds[i] is signalled when the driver notifies queue i. */
  readonly queueEventFds: readonly number[];
  readonly irqEventFd: number;
}

export interface VirtioShared {
  readonly slots: readonly VirtioSlot[];
  /** Signalled after every driver status write, and to stop the thread. */
  readonly controlEventFd: number;
}

export interface IoStartMessage {
  readonly type: "start";
  readonly memory: SharedGuestMemory;
  readonly virtio: VirtioShared;
  /** Int32Array over it: [0] = 1 asks the thread to stop. */
  readonly control: SharedArrayBuffer;
}

export type FromIoWorker =
  | { readonly type: "started" }
  | { readonly type: "device-error"; readonly slot: number; readonly message: string }
  | { readonly type: "finished"; readonly stats: readonly object[]; readonly error?: string };

export const IO_CONTROL_STOP = 0;

export class IoThread {
  private readonly worker: Worker;
  private readonly control: Int32Array;
  private readonly controlEventFd: number;
  readonly finished: Promise<{ stats: readonly object[]; error?: string }>;
  /** Device errors (a driver that broke its virtqueue) as they are reported; the VM keeps running. */
  readonly deviceErrors: readonly string[];

  private constructor(
    worker: Worker,
    control: Int32Array,
    controlEventFd: number,
    finished: Promise<{ stats: readonly object[]; error?: string }>,
    deviceErrors: readonly string[],
  ) {
    this.deviceErrors = deviceErrors;
    this.worker = worker;
    this.control = control;
    this.controlEventFd = controlEventFd;
    this.finished = finished;
  }

  /** Starts the thread and resolves once it is polling (so no early notification is lost). */
  static async start(memory: SharedGuestMemory, virtio: VirtioShared, onDeviceError: (message: string) => void = () => {}): Promise<IoThread> {
    const worker = new Worker(workerUrl("io"));
    const controlBuffer = new SharedArrayBuffer(4);
    const started = Promise.withResolvers<void>();
    const finished = Promise.withResolvers<{ stats: readonly object[]; error?: string }>();
    const errors: string[] = [];
    worker.onmessage = (event: MessageEvent<FromIoWorker>) => {
      const message = event.data;
      if (message.type === "started") started.resolve();
      else if (message.type === "device-error") {
        const text = `virtio device ${message.slot}: ${message.message}`;
        errors.push(text);
        onDeviceError(text);
      } else {
        finished.resolve({ stats: message.stats, ...(message.error !== undefined ? { error: message.error } : {}) });
        started.reject(new Error(message.error ?? "the virtio I/O thread ended before starting"));
      }
    };
    worker.onerror = (event) => {
      const error = new Error(`virtio I/O thread: ${event.message}`);
      started.reject(error);
      finished.resolve({ stats: [], error: error.message });
    };
    const start: IoStartMessage = { type: "start", memory, virtio, control: controlBuffer };
    worker.postMessage(start);
    await started.promise;
    return new IoThread(worker, new Int32Array(controlBuffer), virtio.controlEventFd, finished.promise, errors);
  }

  stop(): void {
    Atomics.store(this.control, IO_CONTROL_STOP, 1);
    signalEventfd(this.controlEventFd);
  }

  terminate(): void {
    this.worker.terminate();
  }
}

/** Closes every eventfd of the slots (after the VM and the I/O thread are gone). */
export function closeVirtioEventFds(virtio: VirtioShared): void {
  for (const fd of [virtio.controlEventFd, ...virtio.slots.flatMap((slot) => [...slot.queueEventFds, slot.irqEventFd])]) {
    try {
      close(fd);
    } catch {
      // Already closed: nothing else owns these numbers.
    }
  }
}

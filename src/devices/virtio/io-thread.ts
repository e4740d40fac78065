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
  /** Int32Array over it: [IO_CONTROL_COMMAND] is IO_RUN, IO_STOP or IO_PAUSE. */
  readonly control: SharedArrayBuffer;
  /** Where each device resumes (a restored snapshot); absent for a fresh boot. */
  readonly restore?: readonly VirtioDeviceState[];
}

/** What a device needs to carry on where it was: whether the driver had started it, and its queues' positions. */
export interface VirtioDeviceState {
  readonly active: boolean;
  /** Per queue: undefined when the driver left it unset. */
  readonly queues: readonly ({ readonly lastAvailIndex: number; readonly nextUsedIndex: number } | undefined)[];
}

export type FromIoWorker =
  | { readonly type: "started" }
  | { readonly type: "paused"; readonly devices: readonly VirtioDeviceState[] }
  | { readonly type: "resumed" }
  | { readonly type: "stats"; readonly stats: readonly object[] }
  | { readonly type: "device-error"; readonly slot: number; readonly message: string }
  | { readonly type: "finished"; readonly stats: readonly object[]; readonly error?: string };

export const IO_CONTROL_COMMAND = 0;
/** Bumped by the VMM thread to ask for the devices' counters (answered with a "stats" message). */
export const IO_CONTROL_STATS_REQUEST = 1;
const IO_CONTROL_WORDS = 2;
export const IO_RUN = 0;
export const IO_STOP = 1;
/** Finish the current round, report every device's state and sleep until IO_RUN or IO_STOP. */
export const IO_PAUSE = 2;

interface IoWaiters {
  readonly paused: ((devices: readonly VirtioDeviceState[]) => void)[];
  readonly resumed: (() => void)[];
  readonly stats: ((stats: readonly object[]) => void)[];
  ended: boolean;
}

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
    waiters: IoWaiters,
  ) {
    this.waiters = waiters;
    this.deviceErrors = deviceErrors;
    this.worker = worker;
    this.control = control;
    this.controlEventFd = controlEventFd;
    this.finished = finished;
  }

  /** Starts the thread and resolves once it is polling (so no early notification is lost). */
  private readonly waiters: IoWaiters;

  static async start(
    memory: SharedGuestMemory,
    virtio: VirtioShared,
    onDeviceError: (message: string) => void = () => {},
    restore?: readonly VirtioDeviceState[],
  ): Promise<IoThread> {
    const worker = new Worker(workerUrl("io"));
    const controlBuffer = new SharedArrayBuffer(IO_CONTROL_WORDS * 4);
    const started = Promise.withResolvers<void>();
    const finished = Promise.withResolvers<{ stats: readonly object[]; error?: string }>();
    const errors: string[] = [];
    const waiters: IoWaiters = { paused: [], resumed: [], stats: [], ended: false };
    worker.onmessage = (event: MessageEvent<FromIoWorker>) => {
      const message = event.data;
      if (message.type === "started") started.resolve();
      else if (message.type === "paused") for (const wake of waiters.paused.splice(0)) wake(message.devices);
      else if (message.type === "resumed") for (const wake of waiters.resumed.splice(0)) wake();
      else if (message.type === "stats") for (const wake of waiters.stats.splice(0)) wake(message.stats);
      else if (message.type === "device-error") {
        const text = `virtio device ${message.slot}: ${message.message}`;
        errors.push(text);
        onDeviceError(text);
      } else {
        waiters.ended = true;
        for (const wake of waiters.paused.splice(0)) wake([]);
        for (const wake of waiters.resumed.splice(0)) wake();
        for (const wake of waiters.stats.splice(0)) wake(message.stats);
        finished.resolve({ stats: message.stats, ...(message.error !== undefined ? { error: message.error } : {}) });
        started.reject(new Error(message.error ?? "the virtio I/O thread ended before starting"));
      }
    };
    worker.onerror = (event) => {
      const error = new Error(`virtio I/O thread: ${event.message}`);
      started.reject(error);
      finished.resolve({ stats: [], error: error.message });
    };
    const start: IoStartMessage = { type: "start", memory, virtio, control: controlBuffer, ...(restore ? { restore } : {}) };
    worker.postMessage(start);
    await started.promise;
    return new IoThread(worker, new Int32Array(controlBuffer), virtio.controlEventFd, finished.promise, errors, waiters);
  }

  stop(): void {
    Atomics.store(this.control, IO_CONTROL_COMMAND, IO_STOP);
    Atomics.notify(this.control, IO_CONTROL_COMMAND);
    signalEventfd(this.controlEventFd);
  }

  /** Quiesces every device (no request is half done) and resolves with their states. */
  pause(): Promise<readonly VirtioDeviceState[]> {
    if (this.waiters.ended) return Promise.resolve([]);
    const parked = new Promise<readonly VirtioDeviceState[]>((resolve) => this.waiters.paused.push(resolve));
    Atomics.store(this.control, IO_CONTROL_COMMAND, IO_PAUSE);
    signalEventfd(this.controlEventFd);
    return parked;
  }

  /** Each device's counters as they are now (answered between rounds of I/O, and while paused). */
  stats(): Promise<readonly object[]> {
    if (this.waiters.ended) return Promise.resolve([]);
    const answered = new Promise<readonly object[]>((resolve) => this.waiters.stats.push(resolve));
    Atomics.add(this.control, IO_CONTROL_STATS_REQUEST, 1);
    Atomics.notify(this.control, IO_CONTROL_COMMAND);
    signalEventfd(this.controlEventFd);
    return answered;
  }

  resume(): Promise<void> {
    if (this.waiters.ended) return Promise.resolve();
    const running = new Promise<void>((resolve) => this.waiters.resumed.push(resolve));
    Atomics.store(this.control, IO_CONTROL_COMMAND, IO_RUN);
    Atomics.notify(this.control, IO_CONTROL_COMMAND);
    return running;
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

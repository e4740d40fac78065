/**
 * Worker entry point of the virtio I/O thread (see io-thread.ts): builds the
 * VM's virtio devices and serves them until asked to stop.
 */
import { POLLIN, drainEventfd, poll, signalEventfd } from "../../ffi/syscalls.ts";
import { GuestMemoryView } from "../../memory/guest-memory.ts";
import { VIRTIO_F_RING_EVENT_IDX, featureBit, type QueueHandle } from "./device.ts";
import { createVirtioDevice, type LiveVirtioDevice } from "./factory.ts";
import {
  IO_CONTROL_COMMAND,
  IO_CONTROL_STATS_REQUEST,
  IO_PAUSE,
  IO_STOP,
  type FromIoWorker,
  type IoStartMessage,
  type VirtioDeviceState,
  type VirtioSlot,
} from "./io-thread.ts";
import { VIRTIO_STATUS, VirtioMmioDeviceSide } from "./mmio.ts";
import { SplitQueue, VirtqueueError } from "./queue.ts";

declare const self: Worker;

function post(message: FromIoWorker): void {
  self.postMessage(message);
}

const EMPTY_QUEUE: QueueHandle = {
  size: 0,
  pop: () => undefined,
  addUsed: () => {
    throw new RangeError("a device returned a chain to a queue the driver never set up");
  },
  addUsedBatch: () => {
    throw new RangeError("a device returned chains to a queue the driver never set up");
  },
  notifyIfNeeded: () => {},
};

/** A device plus the transport state it serves and whether the driver has started it. */
class ServedDevice {
  readonly device: LiveVirtioDevice;
  readonly transport: VirtioMmioDeviceSide;
  private active = false;
  private seenResets: number;
  /** The queues handed to the device at activation (undefined: left unset by the driver). */
  private queues: (SplitQueue | undefined)[] = [];

  constructor(
    readonly index: number,
    readonly slot: VirtioSlot,
    private readonly memory: GuestMemoryView,
  ) {
    this.device = createVirtioDevice(slot.spec);
    this.transport = new VirtioMmioDeviceSide(slot.transport, { trigger: () => signalEventfd(slot.irqEventFd) });
    this.seenResets = this.transport.resetCount();
  }

  /** Follows the driver's status: DRIVER_OK starts the device, a reset (status 0) stops it. */
  syncStatus(): void {
    const status = this.transport.status();
    const resets = this.transport.resetCount();
    // A reset the worker did not see in between (reset and re-init both landed before it looked) still drops the old queues.
    if (this.active && (resets !== this.seenResets || (status & VIRTIO_STATUS.DRIVER_OK) === 0)) {
      this.device.reset();
      this.active = false;
    }
    this.seenResets = resets;
    const broken = (status & (VIRTIO_STATUS.FAILED | VIRTIO_STATUS.DEVICE_NEEDS_RESET)) !== 0;
    if (!this.active && !broken && (status & VIRTIO_STATUS.DRIVER_OK) !== 0) this.activate();
  }

  process(queueIndex: number): void {
    if (!this.active) return;
    try {
      this.device.processQueue(queueIndex);
    } catch (error) {
      this.fail(error);
    }
  }

  /** Backend descriptors are watched whether or not the driver is up: a backend may need draining either way. */
  backendPolls(): readonly { fd: number; events: number }[] {
    return this.device.pollFds?.() ?? [];
  }

  processBackend(fd: number, revents: number): void {
    try {
      this.device.processBackend?.(fd, revents);
    } catch (error) {
      this.fail(error);
    }
  }

  /** For a snapshot: whether the device runs and where each queue stands. Only valid while the thread is paused. */
  state(): VirtioDeviceState {
    return {
      active: this.active,
      queues: this.active ? this.queues.map((q) => (q ? { lastAvailIndex: q.lastAvailIndex, nextUsedIndex: q.nextUsedIndex } : undefined)) : [],
    };
  }

  /** Picks up a restored device where it was: the transport state came back with the snapshot, the queues resume their indices. */
  restore(state: VirtioDeviceState): void {
    this.seenResets = this.transport.resetCount();
    if (!state.active) return;
    this.activate(state.queues);
    if (this.active) this.device.restored?.();
  }

  private activate(resumeAt?: VirtioDeviceState["queues"]): void {
    const ackedFeatures = this.transport.ackedFeatures();
    const eventIdx = (ackedFeatures & featureBit(VIRTIO_F_RING_EVENT_IDX)) !== 0n;
    try {
      this.queues = this.device.queueMaxSizes.map((_, index) => {
        const config = this.transport.queueConfig(index);
        // A driver may leave a queue it does not use unset (virtio-net's control queue, say): it stays empty.
        if (!config.ready) return undefined;
        const start = resumeAt?.[index];
        return new SplitQueue(this.memory, config, {
          eventIdx,
          interrupt: () => this.transport.raiseUsedBufferInterrupt(),
          ...(start ? { start } : {}),
        });
      });
      this.device.activate({ memory: this.memory, ackedFeatures, queues: this.queues.map((q) => q ?? EMPTY_QUEUE) });
      this.active = true;
    } catch (error) {
      this.fail(error);
      return;
    }
    // Requests queued before DRIVER_OK was seen (or before the snapshot) would otherwise wait for the next notification.
    for (let queue = 0; queue < this.device.queueMaxSizes.length; queue++) this.process(queue);
  }

  /** A driver that broke the rules loses this device until it resets it; the VM and the other devices carry on. */
  private fail(error: unknown): void {
    this.device.reset();
    this.active = false;
    this.transport.markNeedsReset();
    const message = error instanceof VirtqueueError ? `driver error: ${error.message}` : `device failure: ${(error as Error).message ?? String(error)}`;
    post({ type: "device-error", slot: this.index, message });
  }
}

const COMMAND_RECHECK_MS = 1000;

interface PollOwner {
  readonly device: ServedDevice;
  /** A queue's ioeventfd, or a backend descriptor. */
  readonly queue?: number;
}

function serve(start: IoStartMessage): readonly object[] {
  const memory = new GuestMemoryView(start.memory);
  const control = new Int32Array(start.control);
  const devices = start.virtio.slots.map((slot, index) => new ServedDevice(index, slot, memory));
  if (start.restore) devices.forEach((device, i) => device.restore(start.restore![i] ?? { active: false, queues: [] }));
  // The control eventfd and every queue's ioeventfd never change; backend descriptors are asked for each round.
  const fixed: { fd: number; events: number }[] = [{ fd: start.virtio.controlEventFd, events: POLLIN }];
  const fixedOwners: PollOwner[] = [];
  for (const device of devices) {
    device.slot.queueEventFds.forEach((fd, queue) => {
      fixed.push({ fd, events: POLLIN });
      fixedOwners.push({ device, queue });
    });
  }
  const statsOf = () => devices.map((device) => ({ kind: device.slot.spec.kind, ...device.device.stats }));
  let statsAnswered = 0;
  const answerStats = () => {
    const requested = Atomics.load(control, IO_CONTROL_STATS_REQUEST);
    if (requested === statsAnswered) return;
    statsAnswered = requested;
    post({ type: "stats", stats: statsOf() });
  };
  post({ type: "started" });
  try {
    for (;;) {
      const entries = [...fixed];
      const owners = [...fixedOwners];
      for (const device of devices) {
        for (const backend of device.backendPolls()) {
          entries.push(backend);
          owners.push({ device });
        }
      }
      // A bounded wait: pause, stop and metrics requests are re-checked at least once a second even if their
      // wake-up on the control eventfd were lost, so the thread can never sleep through a command.
      const revents = poll(entries, COMMAND_RECHECK_MS);
      if (Atomics.load(control, IO_CONTROL_COMMAND) === IO_PAUSE) {
        // The ring positions reported are those after every request taken so far was completed.
        post({ type: "paused", devices: devices.map((device) => device.state()) });
        // Metrics are still answered while paused (a stats request wakes the wait too).
        while (Atomics.load(control, IO_CONTROL_COMMAND) === IO_PAUSE) {
          answerStats();
          Atomics.wait(control, IO_CONTROL_COMMAND, IO_PAUSE, 1000);
        }
        if (Atomics.load(control, IO_CONTROL_COMMAND) !== IO_STOP) post({ type: "resumed" });
        // Whatever arrived meanwhile is still pending on its eventfd: the next poll sees it.
        continue;
      }
      if (Atomics.load(control, IO_CONTROL_COMMAND) === IO_STOP) break;
      answerStats();
      if (revents[0]) {
        drainEventfd(entries[0]!.fd);
        for (const device of devices) device.syncStatus();
      }
      for (let i = 1; i < entries.length; i++) {
        if (!revents[i]) continue;
        const owner = owners[i - 1]!;
        if (owner.queue !== undefined) {
          drainEventfd(entries[i]!.fd);
          owner.device.process(owner.queue);
        } else {
          owner.device.processBackend(entries[i]!.fd, revents[i]!);
        }
      }
    }
  } finally {
    for (const device of devices) device.device.close?.();
  }
  return statsOf();
}

self.onmessage = (event: MessageEvent<IoStartMessage>) => {
  try {
    post({ type: "finished", stats: serve(event.data) });
  } catch (error) {
    post({ type: "finished", stats: [], error: error instanceof Error ? error.message : String(error) });
  }
};

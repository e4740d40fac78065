/**
 * The VMM thread's handle on one vCPU worker: start it, kick it out of
 * KVM_RUN, and learn how it finished.
 */
import { installKickHandler } from "../ffi/shim.ts";
import { getpid, tgkill } from "../ffi/syscalls.ts";
import { Vcpu, type VcpuHandle } from "../kvm/vcpu.ts";
import { workerUrl } from "../workers.ts";
import {
  COMMAND_PAUSE,
  COMMAND_RUN,
  COMMAND_STOP,
  CONTROL_COMMAND,
  CONTROL_WORDS,
  type FromWorker,
  type MachineShared,
  type StartMessage,
} from "./protocol.ts";

export type Finished = Extract<FromWorker, { type: "finished" }>;

export interface VcpuThreadOptions {
  readonly maxExits?: number;
  /** The machine's shared device state; without it the worker only records exits (diagnostics). */
  readonly machine?: MachineShared;
  /** The guest wrote the boot-timer magic (performance.timeOrigin-based ms, from the worker's clock). */
  readonly onBoot?: (atEpochMs: number) => void;
  /** Park before the first KVM_RUN (a snapshot loaded paused): the guest runs no instruction until resume(). */
  readonly startPaused?: boolean;
}

interface Waiters {
  readonly paused: (() => void)[];
  readonly resumed: (() => void)[];
  ended: boolean;
  /** The worker reported "paused" and not "resumed" since. */
  parked: boolean;
}

export class VcpuThread {
  readonly finished: Promise<Finished>;
  private readonly worker: Worker;
  private readonly control: Int32Array;
  private readonly vcpu: Vcpu;
  private readonly threadId: number;
  private readonly kickSignal: number;
  /** Resolvers waiting for the worker to report "paused" / "resumed". */
  private readonly waiters: Waiters;

  private constructor(
    worker: Worker,
    control: Int32Array,
    vcpu: Vcpu,
    threadId: number,
    finished: Promise<Finished>,
    waiters: Waiters,
  ) {
    this.waiters = waiters;
    this.worker = worker;
    this.control = control;
    this.vcpu = vcpu;
    this.threadId = threadId;
    this.finished = finished;
    this.kickSignal = installKickHandler();
  }

  /** Spawns the worker and resolves once it is about to enter the guest. */
  static async start(handle: VcpuHandle, options: VcpuThreadOptions = {}): Promise<VcpuThread> {
    const worker = new Worker(workerUrl("vcpu"));
    const controlBuffer = new SharedArrayBuffer(CONTROL_WORDS * Int32Array.BYTES_PER_ELEMENT);
    const started = Promise.withResolvers<number>();
    const finished = Promise.withResolvers<Finished>();
    finished.promise.catch(() => {}); // a failure before start is reported through `started`
    const waiters: Waiters = { paused: [], resumed: [], ended: false, parked: false };
    const parkedAtStart = Promise.withResolvers<void>();
    if (options.startPaused) {
      // The worker reads the control word before entering the guest, so this parks it first.
      Atomics.store(new Int32Array(controlBuffer), CONTROL_COMMAND, COMMAND_PAUSE);
      waiters.paused.push(parkedAtStart.resolve);
    }
    worker.onmessage = (event: MessageEvent<FromWorker>) => {
      const message = event.data;
      if (message.type === "started") {
        started.resolve(message.threadId);
      } else if (message.type === "booted") {
        options.onBoot?.(message.atMs);
      } else if (message.type === "paused" || message.type === "resumed") {
        waiters.parked = message.type === "paused";
        for (const wake of waiters[message.type].splice(0)) wake();
      } else {
        // A vCPU that ends while someone waits for it to pause or resume must not leave them hanging.
        waiters.ended = true;
        for (const wake of [...waiters.paused.splice(0), ...waiters.resumed.splice(0)]) wake();
        started.resolve(-1); // finished before it could start: `finished` says why
        finished.resolve(message);
      }
    };
    worker.onerror = (event) => {
      const error = new Error(`vCPU ${handle.id} worker failed: ${event.message}`);
      started.reject(error);
      finished.reject(error);
    };
    const start: StartMessage = {
      type: "start",
      vcpu: handle,
      control: controlBuffer,
      maxExits: options.maxExits ?? Number.MAX_SAFE_INTEGER,
      ...(options.machine ? { machine: options.machine } : {}),
    };
    worker.postMessage(start);
    const threadId = await started.promise;
    if (options.startPaused && threadId !== -1) await parkedAtStart.promise;
    return new VcpuThread(worker, new Int32Array(controlBuffer), new Vcpu(handle), threadId, finished.promise, waiters);
  }

  /** Asks the vCPU to stop and forces it out of KVM_RUN; `finished` then resolves with "stopped". */
  stop(): void {
    Atomics.store(this.control, CONTROL_COMMAND, COMMAND_STOP);
    Atomics.notify(this.control, CONTROL_COMMAND); // a parked vCPU wakes to stop
    this.kick();
  }

  /**
   * Takes the vCPU out of KVM_RUN and parks it; resolves once it is parked
   * (its state may then be read or written through a Vcpu on this thread) or
   * has finished.
   */
  pause(): Promise<void> {
    if (this.waiters.ended || this.waiters.parked) return Promise.resolve();
    const parked = new Promise<void>((resolve) => this.waiters.paused.push(resolve));
    Atomics.store(this.control, CONTROL_COMMAND, COMMAND_PAUSE);
    this.kick();
    return parked;
  }

  /** Lets a parked vCPU enter the guest again; resolves once it is running (or has finished). */
  resume(): Promise<void> {
    if (this.waiters.ended) return Promise.resolve();
    const running = new Promise<void>((resolve) => this.waiters.resumed.push(resolve));
    Atomics.store(this.control, CONTROL_COMMAND, COMMAND_RUN);
    Atomics.notify(this.control, CONTROL_COMMAND);
    return running;
  }

  private kick(): void {
    // immediate_exit covers a kick that lands before the worker re-enters KVM_RUN.
    this.vcpu.run.set("immediate_exit", 1);
    if (this.threadId > 0) {
      try {
        tgkill(getpid(), this.threadId, this.kickSignal);
      } catch {
        // The thread already left: nothing to interrupt.
      }
    }
  }

  terminate(): void {
    this.worker.terminate();
  }
}

/**
 * The VMM thread's handle on one vCPU worker: start it, kick it out of
 * KVM_RUN, and learn how it finished.
 */
import { installKickHandler } from "../ffi/shim.ts";
import { getpid, tgkill } from "../ffi/syscalls.ts";
import { Vcpu, type VcpuHandle } from "../kvm/vcpu.ts";
import { workerUrl } from "../workers.ts";
import { COMMAND_STOP, CONTROL_COMMAND, CONTROL_WORDS, type FromWorker, type MachineShared, type StartMessage } from "./protocol.ts";

export type Finished = Extract<FromWorker, { type: "finished" }>;

export interface VcpuThreadOptions {
  readonly maxExits?: number;
  /** The machine's shared device state; without it the worker only records exits (diagnostics). */
  readonly machine?: MachineShared;
  /** The guest wrote the boot-timer magic (performance.timeOrigin-based ms, from the worker's clock). */
  readonly onBoot?: (atEpochMs: number) => void;
}

export class VcpuThread {
  readonly finished: Promise<Finished>;
  private readonly worker: Worker;
  private readonly control: Int32Array;
  private readonly vcpu: Vcpu;
  private readonly threadId: number;
  private readonly kickSignal: number;

  private constructor(worker: Worker, control: Int32Array, vcpu: Vcpu, threadId: number, finished: Promise<Finished>) {
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
    worker.onmessage = (event: MessageEvent<FromWorker>) => {
      const message = event.data;
      if (message.type === "started") {
        started.resolve(message.threadId);
      } else if (message.type === "booted") {
        options.onBoot?.(message.atMs);
      } else {
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
    return new VcpuThread(worker, new Int32Array(controlBuffer), new Vcpu(handle), threadId, finished.promise);
  }

  /** Asks the vCPU to stop and forces it out of KVM_RUN; `finished` then resolves with "stopped". */
  stop(): void {
    Atomics.store(this.control, CONTROL_COMMAND, COMMAND_STOP);
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

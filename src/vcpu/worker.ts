/**
 * vCPU worker entry point: one per vCPU, each blocking in KVM_RUN on its own
 * thread. It installs the kick handler first, reports its thread id (the VMM
 * thread kicks it with tgkill), then runs the exit loop.
 */
import { installKickHandler } from "../ffi/shim.ts";
import { gettid } from "../ffi/syscalls.ts";
import { KVM_EXIT, KVM_EXIT_IO_OUT, exitReasonName } from "../kvm/abi.ts";
import { RUN_INTERRUPTED, Vcpu } from "../kvm/vcpu.ts";
import { COMMAND_STOP, CONTROL_COMMAND, type ExitRecord, type FinishReason, type FromWorker, type StartMessage, type ToWorker } from "./protocol.ts";

declare const self: Worker;

function post(message: FromWorker): void {
  self.postMessage(message);
}

function describeExit(vcpu: Vcpu, reason: number): ExitRecord {
  const run = vcpu.run;
  switch (reason) {
    case KVM_EXIT.KVM_EXIT_IO: {
      const size = run.get("io.size");
      const count = run.get("io.count");
      const dataOffset = Number(run.get("io.data_offset"));
      const length = size * count;
      // KVM places the data inside the run mapping; refuse an offset that points outside it.
      if (dataOffset + length > vcpu.runBytes.byteLength) throw new Error(`KVM_EXIT_IO data outside the run page`);
      const isOut = run.get("io.direction") === KVM_EXIT_IO_OUT;
      const data = vcpu.runBytes.subarray(dataOffset, dataOffset + length);
      // Nothing answers port reads at this level: reads see an empty bus (all ones).
      if (!isOut) data.fill(0xff);
      return { reason: "KVM_EXIT_IO", direction: isOut ? "out" : "in", port: run.get("io.port"), size, count, data: [...data] };
    }
    case KVM_EXIT.KVM_EXIT_MMIO: {
      const length = run.get("mmio.len");
      const isWrite = run.get("mmio.is_write") !== 0;
      const data: number[] = [];
      for (let i = 0; i < Math.min(length, 8); i++) data.push(run.get("mmio.data", i));
      if (!isWrite) for (let i = 0; i < 8; i++) run.set("mmio.data", 0xff, i);
      return { reason: "KVM_EXIT_MMIO", address: Number(run.get("mmio.phys_addr")), length, isWrite, data };
    }
    case KVM_EXIT.KVM_EXIT_HLT:
      return { reason: "KVM_EXIT_HLT" };
    case KVM_EXIT.KVM_EXIT_SHUTDOWN:
      return { reason: "KVM_EXIT_SHUTDOWN" };
    case KVM_EXIT.KVM_EXIT_FAIL_ENTRY:
      return { reason: "KVM_EXIT_FAIL_ENTRY", hardwareReason: `0x${run.get("fail_entry.hardware_entry_failure_reason").toString(16)}` };
    case KVM_EXIT.KVM_EXIT_INTERNAL_ERROR:
      return { reason: "KVM_EXIT_INTERNAL_ERROR", suberror: run.get("internal.suberror") };
    default:
      return { reason: exitReasonName(reason), raw: reason };
  }
}

function runLoop(start: StartMessage): { reason: FinishReason; exits: ExitRecord[] } {
  const vcpu = new Vcpu(start.vcpu);
  const control = new Int32Array(start.control);
  const exits: ExitRecord[] = [];
  for (;;) {
    if (Atomics.load(control, CONTROL_COMMAND) === COMMAND_STOP) return { reason: "stopped", exits };
    const reason = vcpu.enter();
    if (reason === RUN_INTERRUPTED) continue;
    const exit = describeExit(vcpu, reason);
    exits.push(exit);
    switch (reason) {
      case KVM_EXIT.KVM_EXIT_HLT:
        return { reason: "hlt", exits };
      case KVM_EXIT.KVM_EXIT_SHUTDOWN:
        return { reason: "shutdown", exits };
      case KVM_EXIT.KVM_EXIT_IO:
      case KVM_EXIT.KVM_EXIT_MMIO:
        break;
      default:
        return { reason: "error", exits };
    }
    if (exits.length >= start.maxExits) return { reason: "exit-limit", exits };
  }
}

self.onmessage = (event: MessageEvent<ToWorker>) => {
  const start = event.data;
  try {
    installKickHandler();
    post({ type: "started", vcpuId: start.vcpu.id, threadId: gettid() });
    const { reason, exits } = runLoop(start);
    post({ type: "finished", vcpuId: start.vcpu.id, reason, exits });
  } catch (error) {
    post({ type: "finished", vcpuId: start.vcpu.id, reason: "error", exits: [], error: error instanceof Error ? error.message : String(error) });
  }
};

/**
 * vCPU worker entry point: one per vCPU, each blocking in KVM_RUN on its own
 * thread. It installs the kick handler first, reports its thread id (the VMM
 * thread kicks it with tgkill), then runs the exit loop.
 */
import { installKickHandler } from "../ffi/shim.ts";
import { gettid } from "../ffi/syscalls.ts";
import { KVM_EXIT, KVM_EXIT_IO_OUT, exitReasonName, kvm_run } from "../kvm/abi.ts";
import { RUN_INTERRUPTED, Vcpu } from "../kvm/vcpu.ts";
import { buildMachineDevices } from "../vmm/machine.ts";
import { EXIT_INTERRUPTED, EXIT_IO, EXIT_MMIO, EXIT_OTHER, exitCounterRow } from "./exit-counters.ts";
import { COMMAND_PAUSE, COMMAND_STOP, CONTROL_COMMAND, type ExitRecord, type FinishReason, type FromWorker, type MachineShared, type StartMessage, type ToWorker } from "./protocol.ts";

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

/**
 * A real VM's exit loop: port I/O and MMIO go to this thread's instances of
 * the machine's devices; the loop ends on a reset, a triple fault, a stop
 * request, or an exit Volt cannot handle.
 */
function runMachineLoop(start: StartMessage, machine: MachineShared): { reason: FinishReason; exits: ExitRecord[]; state?: string } {
  const vcpu = new Vcpu(start.vcpu);
  const control = new Int32Array(start.control);
  let resetRequested = false;
  let powerOffRequested = false;
  const devices = buildMachineDevices(machine, {
    onResetRequest: () => {
      resetRequested = true;
    },
    onPowerOff: () => {
      powerOffRequested = true;
    },
    onBoot: () => post({ type: "booted", vcpuId: start.vcpu.id, atMs: performance.timeOrigin + performance.now() }),
  });
  const run = vcpu.run;
  const runBytes = vcpu.runBytes;
  const exits = exitCounterRow(machine.exitCounters, start.vcpu.id);
  const mmioData = runBytes.subarray(kvm_run.fields["mmio.data"].offset, kvm_run.fields["mmio.data"].offset + 8);
  for (;;) {
    const command = Atomics.load(control, CONTROL_COMMAND);
    if (command === COMMAND_STOP) return { reason: "stopped", exits: [] };
    if (command === COMMAND_PAUSE) {
      park(vcpu, control, start.vcpu.id);
      continue;
    }
    const reason = vcpu.enter();
    switch (reason) {
      case RUN_INTERRUPTED:
        exits[EXIT_INTERRUPTED]!++;
        continue;
      case KVM_EXIT.KVM_EXIT_IO: {
        exits[EXIT_IO]!++;
        const size = run.get("io.size");
        const count = run.get("io.count");
        const port = run.get("io.port");
        const dataOffset = Number(run.get("io.data_offset"));
        // KVM chooses the offset, but a bad one must not let a device write past the run page.
        if (dataOffset + size * count > runBytes.byteLength) return { reason: "error", exits: [describeExit(vcpu, reason)] };
        const isOut = run.get("io.direction") === KVM_EXIT_IO_OUT;
        // String I/O (rep ins/outs) hands over `count` elements at once.
        for (let i = 0; i < count; i++) {
          const data = runBytes.subarray(dataOffset + i * size, dataOffset + (i + 1) * size);
          if (isOut) devices.pio.write(port, data);
          else if (!devices.pio.read(port, data)) data.fill(0xff);
        }
        if (powerOffRequested) return { reason: "poweroff", exits: [] };
        if (resetRequested) return { reason: "reset", exits: [] };
        break;
      }
      case KVM_EXIT.KVM_EXIT_MMIO: {
        exits[EXIT_MMIO]!++;
        const length = run.get("mmio.len");
        if (length < 1 || length > 8) return { reason: "error", exits: [describeExit(vcpu, reason)] };
        const address = Number(run.get("mmio.phys_addr"));
        const data = mmioData.subarray(0, length);
        if (run.get("mmio.is_write") !== 0) devices.mmio.write(address, data);
        else if (!devices.mmio.read(address, data)) data.fill(0xff);
        break;
      }
      case KVM_EXIT.KVM_EXIT_SHUTDOWN:
        exits[EXIT_OTHER]!++;
        return { reason: "shutdown", exits: [], state: cpuStateSummary(vcpu) };
      case KVM_EXIT.KVM_EXIT_HLT:
        return { reason: "hlt", exits: [] };
      default:
        return { reason: "error", exits: [describeExit(vcpu, reason)], state: cpuStateSummary(vcpu) };
    }
  }
}

/**
 * Pauses this vCPU: one KVM_RUN with immediate_exit set lets KVM complete the
 * exit Volt just handled (an MMIO or port read's data goes into the guest's
 * register) without entering the guest, so the saved state is consistent.
 * Then the thread sleeps on the control word until told to run or stop.
 */
function park(vcpu: Vcpu, control: Int32Array, vcpuId: number): void {
  vcpu.run.set("immediate_exit", 1);
  vcpu.enter();
  post({ type: "paused", vcpuId });
  while (Atomics.load(control, CONTROL_COMMAND) === COMMAND_PAUSE) Atomics.wait(control, CONTROL_COMMAND, COMMAND_PAUSE);
  post({ type: "resumed", vcpuId });
}

/** Where the guest was when it ended unexpectedly: a triple fault in a guest that did not ask to reboot needs this to be debugged. */
function cpuStateSummary(vcpu: Vcpu): string {
  try {
    const regs = vcpu.getRegs();
    const sregs = vcpu.getSregs();
    const hex = (value: number | bigint) => `0x${value.toString(16)}`;
    return `rip ${hex(regs.get("rip"))} rsp ${hex(regs.get("rsp"))} cr0 ${hex(sregs.get("cr0"))} cr2 ${hex(sregs.get("cr2"))} cr3 ${hex(sregs.get("cr3"))} cr4 ${hex(sregs.get("cr4"))}`;
  } catch (error) {
    return `registers unavailable: ${(error as Error).message}`;
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
    const result: { reason: FinishReason; exits: ExitRecord[]; state?: string } = start.machine ? runMachineLoop(start, start.machine) : runLoop(start);
    post({ type: "finished", vcpuId: start.vcpu.id, reason: result.reason, exits: result.exits, ...(result.state !== undefined ? { state: result.state } : {}) });
  } catch (error) {
    post({ type: "finished", vcpuId: start.vcpu.id, reason: "error", exits: [], error: error instanceof Error ? error.message : String(error) });
  }
};

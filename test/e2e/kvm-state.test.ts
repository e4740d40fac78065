/**
 * vCPU and VM state on real KVM: a real-mode guest counts in ECX (and in
 * memory) and reports every 4096th count on port 0x3f8. It is stopped,
 * captured, and restored into a new VM with a copy of its memory; the new VM
 * must read back the captured state and the guest must go on counting from
 * where it was, not from 0.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { close } from "../../src/ffi/syscalls.ts";
import { KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, kvm_clock_data, kvm_pit_state2 } from "../../src/kvm/abi.ts";
import {
  MSR_IA32_TSC,
  captureVcpuState,
  captureVmState,
  completePendingExit,
  restoreVcpuState,
  restoreVmState,
  saveableMsrIndices,
  xsaveSize,
  type VcpuState,
} from "../../src/kvm/state.ts";
import { StructView } from "../../src/kvm/struct.ts";
import { Kvm } from "../../src/kvm/system.ts";
import { mapRunPage, unmapRunPage, Vcpu, type VcpuHandle } from "../../src/kvm/vcpu.ts";
import type { Vm } from "../../src/kvm/vm.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import type { ExitRecord, FinishReason } from "../../src/vcpu/protocol.ts";
import { VcpuThread } from "../../src/vcpu/vcpu-thread.ts";
import { requireKvm } from "./kvm.ts";

const kvmUsable = requireKvm();

const MEMORY_SIZE = 0x10000;
const CODE = 0x1000;
const COUNTER = 0x500;
const AFTER_OUT_MARKER = 0x600;
const PERIOD = 0x1000;
const SERIAL = 0x3f8;
const TSS_ADDRESS = 0xfffb_d000;

/**
 * 0: inc ecx; mov [0x500],ecx; test ecx,0xfff; jnz 0b
 *    mov eax,ecx; mov dx,0x3f8; out dx,eax; jmp 0b
 */
const COUNT_AND_REPORT = Uint8Array.of(
  0x66, 0x41,
  0x66, 0x89, 0x0e, COUNTER & 0xff, COUNTER >> 8,
  0x66, 0xf7, 0xc1, (PERIOD - 1) & 0xff, (PERIOD - 1) >> 8, 0x00, 0x00,
  0x75, 0xf0,
  0x66, 0x89, 0xc8,
  0xba, SERIAL & 0xff, SERIAL >> 8,
  0x66, 0xef,
  0xeb, 0xe6,
);

/** mov dx,0x3f8; mov al,'S'; out dx,al; inc byte [0x600]; 1: jmp 1b */
const OUT_THEN_MARK = Uint8Array.of(0xba, SERIAL & 0xff, SERIAL >> 8, 0xb0, 0x53, 0xee, 0xfe, 0x06, AFTER_OUT_MARKER & 0xff, AFTER_OUT_MARKER >> 8, 0xeb, 0xfe);
const OUT_ADDRESS = CODE + 5;

interface Machine {
  readonly vm: Vm;
  readonly memory: GuestMemory;
  readonly handle: VcpuHandle;
  readonly vcpu: Vcpu;
}

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) {
    try {
      cleanup();
    } catch (error) {
      console.error(`cleanup failed: ${(error as Error).message}`);
    }
  }
});

/** A VM as Volt builds one: in-kernel irqchip and PIT before the vCPU (so it gets a LAPIC), one RAM slot. */
function createMachine(kvm: Kvm): Machine {
  const vm = kvm.createVm();
  cleanups.push(() => vm.close());
  vm.setTssAddress(TSS_ADDRESS);
  vm.createIrqchip();
  vm.createPit();
  const memory = GuestMemory.create([{ guestAddress: 0, size: MEMORY_SIZE }], "volt-state-e2e");
  cleanups.push(() => memory.dispose());
  const region = memory.regions[0]!;
  vm.setUserMemoryRegion({ slot: 0, guestAddress: region.guestAddress, size: region.size, hostAddress: region.hostAddress });
  const fd = vm.createVcpu(0);
  const handle: VcpuHandle = { id: 0, fd, runAddress: mapRunPage(fd, vm.vcpuMmapSize), runSize: vm.vcpuMmapSize };
  cleanups.push(() => {
    unmapRunPage(handle);
    close(handle.fd);
  });
  return { vm, memory, handle, vcpu: new Vcpu(handle) };
}

function startRealMode(machine: Machine, kvm: Kvm, code: Uint8Array): void {
  machine.memory.write(CODE, code);
  machine.vcpu.setCpuid(kvm.supportedCpuid());
  machine.vcpu.setSregs(machine.vcpu.getSregs().set("cs.base", 0n).set("cs.selector", 0));
  machine.vcpu.setRegs(machine.vcpu.getRegs().set("rip", BigInt(CODE)).set("rflags", 0x2n).set("rcx", 0n));
}

async function startThread(handle: VcpuHandle, maxExits: number): Promise<VcpuThread> {
  const thread = await VcpuThread.start(handle, { maxExits });
  cleanups.push(() => thread.terminate());
  return thread;
}

async function finished(thread: VcpuThread): Promise<{ reason: FinishReason; exits: readonly ExitRecord[]; error?: string }> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error("the vCPU did not finish within 60 s")), 60_000);
  });
  return Promise.race([thread.finished, timeout]).finally(() => clearTimeout(timer));
}

/** The counter values the guest reported, in order. */
function reported(exits: readonly ExitRecord[]): number[] {
  return exits.map((exit) => {
    if (exit.reason !== "KVM_EXIT_IO" || !("port" in exit) || exit.port !== SERIAL || exit.size !== 4) throw new Error(`unexpected exit ${JSON.stringify(exit)}`);
    const [b0, b1, b2, b3] = exit.data as number[];
    return (b0! | (b1! << 8) | (b2! << 16) | (b3! << 24)) >>> 0;
  });
}

async function waitFor(condition: () => boolean, what: string, ms = 60_000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(5);
  }
}

describe.skipIf(!kvmUsable)(`vCPU and VM state on real KVM (${process.env.VOLT_KVM_MODE ?? "unknown"} mode)`, () => {
  test("a stopped guest, captured and restored into a new VM, reads back the same state and counts on from where it was", async () => {
    const kvm = Kvm.open();
    cleanups.push(() => kvm.close());
    const msrIndices = saveableMsrIndices(kvm);
    expect(msrIndices.length).toBeGreaterThan(10);
    expect(msrIndices).toContain(MSR_IA32_TSC);

    // ---- the source VM, with some non-default state in every part
    const source = createMachine(kvm);
    startRealMode(source, kvm, COUNT_AND_REPORT);
    const xsave = xsaveSize(source.vm);
    source.vcpu.setMsrs([
      { index: 0x174, value: 0x10n }, // SYSENTER_CS
      { index: 0x175, value: 0x8000n }, // SYSENTER_ESP
      { index: 0x176, value: 0x1234_5678n }, // SYSENTER_EIP
    ]);
    const area = source.vcpu.getXsave(xsave);
    const areaView = new DataView(area.buffer);
    areaView.setUint32(24, 0x1fa0, true); // MXCSR
    areaView.setBigUint64(160, 0x0123_4567_89ab_cdefn, true); // XMM0, low half
    areaView.setBigUint64(512, areaView.getBigUint64(512, true) | 2n, true); // XSTATE_BV: SSE state is not the init state
    source.vcpu.setXsave(area);
    source.vcpu.setDebugRegs(source.vcpu.getDebugRegs().set("db", 0xdead_b000n, 0).set("db", 0xbeef_0000n, 3));
    source.vcpu.setXcrs([{ xcr: 0, value: 3n }]); // x87 | SSE
    const lapic = source.vcpu.getLapic();
    new DataView(lapic.buffer).setUint32(0xf0, 0x1ff, true); // spurious vector 0xff, APIC enabled
    new DataView(lapic.buffer).setUint32(0x350, 0x700, true); // LINT0: ExtINT
    new DataView(lapic.buffer).setUint32(0x80, 0x20, true); // TPR
    source.vcpu.setLapic(lapic);
    const ioapic = source.vm.getIrqchip(KVM_IRQCHIP_IOAPIC).set("chip.ioapic.redirtbl", (1n << 16n) | 0x35n, 5); // pin 5: vector 0x35, masked
    source.vm.setIrqchip(ioapic);
    source.vm.setIrqchip(source.vm.getIrqchip(KVM_IRQCHIP_PIC_MASTER).set("chip.pic.imr", 0xfa));
    const HOUR_NS = 3_600_000_000_000n;
    source.vm.setClock(new StructView(kvm_clock_data).set("clock", HOUR_NS));

    // ---- run, let it count past a few reports, stop it
    const first = await startThread(source.handle, 1_000_000);
    await waitFor(() => source.memory.readU32(COUNTER) > 3 * PERIOD, "the guest to count");
    first.stop();
    const stopped = await finished(first);
    expect(stopped.error).toBeUndefined();
    expect(stopped.reason).toBe("stopped");
    const before = reported(stopped.exits);
    expect(before.length).toBeGreaterThanOrEqual(3);
    before.forEach((value, i) => expect(value).toBe((i + 1) * PERIOD));

    // ---- capture (after KVM finishes any half-done OUT)
    completePendingExit(source.vcpu);
    const vcpuState = captureVcpuState(source.vcpu, msrIndices, { xsaveSize: xsave });
    const vmState = captureVmState(source.vm);
    const counted = Number(vcpuState.regs.rcx & 0xffff_ffffn);
    expect(counted).toBeGreaterThanOrEqual(before.at(-1)!);
    expect(source.memory.readU32(COUNTER)).toBeGreaterThanOrEqual(counted - 1);
    expect(vcpuState.regs.rip).toBeGreaterThanOrEqual(BigInt(CODE));
    expect(vcpuState.regs.rip).toBeLessThan(BigInt(CODE + COUNT_AND_REPORT.length));
    expect(vcpuState.msrs.find((m) => m.index === 0x176)?.value).toBe(0x1234_5678n);
    expect(vcpuState.xcrs).toEqual([{ xcr: 0, value: 3n }]);
    const captured = new DataView(vcpuState.xsave.buffer, vcpuState.xsave.byteOffset);
    expect(captured.getUint32(24, true)).toBe(0x1fa0); // MXCSR
    expect(captured.getBigUint64(160, true)).toBe(0x0123_4567_89ab_cdefn); // XMM0
    expect(vmState.clock.clock).toBeGreaterThanOrEqual(HOUR_NS);
    console.log(
      `captured: ecx ${counted} after ${before.length} reports, ${vcpuState.msrs.length}/${msrIndices.length} MSRs readable, ` +
        `XSAVE ${vcpuState.xsave.byteLength} bytes, TSC ${vcpuState.tscKhz} kHz, clock flags ${vmState.clock.flags}`,
    );

    // ---- a new VM with a copy of the memory, restored
    const target = createMachine(kvm);
    target.memory.regions[0]!.bytes.set(source.memory.regions[0]!.bytes);
    restoreVcpuState(target.vcpu, vcpuState, { xsaveSize: xsaveSize(target.vm) });
    restoreVmState(target.vm, vmState);

    // ---- it reads back what was captured
    const readBack = captureVcpuState(target.vcpu, msrIndices, { xsaveSize: xsave });
    expect(readBack.regs).toEqual(vcpuState.regs);
    expect(readBack.sregs).toEqual(vcpuState.sregs);
    expect(readBack.mpState).toBe(vcpuState.mpState);
    expect(readBack.cpuid).toEqual(vcpuState.cpuid);
    expect(readBack.xcrs).toEqual(vcpuState.xcrs);
    expect(readBack.debugRegs).toEqual(vcpuState.debugRegs);
    expect(readBack.events).toEqual(vcpuState.events);
    expect(readBack.xsave).toEqual(vcpuState.xsave);
    expect(readBack.lapic).toEqual(vcpuState.lapic);
    expect(readBack.msrs.map((m) => m.index)).toEqual(vcpuState.msrs.map((m) => m.index));
    expect(differingMsrs(readBack, vcpuState)).toEqual([]);
    // Counters of time go on from the captured value: never backwards, and not from 0.
    for (const index of TIME_COUNTER_MSRS) {
      const msr = (state: VcpuState) => state.msrs.find((m) => m.index === index)?.value;
      if (msr(vcpuState) === undefined) continue;
      expect(msr(readBack)!).toBeGreaterThanOrEqual(msr(vcpuState)!);
    }

    const vmBack = captureVmState(target.vm);
    expect(vmBack.irqchip).toEqual(vmState.irqchip);
    expect(pitWithoutLoadTimes(vmBack.pit)).toEqual(pitWithoutLoadTimes(vmState.pit));
    // kvmclock continues from the capture: not from the new VM's ~0 (backwards), not far ahead
    expect(vmBack.clock.clock).toBeGreaterThanOrEqual(vmState.clock.clock);
    expect(vmBack.clock.clock - vmState.clock.clock).toBeLessThan(30_000_000_000n);

    // ---- it counts on from the captured value
    const second = await startThread(target.handle, 3);
    const resumed = await finished(second);
    expect(resumed.error).toBeUndefined();
    expect(resumed.reason).toBe("exit-limit");
    const after = reported(resumed.exits);
    console.log(`reports before the snapshot: ${before.join(", ")}; after the restore: ${after.join(", ")}`);
    expect(after.length).toBe(3);
    expect(after[0]! % PERIOD).toBe(0);
    expect(after[0]!).toBeGreaterThan(before.at(-1)!);
    expect(after[0]!).toBeGreaterThanOrEqual(counted);
    expect(after[0]! - counted).toBeLessThanOrEqual(PERIOD);
    expect(after).toEqual([after[0]!, after[0]! + PERIOD, after[0]! + 2 * PERIOD]);
    expect(target.memory.readU32(COUNTER)).toBeGreaterThanOrEqual(after[2]!);
  }, 180_000);

  test("an OUT exit is half done until KVM_RUN is re-entered: completePendingExit finishes it without running further guest code", async () => {
    const kvm = Kvm.open();
    cleanups.push(() => kvm.close());
    const machine = createMachine(kvm);
    startRealMode(machine, kvm, OUT_THEN_MARK);
    const thread = await startThread(machine.handle, 1);
    const run = await finished(thread);
    expect(run.reason).toBe("exit-limit");
    expect(run.exits).toEqual([{ reason: "KVM_EXIT_IO", direction: "out", port: SERIAL, size: 1, count: 1, data: ["S".charCodeAt(0)] }]);
    const ripAtExit = machine.vcpu.getRegs().get("rip");
    console.log(`rip at the OUT exit: 0x${ripAtExit.toString(16)} (the OUT is at 0x${OUT_ADDRESS.toString(16)})`);
    expect([BigInt(OUT_ADDRESS), BigInt(OUT_ADDRESS + 1)]).toContain(ripAtExit);
    completePendingExit(machine.vcpu);
    expect(machine.vcpu.getRegs().get("rip")).toBe(BigInt(OUT_ADDRESS + 1));
    expect(machine.memory.readU8(AFTER_OUT_MARKER)).toBe(0);
    // Nothing pending now: a second call is a no-op too.
    completePendingExit(machine.vcpu);
    expect(machine.vcpu.getRegs().get("rip")).toBe(BigInt(OUT_ADDRESS + 1));
    expect(machine.memory.readU8(AFTER_OUT_MARKER)).toBe(0);
  }, 120_000);
});

/**
 * MSRs that count time and so read back larger than restored: the TSC, and
 * KVM's Hyper-V VP_RUNTIME (the vCPU thread's run time, kept as an offset) and
 * TIME_REF_COUNT (derived from kvmclock).
 */
const TIME_COUNTER_MSRS = [MSR_IA32_TSC, 0x4000_0010, 0x4000_0020];

/** MSRs whose value changed across the restore, except those that count time. */
function differingMsrs(actual: VcpuState, expected: VcpuState): string[] {
  const want = new Map(expected.msrs.map((m) => [m.index, m.value]));
  return actual.msrs
    .filter((m) => !TIME_COUNTER_MSRS.includes(m.index) && want.get(m.index) !== m.value)
    .map((m) => `0x${m.index.toString(16)}: restored 0x${want.get(m.index)?.toString(16)}, read back 0x${m.value.toString(16)}`);
}

/** The PIT's fields but count_load_time, which KVM_SET_PIT2 sets to the host's now. */
function pitWithoutLoadTimes(bytes: Uint8Array): Record<string, unknown> {
  const pit = new StructView(kvm_pit_state2, bytes.slice());
  for (const channel of [0, 1, 2] as const) pit.set(`channels[${channel}].count_load_time`, 0n);
  return Object.fromEntries(Object.keys(kvm_pit_state2.fields).map((name) => [name, pit.get(name as keyof typeof kvm_pit_state2.fields)]));
}

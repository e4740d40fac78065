/**
 * vCPU/VM state capture and restore without KVM: the MSR filtering and
 * batching, the struct <-> plain object conversion, and the order of the
 * ioctls, driven through recording fakes of the vCPU and VM handles. The
 * same code on real KVM is test/e2e/kvm-state.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { pack, unpack } from "msgpackr";
import {
  KVM_CLOCK_REALTIME,
  KVM_CLOCK_TSC_STABLE,
  KVM_IRQCHIP_CHIP_OFFSET,
  KVM_IRQCHIP_IOAPIC,
  KVM_VCPUEVENT_VALID_NMI_PENDING,
  KVM_VCPUEVENT_VALID_SHADOW,
  KVM_VCPUEVENT_VALID_SIPI_VECTOR,
  kvm_clock_data,
  kvm_debugregs,
  kvm_irqchip,
  kvm_pit_state2,
  kvm_regs,
  kvm_run,
  kvm_sregs,
  kvm_vcpu_events,
} from "../../src/kvm/abi.ts";
import type { CpuidEntry } from "../../src/kvm/cpuid.ts";
import {
  DEFERRED_MSRS,
  KvmStateError,
  MSR_IA32_TSC,
  MSR_IA32_TSC_DEADLINE,
  VCPU_STATE_VERSION,
  VM_STATE_VERSION,
  captureVcpuState,
  captureVmState,
  completePendingExit,
  msrRestoreBatches,
  readFields,
  readMsrsSkippingUnreadable,
  restoreVcpuState,
  restoreVmState,
  tscScalingNeeded,
  writeFields,
  xsaveSize,
  type VcpuState,
  type VcpuStateIoctls,
  type VmState,
  type VmStateIoctls,
} from "../../src/kvm/state.ts";
import { StructView } from "../../src/kvm/struct.ts";
import { MAX_MSRS_PER_IOCTL, RUN_INTERRUPTED, type MsrValue, type XcrValue } from "../../src/kvm/vcpu.ts";
import { SyscallError } from "../../src/ffi/errno.ts";

/** What KVM_GET_MSRS does: reads in order, stops at the first MSR it refuses. */
function fakeKvmGetMsrs(refused: ReadonlySet<number>, calls: number[][] = []) {
  return (indices: readonly number[]): MsrValue[] => {
    calls.push([...indices]);
    const out: MsrValue[] = [];
    for (const index of indices) {
      if (refused.has(index)) break;
      out.push({ index, value: BigInt(index) * 3n });
    }
    return out;
  };
}

describe("MSRs: keep what KVM_GET_MSRS reads for this vCPU", () => {
  test("all readable: one call, every MSR in order", () => {
    const calls: number[][] = [];
    const result = readMsrsSkippingUnreadable(fakeKvmGetMsrs(new Set(), calls), [0x10, 0x174, 0xc0000080]);
    expect(result.msrs).toEqual([
      { index: 0x10, value: 0x30n },
      { index: 0x174, value: 0x174n * 3n },
      { index: 0xc0000080, value: 0xc0000080n * 3n },
    ]);
    expect(result.unreadable).toEqual([]);
    expect(calls).toEqual([[0x10, 0x174, 0xc0000080]]);
  });

  test("a refused MSR is dropped and reading goes on after it (first, middle, adjacent, last)", () => {
    const indices = [1, 2, 3, 4, 5, 6, 7, 8];
    const calls: number[][] = [];
    const result = readMsrsSkippingUnreadable(fakeKvmGetMsrs(new Set([1, 4, 5, 8]), calls), indices);
    expect(result.msrs.map((m) => m.index)).toEqual([2, 3, 6, 7]);
    expect(result.unreadable).toEqual([1, 4, 5, 8]);
    expect(calls).toEqual([[1, 2, 3, 4, 5, 6, 7, 8], [2, 3, 4, 5, 6, 7, 8], [5, 6, 7, 8], [6, 7, 8]]);
  });

  test("nothing readable, and an empty list", () => {
    expect(readMsrsSkippingUnreadable(fakeKvmGetMsrs(new Set([1, 2])), [1, 2])).toEqual({ msrs: [], unreadable: [1, 2] });
    const calls: number[][] = [];
    expect(readMsrsSkippingUnreadable(fakeKvmGetMsrs(new Set(), calls), [])).toEqual({ msrs: [], unreadable: [] });
    expect(calls).toEqual([]);
  });

  test(`long lists go in batches of at most ${MAX_MSRS_PER_IOCTL} (KVM refuses 256), a refusal at a batch edge included`, () => {
    const indices = Array.from({ length: 600 }, (_, i) => 0x1000 + i);
    const refused = new Set([0x1000 + 254, 0x1000 + 255, 0x1000 + 599]);
    const calls: number[][] = [];
    const result = readMsrsSkippingUnreadable(fakeKvmGetMsrs(refused, calls), indices);
    expect(Math.max(...calls.map((c) => c.length))).toBeLessThanOrEqual(MAX_MSRS_PER_IOCTL);
    expect(result.unreadable).toEqual([...refused]);
    expect(result.msrs.map((m) => m.index)).toEqual(indices.filter((i) => !refused.has(i)));
  });

  test("a reader that answers more than asked, or other MSRs, is an error", () => {
    expect(() => readMsrsSkippingUnreadable(() => [{ index: 1, value: 0n }, { index: 2, value: 0n }], [1])).toThrow("returned 2 MSRs for 1");
    expect(() => readMsrsSkippingUnreadable(() => [{ index: 9, value: 0n }], [1])).toThrow("answered MSR 0x9 for 0x1");
  });

  test("restore batches keep the captured order, stay under the limit, and put TSC_DEADLINE after TSC", () => {
    const msrs: MsrValue[] = [
      { index: MSR_IA32_TSC_DEADLINE, value: 5n },
      ...Array.from({ length: 300 }, (_, i) => ({ index: 0x2000 + i, value: BigInt(i) })),
      { index: MSR_IA32_TSC, value: 7n },
    ];
    const batches = msrRestoreBatches(msrs);
    expect(batches.map((b) => b.length)).toEqual([255, 46, 1]);
    expect(batches.at(-1)).toEqual([{ index: MSR_IA32_TSC_DEADLINE, value: 5n }]);
    expect(batches.flat().slice(0, -1)).toEqual(msrs.slice(1));
    expect(DEFERRED_MSRS).toEqual([MSR_IA32_TSC_DEADLINE]);
    expect(msrRestoreBatches([])).toEqual([]);
  });
});

describe("TSC frequency", () => {
  test("scaling is needed only beyond 250 ppm", () => {
    expect(tscScalingNeeded(2_000_000, 2_000_000)).toBe(false);
    expect(tscScalingNeeded(2_000_000, 2_000_500)).toBe(false); // exactly 250 ppm
    expect(tscScalingNeeded(2_000_000, 1_999_500)).toBe(false);
    expect(tscScalingNeeded(2_000_000, 2_000_501)).toBe(true);
    expect(tscScalingNeeded(2_000_000, 3_000_000)).toBe(true);
  });
});

describe("structs as plain objects", () => {
  test("regs round-trip byte for byte; sregs field for field (C padding is not a field)", () => {
    const regs = new StructView(kvm_regs);
    regs.bytes.forEach((_, i) => (regs.bytes[i] = (i * 37 + 11) & 0xff));
    expect(writeFields(kvm_regs, readFields(regs), "regs").bytes).toEqual(regs.bytes);

    const sregs = new StructView(kvm_sregs);
    sregs.bytes.forEach((_, i) => (sregs.bytes[i] = (i * 37 + 11) & 0xff));
    const plain = readFields(sregs);
    expect(plain["cs.base"]).toBe(sregs.get("cs.base"));
    expect(plain["interrupt_bitmap"]).toEqual([0, 1, 2, 3].map((i) => sregs.get("interrupt_bitmap", i)));
    expect(readFields(writeFields(kvm_sregs, plain, "sregs"))).toEqual(plain);
  });

  test("omitted fields (padding, reserved) are left out and written back as zero", () => {
    const events = new StructView(kvm_vcpu_events).set("nmi.pending", 1).set("reserved", 9, 3);
    const plain = readFields(events, ["reserved", "nmi.pad"]);
    expect("reserved" in plain).toBe(false);
    const back = writeFields(kvm_vcpu_events, plain, "events", ["reserved", "nmi.pad"]);
    expect(back.get("nmi.pending")).toBe(1);
    expect(back.get("reserved", 3)).toBe(0);
  });

  test("malformed input names the field", () => {
    const regs = readFields(new StructView(kvm_regs));
    const { rip: _rip, ...noRip } = regs;
    expect(() => writeFields(kvm_regs, noRip, "state regs")).toThrow("state regs.rip is missing");
    expect(() => writeFields(kvm_regs, { ...regs, rip: 5 }, "state regs")).toThrow("state regs.rip must be a 64-bit unsigned bigint");
    expect(() => writeFields(kvm_regs, { ...regs, rip: -1n }, "state regs")).toThrow("rip must be a 64-bit");
    expect(() => writeFields(kvm_regs, { ...regs, rip: 1n << 64n }, "state regs")).toThrow("rip must be a 64-bit");
    expect(() => writeFields(kvm_regs, { ...regs, rpi: 0n }, "state regs")).toThrow('unknown field "rpi"');
    const sregs = readFields(new StructView(kvm_sregs));
    expect(() => writeFields(kvm_sregs, { ...sregs, "cs.selector": 0x10000 }, "sregs")).toThrow("sregs.cs.selector must be a u16 number");
    expect(() => writeFields(kvm_sregs, { ...sregs, "cs.type": 1.5 }, "sregs")).toThrow("cs.type must be a u8");
    expect(() => writeFields(kvm_sregs, { ...sregs, interrupt_bitmap: [0n] }, "sregs")).toThrow("interrupt_bitmap must be an array of 4");
    expect(() => writeFields(kvm_sregs, { ...sregs, interrupt_bitmap: [0n, 0n, 0n, 1] }, "sregs")).toThrow("interrupt_bitmap[3] must be");
  });
});

// ---------------------------------------------------------------- recording fakes

const CPUID: CpuidEntry[] = [{ function: 0, index: 0, flags: 0, eax: 0xd, ebx: 0x68747541, ecx: 0x444d4163, edx: 0x69746e65 }];
const MSR_LIST = [MSR_IA32_TSC, 0x174, MSR_IA32_TSC_DEADLINE, 0x8b, 0xc0000080];

/** Holds state the way KVM would and records every ioctl, so order and data can be checked. */
class FakeVcpu implements VcpuStateIoctls {
  readonly handle = { id: 0, fd: -1, runAddress: 0, runSize: 0 };
  calls: string[] = [];
  cpuid: CpuidEntry[] = CPUID;
  mpState = 0;
  regs = new StructView(kvm_regs).set("rip", 0x1234n).set("rcx", 0x40000n).set("rflags", 2n);
  sregs = new StructView(kvm_sregs).set("cs.selector", 0xf000).set("cs.base", 0xf0000n).set("cr0", 0x60000010n).set("interrupt_bitmap", 1n << 33n, 0);
  xsave = Uint8Array.from({ length: 4096 }, (_, i) => i & 0xff);
  xcrs: XcrValue[] = [{ xcr: 0, value: 7n }];
  debugRegs = new StructView(kvm_debugregs).set("dr6", 0xffff0ff0n).set("dr7", 0x400n).set("db", 0x1000n, 2);
  lapic = Uint8Array.from({ length: 1024 }, (_, i) => (i * 7) & 0xff);
  msrs = new Map<number, bigint>([
    [MSR_IA32_TSC, 1_000_000n],
    [0x174, 0x10n],
    [MSR_IA32_TSC_DEADLINE, 1_000_500n],
    [0xc0000080, 0x500n],
  ]); // 0x8b unreadable
  events = new StructView(kvm_vcpu_events).set("flags", KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW).set("nmi.pending", 1).set("sipi_vector", 0x9a);
  tscKhz: number | null = 2_000_000;
  tscSettable = true;
  msrBatches: MsrValue[][] = [];
  xsaveSizes: number[] = [];

  getCpuid() { this.calls.push("getCpuid"); return this.cpuid.map((e) => ({ ...e })); }
  setCpuid(entries: readonly CpuidEntry[]) { this.calls.push("setCpuid"); this.cpuid = entries.map((e) => ({ ...e })); }
  getMpState() { this.calls.push("getMpState"); return this.mpState; }
  setMpState(state: number) { this.calls.push("setMpState"); this.mpState = state; }
  getRegs() { this.calls.push("getRegs"); return new StructView(kvm_regs, this.regs.bytes.slice()); }
  setRegs(regs: StructView<typeof kvm_regs.fields>) { this.calls.push("setRegs"); this.regs = regs; }
  getSregs() { this.calls.push("getSregs"); return new StructView(kvm_sregs, this.sregs.bytes.slice()); }
  setSregs(sregs: StructView<typeof kvm_sregs.fields>) { this.calls.push("setSregs"); this.sregs = sregs; }
  getXsave(size = 4096) { this.calls.push("getXsave"); this.xsaveSizes.push(size); const out = new Uint8Array(size); out.set(this.xsave.subarray(0, size)); return out; }
  setXsave(region: Uint8Array) { this.calls.push("setXsave"); this.xsave = region.slice(); }
  getXcrs() { this.calls.push("getXcrs"); return this.xcrs.map((x) => ({ ...x })); }
  setXcrs(xcrs: readonly XcrValue[]) { this.calls.push("setXcrs"); this.xcrs = [...xcrs]; }
  getDebugRegs() { this.calls.push("getDebugRegs"); return new StructView(kvm_debugregs, this.debugRegs.bytes.slice()); }
  setDebugRegs(regs: StructView<typeof kvm_debugregs.fields>) { this.calls.push("setDebugRegs"); this.debugRegs = regs; }
  getLapic() { this.calls.push("getLapic"); return this.lapic.slice(); }
  setLapic(lapic: Uint8Array) { this.calls.push("setLapic"); this.lapic = lapic.slice(); }
  getMsrs(indices: readonly number[]) {
    this.calls.push("getMsrs");
    const out: MsrValue[] = [];
    for (const index of indices) {
      const value = this.msrs.get(index);
      if (value === undefined) break;
      out.push({ index, value });
    }
    return out;
  }
  setMsrs(msrs: readonly MsrValue[]) { this.calls.push("setMsrs"); this.msrBatches.push([...msrs]); for (const m of msrs) this.msrs.set(m.index, m.value); }
  getVcpuEvents() { this.calls.push("getVcpuEvents"); return new StructView(kvm_vcpu_events, this.events.bytes.slice()); }
  setVcpuEvents(events: StructView<typeof kvm_vcpu_events.fields>) { this.calls.push("setVcpuEvents"); this.events = events; }
  getTscKhz() { this.calls.push("getTscKhz"); if (this.tscKhz === null) throw new SyscallError("ioctl", 5, "KVM_GET_TSC_KHZ"); return this.tscKhz; }
  setTscKhz(khz: number) { this.calls.push("setTscKhz"); if (!this.tscSettable) throw new SyscallError("ioctl", 22, "KVM_SET_TSC_KHZ"); this.tscKhz = khz; }
  kvmclockCtrl() { this.calls.push("kvmclockCtrl"); return false; }
}

function capture(): { source: FakeVcpu; state: VcpuState } {
  const source = new FakeVcpu();
  return { source, state: captureVcpuState(source, MSR_LIST) };
}

describe("vCPU state", () => {
  test("capture order is Firecracker's: MP state first, vCPU events last", () => {
    const { source } = capture();
    expect(source.calls).toEqual([
      "getMpState",
      "getRegs",
      "getSregs",
      "getXsave",
      "getXcrs",
      "getDebugRegs",
      "getLapic",
      "getTscKhz",
      "getCpuid",
      "getMsrs",
      "getMsrs",
      "getVcpuEvents",
    ]);
  });

  test("captures every part as plain data, dropping the MSR the vCPU cannot read", () => {
    const { source, state } = capture();
    expect(state.version).toBe(VCPU_STATE_VERSION);
    expect(state.vcpuId).toBe(0);
    expect(state.regs.rip).toBe(0x1234n);
    expect(state.regs.rcx).toBe(0x40000n);
    expect(state.sregs["cs.base"]).toBe(0xf0000n);
    expect(state.sregs.interrupt_bitmap).toEqual([1n << 33n, 0n, 0n, 0n]);
    expect(state.debugRegs).toEqual({ db: [0n, 0n, 0x1000n, 0n], dr6: 0xffff0ff0n, dr7: 0x400n, flags: 0n });
    expect(state.events["nmi.pending"]).toBe(1);
    expect("reserved" in state.events).toBe(false);
    expect(state.xsave).toEqual(source.xsave);
    expect(state.lapic).toEqual(source.lapic);
    expect(state.xcrs).toEqual([{ xcr: 0, value: 7n }]);
    expect(state.cpuid).toEqual(CPUID);
    expect(state.msrs.map((m) => m.index)).toEqual([MSR_IA32_TSC, 0x174, MSR_IA32_TSC_DEADLINE, 0xc0000080]);
    expect(state.tscKhz).toBe(2_000_000);
  });

  test("an unknown TSC frequency is recorded as null", () => {
    const source = new FakeVcpu();
    source.tscKhz = null;
    expect(captureVcpuState(source, MSR_LIST).tscKhz).toBeNull();
  });

  test("the state survives structuredClone and msgpackr unchanged", () => {
    const { state } = capture();
    expect(structuredClone(state)).toEqual(state);
    const decoded = unpack(pack(state)) as VcpuState;
    expect(decoded).toEqual(state);
    expect(typeof decoded.regs.rip).toBe("bigint");
    expect(typeof decoded.sregs["cs.selector"]).toBe("number");
  });

  test("restore order is Firecracker's: CPUID, MP state, regs, sregs, xsave, xcrs, debugregs, LAPIC, MSRs (deadline last), events, kvmclock", () => {
    const { state } = capture();
    const target = new FakeVcpu();
    target.calls = [];
    restoreVcpuState(target, state);
    expect(target.calls).toEqual([
      "getTscKhz", // same frequency: no KVM_SET_TSC_KHZ
      "setCpuid",
      "setMpState",
      "setRegs",
      "setSregs",
      "setXsave",
      "setXcrs",
      "setDebugRegs",
      "setLapic",
      "setMsrs",
      "setMsrs",
      "setVcpuEvents",
      "kvmclockCtrl",
    ]);
    expect(target.msrBatches.map((b) => b.map((m) => m.index))).toEqual([[MSR_IA32_TSC, 0x174, 0xc0000080], [MSR_IA32_TSC_DEADLINE]]);
  });

  test("a restored vCPU (from a msgpackr round trip) captures to the same state; the SIPI vector is restored too", () => {
    const { source, state } = capture();
    const target = new FakeVcpu();
    target.regs = new StructView(kvm_regs);
    target.sregs = new StructView(kvm_sregs);
    target.xsave = new Uint8Array(4096);
    target.lapic = new Uint8Array(1024);
    target.msrs = new Map();
    target.events = new StructView(kvm_vcpu_events);
    restoreVcpuState(target, unpack(pack(state)) as VcpuState);
    expect(target.regs.bytes).toEqual(source.regs.bytes);
    expect(target.sregs.bytes).toEqual(source.sregs.bytes);
    expect(target.debugRegs.bytes).toEqual(source.debugRegs.bytes);
    expect(target.events.get("flags")).toBe(KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SIPI_VECTOR);
    expect(target.events.get("sipi_vector")).toBe(0x9a);
    const again = captureVcpuState(target, MSR_LIST);
    expect({ ...again, events: { ...again.events, flags: state.events.flags } }).toEqual(state);
  });

  test("a larger XSAVE area (KVM_CAP_XSAVE2) is read at that size, and a 4096-byte one is zero-padded to it on restore", () => {
    const source = new FakeVcpu();
    const state = captureVcpuState(source, MSR_LIST, { xsaveSize: 8192 });
    expect(source.xsaveSizes).toEqual([8192]);
    expect(state.xsave.byteLength).toBe(8192);
    const small = captureVcpuState(new FakeVcpu(), MSR_LIST);
    const target = new FakeVcpu();
    restoreVcpuState(target, small, { xsaveSize: 8192 });
    expect(target.xsave.byteLength).toBe(8192);
    expect(target.xsave.subarray(0, 4096)).toEqual(small.xsave as Uint8Array<ArrayBuffer>);
    expect(target.xsave.subarray(4096).every((b) => b === 0)).toBe(true);
    expect(xsaveSize({ checkExtension: () => 0 })).toBe(4096);
    expect(xsaveSize({ checkExtension: () => 11008 })).toBe(11008);
  });

  test("TSC: scaled only when the host differs beyond tolerance; an unscalable host is a clear error", () => {
    const { state } = capture();
    const near = new FakeVcpu();
    near.tscKhz = 2_000_100;
    restoreVcpuState(near, state);
    expect(near.calls).not.toContain("setTscKhz");

    const far = new FakeVcpu();
    far.tscKhz = 3_000_000;
    restoreVcpuState(far, state);
    expect(far.calls.slice(0, 3)).toEqual(["getTscKhz", "setTscKhz", "setCpuid"]);
    expect(far.tscKhz).toBe(2_000_000);

    const fixed = new FakeVcpu();
    fixed.tscKhz = 3_000_000;
    fixed.tscSettable = false;
    expect(() => restoreVcpuState(fixed, state)).toThrow("the guest's TSC ran at 2000000 kHz and this host's runs at 3000000 kHz; KVM cannot scale it");
    expect(fixed.calls).not.toContain("setCpuid");

    const unknown = new FakeVcpu();
    restoreVcpuState(unknown, { ...state, tscKhz: null });
    expect(unknown.calls).not.toContain("getTscKhz");
  });

  test("a wrong version, vCPU id or malformed field fails before any ioctl", () => {
    const { state } = capture();
    const cases: [VcpuState, string][] = [
      [{ ...state, version: VCPU_STATE_VERSION + 1 }, `vCPU state version ${VCPU_STATE_VERSION + 1} is not the version`],
      [{ ...state, vcpuId: 3 }, "vCPU state of vCPU 3 cannot be restored into vCPU 0"],
      [{ ...state, regs: { ...state.regs, rip: 1 as unknown as bigint } }, "vCPU state regs.rip must be a 64-bit"],
      [{ ...state, lapic: new Uint8Array(10) }, "vCPU state lapic must be 1024 bytes"],
      [{ ...state, xsave: new Uint8Array(512) }, "vCPU state xsave must be at least 4096 bytes"],
      [{ ...state, msrs: [{ index: 0x10, value: 5 as unknown as bigint }] }, "vCPU state msrs[0].value must be a 64-bit unsigned bigint"],
      [{ ...state, msrs: [{ index: -1, value: 5n }] }, "vCPU state msrs[0].index must be a u32"],
      [{ ...state, xcrs: [{ xcr: 0, value: 1n, extra: 1 } as XcrValue] }, 'vCPU state xcrs[0] has an unknown field "extra"'],
      [{ ...state, cpuid: [{ ...CPUID[0]!, eax: undefined as unknown as number }] }, "vCPU state cpuid[0].eax must be a u32"],
      [{ ...state, cpuid: null as unknown as CpuidEntry[] }, "vCPU state cpuid must be an array"],
      [{ ...state, mpState: 1.5 }, "vCPU state mpState must be a u32"],
    ];
    for (const [bad, message] of cases) {
      const target = new FakeVcpu();
      target.calls = [];
      expect(() => restoreVcpuState(target, bad)).toThrow(message);
      expect(() => restoreVcpuState(target, bad)).toThrow(KvmStateError);
      expect(target.calls).toEqual([]);
    }
  });
});

describe("completePendingExit", () => {
  function fakeRunner(result: number) {
    const run = new StructView(kvm_run);
    const seen: number[] = [];
    return {
      run,
      seen,
      handle: { id: 2, fd: -1, runAddress: 0, runSize: 0 },
      enter: () => {
        seen.push(run.get("immediate_exit"));
        if (result === RUN_INTERRUPTED) run.set("immediate_exit", 0);
        return result;
      },
    };
  }

  test("enters KVM_RUN once with immediate_exit set", () => {
    const vcpu = fakeRunner(RUN_INTERRUPTED);
    completePendingExit(vcpu as never);
    expect(vcpu.seen).toEqual([1]);
    expect(vcpu.run.get("immediate_exit")).toBe(0);
  });

  test("a further exit is an error naming it, and immediate_exit is cleared", () => {
    const vcpu = fakeRunner(2);
    expect(() => completePendingExit(vcpu as never)).toThrow("vCPU 2 has a new exit (KVM_EXIT_IO) to handle");
    expect(vcpu.run.get("immediate_exit")).toBe(0);
  });
});

class FakeVm implements VmStateIoctls {
  calls: string[] = [];
  chips = [0, 1, 2].map((id) => {
    const chip = new StructView(kvm_irqchip).set("chip_id", id);
    chip.bytes.subarray(KVM_IRQCHIP_CHIP_OFFSET).forEach((_, i, a) => (a[i] = (id * 50 + i) & 0xff));
    return chip;
  });
  pit = new StructView(kvm_pit_state2).set("channels[0].count", 0x10000).set("channels[0].mode", 2).set("flags", 1);
  clock = new StructView(kvm_clock_data).set("clock", 5_000_000_000n).set("flags", KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME).set("realtime", 1_700_000_000_000_000_000n);
  clockSet?: StructView<typeof kvm_clock_data.fields>;

  getIrqchip(id: number) { this.calls.push(`getIrqchip ${id}`); return new StructView(kvm_irqchip, this.chips[id]!.bytes.slice()); }
  setIrqchip(chip: StructView<typeof kvm_irqchip.fields>) { const id = chip.get("chip_id"); this.calls.push(`setIrqchip ${id}`); this.chips[id] = chip; }
  getPit2() { this.calls.push("getPit2"); return new StructView(kvm_pit_state2, this.pit.bytes.slice()); }
  setPit2(pit: StructView<typeof kvm_pit_state2.fields>) { this.calls.push("setPit2"); this.pit = pit; }
  getClock() { this.calls.push("getClock"); return new StructView(kvm_clock_data, this.clock.bytes.slice()); }
  setClock(clock: StructView<typeof kvm_clock_data.fields>) { this.calls.push("setClock"); this.clockSet = clock; }
}

describe("VM state", () => {
  test("captures PIT, clock and the three irqchips (in Firecracker's order) as plain data", () => {
    const vm = new FakeVm();
    const state = captureVmState(vm);
    expect(vm.calls).toEqual(["getPit2", "getClock", "getIrqchip 0", "getIrqchip 1", "getIrqchip 2"]);
    expect(state.version).toBe(VM_STATE_VERSION);
    expect(state.pit).toEqual(vm.pit.bytes);
    expect(state.irqchip.ioapic).toEqual(vm.chips[KVM_IRQCHIP_IOAPIC]!.bytes.subarray(KVM_IRQCHIP_CHIP_OFFSET));
    expect(state.irqchip.picMaster.byteLength).toBe(512);
    expect(state.clock).toEqual({ clock: 5_000_000_000n, flags: KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME, realtime: 1_700_000_000_000_000_000n, host_tsc: 0n });
    expect(unpack(pack(state))).toEqual(state);
    expect(structuredClone(state)).toEqual(state);
  });

  test("restores PIT, clock, then irqchips; the saved clock goes back with flags 0 by default", () => {
    const state = captureVmState(new FakeVm());
    const target = new FakeVm();
    target.chips = [0, 1, 2].map(() => new StructView(kvm_irqchip));
    target.pit = new StructView(kvm_pit_state2);
    restoreVmState(target, unpack(pack(state)) as VmState);
    expect(target.calls).toEqual(["setPit2", "setClock", "setIrqchip 0", "setIrqchip 1", "setIrqchip 2"]);
    expect(target.clockSet!.get("clock")).toBe(5_000_000_000n);
    expect(target.clockSet!.get("flags")).toBe(0);
    expect(captureVmState(target).irqchip).toEqual(state.irqchip);
    expect(target.pit.bytes).toEqual(state.pit);
  });

  test("the realtime clock option passes KVM_CLOCK_REALTIME, and needs a captured realtime", () => {
    const state = captureVmState(new FakeVm());
    const target = new FakeVm();
    restoreVmState(target, state, { clock: "realtime" });
    expect(target.clockSet!.get("flags")).toBe(KVM_CLOCK_REALTIME);
    expect(target.clockSet!.get("realtime")).toBe(1_700_000_000_000_000_000n);
    const noRealtime = { ...state, clock: { ...state.clock, flags: 0 } };
    const untouched = new FakeVm();
    expect(() => restoreVmState(untouched, noRealtime, { clock: "realtime" })).toThrow("no host realtime");
    expect(untouched.calls).toEqual([]);
  });

  test("a wrong version or a short blob fails before any ioctl", () => {
    const state = captureVmState(new FakeVm());
    for (const [bad, message] of [
      [{ ...state, version: 99 }, "VM state version 99"],
      [{ ...state, pit: new Uint8Array(8) }, "VM state pit must be 112 bytes"],
      [{ ...state, irqchip: { ...state.irqchip, ioapic: new Uint8Array(216) } }, "VM state irqchip.ioapic must be 512 bytes"],
    ] as [VmState, string][]) {
      const target = new FakeVm();
      expect(() => restoreVmState(target, bad)).toThrow(message);
      expect(target.calls).toEqual([]);
    }
  });
});

/**
 * Everything KVM holds for a vCPU and for a VM, captured as plain data
 * (numbers, bigints, Uint8Arrays, arrays and objects of them) so a snapshot
 * can structured-clone it or encode it with msgpackr, and put back into a new
 * VM on the same host.
 *
 * Restoring a machine, in order (Firecracker's build_microvm_from_snapshot,
 * src/vmm/src/builder.rs):
 *   1. guest memory and memory slots;
 *   2. KVM_CREATE_IRQCHIP and KVM_CREATE_PIT2, then the vCPUs (the in-kernel
 *      LAPICs exist only when the irqchip came first);
 *   3. restoreVcpuState for every vCPU;
 *   4. restoreVmState: the IOAPIC and PICs may deliver interrupts as they are
 *      loaded, so the LAPICs that receive them must already be restored;
 *   5. start the vCPUs.
 *
 * Capturing needs every vCPU out of KVM_RUN; a vCPU that left KVM_RUN on an
 * I/O or MMIO exit must first re-enter it once (completePendingExit) or the
 * instruction stays half done in KVM, where no ioctl can read it.
 */
import { SyscallError } from "../ffi/errno.ts";
import {
  KVM_CLOCK_REALTIME,
  KVM_IRQCHIP_CHIP_OFFSET,
  KVM_IRQCHIP_CHIP_SIZE,
  KVM_IRQCHIP_IOAPIC,
  KVM_IRQCHIP_PIC_MASTER,
  KVM_IRQCHIP_PIC_SLAVE,
  KVM_VCPUEVENT_VALID_SIPI_VECTOR,
  exitReasonName,
  kvm_clock_data,
  kvm_debugregs,
  kvm_irqchip,
  kvm_lapic_state,
  kvm_pit_state2,
  kvm_regs,
  kvm_sregs,
  kvm_vcpu_events,
  kvm_xsave,
} from "./abi.ts";
import type { CpuidEntry } from "./cpuid.ts";
import { KvmError } from "./errors.ts";
import { StructView, type StructLayout } from "./struct.ts";
import type { Kvm } from "./system.ts";
import { MAX_MSRS_PER_IOCTL, RUN_INTERRUPTED, type MsrValue, type Vcpu, type XcrValue } from "./vcpu.ts";
import type { Vm } from "./vm.ts";

/** Bumped whenever VcpuState changes shape or meaning; restore refuses any other version. */
export const VCPU_STATE_VERSION = 1;
/** Bumped whenever VmState changes shape or meaning; restore refuses any other version. */
export const VM_STATE_VERSION = 1;

// ---------------------------------------------------------------- structs as plain objects

type FieldTable = StructLayout["fields"];
type ValueOf<S> = S extends { readonly type: "u64" } ? bigint : number;

/**
 * A struct's fields as a plain object keyed by C member designator ("cs.base",
 * "exception.nr"): `A` names the array fields (values become arrays), `O` the
 * fields left out (padding and reserved space, zero when written back).
 */
export type StructFields<F extends FieldTable, A extends keyof F = never, O extends keyof F = never> = {
  readonly [K in Exclude<keyof F, A | O>]: ValueOf<F[K]>;
} & { readonly [K in A]: readonly ValueOf<F[K]>[] };

export type RegsState = StructFields<typeof kvm_regs.fields>;
export type SregsState = StructFields<typeof kvm_sregs.fields, "interrupt_bitmap">;
export type DebugRegsState = StructFields<typeof kvm_debugregs.fields, "db", "reserved">;
export type VcpuEventsState = StructFields<typeof kvm_vcpu_events.fields, never, "reserved" | "nmi.pad">;
export type ClockState = StructFields<typeof kvm_clock_data.fields, never, "pad0" | "pad">;

const SREGS_ARRAYS = ["interrupt_bitmap"] as const;
const DEBUGREGS_OMIT = ["reserved"] as const;
const EVENTS_OMIT = ["reserved", "nmi.pad"] as const;
const CLOCK_OMIT = ["pad0", "pad"] as const;

/** Reads every field of `view` except `omit` into a plain object (array fields become arrays). */
export function readFields(view: StructView<FieldTable>, omit: readonly string[] = []): Record<string, unknown> {
  const out: Record<string, number | bigint | (number | bigint)[]> = {};
  for (const [name, spec] of Object.entries(view.layout.fields)) {
    if (omit.includes(name)) continue;
    out[name] = spec.count === undefined ? view.get(name) : Array.from({ length: spec.count }, (_, i) => view.get(name, i));
  }
  return out;
}

const RANGE: Record<string, number> = { u8: 0xff, u16: 0xffff, u32: 0xffff_ffff };

/**
 * Builds `layout` from a plain object as readFields makes it. State may come
 * from a file, so every field must be present with the right type and range,
 * and nothing else may be there: `what` names the object in the error.
 */
export function writeFields<F extends FieldTable>(layout: StructLayout<F>, values: object, what: string, omit: readonly string[] = []): StructView<F> {
  const view = new StructView(layout);
  const record = values as Record<string, unknown>;
  const fields = layout.fields as FieldTable;
  for (const key of Object.keys(record)) {
    if (!(key in fields) || omit.includes(key)) throw new KvmStateError(`${what} has an unknown field "${key}"`);
  }
  for (const [name, spec] of Object.entries(fields)) {
    if (omit.includes(name)) continue;
    const value = record[name];
    const check = (element: unknown, label: string): number | bigint => {
      if (spec.type === "u64") {
        if (typeof element !== "bigint" || element < 0n || element > 0xffff_ffff_ffff_ffffn) throw new KvmStateError(`${what}.${label} must be a 64-bit unsigned bigint`);
        return element;
      }
      const ok =
        typeof element === "number" &&
        Number.isInteger(element) &&
        (spec.type === "i32" ? element >= -0x8000_0000 && element <= 0x7fff_ffff : element >= 0 && element <= RANGE[spec.type]!);
      if (!ok) throw new KvmStateError(`${what}.${label} must be a ${spec.type} number`);
      return element as number;
    };
    if (spec.count === undefined) {
      if (value === undefined) throw new KvmStateError(`${what}.${name} is missing`);
      view.set(name as keyof F & string, check(value, name) as never);
    } else {
      if (!Array.isArray(value) || value.length !== spec.count) throw new KvmStateError(`${what}.${name} must be an array of ${spec.count}`);
      value.forEach((element, i) => view.set(name as keyof F & string, check(element, `${name}[${i}]`) as never, i));
    }
  }
  return view;
}

/** A state object that cannot be restored as it stands (wrong version, missing or malformed field). */
export class KvmStateError extends Error {
  override name = "KvmStateError";
}

// ---------------------------------------------------------------- MSRs

export const MSR_IA32_TSC = 0x10;
export const MSR_IA32_TSC_DEADLINE = 0x6e0;

/**
 * MSRs restored in a last KVM_SET_MSRS of their own: KVM arms the LAPIC's
 * TSC-deadline timer from MSR_IA32_TSC_DEADLINE by comparing it with the
 * guest TSC, so MSR_IA32_TSC must be in place first or the timer interrupt is
 * lost (Firecracker's DEFERRED_MSRS).
 */
export const DEFERRED_MSRS: readonly number[] = [MSR_IA32_TSC_DEADLINE];

/** KVM_GET_MSRS for one batch: the leading run of `indices` KVM read (see Vcpu.getMsrs). */
export type MsrReader = (indices: readonly number[]) => MsrValue[];

export interface MsrCapture {
  readonly msrs: MsrValue[];
  /** MSRs in the list KVM would not read for this vCPU (e.g. PMU or MPX MSRs its CPUID does not offer). */
  readonly unreadable: number[];
}

/**
 * Reads `indices` in batches KVM accepts. KVM_GET_MSRS stops at the first MSR
 * it refuses; that one is dropped and reading goes on after it, so one
 * missing feature does not lose the MSRs behind it (Cloud Hypervisor's
 * approach; Firecracker fails instead and keeps an allow-list).
 */
export function readMsrsSkippingUnreadable(read: MsrReader, indices: readonly number[]): MsrCapture {
  const msrs: MsrValue[] = [];
  const unreadable: number[] = [];
  let next = 0;
  while (next < indices.length) {
    const batch = indices.slice(next, next + MAX_MSRS_PER_IOCTL);
    const got = read(batch);
    if (got.length > batch.length) throw new Error(`KVM_GET_MSRS returned ${got.length} MSRs for ${batch.length} asked`);
    got.forEach((msr, i) => {
      if (msr.index !== batch[i]) throw new Error(`KVM_GET_MSRS answered MSR 0x${msr.index.toString(16)} for 0x${batch[i]!.toString(16)}`);
    });
    msrs.push(...got);
    next += got.length;
    if (got.length < batch.length) unreadable.push(indices[next++]!);
  }
  return { msrs, unreadable };
}

/** The KVM_SET_MSRS calls that restore `msrs`: in their captured order, batched, DEFERRED_MSRS last. */
export function msrRestoreBatches(msrs: readonly MsrValue[]): MsrValue[][] {
  const early = msrs.filter((msr) => !DEFERRED_MSRS.includes(msr.index));
  const late = msrs.filter((msr) => DEFERRED_MSRS.includes(msr.index));
  const batches: MsrValue[][] = [];
  for (let i = 0; i < early.length; i += MAX_MSRS_PER_IOCTL) batches.push(early.slice(i, i + MAX_MSRS_PER_IOCTL));
  if (late.length > 0) batches.push(late);
  return batches;
}

/** The MSRs a snapshot saves: KVM_GET_MSR_INDEX_LIST (captureVcpuState drops those a vCPU cannot read). */
export function saveableMsrIndices(kvm: Pick<Kvm, "msrIndexList">): number[] {
  return kvm.msrIndexList();
}

// ---------------------------------------------------------------- TSC frequency

/** TSC calibration differs slightly between boots of one host; QEMU and Firecracker accept 250 ppm. */
export const TSC_KHZ_TOLERANCE_PPM = 250;

/** Whether a guest whose TSC ran at `savedKhz` needs KVM_SET_TSC_KHZ on a vCPU that runs at `currentKhz`. */
export function tscScalingNeeded(savedKhz: number, currentKhz: number): boolean {
  return Math.abs(currentKhz - savedKhz) * 1_000_000 > savedKhz * TSC_KHZ_TOLERANCE_PPM;
}

// ---------------------------------------------------------------- vCPU state

export interface VcpuState {
  readonly version: number;
  /** The vCPU (and initial APIC) id it was captured from; it restores only into the same id. */
  readonly vcpuId: number;
  /** KVM_GET_CPUID2: the table the vCPU was given. */
  readonly cpuid: readonly CpuidEntry[];
  readonly mpState: number;
  readonly regs: RegsState;
  readonly sregs: SregsState;
  /** x87/SSE/AVX/... state: 4096 bytes, or KVM_CAP_XSAVE2's size when larger. */
  readonly xsave: Uint8Array;
  readonly xcrs: readonly XcrValue[];
  readonly debugRegs: DebugRegsState;
  /** The LAPIC's 1 KiB register page. */
  readonly lapic: Uint8Array;
  /** The readable MSRs of the saved list, in KVM's order. */
  readonly msrs: readonly MsrValue[];
  readonly events: VcpuEventsState;
  /** The guest TSC frequency (kHz); null when KVM did not know it. */
  readonly tscKhz: number | null;
}

/** What capture and restore call on a vCPU; a Vcpu has all of it (tests pass recording fakes). */
export type VcpuStateIoctls = Pick<
  Vcpu,
  | "handle"
  | "getCpuid"
  | "setCpuid"
  | "getMpState"
  | "setMpState"
  | "getRegs"
  | "setRegs"
  | "getSregs"
  | "setSregs"
  | "getXsave"
  | "setXsave"
  | "getXcrs"
  | "setXcrs"
  | "getDebugRegs"
  | "setDebugRegs"
  | "getLapic"
  | "setLapic"
  | "getMsrs"
  | "setMsrs"
  | "getVcpuEvents"
  | "setVcpuEvents"
  | "getTscKhz"
  | "setTscKhz"
  | "kvmclockCtrl"
>;

export interface XsaveOptions {
  /** XSAVE area size for this VM: xsaveSize(vm). Defaults to the legacy 4096 bytes. */
  readonly xsaveSize?: number;
}

/** Bytes of a vCPU's XSAVE area in `vm`: KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) (0 before Linux 5.17), at least 4096. */
export function xsaveSize(vm: Pick<Vm, "checkExtension">): number {
  return Math.max(vm.checkExtension("KVM_CAP_XSAVE2"), kvm_xsave.size);
}

/**
 * Captures a stopped vCPU, in Firecracker's save order (save_state in
 * src/vmm/src/arch/x86_64/vcpu.rs): KVM_GET_MP_STATE first, because it makes
 * the LAPIC accept pending INIT/SIPI events and so changes other state;
 * KVM_GET_VCPU_EVENTS last, because the other GETs may change what it reports.
 */
export function captureVcpuState(vcpu: VcpuStateIoctls, msrIndices: readonly number[], options: XsaveOptions = {}): VcpuState {
  const mpState = vcpu.getMpState();
  const regs = readFields(vcpu.getRegs()) as RegsState;
  const sregs = readFields(vcpu.getSregs()) as SregsState;
  const xsave = vcpu.getXsave(options.xsaveSize ?? kvm_xsave.size);
  const xcrs = vcpu.getXcrs();
  const debugRegs = readFields(vcpu.getDebugRegs(), DEBUGREGS_OMIT) as DebugRegsState;
  const lapic = vcpu.getLapic();
  const tscKhz = readTscKhz(vcpu);
  const cpuid = vcpu.getCpuid();
  const { msrs } = readMsrsSkippingUnreadable((indices) => vcpu.getMsrs(indices), msrIndices);
  const events = readFields(vcpu.getVcpuEvents(), EVENTS_OMIT) as VcpuEventsState;
  return { version: VCPU_STATE_VERSION, vcpuId: vcpu.handle.id, cpuid, mpState, regs, sregs, xsave, xcrs, debugRegs, lapic, msrs, events, tscKhz };
}

function readTscKhz(vcpu: Pick<Vcpu, "getTscKhz">): number | null {
  try {
    return vcpu.getTscKhz();
  } catch (error) {
    if (error instanceof SyscallError) return null; // EIO: KVM does not know the frequency; ENOTTY: too old
    throw error;
  }
}

/**
 * Loads `state` into a new vCPU that has not run yet (KVM refuses a CPUID
 * change after the first KVM_RUN). Everything is checked before the first
 * ioctl. The order is Firecracker's restore_state
 * (src/vmm/src/arch/x86_64/vcpu.rs), with its reasons:
 *   - TSC frequency first (Firecracker does it just before restore_state):
 *     the TSC MSRs and the LAPIC timer count in guest TSC ticks;
 *   - CPUID next: what KVM accepts in every later SET depends on it (XCR0
 *     bits, MSRs of CPUID features), as does kvm_vcpu_is_bsp for MP state;
 *   - MP state, regs, sregs: SET_REGS clears pending exceptions, so it must
 *     precede SET_VCPU_EVENTS; SET_SREGS restores the APIC base MSR, so it
 *     must precede SET_LAPIC;
 *   - XSAVE, XCRs, debug registers, then the LAPIC;
 *   - MSRs after the LAPIC: MSR_IA32_TSC_DEADLINE is accepted only by a
 *     configured LAPIC, and goes in its own batch after MSR_IA32_TSC;
 *   - vCPU events last: they restore the pending exception/interrupt/NMI that
 *     the SETs above may have cleared;
 *   - then KVM_KVMCLOCK_CTRL, so a kvmclock guest does not report the pause as
 *     a soft lockup (ignored when the guest has no kvmclock).
 */
export function restoreVcpuState(vcpu: VcpuStateIoctls, state: VcpuState, options: XsaveOptions = {}): void {
  checkVersion("vCPU", state.version, VCPU_STATE_VERSION);
  if (state.vcpuId !== vcpu.handle.id) {
    throw new KvmStateError(`vCPU state of vCPU ${state.vcpuId} cannot be restored into vCPU ${vcpu.handle.id} (its APIC id would differ)`);
  }
  const regs = writeFields(kvm_regs, state.regs, "vCPU state regs");
  const sregs = writeFields(kvm_sregs, state.sregs, "vCPU state sregs");
  const debugRegs = writeFields(kvm_debugregs, state.debugRegs, "vCPU state debugRegs", DEBUGREGS_OMIT);
  const events = writeFields(kvm_vcpu_events, state.events, "vCPU state events", EVENTS_OMIT);
  // KVM_GET_VCPU_EVENTS reports the SIPI vector without flagging it; ask KVM to restore it too (as QEMU does),
  // or an AP waiting for its startup IPI would lose the vector.
  events.set("flags", events.get("flags") | KVM_VCPUEVENT_VALID_SIPI_VECTOR);
  const xsave = paddedXsave(state.xsave, options.xsaveSize ?? kvm_xsave.size);
  checkBlob("vCPU state lapic", state.lapic, kvm_lapic_state.size);
  checkU32("vCPU state mpState", state.mpState);
  checkList("vCPU state cpuid", state.cpuid, { function: "u32", index: "u32", flags: "u32", eax: "u32", ebx: "u32", ecx: "u32", edx: "u32" });
  checkList("vCPU state xcrs", state.xcrs, { xcr: "u32", value: "u64" });
  checkList("vCPU state msrs", state.msrs, { index: "u32", value: "u64" });
  if (state.tscKhz !== null) checkU32("vCPU state tscKhz", state.tscKhz);
  const batches = msrRestoreBatches(state.msrs);

  if (state.tscKhz !== null) restoreTscKhz(vcpu, state.tscKhz);
  vcpu.setCpuid(state.cpuid);
  vcpu.setMpState(state.mpState);
  vcpu.setRegs(regs);
  vcpu.setSregs(sregs);
  vcpu.setXsave(xsave);
  vcpu.setXcrs(state.xcrs);
  vcpu.setDebugRegs(debugRegs);
  vcpu.setLapic(state.lapic);
  for (const batch of batches) vcpu.setMsrs(batch);
  vcpu.setVcpuEvents(events);
  vcpu.kvmclockCtrl();
}

function restoreTscKhz(vcpu: Pick<Vcpu, "getTscKhz" | "setTscKhz">, savedKhz: number): void {
  const currentKhz = readTscKhz(vcpu);
  if (currentKhz !== null && !tscScalingNeeded(savedKhz, currentKhz)) return;
  try {
    vcpu.setTscKhz(savedKhz);
  } catch (error) {
    const here = currentKhz === null ? "an unknown rate" : `${currentKhz} kHz`;
    throw new KvmError(
      "ioctl",
      `the guest's TSC ran at ${savedKhz} kHz and this host's runs at ${here}; KVM cannot scale it (${(error as Error).message}): restore snapshots on the host that took them`,
      { cause: error },
    );
  }
}

/**
 * KVM_SET_XSAVE reads the VM's whole XSAVE area size, whatever the length of
 * the saved one: pad with zeros (an XSTATE_BV without the extra components
 * leaves them in their initial state).
 */
function paddedXsave(saved: Uint8Array, size: number): Uint8Array {
  if (!(saved instanceof Uint8Array) || saved.byteLength < kvm_xsave.size) throw new KvmStateError(`vCPU state xsave must be at least ${kvm_xsave.size} bytes`);
  if (saved.byteLength >= size) return saved;
  const padded = new Uint8Array(size);
  padded.set(saved);
  return padded;
}

/**
 * Re-enters KVM_RUN once with immediate_exit set, so KVM completes the I/O
 * or MMIO instruction it handed to userspace at the last exit and returns
 * without running guest code (KVM's API documentation asks for this before
 * state is saved). Call it on a stopped vCPU, on the thread that now owns it,
 * before captureVcpuState. A vCPU with nothing pending just returns. Throws
 * if completing the instruction produced another exit (string I/O needing a
 * further round): the devices must handle that one first.
 */
export function completePendingExit(vcpu: Pick<Vcpu, "run" | "enter" | "handle">): void {
  vcpu.run.set("immediate_exit", 1);
  const result = vcpu.enter(); // clears immediate_exit when KVM returns EINTR
  if (result !== RUN_INTERRUPTED) {
    vcpu.run.set("immediate_exit", 0);
    throw new KvmStateError(`vCPU ${vcpu.handle.id} has a new exit (${exitReasonName(result)}) to handle before its state can be captured`);
  }
}

// ---------------------------------------------------------------- VM state

export interface VmState {
  readonly version: number;
  /** Each chip's kvm_irqchip.chip: a kvm_pic_state or kvm_ioapic_state in 512 bytes. */
  readonly irqchip: { readonly picMaster: Uint8Array; readonly picSlave: Uint8Array; readonly ioapic: Uint8Array };
  /** The whole kvm_pit_state2. */
  readonly pit: Uint8Array;
  /** kvmclock at capture; `realtime` and `host_tsc` are valid when `flags` says so. */
  readonly clock: ClockState;
}

export type VmStateIoctls = Pick<Vm, "getIrqchip" | "setIrqchip" | "getPit2" | "setPit2" | "getClock" | "setClock">;

const CHIPS = [
  ["picMaster", KVM_IRQCHIP_PIC_MASTER],
  ["picSlave", KVM_IRQCHIP_PIC_SLAVE],
  ["ioapic", KVM_IRQCHIP_IOAPIC],
] as const;

/** Captures the in-kernel PIT, kvmclock and irqchips (Firecracker's order, save_state in src/vmm/src/arch/x86_64/vm.rs). */
export function captureVmState(vm: VmStateIoctls): VmState {
  const pit = vm.getPit2().bytes.slice();
  const clock = readFields(vm.getClock(), CLOCK_OMIT) as ClockState;
  const chip = (id: number) => vm.getIrqchip(id).bytes.slice(KVM_IRQCHIP_CHIP_OFFSET, KVM_IRQCHIP_CHIP_OFFSET + KVM_IRQCHIP_CHIP_SIZE);
  const irqchip = { picMaster: chip(KVM_IRQCHIP_PIC_MASTER), picSlave: chip(KVM_IRQCHIP_PIC_SLAVE), ioapic: chip(KVM_IRQCHIP_IOAPIC) };
  return { version: VM_STATE_VERSION, irqchip, pit, clock };
}

export interface VmRestoreOptions {
  /**
   * How kvmclock resumes:
   *  - "saved" (default; Firecracker's default too): KVM_SET_CLOCK with flags
   *    0 sets it to the captured value, so guest time continues from the
   *    instant of capture: it never runs backwards (a new VM's kvmclock
   *    starts near 0), and the pause does not exist for the guest. Its wall
   *    clock is then behind by the pause until NTP or the guest agent steps it.
   *  - "realtime": KVM_CLOCK_REALTIME, so KVM adds the host CLOCK_REALTIME time
   *    elapsed since capture: the guest sees the pause as time passing, like
   *    a suspend. KVM provides `realtime` only when the host clocksource is the
   *    TSC; without it in the capture this throws.
   */
  readonly clock?: "saved" | "realtime";
}

/**
 * Loads `state` into a VM whose irqchip and PIT exist, after its vCPUs are
 * restored (see the order at the top of this file); within it, Firecracker's
 * order: PIT, kvmclock, then the PICs and IOAPIC.
 */
export function restoreVmState(vm: VmStateIoctls, state: VmState, options: VmRestoreOptions = {}): void {
  checkVersion("VM", state.version, VM_STATE_VERSION);
  checkBlob("VM state pit", state.pit, kvm_pit_state2.size);
  const pit = new StructView(kvm_pit_state2, state.pit.slice());
  const clock = writeFields(kvm_clock_data, state.clock, "VM state clock", CLOCK_OMIT);
  const mode = options.clock ?? "saved";
  if (mode === "realtime" && (clock.get("flags") & KVM_CLOCK_REALTIME) === 0) {
    throw new KvmStateError("the VM state has no host realtime for its clock (the host clocksource was not the TSC): restore it with the saved clock");
  }
  // KVM_SET_CLOCK ignores KVM_CLOCK_TSC_STABLE and KVM_CLOCK_HOST_TSC; only KVM_CLOCK_REALTIME changes what it does.
  clock.set("flags", mode === "realtime" ? KVM_CLOCK_REALTIME : 0);
  const chips = CHIPS.map(([name, id]) => {
    const bytes = state.irqchip?.[name];
    checkBlob(`VM state irqchip.${name}`, bytes, KVM_IRQCHIP_CHIP_SIZE);
    const chip = new StructView(kvm_irqchip).set("chip_id", id);
    chip.bytes.set(bytes, KVM_IRQCHIP_CHIP_OFFSET);
    return chip;
  });

  vm.setPit2(pit);
  vm.setClock(clock);
  for (const chip of chips) vm.setIrqchip(chip);
}

function checkVersion(what: string, version: number, expected: number): void {
  if (version !== expected) throw new KvmStateError(`${what} state version ${version} is not the version this Volt restores (${expected})`);
}

function checkU32(what: string, value: unknown): void {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value > 0xffff_ffff) throw new KvmStateError(`${what} must be a u32 number`);
}

/** Every element of `list` must have exactly the fields of `shape`: u32 numbers or u64 bigints. */
function checkList(what: string, list: unknown, shape: Record<string, "u32" | "u64">): void {
  if (!Array.isArray(list)) throw new KvmStateError(`${what} must be an array`);
  const names = Object.keys(shape);
  list.forEach((element: unknown, i) => {
    if (typeof element !== "object" || element === null) throw new KvmStateError(`${what}[${i}] must be an object`);
    const record = element as Record<string, unknown>;
    for (const key of Object.keys(record)) if (!(key in shape)) throw new KvmStateError(`${what}[${i}] has an unknown field "${key}"`);
    for (const name of names) {
      const value = record[name];
      if (shape[name] === "u64") {
        if (typeof value !== "bigint" || value < 0n || value > 0xffff_ffff_ffff_ffffn) throw new KvmStateError(`${what}[${i}].${name} must be a 64-bit unsigned bigint`);
      } else {
        checkU32(`${what}[${i}].${name}`, value);
      }
    }
  });
}

function checkBlob(what: string, bytes: unknown, size: number): asserts bytes is Uint8Array {
  if (!(bytes instanceof Uint8Array) || bytes.byteLength !== size) throw new KvmStateError(`${what} must be ${size} bytes`);
}

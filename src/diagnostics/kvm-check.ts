/**
 * `volt kvm-check`: what the host's KVM offers, and (with --smoke) proof that
 * Volt can run a guest on it: a few bytes of real-mode code run in a vCPU
 * worker and must produce exactly the expected exits.
 */
import { KvmError } from "../kvm/errors.ts";
import type { KvmCapability } from "../kvm/abi.ts";
import { Kvm, REQUIRED_CAPABILITIES } from "../kvm/system.ts";
import { mapRunPage, unmapRunPage, Vcpu, type VcpuHandle } from "../kvm/vcpu.ts";
import { close } from "../ffi/syscalls.ts";
import { GuestMemory } from "../memory/guest-memory.ts";
import type { ExitRecord, FinishReason } from "../vcpu/protocol.ts";
import { VcpuThread } from "../vcpu/vcpu-thread.ts";

export interface KvmReport {
  readonly path: string;
  readonly apiVersion: number;
  readonly vcpuMmapSize: number;
  readonly capabilities: Record<KvmCapability, number>;
  readonly missingCapabilities: readonly KvmCapability[];
}

export function probeKvm(kvm: Kvm): KvmReport {
  const capabilities = kvm.capabilities();
  return {
    path: kvm.path,
    apiVersion: kvm.apiVersion(),
    vcpuMmapSize: kvm.vcpuMmapSize(),
    capabilities,
    missingCapabilities: REQUIRED_CAPABILITIES.filter((cap) => capabilities[cap] === 0),
  };
}

export interface SmokeResult {
  readonly name: string;
  readonly passed: boolean;
  readonly finish: FinishReason;
  readonly exits: readonly ExitRecord[];
  readonly elapsedMs: number;
  readonly problem?: string;
}

const CODE_ADDRESS = 0x1000;
const SMOKE_MEMORY = 0x10000;
const SERIAL_PORT = 0x3f8;
const MARKER = "K".charCodeAt(0);

/** mov $0x3f8,%dx; mov $'K',%al; out %al,(%dx); hlt */
const WRITE_BYTE_THEN_HALT = Uint8Array.of(0xba, 0xf8, 0x03, 0xb0, MARKER, 0xee, 0xf4);
/** 1: jmp 1b — a guest that never exits by itself */
const SPIN_FOREVER = Uint8Array.of(0xeb, 0xfe);

/** Runs `code` in real mode at CODE_ADDRESS on one vCPU in a worker; `whileRunning` may act on the thread. */
async function runRealMode(
  kvm: Kvm,
  code: Uint8Array,
  whileRunning?: (thread: VcpuThread) => Promise<void>,
): Promise<{ finish: FinishReason; exits: readonly ExitRecord[]; elapsedMs: number; error?: string }> {
  const started = performance.now();
  const vm = kvm.createVm();
  const memory = GuestMemory.create([{ guestAddress: 0, size: SMOKE_MEMORY }], "volt-smoke");
  let handle: VcpuHandle | undefined;
  let thread: VcpuThread | undefined;
  try {
    memory.write(CODE_ADDRESS, code);
    const region = memory.regions[0]!;
    vm.setUserMemoryRegion({ slot: 0, guestAddress: region.guestAddress, size: region.size, hostAddress: region.hostAddress });
    const fd = vm.createVcpu(0);
    handle = { id: 0, fd, runAddress: mapRunPage(fd, vm.vcpuMmapSize), runSize: vm.vcpuMmapSize };
    const vcpu = new Vcpu(handle);
    vcpu.setSregs(vcpu.getSregs().set("cs.base", 0n).set("cs.selector", 0));
    vcpu.setRegs(vcpu.getRegs().set("rip", BigInt(CODE_ADDRESS)).set("rflags", 0x2n));
    thread = await VcpuThread.start(handle, { maxExits: 16 });
    if (whileRunning) await whileRunning(thread);
    const finished = await withTimeout(thread.finished, 30_000, "the vCPU did not finish within 30 s");
    return { finish: finished.reason, exits: finished.exits, elapsedMs: performance.now() - started, ...(finished.error ? { error: finished.error } : {}) };
  } finally {
    thread?.terminate();
    if (handle) {
      unmapRunPage(handle);
      close(handle.fd);
    }
    vm.close();
    memory.dispose();
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The guest writes 'K' to the serial port and halts: exactly KVM_EXIT_IO(out 0x3f8 'K'), then KVM_EXIT_HLT. */
export async function realModeSmoke(kvm: Kvm): Promise<SmokeResult> {
  const run = await runRealMode(kvm, WRITE_BYTE_THEN_HALT);
  const [first, second, ...rest] = run.exits;
  const ioOk =
    first?.reason === "KVM_EXIT_IO" &&
    "port" in first &&
    first.direction === "out" &&
    first.port === SERIAL_PORT &&
    first.size === 1 &&
    first.count === 1 &&
    first.data.length === 1 &&
    first.data[0] === MARKER;
  const passed = ioOk && second?.reason === "KVM_EXIT_HLT" && rest.length === 0 && run.finish === "hlt";
  return {
    name: "real-mode port write then halt",
    passed,
    finish: run.finish,
    exits: run.exits,
    elapsedMs: run.elapsedMs,
    ...(passed ? {} : { problem: run.error ?? "expected exactly KVM_EXIT_IO (out 0x3f8 'K') then KVM_EXIT_HLT" }),
  };
}

/** A spinning guest must be kicked out of KVM_RUN promptly by stop(). */
export async function kickSmoke(kvm: Kvm): Promise<SmokeResult> {
  const run = await runRealMode(kvm, SPIN_FOREVER, async (thread) => {
    await Bun.sleep(100);
    thread.stop();
  });
  const passed = run.finish === "stopped" && run.exits.length === 0;
  return {
    name: "stop kicks a spinning vCPU out of KVM_RUN",
    passed,
    finish: run.finish,
    exits: run.exits,
    elapsedMs: run.elapsedMs,
    ...(passed ? {} : { problem: run.error ?? `expected the vCPU to stop with no exits, got ${run.finish}` }),
  };
}

export { KvmError };

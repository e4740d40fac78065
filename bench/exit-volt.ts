/**
 * Exit cost under Volt's own vCPU worker: the guest of bench/kvm-loop.c (a
 * real-mode loop of N `out` instructions, then `hlt`) runs in a VcpuThread in
 * machine mode, so every exit takes the path a booted guest's exits take
 * (src/vcpu/worker.ts runMachineLoop: KVM_RUN through bun:ffi, kvm_run
 * decoding, the port-I/O bus and its device).
 *
 *   bun bench/exit-volt.ts <small> <large> <repetitions> <port>...
 *
 * For each port it runs the guest with `small` and with `large` exits,
 * `repetitions` times, and prints one JSON line per pair
 * {port, small, large, smallMs, largeMs}. Times are
 * taken on the VMM thread from "worker started" to "worker finished": the
 * caller takes (largeMs - smallMs) / (large - small), which cancels the fixed
 * costs (worker messages, device set-up, the first entry).
 */
import { createMachineShared } from "../src/vmm/machine.ts";
import { Kvm } from "../src/kvm/system.ts";
import { mapRunPage, unmapRunPage, Vcpu, type VcpuHandle } from "../src/kvm/vcpu.ts";
import { close, eventfd } from "../src/ffi/syscalls.ts";
import { GuestMemory } from "../src/memory/guest-memory.ts";
import { VcpuThread } from "../src/vcpu/vcpu-thread.ts";

const CODE_ADDRESS = 0x1000;
const MEMORY_SIZE = 0x10000;

/** mov $exits,%ecx; mov $port,%dx; 1: out %al,(%dx); dec %ecx; jnz 1b; hlt (the same bytes as kvm-loop.c). */
function guestCode(exits: number, port: number): Uint8Array {
  return Uint8Array.of(
    0x66, 0xb9, exits & 0xff, (exits >>> 8) & 0xff, (exits >>> 16) & 0xff, (exits >>> 24) & 0xff,
    0xba, port & 0xff, (port >>> 8) & 0xff,
    0xee,
    0x66, 0x49,
    0x75, 0xfb,
    0xf4,
  );
}

async function runOnce(kvm: Kvm, exits: number, port: number): Promise<number> {
  const vm = kvm.createVm();
  const memory = GuestMemory.create([{ guestAddress: 0, size: MEMORY_SIZE }], "volt-bench-exit");
  const controlEventFd = eventfd();
  let handle: VcpuHandle | undefined;
  let thread: VcpuThread | undefined;
  try {
    memory.write(CODE_ADDRESS, guestCode(exits, port));
    const region = memory.regions[0]!;
    vm.setUserMemoryRegion({ slot: 0, guestAddress: 0, size: region.size, hostAddress: region.hostAddress });
    const fd = vm.createVcpu(0);
    handle = { id: 0, fd, runAddress: mapRunPage(fd, vm.vcpuMmapSize), runSize: vm.vcpuMmapSize };
    const vcpu = new Vcpu(handle);
    vcpu.setSregs(vcpu.getSregs().set("cs.base", 0n).set("cs.selector", 0));
    vcpu.setRegs(vcpu.getRegs().set("rip", BigInt(CODE_ADDRESS)).set("rflags", 0x2n));
    const machine = createMachineShared(vm.fd, { slots: [], controlEventFd });
    thread = await VcpuThread.start(handle, { machine });
    const started = performance.now();
    const finished = await thread.finished;
    const elapsed = performance.now() - started;
    if (finished.reason !== "hlt") throw new Error(`the exit guest ended with ${finished.reason}${finished.error ? `: ${finished.error}` : ""}`);
    return elapsed;
  } finally {
    thread?.terminate();
    if (handle) {
      unmapRunPage(handle);
      close(handle.fd);
    }
    close(controlEventFd);
    vm.close();
    memory.dispose();
  }
}

const [smallArg, largeArg, repetitionsArg, ...portArgs] = process.argv.slice(2);
const small = Number(smallArg);
const large = Number(largeArg);
const repetitions = Number(repetitionsArg);
const ports = portArgs.map((p) => Number(p));
if (!(small > 0 && large > small && repetitions >= 1 && ports.length > 0 && ports.every((p) => p >= 0 && p < 0x10000))) {
  console.error("usage: bun bench/exit-volt.ts <small> <large> <repetitions> <port>...");
  process.exit(2);
}
const kvm = Kvm.open();
try {
  // One untimed run first (page cache, this thread's code paths). Every run gets a fresh
  // vCPU worker whose exit loop warms up in its first exits: subtracting the small run
  // from the large one removes that warm-up along with the other fixed costs.
  await runOnce(kvm, small, ports[0]!);
  for (let repetition = 0; repetition < repetitions; repetition++) {
    for (const port of ports) {
      const smallMs = await runOnce(kvm, small, port);
      const largeMs = await runOnce(kvm, large, port);
      console.log(JSON.stringify({ port, small, large, smallMs, largeMs }));
    }
  }
} finally {
  kvm.close();
}

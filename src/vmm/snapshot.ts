/**
 * Snapshots of a running VM and VMs restored from them.
 *
 * Capture (the VM paused: vCPUs parked after KVM completed their last exit,
 * the I/O worker quiesced): every vCPU's KVM state, the VM's irqchip/PIT/clock,
 * Volt's device state (UART, boot timer, each virtio transport and queue
 * position) and the machine's description, then guest RAM, into a snapshot
 * directory (src/snapshot/files.ts). The VM then runs on if it was running.
 *
 * Restore: everything is read and checked before a VM exists; guest RAM is
 * the memory file mapped copy-on-write, so nothing is read up front and the
 * file is never written; devices reopen their backends (drive paths, tap,
 * vsock socket) and pick up their queues where they were.
 */
import { openSync, closeSync } from "node:fs";
import { SnapshotError } from "../snapshot/format.ts";
import { mapManifest } from "../snapshot/chunks.ts";
import {
  captureInMemory,
  openStateBytes,
  readSnapshot,
  writeSnapshot,
  type InMemorySnapshot,
  type OpenedSnapshot,
  type WrittenSnapshot,
} from "../snapshot/files.ts";
import type { VirtioDeviceSpec } from "../devices/virtio/factory.ts";
import { I8042_STATE_BYTES } from "../devices/legacy/i8042.ts";
import { closeVirtioEventFds } from "../devices/virtio/io-thread.ts";
import { Kvm } from "../kvm/system.ts";
import { Vcpu } from "../kvm/vcpu.ts";
import { captureVcpuState, captureVmState, restoreVcpuState, restoreVmState, saveableMsrIndices, xsaveSize, type VcpuState, type VmState } from "../kvm/state.ts";
import { GuestMemory } from "../memory/guest-memory.ts";
import type { BootProtocol } from "../arch/x86_64/regs.ts";
import { MAX_VCPUS } from "./config.ts";
import { Cleanups, createMachineVm, createVcpuHandle, registerGuestMemory, type BuiltVm } from "./builder.ts";
import { VmBuildError } from "./errors.ts";
import { attachVirtioDevices, checkVirtioDevices } from "./virtio.ts";
import type { DeviceSnapshot, RunningVm } from "./vmm.ts";
import pkg from "../../package.json" with { type: "json" };

export const MACHINE_STATE_VERSION = 1;

/** The state file's payload. Device specs are stored without host descriptors (those belong to one process). */
export interface MachineState {
  readonly version: number;
  readonly machine: {
    readonly vcpus: number;
    readonly memoryMiB: number;
    readonly bootTimer: boolean;
    readonly virtioDevices: readonly VirtioDeviceSpec[];
    readonly cmdline: string;
    readonly kernel: { readonly format: "elf" | "bzimage"; readonly protocol: BootProtocol };
    readonly acpi: boolean;
  };
  readonly vm: VmState;
  readonly vcpus: readonly VcpuState[];
  readonly devices: DeviceSnapshot;
}

export interface SnapshotResult extends WrittenSnapshot {
  /** How long the guest was paused for the snapshot. */
  readonly pausedMs: number;
}

export async function snapshotVm(running: RunningVm, dir: string, options: { force?: boolean; chunkStore?: string } = {}): Promise<SnapshotResult> {
  let pausedAt = 0;
  const written = await running.whilePaused(() => {
    pausedAt = performance.now();
    const { meta, state, regions } = captureMachine(running);
    return writeSnapshot(dir, meta, state, regions, options);
  });
  return { ...written, pausedMs: performance.now() - pausedAt };
}

export interface InMemorySnapshotResult extends InMemorySnapshot {
  readonly pausedMs: number;
}

/** The same capture kept in this process (a memfd and the state bytes), for clones that touch no disk. */
export async function snapshotVmInMemory(running: RunningVm): Promise<InMemorySnapshotResult> {
  let pausedAt = 0;
  const captured = await running.whilePaused(() => {
    pausedAt = performance.now();
    const { meta, state, regions } = captureMachine(running);
    return captureInMemory(meta, state, regions);
  });
  return { ...captured, pausedMs: performance.now() - pausedAt };
}

/** Everything a snapshot records, read from a paused VM. */
function captureMachine(running: RunningVm) {
    const built = running.built;
    const msrIndices = saveableMsrIndices(built.kvm);
    const xsave = xsaveSize(built.vm);
    const state: MachineState = {
      version: MACHINE_STATE_VERSION,
      machine: {
        vcpus: built.vcpus.length,
        memoryMiB: built.config.memoryMiB,
        bootTimer: built.config.bootTimer ?? false,
        virtioDevices: built.virtio.slots.map((slot) => withoutHostDescriptors(slot.spec)),
        cmdline: built.cmdline,
        kernel: built.kernel,
        acpi: built.acpi,
      },
      vm: captureVmState(built.vm),
      vcpus: built.vcpus.map((handle) => captureVcpuState(new Vcpu(handle), msrIndices, { xsaveSize: xsave })),
      devices: running.deviceSnapshot(),
    };
    const meta = {
      createdAt: new Date().toISOString(),
      voltVersion: pkg.version,
      vcpuCount: built.vcpus.length,
      memorySizeBytes: built.memory.regions.reduce((sum, r) => sum + r.size, 0),
    };
    const populated = built.memory.populatedRanges();
    const regions = built.memory.regions.map((r, i) => ({ guestAddress: r.guestAddress, bytes: r.bytes, populated: populated[i]! }));
    return { meta, state, regions };
}

function withoutHostDescriptors(spec: VirtioDeviceSpec): VirtioDeviceSpec {
  if (spec.kind !== "net" || !spec.opened) return spec;
  const { opened: _opened, ...rest } = spec;
  return rest;
}

/** Reads and checks a snapshot (no VM yet): throws SnapshotError naming the file at fault. */
export function openSnapshot(dir: string): OpenedSnapshot<MachineState> {
  return checkMachine(readSnapshot<MachineState>(dir));
}

/** The same for another process's in-memory snapshot: its state bytes and its memfd's /proc path. */
export function openSnapshotBytes(bytes: Uint8Array, memoryPath: string, name: string): OpenedSnapshot<MachineState> {
  return checkMachine(openStateBytes<MachineState>(bytes, name, memoryPath, name));
}

function checkMachine(opened: OpenedSnapshot<MachineState>): OpenedSnapshot<MachineState> {
  const state = opened.state;
  if (!state || state.version !== MACHINE_STATE_VERSION || !state.machine || !Array.isArray(state.vcpus)) {
    throw new SnapshotError("payload", `${opened.dir}: machine state version ${String(state?.version)} is not one this volt restores (${MACHINE_STATE_VERSION})`);
  }
  const { machine } = state;
  if (!Number.isInteger(machine.vcpus) || machine.vcpus < 1 || machine.vcpus > MAX_VCPUS || state.vcpus.length !== machine.vcpus) {
    throw new SnapshotError("payload", `${opened.dir}: ${state.vcpus.length} vCPU states for a machine of ${machine.vcpus}`);
  }
  if (opened.meta.vcpuCount !== machine.vcpus) {
    throw new SnapshotError("payload", `${opened.dir}: metadata says ${opened.meta.vcpuCount} vCPUs, the machine state ${machine.vcpus}`);
  }
  if (opened.meta.memorySizeBytes !== machine.memoryMiB * 1024 * 1024) {
    throw new SnapshotError("memory", `${opened.dir}: memory size ${opened.meta.memorySizeBytes} bytes does not match the machine's ${machine.memoryMiB} MiB`);
  }
  if (state.devices.virtioTransports.length !== machine.virtioDevices.length) {
    throw new SnapshotError("payload", `${opened.dir}: ${state.devices.virtioTransports.length} virtio transports for ${machine.virtioDevices.length} devices`);
  }
  const keyboard = state.devices.i8042;
  if (keyboard !== undefined && (!(keyboard instanceof Uint8Array) || keyboard.byteLength !== I8042_STATE_BYTES)) {
    throw new SnapshotError("payload", `${opened.dir}: i8042 state is not the ${I8042_STATE_BYTES} bytes this volt keeps`);
  }
  return opened;
}

export interface RestoredVm {
  readonly built: BuiltVm;
  readonly devices: DeviceSnapshot;
}

/** Guest RAM copy-on-write from the memory file, or from the chunk store for a chunked snapshot. */
function mapSnapshotMemory(snapshot: OpenedSnapshot<MachineState>): GuestMemory {
  if (snapshot.manifestPath !== undefined) {
    const memory = mapManifest(snapshot.manifestPath).memory;
    const expected = snapshot.meta.regions.map((r) => `${r.guestAddress}+${r.size}`).join(",");
    const actual = memory.regions.map((r) => `${r.guestAddress}+${r.size}`).join(",");
    if (expected !== actual) {
      memory.dispose();
      throw new SnapshotError("memory", `${snapshot.manifestPath}: regions ${actual} do not match the state's ${expected}`);
    }
    return memory;
  }
  if (snapshot.memoryFd !== undefined) return GuestMemory.mapPrivate(snapshot.memoryFd, snapshot.meta.regions);
  const fd = openSync(snapshot.memoryPath, "r");
  try {
    return GuestMemory.mapPrivate(fd, snapshot.meta.regions);
  } finally {
    closeSync(fd);
  }
}

/** A VM rebuilt from a checked snapshot, ready for RunningVm.start with `restore: devices`. */
export function buildFromSnapshot(snapshot: OpenedSnapshot<MachineState>, options: { kvmPath?: string } = {}): RestoredVm {
  const { machine } = snapshot.state;
  // Backends first: a drive or socket that is gone fails here, before KVM is touched.
  const checked = checkVirtioDevices(machine.virtioDevices);
  const cleanups = new Cleanups();
  cleanups.push(() => {
    for (const device of checked) device.release?.();
  });
  try {
    const kvm = Kvm.open(options.kvmPath);
    cleanups.push(() => kvm.close());
    const vm = createMachineVm(kvm, cleanups);
    const virtio = attachVirtioDevices(vm, checked);
    cleanups.push(() => closeVirtioEventFds(virtio));
    virtio.slots.forEach((slot, i) => {
      const saved = snapshot.state.devices.virtioTransports[i]!;
      const target = new Uint8Array(slot.transport.buffer);
      if (saved.byteLength !== target.byteLength) {
        throw new VmBuildError("devices", `${snapshot.dir}: virtio device ${i} (${slot.spec.kind}) state is ${saved.byteLength} bytes, this volt's is ${target.byteLength}`);
      }
      target.set(saved);
      new Int32Array(slot.transport.buffer, 0, 1)[0] = 0; // the transport's lock word
    });

    const memory = mapSnapshotMemory(snapshot);
    registerGuestMemory(vm, memory, cleanups);

    const xsave = xsaveSize(vm);
    const vcpus = snapshot.state.vcpus.map((state, id) => {
      const handle = createVcpuHandle(vm, id, cleanups);
      restoreVcpuState(new Vcpu(handle), state, { xsaveSize: xsave });
      return handle;
    });
    // After the vCPUs: the interrupt controllers may deliver as soon as they are set.
    restoreVmState(vm, snapshot.state.vm);
    return {
      built: {
        kvm,
        vm,
        memory,
        vcpus,
        kernel: machine.kernel,
        cmdline: machine.cmdline,
        acpi: machine.acpi,
        config: { kernelPath: "(snapshot)", memoryMiB: machine.memoryMiB, vcpus: machine.vcpus, bootTimer: machine.bootTimer, virtioDevices: machine.virtioDevices },
        virtio,
        dispose: cleanups.dispose,
      },
      devices: snapshot.state.devices,
    };
  } catch (error) {
    cleanups.dispose();
    throw error;
  }
}

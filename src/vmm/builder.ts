/**
 * Builds a VM ready to boot, top to bottom like Firecracker's builder.rs:
 * read and validate every input first (so a bad kernel never creates a VM),
 * then create the VM, memory, irqchip, load the kernel, describe the machine
 * to the guest, and create the vCPUs. The vCPUs are not started here.
 */
import { readFileSync, statSync } from "node:fs";
import { totalmem } from "node:os";
import { writeBootParams } from "../arch/x86_64/boot-params.ts";
import { BOOT_FPU, BOOT_MSRS, lapicWithLegacyLints, vcpuCpuid } from "../arch/x86_64/cpu-setup.ts";
import { ACPI_POWER_PORT_BASE, CMDLINE_ADDRESS, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS, MiB, VIRTIO_MMIO_DEVICE_SIZE } from "../arch/x86_64/layout.ts";
import { e820Entries, guestRamRegions, lowRamEnd } from "../arch/x86_64/memory-map.ts";
import { writeMpTable } from "../arch/x86_64/mptable.ts";
import { writePvhStartInfo } from "../arch/x86_64/pvh.ts";
import { setupBootCpu, type BootProtocol } from "../arch/x86_64/regs.ts";
import { close } from "../ffi/syscalls.ts";
import { Kvm } from "../kvm/system.ts";
import { mapRunPage, unmapRunPage, Vcpu, type VcpuHandle } from "../kvm/vcpu.ts";
import type { Vm } from "../kvm/vm.ts";
import { CmdlineError, KernelCmdline, writeCmdline } from "../loader/cmdline.ts";
import { inspectKernel, kernelSupportsAcpi, loadKernel, type KernelImage } from "../loader/detect.ts";
import { writeAcpiTables } from "../arch/x86_64/acpi/machine.ts";
import { ACPI_RESET_OFFSET, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_OFFSET, ACPI_SLEEP_STATUS_OFFSET } from "../devices/acpi/power.ts";
import { KernelFormatError } from "../loader/errors.ts";
import { loadInitrd } from "../loader/initrd.ts";
import { GuestMemory, GuestMemoryError } from "../memory/guest-memory.ts";
import { closeVirtioEventFds, type VirtioShared } from "../devices/virtio/io-thread.ts";
import { DEFAULT_CMDLINE, MAX_VCPUS, type VmConfig } from "./config.ts";
import { VmBuildError } from "./errors.ts";
import { attachVirtioDevices, checkVirtioDevices, virtioKernelParameters, type CheckedVirtioDevice } from "./virtio.ts";

export interface BuiltVm {
  readonly kvm: Kvm;
  readonly vm: Vm;
  readonly memory: GuestMemory;
  readonly vcpus: readonly VcpuHandle[];
  readonly kernel: { readonly format: KernelImage["format"]; readonly protocol: BootProtocol };
  readonly cmdline: string;
  /** Devices announced through ACPI (the kernel has it) rather than the command line. */
  readonly acpi: boolean;
  readonly config: VmConfig;
  readonly virtio: VirtioShared;
  /** Releases every kernel object and mapping (idempotent). */
  dispose(): void;
}

interface Inputs {
  readonly kernelBytes: Uint8Array;
  readonly kernel: KernelImage;
  readonly initrdBytes?: Uint8Array;
  readonly memoryBytes: number;
  readonly virtioDevices: readonly CheckedVirtioDevice[];
  /** The kernel reads ACPI tables (so devices are announced there, not on the command line). */
  readonly acpi: boolean;
}

function readInput(kind: "kernel" | "initrd", path: string): Uint8Array {
  try {
    if (!statSync(path).isFile()) throw new VmBuildError(kind, `${kind} ${path} is not a regular file`);
    return new Uint8Array(readFileSync(path));
  } catch (error) {
    if (error instanceof VmBuildError) throw error;
    const code = (error as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : String(error);
    throw new VmBuildError(kind, `cannot read ${kind} ${path}: ${why}`, { cause: error });
  }
}

/** Everything that can be checked without KVM, so bad input fails before any VM exists. */
export function validateInputs(config: VmConfig): Inputs {
  if (!Number.isInteger(config.vcpus) || config.vcpus < 1 || config.vcpus > MAX_VCPUS) {
    throw new VmBuildError("vcpus", `vcpus must be a whole number from 1 to ${MAX_VCPUS} (got ${config.vcpus})`);
  }
  const memoryBytes = config.memoryMiB * MiB;
  // Guest RAM is allocated lazily, so an oversized VM would start and then be OOM-killed mid-boot: refuse it here.
  if (memoryBytes > totalmem()) {
    throw new VmBuildError("memory", `mem ${config.memoryMiB} MiB is more than this host's ${Math.floor(totalmem() / MiB)} MiB of RAM`);
  }
  try {
    guestRamRegions(memoryBytes);
  } catch (error) {
    throw new VmBuildError("memory", `mem ${config.memoryMiB} MiB: ${(error as Error).message}`, { cause: error });
  }
  const kernelBytes = readInput("kernel", config.kernelPath);
  let kernel: KernelImage;
  try {
    kernel = inspectKernel(kernelBytes);
  } catch (error) {
    if (error instanceof KernelFormatError) throw new VmBuildError("kernel", `kernel ${config.kernelPath}: ${error.message}`, { cause: error });
    throw error;
  }
  // Both formats say where the kernel ends once loaded; past the RAM below the MMIO gap it cannot run.
  if (kernel.kernelEnd > lowRamEnd(memoryBytes)) {
    throw new VmBuildError(
      "kernel",
      `kernel ${config.kernelPath} needs memory up to ${Math.ceil(kernel.kernelEnd / MiB)} MiB; give the VM more (--mem ${Math.ceil(kernel.kernelEnd / MiB) + 64})`,
    );
  }
  const initrdBytes = config.initrdPath === undefined ? undefined : readInput("initrd", config.initrdPath);
  const virtioDevices = checkVirtioDevices(config.virtioDevices ?? []);
  return { kernelBytes, kernel, memoryBytes, virtioDevices, acpi: kernelSupportsAcpi(kernelBytes), ...(initrdBytes ? { initrdBytes } : {}) };
}

function buildCmdline(config: VmConfig, inputs: Inputs): KernelCmdline {
  const limit = inputs.kernel.format === "bzimage" ? inputs.kernel.cmdlineSize : undefined;
  try {
    // Device parameters before the user's, so a user's root= or ro/rw still has the last word.
    return new KernelCmdline(limit)
      .appendRaw(DEFAULT_CMDLINE)
      .appendRaw(virtioKernelParameters(inputs.virtioDevices, { announceOnCmdline: !inputs.acpi }).join(" "))
      .appendRaw(config.cmdline ?? "");
  } catch (error) {
    if (error instanceof CmdlineError) throw new VmBuildError("cmdline", error.message, { cause: error });
    throw error;
  }
}

/** What a VM build has taken, released newest first by `dispose` (idempotent; best effort). */
export class Cleanups {
  private readonly steps: (() => void)[] = [];

  push(step: () => void): void {
    this.steps.push(step);
  }

  readonly dispose = (): void => {
    for (const step of this.steps.splice(0).reverse()) {
      try {
        step();
      } catch {
        // Best effort: the process is about to drop these anyway.
      }
    }
  };
}

/** A VM with Volt's fixed machine parts: the TSS/identity pages, in-kernel irqchip and PIT. */
export function createMachineVm(kvm: Kvm, cleanups: Cleanups): Vm {
  kvm.requireCapabilities();
  const vm = kvm.createVm();
  cleanups.push(() => vm.close());
  // Intel VMX needs these pages for real-mode emulation; they sit in the MMIO gap, never in RAM.
  vm.setTssAddress(KVM_TSS_ADDRESS);
  vm.setIdentityMapAddress(KVM_IDENTITY_MAP_ADDRESS);
  vm.createIrqchip();
  vm.createPit();
  return vm;
}

export function registerGuestMemory(vm: Vm, memory: GuestMemory, cleanups: Cleanups): void {
  cleanups.push(() => memory.dispose());
  memory.regions.forEach((region, slot) =>
    vm.setUserMemoryRegion({ slot, guestAddress: region.guestAddress, size: region.size, hostAddress: region.hostAddress }),
  );
}

export function createVcpuHandle(vm: Vm, id: number, cleanups: Cleanups): VcpuHandle {
  const fd = vm.createVcpu(id);
  const handle: VcpuHandle = { id, fd, runAddress: mapRunPage(fd, vm.vcpuMmapSize), runSize: vm.vcpuMmapSize };
  cleanups.push(() => {
    unmapRunPage(handle);
    close(fd);
  });
  return handle;
}

export function buildForBoot(config: VmConfig): BuiltVm {
  const inputs = validateInputs(config);
  const cleanups = new Cleanups();
  cleanups.push(() => {
    for (const device of inputs.virtioDevices) device.release?.();
  });
  try {
    const cmdline = buildCmdline(config, inputs);
    const kvm = Kvm.open(config.kvmPath);
    cleanups.push(() => kvm.close());
    const vm = createMachineVm(kvm, cleanups);
    // irqfds need the irqchip to exist.
    const virtio = attachVirtioDevices(vm, inputs.virtioDevices);
    cleanups.push(() => closeVirtioEventFds(virtio));

    const memory = GuestMemory.create(guestRamRegions(inputs.memoryBytes));
    registerGuestMemory(vm, memory, cleanups);

    let kernel: KernelImage;
    try {
      kernel = loadKernel(memory, inputs.kernelBytes);
    } catch (error) {
      // A kernel that parses but does not fit this much guest memory is a configuration error, not a Volt bug.
      if (error instanceof KernelFormatError || error instanceof GuestMemoryError) {
        throw new VmBuildError("kernel", `kernel ${config.kernelPath} does not fit ${config.memoryMiB} MiB of guest memory: ${error.message}`, { cause: error });
      }
      throw error;
    }
    const commandLine = writeCmdline(memory, cmdline, CMDLINE_ADDRESS);
    const e820 = e820Entries(inputs.memoryBytes);
    const initrd = inputs.initrdBytes
      ? loadInitrd(memory, inputs.initrdBytes, {
          lowRamEnd: lowRamEnd(inputs.memoryBytes),
          kernelEnd: kernel.kernelEnd,
          ...(kernel.format === "bzimage" ? { initrdAddrMax: kernel.initrdAddrMax } : {}),
        })
      : undefined;

    // Written for every kernel: one without ACPI never looks at them.
    const { rsdpAddress } = writeAcpiTables(memory, {
      vcpus: config.vcpus,
      virtioDevices: virtio.slots.map((slot) => ({ address: slot.mmioBase, size: VIRTIO_MMIO_DEVICE_SIZE, irq: slot.irq })),
      power: {
        sleepControlPort: ACPI_POWER_PORT_BASE + ACPI_SLEEP_CONTROL_OFFSET,
        sleepStatusPort: ACPI_POWER_PORT_BASE + ACPI_SLEEP_STATUS_OFFSET,
        resetPort: ACPI_POWER_PORT_BASE + ACPI_RESET_OFFSET,
        resetValue: ACPI_RESET_VALUE,
      },
    });

    // PVH enters a vmlinux in 32-bit mode and needs no page tables of ours; bzImages use the 64-bit protocol.
    const protocol: BootProtocol = kernel.format === "elf" && kernel.pvhEntry !== undefined ? "pvh" : "linux64";
    const entry = protocol === "pvh" && kernel.format === "elf" ? kernel.pvhEntry! : kernel.entry64;
    if (protocol === "pvh") {
      writePvhStartInfo(memory, { cmdlineAddress: commandLine.address, memoryMap: e820, rsdpAddress, ...(initrd ? { modules: [initrd] } : {}) });
    } else {
      writeBootParams(memory, {
        ...(kernel.format === "bzimage" ? { setupHeader: kernel.setupHeader } : {}),
        cmdline: commandLine,
        ...(initrd ? { initrd } : {}),
        e820,
        rsdpAddress,
      });
    }
    writeMpTable(memory, config.vcpus);
    const bootState = setupBootCpu(memory, protocol, entry);

    const supportedCpuid = kvm.supportedCpuid();
    const vcpus: VcpuHandle[] = [];
    for (let id = 0; id < config.vcpus; id++) {
      const handle = createVcpuHandle(vm, id, cleanups);
      vcpus.push(handle);
      const vcpu = new Vcpu(handle);
      // CPUID first: KVM checks control-register bits against the guest's CPUID.
      vcpu.setCpuid(vcpuCpuid(supportedCpuid, id, config.vcpus));
      vcpu.setMsrs(BOOT_MSRS);
      vcpu.setFpu(BOOT_FPU);
      vcpu.setLapic(lapicWithLegacyLints(vcpu.getLapic()));
      // Only the boot CPU starts at the kernel; the others wait for INIT/SIPI from it.
      if (id === 0) {
        vcpu.updateSregs(bootState.sregs);
        vcpu.updateRegs(bootState.regs);
      }
    }
    return {
      kvm,
      vm,
      memory,
      vcpus,
      kernel: { format: kernel.format, protocol },
      cmdline: cmdline.toString(),
      acpi: inputs.acpi,
      config,
      virtio,
      dispose: cleanups.dispose,
    };
  } catch (error) {
    cleanups.dispose();
    throw error;
  }
}

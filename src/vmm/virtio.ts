/**
 * Puts the VM's virtio devices on the machine: one virtio-mmio page each from
 * VIRTIO_MMIO_BASE, one IOAPIC pin each from 5 (Firecracker's layout), an
 * ioeventfd per queue and an irqfd per device registered with KVM, and a
 * `virtio_mmio.device=` parameter per device, since there is no ACPI or
 * device tree to announce them.
 */
import { IOAPIC_PINS, VIRTIO_MMIO_BASE, VIRTIO_MMIO_DEVICE_SIZE, VIRTIO_MMIO_WINDOW_SIZE } from "../arch/x86_64/layout.ts";
import { createVirtioDevice, describeVirtioDevice, type VirtioDeviceSpec } from "../devices/virtio/factory.ts";
import { VirtioNet } from "../devices/virtio/net.ts";
import { TapDevice } from "../devices/virtio/tap.ts";
import type { VirtioShared, VirtioSlot } from "../devices/virtio/io-thread.ts";
import { QUEUE_NOTIFY_OFFSET, createVirtioMmioState } from "../devices/virtio/mmio.ts";
import { close, eventfd } from "../ffi/syscalls.ts";
import type { Vm } from "../kvm/vm.ts";
import { VmBuildError } from "./errors.ts";

/** The first IOAPIC pin for virtio devices: 0-4 are the timer, keyboard, cascade, COM2 and COM1. */
export const FIRST_VIRTIO_IRQ = 5;
export const MAX_VIRTIO_DEVICES = Math.min(IOAPIC_PINS - FIRST_VIRTIO_IRQ, VIRTIO_MMIO_WINDOW_SIZE / VIRTIO_MMIO_DEVICE_SIZE);

/** What the devices tell the guest and the VMM before any of them runs. */
export interface CheckedVirtioDevice {
  readonly spec: VirtioDeviceSpec;
  readonly deviceType: number;
  readonly queueMaxSizes: readonly number[];
  readonly features: bigint;
  readonly config: Uint8Array;
  /** Closes a backend the VMM thread keeps open for the VM's life (a tap); absent when nothing is kept. */
  readonly release?: () => void;
}

/**
 * Opens each device's backends once, on the VMM thread, so a bad drive fails
 * the VM build with an error naming its file; the I/O thread opens them again
 * for real. Block devices with `root` come first, so the root drive is vda.
 */
export function checkVirtioDevices(specs: readonly VirtioDeviceSpec[]): CheckedVirtioDevice[] {
  if (specs.length > MAX_VIRTIO_DEVICES) {
    throw new VmBuildError("devices", `at most ${MAX_VIRTIO_DEVICES} virtio devices fit the machine (got ${specs.length})`);
  }
  const roots = specs.filter((spec) => spec.kind === "block" && spec.root);
  if (roots.length > 1) throw new VmBuildError("devices", `only one drive can be the root drive (got ${roots.length})`);
  const ordered = [...roots, ...specs.filter((spec) => !roots.includes(spec))];
  const checked: CheckedVirtioDevice[] = [];
  try {
    for (const spec of ordered) checked.push(checkOne(spec));
  } catch (error) {
    for (const device of checked) device.release?.();
    throw error;
  }
  return checked;
}

function checkOne(spec: VirtioDeviceSpec): CheckedVirtioDevice {
  let device;
  try {
    device = createVirtioDevice(spec);
  } catch (error) {
    throw new VmBuildError("devices", `${describeVirtioDevice(spec)}: ${(error as Error).message}`, { cause: error });
  }
  const shape = { deviceType: device.deviceType, queueMaxSizes: [...device.queueMaxSizes], features: device.features, config: device.config.slice() };
  if (device instanceof VirtioNet && spec.kind === "net") {
    // Keep the tap open for the VM's life: closing it would destroy a tap Volt created, and the worker gets its own descriptor.
    const backend = device.backend;
    const created = backend instanceof TapDevice ? backend.created : false;
    const opened = { fd: backend.fd, offloadCapabilities: backend.offloadCapabilities, created };
    return { spec: { ...spec, opened }, ...shape, release: () => device.close() };
  }
  device.close?.();
  return { spec, ...shape };
}

/**
 * Kernel parameters for the devices: the root drive if there is one, and,
 * for kernels that will not read the ACPI tables, each device's address and
 * IRQ (a kernel told both ways would register every device twice).
 */
export function virtioKernelParameters(devices: readonly CheckedVirtioDevice[], options: { announceOnCmdline: boolean }): string[] {
  const params = options.announceOnCmdline
    ? devices.map((_, index) => `virtio_mmio.device=4K@0x${slotAddress(index).toString(16)}:${FIRST_VIRTIO_IRQ + index}`)
    : [];
  const root = devices[0]?.spec;
  if (root?.kind === "block" && root.root) params.push("root=/dev/vda", root.readOnly ? "ro" : "rw");
  return params;
}

function slotAddress(index: number): number {
  return VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_DEVICE_SIZE;
}

/** Creates each device's transport state and eventfds and registers them with KVM. */
export function attachVirtioDevices(vm: Vm, devices: readonly CheckedVirtioDevice[]): VirtioShared {
  const fds: number[] = [];
  const newEventFd = () => {
    const fd = eventfd();
    fds.push(fd);
    return fd;
  };
  try {
    return attachAll(vm, devices, newEventFd);
  } catch (error) {
    for (const fd of fds) close(fd);
    throw error;
  }
}

function attachAll(vm: Vm, devices: readonly CheckedVirtioDevice[], newEventFd: () => number): VirtioShared {
  const slots: VirtioSlot[] = devices.map((device, index) => {
    const mmioBase = slotAddress(index);
    const irq = FIRST_VIRTIO_IRQ + index;
    const queueEventFds = device.queueMaxSizes.map((_, queue) => {
      const fd = newEventFd();
      // Linux writes the queue's index to QueueNotify as a 32-bit value.
      vm.registerIoeventfd(fd, mmioBase + QUEUE_NOTIFY_OFFSET, 4, queue);
      return fd;
    });
    const irqEventFd = newEventFd();
    vm.registerIrqfd(irqEventFd, irq);
    const transport = createVirtioMmioState({
      deviceType: device.deviceType,
      queueMaxSizes: device.queueMaxSizes,
      features: device.features,
      config: device.config,
    });
    return { spec: device.spec, mmioBase, irq, transport, queueEventFds, irqEventFd };
  });
  return { slots, controlEventFd: newEventFd() };
}

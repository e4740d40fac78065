import type { VirtioDeviceSpec } from "../devices/virtio/factory.ts";

/** What a VM is made of, after validation at the edge (CLI or config file). */
export interface VmConfig {
  readonly kernelPath: string;
  readonly initrdPath?: string;
  /** User command line; Volt's defaults come first, so the user's parameters win. */
  readonly cmdline?: string;
  readonly memoryMiB: number;
  readonly vcpus: number;
  readonly kvmPath?: string;
  /** Map Firecracker's boot-timer device, so the guest can report when it has booted. */
  readonly bootTimer?: boolean;
  /** virtio-mmio devices (drives, entropy, ...), in the order given. */
  readonly virtioDevices?: readonly VirtioDeviceSpec[];
}

export const DEFAULT_MEMORY_MIB = 128;
export const DEFAULT_VCPUS = 1;

/** Console on the UART, reboots and panics that reach the VMM, no PCI probing. */
export const DEFAULT_CMDLINE = "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";

export const MAX_VCPUS = 64;

/**
 * The machine's device map: which device answers which port or MMIO address.
 * Every thread that handles exits (each vCPU worker, and the VMM thread for
 * host-side input) builds the same map over the same shared device state.
 */
import { ACPI_POWER_PORT_BASE, BOOT_TIMER_ADDRESS, I8042_PORT_BASE, KEYBOARD_IRQ, SERIAL_IRQ, SERIAL_PORT_BASE } from "../arch/x86_64/layout.ts";
import { ACPI_POWER_SPAN, AcpiPower } from "../devices/acpi/power.ts";
import { Bus } from "../devices/bus.ts";
import type { InterruptLine } from "../devices/interrupt.ts";
import { BOOT_TIMER_SPAN, BootTimer, createBootTimerState } from "../devices/legacy/boot-timer.ts";
import { I8042, I8042_SPAN, createI8042State, restoreI8042State } from "../devices/legacy/i8042.ts";
import { SERIAL_REGISTER_COUNT, Serial16550, createSerialState } from "../devices/legacy/serial.ts";
import type { VirtioShared } from "../devices/virtio/io-thread.ts";
import { VIRTIO_MMIO_SPAN, VirtioMmioTransport } from "../devices/virtio/mmio.ts";
import { signalEventfd } from "../ffi/syscalls.ts";
import { Vm } from "../kvm/vm.ts";
import { createExitCounters } from "../vcpu/exit-counters.ts";
import type { MachineShared } from "../vcpu/protocol.ts";

export interface MachineOptions {
  /** Map the boot-timer device (off by default: it is for benchmarks, and an unused device is attack surface). */
  readonly bootTimer?: boolean;
  /** How many vCPUs will count their exits (default 1). */
  readonly vcpus?: number;
}

/** `restore` (from a snapshot) overwrites the fresh device state with what the guest left. */
export function createMachineShared(
  vmFd: number,
  virtio: VirtioShared,
  options: MachineOptions = {},
  restore?: { readonly serial: Uint8Array; readonly i8042?: Uint8Array; readonly bootTimer?: Uint8Array },
): MachineShared {
  const serial = createSerialState();
  const i8042 = createI8042State();
  const bootTimer = options.bootTimer ? createBootTimerState() : undefined;
  if (restore) {
    copyState(serial.buffer, restore.serial, "serial");
    // A lock word saved while held would deadlock every thread; a paused VM holds none, but never trust a file.
    new Int32Array(serial.buffer, 0, 1)[0] = 0;
    // Snapshots from before the i8042 kept state have none: the controller starts fresh, as after a reset.
    if (restore.i8042) restoreI8042State(i8042, restore.i8042);
    if (bootTimer && restore.bootTimer) copyState(bootTimer.buffer, restore.bootTimer, "boot timer");
  }
  return { vmFd, serial, i8042, virtio, exitCounters: createExitCounters(options.vcpus ?? 1), ...(bootTimer ? { bootTimer } : {}) };
}

function copyState(target: SharedArrayBuffer, saved: Uint8Array, what: string): void {
  if (saved.byteLength !== target.byteLength) throw new Error(`${what} state is ${saved.byteLength} bytes; this Volt keeps ${target.byteLength}`);
  new Uint8Array(target).set(saved);
}

/** An edge on an in-kernel irqchip input: raise then lower, so the IOAPIC sees one edge per event. */
export function irqLine(vmFd: number, irq: number): InterruptLine {
  const vm = new Vm(vmFd, 0);
  return {
    trigger() {
      vm.setIrqLine(irq, 1);
      vm.setIrqLine(irq, 0);
    },
  };
}

export interface MachineEvents {
  /** i8042 reset line or the ACPI reset register. */
  readonly onResetRequest: () => void;
  /** ACPI S5. */
  readonly onPowerOff: () => void;
  readonly onBoot: () => void;
}

export interface MachineDevices {
  readonly pio: Bus;
  readonly mmio: Bus;
  readonly serial: Serial16550;
  readonly i8042: I8042;
}

export function buildMachineDevices(shared: MachineShared, events: MachineEvents): MachineDevices {
  const pio = new Bus();
  const mmio = new Bus();
  const serial = new Serial16550(shared.serial, irqLine(shared.vmFd, SERIAL_IRQ));
  pio.insert(SERIAL_PORT_BASE, SERIAL_REGISTER_COUNT, serial, "serial (COM1)");
  const i8042 = new I8042(shared.i8042, irqLine(shared.vmFd, KEYBOARD_IRQ), events.onResetRequest);
  pio.insert(I8042_PORT_BASE, I8042_SPAN, i8042, "i8042");
  pio.insert(ACPI_POWER_PORT_BASE, ACPI_POWER_SPAN, new AcpiPower({ onPowerOff: events.onPowerOff, onReset: events.onResetRequest }), "ACPI power");
  for (const slot of shared.virtio.slots) {
    const transport = new VirtioMmioTransport(slot.transport, {
      // Only when no ioeventfd caught the write (a queue index the device does not have, or a write of another width).
      onQueueNotify: (queue) => {
        const fd = slot.queueEventFds[queue];
        if (fd !== undefined) signalEventfd(fd);
      },
      onStatusChange: () => signalEventfd(shared.virtio.controlEventFd),
      interrupt: { trigger: () => signalEventfd(slot.irqEventFd) },
    });
    mmio.insert(slot.mmioBase, VIRTIO_MMIO_SPAN, transport, `virtio-mmio ${slot.spec.kind} @0x${slot.mmioBase.toString(16)}`);
  }
  if (shared.bootTimer) mmio.insert(BOOT_TIMER_ADDRESS, BOOT_TIMER_SPAN, new BootTimer(shared.bootTimer, events.onBoot), "boot timer");
  return { pio, mmio, serial, i8042 };
}

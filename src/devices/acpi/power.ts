/**
 * The hardware-reduced ACPI power registers Volt's FADT points at (three
 * 8-bit I/O ports): the sleep control register, where a guest entering S5
 * (power off) writes SLP_TYP and SLP_EN; the sleep status register, which
 * reads as 0 (no wake events; the guest never sleeps and wakes here); and the
 * reset register, where `reboot=acpi` writes the FADT's reset value.
 *
 * Other sleep states (S1-S4) are ignored: Volt does not suspend guests, and
 * the DSDT offers only \_S5, so Linux never asks for them.
 */
import type { BusDevice } from "../bus.ts";

export const ACPI_POWER_SPAN = 3;
export const ACPI_SLEEP_CONTROL_OFFSET = 0;
export const ACPI_SLEEP_STATUS_OFFSET = 1;
export const ACPI_RESET_OFFSET = 2;
/** What the guest writes to the reset register to reboot (the FADT says so). */
export const ACPI_RESET_VALUE = 0x01;
/** \_S5's SLP_TYP in Volt's DSDT. */
export const ACPI_S5_SLEEP_TYPE = 5;

const SLEEP_TYPE_SHIFT = 2;
const SLEEP_TYPE_MASK = 0x1c;
const SLEEP_ENABLE = 0x20;

export interface AcpiPowerEvents {
  readonly onPowerOff: () => void;
  readonly onReset: () => void;
}

export class AcpiPower implements BusDevice {
  private readonly events: AcpiPowerEvents;

  /** The callbacks run on the thread that took the exit. */
  constructor(events: AcpiPowerEvents) {
    this.events = events;
  }

  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

  write(offset: number, data: Uint8Array): void {
    if (data.length !== 1) return;
    const value = data[0]!;
    if (offset === ACPI_SLEEP_CONTROL_OFFSET) {
      const sleepType = (value & SLEEP_TYPE_MASK) >> SLEEP_TYPE_SHIFT;
      if ((value & SLEEP_ENABLE) !== 0 && sleepType === ACPI_S5_SLEEP_TYPE) this.events.onPowerOff();
    } else if (offset === ACPI_RESET_OFFSET && value === ACPI_RESET_VALUE) {
      this.events.onReset();
    }
  }
}

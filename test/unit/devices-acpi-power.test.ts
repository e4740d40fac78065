import { describe, expect, test } from "bun:test";
import { ACPI_S5_SLEEP_TYPE as TABLES_S5_SLEEP_TYPE } from "../../src/arch/x86_64/acpi/machine.ts";
import { ACPI_S5_SLEEP_TYPE, ACPI_RESET_OFFSET, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_OFFSET, ACPI_SLEEP_STATUS_OFFSET, AcpiPower } from "../../src/devices/acpi/power.ts";

function device() {
  const events = { powerOff: 0, reset: 0 };
  const power = new AcpiPower({ onPowerOff: () => events.powerOff++, onReset: () => events.reset++ });
  return { power, events };
}

describe("ACPI power registers", () => {
  test("recognise the S5 sleep type the DSDT's \\_S5 announces", () => {
    expect(ACPI_S5_SLEEP_TYPE).toBe(TABLES_S5_SLEEP_TYPE);
  });

  test("S5 with SLP_EN (what Linux writes for power-off: (5 << 2) | 0x20) powers off", () => {
    const { power, events } = device();
    power.write(ACPI_SLEEP_CONTROL_OFFSET, Uint8Array.of((5 << 2) | 0x20));
    expect(events).toEqual({ powerOff: 1, reset: 0 });
  });

  test("a sleep type without SLP_EN, or another sleep state, does nothing", () => {
    const { power, events } = device();
    power.write(ACPI_SLEEP_CONTROL_OFFSET, Uint8Array.of(5 << 2));
    power.write(ACPI_SLEEP_CONTROL_OFFSET, Uint8Array.of((3 << 2) | 0x20));
    power.write(ACPI_SLEEP_CONTROL_OFFSET, Uint8Array.of(0x20));
    expect(events).toEqual({ powerOff: 0, reset: 0 });
  });

  test("the reset value on the reset register reboots; other values and other widths do nothing", () => {
    const { power, events } = device();
    power.write(ACPI_RESET_OFFSET, Uint8Array.of(ACPI_RESET_VALUE + 1));
    power.write(ACPI_RESET_OFFSET, Uint8Array.of(ACPI_RESET_VALUE, 0));
    power.write(ACPI_SLEEP_CONTROL_OFFSET, Uint8Array.of(ACPI_RESET_VALUE));
    expect(events).toEqual({ powerOff: 0, reset: 0 });
    power.write(ACPI_RESET_OFFSET, Uint8Array.of(ACPI_RESET_VALUE));
    expect(events).toEqual({ powerOff: 0, reset: 1 });
  });

  test("the sleep status register reads 0 (no wake event pending)", () => {
    const { power } = device();
    const data = Uint8Array.of(0xff);
    power.read(ACPI_SLEEP_STATUS_OFFSET, data);
    expect(data[0]).toBe(0);
  });
});

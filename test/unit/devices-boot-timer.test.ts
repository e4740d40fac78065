import { describe, expect, test } from "bun:test";
import { BOOT_TIMER_SPAN, BootTimer, createBootTimerState } from "../../src/devices/legacy/boot-timer.ts";

describe("BootTimer", () => {
  test("the magic byte 123 at offset 0 reports the boot once, across every instance sharing the state", () => {
    const state = createBootTimerState();
    let boots = 0;
    const onBoot = () => boots++;
    const first = new BootTimer(state, onBoot);
    const second = new BootTimer(state, onBoot); // another vCPU thread's instance
    first.write(0, Uint8Array.of(123));
    expect(boots).toBe(1);
    first.write(0, Uint8Array.of(123));
    second.write(0, Uint8Array.of(123));
    expect(boots).toBe(1);
  });

  test("a wider write whose first byte is 123 counts (as in Firecracker)", () => {
    let boots = 0;
    const timer = new BootTimer(createBootTimerState(), () => boots++);
    timer.write(0, Uint8Array.of(123, 0, 0, 0));
    expect(boots).toBe(1);
  });

  test.each([
    ["another value at offset 0", 0, Uint8Array.of(124)],
    ["123 at another offset", 1, Uint8Array.of(123)],
    ["123 at the last byte", BOOT_TIMER_SPAN - 1, Uint8Array.of(123)],
    ["an empty write", 0, new Uint8Array(0)],
    ["a negative offset", -1, Uint8Array.of(123)],
  ] as const)("%s does not report a boot", (_, offset, data) => {
    let boots = 0;
    const timer = new BootTimer(createBootTimerState(), () => boots++);
    expect(() => timer.write(offset, data)).not.toThrow();
    expect(boots).toBe(0);
  });

  test("reads return zeros", () => {
    const data = new Uint8Array(8).fill(0xff);
    new BootTimer(createBootTimerState(), () => {}).read(0, data);
    expect([...data]).toEqual(new Array(8).fill(0));
  });
});

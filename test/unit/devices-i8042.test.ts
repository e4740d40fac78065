import { describe, expect, test } from "bun:test";
import { Bus } from "../../src/devices/bus.ts";
import { I8042, I8042_SPAN } from "../../src/devices/legacy/i8042.ts";

function controllerOnBus() {
  let resets = 0;
  const bus = new Bus();
  bus.insert(0x60, I8042_SPAN, new I8042(() => resets++), "i8042");
  const inb = (port: number) => {
    const data = new Uint8Array(1);
    expect(bus.read(port, data)).toBe(true);
    return data[0]!;
  };
  const outb = (port: number, value: number) => expect(bus.write(port, Uint8Array.of(value))).toBe(true);
  return { bus, inb, outb, resets: () => resets };
}

describe("I8042", () => {
  test("command 0xFE on port 0x64 requests a reset, each time it is written", () => {
    const { outb, resets } = controllerOnBus();
    outb(0x64, 0xfe);
    expect(resets()).toBe(1);
    outb(0x64, 0xfe);
    expect(resets()).toBe(2);
  });

  test("status reads 0 (nothing to read, ready for commands) and data reads 0", () => {
    const { inb } = controllerOnBus();
    expect(inb(0x64)).toBe(0);
    expect(inb(0x60)).toBe(0);
  });

  test.each([
    ["another command on 0x64", 0x64, 0x20],
    ["0xFE on the data port", 0x60, 0xfe],
    ["0xFE on a port between them", 0x62, 0xfe],
  ] as const)("%s is harmless", (_, port, value) => {
    const { outb, inb, resets } = controllerOnBus();
    outb(port, value);
    expect(resets()).toBe(0);
    expect(inb(0x64)).toBe(0);
  });

  test.each([2, 4])("a %d-byte access does nothing and reads as an empty bus", (size) => {
    let resets = 0;
    const controller = new I8042(() => resets++);
    controller.write(4, new Uint8Array(size).fill(0xfe));
    expect(resets).toBe(0);
    const data = new Uint8Array(size);
    controller.read(4, data);
    expect([...data]).toEqual(new Array(size).fill(0xff));
  });

  test.each([5, -1, 4.5, Number.NaN])("offset %p called directly neither throws nor resets", (offset) => {
    let resets = 0;
    const controller = new I8042(() => resets++);
    const data = Uint8Array.of(0xfe);
    expect(() => controller.write(offset, data)).not.toThrow();
    expect(() => controller.read(offset, data)).not.toThrow();
    expect(data[0]).toBe(0xff);
    expect(resets).toBe(0);
  });

  test("an access reaching port 0x65 is not the controller's", () => {
    const { bus } = controllerOnBus();
    expect(bus.read(0x64, new Uint8Array(2))).toBe(false);
  });
});

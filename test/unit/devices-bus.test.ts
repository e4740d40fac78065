import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Bus, BusError, type BusDevice } from "../../src/devices/bus.ts";

/** Records every access and answers reads with its tag byte. */
class ProbeDevice implements BusDevice {
  readonly accesses: string[] = [];
  constructor(private readonly tag: number) {}
  read(offset: number, data: Uint8Array): void {
    this.accesses.push(`r${offset}/${data.length}`);
    data.fill(this.tag);
  }
  write(offset: number, data: Uint8Array): void {
    this.accesses.push(`w${offset}/${data.length}:${[...data].join(",")}`);
  }
}

function busWithTwoDevices() {
  // A gap between the two devices, and the higher one inserted first so ordering is the bus's job.
  const bus = new Bus();
  const serial = new ProbeDevice(0xaa);
  const low = new ProbeDevice(0xbb);
  bus.insert(0x3f8, 8, serial, "serial");
  bus.insert(0x100, 0x10, low, "low");
  return { bus, low, serial };
}

describe("Bus", () => {
  test("hands the device its offset, not the absolute address, at the first and last byte", () => {
    const { bus, serial } = busWithTwoDevices();
    const data = new Uint8Array(1);
    expect(bus.read(0x3f8, data)).toBe(true);
    expect(data[0]).toBe(0xaa);
    expect(bus.write(0x3ff, Uint8Array.of(7))).toBe(true);
    expect(serial.accesses).toEqual(["r0/1", "w7/1:7"]);
  });

  test("a wide access that fits exactly is delivered whole", () => {
    const { bus, low } = busWithTwoDevices();
    expect(bus.read(0x108, new Uint8Array(8))).toBe(true);
    expect(low.accesses).toEqual(["r8/8"]);
  });

  test.each([
    ["below every device", 0x0ff, 1],
    ["in the gap between devices", 0x200, 1],
    ["one past the end of a device", 0x110, 1],
    ["one past the last device", 0x400, 1],
    ["starting on the last byte but running past the end", 0x3ff, 2],
    ["starting inside but 8 wide past the end", 0x10c, 8],
    ["at a negative address", -1, 1],
    ["at a fractional address", 0x3f8 + 0.5, 1],
    ["of zero size", 0x3f8, 0],
  ] as const)("an access %s is not covered and reaches no device", (_, address, size) => {
    const { bus, low, serial } = busWithTwoDevices();
    const data = new Uint8Array(size).fill(0x55);
    expect(bus.read(address, data)).toBe(false);
    expect(bus.write(address, data)).toBe(false);
    expect([...data].every((b) => b === 0x55)).toBe(true);
    expect(low.accesses).toEqual([]);
    expect(serial.accesses).toEqual([]);
  });

  test("an empty bus covers nothing", () => {
    expect(new Bus().read(0, new Uint8Array(1))).toBe(false);
  });

  test("adjacent ranges are allowed and each gets its own accesses", () => {
    const bus = new Bus();
    const a = new ProbeDevice(1);
    const b = new ProbeDevice(2);
    bus.insert(0x60, 4, a, "a");
    bus.insert(0x64, 4, b, "b");
    const data = new Uint8Array(1);
    bus.read(0x63, data);
    expect(data[0]).toBe(1);
    bus.read(0x64, data);
    expect(data[0]).toBe(2);
    // Straddling the boundary belongs to neither.
    expect(bus.read(0x63, new Uint8Array(2))).toBe(false);
  });

  test("finds the right device among many (binary search over sorted ranges)", () => {
    const bus = new Bus();
    const devices = Array.from({ length: 100 }, (_, i) => new ProbeDevice(i));
    // Insert in a scrambled order.
    for (let k = 0; k < 100; k++) {
      const i = (k * 37) % 100;
      bus.insert(i * 0x1000, 0x800, devices[i]!, `dev${i}`);
    }
    const data = new Uint8Array(1);
    for (let i = 0; i < 100; i++) {
      expect(bus.read(i * 0x1000 + 0x7ff, data)).toBe(true);
      expect(data[0]).toBe(i);
      expect(bus.read(i * 0x1000 + 0x800, data)).toBe(false);
    }
  });

  test("rejects a zero-length device", () => {
    const error = catchBusError(() => new Bus().insert(0x1000, 0, new ProbeDevice(0), "empty"));
    expect(error.kind).toBe("zero-length");
    expect(error.message).toContain("empty");
  });

  test.each([
    ["a negative base", -1, 8],
    ["a fractional length", 0, 1.5],
    ["an end beyond 2^53", Number.MAX_SAFE_INTEGER, 2],
  ] as const)("rejects %s", (_, base, length) => {
    expect(catchBusError(() => new Bus().insert(base, length, new ProbeDevice(0), "bad")).kind).toBe("bad-range");
  });

  test.each([
    ["the same range", 0x3f8, 8],
    ["the last byte of the existing device", 0x3ff, 1],
    ["a range ending on its first byte", 0x3f0, 9],
    ["a range inside it", 0x3fa, 2],
    ["a range enclosing it", 0x300, 0x200],
  ] as const)("rejects an overlap with %s, naming both devices", (_, base, length) => {
    const { bus } = busWithTwoDevices();
    const error = catchBusError(() => bus.insert(base, length, new ProbeDevice(0), "intruder"));
    expect(error.kind).toBe("overlap");
    expect(error.message).toContain("intruder");
    expect(error.message).toContain("serial [0x3f8, 0x400)");
  });

  test("a rejected insert leaves the bus unchanged", () => {
    const { bus } = busWithTwoDevices();
    catchBusError(() => bus.insert(0x3f8, 8, new ProbeDevice(9), "dup"));
    const data = new Uint8Array(1);
    bus.read(0x3f8, data);
    expect(data[0]).toBe(0xaa);
  });
});

describe("device isolation", () => {
  // Devices get interrupts through an injected interface so they run (and are tested) without KVM. They may make
  // plain system calls through src/ffi (eventfds, fallocate): those work on any Linux, with or without /dev/kvm.
  test("nothing under src/devices imports bun:ffi or src/kvm", () => {
    const root = join(import.meta.dir, "../../src/devices");
    const files = readdirSync(root, { recursive: true, encoding: "utf8" }).filter((f) => f.endsWith(".ts"));
    expect(files.length).toBeGreaterThan(0);
    const offenders = files.filter((file) => {
      const source = readFileSync(join(root, file), "utf8");
      // kvm/struct.ts is only the typed binary-layout helper (devices use it for their config spaces), not KVM.
      const kvmImports = [...source.matchAll(/from\s+["']([./]*\/kvm\/[^"']*)["']/g)].filter((m) => !m[1]!.endsWith("/kvm/struct.ts"));
      return kvmImports.length > 0 || /from\s+["']bun:ffi["']/.test(source) || /import\(\s*["']bun:ffi/.test(source);
    });
    expect(offenders).toEqual([]);
  });
});

function catchBusError(action: () => void): BusError {
  try {
    action();
  } catch (error) {
    if (error instanceof BusError) return error;
    throw error;
  }
  throw new Error("expected a BusError");
}

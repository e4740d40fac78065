import { describe, expect, test } from "bun:test";
import { Bus } from "../../src/devices/bus.ts";
import {
  I8042,
  I8042_BUFFER_CAPACITY,
  I8042_SPAN,
  I8042_STATE_BYTES,
  createI8042State,
  restoreI8042State,
  type I8042State,
} from "../../src/devices/legacy/i8042.ts";

const STATUS_OUTPUT_FULL = 0x01;
const CTRL_ALT_DEL_SET2 = [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14];

function controllerOnBus(state: I8042State = createI8042State()) {
  let resets = 0;
  let interrupts = 0;
  const bus = new Bus();
  const device = new I8042(state, { trigger: () => interrupts++ }, () => resets++);
  bus.insert(0x60, I8042_SPAN, device, "i8042");
  const inb = (port: number) => {
    const data = new Uint8Array(1);
    expect(bus.read(port, data)).toBe(true);
    return data[0]!;
  };
  const outb = (port: number, value: number) => expect(bus.write(port, Uint8Array.of(value))).toBe(true);
  /** What Linux's i8042_command does: write the command, then poll status for each reply byte. */
  const command = (cmd: number, param?: number): number[] => {
    outb(0x64, cmd);
    if (param !== undefined) outb(0x60, param);
    const replies: number[] = [];
    while (inb(0x64) & STATUS_OUTPUT_FULL) replies.push(inb(0x60));
    return replies;
  };
  const drain = () => {
    const bytes: number[] = [];
    while (inb(0x64) & STATUS_OUTPUT_FULL) bytes.push(inb(0x60));
    return bytes;
  };
  return { bus, device, state, inb, outb, command, drain, resets: () => resets, interrupts: () => interrupts };
}

describe("I8042 controller", () => {
  test("command 0xFE on port 0x64 requests a reset, each time it is written", () => {
    const { outb, resets } = controllerOnBus();
    outb(0x64, 0xfe);
    expect(resets()).toBe(1);
    outb(0x64, 0xfe);
    expect(resets()).toBe(2);
  });

  test("at power-on nothing waits to be read, the keyboard is unlocked and data reads 0", () => {
    const { inb } = controllerOnBus();
    expect(inb(0x64)).toBe(0x10);
    expect(inb(0x60)).toBe(0);
  });

  test("the configuration byte reads back (0x20) with keyboard interrupt on and translation off, and is writable (0x60)", () => {
    const { command, inb } = controllerOnBus();
    const [config] = command(0x20);
    expect(config! & 0x01).toBe(0x01);
    expect(config! & 0x40).toBe(0);
    expect(command(0x60, 0x45)).toEqual([]);
    expect(command(0x20)).toEqual([0x45]);
    // The system flag in status follows the configuration byte's.
    expect(inb(0x64) & 0x04).toBe(0x04);
  });

  test("the probe Linux runs gets its answers at once: self-test 0x55, keyboard test 0x00, no AUX port", () => {
    const { command } = controllerOnBus();
    expect(command(0xaa)).toEqual([0x55]);
    expect(command(0xab)).toEqual([0x00]);
    // AUX loop-back comes back as keyboard data (Linux checks the AUX status bit and gives up), AUX test says "clock stuck".
    const { inb, outb } = controllerOnBus();
    outb(0x64, 0xd3);
    outb(0x60, 0x5a);
    expect(inb(0x64) & 0x21).toBe(0x01);
    expect(inb(0x60)).toBe(0x5a);
    expect(command(0xa9)).toEqual([0x02]);
  });

  test("output port reads and writes (0xD0/0xD1), keyboard disable/enable (0xAD/0xAE) show in the configuration byte", () => {
    const { command } = controllerOnBus();
    expect(command(0xd0)).toEqual([0x03]);
    command(0xd1, 0x01);
    expect(command(0xd0)).toEqual([0x01]);
    command(0xad);
    expect(command(0x20)[0]! & 0x10).toBe(0x10);
    command(0xae);
    expect(command(0x20)[0]! & 0x10).toBe(0);
  });

  test("a parameter byte is not taken as a keyboard command, and 0xFE as a parameter does not reset", () => {
    const { command, resets, interrupts } = controllerOnBus();
    command(0x60, 0xfe);
    expect(resets()).toBe(0);
    expect(interrupts()).toBe(0);
    expect(command(0x20)).toEqual([0xfe]);
  });

  test("unknown controller commands are ignored", () => {
    const { command, resets } = controllerOnBus();
    for (const cmd of [0x00, 0x21, 0xa7, 0xa8, 0xc0, 0xe0, 0xf0, 0xff]) expect(command(cmd)).toEqual([]);
    expect(resets()).toBe(0);
  });
});

describe("I8042 keyboard", () => {
  test("keyboard commands are acknowledged with an interrupt; identify answers MF2, reset passes, echo echoes", () => {
    const { outb, drain, interrupts } = controllerOnBus();
    outb(0x60, 0xf4);
    expect(interrupts()).toBe(1);
    expect(drain()).toEqual([0xfa]);
    outb(0x60, 0xf2);
    expect(drain()).toEqual([0xfa, 0xab, 0x83]);
    outb(0x60, 0xff);
    expect(drain()).toEqual([0xfa, 0xaa]);
    outb(0x60, 0xee);
    expect(drain()).toEqual([0xee]);
  });

  test("reading a byte while more are queued raises the interrupt again, so an interrupt handler reading one byte sees them all", () => {
    const { outb, inb, interrupts } = controllerOnBus();
    outb(0x60, 0xf2);
    expect(interrupts()).toBe(1);
    inb(0x60);
    expect(interrupts()).toBe(2);
    inb(0x60);
    expect(interrupts()).toBe(3);
    inb(0x60); // the last byte: nothing left, no interrupt
    expect(interrupts()).toBe(3);
  });

  test("Ctrl-Alt-Del is typed in scan-code set 2, pressed then released, with an interrupt", () => {
    const { device, drain, interrupts } = controllerOnBus();
    expect(device.pressCtrlAltDel()).toBe("queued");
    expect(interrupts()).toBe(1);
    expect(drain()).toEqual(CTRL_ALT_DEL_SET2);
  });

  test("with the keyboard interrupt off in the configuration byte, keys queue without an interrupt", () => {
    const { device, command, drain, interrupts } = controllerOnBus();
    command(0x60, 0x04);
    expect(device.pressCtrlAltDel()).toBe("queued");
    expect(interrupts()).toBe(0);
    expect(drain()).toEqual(CTRL_ALT_DEL_SET2);
  });

  test("a guest that never reads its keyboard gets no half sequence: the second press finds the buffer full", () => {
    const { device, drain } = controllerOnBus();
    expect(device.pressCtrlAltDel()).toBe("queued");
    expect(device.pressCtrlAltDel()).toBe("buffer-full");
    expect(drain()).toEqual(CTRL_ALT_DEL_SET2);
    expect(device.pressCtrlAltDel()).toBe("queued");
  });

  test("every thread's device sees one shared state", () => {
    const state = createI8042State();
    const vcpuSide = controllerOnBus(state);
    const hostSide = controllerOnBus(state);
    hostSide.device.pressCtrlAltDel();
    expect(vcpuSide.drain()).toEqual(CTRL_ALT_DEL_SET2);
  });
});

describe("I8042 bad accesses and state", () => {
  test.each([2, 4])("a %d-byte access does nothing and reads as an empty bus", (size) => {
    const { device, resets } = controllerOnBus();
    device.write(4, new Uint8Array(size).fill(0xfe));
    expect(resets()).toBe(0);
    const data = new Uint8Array(size);
    device.read(4, data);
    expect([...data]).toEqual(new Array(size).fill(0xff));
  });

  test.each([5, -1, 4.5, Number.NaN, 2])("offset %p called directly neither throws nor resets", (offset) => {
    const { device, resets } = controllerOnBus();
    const data = Uint8Array.of(0xfe);
    expect(() => device.write(offset, data)).not.toThrow();
    expect(() => device.read(offset, data)).not.toThrow();
    expect(data[0]).toBe(0xff);
    expect(resets()).toBe(0);
  });

  test("an access reaching port 0x65 is not the controller's", () => {
    const { bus } = controllerOnBus();
    expect(bus.read(0x64, new Uint8Array(2))).toBe(false);
  });

  test("saved state restores: configuration, queued keys and all", () => {
    const original = controllerOnBus();
    original.command(0x60, 0x47);
    original.device.pressCtrlAltDel();
    const saved = new Uint8Array(original.state.buffer).slice();
    const state = createI8042State();
    restoreI8042State(state, saved);
    const restored = controllerOnBus(state);
    expect(restored.drain()).toEqual(CTRL_ALT_DEL_SET2);
    expect(restored.command(0x20)).toEqual([0x47]);
  });

  test("hostile saved state is forced into range: a held lock, a huge queue, out-of-range indexes", () => {
    const saved = new Int32Array(I8042_STATE_BYTES / 4).fill(0x7fffffff);
    saved[0] = 1; // the lock word, as if saved while held
    const state = createI8042State();
    restoreI8042State(state, new Uint8Array(saved.buffer));
    const restored = controllerOnBus(state);
    const bytes = restored.drain();
    expect(bytes.length).toBe(I8042_BUFFER_CAPACITY);
    for (const byte of bytes) expect(byte).toBeLessThanOrEqual(0xff);
    expect(restored.inb(0x64) & STATUS_OUTPUT_FULL).toBe(0);
  });

  test("saved state of the wrong size is refused", () => {
    expect(() => restoreI8042State(createI8042State(), new Uint8Array(I8042_STATE_BYTES + 4))).toThrow(/i8042 state is/);
  });
});

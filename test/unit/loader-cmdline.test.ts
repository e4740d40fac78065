import { afterAll, describe, expect, test } from "bun:test";
import { CmdlineError, DEFAULT_CMDLINE_MAX_LENGTH, KernelCmdline, writeCmdline } from "../../src/loader/cmdline.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";

describe("kernel command line", () => {
  test("joins keys and values with spaces and quotes values that contain spaces", () => {
    const cmdline = new KernelCmdline().add("console", "ttyS0").add("reboot", "k").add("panic", "1").add("quiet").add("init.msg", "hello world");
    expect(cmdline.toString()).toBe('console=ttyS0 reboot=k panic=1 quiet init.msg="hello world"');
    expect([...cmdline.toBytes()].at(-1)).toBe(0);
    expect(cmdline.toBytes().byteLength).toBe(cmdline.length + 1);
  });

  test("formats virtio-mmio devices as linux-loader does", () => {
    const cmdline = new KernelCmdline()
      .addVirtioMmioDevice(0x1000, 0xc0000000, 5)
      .addVirtioMmioDevice(0x200000, 0xd0001000, 6, 2)
      .addVirtioMmioDevice(0x1234, 0x10, 7);
    expect(cmdline.toString()).toBe(
      "virtio_mmio.device=4K@0xc0000000:5 virtio_mmio.device=2M@0xd0001000:6:2 virtio_mmio.device=4660@0x10:7",
    );
  });

  test("rejects NUL, control characters, non-ASCII and malformed keys, naming the piece", () => {
    const cmdline = new KernelCmdline();
    expect(() => cmdline.add("root", "/dev/vda\0evil")).toThrow(/value of "root" contains a NUL byte/);
    expect(() => cmdline.add("a\nb")).toThrow(/U\+000a/);
    expect(() => cmdline.add("name", "café")).toThrow(/U\+00e9; only printable ASCII/);
    expect(() => cmdline.add("a=b")).toThrow(/must be non-empty and contain no spaces, '=' or '"'/);
    expect(() => cmdline.add("")).toThrow(CmdlineError);
    expect(() => cmdline.add("x", 'say "hi"')).toThrow(/contains '"'/);
    expect(() => cmdline.addVirtioMmioDevice(0, 0x1000, 5)).toThrow(/size must not be 0/);
    expect(() => cmdline.addVirtioMmioDevice(0x1000, -1, 5)).toThrow(/base -1 must be a non-negative integer/);
    expect(cmdline.toString()).toBe(""); // nothing half-added
  });

  test("enforces the kernel's length limit, counting separators", () => {
    expect(new KernelCmdline().maxLength).toBe(DEFAULT_CMDLINE_MAX_LENGTH);
    const cmdline = new KernelCmdline(10).add("abcd").add("efgh"); // "abcd efgh" = 9
    expect(() => cmdline.add("i")).toThrow(/makes the command line 11 bytes; the kernel accepts at most 10/);
    expect(cmdline.toString()).toBe("abcd efgh");
    expect(() => new KernelCmdline(2047).add("x".repeat(2048))).toThrow(CmdlineError);
  });

  const memory = GuestMemory.create([{ guestAddress: 0, size: 1 << 20 }]);
  afterAll(() => memory.dispose());

  test("writes the NUL-terminated line into guest memory", () => {
    const written = writeCmdline(memory, new KernelCmdline().add("console", "ttyS0"), 0x20000);
    expect(written).toEqual({ address: 0x20000, size: 14 });
    expect(new TextDecoder().decode(memory.read(0x20000, 14))).toBe("console=ttyS0\0");
  });
});

import { afterAll, describe, expect, test } from "bun:test";
import { KernelFormatError } from "../../src/loader/errors.ts";
import { DEFAULT_INITRD_ADDR_MAX, loadInitrd, placeInitrd } from "../../src/loader/initrd.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";

const MiB = 1 << 20;

describe("initrd placement", () => {
  test("goes as high as low RAM allows, page aligned", () => {
    expect(placeInitrd({ size: 0x1800, lowRamEnd: 64 * MiB, kernelEnd: 32 * MiB })).toBe(64 * MiB - 0x2000);
    expect(placeInitrd({ size: MiB, lowRamEnd: 64 * MiB, kernelEnd: 32 * MiB })).toBe(63 * MiB);
  });

  test("respects initrd_addr_max (inclusive) and its default", () => {
    expect(placeInitrd({ size: 0x1000, lowRamEnd: 3 * 1024 * MiB, kernelEnd: 32 * MiB, initrdAddrMax: 0x7fffffff })).toBe(0x7ffff000);
    expect(placeInitrd({ size: 0x1000, lowRamEnd: 3 * 1024 * MiB, kernelEnd: 32 * MiB })).toBe(DEFAULT_INITRD_ADDR_MAX + 1 - 0x1000);
  });

  test("refuses an initrd that would overlap the kernel", () => {
    expect(() => placeInitrd({ size: 40 * MiB, lowRamEnd: 64 * MiB, kernelEnd: 32 * MiB })).toThrow(
      /initrd of 41943040 bytes does not fit between the kernel's end 0x2000000 and 0x4000000/,
    );
    expect(() => placeInitrd({ size: 0, lowRamEnd: 64 * MiB, kernelEnd: 32 * MiB })).toThrow(KernelFormatError);
  });

  const memory = GuestMemory.create([{ guestAddress: 0, size: 8 * MiB }]);
  afterAll(() => memory.dispose());

  test("copies the initrd to its place", () => {
    const initrd = Uint8Array.from({ length: 5000 }, (_, i) => i & 0xff);
    const placed = loadInitrd(memory, initrd, { lowRamEnd: 8 * MiB, kernelEnd: 2 * MiB });
    expect(placed).toEqual({ address: 8 * MiB - 0x2000, size: 5000 });
    expect([...memory.read(placed.address, 5000)]).toEqual([...initrd]);
  });
});

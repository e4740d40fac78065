import { describe, expect, test } from "bun:test";
import * as layout from "../../src/arch/x86_64/layout.ts";
import { E820_RAM, E820_RESERVED, e820Entries, guestRamRegions, lowRamEnd, MemoryLayoutError } from "../../src/arch/x86_64/memory-map.ts";

const { MiB, GiB } = layout;

describe("x86-64 guest memory map", () => {
  test("a small guest is one region from 0", () => {
    expect(guestRamRegions(256 * MiB)).toEqual([{ guestAddress: 0, size: 256 * MiB }]);
    expect(e820Entries(256 * MiB)).toEqual([
      { address: 0, size: 0x9fc00, type: E820_RAM },
      { address: 0x9fc00, size: 0x100000 - 0x9fc00, type: E820_RESERVED },
      { address: 0x100000, size: 256 * MiB - 0x100000, type: E820_RAM },
    ]);
  });

  test("RAM beyond the MMIO gap continues at 4 GiB", () => {
    const regions = guestRamRegions(4 * GiB);
    expect(regions).toEqual([
      { guestAddress: 0, size: 3 * GiB },
      { guestAddress: 4 * GiB, size: GiB },
    ]);
    expect(lowRamEnd(4 * GiB)).toBe(layout.MMIO_GAP_START);
    const e820 = e820Entries(4 * GiB);
    expect(e820.at(-2)).toEqual({ address: 0x100000, size: 3 * GiB - 0x100000, type: E820_RAM });
    expect(e820.at(-1)).toEqual({ address: 4 * GiB, size: GiB, type: E820_RAM });
    // usable RAM in the map adds up to what was asked for, minus the reserved legacy hole
    const usable = e820.filter((e) => e.type === E820_RAM).reduce((n, e) => n + e.size, 0);
    expect(usable).toBe(4 * GiB - (0x100000 - 0x9fc00));
  });

  test("exactly 3 GiB fills the space below the gap and nothing more", () => {
    expect(guestRamRegions(3 * GiB)).toEqual([{ guestAddress: 0, size: 3 * GiB }]);
  });

  test("rejects sizes that are too small or not whole pages", () => {
    expect(() => guestRamRegions(16 * MiB)).toThrow(MemoryLayoutError);
    expect(() => guestRamRegions(16 * MiB)).toThrow(/must be between 32 MiB/);
    expect(() => e820Entries(64 * MiB + 100)).toThrow(/not a multiple of the 4096-byte page size/);
    expect(() => guestRamRegions(Number.NaN)).toThrow(MemoryLayoutError);
  });

  test("fixed addresses do not collide", () => {
    const claims: [string, number, number][] = [
      ["GDT", layout.BOOT_GDT_ADDRESS, layout.BOOT_GDT_MAX_ENTRIES * 8],
      ["IDT", layout.BOOT_IDT_ADDRESS, 8],
      ["PVH start info + modules + memmap", layout.PVH_INFO_ADDRESS, 0x1000],
      ["zero page", layout.ZERO_PAGE_ADDRESS, 0x1000],
      ["stack", layout.BOOT_STACK_POINTER - 0x100, 0x100],
      ["PML4", layout.PML4_ADDRESS, 0x1000],
      ["PDPTE", layout.PDPTE_ADDRESS, 0x1000],
      ["PDE", layout.PDE_ADDRESS, 0x1000],
      ["cmdline", layout.CMDLINE_ADDRESS, 0x10000],
      ["MP table", layout.MPTABLE_ADDRESS, 0x100000 - layout.MPTABLE_ADDRESS],
    ];
    const sorted = [...claims].sort((a, b) => a[1] - b[1]);
    for (let i = 1; i < sorted.length; i++) {
      const [before, start, size] = sorted[i - 1]!;
      expect(`${before} ends at ${start + size <= sorted[i]![1] ? "or below" : "above"} ${sorted[i]![0]}`).toBe(
        `${before} ends at or below ${sorted[i]![0]}`,
      );
    }
    expect(layout.VIRTIO_MMIO_BASE + layout.VIRTIO_MMIO_WINDOW_SIZE).toBeLessThanOrEqual(layout.IOAPIC_ADDRESS);
    expect(layout.KVM_TSS_ADDRESS).toBeGreaterThan(layout.LAPIC_ADDRESS);
    expect(layout.KVM_IDENTITY_MAP_ADDRESS + layout.PAGE_SIZE).toBe(layout.KVM_TSS_ADDRESS);
  });
});

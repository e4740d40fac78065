/**
 * Guest RAM for a given size: the regions to back with memory, and the E820
 * map that tells the kernel which of those bytes it may use.
 */
import type { RegionSpec } from "../../memory/guest-memory.ts";
import { EBDA_ADDRESS, HIGH_RAM_START, HIMEM_ADDRESS, MiB, MMIO_GAP_START, PAGE_SIZE } from "./layout.ts";

/** E820 types from the ACPI spec / Linux's <asm/e820.h>. */
export const E820_RAM = 1;
export const E820_RESERVED = 2;

export interface E820Entry {
  readonly address: number;
  readonly size: number;
  readonly type: typeof E820_RAM | typeof E820_RESERVED;
}

/**
 * Below this the kernel cannot even be loaded: an ELF vmlinux's first segment
 * sits at 16 MiB, and a bzImage decompresses itself to 16 MiB as well.
 */
export const MIN_GUEST_MEMORY = 32 * MiB;
/** Keeps every guest-physical address an exact JavaScript number with room to spare. */
export const MAX_GUEST_MEMORY = 1024 * 1024 * MiB;

export class MemoryLayoutError extends RangeError {
  override name = "MemoryLayoutError";
}

function validateMemorySize(memBytes: number): void {
  if (!Number.isSafeInteger(memBytes) || memBytes < MIN_GUEST_MEMORY || memBytes > MAX_GUEST_MEMORY) {
    throw new MemoryLayoutError(
      `guest memory size ${memBytes} must be between ${MIN_GUEST_MEMORY / MiB} MiB and ${MAX_GUEST_MEMORY / MiB} MiB`,
    );
  }
  if (memBytes % PAGE_SIZE !== 0) {
    throw new MemoryLayoutError(`guest memory size ${memBytes} is not a multiple of the ${PAGE_SIZE}-byte page size`);
  }
}

/** RAM below the 32-bit MMIO gap, and whatever does not fit there above 4 GiB. */
export function guestRamRegions(memBytes: number): RegionSpec[] {
  validateMemorySize(memBytes);
  const low = Math.min(memBytes, MMIO_GAP_START);
  const regions: RegionSpec[] = [{ guestAddress: 0, size: low }];
  if (memBytes > low) regions.push({ guestAddress: HIGH_RAM_START, size: memBytes - low });
  return regions;
}

/** The end of RAM below the gap: the ceiling for things that must stay 32-bit addressable (initrd). */
export function lowRamEnd(memBytes: number): number {
  return guestRamRegions(memBytes)[0]!.size;
}

/**
 * The E820 map. 0x9fc00-0x100000 (EBDA, VGA hole, BIOS ROM) is reported
 * reserved rather than left out: the MP table lives there and the kernel must
 * neither allocate it nor mistake the hole for missing information.
 */
export function e820Entries(memBytes: number): E820Entry[] {
  const regions = guestRamRegions(memBytes);
  const entries: E820Entry[] = [
    { address: 0, size: EBDA_ADDRESS, type: E820_RAM },
    { address: EBDA_ADDRESS, size: HIMEM_ADDRESS - EBDA_ADDRESS, type: E820_RESERVED },
    { address: HIMEM_ADDRESS, size: regions[0]!.size - HIMEM_ADDRESS, type: E820_RAM },
  ];
  const high = regions[1];
  if (high) entries.push({ address: high.guestAddress, size: high.size, type: E820_RAM });
  return entries;
}

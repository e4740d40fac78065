/**
 * Where the initrd goes. Like other boot loaders, Volt puts it as high as the
 * kernel allows, so the kernel's own early allocations (which grow upwards
 * from its end) never run into it.
 */
import type { GuestMemoryView } from "../memory/guest-memory.ts";
import { hex, KernelFormatError } from "./errors.ts";

const PAGE_SIZE = 4096;
/** initrd_addr_max for kernels that do not state one (boot.rst: protocols before 2.03), and for ELF vmlinux. */
export const DEFAULT_INITRD_ADDR_MAX = 0x37ffffff;

export interface InitrdPlacement {
  readonly size: number;
  /** First byte past RAM below the 32-bit MMIO gap. */
  readonly lowRamEnd: number;
  /** First byte past the kernel (including its decompression area); the initrd must start at or above it. */
  readonly kernelEnd: number;
  /** The highest address the initrd's last byte may occupy (setup_header.initrd_addr_max). */
  readonly initrdAddrMax?: number;
}

/** The highest page-aligned start below min(initrd_addr_max + 1, lowRamEnd) that clears the kernel. */
export function placeInitrd(placement: InitrdPlacement): number {
  const { size, lowRamEnd, kernelEnd } = placement;
  if (!Number.isSafeInteger(size) || size <= 0) throw new KernelFormatError("malformed", `initrd size ${size} must be a positive number of bytes`);
  const ceiling = Math.min((placement.initrdAddrMax ?? DEFAULT_INITRD_ADDR_MAX) + 1, lowRamEnd);
  const address = Math.floor((ceiling - size) / PAGE_SIZE) * PAGE_SIZE;
  if (address < kernelEnd) {
    throw new KernelFormatError(
      "does-not-fit",
      `initrd of ${size} bytes does not fit between the kernel's end ${hex(kernelEnd)} and ${hex(ceiling)} (min of initrd_addr_max+1 and the end of low RAM)`,
    );
  }
  return address;
}

/** Places and copies the initrd; returns what boot_params / PVH start info must point at. */
export function loadInitrd(
  memory: GuestMemoryView,
  initrd: Uint8Array,
  placement: Omit<InitrdPlacement, "size">,
): { address: number; size: number } {
  const address = placeInitrd({ ...placement, size: initrd.byteLength });
  if (!memory.contains(address, initrd.byteLength)) {
    throw new KernelFormatError("does-not-fit", `initrd at ${hex(address)}+${hex(initrd.byteLength)} is outside guest RAM`);
  }
  memory.write(address, initrd);
  return { address, size: initrd.byteLength };
}

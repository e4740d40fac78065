/**
 * Xen's PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h), which
 * Linux also accepts on KVM: the kernel starts at its PHYS32_ENTRY note with
 * EBX pointing at struct hvm_start_info, which points at the command line,
 * the modules (the initrd) and the memory map. Version 1 added the memory map;
 * without it Linux would have to ask a Xen hypercall for one.
 */
import { defineStruct, StructView } from "../../kvm/struct.ts";
import type { GuestMemoryView } from "../../memory/guest-memory.ts";
import { PVH_INFO_ADDRESS, PVH_MEMMAP_ADDRESS, PVH_MODLIST_ADDRESS, ZERO_PAGE_ADDRESS } from "./layout.ts";
import type { E820Entry } from "./memory-map.ts";

export const hvm_start_info = defineStruct("struct hvm_start_info", 56, {
  magic: [0, "u32"],
  version: [4, "u32"],
  flags: [8, "u32"],
  nr_modules: [12, "u32"],
  modlist_paddr: [16, "u64"],
  cmdline_paddr: [24, "u64"],
  rsdp_paddr: [32, "u64"],
  memmap_paddr: [40, "u64"],
  memmap_entries: [48, "u32"],
  reserved: [52, "u32"],
});

export const hvm_modlist_entry = defineStruct("struct hvm_modlist_entry", 32, {
  paddr: [0, "u64"],
  size: [8, "u64"],
  cmdline_paddr: [16, "u64"],
  reserved: [24, "u64"],
});

export const hvm_memmap_table_entry = defineStruct("struct hvm_memmap_table_entry", 24, {
  addr: [0, "u64"],
  size: [8, "u64"],
  type: [16, "u32"],
  reserved: [20, "u32"],
});

/** XEN_HVM_START_MAGIC_VALUE. */
export const HVM_START_MAGIC = 0x336ec578;
export const HVM_START_INFO_VERSION = 1;

/** Room the layout leaves between the structures (they share one page below the zero page). */
export const PVH_MAX_MODULES = (PVH_MEMMAP_ADDRESS - PVH_MODLIST_ADDRESS) / hvm_modlist_entry.size;
export const PVH_MAX_MEMMAP_ENTRIES = Math.floor((ZERO_PAGE_ADDRESS - PVH_MEMMAP_ADDRESS) / hvm_memmap_table_entry.size);

export interface PvhModule {
  readonly address: number;
  readonly size: number;
  /** Address of the module's own NUL-terminated command line; 0 (none) by default. */
  readonly cmdlineAddress?: number;
}

export interface PvhStartInfoOptions {
  /** Address of the NUL-terminated kernel command line already in guest memory. */
  readonly cmdlineAddress: number;
  readonly memoryMap: readonly E820Entry[];
  /** Linux takes the first module as its initrd. */
  readonly modules?: readonly PvhModule[];
  /** The ACPI RSDP (0: none given; Linux then scans the BIOS area for one). */
  readonly rsdpAddress?: number;
}

export class PvhError extends RangeError {
  override name = "PvhError";
}

/** Writes hvm_start_info, the module list and the memory map; returns the address to put in EBX. */
export function writePvhStartInfo(memory: GuestMemoryView, options: PvhStartInfoOptions): number {
  const modules = options.modules ?? [];
  if (modules.length > PVH_MAX_MODULES) throw new PvhError(`${modules.length} PVH modules; the layout has room for ${PVH_MAX_MODULES}`);
  if (options.memoryMap.length > PVH_MAX_MEMMAP_ENTRIES) {
    throw new PvhError(`${options.memoryMap.length} PVH memory map entries; the layout has room for ${PVH_MAX_MEMMAP_ENTRIES}`);
  }

  modules.forEach((module, i) => {
    const entry = new StructView(hvm_modlist_entry)
      .set("paddr", BigInt(module.address))
      .set("size", BigInt(module.size))
      .set("cmdline_paddr", BigInt(module.cmdlineAddress ?? 0));
    memory.write(PVH_MODLIST_ADDRESS + i * hvm_modlist_entry.size, entry.bytes);
  });
  options.memoryMap.forEach((region, i) => {
    const entry = new StructView(hvm_memmap_table_entry)
      .set("addr", BigInt(region.address))
      .set("size", BigInt(region.size))
      .set("type", region.type); // E820 types are what the PVH ABI uses
    memory.write(PVH_MEMMAP_ADDRESS + i * hvm_memmap_table_entry.size, entry.bytes);
  });

  const info = new StructView(hvm_start_info)
    .set("magic", HVM_START_MAGIC)
    .set("version", HVM_START_INFO_VERSION)
    .set("nr_modules", modules.length)
    .set("modlist_paddr", modules.length > 0 ? BigInt(PVH_MODLIST_ADDRESS) : 0n)
    .set("cmdline_paddr", BigInt(options.cmdlineAddress))
    .set("rsdp_paddr", BigInt(options.rsdpAddress ?? 0))
    .set("memmap_paddr", BigInt(PVH_MEMMAP_ADDRESS))
    .set("memmap_entries", options.memoryMap.length);
  memory.write(PVH_INFO_ADDRESS, info.bytes);
  return PVH_INFO_ADDRESS;
}

/**
 * hvm_start_info is Xen ABI that Debian's linux-libc-dev does not ship, so
 * the C side is declared here from Xen's public header
 * (xen/include/public/arch-x86/hvm/start_info.h, which documents each
 * member's offset) and compiled with the natural x86-64 alignment.
 */
import { afterAll, describe, expect, test } from "bun:test";
import * as pvh from "../../src/arch/x86_64/pvh.ts";
import { hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, writePvhStartInfo } from "../../src/arch/x86_64/pvh.ts";
import { CMDLINE_ADDRESS, MiB, PVH_INFO_ADDRESS, PVH_MEMMAP_ADDRESS, PVH_MODLIST_ADDRESS } from "../../src/arch/x86_64/layout.ts";
import { e820Entries } from "../../src/arch/x86_64/memory-map.ts";
import { StructView } from "../../src/kvm/struct.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { cValues, layoutsOf, mismatches, tsExpectations } from "./c-abi.ts";

const XEN_START_INFO_H = `
#include <stdint.h>
#define XEN_HVM_START_MAGIC_VALUE 0x336ec578
struct hvm_start_info {
    uint32_t magic;             /* Contains the magic value 0x336ec578       */
    uint32_t version;           /* Version of this structure.                */
    uint32_t flags;             /* SIF_xxx flags.                            */
    uint32_t nr_modules;        /* Number of modules passed to the kernel.   */
    uint64_t modlist_paddr;     /* Physical address of an array of           */
                                /* hvm_modlist_entry.                        */
    uint64_t cmdline_paddr;     /* Physical address of the command line.     */
    uint64_t rsdp_paddr;        /* Physical address of the RSDP ACPI data    */
                                /* structure.                                */
    /* All following fields only present in version 1 and newer */
    uint64_t memmap_paddr;      /* Physical address of an array of           */
                                /* hvm_memmap_table_entry.                   */
    uint32_t memmap_entries;    /* Number of entries in the memmap table.    */
                                /* Value will be zero if there is no memory  */
                                /* map being provided.                       */
    uint32_t reserved;          /* Must be zero.                             */
};
struct hvm_modlist_entry {
    uint64_t paddr;             /* Physical address of the module.           */
    uint64_t size;              /* Size of the module in bytes.              */
    uint64_t cmdline_paddr;     /* Physical address of the command line.     */
    uint64_t reserved;
};
struct hvm_memmap_table_entry {
    uint64_t addr;              /* Base address of the memory region         */
    uint64_t size;              /* Size of the memory region in bytes        */
    uint32_t type;              /* Mapping type                              */
    uint32_t reserved;          /* Must be zero for Version 1.               */
};
`;

describe("hvm_start_info ABI matches Xen's documented layout", () => {
  const layouts = layoutsOf(pvh);
  const expected = tsExpectations(layouts, { XEN_HVM_START_MAGIC_VALUE: pvh.HVM_START_MAGIC });
  const actual = cValues({ includes: [], declarations: XEN_START_INFO_H }, [...expected.keys()]);

  test("every size and offset agrees with C", () => {
    expect(layouts.length).toBe(3);
    expect(mismatches(expected, actual)).toEqual([]);
  });

  test("the documented offsets hold (magic 0, memmap_paddr 40, size 56)", () => {
    expect(actual.get("offsetof(struct hvm_start_info, memmap_paddr)")).toBe(40);
    expect(actual.get("sizeof(struct hvm_start_info)")).toBe(56);
  });
});

describe("writePvhStartInfo", () => {
  const memory = GuestMemory.create([{ guestAddress: 0, size: 64 * MiB }]);
  afterAll(() => memory.dispose());

  test("writes start info, the initrd module and the memory map", () => {
    const memoryMap = e820Entries(64 * MiB);
    const address = writePvhStartInfo(memory, {
      cmdlineAddress: CMDLINE_ADDRESS,
      memoryMap,
      modules: [{ address: 0x3000000, size: 0x123000 }],
    });
    expect(address).toBe(PVH_INFO_ADDRESS);
    const info = new StructView(hvm_start_info, memory.read(address, hvm_start_info.size));
    expect(info.get("magic")).toBe(0x336ec578);
    expect(info.get("version")).toBe(1);
    expect(info.get("nr_modules")).toBe(1);
    expect(info.get("modlist_paddr")).toBe(BigInt(PVH_MODLIST_ADDRESS));
    expect(info.get("cmdline_paddr")).toBe(BigInt(CMDLINE_ADDRESS));
    expect(info.get("rsdp_paddr")).toBe(0n);
    expect(info.get("memmap_paddr")).toBe(BigInt(PVH_MEMMAP_ADDRESS));
    expect(info.get("memmap_entries")).toBe(memoryMap.length);

    const module = new StructView(hvm_modlist_entry, memory.read(PVH_MODLIST_ADDRESS, hvm_modlist_entry.size));
    expect([module.get("paddr"), module.get("size"), module.get("cmdline_paddr")]).toEqual([0x3000000n, 0x123000n, 0n]);
    const read = memoryMap.map((_, i) => {
      const entry = new StructView(hvm_memmap_table_entry, memory.read(PVH_MEMMAP_ADDRESS + i * 24, 24));
      return { address: Number(entry.get("addr")), size: Number(entry.get("size")), type: entry.get("type") };
    });
    expect(read).toEqual(memoryMap);
  });

  test("passes the ACPI RSDP address when there is one", () => {
    writePvhStartInfo(memory, { cmdlineAddress: CMDLINE_ADDRESS, memoryMap: [], rsdpAddress: 0xe0000 });
    const info = new StructView(hvm_start_info, memory.read(PVH_INFO_ADDRESS, hvm_start_info.size));
    expect(info.get("rsdp_paddr")).toBe(0xe0000n);
  });

  test("without modules the module list pointer is 0", () => {
    writePvhStartInfo(memory, { cmdlineAddress: CMDLINE_ADDRESS, memoryMap: [] });
    const info = new StructView(hvm_start_info, memory.read(PVH_INFO_ADDRESS, hvm_start_info.size));
    expect([info.get("nr_modules"), info.get("modlist_paddr")]).toEqual([0, 0n]);
  });

  test("refuses more entries than the layout has room for", () => {
    const many = Array.from({ length: pvh.PVH_MAX_MEMMAP_ENTRIES + 1 }, () => ({ address: 0, size: 0x1000, type: 1 as const }));
    expect(() => writePvhStartInfo(memory, { cmdlineAddress: 0, memoryMap: many })).toThrow(/PVH memory map entries; the layout has room for 160/);
  });
});

/**
 * struct boot_params and struct setup_header are ABI shared with every Linux
 * kernel: each size and offset is compared with <asm/bootparam.h>.
 */
import { afterAll, describe, expect, test } from "bun:test";
import * as bootParams from "../../src/arch/x86_64/boot-params.ts";
import { boot_e820_entry, boot_params, writeBootParams } from "../../src/arch/x86_64/boot-params.ts";
import { CMDLINE_ADDRESS, MiB, ZERO_PAGE_ADDRESS } from "../../src/arch/x86_64/layout.ts";
import { e820Entries } from "../../src/arch/x86_64/memory-map.ts";
import type { StructLayout } from "../../src/kvm/struct.ts";
import { StructView } from "../../src/kvm/struct.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { cValues, layoutsOf, mismatches, tsExpectations } from "./c-abi.ts";
import { buildBzImage } from "./loader-fixtures.ts";
import { parseBzImage } from "../../src/loader/bzimage.ts";

describe("boot_params ABI matches <asm/bootparam.h>", () => {
  const layouts = layoutsOf(bootParams);
  const constants = {
    LOADED_HIGH: bootParams.LOADED_HIGH,
    CAN_USE_HEAP: bootParams.CAN_USE_HEAP,
    XLF_KERNEL_64: bootParams.XLF_KERNEL_64,
    XLF_CAN_BE_LOADED_ABOVE_4G: bootParams.XLF_CAN_BE_LOADED_ABOVE_4G,
    E820_MAX_ENTRIES_ZEROPAGE: bootParams.E820_MAX_ENTRIES_ZEROPAGE,
    "offsetof(struct boot_params, hdr)": bootParams.SETUP_HEADER_OFFSET,
    "offsetof(struct boot_params, e820_table)": bootParams.E820_TABLE_OFFSET,
  };
  const expected = tsExpectations(layouts, constants);
  const actual = cValues({ includes: ["asm/bootparam.h"] }, [...expected.keys()]);

  test("covers boot_params, setup_header and boot_e820_entry", () => {
    expect(layouts.map((l) => l.cType).sort()).toEqual(["struct boot_e820_entry", "struct boot_params", "struct setup_header"]);
    expect(expected.size).toBeGreaterThan(150);
  });

  test("every size and offset agrees with C", () => {
    expect(mismatches(expected, actual)).toEqual([]);
  });

  test("a wrong offset is caught (the check can fail)", () => {
    const broken: StructLayout = {
      ...boot_params,
      fields: { ...boot_params.fields, "hdr.cmd_line_ptr": { offset: 0x22c, type: "u32" } },
    };
    expect(mismatches(tsExpectations([broken]), actual)).toContain(
      "offsetof(struct boot_params, hdr.cmd_line_ptr): TypeScript says 556, C says 552",
    );
  });
});

describe("writeBootParams", () => {
  const memory = GuestMemory.create([{ guestAddress: 0, size: 64 * MiB }]);
  afterAll(() => memory.dispose());
  const zeroPage = () => new StructView(boot_params, memory.read(ZERO_PAGE_ADDRESS, boot_params.size));

  test("fills the header, command line, initrd and E820 table", () => {
    memory.slice(ZERO_PAGE_ADDRESS, 4096).fill(0xee); // stale bytes must not survive
    const e820 = e820Entries(64 * MiB);
    writeBootParams(memory, {
      cmdline: { address: CMDLINE_ADDRESS, size: 20 },
      initrd: { address: 0x3f00000, size: 0x80000 },
      e820,
    });
    const params = zeroPage();
    expect(params.get("hdr.boot_flag")).toBe(0xaa55);
    expect(params.get("hdr.header")).toBe(0x53726448);
    expect(params.get("hdr.type_of_loader")).toBe(0xff);
    expect(params.get("hdr.cmd_line_ptr")).toBe(CMDLINE_ADDRESS);
    expect(params.get("ext_cmd_line_ptr")).toBe(0);
    expect(params.get("hdr.cmdline_size")).toBe(20);
    expect(params.get("hdr.ramdisk_image")).toBe(0x3f00000);
    expect(params.get("hdr.ramdisk_size")).toBe(0x80000);
    expect(params.get("hdr.kernel_alignment")).toBe(0x1000000);
    expect(params.get("sentinel")).toBe(0);
    expect(params.get("e820_entries")).toBe(e820.length);
    const table = memory.read(ZERO_PAGE_ADDRESS + bootParams.E820_TABLE_OFFSET, e820.length * boot_e820_entry.size);
    const read = e820.map((_, i) => {
      const entry = new StructView(boot_e820_entry, table.subarray(i * 20));
      return { address: Number(entry.get("addr")), size: Number(entry.get("size")), type: entry.get("type") };
    });
    expect(read).toEqual(e820);
  });

  test("copies a bzImage's own setup header and splits 64-bit addresses", () => {
    const { setupHeader } = parseBzImage(buildBzImage());
    writeBootParams(memory, {
      setupHeader,
      cmdline: { address: 0x1_2345_6000, size: 10 },
      e820: [],
    });
    const params = zeroPage();
    expect(params.get("hdr.version")).toBe(0x20f);
    expect(params.get("hdr.cmdline_size")).toBe(0x7ff); // the kernel's limit, left alone
    expect(params.get("hdr.type_of_loader")).toBe(0xff);
    expect(params.get("hdr.cmd_line_ptr")).toBe(0x2345_6000);
    expect(params.get("ext_cmd_line_ptr")).toBe(1);
  });

  test("points the kernel at the ACPI RSDP when there is one, and leaves the field 0 otherwise", () => {
    writeBootParams(memory, { cmdline: { address: CMDLINE_ADDRESS, size: 1 }, e820: [], rsdpAddress: 0xe0000 });
    expect(zeroPage().get("acpi_rsdp_addr")).toBe(0xe0000n);
    writeBootParams(memory, { cmdline: { address: CMDLINE_ADDRESS, size: 1 }, e820: [] });
    expect(zeroPage().get("acpi_rsdp_addr")).toBe(0n);
  });

  test("refuses more E820 entries than the zero page holds", () => {
    const e820 = Array.from({ length: 129 }, (_, i) => ({ address: i * 0x1000, size: 0x1000, type: 1 as const }));
    expect(() => writeBootParams(memory, { cmdline: { address: CMDLINE_ADDRESS, size: 1 }, e820 })).toThrow(
      /129 E820 entries; the zero page holds 128/,
    );
  });
});

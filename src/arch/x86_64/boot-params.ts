/**
 * The Linux x86 boot protocol's zero page (struct boot_params) and the setup
 * header inside it, as in <asm/bootparam.h>; test/unit/x86-boot-params.test.ts
 * compares every size and offset here with that header. Both structs are
 * packed, so many fields sit at odd offsets.
 */
import { defineStruct, embed, StructView } from "../../kvm/struct.ts";
import type { GuestMemoryView } from "../../memory/guest-memory.ts";
import { ZERO_PAGE_ADDRESS } from "./layout.ts";
import type { E820Entry } from "./memory-map.ts";

export const setup_header = defineStruct("struct setup_header", 123, {
  setup_sects: [0, "u8"],
  root_flags: [1, "u16"],
  syssize: [3, "u32"],
  ram_size: [7, "u16"],
  vid_mode: [9, "u16"],
  root_dev: [11, "u16"],
  boot_flag: [13, "u16"],
  jump: [15, "u16"],
  header: [17, "u32"],
  version: [21, "u16"],
  realmode_swtch: [23, "u32"],
  start_sys_seg: [27, "u16"],
  kernel_version: [29, "u16"],
  type_of_loader: [31, "u8"],
  loadflags: [32, "u8"],
  setup_move_size: [33, "u16"],
  code32_start: [35, "u32"],
  ramdisk_image: [39, "u32"],
  ramdisk_size: [43, "u32"],
  bootsect_kludge: [47, "u32"],
  heap_end_ptr: [51, "u16"],
  ext_loader_ver: [53, "u8"],
  ext_loader_type: [54, "u8"],
  cmd_line_ptr: [55, "u32"],
  initrd_addr_max: [59, "u32"],
  kernel_alignment: [63, "u32"],
  relocatable_kernel: [67, "u8"],
  min_alignment: [68, "u8"],
  xloadflags: [69, "u16"],
  cmdline_size: [71, "u32"],
  hardware_subarch: [75, "u32"],
  hardware_subarch_data: [79, "u64"],
  payload_offset: [87, "u32"],
  payload_length: [91, "u32"],
  setup_data: [95, "u64"],
  pref_address: [103, "u64"],
  init_size: [111, "u32"],
  handover_offset: [115, "u32"],
  kernel_info_offset: [119, "u32"],
});

export const boot_e820_entry = defineStruct("struct boot_e820_entry", 20, {
  addr: [0, "u64"],
  size: [8, "u64"],
  type: [16, "u32"],
});

/** Where the setup header sits, both in boot_params and in a bzImage file. */
export const SETUP_HEADER_OFFSET = 0x1f1;
export const E820_TABLE_OFFSET = 0x2d0;
export const E820_MAX_ENTRIES_ZEROPAGE = 128;

export const boot_params = defineStruct("struct boot_params", 4096, {
  tboot_addr: [0x058, "u64"],
  acpi_rsdp_addr: [0x070, "u64"],
  ext_ramdisk_image: [0x0c0, "u32"],
  ext_ramdisk_size: [0x0c4, "u32"],
  ext_cmd_line_ptr: [0x0c8, "u32"],
  cc_blob_address: [0x13c, "u32"],
  alt_mem_k: [0x1e0, "u32"],
  scratch: [0x1e4, "u32"],
  e820_entries: [0x1e8, "u8"],
  eddbuf_entries: [0x1e9, "u8"],
  edd_mbr_sig_buf_entries: [0x1ea, "u8"],
  kbd_status: [0x1eb, "u8"],
  secure_boot: [0x1ec, "u8"],
  sentinel: [0x1ef, "u8"],
  ...embed("hdr", SETUP_HEADER_OFFSET, setup_header),
  e820_table: [E820_TABLE_OFFSET, "u8", E820_MAX_ENTRIES_ZEROPAGE * boot_e820_entry.size],
});

/** "HdrS", little-endian, in setup_header.header. */
export const SETUP_HEADER_MAGIC = 0x53726448;
export const BOOT_FLAG_MAGIC = 0xaa55;
/** type_of_loader 0xff: "undefined" boot loader ID; Volt has no ID assigned. */
export const LOADER_TYPE_UNDEFINED = 0xff;

// loadflags and xloadflags bits
export const LOADED_HIGH = 1 << 0;
export const CAN_USE_HEAP = 1 << 7;
export const XLF_KERNEL_64 = 1 << 0;
export const XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1;

export interface GuestBuffer {
  readonly address: number;
  readonly size: number;
}

export interface BootParamsOptions {
  /**
   * The kernel's own setup header (a bzImage's bytes from 0x1f1). Absent for an
   * ELF vmlinux entered through the 64-bit protocol: a minimal header is made.
   */
  readonly setupHeader?: Uint8Array;
  /** The NUL-terminated command line already in guest memory; size counts the NUL. */
  readonly cmdline: GuestBuffer;
  readonly initrd?: GuestBuffer;
  readonly e820: readonly E820Entry[];
  /** Where the ACPI RSDP is, so the kernel need not scan for it (boot protocol 2.14+; older kernels scan). */
  readonly rsdpAddress?: number;
}

export class BootParamsError extends RangeError {
  override name = "BootParamsError";
}

/** Builds the zero page in a fresh buffer (so stale bytes never leak in) and writes it at ZERO_PAGE_ADDRESS. */
export function writeBootParams(memory: GuestMemoryView, options: BootParamsOptions): void {
  memory.write(ZERO_PAGE_ADDRESS, buildBootParams(options));
}

export function buildBootParams(options: BootParamsOptions): Uint8Array {
  const bytes = new Uint8Array(boot_params.size);
  const params = new StructView(boot_params, bytes);

  if (options.setupHeader) {
    if (options.setupHeader.byteLength > setup_header.size) {
      throw new BootParamsError(`setup header is ${options.setupHeader.byteLength} bytes; struct setup_header has ${setup_header.size}`);
    }
    bytes.set(options.setupHeader, SETUP_HEADER_OFFSET);
  } else {
    // What the kernel checks before trusting the header at all; cmdline_size is
    // otherwise the kernel's own limit and not a loader's to write.
    params.set("hdr.boot_flag", BOOT_FLAG_MAGIC);
    params.set("hdr.header", SETUP_HEADER_MAGIC);
    params.set("hdr.cmdline_size", options.cmdline.size);
    // The 64-bit entry expects to run where it was linked (16 MiB, LOAD_PHYSICAL_ADDR),
    // which is also its alignment.
    params.set("hdr.kernel_alignment", 0x100_0000);
  }
  params.set("hdr.type_of_loader", LOADER_TYPE_UNDEFINED);

  // 64-bit addresses are split: the low half in hdr, the high half in the ext_ fields.
  const [cmdLow, cmdHigh] = split64(options.cmdline.address, "command line address");
  params.set("hdr.cmd_line_ptr", cmdLow).set("ext_cmd_line_ptr", cmdHigh);
  if (options.initrd) {
    const [imageLow, imageHigh] = split64(options.initrd.address, "initrd address");
    const [sizeLow, sizeHigh] = split64(options.initrd.size, "initrd size");
    params.set("hdr.ramdisk_image", imageLow).set("ext_ramdisk_image", imageHigh);
    params.set("hdr.ramdisk_size", sizeLow).set("ext_ramdisk_size", sizeHigh);
  }

  if (options.rsdpAddress !== undefined) params.set("acpi_rsdp_addr", BigInt(options.rsdpAddress));

  if (options.e820.length > E820_MAX_ENTRIES_ZEROPAGE) {
    throw new BootParamsError(`${options.e820.length} E820 entries; the zero page holds ${E820_MAX_ENTRIES_ZEROPAGE}`);
  }
  params.set("e820_entries", options.e820.length);
  options.e820.forEach((entry, i) => {
    const offset = E820_TABLE_OFFSET + i * boot_e820_entry.size;
    new StructView(boot_e820_entry, bytes.subarray(offset, offset + boot_e820_entry.size))
      .set("addr", BigInt(entry.address))
      .set("size", BigInt(entry.size))
      .set("type", entry.type);
  });
  return bytes;
}

function split64(value: number, what: string): [low: number, high: number] {
  if (!Number.isSafeInteger(value) || value < 0) throw new BootParamsError(`${what} ${value} is not a valid guest address`);
  return [value % 2 ** 32, Math.floor(value / 2 ** 32)];
}

/**
 * bzImage: the Linux x86 boot protocol image (Documentation/arch/x86/boot.rst).
 * Volt skips the real-mode setup code and the 16/32-bit entry points: it loads
 * the protected-mode kernel at 1 MiB and enters it at the 64-bit entry
 * (load address + 0x200) with a zero page built from the file's setup header.
 */
import {
  BOOT_FLAG_MAGIC,
  LOADED_HIGH,
  SETUP_HEADER_MAGIC,
  SETUP_HEADER_OFFSET,
  setup_header,
  XLF_KERNEL_64,
} from "../arch/x86_64/boot-params.ts";
import { HIMEM_ADDRESS } from "../arch/x86_64/layout.ts";
import { StructView } from "../kvm/struct.ts";
import type { GuestMemoryView } from "../memory/guest-memory.ts";
import { detectCompression, type KernelCompression } from "./compression.ts";
import { hex, KernelFormatError } from "./errors.ts";

export interface BzImageKernel {
  /** Boot protocol version, e.g. 0x20f for 2.15. */
  readonly protocolVersion: number;
  /** Bytes of boot sector plus real-mode setup before the protected-mode kernel. */
  readonly setupSize: number;
  readonly protectedModeSize: number;
  /** Where the protected-mode kernel goes (1 MiB). */
  readonly loadAddress: number;
  /** The 64-bit entry point: load address + 0x200. */
  readonly entry64: number;
  /**
   * First byte past the memory the kernel claims before it reads the memory
   * map: it decompresses into init_size bytes from max(load address,
   * pref_address). Nothing (the initrd) may be placed below this.
   */
  readonly kernelEnd: number;
  readonly kernelAlignment: number;
  readonly relocatable: boolean;
  readonly prefAddress: number;
  readonly initSize: number;
  /** Highest address the initrd's last byte may occupy. */
  readonly initrdAddrMax: number;
  /** Longest command line the kernel accepts, without the terminating NUL. */
  readonly cmdlineSize: number;
  readonly payload: { readonly offset: number; readonly length: number; readonly compression: KernelCompression };
  /** The file's setup header (from 0x1f1 to its end), to copy into boot_params.hdr. */
  readonly setupHeader: Uint8Array;
}

/** Boot protocol 2.06 added cmdline_size; older kernels also cap the command line at 255 bytes. */
export const MIN_PROTOCOL_VERSION = 0x206;
const SETUP_HEADER_END = SETUP_HEADER_OFFSET + setup_header.size;
/** The 64-bit entry sits 0x200 bytes into the protected-mode kernel (boot.rst, "64-bit BOOT PROTOCOL"). */
const ENTRY_64_OFFSET = 0x200;

/** True if the file has the boot protocol's magic; parseBzImage then reports anything else wrong, truncation included. */
export function hasSetupHeader(bytes: Uint8Array): boolean {
  return bytes.byteLength >= 0x206 && readU32(bytes, 0x202) === SETUP_HEADER_MAGIC;
}

/** Parses and validates a bzImage; throws KernelFormatError naming the first problem. */
export function parseBzImage(bytes: Uint8Array): BzImageKernel {
  if (bytes.byteLength < SETUP_HEADER_END) {
    throw new KernelFormatError("truncated", `bzImage: setup header truncated (file is ${bytes.byteLength} bytes, the header ends at ${hex(SETUP_HEADER_END)})`);
  }
  const hdr = new StructView(setup_header, bytes.slice(SETUP_HEADER_OFFSET, SETUP_HEADER_END));
  if (hdr.get("header") !== SETUP_HEADER_MAGIC) {
    throw new KernelFormatError("not-a-kernel", `bzImage: missing "HdrS" magic at 0x202 (header field is ${hex(hdr.get("header"))})`);
  }
  if (hdr.get("boot_flag") !== BOOT_FLAG_MAGIC) {
    throw new KernelFormatError("malformed", `bzImage: boot_flag at 0x1fe is ${hex(hdr.get("boot_flag"))}, not 0xaa55`);
  }
  const version = hdr.get("version");
  const versionText = `${version >> 8}.${String(version & 0xff).padStart(2, "0")}`;
  if (version < MIN_PROTOCOL_VERSION) {
    throw new KernelFormatError("unsupported", `bzImage: boot protocol version ${versionText} is too old; Volt needs 2.06 or newer`);
  }
  if ((hdr.get("loadflags") & LOADED_HIGH) === 0) {
    throw new KernelFormatError("unsupported", "bzImage: loadflags lacks LOADED_HIGH: a zImage that loads at 0x10000 cannot be booted");
  }
  if ((hdr.get("xloadflags") & XLF_KERNEL_64) === 0) {
    throw new KernelFormatError("unsupported", `bzImage: xloadflags lacks XLF_KERNEL_64: the kernel is not 64-bit capable (protocol ${versionText})`);
  }

  const setupSects = hdr.get("setup_sects") || 4; // 0 means 4, for ancient compatibility
  const setupSize = (setupSects + 1) * 512;
  if (setupSize >= bytes.byteLength) {
    throw new KernelFormatError("truncated", `bzImage: setup_sects ${setupSects} puts the kernel at ${hex(setupSize)}, past the end of the file (${hex(bytes.byteLength)} bytes)`);
  }
  const protectedModeSize = bytes.byteLength - setupSize;
  if (protectedModeSize <= ENTRY_64_OFFSET) {
    throw new KernelFormatError("truncated", `bzImage: protected-mode kernel is ${protectedModeSize} bytes, too short to hold the 64-bit entry at +0x200`);
  }

  const payloadOffset = hdr.get("payload_offset");
  const payloadLength = hdr.get("payload_length");
  if (payloadOffset + payloadLength > protectedModeSize) {
    throw new KernelFormatError("truncated", `bzImage: payload_offset ${hex(payloadOffset)} + payload_length ${hex(payloadLength)} runs past the protected-mode kernel (${hex(protectedModeSize)} bytes)`);
  }
  const payloadStart = setupSize + payloadOffset;
  const compression = payloadLength === 0 ? "unknown" : detectCompression(bytes.subarray(payloadStart, payloadStart + payloadLength));

  const kernelAlignment = hdr.get("kernel_alignment");
  const relocatable = hdr.get("relocatable_kernel") !== 0;
  if (relocatable && (kernelAlignment === 0 || (kernelAlignment & (kernelAlignment - 1)) !== 0)) {
    throw new KernelFormatError("malformed", `bzImage: kernel_alignment ${hex(kernelAlignment)} is not a power of two`);
  }
  const prefAddressRaw = hdr.get("pref_address");
  if (prefAddressRaw > BigInt(Number.MAX_SAFE_INTEGER)) throw new KernelFormatError("malformed", `bzImage: pref_address ${hex(prefAddressRaw)} is implausibly large`);
  const prefAddress = Number(prefAddressRaw);
  const initSize = hdr.get("init_size");
  if (initSize < protectedModeSize) {
    throw new KernelFormatError("malformed", `bzImage: init_size ${hex(initSize)} is smaller than the protected-mode kernel (${hex(protectedModeSize)} bytes)`);
  }

  const headerEnd = Math.min(0x202 + bytes[0x201]!, SETUP_HEADER_END);
  return {
    protocolVersion: version,
    setupSize,
    protectedModeSize,
    loadAddress: HIMEM_ADDRESS,
    entry64: HIMEM_ADDRESS + ENTRY_64_OFFSET,
    kernelEnd: Math.max(HIMEM_ADDRESS, prefAddress) + initSize,
    kernelAlignment,
    relocatable,
    prefAddress,
    initSize,
    initrdAddrMax: hdr.get("initrd_addr_max"),
    cmdlineSize: hdr.get("cmdline_size"),
    payload: { offset: payloadOffset, length: payloadLength, compression },
    setupHeader: bytes.slice(SETUP_HEADER_OFFSET, headerEnd),
  };
}

/** Validates the image and that RAM holds both the kernel and its decompression area, then loads it at 1 MiB. */
export function loadBzImage(memory: GuestMemoryView, bytes: Uint8Array): BzImageKernel {
  const kernel = parseBzImage(bytes);
  const runStart = kernel.kernelEnd - kernel.initSize;
  if (!memory.contains(kernel.loadAddress, kernel.protectedModeSize) || !memory.contains(runStart, kernel.initSize)) {
    throw new KernelFormatError(
      "does-not-fit",
      `bzImage: the kernel needs contiguous RAM up to ${hex(kernel.kernelEnd)} (init_size ${hex(kernel.initSize)} from ${hex(runStart)}); guest RAM is ${memory.totalSize} bytes`,
    );
  }
  memory.write(kernel.loadAddress, bytes.subarray(kernel.setupSize));
  return kernel;
}

function readU32(bytes: Uint8Array, offset: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(offset, true);
}

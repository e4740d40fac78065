/**
 * One entry point for "here is a kernel file": ELF vmlinux or bzImage, decided
 * by magic, parsed and validated, then loaded.
 */
import type { GuestMemoryView } from "../memory/guest-memory.ts";
import { type BzImageKernel, hasSetupHeader, loadBzImage, parseBzImage } from "./bzimage.ts";
import type { KernelCompression } from "./compression.ts";
import { type ElfKernel, isElf, loadElfKernel, parseElfKernel } from "./elf.ts";
import { KernelFormatError } from "./errors.ts";

export type KernelImage = ({ readonly format: "elf" } & ElfKernel) | ({ readonly format: "bzimage" } & BzImageKernel);

/** What `volt kernel inspect` shows; independent of guest memory. */
export function inspectKernel(bytes: Uint8Array): KernelImage {
  if (isElf(bytes)) return { format: "elf", ...parseElfKernel(bytes) };
  if (hasSetupHeader(bytes)) return { format: "bzimage", ...parseBzImage(bytes) };
  throw new KernelFormatError("not-a-kernel", "not a Linux kernel (neither ELF vmlinux nor bzImage)");
}

/** Validates, then loads into guest memory; nothing is written if validation fails. */
export function loadKernel(memory: GuestMemoryView, bytes: Uint8Array): KernelImage {
  if (isElf(bytes)) return { format: "elf", ...loadElfKernel(memory, bytes) };
  if (hasSetupHeader(bytes)) return { format: "bzimage", ...loadBzImage(memory, bytes) };
  throw new KernelFormatError("not-a-kernel", "not a Linux kernel (neither ELF vmlinux nor bzImage)");
}

/** How the kernel's payload is compressed: "none" for an ELF vmlinux. */
export function kernelCompression(image: KernelImage): KernelCompression {
  return image.format === "elf" ? "none" : image.payload.compression;
}

const ACPI_RSDP_SIGNATURE = new TextEncoder().encode("RSD PTR ");

/**
 * Whether a kernel was built with ACPI, judged by the RSDP signature its ACPI
 * code searches for. It is found in a vmlinux's data and, for a bzImage, in
 * the uncompressed decompressor (which looks for the RSDP itself); the
 * compressed payload is noise that will not contain it by chance. Volt uses
 * this to announce virtio devices through ACPI only to kernels that read it.
 */
export function kernelSupportsAcpi(bytes: Uint8Array): boolean {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).indexOf(ACPI_RSDP_SIGNATURE) >= 0;
}

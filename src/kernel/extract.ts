/**
 * The uncompressed ELF vmlinux inside a bzImage, so a distribution kernel can
 * take Volt's fast path (ELF + PVH entry, no decompression in the guest).
 *
 * The payload is what arch/x86/boot/compressed/Makefile made: the stripped
 * vmlinux (plus, with CONFIG_X86_NEED_RELOCS, its relocation table) run
 * through one compressor, followed by its uncompressed size as a 32-bit
 * little-endian word. Extraction gives exactly those bytes (what the kernel's
 * own scripts/extract-vmlinux gives), checks the size and that they are an ELF
 * kernel, and decompresses in-process: gzip and zstd through Bun's zlib, xz,
 * lzma, lz4 and bzip2 through Volt's own decoders (src/kernel/decompress/).
 */
import { randomBytes } from "node:crypto";
import { renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { gunzipSync, zstdDecompressSync } from "node:zlib";
import { type BzImageKernel, hasSetupHeader, parseBzImage } from "../loader/bzimage.ts";
import type { KernelCompression } from "../loader/compression.ts";
import { type ElfKernel, isElf, parseElfKernel } from "../loader/elf.ts";
import { KernelFormatError } from "../loader/errors.ts";
import { decompressBzip2 } from "./decompress/bzip2.ts";
import { decompressLz4Legacy } from "./decompress/lz4.ts";
import { decompressLzmaAlone } from "./decompress/lzma.ts";
import { DecompressError } from "./decompress/output.ts";
import { decompressXz } from "./decompress/xz.ts";

export type ExtractErrorKind =
  | "not-a-bzimage" // an ELF vmlinux already, or no kernel at all
  | "unsupported-compression" // lzo, or a payload whose magic is unknown
  | "corrupt-payload" // the compressed data is damaged or truncated
  | "not-elf"; // it decompressed, but not to an ELF kernel

export class ExtractError extends Error {
  override name = "ExtractError";
  readonly kind: ExtractErrorKind;

  constructor(kind: ExtractErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.kind = kind;
  }
}

/** No real vmlinux is near this; a larger size word means a corrupt image. */
const MAX_VMLINUX_BYTES = 1 << 30;

export interface ExtractedVmlinux {
  readonly bzImage: BzImageKernel;
  readonly compression: KernelCompression;
  /** The decompressed payload: the ELF vmlinux (and any relocation table after it). */
  readonly vmlinux: Uint8Array;
  readonly elf: ElfKernel;
}

/** Decompresses a bzImage's payload; throws ExtractError (or KernelFormatError for a malformed bzImage). */
export function extractVmlinux(bytes: Uint8Array): ExtractedVmlinux {
  if (isElf(bytes)) throw new ExtractError("not-a-bzimage", "this is already an ELF vmlinux; there is nothing to extract");
  if (!hasSetupHeader(bytes)) throw new ExtractError("not-a-bzimage", "not a bzImage (no \"HdrS\" setup header at 0x202)");
  const bzImage = parseBzImage(bytes);
  const { compression } = bzImage.payload;
  const payload = payloadBytes(bytes, bzImage);
  const vmlinux = decompressPayload(payload, compression);
  let elf: ElfKernel;
  try {
    elf = parseElfKernel(vmlinux);
  } catch (error) {
    const detail = error instanceof KernelFormatError ? error.message : String(error);
    throw new ExtractError("not-elf", `the ${compression} payload decompressed to ${vmlinux.length} bytes that are not an ELF kernel: ${detail}`, { cause: error });
  }
  return { bzImage, compression, vmlinux, elf };
}

export function payloadBytes(bytes: Uint8Array, bzImage: BzImageKernel): Uint8Array {
  const start = bzImage.setupSize + bzImage.payload.offset;
  return bytes.subarray(start, start + bzImage.payload.length);
}

/**
 * Decompresses a payload (ending with its 32-bit uncompressed size) with the
 * named compressor; the result must have exactly that size.
 */
export function decompressPayload(payload: Uint8Array, compression: KernelCompression): Uint8Array {
  if (compression === "lzo") {
    throw new ExtractError("unsupported-compression", "the payload is LZO-compressed, which Volt cannot decompress (gzip, xz, lzma, lz4, zstd and bzip2 are supported)");
  }
  if (compression === "unknown") {
    throw new ExtractError("unsupported-compression", `the payload's compression is not recognised (it starts with ${hexBytes(payload.subarray(0, 6))})`);
  }
  if (payload.length < 8) throw new ExtractError("corrupt-payload", `the payload is only ${payload.length} bytes`);
  const expected = new DataView(payload.buffer, payload.byteOffset, payload.byteLength).getUint32(payload.length - 4, true);
  if (expected === 0 || expected > MAX_VMLINUX_BYTES) {
    throw new ExtractError("corrupt-payload", `the payload's size word says the kernel is ${expected} bytes, which is not plausible`);
  }
  const body = payload.subarray(0, payload.length - 4);
  let out: Uint8Array;
  try {
    switch (compression) {
      case "none":
        out = body.length >= expected ? body.slice(0, expected) : body.slice();
        break;
      case "gzip":
        // gzip's own trailer ends with the size; the whole payload is one gzip member.
        out = gunzipSync(payload, { maxOutputLength: expected + 1 } as object);
        break;
      case "zstd":
        out = zstdDecompressSync(body, { maxOutputLength: expected + 1 } as object);
        break;
      case "xz":
        out = decompressXz(body, expected, expected);
        break;
      case "lzma":
        out = decompressLzmaAlone(body, expected, expected);
        break;
      case "lz4":
        out = decompressLz4Legacy(body, expected, expected);
        break;
      case "bzip2":
        out = decompressBzip2(body, expected, expected);
        break;
    }
  } catch (error) {
    if (error instanceof ExtractError) throw error;
    const detail = error instanceof DecompressError ? error.message : `${compression}: ${(error as Error).message}`;
    throw new ExtractError("corrupt-payload", `cannot decompress the payload: ${detail}`, { cause: error });
  }
  if (out.length !== expected) {
    throw new ExtractError("corrupt-payload", `the ${compression} payload decompressed to ${out.length} bytes, but the image says ${expected}`);
  }
  return out instanceof Buffer ? new Uint8Array(out.buffer, out.byteOffset, out.byteLength) : out;
}

/**
 * Writes `data` next to `path` under a temporary name and renames it into
 * place, so readers never see a partial file and a failed write leaves none.
 */
export function writeFileAtomic(path: string, data: Uint8Array | string, mode = 0o644): void {
  const temp = join(dirname(path), `.${randomBytes(4).toString("hex")}.volt-partial`);
  try {
    writeFileSync(temp, data, { mode, flag: "wx" });
    renameSync(temp, path);
  } catch (error) {
    rmSync(temp, { force: true });
    throw error;
  }
}

function hexBytes(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}

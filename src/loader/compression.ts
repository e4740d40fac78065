/**
 * Which compressor made a bzImage's payload, from its magic bytes. The kernel
 * decompresses itself, so Volt only reports this (for `volt kernel inspect`
 * and for errors that explain a kernel built without a decompressor we expect).
 */
export type KernelCompression = "gzip" | "xz" | "lz4" | "zstd" | "lzma" | "bzip2" | "lzo" | "none" | "unknown";

const MAGICS: readonly (readonly [KernelCompression, readonly number[]])[] = [
  ["gzip", [0x1f, 0x8b]],
  ["xz", [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
  // The kernel's LZ4 is the legacy frame format (magic 0x184c2102).
  ["lz4", [0x02, 0x21, 0x4c, 0x18]],
  ["zstd", [0x28, 0xb5, 0x2f, 0xfd]],
  // lzma "alone" format: properties byte 0x5d and a dictionary size whose low bytes are 0.
  ["lzma", [0x5d, 0x00, 0x00]],
  ["bzip2", [0x42, 0x5a, 0x68]],
  ["lzo", [0x89, 0x4c, 0x5a, 0x4f]],
  // CONFIG_KERNEL_UNCOMPRESSED: the payload is the vmlinux ELF itself.
  ["none", [0x7f, 0x45, 0x4c, 0x46]],
];

export function detectCompression(payload: Uint8Array): KernelCompression {
  for (const [name, magic] of MAGICS) {
    if (payload.byteLength >= magic.length && magic.every((b, i) => payload[i] === b)) return name;
  }
  return "unknown";
}

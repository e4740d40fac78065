export type KernelFormatErrorKind =
  | "not-a-kernel" // neither ELF vmlinux nor bzImage
  | "truncated" // a header, table or segment runs past the end of the file
  | "unsupported" // a well-formed file Volt cannot boot (wrong class/machine, old protocol, 32-bit only)
  | "malformed" // fields that contradict each other (sizes, overlaps, overflow)
  | "does-not-fit"; // valid, but the guest's RAM cannot hold it

/**
 * A kernel or initrd image Volt refuses, found before anything is written to
 * guest memory. The message names the header field or table entry at fault.
 */
export class KernelFormatError extends Error {
  override name = "KernelFormatError";
  readonly kind: KernelFormatErrorKind;

  constructor(kind: KernelFormatErrorKind, message: string) {
    super(message);
    this.kind = kind;
  }
}

export const hex = (value: number | bigint): string => `0x${value.toString(16)}`;

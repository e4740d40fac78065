export type VmBuildErrorKind = "kernel" | "initrd" | "memory" | "cmdline" | "vcpus" | "devices";

/** A VM could not be built from its configuration; nothing was left running. */
export class VmBuildError extends Error {
  override name = "VmBuildError";
  readonly kind: VmBuildErrorKind;

  constructor(kind: VmBuildErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.kind = kind;
  }
}

import { SyscallError } from "../ffi/errno.ts";

export type KvmErrorKind =
  | "unavailable" // no /dev/kvm, or it cannot be opened
  | "api-version" // KVM_GET_API_VERSION is not 12
  | "missing-capability"
  | "ioctl"; // an ioctl Volt relies on failed

/** Something about the host's KVM stops Volt; the message says what and, where it can, what to do. */
export class KvmError extends Error {
  override name = "KvmError";
  readonly kind: KvmErrorKind;

  constructor(kind: KvmErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.kind = kind;
  }

  static fromSyscall(what: string, error: unknown): KvmError | unknown {
    if (error instanceof SyscallError) return new KvmError("ioctl", `${what}: ${error.message}`, { cause: error });
    return error;
  }
}

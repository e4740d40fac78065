/**
 * /dev/kvm: the system-level handle (rust-vmm's `Kvm`). It answers what the
 * host's KVM can do and creates VMs; nothing else in Volt opens /dev/kvm.
 */
import { ERRNO, SyscallError, errnoName } from "../ffi/errno.ts";
import { O_CLOEXEC, O_RDWR, close, ioctl, ioctlBuffer, openPath } from "../ffi/syscalls.ts";
import { StructView } from "./struct.ts";
import {
  KVM_API_VERSION,
  KVM_CAP,
  KVM_CPUID2_ENTRIES_OFFSET,
  KVM_IOCTL,
  KVM_MSR_LIST_INDICES_OFFSET,
  kvm_cpuid2,
  kvm_cpuid_entry2,
  kvm_msr_list,
  type KvmCapability,
} from "./abi.ts";
import { readCpuidEntries, type CpuidEntry } from "./cpuid.ts";
import { KvmError } from "./errors.ts";
import { Vm } from "./vm.ts";

/** What Volt cannot run a VM without. */
export const REQUIRED_CAPABILITIES: readonly KvmCapability[] = [
  "KVM_CAP_USER_MEMORY",
  "KVM_CAP_IMMEDIATE_EXIT",
  "KVM_CAP_EXT_CPUID",
  "KVM_CAP_SET_TSS_ADDR",
  "KVM_CAP_IRQCHIP",
  "KVM_CAP_PIT2",
  "KVM_CAP_IOEVENTFD",
  "KVM_CAP_IRQFD",
  "KVM_CAP_MP_STATE",
];

export const DEFAULT_KVM_PATH = "/dev/kvm";

export class Kvm {
  readonly fd: number;
  readonly path: string;

  private constructor(fd: number, path: string) {
    this.fd = fd;
    this.path = path;
  }

  static open(path = DEFAULT_KVM_PATH): Kvm {
    let fd: number;
    try {
      fd = openPath(path, O_RDWR | O_CLOEXEC);
    } catch (error) {
      throw unavailable(path, error);
    }
    const kvm = new Kvm(fd, path);
    let version: number;
    try {
      version = kvm.apiVersion();
    } catch (error) {
      kvm.close();
      const detail = error instanceof SyscallError ? errnoName(error.errno) : String(error);
      throw new KvmError("unavailable", `${path} is not a KVM device (KVM_GET_API_VERSION: ${detail})`, { cause: error });
    }
    if (version !== KVM_API_VERSION) {
      kvm.close();
      throw new KvmError("api-version", `${path} speaks KVM API version ${version}; Volt needs ${KVM_API_VERSION}`);
    }
    return kvm;
  }

  apiVersion(): number {
    return ioctl(this.fd, KVM_IOCTL.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION");
  }

  /** KVM_CHECK_EXTENSION: 0 when absent, otherwise a capability-specific positive value. */
  checkExtension(capability: KvmCapability): number {
    return ioctl(this.fd, KVM_IOCTL.KVM_CHECK_EXTENSION, KVM_CAP[capability], capability);
  }

  capabilities(): Record<KvmCapability, number> {
    const result = {} as Record<KvmCapability, number>;
    for (const name of Object.keys(KVM_CAP) as KvmCapability[]) result[name] = this.checkExtension(name);
    return result;
  }

  /** Throws one error naming every missing capability, so the user sees the whole gap at once. */
  requireCapabilities(required: readonly KvmCapability[] = REQUIRED_CAPABILITIES): void {
    const missing = required.filter((cap) => this.checkExtension(cap) === 0);
    if (missing.length > 0) {
      throw new KvmError(
        "missing-capability",
        `the host's KVM lacks ${missing.length === 1 ? "a capability" : "capabilities"} Volt needs: ${missing.join(", ")}`,
      );
    }
  }

  vcpuMmapSize(): number {
    return ioctl(this.fd, KVM_IOCTL.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
  }

  /** The CPUID leaves KVM can present to a guest on this host (the base every vCPU's CPUID is built from). */
  supportedCpuid(): CpuidEntry[] {
    const maxEntries = 256;
    const bytes = new Uint8Array(KVM_CPUID2_ENTRIES_OFFSET + maxEntries * kvm_cpuid_entry2.size);
    new StructView(kvm_cpuid2, bytes).set("nent", maxEntries);
    ioctlBuffer(this.fd, KVM_IOCTL.KVM_GET_SUPPORTED_CPUID, bytes, "KVM_GET_SUPPORTED_CPUID");
    return readCpuidEntries(bytes);
  }

  /**
   * KVM_GET_MSR_INDEX_LIST: the MSRs KVM can save and restore for a guest
   * (msrs_to_save plus the emulated ones), in KVM's order. Some need a CPUID
   * feature the vCPU may lack; KVM_GET_MSRS on the vCPU says which it reads.
   */
  msrIndexList(): number[] {
    // The first call asks for 0 entries; KVM answers E2BIG and writes how many there are.
    const probe = new StructView(kvm_msr_list).set("nmsrs", 0);
    try {
      ioctlBuffer(this.fd, KVM_IOCTL.KVM_GET_MSR_INDEX_LIST, probe.bytes, "KVM_GET_MSR_INDEX_LIST");
    } catch (error) {
      if (!(error instanceof SyscallError && error.is("E2BIG"))) throw error;
    }
    const count = probe.get("nmsrs");
    const bytes = new Uint8Array(KVM_MSR_LIST_INDICES_OFFSET + count * 4);
    new StructView(kvm_msr_list, bytes).set("nmsrs", count);
    ioctlBuffer(this.fd, KVM_IOCTL.KVM_GET_MSR_INDEX_LIST, bytes, "KVM_GET_MSR_INDEX_LIST");
    const written = Math.min(new StructView(kvm_msr_list, bytes).get("nmsrs"), count);
    const view = new DataView(bytes.buffer, bytes.byteOffset + KVM_MSR_LIST_INDICES_OFFSET, count * 4);
    return Array.from({ length: written }, (_, i) => view.getUint32(i * 4, true));
  }

  createVm(): Vm {
    const vmFd = ioctl(this.fd, KVM_IOCTL.KVM_CREATE_VM, 0, "KVM_CREATE_VM");
    return new Vm(vmFd, this.vcpuMmapSize());
  }

  close(): void {
    close(this.fd);
  }
}

function unavailable(path: string, error: unknown): KvmError {
  if (error instanceof SyscallError) {
    const hint =
      error.errno === ERRNO.ENOENT
        ? "this host has no KVM (no hardware virtualisation, or the kvm module is not loaded)"
        : error.errno === ERRNO.EACCES || error.errno === ERRNO.EPERM
          ? "permission denied: run as root or add your user to the group that owns it (usually 'kvm')"
          : error.message;
    return new KvmError("unavailable", `cannot open ${path}: ${hint}`, { cause: error });
  }
  return new KvmError("unavailable", `cannot open ${path}: ${String(error)}`, { cause: error });
}

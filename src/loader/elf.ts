/**
 * ELF64 x86-64 vmlinux: the uncompressed kernel. Segments load at their
 * physical addresses (p_paddr; p_vaddr is the kernel's high virtual mapping),
 * and the Xen PVH note, if present, gives a 32-bit entry point that needs no
 * page tables or zero page.
 *
 * The whole file is validated before one byte reaches guest memory: a hostile
 * image must fail with a KernelFormatError, never a half-written guest.
 */
import type { GuestMemoryView } from "../memory/guest-memory.ts";
import { hex, KernelFormatError } from "./errors.ts";

export interface ElfSegment {
  /** Where the segment's bytes start in the file. */
  readonly fileOffset: number;
  /** Guest-physical load address (p_paddr). */
  readonly guestAddress: number;
  readonly fileSize: number;
  /** Bytes in memory; those beyond fileSize are bss and are zeroed. */
  readonly memSize: number;
}

export interface ElfKernel {
  /** e_entry: the 64-bit Linux boot protocol entry, a physical address. */
  readonly entry64: number;
  /** XEN_ELFNOTE_PHYS32_ENTRY: the PVH entry, if the kernel was built with one. */
  readonly pvhEntry?: number;
  /** First guest-physical byte past the highest segment. */
  readonly kernelEnd: number;
  readonly segments: readonly ElfSegment[];
}

const ELF_MAGIC = [0x7f, 0x45, 0x4c, 0x46];
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const ET_EXEC = 2;
const EM_X86_64 = 62;
const PT_LOAD = 1;
const PT_NOTE = 4;
const ELF64_HEADER_SIZE = 64;
const ELF64_PHDR_SIZE = 56;
/** Real kernels have a handful; the cap keeps a hostile e_phnum from costing anything. */
const MAX_PROGRAM_HEADERS = 128;
export const XEN_ELFNOTE_PHYS32_ENTRY = 18;

export function isElf(bytes: Uint8Array): boolean {
  return bytes.byteLength >= 4 && ELF_MAGIC.every((b, i) => bytes[i] === b);
}

/** Parses and validates a vmlinux; throws KernelFormatError naming the first problem. */
export function parseElfKernel(bytes: Uint8Array): ElfKernel {
  if (!isElf(bytes)) throw new KernelFormatError("not-a-kernel", "ELF: bad magic (file does not start with 0x7f 'ELF')");
  if (bytes.byteLength < ELF64_HEADER_SIZE) {
    throw new KernelFormatError("truncated", `ELF: header truncated (file is ${bytes.byteLength} bytes, the ELF64 header needs ${ELF64_HEADER_SIZE})`);
  }
  const file = new FileReader(bytes);
  if (bytes[4] !== ELFCLASS64) throw new KernelFormatError("unsupported", `ELF: EI_CLASS is ${bytes[4]}, not ELFCLASS64 (2): only 64-bit kernels are supported`);
  if (bytes[5] !== ELFDATA2LSB) throw new KernelFormatError("unsupported", `ELF: EI_DATA is ${bytes[5]}, not little-endian (1)`);
  const type = file.u16(16);
  if (type !== ET_EXEC) throw new KernelFormatError("unsupported", `ELF: e_type is ${type}, not ET_EXEC (2)`);
  const machine = file.u16(18);
  if (machine !== EM_X86_64) throw new KernelFormatError("unsupported", `ELF: e_machine is ${machine}, not EM_X86_64 (62)`);

  const entry64 = file.address(24, "e_entry");
  const phoff = file.address(32, "e_phoff");
  const phentsize = file.u16(54);
  const phnum = file.u16(56);
  if (phentsize !== ELF64_PHDR_SIZE) throw new KernelFormatError("malformed", `ELF: e_phentsize is ${phentsize}, not ${ELF64_PHDR_SIZE}`);
  if (phnum === 0 || phnum > MAX_PROGRAM_HEADERS) {
    throw new KernelFormatError("malformed", `ELF: e_phnum is ${phnum}; expected 1..${MAX_PROGRAM_HEADERS} program headers`);
  }
  file.requireRange(phoff, phnum * ELF64_PHDR_SIZE, `ELF: program header table (e_phoff ${hex(phoff)}, ${phnum} entries)`);

  const segments: ElfSegment[] = [];
  let pvhEntry: number | undefined;
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * ELF64_PHDR_SIZE;
    const type = file.u32(at);
    if (type !== PT_LOAD && type !== PT_NOTE) continue;
    const what = `ELF: program header ${i} (${type === PT_LOAD ? "PT_LOAD" : "PT_NOTE"})`;
    const fileOffset = file.address(at + 8, `${what} p_offset`);
    const guestAddress = file.address(at + 24, `${what} p_paddr`);
    const fileSize = file.address(at + 32, `${what} p_filesz`);
    const memSize = file.address(at + 40, `${what} p_memsz`);
    file.requireRange(fileOffset, fileSize, `${what}: p_offset ${hex(fileOffset)} + p_filesz ${hex(fileSize)}`);
    if (type === PT_NOTE) {
      pvhEntry ??= findPvhEntry(file, fileOffset, fileSize, what);
      continue;
    }
    if (fileSize > memSize) throw new KernelFormatError("malformed", `${what}: p_filesz ${hex(fileSize)} exceeds p_memsz ${hex(memSize)}`);
    if (!Number.isSafeInteger(guestAddress + memSize)) {
      throw new KernelFormatError("malformed", `${what}: p_paddr ${hex(guestAddress)} + p_memsz ${hex(memSize)} overflows`);
    }
    if (memSize === 0) continue;
    segments.push({ fileOffset, guestAddress, fileSize, memSize });
  }
  if (segments.length === 0) throw new KernelFormatError("malformed", "ELF: no PT_LOAD segment to load");

  const sorted = [...segments].sort((a, b) => a.guestAddress - b.guestAddress);
  for (let i = 1; i < sorted.length; i++) {
    const before = sorted[i - 1]!;
    const segment = sorted[i]!;
    if (segment.guestAddress < before.guestAddress + before.memSize) {
      throw new KernelFormatError(
        "malformed",
        `ELF: PT_LOAD segments overlap in guest memory: ${hex(before.guestAddress)}+${hex(before.memSize)} and ${hex(segment.guestAddress)}+${hex(segment.memSize)}`,
      );
    }
  }
  const insideSegment = (address: number) => segments.some((s) => address >= s.guestAddress && address < s.guestAddress + s.memSize);
  if (!insideSegment(entry64)) throw new KernelFormatError("malformed", `ELF: e_entry ${hex(entry64)} is outside every PT_LOAD segment`);
  if (pvhEntry !== undefined && !insideSegment(pvhEntry)) {
    throw new KernelFormatError("malformed", `ELF: PVH entry ${hex(pvhEntry)} (Xen note PHYS32_ENTRY) is outside every PT_LOAD segment`);
  }
  const kernelEnd = Math.max(...segments.map((s) => s.guestAddress + s.memSize));
  return pvhEntry === undefined ? { entry64, kernelEnd, segments } : { entry64, pvhEntry, kernelEnd, segments };
}

/** Validates the ELF, checks every segment lies in guest RAM, then copies segments and zeroes their bss. */
export function loadElfKernel(memory: GuestMemoryView, bytes: Uint8Array): ElfKernel {
  const kernel = parseElfKernel(bytes);
  for (const s of kernel.segments) {
    if (!memory.contains(s.guestAddress, s.memSize)) {
      throw new KernelFormatError(
        "does-not-fit",
        `ELF: PT_LOAD segment ${hex(s.guestAddress)}+${hex(s.memSize)} is outside guest RAM (${memory.totalSize} bytes)`,
      );
    }
  }
  for (const s of kernel.segments) {
    const target = memory.slice(s.guestAddress, s.memSize);
    target.set(bytes.subarray(s.fileOffset, s.fileOffset + s.fileSize));
    target.fill(0, s.fileSize);
  }
  return kernel;
}

/**
 * Walks one PT_NOTE segment's notes (namesz, descsz, type, name, desc; name
 * and desc padded to 4 bytes) and returns the Xen PHYS32_ENTRY address.
 */
function findPvhEntry(file: FileReader, start: number, size: number, what: string): number | undefined {
  const end = start + size;
  let at = start;
  while (end - at >= 12) {
    const nameSize = file.u32(at);
    const descSize = file.u32(at + 4);
    const noteType = file.u32(at + 8);
    const nameAt = at + 12;
    const descAt = nameAt + align4(nameSize);
    const next = descAt + align4(descSize);
    if (next > end) throw new KernelFormatError("truncated", `${what}: note at file offset ${hex(at)} runs past the end of its segment`);
    const name = new TextDecoder().decode(file.bytes.subarray(nameAt, nameAt + nameSize)).replace(/\0+$/, "");
    if (name === "Xen" && noteType === XEN_ELFNOTE_PHYS32_ENTRY) {
      // Linux emits the address as a pointer-sized value; its low 32 bits are the entry.
      if (descSize < 4) throw new KernelFormatError("malformed", `${what}: Xen PHYS32_ENTRY note has ${descSize} descriptor bytes, needs 4`);
      return file.u32(descAt);
    }
    at = next;
  }
  return undefined;
}

const align4 = (n: number) => Math.ceil(n / 4) * 4;

/** Little-endian reads that already know the file is long enough for them. */
class FileReader {
  readonly bytes: Uint8Array;
  private readonly view: DataView;

  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  u16(offset: number): number {
    return this.view.getUint16(offset, true);
  }

  u32(offset: number): number {
    return this.view.getUint32(offset, true);
  }

  /** A u64 that must be an exact JavaScript number (any real offset, size or physical address is). */
  address(offset: number, field: string): number {
    const value = this.view.getBigUint64(offset, true);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new KernelFormatError("malformed", `${field} ${hex(value)} is implausibly large`);
    return Number(value);
  }

  requireRange(offset: number, length: number, what: string): void {
    if (offset + length > this.bytes.byteLength) {
      throw new KernelFormatError("truncated", `${what} runs past the end of the file (${hex(this.bytes.byteLength)} bytes)`);
    }
  }
}

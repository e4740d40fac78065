/**
 * Guest RAM: one memfd, mapped once per region over the pages of a
 * SharedArrayBuffer so that the same bytes are (a) registered with KVM,
 * (b) visible to every vCPU worker and device as an ordinary typed-array view
 * (a SharedArrayBuffer posts to workers without copying), and (c) a file
 * descriptor that snapshots can write out or map privately.
 *
 * Every access goes through `slice`/`read*`/`write*`, which check that the
 * whole range lies inside one region: a guest-supplied address can never
 * reach host memory outside guest RAM.
 */
import { ptr } from "bun:ffi";
import { closeSync, fstatSync, openSync } from "node:fs";
import {
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
  close,
  dataRanges,
  ftruncate,
  memfdCreate,
  mmap,
} from "../ffi/syscalls.ts";

export const PAGE_SIZE = 4096;

export interface RegionSpec {
  /** Guest-physical start address, page aligned. */
  readonly guestAddress: number;
  /** Length in bytes, a non-zero multiple of the page size. */
  readonly size: number;
}

export interface GuestRegion extends RegionSpec {
  /** Offset of this region's bytes in the backing memfd. */
  readonly fileOffset: number;
  /** Host virtual address of the mapping (what KVM is told). */
  readonly hostAddress: number;
  readonly buffer: SharedArrayBuffer;
  readonly bytes: Uint8Array;
}

/** What a worker needs to see the same guest memory (structured-clone safe, no copy). */
export interface SharedGuestMemory {
  readonly regions: readonly { guestAddress: number; size: number; buffer: SharedArrayBuffer }[];
}

export class GuestMemoryError extends RangeError {
  override name = "GuestMemoryError";
}

/** Bounds-checked access to guest-physical memory, usable on any thread. */
export class GuestMemoryView {
  protected readonly regionList: readonly { guestAddress: number; size: number; bytes: Uint8Array; view: DataView }[];

  constructor(shared: SharedGuestMemory) {
    this.regionList = shared.regions
      .map((r) => ({ guestAddress: r.guestAddress, size: r.size, bytes: new Uint8Array(r.buffer), view: new DataView(r.buffer) }))
      .sort((a, b) => a.guestAddress - b.guestAddress);
  }

  get totalSize(): number {
    return this.regionList.reduce((sum, r) => sum + r.size, 0);
  }

  /** The bytes [address, address+length) as a live view; throws unless they lie in one region. */
  slice(address: number | bigint, length: number): Uint8Array {
    const { region, offset } = this.locate(address, length);
    return region.bytes.subarray(offset, offset + length);
  }

  read(address: number | bigint, length: number): Uint8Array {
    return this.slice(address, length).slice();
  }

  write(address: number | bigint, data: Uint8Array): void {
    this.slice(address, data.byteLength).set(data);
  }

  readU8(address: number | bigint): number {
    const { region, offset } = this.locate(address, 1);
    return region.view.getUint8(offset);
  }

  readU16(address: number | bigint): number {
    const { region, offset } = this.locate(address, 2);
    return region.view.getUint16(offset, true);
  }

  readU32(address: number | bigint): number {
    const { region, offset } = this.locate(address, 4);
    return region.view.getUint32(offset, true);
  }

  readU64(address: number | bigint): bigint {
    const { region, offset } = this.locate(address, 8);
    return region.view.getBigUint64(offset, true);
  }

  writeU8(address: number | bigint, value: number): void {
    const { region, offset } = this.locate(address, 1);
    region.view.setUint8(offset, value);
  }

  writeU16(address: number | bigint, value: number): void {
    const { region, offset } = this.locate(address, 2);
    region.view.setUint16(offset, value, true);
  }

  writeU32(address: number | bigint, value: number): void {
    const { region, offset } = this.locate(address, 4);
    region.view.setUint32(offset, value, true);
  }

  writeU64(address: number | bigint, value: bigint): void {
    const { region, offset } = this.locate(address, 8);
    region.view.setBigUint64(offset, value, true);
  }

  /** True if [address, address+length) is entirely guest RAM in one region. */
  contains(address: number | bigint, length: number): boolean {
    try {
      this.locate(address, length);
      return true;
    } catch {
      return false;
    }
  }

  private locate(address: number | bigint, length: number) {
    if (!Number.isSafeInteger(length) || length < 0) throw new GuestMemoryError(`bad access length ${length}`);
    const start = typeof address === "bigint" ? bigintAddress(address) : address;
    if (!Number.isSafeInteger(start) || start < 0) throw new GuestMemoryError(`bad guest address ${address}`);
    for (const region of this.regionList) {
      if (start >= region.guestAddress && start - region.guestAddress + length <= region.size) {
        return { region, offset: start - region.guestAddress };
      }
    }
    throw new GuestMemoryError(`guest range 0x${start.toString(16)}+${length} is not guest RAM`);
  }
}

function bigintAddress(address: bigint): number {
  // Guest addresses are u64; anything beyond 2^53 cannot be RAM Volt mapped.
  return address >= 0n && address <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(address) : Number.NaN;
}

/** Owns the memfd and the mappings; lives on the thread that built the VM. */
export class GuestMemory extends GuestMemoryView {
  /** The memfd behind fresh guest RAM; -1 for RAM mapped privately from a snapshot file (see `mapPrivate`). */
  readonly memfd: number;
  readonly regions: readonly GuestRegion[];
  private disposed = false;

  private constructor(memfd: number, regions: GuestRegion[]) {
    super({ regions });
    this.memfd = memfd;
    this.regions = regions;
  }

  /**
   * Guest RAM backed copy-on-write by `fd` (a snapshot's memory file or an
   * in-memory snapshot's memfd): region i is the file's bytes from
   * `fileOffsets[i]`. Pages load when first touched and writes stay private to
   * this VM, so restoring reads nothing up front and never changes the file.
   * The caller keeps `fd` (the mappings do not need it open).
   */
  static mapPrivate(fd: number, specs: readonly (RegionSpec & { readonly fileOffset: number })[]): GuestMemory {
    validateLayout(specs);
    const regions: GuestRegion[] = [];
    try {
      for (const spec of specs) {
        if (!Number.isSafeInteger(spec.fileOffset) || spec.fileOffset < 0 || spec.fileOffset % PAGE_SIZE !== 0) {
          throw new GuestMemoryError(`guest region 0x${spec.guestAddress.toString(16)}: file offset ${spec.fileOffset} must be page aligned`);
        }
        const { buffer, bytes, hostAddress } = pageAlignedBuffer(spec);
        mmap(hostAddress, spec.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, spec.fileOffset, "guest RAM (copy-on-write)");
        regions.push({ guestAddress: spec.guestAddress, size: spec.size, fileOffset: spec.fileOffset, hostAddress, buffer, bytes });
      }
    } catch (error) {
      restoreAnonymous(regions);
      throw error;
    }
    return new GuestMemory(-1, regions);
  }

  /**
   * Guest RAM backed copy-on-write by a list of files per region (a chunk
   * store's chunks, src/snapshot/chunks.ts): chunk j of a region is mapped
   * MAP_PRIVATE|MAP_FIXED at the sum of the earlier chunks' lengths, from
   * offset 0 of its file. A chunk whose `path` is null is left as the
   * buffer's fresh anonymous zero pages. As with `mapPrivate`, pages load
   * on first touch, writes stay private to this VM and no file is changed.
   * Every length must be a whole number of pages, the lengths of a region
   * must add up to its size, and each file must be at least as long as its
   * chunk (touching a mapped page past the end of a file is SIGBUS).
   * One mapping per stored chunk: mind vm.max_map_count for huge guests.
   */
  static mapChunks(
    specs: readonly (RegionSpec & { readonly chunks: readonly { readonly path: string | null; readonly length: number }[] })[],
  ): GuestMemory {
    validateLayout(specs);
    const regions: GuestRegion[] = [];
    try {
      let logicalOffset = 0;
      for (const spec of specs) {
        const where = `guest region 0x${spec.guestAddress.toString(16)}`;
        let total = 0;
        for (const [j, chunk] of spec.chunks.entries()) {
          if (!Number.isSafeInteger(chunk.length) || chunk.length <= 0 || chunk.length % PAGE_SIZE !== 0) {
            throw new GuestMemoryError(`${where}: chunk ${j} length ${chunk.length} must be a non-zero multiple of ${PAGE_SIZE}`);
          }
          total += chunk.length;
        }
        if (total !== spec.size) throw new GuestMemoryError(`${where}: chunks add up to ${total} bytes, the region is ${spec.size}`);
        const { buffer, bytes, hostAddress } = pageAlignedBuffer(spec);
        // Listed before the first mmap, so a failure part-way restores this region too.
        regions.push({ guestAddress: spec.guestAddress, size: spec.size, fileOffset: logicalOffset, hostAddress, buffer, bytes });
        let offset = 0;
        for (const chunk of spec.chunks) {
          if (chunk.path !== null) mapChunkFile(chunk.path, hostAddress + offset, chunk.length, `${where}+0x${offset.toString(16)}`);
          offset += chunk.length;
        }
        logicalOffset += spec.size;
      }
    } catch (error) {
      restoreAnonymous(regions);
      throw error;
    }
    return new GuestMemory(-1, regions);
  }

  static create(specs: readonly RegionSpec[], name = "volt-guest-ram"): GuestMemory {
    validateLayout(specs);
    const total = specs.reduce((sum, s) => sum + s.size, 0);
    const memfd = memfdCreate(name);
    const regions: GuestRegion[] = [];
    try {
      ftruncate(memfd, total);
      let fileOffset = 0;
      for (const spec of specs) {
        const { buffer, bytes, hostAddress } = pageAlignedBuffer(spec);
        // Replace the buffer's pages with the memfd's: same address, so every
        // existing and future view of `buffer` now reads and writes guest RAM.
        mmap(hostAddress, spec.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, memfd, fileOffset, "guest RAM");
        regions.push({ ...spec, fileOffset, hostAddress, buffer, bytes });
        fileOffset += spec.size;
      }
    } catch (error) {
      restoreAnonymous(regions);
      close(memfd);
      throw error;
    }
    return new GuestMemory(memfd, regions);
  }

  /**
   * Per region, the [start, end) byte offsets that may hold non-zero data;
   * the rest of the region is certainly zero. Fresh RAM asks its memfd, where
   * pages the guest never wrote are holes, so a snapshot reads (and faults
   * in) only what the guest used. Copy-on-write RAM keeps no such record: its
   * whole region is reported.
   */
  populatedRanges(): [number, number][][] {
    return this.regions.map((region) =>
      this.memfd >= 0
        ? dataRanges(this.memfd, region.fileOffset, region.fileOffset + region.size).map(([start, end]) => [start - region.fileOffset, end - region.fileOffset] as [number, number])
        : [[0, region.size]],
    );
  }

  /** The structured-clone-safe handle a worker turns into its own GuestMemoryView. */
  share(): SharedGuestMemory {
    return { regions: this.regions.map(({ guestAddress, size, buffer }) => ({ guestAddress, size, buffer })) };
  }

  /** Gives the pages back to the JS heap as private anonymous memory and closes the memfd. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    restoreAnonymous(this.regions);
    if (this.memfd >= 0) close(this.memfd);
  }
}

function pageAlignedBuffer(spec: RegionSpec): { buffer: SharedArrayBuffer; bytes: Uint8Array; hostAddress: number } {
  const buffer = new SharedArrayBuffer(spec.size);
  const bytes = new Uint8Array(buffer);
  const hostAddress = ptr(bytes);
  if (hostAddress % PAGE_SIZE !== 0) {
    throw new GuestMemoryError(`host buffer for guest region 0x${spec.guestAddress.toString(16)} is not page aligned`);
  }
  return { buffer, bytes, hostAddress };
}

function mapChunkFile(path: string, hostAddress: number, length: number, where: string): void {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (error) {
    throw new GuestMemoryError(`${where}: cannot open chunk ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
  }
  try {
    const size = fstatSync(fd).size;
    if (size < length) throw new GuestMemoryError(`${where}: chunk ${path} is ${size} bytes, ${length} are mapped`);
    mmap(hostAddress, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, 0, `guest RAM chunk ${path}`);
  } finally {
    closeSync(fd);
  }
}

function restoreAnonymous(regions: readonly GuestRegion[]): void {
  for (const r of regions) {
    mmap(r.hostAddress, r.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0, "release guest RAM");
  }
}

function validateLayout(specs: readonly RegionSpec[]): void {
  if (specs.length === 0) throw new GuestMemoryError("guest memory needs at least one region");
  const sorted = [...specs].sort((a, b) => a.guestAddress - b.guestAddress);
  let end = 0;
  for (const s of sorted) {
    const where = `guest region 0x${s.guestAddress.toString(16)}`;
    if (!Number.isSafeInteger(s.guestAddress) || s.guestAddress < 0 || s.guestAddress % PAGE_SIZE !== 0) {
      throw new GuestMemoryError(`${where}: start must be a page-aligned address`);
    }
    if (!Number.isSafeInteger(s.size) || s.size <= 0 || s.size % PAGE_SIZE !== 0) {
      throw new GuestMemoryError(`${where}: size ${s.size} must be a non-zero multiple of ${PAGE_SIZE}`);
    }
    if (s.guestAddress < end) throw new GuestMemoryError(`${where} overlaps the region before it`);
    end = s.guestAddress + s.size;
  }
}

/**
 * virtio-blk (virtio 1.2, section 5.2): one request queue over a disk image.
 *
 * Requests are served synchronously on the VM's I/O worker, straight between
 * the image and live views of guest memory.
 *
 * Decisions:
 * - Request framing follows the chain's bytes, not its descriptors: the
 *   16-byte header is the first 16 readable bytes and the status is the last
 *   writable byte, wherever the descriptor boundaries fall. Virtio 1.x makes
 *   that mandatory (2.7.4.1, "the device MUST NOT make assumptions about the
 *   particular arrangement of descriptors"); Linux happens to use separate
 *   descriptors, other drivers need not.
 * - A chain with no writable byte has nowhere for a status: it is returned
 *   with used length 0 and nothing written. Everything else malformed gets
 *   VIRTIO_BLK_S_IOERR (the spec's "device or driver error"); request types
 *   Volt does not implement, or whose feature the driver did not accept, get
 *   VIRTIO_BLK_S_UNSUPP.
 * - Writes (OUT, DISCARD, WRITE_ZEROES) on a read-only drive get IOERR and
 *   touch nothing, as 5.2.6.2 requires for VIRTIO_BLK_F_RO. FLUSH is accepted
 *   on read-only drives: firmware such as OVMF sends it and fails otherwise.
 * - VIRTIO_BLK_F_FLUSH is always offered. If the driver does not accept it,
 *   every completed write must already be stable (5.2.6.2, case 1), so each
 *   write is followed by an fsync.
 * - seg_max = queue size - 2 (header and status), as QEMU does: without it
 *   Linux sends one data segment per request. No indirect descriptors yet.
 * - One discard / write-zeroes segment per request (QEMU and Cloud
 *   Hypervisor do the same), so a request costs at most one fallocate. A
 *   write-zeroes request is capped at 1 GiB because on file systems without
 *   FALLOC_FL_ZERO_RANGE it falls back to writing zeroes, and a single
 *   request must not hold the I/O worker (shared by all of the VM's devices)
 *   for minutes. Discard granularity is 4 KiB, the host file systems' block,
 *   so guest discards are whole-block punches rather than zero-writes.
 * - Used length: data bytes + 1 for a successful IN (and GET_ID), 1 for
 *   every other completion, including failed INs.
 * - processQueue never throws for anything in a request. It throws only when
 *   `queue.pop()` does (a driver that broke the ring itself); the I/O worker
 *   catches that and marks the device NEEDS_RESET.
 */
import { defineStruct, StructView } from "../../kvm/struct.ts";
import { GuestMemoryError, type GuestMemoryView } from "../../memory/guest-memory.ts";
import { DiskImage, DiskImageError, SECTOR_SIZE, type DiskFileOps } from "./block-backend.ts";
import {
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_ID,
  featureBit,
  type ActivationContext,
  type BackendPoll,
  type DescriptorBuffer,
  type DescriptorChain,
  type QueueHandle,
  type VirtioDevice,
} from "./device.ts";
import type { RateLimiter } from "./rate-limiter.ts";
import { POLLIN } from "../../ffi/syscalls.ts";

/** Feature bits (section 5.2.3). */
export const VIRTIO_BLK_F = {
  SIZE_MAX: 1,
  SEG_MAX: 2,
  RO: 5,
  BLK_SIZE: 6,
  FLUSH: 9,
  DISCARD: 13,
  WRITE_ZEROES: 14,
} as const;

/** Request types (section 5.2.6). */
export const VIRTIO_BLK_T = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13 } as const;

/** Request status byte values. */
export const VIRTIO_BLK_S = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;

export const VIRTIO_BLK_ID_BYTES = 20;
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;

/**
 * The configuration space Volt exposes: struct virtio_blk_config up to the
 * secure-erase fields, which it does not offer (Linux reads a field only
 * once its feature is negotiated). Checked against <linux/virtio_blk.h>.
 */
export const virtio_blk_config = defineStruct("struct virtio_blk_config", 60, {
  capacity: [0, "u64"],
  size_max: [8, "u32"],
  seg_max: [12, "u32"],
  blk_size: [20, "u32"],
  max_discard_sectors: [36, "u32"],
  max_discard_seg: [40, "u32"],
  discard_sector_alignment: [44, "u32"],
  max_write_zeroes_sectors: [48, "u32"],
  max_write_zeroes_seg: [52, "u32"],
  write_zeroes_may_unmap: [56, "u8"],
});

/** The request header; the spec calls `ioprio` "reserved". */
export const virtio_blk_outhdr = defineStruct("struct virtio_blk_outhdr", 16, {
  type: [0, "u32"],
  ioprio: [4, "u32"],
  sector: [8, "u64"],
});

/** One DISCARD / WRITE_ZEROES segment. */
export const virtio_blk_discard_write_zeroes = defineStruct("struct virtio_blk_discard_write_zeroes", 16, {
  sector: [0, "u64"],
  num_sectors: [8, "u32"],
  flags: [12, "u32"],
});

export const BLOCK_QUEUE_SIZE = 256;
export const BLOCK_SEG_MAX = BLOCK_QUEUE_SIZE - 2;
export const BLOCK_MAX_DISCARD_SECTORS = 0xffff_ffff;
export const BLOCK_MAX_WRITE_ZEROES_SECTORS = (1024 * 1024 * 1024) / SECTOR_SIZE;
export const BLOCK_DISCARD_SECTOR_ALIGNMENT = 4096 / SECTOR_SIZE;
const MAX_SEGMENTS = 1;

export interface VirtioBlockOptions {
  readonly path: string;
  readonly readOnly: boolean;
  /** Serial number the guest reads with GET_ID (e.g. /dev/disk/by-id): printable ASCII, at most 20 bytes. */
  readonly id?: string;
}

/** Counters for metrics; plain numbers so they can be copied or posted as they are. */
export interface BlockStats {
  reads: number;
  writes: number;
  flushes: number;
  discards: number;
  writeZeroes: number;
  getIds: number;
  readBytes: number;
  writtenBytes: number;
  /** Requests the guest got wrong (IOERR without touching the disk, or dropped for want of a status byte). */
  invalid: number;
  /** Requests answered UNSUPP. */
  unsupported: number;
  /** Host I/O failures reported to the guest as IOERR. */
  ioErrors: number;
  /** Times the rate limiter held a request back until its buckets refilled. */
  throttled: number;
}

/** A run of guest-physical bytes. */
interface Span {
  readonly address: number;
  readonly length: number;
}

interface Outcome {
  readonly status: number;
  /** Bytes written into the data buffers (not counting the status byte). */
  readonly written: number;
}

const OK: Outcome = { status: VIRTIO_BLK_S.OK, written: 0 };
const IOERR: Outcome = { status: VIRTIO_BLK_S.IOERR, written: 0 };
const UNSUPP: Outcome = { status: VIRTIO_BLK_S.UNSUPP, written: 0 };

export class VirtioBlock implements VirtioDevice {
  readonly deviceType = VIRTIO_ID.BLOCK;
  readonly queueMaxSizes = [BLOCK_QUEUE_SIZE] as const;
  readonly features: bigint;
  readonly config: Uint8Array;
  readonly stats: BlockStats = {
    reads: 0,
    writes: 0,
    flushes: 0,
    discards: 0,
    writeZeroes: 0,
    getIds: 0,
    readBytes: 0,
    writtenBytes: 0,
    invalid: 0,
    unsupported: 0,
    ioErrors: 0,
    throttled: 0,
  };
  /** The last host I/O failure, for diagnostics (the guest only sees IOERR). */
  lastHostError: string | undefined;

  readonly disk: DiskImage;
  /** Capacity in 512-byte sectors. */
  readonly capacity: bigint;
  private readonly serial: Uint8Array;
  private readonly scratch = new Uint8Array(16);
  private readonly scratchView = new DataView(this.scratch.buffer);

  private memory: GuestMemoryView | undefined;
  private queue: QueueHandle | undefined;
  private limiter: RateLimiter | undefined;
  /** A request taken off the ring but held back by the rate limiter. */
  private heldChain: DescriptorChain | undefined;
  private writeThrough = false;
  private discardAccepted = false;
  private writeZeroesAccepted = false;

  /** Opens the image and validates the options; every error names the path. */
  static open(options: VirtioBlockOptions, ops?: DiskFileOps): VirtioBlock {
    const serial = encodeSerial(options.path, options.id);
    const disk = DiskImage.open(options.path, options.readOnly, ops);
    return new VirtioBlock(disk, serial);
  }

  constructor(disk: DiskImage, serial: Uint8Array = new Uint8Array(VIRTIO_BLK_ID_BYTES)) {
    this.disk = disk;
    this.serial = serial;
    this.capacity = BigInt(disk.size / SECTOR_SIZE);

    let features =
      featureBit(VIRTIO_BLK_F.SEG_MAX) |
      featureBit(VIRTIO_BLK_F.BLK_SIZE) |
      featureBit(VIRTIO_BLK_F.FLUSH) |
      featureBit(VIRTIO_F_RING_EVENT_IDX);
    features |= disk.readOnly
      ? featureBit(VIRTIO_BLK_F.RO)
      : featureBit(VIRTIO_BLK_F.DISCARD) | featureBit(VIRTIO_BLK_F.WRITE_ZEROES);
    this.features = features;

    const config = new StructView(virtio_blk_config);
    config.set("capacity", this.capacity);
    config.set("seg_max", BLOCK_SEG_MAX);
    config.set("blk_size", SECTOR_SIZE);
    if (!disk.readOnly) {
      config.set("max_discard_sectors", BLOCK_MAX_DISCARD_SECTORS);
      config.set("max_discard_seg", MAX_SEGMENTS);
      config.set("discard_sector_alignment", BLOCK_DISCARD_SECTOR_ALIGNMENT);
      config.set("max_write_zeroes_sectors", BLOCK_MAX_WRITE_ZEROES_SECTORS);
      config.set("max_write_zeroes_seg", MAX_SEGMENTS);
      config.set("write_zeroes_may_unmap", 1);
    }
    this.config = config.bytes;
  }

  activate(context: ActivationContext): void {
    const queue = context.queues[0];
    if (!queue) throw new Error("virtio-blk activated without its request queue");
    this.memory = context.memory;
    this.queue = queue;
    const accepted = (bit: number) => (context.ackedFeatures & featureBit(bit)) !== 0n;
    this.writeThrough = !accepted(VIRTIO_BLK_F.FLUSH);
    this.discardAccepted = accepted(VIRTIO_BLK_F.DISCARD);
    this.writeZeroesAccepted = accepted(VIRTIO_BLK_F.WRITE_ZEROES);
  }

  /**
   * Serves every available request (as far as the rate limiter allows), then
   * interrupts the guest at most once. Throws only if `pop()` does.
   */
  processQueue(index: number): void {
    const queue = this.queue;
    if (index !== 0 || !queue) return;
    if (this.limiter?.isThrottled) return; // the timer brings us back
    for (let chain = this.heldChain ?? queue.pop(); chain !== undefined; chain = queue.pop()) {
      this.heldChain = undefined;
      if (this.limiter && !this.limiter.consume(requestBytes(chain))) {
        // Out of tokens: keep the request (it was taken off the ring) until the timer fires.
        this.heldChain = chain;
        this.stats.throttled++;
        break;
      }
      queue.addUsed(chain.head, this.serve(chain));
    }
    queue.notifyIfNeeded();
  }

  /** Attaches a rate limiter (from the drive's config); the device then owns it. */
  setRateLimiter(limiter: RateLimiter): void {
    this.limiter = limiter;
  }

  pollFds(): readonly BackendPoll[] {
    return this.limiter?.isThrottled ? [{ fd: this.limiter.timerFd, events: POLLIN }] : [];
  }

  processBackend(fd: number): void {
    if (!this.limiter || fd !== this.limiter.timerFd) return;
    this.limiter.timerFired();
    this.processQueue(0);
  }


  reset(): void {
    this.memory = undefined;
    this.queue = undefined;
    this.heldChain = undefined;
  }

  /** Closes the image; the device is unusable afterwards. */
  close(): void {
    this.reset();
    this.disk.close();
    this.limiter?.close();
  }

  /** Handles one chain and returns its used length. */
  private serve(chain: DescriptorChain): number {
    const memory = this.memory!;
    const { readable, writable, ordered } = splitChain(chain.buffers);
    const statusAt = lastByte(writable);
    if (statusAt === undefined) {
      this.stats.invalid++;
      return 0;
    }
    let outcome: Outcome;
    try {
      // 2.7.4.2: device-readable buffers come first; a readable one after a writable one is a driver bug.
      outcome = ordered ? this.execute(memory, readable, dropLastByte(writable)) : this.invalid();
    } catch (error) {
      // Nothing a request does may escape processQueue, not even a bug.
      outcome = this.failed(error);
    }
    try {
      memory.writeU8(statusAt, outcome.status);
    } catch {
      return 0;
    }
    // Failed outcomes carry written 0, so a failed IN reports just the status byte.
    return outcome.written + 1;
  }

  private execute(memory: GuestMemoryView, readable: Span[], dataIn: Span[]): Outcome {
    const header = this.scratch;
    if (!gather(memory, readable, 0, header)) {
      this.stats.invalid++;
      return IOERR;
    }
    const type = this.scratchView.getUint32(virtio_blk_outhdr.fields.type.offset, true);
    const sector = this.scratchView.getBigUint64(virtio_blk_outhdr.fields.sector.offset, true);
    const dataOut = skipBytes(readable, virtio_blk_outhdr.size);

    switch (type) {
      case VIRTIO_BLK_T.IN:
        return this.read(memory, sector, dataOut, dataIn);
      case VIRTIO_BLK_T.OUT:
        return this.write(memory, sector, dataOut, dataIn);
      case VIRTIO_BLK_T.FLUSH:
        return this.hostIo(() => {
          this.disk.flush();
          this.stats.flushes++;
        });
      case VIRTIO_BLK_T.GET_ID:
        return this.getId(memory, dataOut, dataIn);
      case VIRTIO_BLK_T.DISCARD:
      case VIRTIO_BLK_T.WRITE_ZEROES:
        return this.discardOrZero(memory, type, dataOut, dataIn);
      default:
        this.stats.unsupported++;
        return UNSUPP;
    }
  }

  private read(memory: GuestMemoryView, sector: bigint, dataOut: Span[], dataIn: Span[]): Outcome {
    const length = total(dataIn);
    if (total(dataOut) !== 0 || !this.inRange(sector, length)) return this.invalid();
    const outcome = this.hostIo(() => {
      this.disk.readIntoAll(
        dataIn.map((span) => memory.slice(span.address, span.length)),
        Number(sector) * SECTOR_SIZE,
      );
    });
    if (outcome.status !== VIRTIO_BLK_S.OK) return outcome;
    this.stats.reads++;
    this.stats.readBytes += length;
    return { status: VIRTIO_BLK_S.OK, written: length };
  }

  private write(memory: GuestMemoryView, sector: bigint, dataOut: Span[], dataIn: Span[]): Outcome {
    const length = total(dataOut);
    if (this.disk.readOnly || total(dataIn) !== 0 || !this.inRange(sector, length)) return this.invalid();
    return this.hostIo(() => {
      this.disk.writeFromAll(
        dataOut.map((span) => memory.slice(span.address, span.length)),
        Number(sector) * SECTOR_SIZE,
      );
      if (this.writeThrough) this.disk.flush();
      this.stats.writes++;
      this.stats.writtenBytes += length;
    });
  }

  private getId(memory: GuestMemoryView, dataOut: Span[], dataIn: Span[]): Outcome {
    if (total(dataOut) !== 0) return this.invalid();
    const length = Math.min(VIRTIO_BLK_ID_BYTES, total(dataIn));
    scatter(memory, dataIn, this.serial.subarray(0, length));
    this.stats.getIds++;
    return { status: VIRTIO_BLK_S.OK, written: length };
  }

  private discardOrZero(memory: GuestMemoryView, type: number, dataOut: Span[], dataIn: Span[]): Outcome {
    const zeroing = type === VIRTIO_BLK_T.WRITE_ZEROES;
    if (this.disk.readOnly) return this.invalid();
    if (!(zeroing ? this.writeZeroesAccepted : this.discardAccepted)) {
      this.stats.unsupported++;
      return UNSUPP;
    }
    const segmentSize = virtio_blk_discard_write_zeroes.size;
    const length = total(dataOut);
    if (total(dataIn) !== 0 || length === 0 || length % segmentSize !== 0 || length / segmentSize > MAX_SEGMENTS) {
      return this.invalid();
    }
    const maxSectors = zeroing ? BLOCK_MAX_WRITE_ZEROES_SECTORS : BLOCK_MAX_DISCARD_SECTORS;
    for (let offset = 0; offset < length; offset += segmentSize) {
      gather(memory, dataOut, offset, this.scratch);
      const { fields } = virtio_blk_discard_write_zeroes;
      const start = this.scratchView.getBigUint64(fields.sector.offset, true);
      const sectors = this.scratchView.getUint32(fields.num_sectors.offset, true);
      const flags = this.scratchView.getUint32(fields.flags.offset, true);
      // 5.2.6.2: unknown flags, or unmap on a discard, are UNSUPP.
      const allowedFlags = zeroing ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;
      if ((flags & ~allowedFlags) !== 0) {
        this.stats.unsupported++;
        return UNSUPP;
      }
      if (sectors > maxSectors || !this.inRange(start, sectors * SECTOR_SIZE)) return this.invalid();
      const outcome = this.hostIo(() => {
        const position = Number(start) * SECTOR_SIZE;
        if (zeroing) this.disk.writeZeroes(position, sectors * SECTOR_SIZE, (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0);
        else this.disk.discard(position, sectors * SECTOR_SIZE);
        if (this.writeThrough) this.disk.flush();
      });
      if (outcome.status !== VIRTIO_BLK_S.OK) return outcome;
    }
    if (zeroing) this.stats.writeZeroes++;
    else this.stats.discards++;
    return OK;
  }

  /** `bytes` is a whole number of sectors lying inside the drive (no u64 wrap-around). */
  private inRange(sector: bigint, bytes: number): boolean {
    if (bytes % SECTOR_SIZE !== 0) return false;
    const sectors = BigInt(bytes / SECTOR_SIZE);
    return sector <= this.capacity && sectors <= this.capacity - sector;
  }

  private invalid(): Outcome {
    this.stats.invalid++;
    return IOERR;
  }

  /** Runs host I/O; a failure (EIO, ENOSPC, ...) becomes IOERR for the guest. */
  private hostIo(action: () => void): Outcome {
    try {
      action();
      return OK;
    } catch (error) {
      return this.failed(error);
    }
  }

  private failed(error: unknown): Outcome {
    // A buffer that is not guest RAM is the driver's fault (the ring should have refused it), not the host's.
    if (error instanceof GuestMemoryError) return this.invalid();
    this.lastHostError = error instanceof Error ? error.message : String(error);
    this.stats.ioErrors++;
    return IOERR;
  }
}

/** The GET_ID string: NUL-padded to 20 bytes (no terminator when exactly 20). */
function encodeSerial(path: string, id: string | undefined): Uint8Array {
  const serial = new Uint8Array(VIRTIO_BLK_ID_BYTES);
  if (id === undefined) return serial;
  if (!/^[\x20-\x7e]*$/.test(id) || id.length > VIRTIO_BLK_ID_BYTES) {
    throw new DiskImageError(
      `disk image ${path}: id ${JSON.stringify(id)} must be printable ASCII of at most ${VIRTIO_BLK_ID_BYTES} bytes`,
    );
  }
  serial.set(new TextEncoder().encode(id));
  return serial;
}

/** Readable and writable bytes in chain order (empty buffers dropped); `ordered` is false if a readable follows a writable. */
function splitChain(buffers: readonly DescriptorBuffer[]): { readable: Span[]; writable: Span[]; ordered: boolean } {
  const readable: Span[] = [];
  const writable: Span[] = [];
  let ordered = true;
  for (const buffer of buffers) {
    if (buffer.length === 0) continue;
    const span = { address: buffer.address, length: buffer.length };
    if (buffer.writable) writable.push(span);
    else {
      if (writable.length > 0) ordered = false;
      readable.push(span);
    }
  }
  return { readable, writable, ordered };
}

function total(spans: readonly Span[]): number {
  let sum = 0;
  for (const span of spans) sum += span.length;
  return sum;
}

function lastByte(spans: readonly Span[]): number | undefined {
  const last = spans[spans.length - 1];
  return last === undefined ? undefined : last.address + last.length - 1;
}

function dropLastByte(spans: readonly Span[]): Span[] {
  const out = spans.slice(0, -1);
  const last = spans[spans.length - 1];
  if (last && last.length > 1) out.push({ address: last.address, length: last.length - 1 });
  return out;
}

function skipBytes(spans: readonly Span[], count: number): Span[] {
  const out: Span[] = [];
  let skip = count;
  for (const span of spans) {
    if (skip >= span.length) {
      skip -= span.length;
      continue;
    }
    out.push({ address: span.address + skip, length: span.length - skip });
    skip = 0;
  }
  return out;
}

/** Copies into `into` the bytes starting `offset` bytes into `spans`; false if the spans are too short. */
function gather(memory: GuestMemoryView, spans: readonly Span[], offset: number, into: Uint8Array): boolean {
  let skip = offset;
  let done = 0;
  for (const span of spans) {
    if (done === into.byteLength) break;
    if (skip >= span.length) {
      skip -= span.length;
      continue;
    }
    const take = Math.min(span.length - skip, into.byteLength - done);
    into.set(memory.slice(span.address + skip, take), done);
    done += take;
    skip = 0;
  }
  return done === into.byteLength;
}

/** Copies `data` into the start of `spans` (which the caller sized to hold it). */
function scatter(memory: GuestMemoryView, spans: readonly Span[], data: Uint8Array): void {
  let done = 0;
  for (const span of spans) {
    if (done === data.byteLength) break;
    const take = Math.min(span.length, data.byteLength - done);
    memory.slice(span.address, take).set(data.subarray(done, done + take));
    done += take;
  }
}

/** What a request moves, for the bandwidth bucket: its buffers minus the 16-byte header and the status byte. */
function requestBytes(chain: DescriptorChain): number {
  const total = chain.buffers.reduce((sum, buffer) => sum + buffer.length, 0);
  return Math.max(0, total - 17);
}

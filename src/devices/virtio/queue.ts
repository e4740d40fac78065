/**
 * The split virtqueue (virtio 1.2, section 2.7), device side.
 *
 * Everything in the rings comes from the guest, so every index, length and
 * address is checked before use, and anything a conforming driver would
 * never do throws `VirtqueueError` (the caller then marks the device
 * DEVICE_NEEDS_RESET). Nothing the guest writes can make `pop` loop forever,
 * read outside guest RAM, or throw anything else.
 *
 * Memory ordering. Guest RAM is a SharedArrayBuffer written concurrently by
 * the guest's vCPUs, which are not JS agents, so the JS memory model says
 * nothing about them; what matters is the machine code. Volt runs on x86-64
 * hosts only, whose TSO model keeps loads in order with loads and stores in
 * order with stores, and reorders only a store with a later load. So:
 * - the ring's shared words (avail idx/flags/used_event, used idx/avail_event)
 *   go through Atomics.load/store, which also stop the JIT from moving the
 *   plain descriptor reads before the avail idx load or the used element
 *   writes after the used idx store;
 * - the two places that need store-then-load ordering (write avail_event then
 *   re-read avail idx; publish used idx then read used_event/flags) rely on
 *   Atomics.store being sequentially consistent, which on x86-64 is emitted
 *   as xchg (or mov + mfence): a full barrier.
 * The same calls give acquire/release on weaker hosts, but only x86-64 is
 * built for and tested.
 *
 * A hostile driver can rewrite a descriptor while we read it. Each field is
 * read once and the value read is the one checked and returned; devices then
 * go through GuestMemoryView, which checks bounds again, so a race can at
 * worst give the device the guest's own garbage.
 *
 * Decisions:
 * - Zero-length descriptors are legal but carry no bytes: they count toward
 *   the chain length (so they cannot hide a loop) but are left out of
 *   `buffers`, and their address is not checked. Devices never see an empty
 *   buffer.
 * - Device-readable descriptors must precede device-writable ones (2.7.4.2 is
 *   a MUST for drivers; Linux always complies). Enforcing it means a device
 *   can split a chain at its first writable buffer, so a readable buffer after
 *   a writable one is a broken driver.
 * - VIRTQ_DESC_F_INDIRECT is followed whether or not the device offered
 *   VIRTIO_F_RING_INDIRECT_DESC: a driver that uses it without negotiating is
 *   out of spec, but following it costs nothing and is just as checked.
 * - The chain's total length must fit in a u32, the width of used.len: a
 *   device could never report filling more.
 * - A queue the driver did not make ready has no rings: constructing a
 *   SplitQueue for it is refused.
 */
import type { GuestMemoryView } from "../../memory/guest-memory.ts";
import type { DescriptorBuffer, DescriptorChain, QueueConfig, QueueHandle } from "./device.ts";

export const VIRTQ_MAX_SIZE = 32768;

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;

const DESCRIPTOR_SIZE = 16;
const USED_ELEMENT_SIZE = 8;
/** `next` is a u16, so no chain inside an indirect table can reach further than this. */
const MAX_INDIRECT_ENTRIES = 0x10000;
const U32_MAX = 0xffff_ffff;
/** 2^53 / 2^32: a high address word at or above this cannot be RAM Volt mapped. */
const SAFE_HIGH_WORD_LIMIT = 0x20_0000;

/** The driver broke the virtqueue rules; the device should be marked as needing a reset. */
export class VirtqueueError extends Error {
  override name = "VirtqueueError";
}

export interface SplitQueueOptions {
  /** VIRTIO_F_RING_EVENT_IDX was negotiated. */
  readonly eventIdx: boolean;
  /** Raises the queue's interrupt (the transport sets InterruptStatus and pulses the line). */
  readonly interrupt: () => void;
  /** Where to resume (a restored snapshot); both default to 0, as after a reset. */
  readonly start?: { readonly lastAvailIndex: number; readonly nextUsedIndex: number };
}

/** Sizes in bytes of the three areas for a queue of `size` entries (2.7, "Virtqueue Part Sizes"). */
export function splitQueueAreaSizes(size: number): { descriptorTable: number; availableRing: number; usedRing: number } {
  return { descriptorTable: DESCRIPTOR_SIZE * size, availableRing: 6 + 2 * size, usedRing: 6 + USED_ELEMENT_SIZE * size };
}

export class SplitQueue implements QueueHandle {
  readonly size: number;
  private readonly memory: GuestMemoryView;
  private readonly eventIdx: boolean;
  private readonly interrupt: () => void;
  private readonly descriptors: DataView;
  /** flags, idx, ring[size], used_event. */
  private readonly avail: Uint16Array;
  /** flags, idx, then the ring as u16 pairs, then avail_event at index 2 + 4 * size. */
  private readonly used16: Uint16Array;
  /** used ring elements: id at 1 + 2i, len at 2 + 2i. */
  private readonly used32: Uint32Array;
  private lastAvail: number;
  private nextUsed: number;
  /** Used entries added since notifyIfNeeded last looked (may exceed 2^16, unlike the idx difference). */
  private unsignalled = 0;
  /** nextUsed when notifyIfNeeded last looked: the `old` of vring_need_event. */
  private signalledUsed: number;

  constructor(memory: GuestMemoryView, config: QueueConfig, options: SplitQueueOptions) {
    const { size } = config;
    if (!config.ready) throw new VirtqueueError("queue is not ready");
    if (!Number.isInteger(size) || size < 1 || size > VIRTQ_MAX_SIZE || (size & (size - 1)) !== 0) {
      throw new VirtqueueError(`queue size ${size} is not a power of two in 1..${VIRTQ_MAX_SIZE}`);
    }
    const sizes = splitQueueAreaSizes(size);
    this.size = size;
    this.memory = memory;
    this.eventIdx = options.eventIdx;
    this.interrupt = options.interrupt;
    const descBytes = ringArea(memory, "descriptor table", config.descriptorTable, sizes.descriptorTable, 16);
    const availBytes = ringArea(memory, "available ring", config.availableRing, sizes.availableRing, 2);
    const usedBytes = ringArea(memory, "used ring", config.usedRing, sizes.usedRing, 4);
    this.descriptors = new DataView(descBytes.buffer, descBytes.byteOffset, descBytes.byteLength);
    this.avail = new Uint16Array(availBytes.buffer, availBytes.byteOffset, 3 + size);
    this.used16 = new Uint16Array(usedBytes.buffer, usedBytes.byteOffset, 3 + 4 * size);
    this.used32 = new Uint32Array(usedBytes.buffer, usedBytes.byteOffset, 1 + 2 * size);
    this.lastAvail = u16Option("lastAvailIndex", options.start?.lastAvailIndex ?? 0);
    this.nextUsed = u16Option("nextUsedIndex", options.start?.nextUsedIndex ?? 0);
    this.signalledUsed = this.nextUsed;
  }

  /** The next available-ring index the device will read (save it in a snapshot). */
  get lastAvailIndex(): number {
    return this.lastAvail;
  }

  /** The used-ring index the next `addUsed` will fill (save it in a snapshot). */
  get nextUsedIndex(): number {
    return this.nextUsed;
  }

  pop(): DescriptorChain | undefined {
    let pending = this.pendingEntries();
    if (pending === 0) {
      if (!this.eventIdx) return undefined;
      // Ask to be notified at the next entry, then look once more: an entry
      // added before the driver could see avail_event would otherwise come
      // with no notification and sit in the ring until the next one.
      Atomics.store(this.used16, 2 + 4 * this.size, this.lastAvail);
      pending = this.pendingEntries();
      if (pending === 0) return undefined;
    }
    const head = Atomics.load(this.avail, 2 + (this.lastAvail % this.size));
    if (head >= this.size) throw new VirtqueueError(`available ring entry ${this.lastAvail} names descriptor ${head} of ${this.size}`);
    const buffers = this.walkChain(head);
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    return { head, buffers };
  }

  addUsed(head: number, written: number): void {
    this.addUsedBatch([{ head, written }]);
  }

  addUsedBatch(entries: readonly { readonly head: number; readonly written: number }[]): void {
    if (entries.length > this.size) throw new RangeError(`${entries.length} used entries do not fit a ring of ${this.size}`);
    for (const { head, written } of entries) {
      if (!Number.isInteger(head) || head < 0 || head >= this.size) throw new RangeError(`used head ${head} is not a descriptor index`);
      if (!Number.isInteger(written) || written < 0 || written > U32_MAX) throw new RangeError(`used length ${written} is not a u32`);
    }
    for (const { head, written } of entries) {
      const slot = this.nextUsed % this.size;
      this.used32[1 + 2 * slot] = head;
      this.used32[2 + 2 * slot] = written;
      this.nextUsed = (this.nextUsed + 1) & 0xffff;
      this.unsignalled++;
    }
    // One index store for the whole batch; the element stores above cannot pass it (see the header).
    Atomics.store(this.used16, 1, this.nextUsed);
  }

  notifyIfNeeded(): void {
    if (this.unsignalled === 0) return;
    const wrapped = this.unsignalled > 0xffff;
    const oldIdx = this.signalledUsed;
    const newIdx = this.nextUsed;
    this.unsignalled = 0;
    this.signalledUsed = newIdx;
    // These loads come after addUsed's seq-cst store of used idx.
    let needed: boolean;
    if (wrapped) {
      // 2^16 entries since the last look: the idx difference has wrapped and
      // says nothing, so do what is always safe.
      needed = true;
    } else if (this.eventIdx) {
      const usedEvent = Atomics.load(this.avail, 2 + this.size);
      needed = vringNeedEvent(usedEvent, newIdx, oldIdx);
    } else {
      needed = (Atomics.load(this.avail, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    }
    if (needed) this.interrupt();
  }

  /** Entries the driver has made available that the device has not taken. */
  private pendingEntries(): number {
    const availIdx = Atomics.load(this.avail, 1);
    const pending = (availIdx - this.lastAvail) & 0xffff;
    if (pending > this.size) {
      throw new VirtqueueError(`available idx ${availIdx} is ${pending} entries past ${this.lastAvail}, more than the queue size ${this.size}`);
    }
    return pending;
  }

  private walkChain(head: number): DescriptorBuffer[] {
    const buffers: DescriptorBuffer[] = [];
    let table = this.descriptors;
    let tableEntries = this.size;
    let indirect = false;
    let index = head;
    let visited = 0;
    let total = 0;
    let seenWritable = false;
    for (;;) {
      if (index >= tableEntries) throw new VirtqueueError(`descriptor chain from ${head} reaches index ${index} of ${tableEntries}`);
      // A chain can visit each entry of its table at most once; any more is a loop.
      if (++visited > tableEntries) throw new VirtqueueError(`descriptor chain from ${head} is longer than its table (a loop?)`);
      const at = index * DESCRIPTOR_SIZE;
      const addressLow = table.getUint32(at, true);
      const addressHigh = table.getUint32(at + 4, true);
      const length = table.getUint32(at + 8, true);
      const flags = table.getUint16(at + 12, true);
      const next = table.getUint16(at + 14, true);

      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (indirect) throw new VirtqueueError(`descriptor chain from ${head}: an indirect table refers to another`);
        if (flags & VIRTQ_DESC_F_NEXT) throw new VirtqueueError(`descriptor chain from ${head}: an indirect descriptor has NEXT set`);
        if (length === 0 || length % DESCRIPTOR_SIZE !== 0 || length / DESCRIPTOR_SIZE > MAX_INDIRECT_ENTRIES) {
          throw new VirtqueueError(`descriptor chain from ${head}: indirect table length ${length} is not a whole number of descriptors (1..${MAX_INDIRECT_ENTRIES})`);
        }
        const address = guestAddress(addressHigh, addressLow);
        if (address === undefined || !this.memory.contains(address, length)) {
          throw new VirtqueueError(`descriptor chain from ${head}: indirect table ${hex(addressHigh, addressLow)}+${length} is not guest RAM`);
        }
        const bytes = this.memory.slice(address, length);
        // The spec sets no alignment for indirect tables, and DataView needs none.
        table = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        tableEntries = length / DESCRIPTOR_SIZE;
        indirect = true;
        index = 0;
        visited = 0;
        continue;
      }

      if (length > 0) {
        const writable = (flags & VIRTQ_DESC_F_WRITE) !== 0;
        if (!writable && seenWritable) {
          throw new VirtqueueError(`descriptor chain from ${head}: a device-readable buffer follows a device-writable one`);
        }
        seenWritable ||= writable;
        const address = guestAddress(addressHigh, addressLow);
        if (address === undefined || !this.memory.contains(address, length)) {
          throw new VirtqueueError(`descriptor chain from ${head}: buffer ${hex(addressHigh, addressLow)}+${length} is not guest RAM`);
        }
        total += length;
        if (total > U32_MAX) throw new VirtqueueError(`descriptor chain from ${head} is longer than 4 GiB in all`);
        buffers.push({ address, length, writable });
      }

      if (!(flags & VIRTQ_DESC_F_NEXT)) return buffers;
      index = next;
    }
  }
}

/** vring_need_event (2.7.10): did [old, new) step past the index the driver asked to hear about? */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

function ringArea(memory: GuestMemoryView, what: string, address: number, length: number, alignment: number): Uint8Array {
  if (!Number.isSafeInteger(address) || address < 0 || address % alignment !== 0) {
    throw new VirtqueueError(`${what} address ${address} is not ${alignment}-byte aligned guest memory`);
  }
  if (!memory.contains(address, length)) {
    throw new VirtqueueError(`${what} 0x${address.toString(16)}+${length} is not guest RAM`);
  }
  const bytes = memory.slice(address, length);
  // Regions start on page boundaries, so guest alignment is host alignment;
  // only a hand-built view with an odd region base could break this.
  if (bytes.byteOffset % alignment !== 0) throw new VirtqueueError(`${what} is not ${alignment}-byte aligned in host memory`);
  return bytes;
}

function guestAddress(high: number, low: number): number | undefined {
  return high < SAFE_HIGH_WORD_LIMIT ? high * 0x1_0000_0000 + low : undefined;
}

function hex(high: number, low: number): string {
  return `0x${((BigInt(high) << 32n) | BigInt(low)).toString(16)}`;
}

function u16Option(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff) throw new RangeError(`${name} ${value} is not a u16`);
  return value;
}

/**
 * The virtio-mmio transport, version 2 only (virtio 1.2, section 4.2.2): one
 * 4 KiB page of registers per device.
 *
 * Threads: the registers are served by `VirtioMmioTransport` on whichever
 * vCPU worker takes the MMIO exit, while the device runs on the I/O worker,
 * which reads the negotiated state through `VirtioMmioDeviceSide`. Both are
 * per-thread objects over one shared block (`createVirtioMmioState`, posted to
 * the workers as is). A spin lock in that block serialises every access, as in
 * serial.ts; hooks and interrupt lines are called only after it is released.
 *
 * Rules applied to the driver (the spec's "driver MUST"s, made safe):
 * - Status only gains bits; writing 0 is the one way to clear it, and resets
 *   everything (features, queues, InterruptStatus). DEVICE_NEEDS_RESET is the
 *   device's bit: the driver cannot set it.
 * - FEATURES_OK sticks only if the driver's features are a subset of those
 *   offered and include VIRTIO_F_VERSION_1 (this transport and Volt's rings
 *   are modern-only); otherwise it reads back clear, which is how the driver
 *   learns it was refused. Once it sticks, DriverFeatures is frozen.
 * - DRIVER_OK sticks only with FEATURES_OK, so whoever sees DRIVER_OK can
 *   trust `ackedFeatures()`.
 * - Queue registers can be written only before DRIVER_OK; QueueNum and the
 *   ring addresses only while the queue is not ready. QueueNum must be a power
 *   of two no larger than QueueNumMax. Anything else is ignored. A QueueSel
 *   past the last queue selects nothing: its registers read 0.
 *
 * Decisions:
 * - Registers are 32 bits wide and 4-byte aligned; other accesses below the
 *   config space read 0 and are not written.
 * - Write-only registers (selectors, QueueNum, ring addresses) read back what
 *   was written; the spec leaves such reads undefined and this helps debugging.
 * - Config space reads may be 1, 2, 4 or 8 bytes anywhere inside it (reads
 *   that run past it return 0). Driver writes to config space are ignored: no
 *   Volt device offers a writable config field. The device changes it with
 *   `VirtioMmioDeviceSide.updateConfig`, which bumps ConfigGeneration.
 * - Shared memory regions are not offered: SHMLen/SHMBase read all ones, the
 *   spec's "no such region".
 * - VendorID is 0x544c4f56, the bytes "VOLT" in register (little-endian)
 *   order, following QEMU's 0x554d4551 ("QEMU").
 */
import type { BusDevice } from "../bus.ts";
import type { InterruptLine } from "../interrupt.ts";
import { VIRTIO_F_VERSION_1, type QueueConfig } from "./device.ts";

export const VIRTIO_MMIO_SPAN = 0x1000;
export const VIRTIO_MMIO_MAGIC = 0x7472_6976; // "virt"
export const VIRTIO_MMIO_VERSION = 2;
export const VIRTIO_MMIO_VENDOR_ID = 0x544c_4f56; // "VOLT"
/** Where the driver writes a queue index to notify it: register an ioeventfd (4 bytes, datamatch = index) here. */
export const QUEUE_NOTIFY_OFFSET = 0x050;
export const queueNotifyOffset = QUEUE_NOTIFY_OFFSET;
export const VIRTIO_MMIO_CONFIG_OFFSET = 0x100;
export const VIRTIO_MMIO_CONFIG_MAX = VIRTIO_MMIO_SPAN - VIRTIO_MMIO_CONFIG_OFFSET;
/** Far above any Volt device (virtio-net with many queue pairs would need ~ 2 × vCPUs + 1). */
export const VIRTIO_MMIO_MAX_QUEUES = 1024;

/** Register offsets (virtio 1.2, table 4.1). */
export const VIRTIO_MMIO = {
  MAGIC_VALUE: 0x000,
  VERSION: 0x004,
  DEVICE_ID: 0x008,
  VENDOR_ID: 0x00c,
  DEVICE_FEATURES: 0x010,
  DEVICE_FEATURES_SEL: 0x014,
  DRIVER_FEATURES: 0x020,
  DRIVER_FEATURES_SEL: 0x024,
  QUEUE_SEL: 0x030,
  QUEUE_NUM_MAX: 0x034,
  QUEUE_NUM: 0x038,
  QUEUE_READY: 0x044,
  QUEUE_NOTIFY: QUEUE_NOTIFY_OFFSET,
  INTERRUPT_STATUS: 0x060,
  INTERRUPT_ACK: 0x064,
  STATUS: 0x070,
  QUEUE_DESC_LOW: 0x080,
  QUEUE_DESC_HIGH: 0x084,
  QUEUE_DRIVER_LOW: 0x090,
  QUEUE_DRIVER_HIGH: 0x094,
  QUEUE_DEVICE_LOW: 0x0a0,
  QUEUE_DEVICE_HIGH: 0x0a4,
  SHM_SEL: 0x0ac,
  SHM_LEN_LOW: 0x0b0,
  SHM_LEN_HIGH: 0x0b4,
  SHM_BASE_LOW: 0x0b8,
  SHM_BASE_HIGH: 0x0bc,
  QUEUE_RESET: 0x0c0,
  CONFIG_GENERATION: 0x0fc,
  CONFIG: VIRTIO_MMIO_CONFIG_OFFSET,
} as const;

/** Device status bits (virtio 1.2, section 2.1). */
export const VIRTIO_STATUS = {
  ACKNOWLEDGE: 0x01,
  DRIVER: 0x02,
  DRIVER_OK: 0x04,
  FEATURES_OK: 0x08,
  DEVICE_NEEDS_RESET: 0x40,
  FAILED: 0x80,
} as const;

/** InterruptStatus bits. */
export const VIRTIO_MMIO_INT_VRING = 0x1;
export const VIRTIO_MMIO_INT_CONFIG = 0x2;

export interface VirtioMmioSpec {
  readonly deviceType: number;
  readonly queueMaxSizes: readonly number[];
  /** Device feature bits; VIRTIO_F_VERSION_1 is added here. */
  readonly features: bigint;
  readonly config: Uint8Array;
}

/** The state every thread's transport and the device side share; post it to workers as is. */
export interface VirtioMmioState {
  readonly buffer: SharedArrayBuffer;
}

export interface VirtioMmioHooks {
  /** The driver wrote QueueNotify and no ioeventfd caught it. Called outside the lock. */
  onQueueNotify(queueIndex: number): void;
  /** After every Status write (0 = reset), with the status as it now reads. Called outside the lock. */
  onStatusChange(status: number): void;
  /** The device's interrupt, re-pulsed when an InterruptACK leaves events unacknowledged. */
  interrupt: InterruptLine;
}

// Shared block: header slots (u32), one block of slots per queue, then config bytes.
const SLOT_LOCK = 0;
const SLOT_STATUS = 1;
const SLOT_DEVICE_FEATURES_SEL = 2;
const SLOT_DRIVER_FEATURES_SEL = 3;
const SLOT_DRIVER_FEATURES_LOW = 4;
const SLOT_DRIVER_FEATURES_HIGH = 5;
/** OR of everything written to DriverFeatures words past bit 63: any of it is a feature never offered. */
const SLOT_DRIVER_FEATURES_BEYOND = 6;
const SLOT_QUEUE_SEL = 7;
const SLOT_INTERRUPT_STATUS = 8;
const SLOT_CONFIG_GENERATION = 9;
const SLOT_DEVICE_ID = 10;
const SLOT_QUEUE_COUNT = 11;
const SLOT_DEVICE_FEATURES_LOW = 12;
const SLOT_DEVICE_FEATURES_HIGH = 13;
const SLOT_CONFIG_LENGTH = 14;
/** Bumped by every device reset, so the I/O worker notices a reset even when a full re-init follows before it looks. */
const SLOT_RESET_COUNT = 15;
const HEADER_SLOTS = 16;

const Q_NUM_MAX = 0;
const Q_NUM = 1;
const Q_READY = 2;
const Q_DESC_LOW = 3;
const Q_DESC_HIGH = 4;
const Q_DRIVER_LOW = 5;
const Q_DRIVER_HIGH = 6;
const Q_DEVICE_LOW = 7;
const Q_DEVICE_HIGH = 8;
const QUEUE_SLOTS = 9;

const MAX_QUEUE_SIZE = 32768;
const U32_MAX = 0xffff_ffff;
const ALL_ONES = 0xffff_ffff;

export function createVirtioMmioState(spec: VirtioMmioSpec): VirtioMmioState {
  const { deviceType, queueMaxSizes, features, config } = spec;
  if (!Number.isInteger(deviceType) || deviceType < 0 || deviceType > U32_MAX) throw new RangeError(`device type ${deviceType} is not a u32`);
  if (queueMaxSizes.length > VIRTIO_MMIO_MAX_QUEUES) throw new RangeError(`${queueMaxSizes.length} queues: at most ${VIRTIO_MMIO_MAX_QUEUES}`);
  for (const max of queueMaxSizes) {
    if (!Number.isInteger(max) || max < 1 || max > MAX_QUEUE_SIZE || (max & (max - 1)) !== 0) {
      throw new RangeError(`queue size ${max} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
    }
  }
  if (features < 0n || features >= 1n << 64n) throw new RangeError(`features 0x${features.toString(16)} do not fit 64 bits`);
  if (config.length > VIRTIO_MMIO_CONFIG_MAX) throw new RangeError(`config space of ${config.length} bytes: at most ${VIRTIO_MMIO_CONFIG_MAX}`);

  const slotCount = HEADER_SLOTS + queueMaxSizes.length * QUEUE_SLOTS;
  const buffer = new SharedArrayBuffer(slotCount * 4 + config.length);
  const slots = new Uint32Array(buffer, 0, slotCount);
  const offered = features | (1n << BigInt(VIRTIO_F_VERSION_1));
  slots[SLOT_DEVICE_ID] = deviceType;
  slots[SLOT_QUEUE_COUNT] = queueMaxSizes.length;
  slots[SLOT_DEVICE_FEATURES_LOW] = Number(offered & 0xffff_ffffn);
  slots[SLOT_DEVICE_FEATURES_HIGH] = Number(offered >> 32n);
  slots[SLOT_CONFIG_LENGTH] = config.length;
  queueMaxSizes.forEach((max, i) => (slots[HEADER_SLOTS + i * QUEUE_SLOTS + Q_NUM_MAX] = max));
  new Uint8Array(buffer, slotCount * 4, config.length).set(config);
  const state = { buffer };
  sharedViews(state).reset();
  return state;
}

/** The registers as the guest sees them, served on a vCPU worker. */
export class VirtioMmioTransport implements BusDevice {
  private readonly shared: SharedMmio;
  private readonly hooks: VirtioMmioHooks;

  constructor(state: VirtioMmioState, hooks: VirtioMmioHooks) {
    this.shared = sharedViews(state);
    this.hooks = hooks;
  }

  read(offset: number, data: Uint8Array): void {
    const shared = this.shared;
    if (offset >= VIRTIO_MMIO_CONFIG_OFFSET) {
      shared.lock();
      try {
        shared.readConfig(offset - VIRTIO_MMIO_CONFIG_OFFSET, data);
      } finally {
        shared.unlock();
      }
      return;
    }
    if (!isRegisterAccess(offset, data)) {
      data.fill(0);
      return;
    }
    let value: number;
    shared.lock();
    try {
      value = shared.readRegister(offset);
    } finally {
      shared.unlock();
    }
    new DataView(data.buffer, data.byteOffset, 4).setUint32(0, value, true);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset >= VIRTIO_MMIO_CONFIG_OFFSET || !isRegisterAccess(offset, data)) return;
    const value = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
    const shared = this.shared;
    if (offset === QUEUE_NOTIFY_OFFSET) {
      // Needs no lock: the queue count never changes.
      if (value < shared.queueCount) this.hooks.onQueueNotify(value);
      return;
    }
    let effect: WriteEffect;
    shared.lock();
    try {
      effect = shared.writeRegister(offset, value);
    } finally {
      shared.unlock();
    }
    if (effect.status !== undefined) this.hooks.onStatusChange(effect.status);
    if (effect.interrupt) this.hooks.interrupt.trigger();
  }
}

/** The I/O worker's view of the same state: what the driver negotiated, and the device's interrupts. */
export class VirtioMmioDeviceSide {
  private readonly shared: SharedMmio;
  private readonly interrupt: InterruptLine;

  constructor(state: VirtioMmioState, interrupt: InterruptLine) {
    this.shared = sharedViews(state);
    this.interrupt = interrupt;
  }

  get queueCount(): number {
    return this.shared.queueCount;
  }

  status(): number {
    return this.locked(() => this.shared.slots[SLOT_STATUS]!);
  }

  /** How many times the driver has reset the device (wraps at 2^32). */
  resetCount(): number {
    return this.locked(() => this.shared.slots[SLOT_RESET_COUNT]!);
  }

  /** The features the driver accepted; 0n until FEATURES_OK has stuck (nothing is accepted before). */
  ackedFeatures(): bigint {
    return this.locked(() => {
      const s = this.shared.slots;
      if (!(s[SLOT_STATUS]! & VIRTIO_STATUS.FEATURES_OK)) return 0n;
      return (BigInt(s[SLOT_DRIVER_FEATURES_HIGH]!) << 32n) | BigInt(s[SLOT_DRIVER_FEATURES_LOW]!);
    });
  }

  /**
   * Queue `index` as the driver set it up. Addresses above 2^53 come out as
   * unsafe integers, which no guest-memory check accepts.
   */
  queueConfig(index: number): QueueConfig {
    if (!Number.isInteger(index) || index < 0 || index >= this.shared.queueCount) throw new RangeError(`no queue ${index}`);
    return this.locked(() => {
      const s = this.shared.slots;
      const q = HEADER_SLOTS + index * QUEUE_SLOTS;
      const address = (low: number) => s[q + low + 1]! * 0x1_0000_0000 + s[q + low]!;
      return {
        size: s[q + Q_NUM]!,
        ready: s[q + Q_READY] === 1,
        descriptorTable: address(Q_DESC_LOW),
        availableRing: address(Q_DRIVER_LOW),
        usedRing: address(Q_DEVICE_LOW),
      };
    });
  }

  /** Used buffers are ready. Dropped unless the driver has the device running (DRIVER_OK). */
  raiseUsedBufferInterrupt(): void {
    const raised = this.locked(() => {
      if (!(this.shared.slots[SLOT_STATUS]! & VIRTIO_STATUS.DRIVER_OK)) return false;
      Atomics.or(this.shared.slots, SLOT_INTERRUPT_STATUS, VIRTIO_MMIO_INT_VRING);
      return true;
    });
    if (raised) this.interrupt.trigger();
  }

  raiseConfigChangeInterrupt(): void {
    this.locked(() => Atomics.or(this.shared.slots, SLOT_INTERRUPT_STATUS, VIRTIO_MMIO_INT_CONFIG));
    this.interrupt.trigger();
  }

  /**
   * The driver broke the device: set DEVICE_NEEDS_RESET and tell it with a
   * config-change interrupt (2.1.2). Only while DRIVER_OK is set: an error
   * noticed after the driver has already reset the device must not mark the
   * fresh one. Returns whether it marked.
   */
  markNeedsReset(): boolean {
    const marked = this.locked(() => {
      const s = this.shared.slots;
      if (!(s[SLOT_STATUS]! & VIRTIO_STATUS.DRIVER_OK)) return false;
      s[SLOT_STATUS] = s[SLOT_STATUS]! | VIRTIO_STATUS.DEVICE_NEEDS_RESET;
      Atomics.or(s, SLOT_INTERRUPT_STATUS, VIRTIO_MMIO_INT_CONFIG);
      return true;
    });
    if (marked) this.interrupt.trigger();
    return marked;
  }

  /** The device changed its config space (say, a resized disk): bump ConfigGeneration and tell the driver. */
  updateConfig(offset: number, bytes: Uint8Array): void {
    const length = this.shared.configLength;
    if (!Number.isInteger(offset) || offset < 0 || offset + bytes.length > length) {
      throw new RangeError(`config update ${offset}+${bytes.length} is outside the ${length}-byte config space`);
    }
    this.locked(() => {
      this.shared.config.set(bytes, offset);
      this.shared.slots[SLOT_CONFIG_GENERATION] = (this.shared.slots[SLOT_CONFIG_GENERATION]! + 1) >>> 0;
      Atomics.or(this.shared.slots, SLOT_INTERRUPT_STATUS, VIRTIO_MMIO_INT_CONFIG);
    });
    this.interrupt.trigger();
  }

  private locked<T>(action: () => T): T {
    this.shared.lock();
    try {
      return action();
    } finally {
      this.shared.unlock();
    }
  }
}

function isRegisterAccess(offset: number, data: Uint8Array): boolean {
  return data.length === 4 && Number.isInteger(offset) && offset >= 0 && offset % 4 === 0;
}

interface WriteEffect {
  /** Set when Status was written: the status as it now reads. */
  readonly status?: number;
  /** Pulse the interrupt line. */
  readonly interrupt?: boolean;
}

const NO_EFFECT: WriteEffect = {};

const viewsByBuffer = new WeakMap<SharedArrayBuffer, SharedMmio>();

function sharedViews(state: VirtioMmioState): SharedMmio {
  let shared = viewsByBuffer.get(state.buffer);
  if (!shared) {
    shared = new SharedMmio(state.buffer);
    viewsByBuffer.set(state.buffer, shared);
  }
  return shared;
}

/**
 * This thread's views of the shared block. Methods other than lock/unlock
 * expect the caller to hold the lock, which orders their plain accesses.
 * InterruptStatus is the exception that is also changed with atomic
 * read-modify-writes, so that a bit set and a bit acknowledged never lose
 * each other whatever else changes.
 */
class SharedMmio {
  readonly slots: Uint32Array;
  readonly config: Uint8Array;
  readonly queueCount: number;
  readonly configLength: number;

  constructor(buffer: SharedArrayBuffer) {
    if (!(buffer instanceof SharedArrayBuffer) || buffer.byteLength < HEADER_SLOTS * 4) {
      throw new TypeError("not a virtio-mmio state: use createVirtioMmioState()");
    }
    const header = new Uint32Array(buffer, 0, HEADER_SLOTS);
    this.queueCount = header[SLOT_QUEUE_COUNT]!;
    this.configLength = header[SLOT_CONFIG_LENGTH]!;
    const slotCount = HEADER_SLOTS + this.queueCount * QUEUE_SLOTS;
    if (buffer.byteLength !== slotCount * 4 + this.configLength) {
      throw new TypeError("not a virtio-mmio state: use createVirtioMmioState()");
    }
    this.slots = new Uint32Array(buffer, 0, slotCount);
    this.config = new Uint8Array(buffer, slotCount * 4, this.configLength);
  }

  lock(): void {
    // Holders touch a few words, so spinning beats sleeping.
    while (Atomics.compareExchange(this.slots, SLOT_LOCK, 0, 1) !== 0);
  }

  unlock(): void {
    Atomics.store(this.slots, SLOT_LOCK, 0);
  }

  /** Device reset (Status = 0): everything the driver set goes back to its power-on value. */
  reset(): void {
    const s = this.slots;
    s[SLOT_STATUS] = 0;
    s[SLOT_RESET_COUNT] = (s[SLOT_RESET_COUNT]! + 1) >>> 0;
    s[SLOT_DEVICE_FEATURES_SEL] = 0;
    s[SLOT_DRIVER_FEATURES_SEL] = 0;
    s[SLOT_DRIVER_FEATURES_LOW] = 0;
    s[SLOT_DRIVER_FEATURES_HIGH] = 0;
    s[SLOT_DRIVER_FEATURES_BEYOND] = 0;
    s[SLOT_QUEUE_SEL] = 0;
    Atomics.store(s, SLOT_INTERRUPT_STATUS, 0);
    for (let i = 0; i < this.queueCount; i++) {
      const q = HEADER_SLOTS + i * QUEUE_SLOTS;
      // QueueNum starts at the maximum (as in QEMU) so a driver that never writes it still gets a valid size.
      s[q + Q_NUM] = s[q + Q_NUM_MAX]!;
      for (let slot = Q_READY; slot < QUEUE_SLOTS; slot++) s[q + slot] = 0;
    }
  }

  readConfig(offset: number, data: Uint8Array): void {
    if (offset + data.length > this.configLength) {
      data.fill(0);
      return;
    }
    data.set(this.config.subarray(offset, offset + data.length));
  }

  readRegister(offset: number): number {
    const s = this.slots;
    const q = this.selectedQueue();
    switch (offset) {
      case VIRTIO_MMIO.MAGIC_VALUE:
        return VIRTIO_MMIO_MAGIC;
      case VIRTIO_MMIO.VERSION:
        return VIRTIO_MMIO_VERSION;
      case VIRTIO_MMIO.DEVICE_ID:
        return s[SLOT_DEVICE_ID]!;
      case VIRTIO_MMIO.VENDOR_ID:
        return VIRTIO_MMIO_VENDOR_ID;
      case VIRTIO_MMIO.DEVICE_FEATURES:
        return featureWord(s, s[SLOT_DEVICE_FEATURES_SEL]!, SLOT_DEVICE_FEATURES_LOW, SLOT_DEVICE_FEATURES_HIGH);
      case VIRTIO_MMIO.DEVICE_FEATURES_SEL:
        return s[SLOT_DEVICE_FEATURES_SEL]!;
      case VIRTIO_MMIO.DRIVER_FEATURES:
        return featureWord(s, s[SLOT_DRIVER_FEATURES_SEL]!, SLOT_DRIVER_FEATURES_LOW, SLOT_DRIVER_FEATURES_HIGH);
      case VIRTIO_MMIO.DRIVER_FEATURES_SEL:
        return s[SLOT_DRIVER_FEATURES_SEL]!;
      case VIRTIO_MMIO.QUEUE_SEL:
        return s[SLOT_QUEUE_SEL]!;
      case VIRTIO_MMIO.QUEUE_NUM_MAX:
        return q === undefined ? 0 : s[q + Q_NUM_MAX]!;
      case VIRTIO_MMIO.QUEUE_NUM:
        return q === undefined ? 0 : s[q + Q_NUM]!;
      case VIRTIO_MMIO.QUEUE_READY:
        return q === undefined ? 0 : s[q + Q_READY]!;
      case VIRTIO_MMIO.INTERRUPT_STATUS:
        return Atomics.load(s, SLOT_INTERRUPT_STATUS);
      case VIRTIO_MMIO.STATUS:
        return s[SLOT_STATUS]!;
      case VIRTIO_MMIO.QUEUE_DESC_LOW:
      case VIRTIO_MMIO.QUEUE_DESC_HIGH:
      case VIRTIO_MMIO.QUEUE_DRIVER_LOW:
      case VIRTIO_MMIO.QUEUE_DRIVER_HIGH:
      case VIRTIO_MMIO.QUEUE_DEVICE_LOW:
      case VIRTIO_MMIO.QUEUE_DEVICE_HIGH:
        return q === undefined ? 0 : s[q + addressSlot(offset)]!;
      case VIRTIO_MMIO.SHM_LEN_LOW:
      case VIRTIO_MMIO.SHM_LEN_HIGH:
      case VIRTIO_MMIO.SHM_BASE_LOW:
      case VIRTIO_MMIO.SHM_BASE_HIGH:
        return ALL_ONES;
      case VIRTIO_MMIO.CONFIG_GENERATION:
        return s[SLOT_CONFIG_GENERATION]!;
      default:
        return 0;
    }
  }

  writeRegister(offset: number, value: number): WriteEffect {
    const s = this.slots;
    switch (offset) {
      case VIRTIO_MMIO.DEVICE_FEATURES_SEL:
        s[SLOT_DEVICE_FEATURES_SEL] = value;
        return NO_EFFECT;
      case VIRTIO_MMIO.DRIVER_FEATURES_SEL:
        s[SLOT_DRIVER_FEATURES_SEL] = value;
        return NO_EFFECT;
      case VIRTIO_MMIO.DRIVER_FEATURES: {
        if (s[SLOT_STATUS]! & VIRTIO_STATUS.FEATURES_OK) return NO_EFFECT;
        const word = s[SLOT_DRIVER_FEATURES_SEL]!;
        if (word === 0) s[SLOT_DRIVER_FEATURES_LOW] = value;
        else if (word === 1) s[SLOT_DRIVER_FEATURES_HIGH] = value;
        else s[SLOT_DRIVER_FEATURES_BEYOND] = s[SLOT_DRIVER_FEATURES_BEYOND]! | value;
        return NO_EFFECT;
      }
      case VIRTIO_MMIO.QUEUE_SEL:
        s[SLOT_QUEUE_SEL] = value;
        return NO_EFFECT;
      case VIRTIO_MMIO.QUEUE_NUM: {
        const q = this.configurableQueue();
        if (q !== undefined && value >= 1 && value <= s[q + Q_NUM_MAX]! && (value & (value - 1)) === 0) s[q + Q_NUM] = value;
        return NO_EFFECT;
      }
      case VIRTIO_MMIO.QUEUE_READY: {
        const q = this.selectedQueue();
        if (q !== undefined && !(s[SLOT_STATUS]! & VIRTIO_STATUS.DRIVER_OK) && (value === 0 || value === 1)) s[q + Q_READY] = value;
        return NO_EFFECT;
      }
      case VIRTIO_MMIO.QUEUE_DESC_LOW:
      case VIRTIO_MMIO.QUEUE_DESC_HIGH:
      case VIRTIO_MMIO.QUEUE_DRIVER_LOW:
      case VIRTIO_MMIO.QUEUE_DRIVER_HIGH:
      case VIRTIO_MMIO.QUEUE_DEVICE_LOW:
      case VIRTIO_MMIO.QUEUE_DEVICE_HIGH: {
        const q = this.configurableQueue();
        if (q !== undefined) s[q + addressSlot(offset)] = value;
        return NO_EFFECT;
      }
      case VIRTIO_MMIO.INTERRUPT_ACK: {
        const before = Atomics.and(s, SLOT_INTERRUPT_STATUS, ~value >>> 0);
        // An edge line cannot say "still pending": pulse again for what the driver left unacknowledged.
        return { interrupt: (before & ~value) !== 0 };
      }
      case VIRTIO_MMIO.STATUS:
        return { status: this.writeStatus(value) };
      default:
        // Read-only registers, QueueReset (VIRTIO_F_RING_RESET is not offered), SHMSel.
        return NO_EFFECT;
    }
  }

  private writeStatus(value: number): number {
    const s = this.slots;
    if (value === 0) {
      this.reset();
      return 0;
    }
    const before = s[SLOT_STATUS]!;
    let after = (before | value) & 0xff & ~VIRTIO_STATUS.DEVICE_NEEDS_RESET;
    after |= before & VIRTIO_STATUS.DEVICE_NEEDS_RESET;
    if (after & VIRTIO_STATUS.FEATURES_OK && !(before & VIRTIO_STATUS.FEATURES_OK) && !this.featuresAcceptable()) {
      after &= ~VIRTIO_STATUS.FEATURES_OK;
    }
    if (!(after & VIRTIO_STATUS.FEATURES_OK)) after &= ~VIRTIO_STATUS.DRIVER_OK;
    s[SLOT_STATUS] = after;
    return after;
  }

  private featuresAcceptable(): boolean {
    const s = this.slots;
    const low = s[SLOT_DRIVER_FEATURES_LOW]!;
    const high = s[SLOT_DRIVER_FEATURES_HIGH]!;
    const version1 = 1 << (VIRTIO_F_VERSION_1 - 32);
    return (
      (low & ~s[SLOT_DEVICE_FEATURES_LOW]!) === 0 &&
      (high & ~s[SLOT_DEVICE_FEATURES_HIGH]!) === 0 &&
      s[SLOT_DRIVER_FEATURES_BEYOND] === 0 &&
      (high & version1) !== 0
    );
  }

  /** First slot of the queue QueueSel names, or undefined past the last queue. */
  private selectedQueue(): number | undefined {
    const index = this.slots[SLOT_QUEUE_SEL]!;
    return index < this.queueCount ? HEADER_SLOTS + index * QUEUE_SLOTS : undefined;
  }

  /** The selected queue if its size and addresses may still change: before DRIVER_OK and while not ready. */
  private configurableQueue(): number | undefined {
    const q = this.selectedQueue();
    if (q === undefined || this.slots[SLOT_STATUS]! & VIRTIO_STATUS.DRIVER_OK || this.slots[q + Q_READY]) return undefined;
    return q;
  }
}

function featureWord(s: Uint32Array, select: number, lowSlot: number, highSlot: number): number {
  if (select === 0) return s[lowSlot]!;
  if (select === 1) return s[highSlot]!;
  return 0;
}

function addressSlot(offset: number): number {
  switch (offset) {
    case VIRTIO_MMIO.QUEUE_DESC_LOW:
      return Q_DESC_LOW;
    case VIRTIO_MMIO.QUEUE_DESC_HIGH:
      return Q_DESC_HIGH;
    case VIRTIO_MMIO.QUEUE_DRIVER_LOW:
      return Q_DRIVER_LOW;
    case VIRTIO_MMIO.QUEUE_DRIVER_HIGH:
      return Q_DRIVER_HIGH;
    case VIRTIO_MMIO.QUEUE_DEVICE_LOW:
      return Q_DEVICE_LOW;
    default:
      return Q_DEVICE_HIGH;
  }
}

/**
 * A 16550A UART, the guest's console (Volt maps it at port 0x3f8, IRQ 4).
 *
 * Every vCPU worker calls the device directly on its own port-I/O exits, so
 * each thread holds its own `Serial16550`, and all of them share one state
 * block (`createSerialState()`, posted to the workers). A spin lock in that
 * block serialises every register access; interrupts are raised only after
 * the lock is released, so an interrupt implementation never runs under it.
 *
 * Behaviour the Linux 8250 driver relies on:
 * - THR empties at once (output never blocks): LSR always has THRE|TEMT, and
 *   a THR-empty interrupt is pending after every THR write and whenever the
 *   guest turns IER.THRI on. Reading IIR when it reports THR-empty clears it.
 * - Received data is pending while the input queue is non-empty and IER.RDI
 *   is set; it outranks THR-empty in IIR. LSR.DR says input is waiting.
 * - IIR's top bits report the FIFO as enabled once FCR bit 0 is set, which is
 *   how the driver tells a 16550A from older parts.
 * - Loopback (MCR bit 4) sends THR to the receiver and MCR outputs to MSR.
 *
 * Decisions:
 * - Output: a 64 KiB ring the host drains with `takeSerialOutput`. When it is
 *   full the OLDEST byte is dropped (and counted, `serialOutputDropped`): the
 *   newest output (say, a panic) is what an operator needs.
 * - Input: one 4 KiB queue stands in for the 16550's 64-byte receive FIFO
 *   plus a host-side backlog; the guest cannot tell them apart (we report no
 *   overruns and raise the receive interrupt from the first byte), so one
 *   queue is simpler and lets the host hand over a paste in one call. FCR's
 *   "clear receive FIFO" is ignored, as in vm-superio: the driver sets it on
 *   every open, and that would discard what the user typed during boot.
 * - The registers are 8 bits wide. An access of any other size, or outside
 *   the 8 registers, does nothing: reads return all ones, writes are dropped.
 */
import type { BusDevice } from "../bus.ts";
import type { InterruptLine } from "../interrupt.ts";

export const SERIAL_REGISTER_COUNT = 8;
export const SERIAL_OUTPUT_CAPACITY = 64 * 1024;
export const SERIAL_INPUT_CAPACITY = 4 * 1024;

// Register offsets. With LCR.DLAB set, offsets 0 and 1 are the divisor latch.
const REG_DATA = 0; // read RBR, write THR; DLL under DLAB
const REG_IER = 1; // DLM under DLAB
const REG_IIR_FCR = 2; // read IIR, write FCR
const REG_LCR = 3;
const REG_MCR = 4;
const REG_LSR = 5;
const REG_MSR = 6;
const REG_SCR = 7;

const IER_RDI = 0x01;
const IER_THRI = 0x02;
const IER_VALID = 0x0f; // the four sources a 16550A has

const IIR_NO_INTERRUPT = 0x01;
const IIR_THR_EMPTY = 0x02;
const IIR_RECEIVED_DATA = 0x04;
const IIR_FIFOS_ENABLED = 0xc0;

const FCR_ENABLE_FIFO = 0x01;

const LCR_DLAB = 0x80;

const MCR_DTR = 0x01;
const MCR_RTS = 0x02;
const MCR_OUT1 = 0x04;
const MCR_OUT2 = 0x08;
const MCR_LOOP = 0x10;
const MCR_VALID = 0x1f;

const LSR_DATA_READY = 0x01;
const LSR_THR_EMPTY = 0x20;
const LSR_TRANSMITTER_EMPTY = 0x40;

const MSR_CTS = 0x10;
const MSR_DSR = 0x20;
const MSR_RI = 0x40;
const MSR_DCD = 0x80;
// Outside loopback the (absent) modem is always there and ready.
const MSR_CONNECTED = MSR_DCD | MSR_DSR | MSR_CTS;

// 9600 baud: what firmware leaves behind. Volt ignores the rate.
const DEFAULT_DIVISOR_LOW = 0x0c;
const DEFAULT_LCR = 0x03; // 8 data bits
const DEFAULT_MCR = MCR_OUT2;

// Shared block: Int32 slots, then the drop counter, then the two rings.
const SLOT_LOCK = 0;
const SLOT_IER = 1;
const SLOT_LCR = 2;
const SLOT_MCR = 3;
const SLOT_SCR = 4;
const SLOT_DLL = 5;
const SLOT_DLM = 6;
const SLOT_FCR_FIFO = 7;
const SLOT_THR_EMPTY_PENDING = 8;
const SLOT_OUT_START = 9;
const SLOT_OUT_LENGTH = 10;
const SLOT_IN_START = 11;
const SLOT_IN_LENGTH = 12;
const SLOT_COUNT = 14; // keeps the Float64 that follows 8-byte aligned
const DROPPED_OFFSET = SLOT_COUNT * 4;
const OUTPUT_OFFSET = DROPPED_OFFSET + 8;
const INPUT_OFFSET = OUTPUT_OFFSET + SERIAL_OUTPUT_CAPACITY;
const STATE_BYTES = INPUT_OFFSET + SERIAL_INPUT_CAPACITY;

/** The state every thread's `Serial16550` shares; post it to workers as is. */
export interface SerialState {
  readonly buffer: SharedArrayBuffer;
}

export function createSerialState(): SerialState {
  const state = { buffer: new SharedArrayBuffer(STATE_BYTES) };
  const slots = new Int32Array(state.buffer, 0, SLOT_COUNT);
  slots[SLOT_LCR] = DEFAULT_LCR;
  slots[SLOT_MCR] = DEFAULT_MCR;
  slots[SLOT_DLL] = DEFAULT_DIVISOR_LOW;
  return state;
}

/** Drains everything the guest has written since the last call. */
export function takeSerialOutput(state: SerialState): Uint8Array {
  const shared = sharedViews(state);
  shared.lock();
  try {
    return shared.takeOutput();
  } finally {
    shared.unlock();
  }
}

/** How many output bytes were dropped because the host did not drain in time. */
export function serialOutputDropped(state: SerialState): number {
  const shared = sharedViews(state);
  shared.lock();
  try {
    return shared.dropped[0]!;
  } finally {
    shared.unlock();
  }
}

/**
 * Queues bytes for the guest to read, without raising an interrupt (see
 * `Serial16550.deliverInput`). Returns how many fit; the caller keeps the
 * rest. Accepts nothing while the guest has the UART in loopback.
 */
export function enqueueSerialInput(state: SerialState, bytes: Uint8Array): number {
  return sharedViews(state).enqueueLocked(bytes).accepted;
}

export class Serial16550 implements BusDevice {
  private readonly shared: SharedSerial;
  private readonly irq: InterruptLine;

  constructor(state: SerialState, irq: InterruptLine) {
    this.shared = sharedViews(state);
    this.irq = irq;
  }

  read(offset: number, data: Uint8Array): void {
    if (data.length !== 1 || !isRegister(offset)) {
      data.fill(0xff);
      return;
    }
    const shared = this.shared;
    shared.lock();
    try {
      data[0] = shared.readRegister(offset);
    } finally {
      shared.unlock();
    }
  }

  write(offset: number, data: Uint8Array): void {
    if (data.length !== 1 || !isRegister(offset)) return;
    const shared = this.shared;
    let raise: boolean;
    shared.lock();
    try {
      raise = shared.writeRegister(offset, data[0]!);
    } finally {
      shared.unlock();
    }
    if (raise) this.irq.trigger();
  }

  /**
   * Host side: queues input and, if the guest has the receive interrupt
   * enabled, raises it. Returns how many bytes fit (see `enqueueSerialInput`).
   */
  deliverInput(bytes: Uint8Array): number {
    const { accepted, raise } = this.shared.enqueueLocked(bytes);
    if (raise) this.irq.trigger();
    return accepted;
  }
}

function isRegister(offset: number): boolean {
  return Number.isInteger(offset) && offset >= 0 && offset < SERIAL_REGISTER_COUNT;
}

const viewsByBuffer = new WeakMap<SharedArrayBuffer, SharedSerial>();

function sharedViews(state: SerialState): SharedSerial {
  let shared = viewsByBuffer.get(state.buffer);
  if (!shared) {
    shared = new SharedSerial(state.buffer);
    viewsByBuffer.set(state.buffer, shared);
  }
  return shared;
}

/**
 * This thread's views of the shared block. Methods other than lock/unlock
 * and `enqueueLocked` expect the caller to hold the lock; plain (non-atomic)
 * reads and writes are safe there because taking and releasing the lock are
 * atomic operations on the same word, which orders everything in between.
 */
class SharedSerial {
  private readonly slots: Int32Array;
  readonly dropped: Float64Array;
  private readonly output: Uint8Array;
  private readonly input: Uint8Array;

  constructor(buffer: SharedArrayBuffer) {
    if (!(buffer instanceof SharedArrayBuffer) || buffer.byteLength !== STATE_BYTES) {
      throw new TypeError("not a serial state: use createSerialState()");
    }
    this.slots = new Int32Array(buffer, 0, SLOT_COUNT);
    this.dropped = new Float64Array(buffer, DROPPED_OFFSET, 1);
    this.output = new Uint8Array(buffer, OUTPUT_OFFSET, SERIAL_OUTPUT_CAPACITY);
    this.input = new Uint8Array(buffer, INPUT_OFFSET, SERIAL_INPUT_CAPACITY);
  }

  lock(): void {
    // Holders only touch a few words (or copy at most 64 KiB), so spinning beats sleeping.
    while (Atomics.compareExchange(this.slots, SLOT_LOCK, 0, 1) !== 0);
  }

  unlock(): void {
    Atomics.store(this.slots, SLOT_LOCK, 0);
  }

  readRegister(offset: number): number {
    const s = this.slots;
    const dlab = (s[SLOT_LCR]! & LCR_DLAB) !== 0;
    switch (offset) {
      case REG_DATA:
        return dlab ? s[SLOT_DLL]! : this.popInput();
      case REG_IER:
        return dlab ? s[SLOT_DLM]! : s[SLOT_IER]!;
      case REG_IIR_FCR: {
        const pending = this.pendingInterrupt();
        // Reading IIR is how the driver acknowledges THR-empty.
        if (pending === IIR_THR_EMPTY) s[SLOT_THR_EMPTY_PENDING] = 0;
        return pending | (s[SLOT_FCR_FIFO] ? IIR_FIFOS_ENABLED : 0);
      }
      case REG_LCR:
        return s[SLOT_LCR]!;
      case REG_MCR:
        return s[SLOT_MCR]!;
      case REG_LSR:
        return LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY | (s[SLOT_IN_LENGTH]! > 0 ? LSR_DATA_READY : 0);
      case REG_MSR:
        return this.modemStatus();
      case REG_SCR:
        return s[SLOT_SCR]!;
      default:
        return 0xff;
    }
  }

  /** Applies a register write; true when it makes an interrupt pending that should be raised. */
  writeRegister(offset: number, value: number): boolean {
    const s = this.slots;
    const dlab = (s[SLOT_LCR]! & LCR_DLAB) !== 0;
    switch (offset) {
      case REG_DATA:
        if (dlab) {
          s[SLOT_DLL] = value;
          return false;
        }
        return this.transmit(value);
      case REG_IER: {
        if (dlab) {
          s[SLOT_DLM] = value;
          return false;
        }
        const before = s[SLOT_IER]!;
        const after = value & IER_VALID;
        s[SLOT_IER] = after;
        const thriTurnedOn = (after & IER_THRI) !== 0 && (before & IER_THRI) === 0;
        const rdiTurnedOn = (after & IER_RDI) !== 0 && (before & IER_RDI) === 0;
        // THR is always empty, so enabling its interrupt makes it pending at once.
        if (thriTurnedOn) s[SLOT_THR_EMPTY_PENDING] = 1;
        return thriTurnedOn || (rdiTurnedOn && s[SLOT_IN_LENGTH]! > 0);
      }
      case REG_IIR_FCR:
        s[SLOT_FCR_FIFO] = value & FCR_ENABLE_FIFO;
        return false;
      case REG_LCR:
        s[SLOT_LCR] = value;
        return false;
      case REG_MCR:
        s[SLOT_MCR] = value & MCR_VALID;
        return false;
      case REG_SCR:
        s[SLOT_SCR] = value;
        return false;
      default:
        // LSR and MSR are read-only (their writes are a factory test mode).
        return false;
    }
  }

  /** Takes the lock itself: the host calls this from outside any register access. */
  enqueueLocked(bytes: Uint8Array): { accepted: number; raise: boolean } {
    this.lock();
    try {
      // In loopback the receiver hears only the transmitter.
      if (this.slots[SLOT_MCR]! & MCR_LOOP) return { accepted: 0, raise: false };
      let accepted = 0;
      while (accepted < bytes.length && this.pushInput(bytes[accepted]!)) accepted++;
      return { accepted, raise: accepted > 0 && (this.slots[SLOT_IER]! & IER_RDI) !== 0 };
    } finally {
      this.unlock();
    }
  }

  takeOutput(): Uint8Array {
    const s = this.slots;
    const start = s[SLOT_OUT_START]!;
    const length = s[SLOT_OUT_LENGTH]!;
    const taken = new Uint8Array(length);
    const firstPart = Math.min(length, SERIAL_OUTPUT_CAPACITY - start);
    taken.set(this.output.subarray(start, start + firstPart));
    taken.set(this.output.subarray(0, length - firstPart), firstPart);
    s[SLOT_OUT_START] = 0;
    s[SLOT_OUT_LENGTH] = 0;
    return taken;
  }

  private transmit(value: number): boolean {
    const s = this.slots;
    if (s[SLOT_MCR]! & MCR_LOOP) {
      // A full receiver loses the new byte, as a real overrun would.
      return this.pushInput(value) && (s[SLOT_IER]! & IER_RDI) !== 0;
    }
    this.pushOutput(value);
    s[SLOT_THR_EMPTY_PENDING] = 1;
    return (s[SLOT_IER]! & IER_THRI) !== 0;
  }

  /** Highest-priority enabled source, as IIR bits 0-3 (receiver line status and modem status never occur). */
  private pendingInterrupt(): number {
    const s = this.slots;
    const ier = s[SLOT_IER]!;
    if (ier & IER_RDI && s[SLOT_IN_LENGTH]! > 0) return IIR_RECEIVED_DATA;
    if (ier & IER_THRI && s[SLOT_THR_EMPTY_PENDING]) return IIR_THR_EMPTY;
    return IIR_NO_INTERRUPT;
  }

  private modemStatus(): number {
    const mcr = this.slots[SLOT_MCR]!;
    if (!(mcr & MCR_LOOP)) return MSR_CONNECTED;
    // Loopback wires the outputs to the inputs: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
    return (
      (mcr & MCR_DTR ? MSR_DSR : 0) |
      (mcr & MCR_RTS ? MSR_CTS : 0) |
      (mcr & MCR_OUT1 ? MSR_RI : 0) |
      (mcr & MCR_OUT2 ? MSR_DCD : 0)
    );
  }

  private pushOutput(value: number): void {
    const s = this.slots;
    let start = s[SLOT_OUT_START]!;
    let length = s[SLOT_OUT_LENGTH]!;
    if (length === SERIAL_OUTPUT_CAPACITY) {
      start = (start + 1) % SERIAL_OUTPUT_CAPACITY;
      length--;
      this.dropped[0] = this.dropped[0]! + 1;
      s[SLOT_OUT_START] = start;
    }
    this.output[(start + length) % SERIAL_OUTPUT_CAPACITY] = value;
    s[SLOT_OUT_LENGTH] = length + 1;
  }

  private pushInput(value: number): boolean {
    const s = this.slots;
    const length = s[SLOT_IN_LENGTH]!;
    if (length === SERIAL_INPUT_CAPACITY) return false;
    this.input[(s[SLOT_IN_START]! + length) % SERIAL_INPUT_CAPACITY] = value;
    s[SLOT_IN_LENGTH] = length + 1;
    return true;
  }

  /** The next received byte; 0 when none is waiting (what an empty RBR reads as). */
  private popInput(): number {
    const s = this.slots;
    const length = s[SLOT_IN_LENGTH]!;
    if (length === 0) return 0;
    const start = s[SLOT_IN_START]!;
    s[SLOT_IN_START] = (start + 1) % SERIAL_INPUT_CAPACITY;
    s[SLOT_IN_LENGTH] = length - 1;
    return this.input[start]!;
  }
}

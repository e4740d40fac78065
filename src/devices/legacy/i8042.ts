/**
 * The i8042 keyboard controller with a keyboard that has no keys of its own:
 * the host can press Ctrl-Alt-Del on it (`pressCtrlAltDel`), and that is all
 * it ever types.
 *
 * Why more than a reset line: Linux's i8042 driver reads the controller's
 * configuration byte (command 0x20) while probing and, when nothing answers,
 * polls the status port for half a second per attempt before giving up
 * (measured: ~10k status reads per boot, bench/README.md). Answering the
 * controller commands Linux uses makes the probe take a handful of exits, and
 * a probed keyboard is what lets `SendCtrlAltDel` reach the guest.
 *
 * Behaviour (modelled on Firecracker's device and the 8042 datasheet):
 * - Controller commands at port 0x64: 0x20/0x60 read/write the configuration
 *   byte, 0xAA self-test (0x55), 0xAB keyboard-interface test (0x00),
 *   0xAD/0xAE disable/enable the keyboard, 0xD0/0xD1 read/write the output
 *   port, 0xD2 echo a byte as keyboard data, 0xFE pulse the reset line. There
 *   is no AUX (mouse) port: 0xA9 reports its clock line stuck, and 0xD3's
 *   loop-back byte comes back as keyboard data, which Linux reads as "no AUX".
 *   Other commands are ignored.
 * - Bytes written to port 0x60 without a pending parameter are keyboard
 *   commands: the keyboard acknowledges (0xFA) each byte, answers identify
 *   (0xF2) as an MF2 keyboard (0xAB 0x83), reset (0xFF) with a passed
 *   self-test (0xAA) and echo (0xEE) with 0xEE.
 * - Keyboard bytes raise IRQ 1 while the guest has the keyboard interrupt
 *   enabled in the configuration byte; reading a byte while more are queued
 *   raises it again. Replies to controller commands raise nothing: Linux polls
 *   for them.
 * - The configuration byte starts without translation, so Linux drives the
 *   keyboard in scan-code set 2, which is what `pressCtrlAltDel` sends.
 * - Ports are a byte wide: other access sizes read all ones and write nothing.
 *
 * Every thread that takes exits has its own `I8042` over one shared state
 * block (`createI8042State()`); a spin lock serialises accesses and the
 * interrupt is raised after the lock is released, as in the UART.
 */
import type { BusDevice } from "../bus.ts";
import type { InterruptLine } from "../interrupt.ts";

export const I8042_SPAN = 5;

const OFFSET_DATA = 0;
const OFFSET_COMMAND = 4;

const CMD_READ_CONFIG = 0x20;
const CMD_WRITE_CONFIG = 0x60;
const CMD_AUX_TEST = 0xa9;
const CMD_SELF_TEST = 0xaa;
const CMD_KEYBOARD_TEST = 0xab;
const CMD_DISABLE_KEYBOARD = 0xad;
const CMD_ENABLE_KEYBOARD = 0xae;
const CMD_READ_OUTPUT_PORT = 0xd0;
const CMD_WRITE_OUTPUT_PORT = 0xd1;
const CMD_WRITE_KEYBOARD_BUFFER = 0xd2;
const CMD_WRITE_AUX_BUFFER = 0xd3;
const CMD_PULSE_RESET = 0xfe;

const STATUS_OUTPUT_FULL = 0x01;
const STATUS_SYSTEM = 0x04;
const STATUS_COMMAND_PENDING = 0x08;
/** Set means "not locked". */
const STATUS_KEYLOCK_OFF = 0x10;

const CONFIG_KEYBOARD_INTERRUPT = 0x01;
const CONFIG_SYSTEM = 0x04;
const CONFIG_KEYBOARD_DISABLED = 0x10;
const INITIAL_CONFIG = CONFIG_KEYBOARD_INTERRUPT | CONFIG_SYSTEM;
/** A20 enabled, CPU not held in reset. */
const INITIAL_OUTPUT_PORT = 0x03;

const SELF_TEST_PASSED = 0x55;
const INTERFACE_TEST_PASSED = 0x00;
const AUX_CLOCK_STUCK_LOW = 0x02;

const KBD_ACK = 0xfa;
const KBD_IDENTIFY = 0xf2;
const KBD_RESET = 0xff;
const KBD_ECHO = 0xee;
const KBD_SELF_TEST_PASSED = 0xaa;
const MF2_KEYBOARD_ID = [0xab, 0x83] as const;

/** Scan-code set 2: press Ctrl, Alt, Delete, then release them in reverse. */
const CTRL_ALT_DEL = [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14] as const;

export const I8042_BUFFER_CAPACITY = 16;

// Shared block: Int32 slots, then the output ring (one byte per slot).
const SLOT_LOCK = 0;
const SLOT_STATUS = 1;
const SLOT_CONFIG = 2;
const SLOT_OUTPUT_PORT = 3;
const SLOT_PENDING_COMMAND = 4;
const SLOT_QUEUE_START = 5;
const SLOT_QUEUE_LENGTH = 6;
const SLOT_QUEUE = 7;
const SLOT_COUNT = SLOT_QUEUE + I8042_BUFFER_CAPACITY;
export const I8042_STATE_BYTES = SLOT_COUNT * 4;

/** The state every thread's `I8042` shares; post it to workers as is. */
export interface I8042State {
  readonly buffer: SharedArrayBuffer;
}

export function createI8042State(): I8042State {
  const state = { buffer: new SharedArrayBuffer(I8042_STATE_BYTES) };
  const slots = new Int32Array(state.buffer);
  slots[SLOT_STATUS] = STATUS_KEYLOCK_OFF;
  slots[SLOT_CONFIG] = INITIAL_CONFIG;
  slots[SLOT_OUTPUT_PORT] = INITIAL_OUTPUT_PORT;
  return state;
}

/**
 * Loads saved state. Every slot comes from a file, so each is forced back into
 * range: a bad snapshot may confuse the guest's keyboard, never Volt.
 */
export function restoreI8042State(state: I8042State, saved: Uint8Array): void {
  if (saved.byteLength !== I8042_STATE_BYTES) throw new Error(`i8042 state is ${saved.byteLength} bytes; this Volt keeps ${I8042_STATE_BYTES}`);
  const slots = new Int32Array(state.buffer);
  slots.set(new Int32Array(saved.slice().buffer));
  slots[SLOT_LOCK] = 0;
  for (const slot of [SLOT_STATUS, SLOT_CONFIG, SLOT_OUTPUT_PORT, SLOT_PENDING_COMMAND]) slots[slot] = slots[slot]! & 0xff;
  slots[SLOT_QUEUE_START] = Math.abs(slots[SLOT_QUEUE_START]! % I8042_BUFFER_CAPACITY);
  slots[SLOT_QUEUE_LENGTH] = Math.min(Math.max(slots[SLOT_QUEUE_LENGTH]!, 0), I8042_BUFFER_CAPACITY);
  for (let i = 0; i < I8042_BUFFER_CAPACITY; i++) slots[SLOT_QUEUE + i] = slots[SLOT_QUEUE + i]! & 0xff;
  const full = slots[SLOT_QUEUE_LENGTH]! > 0;
  slots[SLOT_STATUS] = full ? slots[SLOT_STATUS]! | STATUS_OUTPUT_FULL : slots[SLOT_STATUS]! & ~STATUS_OUTPUT_FULL;
}

export type KeyPressResult = "queued" | "buffer-full";

export class I8042 implements BusDevice {
  private readonly slots: Int32Array;
  private readonly irq: InterruptLine;
  private readonly onResetRequest: () => void;

  /** `onResetRequest` runs on the thread that took the exit, once per reset command. */
  constructor(state: I8042State, irq: InterruptLine, onResetRequest: () => void) {
    this.slots = new Int32Array(state.buffer);
    this.irq = irq;
    this.onResetRequest = onResetRequest;
  }

  read(offset: number, data: Uint8Array): void {
    if (data.length !== 1 || (offset !== OFFSET_DATA && offset !== OFFSET_COMMAND)) {
      data.fill(0xff);
      return;
    }
    let raise = false;
    this.locked(() => {
      if (offset === OFFSET_COMMAND) {
        data[0] = this.slots[SLOT_STATUS]!;
        return;
      }
      data[0] = this.pop() ?? 0;
      raise = this.queueLength() > 0 && this.keyboardInterruptEnabled();
    });
    if (raise) this.irq.trigger();
  }

  write(offset: number, data: Uint8Array): void {
    if (data.length !== 1) return;
    const value = data[0]!;
    let raise = false;
    let reset = false;
    this.locked(() => {
      if (offset === OFFSET_COMMAND) reset = this.controllerCommand(value);
      else if (offset === OFFSET_DATA) raise = this.dataByte(value);
    });
    if (raise) this.irq.trigger();
    if (reset) this.onResetRequest();
  }

  /**
   * Host side: types Ctrl-Alt-Del (press and release) and raises the keyboard
   * interrupt. "buffer-full" when the guest has not read what was typed
   * before (nothing is queued then, so a sequence is never half sent).
   */
  pressCtrlAltDel(): KeyPressResult {
    let result: KeyPressResult = "buffer-full";
    let raise = false;
    this.locked(() => {
      if (I8042_BUFFER_CAPACITY - this.queueLength() < CTRL_ALT_DEL.length) return;
      for (const byte of CTRL_ALT_DEL) this.push(byte);
      result = "queued";
      raise = this.keyboardInterruptEnabled();
    });
    if (raise) this.irq.trigger();
    return result;
  }

  /** Returns whether the guest asked for a reset. */
  private controllerCommand(command: number): boolean {
    const s = this.slots;
    s[SLOT_STATUS] = s[SLOT_STATUS]! & ~STATUS_COMMAND_PENDING;
    switch (command) {
      case CMD_READ_CONFIG:
        this.reply(s[SLOT_CONFIG]!);
        return false;
      case CMD_READ_OUTPUT_PORT:
        this.reply(s[SLOT_OUTPUT_PORT]!);
        return false;
      case CMD_WRITE_CONFIG:
      case CMD_WRITE_OUTPUT_PORT:
      case CMD_WRITE_KEYBOARD_BUFFER:
      case CMD_WRITE_AUX_BUFFER:
        s[SLOT_PENDING_COMMAND] = command;
        s[SLOT_STATUS] = s[SLOT_STATUS]! | STATUS_COMMAND_PENDING;
        return false;
      case CMD_SELF_TEST:
        s[SLOT_STATUS] = s[SLOT_STATUS]! | STATUS_SYSTEM;
        this.reply(SELF_TEST_PASSED);
        return false;
      case CMD_KEYBOARD_TEST:
        this.reply(INTERFACE_TEST_PASSED);
        return false;
      case CMD_AUX_TEST:
        this.reply(AUX_CLOCK_STUCK_LOW);
        return false;
      case CMD_DISABLE_KEYBOARD:
        s[SLOT_CONFIG] = s[SLOT_CONFIG]! | CONFIG_KEYBOARD_DISABLED;
        return false;
      case CMD_ENABLE_KEYBOARD:
        s[SLOT_CONFIG] = s[SLOT_CONFIG]! & ~CONFIG_KEYBOARD_DISABLED;
        return false;
      case CMD_PULSE_RESET:
        return true;
      default:
        return false;
    }
  }

  /** Returns whether to raise the keyboard interrupt. */
  private dataByte(value: number): boolean {
    const s = this.slots;
    if (s[SLOT_STATUS]! & STATUS_COMMAND_PENDING) {
      s[SLOT_STATUS] = s[SLOT_STATUS]! & ~STATUS_COMMAND_PENDING;
      switch (s[SLOT_PENDING_COMMAND]) {
        case CMD_WRITE_CONFIG:
          s[SLOT_CONFIG] = value;
          s[SLOT_STATUS] = value & CONFIG_SYSTEM ? s[SLOT_STATUS]! | STATUS_SYSTEM : s[SLOT_STATUS]! & ~STATUS_SYSTEM;
          return false;
        case CMD_WRITE_OUTPUT_PORT:
          s[SLOT_OUTPUT_PORT] = value;
          return false;
        case CMD_WRITE_KEYBOARD_BUFFER:
        case CMD_WRITE_AUX_BUFFER:
          // With no AUX port, the AUX loop-back byte comes back as keyboard data: Linux's AUX probe fails at once.
          this.reply(value);
          return false;
        default:
          return false;
      }
    }
    return this.keyboardCommand(value);
  }

  private keyboardCommand(command: number): boolean {
    this.clear();
    if (command === KBD_ECHO) {
      this.push(KBD_ECHO);
    } else {
      this.push(KBD_ACK);
      if (command === KBD_IDENTIFY) for (const byte of MF2_KEYBOARD_ID) this.push(byte);
      if (command === KBD_RESET) this.push(KBD_SELF_TEST_PASSED);
    }
    return this.keyboardInterruptEnabled();
  }

  /** A controller reply replaces whatever was waiting, as on the real part. */
  private reply(byte: number): void {
    this.clear();
    this.push(byte);
  }

  private keyboardInterruptEnabled(): boolean {
    return (this.slots[SLOT_CONFIG]! & CONFIG_KEYBOARD_INTERRUPT) !== 0;
  }

  private queueLength(): number {
    return this.slots[SLOT_QUEUE_LENGTH]!;
  }

  private push(byte: number): void {
    const s = this.slots;
    const length = s[SLOT_QUEUE_LENGTH]!;
    if (length >= I8042_BUFFER_CAPACITY) return;
    s[SLOT_QUEUE + ((s[SLOT_QUEUE_START]! + length) % I8042_BUFFER_CAPACITY)] = byte & 0xff;
    s[SLOT_QUEUE_LENGTH] = length + 1;
    s[SLOT_STATUS] = s[SLOT_STATUS]! | STATUS_OUTPUT_FULL;
  }

  private pop(): number | undefined {
    const s = this.slots;
    const length = s[SLOT_QUEUE_LENGTH]!;
    if (length === 0) return undefined;
    const start = s[SLOT_QUEUE_START]!;
    const byte = s[SLOT_QUEUE + start]!;
    s[SLOT_QUEUE_START] = (start + 1) % I8042_BUFFER_CAPACITY;
    s[SLOT_QUEUE_LENGTH] = length - 1;
    if (length === 1) s[SLOT_STATUS] = s[SLOT_STATUS]! & ~STATUS_OUTPUT_FULL;
    return byte;
  }

  private clear(): void {
    const s = this.slots;
    s[SLOT_QUEUE_START] = 0;
    s[SLOT_QUEUE_LENGTH] = 0;
    s[SLOT_STATUS] = s[SLOT_STATUS]! & ~STATUS_OUTPUT_FULL;
  }

  private locked(task: () => void): void {
    while (Atomics.compareExchange(this.slots, SLOT_LOCK, 0, 1) !== 0);
    try {
      task();
    } finally {
      Atomics.store(this.slots, SLOT_LOCK, 0);
    }
  }
}

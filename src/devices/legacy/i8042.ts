/**
 * Just enough of the i8042 keyboard controller for a guest to reboot: Linux's
 * `reboot=k` (and its fallback chain) writes command 0xFE, "pulse the reset
 * line", to port 0x64. Volt has no keyboard, so the controller never has data:
 * the status register reads 0 (output buffer empty, input buffer free, which
 * also lets the guest's "wait until the controller is ready" loops finish),
 * and the data port reads 0. Every other command is accepted and ignored.
 *
 * Mapped as one device of I8042_SPAN ports at 0x60: offset 0 is the data port
 * (0x60), offset 4 the status/command port (0x64). The device holds no state,
 * so an instance per thread needs nothing shared.
 */
import type { BusDevice } from "../bus.ts";

export const I8042_SPAN = 5;

const OFFSET_COMMAND = 4;
const COMMAND_PULSE_RESET = 0xfe;

export class I8042 implements BusDevice {
  private readonly onResetRequest: () => void;

  /** `onResetRequest` runs on the thread that took the exit, once per reset command. */
  constructor(onResetRequest: () => void) {
    this.onResetRequest = onResetRequest;
  }

  read(offset: number, data: Uint8Array): void {
    // The ports are a byte wide; a wider access is nonsense and reads as an empty bus.
    data.fill(data.length === 1 && isPort(offset) ? 0 : 0xff);
  }

  write(offset: number, data: Uint8Array): void {
    if (data.length === 1 && offset === OFFSET_COMMAND && data[0] === COMMAND_PULSE_RESET) this.onResetRequest();
  }
}

function isPort(offset: number): boolean {
  return Number.isInteger(offset) && offset >= 0 && offset < I8042_SPAN;
}

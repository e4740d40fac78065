/**
 * The boot timer from Firecracker: a page of MMIO where the guest (usually its
 * init, e.g. `devmem 0xd0000000 8 123`) writes the magic byte 123 at offset 0
 * to say it has booted, so the host can measure boot time without a console.
 *
 * `onBoot` runs once per VM, however many times or from however many vCPUs
 * the guest writes: every thread's instance shares a flag, claimed with one
 * compare-and-exchange, so a guest cannot make the host act on it twice.
 */
import type { BusDevice } from "../bus.ts";

export const BOOT_TIMER_SPAN = 0x1000;

const MAGIC_BOOTED = 123;

/** The flag every thread's `BootTimer` shares; post it to workers as is. */
export interface BootTimerState {
  readonly buffer: SharedArrayBuffer;
}

export function createBootTimerState(): BootTimerState {
  return { buffer: new SharedArrayBuffer(4) };
}

export class BootTimer implements BusDevice {
  private readonly reported: Int32Array;
  private readonly onBoot: () => void;

  /** `onBoot` runs on the thread that took the exit. */
  constructor(state: BootTimerState, onBoot: () => void) {
    if (!(state.buffer instanceof SharedArrayBuffer) || state.buffer.byteLength !== 4) {
      throw new TypeError("not a boot timer state: use createBootTimerState()");
    }
    this.reported = new Int32Array(state.buffer);
    this.onBoot = onBoot;
  }

  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

  /** Any access size is accepted, as in Firecracker: only the byte at offset 0 counts. */
  write(offset: number, data: Uint8Array): void {
    if (offset !== 0 || data[0] !== MAGIC_BOOTED) return;
    if (Atomics.compareExchange(this.reported, 0, 0, 1) === 0) this.onBoot();
  }
}

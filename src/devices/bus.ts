/**
 * Address dispatch for port I/O and MMIO exits (Volt keeps one Bus for each).
 * A device owns the range [base, base + length) and sees only offsets inside
 * it, so the same device class can be mapped anywhere.
 *
 * The ranges are sorted by base and never overlap, so the only range that can
 * contain an address is the last one starting at or below it: a binary search
 * finds that candidate, then one comparison decides. An access that starts
 * inside a device but runs past its end is not the device's: it would hand the
 * device offsets it never declared.
 *
 * Devices must not throw: everything they are given comes from the guest.
 */

/** A device on a bus. `data.length` is the access size (1, 2, 4 or 8); `read` fills `data`. */
export interface BusDevice {
  read(offset: number, data: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
}

export type BusErrorKind =
  | "zero-length"
  | "bad-range" // base or length not a non-negative safe integer, or the end not representable
  | "overlap";

/** A mistake in how the VMM lays out its devices (never caused by the guest). */
export class BusError extends Error {
  override name = "BusError";
  readonly kind: BusErrorKind;

  constructor(kind: BusErrorKind, message: string) {
    super(message);
    this.kind = kind;
  }
}

interface BusRange {
  readonly base: number;
  readonly length: number;
  readonly device: BusDevice;
  readonly name: string;
}

export class Bus {
  /** Sorted by base; non-overlapping. */
  private readonly ranges: BusRange[] = [];

  insert(base: number, length: number, device: BusDevice, name: string): void {
    if (length === 0) throw new BusError("zero-length", `${name}: a device cannot own zero bytes (at ${hex(base)})`);
    if (!isAddress(base) || !isAddress(length) || !isAddress(base + length)) {
      throw new BusError("bad-range", `${name}: bad range base=${base} length=${length}`);
    }
    const candidate: BusRange = { base, length, device, name };
    const index = this.firstBaseAbove(base);
    const before = this.ranges[index - 1];
    const after = this.ranges[index];
    for (const neighbour of [before, after]) {
      if (neighbour && base < neighbour.base + neighbour.length && neighbour.base < base + length) {
        throw new BusError("overlap", `${describe(candidate)} overlaps ${describe(neighbour)}`);
      }
    }
    this.ranges.splice(index, 0, candidate);
  }

  /** Hands the access to the device covering all of it; false (data untouched) when none does. */
  read(address: number, data: Uint8Array): boolean {
    const range = this.covering(address, data.length);
    if (!range) return false;
    range.device.read(address - range.base, data);
    return true;
  }

  /** Hands the access to the device covering all of it; false when none does. */
  write(address: number, data: Uint8Array): boolean {
    const range = this.covering(address, data.length);
    if (!range) return false;
    range.device.write(address - range.base, data);
    return true;
  }

  private covering(address: number, size: number): BusRange | undefined {
    if (!isAddress(address) || size <= 0) return undefined;
    const range = this.ranges[this.firstBaseAbove(address) - 1];
    if (!range) return undefined;
    const offset = address - range.base;
    return offset + size <= range.length ? range : undefined;
  }

  /** Index of the first range whose base is greater than `address` (ranges.length if none). */
  private firstBaseAbove(address: number): number {
    let low = 0;
    let high = this.ranges.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.ranges[middle]!.base <= address) low = middle + 1;
      else high = middle;
    }
    return low;
  }
}

function isAddress(value: number): boolean {
  return Number.isSafeInteger(value) && value >= 0;
}

function hex(value: number): string {
  return `0x${value.toString(16)}`;
}

function describe(range: BusRange): string {
  return `${range.name} [${hex(range.base)}, ${hex(range.base + range.length)})`;
}

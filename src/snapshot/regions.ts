/** Guest RAM as the snapshot writers see it (memory.raw and the chunk store alike). */

export interface MemoryRegionBytes {
  readonly guestAddress: number;
  readonly bytes: Uint8Array;
  /**
   * Sorted [start, end) offsets in `bytes` that may be non-zero; outside them
   * the region is known to be zero and is not read (reading guest RAM the
   * guest never touched would allocate it). Absent: all of it may be.
   */
  readonly populated?: readonly (readonly [number, number])[];
}

/** The parts of [start, end) inside the sorted ranges, clipped to it (none given: all of it). */
export function populatedParts(populated: MemoryRegionBytes["populated"], start: number, end: number): [number, number][] {
  if (populated === undefined) return start < end ? [[start, end]] : [];
  const parts: [number, number][] = [];
  for (const [from, to] of populated) {
    if (to <= start) continue;
    if (from >= end) break;
    parts.push([Math.max(from, start), Math.min(to, end)]);
  }
  return parts;
}

/**
 * `bytes[start, end)` with everything outside the populated ranges as zeros,
 * reading only the populated parts (a view when it is all populated).
 */
export function readPopulated(bytes: Uint8Array, populated: MemoryRegionBytes["populated"], start: number, end: number): Uint8Array | undefined {
  const parts = populatedParts(populated, start, end);
  if (parts.length === 0) return undefined;
  if (parts.length === 1 && parts[0]![0] === start && parts[0]![1] === end) return bytes.subarray(start, end);
  const assembled = new Uint8Array(end - start);
  for (const [from, to] of parts) assembled.set(bytes.subarray(from, to), from - start);
  return assembled;
}

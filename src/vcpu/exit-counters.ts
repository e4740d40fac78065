/**
 * Per-vCPU exit counters in shared memory: each vCPU worker is the only
 * writer of its own row, so no locking is needed, and the VMM thread reads
 * them whenever metrics are asked for. Float64 counts stay exact to 2^53.
 */
export const EXIT_KINDS = ["io", "mmio", "interrupted", "other"] as const;
export type ExitKind = (typeof EXIT_KINDS)[number];

export interface ExitCounterState {
  readonly buffer: SharedArrayBuffer;
  readonly vcpus: number;
}

export function createExitCounters(vcpus: number): ExitCounterState {
  return { buffer: new SharedArrayBuffer(vcpus * EXIT_KINDS.length * Float64Array.BYTES_PER_ELEMENT), vcpus };
}

/** The row one vCPU increments (index by EXIT_KINDS order). */
export function exitCounterRow(state: ExitCounterState, vcpuId: number): Float64Array {
  if (!Number.isInteger(vcpuId) || vcpuId < 0 || vcpuId >= state.vcpus) throw new RangeError(`no exit counters for vCPU ${vcpuId}`);
  return new Float64Array(state.buffer, vcpuId * EXIT_KINDS.length * Float64Array.BYTES_PER_ELEMENT, EXIT_KINDS.length);
}

export function readExitCounters(state: ExitCounterState): Record<ExitKind, number>[] {
  return Array.from({ length: state.vcpus }, (_, id) => {
    const row = exitCounterRow(state, id);
    return Object.fromEntries(EXIT_KINDS.map((kind, i) => [kind, row[i]!])) as Record<ExitKind, number>;
  });
}

export const EXIT_IO = 0;
export const EXIT_MMIO = 1;
export const EXIT_INTERRUPTED = 2;
export const EXIT_OTHER = 3;

import { describe, expect, test } from "bun:test";
import { EXIT_IO, EXIT_MMIO, createExitCounters, exitCounterRow, readExitCounters } from "../../src/vcpu/exit-counters.ts";

describe("exit counters", () => {
  test("each vCPU's row is its own; a structured clone (a worker's copy) writes the same memory", () => {
    const state = createExitCounters(2);
    const workerCopy = structuredClone(state);
    exitCounterRow(workerCopy, 1)[EXIT_IO]! += 3;
    exitCounterRow(state, 0)[EXIT_MMIO]! += 1;
    expect(readExitCounters(state)).toEqual([
      { io: 0, mmio: 1, interrupted: 0, other: 0 },
      { io: 3, mmio: 0, interrupted: 0, other: 0 },
    ]);
    expect(() => exitCounterRow(state, 2)).toThrow(RangeError);
  });
});

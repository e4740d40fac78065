/**
 * Snapshots of fresh guest RAM read only what the guest wrote: the memfd's
 * holes are known zeros, and reading them would allocate host memory for
 * every page of guest RAM (the benchmark saw snapshots fault in all of it).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { fstatSync, mkdtempSync, readFileSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { dataRanges, memfdCreate, ftruncate, close } from "../../src/ffi/syscalls.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { ZERO_CHUNK, writeChunks } from "../../src/snapshot/chunks.ts";
import { MEMORY_FILE, writeSnapshot } from "../../src/snapshot/files.ts";
import { populatedParts, readPopulated } from "../../src/snapshot/regions.ts";

const MiB = 1024 * 1024;
const work = mkdtempSync(join(tmpdir(), "volt-populated-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Bytes of host memory the memfd holds. */
function allocatedBytes(fd: number): number {
  return fstatSync(fd).blocks * 512;
}

function guestWithThreeWrites() {
  const memory = GuestMemory.create([{ guestAddress: 0, size: 64 * MiB }]);
  memory.write(0x1000, Uint8Array.of(1, 2, 3));
  memory.write(20 * MiB + 5, Uint8Array.of(0xaa));
  memory.write(64 * MiB - 1, Uint8Array.of(0x55));
  return memory;
}

describe("dataRanges (SEEK_DATA/SEEK_HOLE)", () => {
  test("finds the written pages of a memfd and nothing else", () => {
    const fd = memfdCreate("volt-test-seek");
    try {
      ftruncate(fd, 16 * MiB);
      expect(dataRanges(fd, 0, 16 * MiB)).toEqual([]);
      writeSync(fd, Uint8Array.of(7), 0, 1, 0);
      writeSync(fd, Uint8Array.of(9), 0, 1, 10 * MiB + 3);
      const ranges = dataRanges(fd, 0, 16 * MiB);
      expect(ranges.length).toBe(2);
      expect(ranges[0]![0]).toBe(0);
      expect(ranges[1]![0]).toBeLessThanOrEqual(10 * MiB + 3);
      expect(ranges[1]![1]).toBeGreaterThan(10 * MiB + 3);
      expect(ranges[1]![0]).toBeGreaterThan(ranges[0]![1]);
      // A window between the two sees none; one ending inside data is cut at its end.
      expect(dataRanges(fd, 4 * MiB, 8 * MiB)).toEqual([]);
      expect(dataRanges(fd, 4 * MiB, 10 * MiB + 2)).toEqual([[ranges[1]![0], 10 * MiB + 2]]);
    } finally {
      close(fd);
    }
  });
});

describe("populatedParts finds overlaps", () => {
  const mayHoldData = (ranges: readonly (readonly [number, number])[] | undefined, start: number, end: number) => populatedParts(ranges, start, end).length > 0;
  const ranges = [
    [0, 4096],
    [8192, 12288],
    [1 << 20, 2 << 20],
  ] as const;
  test.each([
    [0, 100, true],
    [4096, 8192, false],
    [4000, 4100, true],
    [12288, 1 << 20, false],
    [(1 << 20) - 1, 1 << 20, false],
    [(2 << 20) - 1, 3 << 20, true],
    [2 << 20, 3 << 20, false],
  ])("[%d, %d) -> %p", (start, end, expected) => {
    expect(mayHoldData(ranges, start, end)).toBe(expected);
  });
  test("without ranges everything may hold data; with none nothing does", () => {
    expect(mayHoldData(undefined, 5, 6)).toBe(true);
    expect(mayHoldData([], 0, 1 << 30)).toBe(false);
  });
});

describe("populatedParts and readPopulated", () => {
  const bytes = Uint8Array.from({ length: 64 }, (_, i) => i + 1);
  test("clips the ranges to the window", () => {
    expect(populatedParts([[0, 8], [16, 24], [40, 64]], 4, 44)).toEqual([[4, 8], [16, 24], [40, 44]]);
    expect(populatedParts(undefined, 4, 44)).toEqual([[4, 44]]);
    expect(populatedParts([[0, 8]], 8, 16)).toEqual([]);
  });
  test("reads only the populated parts, zeros elsewhere; a fully populated window is a view; an empty one nothing", () => {
    const read = readPopulated(bytes, [[2, 4], [6, 7]], 0, 8)!;
    expect([...read]).toEqual([0, 0, 3, 4, 0, 0, 7, 0]);
    const view = readPopulated(bytes, [[0, 64]], 8, 16)!;
    expect(view.buffer).toBe(bytes.buffer);
    expect([...view]).toEqual([9, 10, 11, 12, 13, 14, 15, 16]);
    expect(readPopulated(bytes, [[0, 8]], 8, 16)).toBeUndefined();
  });
});

describe("snapshots of fresh guest RAM", () => {
  test("populatedRanges covers every write, and the memory file gets exactly the written bytes", () => {
    const memory = guestWithThreeWrites();
    try {
      const [ranges] = memory.populatedRanges();
      for (const address of [0x1000, 20 * MiB + 5, 64 * MiB - 1]) expect(populatedParts(ranges, address, address + 1)).toEqual([[address, address + 1]]);
      expect(populatedParts(ranges, 40 * MiB, 41 * MiB)).toEqual([]);

      const dir = join(work, "snap");
      const regions = memory.regions.map((r, i) => ({ guestAddress: r.guestAddress, bytes: r.bytes, populated: memory.populatedRanges()[i]! }));
      const before = allocatedBytes(memory.memfd);
      const written = writeSnapshot(dir, { createdAt: "now", voltVersion: "test", vcpuCount: 1, memorySizeBytes: 64 * MiB }, {}, regions);
      // Writing the snapshot did not make the host allocate guest RAM the guest never used.
      expect(allocatedBytes(memory.memfd)).toBe(before);
      expect(before).toBeLessThan(1 * MiB);
      expect(written.memoryBytesWritten).toBeLessThanOrEqual(3 * 4096);
      const file = readFileSync(join(dir, MEMORY_FILE));
      expect(file.length).toBe(64 * MiB);
      expect([...file.subarray(0x1000, 0x1003)]).toEqual([1, 2, 3]);
      expect(file[20 * MiB + 5]).toBe(0xaa);
      expect(file[64 * MiB - 1]).toBe(0x55);
    } finally {
      memory.dispose();
    }
  });

  test("without the ranges, reading all of RAM allocates it (what the ranges avoid)", () => {
    const memory = guestWithThreeWrites();
    try {
      const before = allocatedBytes(memory.memfd);
      const regions = memory.regions.map((r) => ({ guestAddress: r.guestAddress, bytes: r.bytes }));
      writeSnapshot(join(work, "snap-all"), { createdAt: "now", voltVersion: "test", vcpuCount: 1, memorySizeBytes: 64 * MiB }, {}, regions);
      expect(allocatedBytes(memory.memfd)).toBeGreaterThan(before + 32 * MiB);
    } finally {
      memory.dispose();
    }
  });

  test("the chunk store takes unwritten chunks as zero without reading them", () => {
    const memory = guestWithThreeWrites();
    try {
      const before = allocatedBytes(memory.memfd);
      const regions = memory.regions.map((r, i) => ({ guestAddress: r.guestAddress, bytes: r.bytes, populated: memory.populatedRanges()[i]! }));
      const { manifest, stats } = writeChunks(join(work, "store"), regions);
      expect(allocatedBytes(memory.memfd)).toBe(before);
      const chunks = manifest.regions[0]!.chunks;
      expect(chunks.length).toBe(32);
      expect(chunks.filter((c) => c !== ZERO_CHUNK).length).toBe(3);
      expect(stats.zeroChunks).toBe(29);
    } finally {
      memory.dispose();
    }
  });

  test("copy-on-write RAM reports its whole region (it keeps no record of what was written)", () => {
    const fd = memfdCreate("volt-test-private");
    try {
      ftruncate(fd, 4 * MiB);
      const memory = GuestMemory.mapPrivate(fd, [{ guestAddress: 0, size: 4 * MiB, fileOffset: 0 }]);
      try {
        expect(memory.populatedRanges()).toEqual([[[0, 4 * MiB]]]);
      } finally {
        memory.dispose();
      }
    } finally {
      close(fd);
    }
  });
});

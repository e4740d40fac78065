import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GuestMemory, GuestMemoryError, GuestMemoryView } from "../../src/memory/guest-memory.ts";

const MiB = 1 << 20;

describe("GuestMemory", () => {
  // Two regions with a hole between them, like RAM below and above an MMIO gap.
  const memory = GuestMemory.create([
    { guestAddress: 0, size: 2 * MiB },
    { guestAddress: 4 * MiB, size: MiB },
  ]);
  afterAll(() => memory.dispose());

  test("reads back what it writes, little-endian, in both regions", () => {
    memory.writeU32(0x1000, 0xdeadbeef);
    expect(memory.readU8(0x1000)).toBe(0xef);
    expect(memory.readU32(0x1000)).toBe(0xdeadbeef);
    memory.writeU64(4 * MiB + 8, 0x0123456789abcdefn);
    expect(memory.readU64(4 * MiB + 8)).toBe(0x0123456789abcdefn);
    memory.write(2 * MiB - 3, Uint8Array.of(1, 2, 3));
    expect([...memory.read(2 * MiB - 3, 3)]).toEqual([1, 2, 3]);
  });

  test("the bytes live in the memfd (what KVM and snapshots see)", () => {
    memory.write(0x2000, new TextEncoder().encode("volt"));
    const file = readFileSync(`/proc/self/fd/${memory.memfd}`);
    expect(file.byteLength).toBe(3 * MiB);
    expect(file.subarray(0x2000, 0x2004).toString()).toBe("volt");
    // The second region follows the first in the file.
    memory.writeU8(4 * MiB, 0x5a);
    expect(file.length).toBe(3 * MiB);
    expect(readFileSync(`/proc/self/fd/${memory.memfd}`)[2 * MiB]).toBe(0x5a);
  });

  test("a worker given share() sees and changes the same bytes without a copy", async () => {
    const source = `self.onmessage = (e) => {
      const bytes = new Uint8Array(e.data.regions[0].buffer);
      const seen = bytes[0x3000];
      bytes[0x3001] = seen + 1;
      postMessage(seen);
    };`;
    const worker = new Worker(URL.createObjectURL(new Blob([source], { type: "application/javascript" })));
    memory.writeU8(0x3000, 41);
    const seen = await new Promise<number>((resolve) => {
      worker.onmessage = (e) => resolve(e.data as number);
      worker.postMessage(memory.share());
    });
    worker.terminate();
    expect(seen).toBe(41);
    expect(memory.readU8(0x3001)).toBe(42);
    expect(readFileSync(`/proc/self/fd/${memory.memfd}`)[0x3001]).toBe(42);
  });

  test.each([
    ["in the hole between regions", 2 * MiB, 1],
    ["straddling the end of a region", 2 * MiB - 2, 4],
    ["past the last region", 5 * MiB, 1],
    ["negative", -1, 1],
    ["a fraction", 1.5, 1],
    ["a u64 beyond 2^53", 0xffff_ffff_ffff_f000n, 1],
    ["with a huge length", 0, Number.MAX_SAFE_INTEGER],
    ["with a negative length", 0x1000, -1],
  ] as const)("rejects an access %s", (_, address, length) => {
    expect(() => memory.slice(address, length)).toThrow(GuestMemoryError);
    expect(memory.contains(address, length)).toBe(false);
  });

  test("a view built from share() enforces the same bounds", () => {
    const view = new GuestMemoryView(memory.share());
    expect(view.totalSize).toBe(3 * MiB);
    expect(() => view.readU32(3 * MiB)).toThrow(GuestMemoryError);
    expect(view.readU32(0x1000)).toBe(0xdeadbeef);
  });
});

describe("GuestMemory.create rejects bad layouts", () => {
  test.each([
    ["no regions", []],
    ["an unaligned start", [{ guestAddress: 0x800, size: 4096 }]],
    ["a zero size", [{ guestAddress: 0, size: 0 }]],
    ["a size that is not whole pages", [{ guestAddress: 0, size: 5000 }]],
    [
      "overlapping regions",
      [
        { guestAddress: 0, size: 8192 },
        { guestAddress: 4096, size: 4096 },
      ],
    ],
  ] as const)("%s", (_, specs) => {
    expect(() => GuestMemory.create(specs)).toThrow(GuestMemoryError);
  });
});

describe("GuestMemory.mapPrivate (restoring from a memory file)", () => {
  test("regions read the file at their offsets, writes stay private, the file never changes, two mappings diverge", () => {
    const dir = mkdtempSync(join(tmpdir(), "volt-mem-"));
    try {
      const path = join(dir, "memory");
      const contents = new Uint8Array(3 * MiB);
      contents.set(new TextEncoder().encode("low"), 0x10);
      contents.set(new TextEncoder().encode("high"), 2 * MiB + 0x20);
      writeFileSync(path, contents);
      const fd = openSync(path, "r");
      const layout = [
        { guestAddress: 0, size: 2 * MiB, fileOffset: 0 },
        { guestAddress: 4 * MiB, size: MiB, fileOffset: 2 * MiB },
      ];
      const first = GuestMemory.mapPrivate(fd, layout);
      const second = GuestMemory.mapPrivate(fd, layout);
      closeSync(fd); // the mappings outlive the descriptor
      try {
        expect(new TextDecoder().decode(first.read(0x10, 3))).toBe("low");
        expect(new TextDecoder().decode(first.read(4 * MiB + 0x20, 4))).toBe("high");
        first.write(0x10, new TextEncoder().encode("ONE"));
        second.write(0x10, new TextEncoder().encode("TWO"));
        expect(new TextDecoder().decode(first.read(0x10, 3))).toBe("ONE");
        expect(new TextDecoder().decode(second.read(0x10, 3))).toBe("TWO");
        expect(readFileSync(path).equals(Buffer.from(contents))).toBe(true);
        expect(first.memfd).toBe(-1);
      } finally {
        first.dispose();
        second.dispose();
      }
      expect(() => GuestMemory.mapPrivate(0, [{ guestAddress: 0, size: MiB, fileOffset: 100 }])).toThrow("file offset 100 must be page aligned");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { kernelSupportsAcpi } from "../../src/loader/detect.ts";
import { loadElfKernel, parseElfKernel, XEN_ELFNOTE_PHYS32_ENTRY } from "../../src/loader/elf.ts";
import { KernelFormatError } from "../../src/loader/errors.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { availableOrExplain, buildElf, concat, elfNote, MICROVM_KERNEL_DIR, MiB, PT_NOTE, u64le } from "./loader-fixtures.ts";

const text = Uint8Array.from({ length: 256 }, (_, i) => i);
const data = Uint8Array.of(0xaa, 0xbb, 0xcc, 0xdd);
const pvhNote = concat(elfNote("GNU", 3, new Uint8Array(20)), elfNote("Xen", XEN_ELFNOTE_PHYS32_ENTRY, u64le(MiB + 0x40)));

const goodElf = () =>
  buildElf({
    entry: MiB,
    segments: [
      { paddr: MiB, data: text },
      { paddr: 2 * MiB, data, memSize: 0x1000 }, // bss after the data
      { type: PT_NOTE, paddr: 0, data: pvhNote },
    ],
  });

function formatError(run: () => unknown): KernelFormatError {
  try {
    run();
  } catch (error) {
    if (error instanceof KernelFormatError) return error;
    throw error;
  }
  throw new Error("expected a KernelFormatError");
}

describe("ELF vmlinux loader", () => {
  const memory = GuestMemory.create([{ guestAddress: 0, size: 4 * MiB }]);
  afterAll(() => memory.dispose());

  test("parses entry, PVH note, segments and the kernel's end", () => {
    const kernel = parseElfKernel(goodElf());
    expect(kernel.entry64).toBe(MiB);
    expect(kernel.pvhEntry).toBe(MiB + 0x40);
    expect(kernel.kernelEnd).toBe(2 * MiB + 0x1000);
    expect(kernel.segments.map((s) => [s.guestAddress, s.fileSize, s.memSize])).toEqual([
      [MiB, 256, 256],
      [2 * MiB, 4, 0x1000],
    ]);
  });

  test("copies segments to their physical addresses and zeroes bss", () => {
    memory.slice(2 * MiB, 0x1000).fill(0x55); // stale bytes where bss goes
    loadElfKernel(memory, goodElf());
    expect([...memory.read(MiB, 256)]).toEqual([...text]);
    expect([...memory.read(2 * MiB, 4)]).toEqual([...data]);
    expect(memory.read(2 * MiB + 4, 0x1000 - 4).every((b) => b === 0)).toBe(true);
  });

  test("a kernel without the Xen note has no PVH entry", () => {
    const kernel = parseElfKernel(buildElf({ entry: MiB, segments: [{ paddr: MiB, data: text }] }));
    expect(kernel.pvhEntry).toBeUndefined();
  });

  const hostile: [string, () => Uint8Array, RegExp][] = [
    ["truncated header", () => goodElf().subarray(0, 40), /header truncated/],
    ["32-bit class", () => buildElf({ entry: MiB, elfClass: 1, segments: [{ paddr: MiB, data: text }] }), /ELFCLASS64/],
    ["wrong machine", () => buildElf({ entry: MiB, machine: 3, segments: [{ paddr: MiB, data: text }] }), /e_machine is 3/],
    ["phdr table past EOF", () => buildElf({ entry: MiB, phoff: 0x10000, segments: [{ paddr: MiB, data: text }] }), /program header table .* past the end/],
    ["phnum past EOF", () => buildElf({ entry: MiB, phnum: 40, segments: [{ paddr: MiB, data: text }] }), /program header table \(e_phoff 0x40, 40 entries\)/],
    ["segment past EOF", () => buildElf({ entry: MiB, segments: [{ paddr: MiB, data: text, fileSize: 0x10000 }] }), /program header 0 \(PT_LOAD\): p_offset .* past the end/],
    ["segment offset overflowing", () => buildElf({ entry: MiB, segments: [{ paddr: MiB, data: text, fileOffset: 2 ** 60 }] }), /p_offset 0x1000000000000000 is implausibly large/],
    ["filesz > memsz", () => buildElf({ entry: MiB, segments: [{ paddr: MiB, data: text, memSize: 16 }] }), /p_filesz 0x100 exceeds p_memsz 0x10/],
    ["paddr + memsz overflowing", () => buildElf({ entry: MiB, segments: [{ paddr: MiB, data: text, memSize: 2 ** 53 - 1 }] }), /overflows/],
    [
      "overlapping segments",
      () => buildElf({ entry: MiB, segments: [{ paddr: MiB, data: text }, { paddr: MiB + 128, data }] }),
      /PT_LOAD segments overlap/,
    ],
    ["entry outside the segments", () => buildElf({ entry: 3 * MiB, segments: [{ paddr: MiB, data: text }] }), /e_entry 0x300000 is outside every PT_LOAD/],
    [
      "note running past its segment",
      () => {
        const note = elfNote("Xen", XEN_ELFNOTE_PHYS32_ENTRY, u64le(MiB));
        new DataView(note.buffer).setUint32(4, 0x1000, true); // descsz far beyond the note
        return buildElf({ entry: MiB, segments: [{ paddr: MiB, data: text }, { type: PT_NOTE, paddr: 0, data: note }] });
      },
      /note at file offset .* runs past the end of its segment/,
    ],
    ["no PT_LOAD", () => buildElf({ entry: MiB, segments: [{ type: PT_NOTE, paddr: 0, data: pvhNote }] }), /no PT_LOAD/],
  ];
  for (const [name, build, message] of hostile) {
    test(`rejects ${name}`, () => {
      expect(formatError(() => parseElfKernel(build())).message).toMatch(message);
    });
  }

  test("rejects a segment outside guest RAM without writing anything", () => {
    memory.slice(MiB, 256).fill(0x11);
    const elf = buildElf({ entry: MiB, segments: [{ paddr: MiB, data: text }, { paddr: 8 * MiB, data }] });
    const error = formatError(() => loadElfKernel(memory, elf));
    expect(error.kind).toBe("does-not-fit");
    expect(error.message).toMatch(/PT_LOAD segment 0x800000\+0x4 is outside guest RAM/);
    expect(memory.read(MiB, 256).every((b) => b === 0x11)).toBe(true);
  });
});

describe("ELF vmlinux loader on the real microVM kernel", () => {
  const gz = join(MICROVM_KERNEL_DIR, "vmlinux.gz");
  test.skipIf(!availableOrExplain(existsSync(gz) ? gz : undefined, "the real vmlinux test"))("loads it and finds the PVH entry", () => {
    const vmlinux = Bun.gunzipSync(readFileSync(gz));
    const memory = GuestMemory.create([{ guestAddress: 0, size: 64 * MiB }]);
    try {
      const kernel = loadElfKernel(memory, vmlinux);
      expect(kernel.entry64).toBe(0x1000000);
      expect(kernel.pvhEntry).toBeGreaterThan(0x1000000);
      expect(kernel.pvhEntry).toBeLessThan(kernel.kernelEnd);
      expect(kernel.segments.length).toBe(4);
      const first = kernel.segments[0]!;
      expect([...memory.read(first.guestAddress, 64)]).toEqual([...vmlinux.subarray(first.fileOffset, first.fileOffset + 64)]);
    } finally {
      memory.dispose();
    }
  });
});

describe("kernelSupportsAcpi", () => {
  test("true when the RSDP signature is in the image, false otherwise", () => {
    const image = new Uint8Array(4096);
    expect(kernelSupportsAcpi(image)).toBe(false);
    image.set(new TextEncoder().encode("RSD PTR "), 1234);
    expect(kernelSupportsAcpi(image)).toBe(true);
    expect(kernelSupportsAcpi(image.subarray(1235))).toBe(false);
  });
});

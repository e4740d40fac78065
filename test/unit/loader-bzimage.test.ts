import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { setup_header, SETUP_HEADER_OFFSET } from "../../src/arch/x86_64/boot-params.ts";
import { StructView } from "../../src/kvm/struct.ts";
import { loadBzImage, parseBzImage } from "../../src/loader/bzimage.ts";
import { detectCompression } from "../../src/loader/compression.ts";
import { inspectKernel, kernelCompression, loadKernel } from "../../src/loader/detect.ts";
import { KernelFormatError } from "../../src/loader/errors.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { availableOrExplain, buildBzImage, buildElf, findDebianBzImage, MICROVM_KERNEL_DIR, MiB } from "./loader-fixtures.ts";

function formatError(run: () => unknown): KernelFormatError {
  try {
    run();
  } catch (error) {
    if (error instanceof KernelFormatError) return error;
    throw error;
  }
  throw new Error("expected a KernelFormatError");
}

describe("bzImage loader", () => {
  const memory = GuestMemory.create([{ guestAddress: 0, size: 32 * MiB }]);
  afterAll(() => memory.dispose());

  test("reads the setup header and reports the payload's compression", () => {
    const kernel = parseBzImage(buildBzImage({ setupSects: 0 }));
    expect(kernel.setupSize).toBe(5 * 512); // setup_sects 0 means 4
    expect(kernel.protocolVersion).toBe(0x20f);
    expect(kernel.loadAddress).toBe(0x100000);
    expect(kernel.entry64).toBe(0x100200);
    expect(kernel.kernelAlignment).toBe(0x200000);
    expect(kernel.relocatable).toBe(true);
    expect(kernel.prefAddress).toBe(0x1000000);
    expect(kernel.kernelEnd).toBe(0x1000000 + 0x200000);
    expect(kernel.cmdlineSize).toBe(0x7ff);
    expect(kernel.payload).toEqual({ offset: 0x40, length: 8, compression: "lz4" });
    expect(kernel.setupHeader.byteLength).toBe(setup_header.size);
    expect(new StructView(setup_header, kernel.setupHeader).get("header")).toBe(0x53726448);
  });

  test("loads the protected-mode kernel at 1 MiB", () => {
    const image = buildBzImage();
    const kernel = loadBzImage(memory, image);
    expect([...memory.read(0x100000, kernel.protectedModeSize)]).toEqual([...image.subarray(kernel.setupSize)]);
    expect(memory.readU8(kernel.entry64)).toBe(0xe9);
  });

  test("names every compressor by its magic", () => {
    const cases: [number[], string][] = [
      [[0x1f, 0x8b, 8], "gzip"],
      [[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0], "xz"],
      [[0x02, 0x21, 0x4c, 0x18], "lz4"],
      [[0x28, 0xb5, 0x2f, 0xfd], "zstd"],
      [[0x5d, 0, 0, 0x80], "lzma"],
      [[0x42, 0x5a, 0x68, 0x39], "bzip2"],
      [[0x89, 0x4c, 0x5a, 0x4f], "lzo"],
      [[0x7f, 0x45, 0x4c, 0x46], "none"],
      [[1, 2, 3, 4], "unknown"],
    ];
    for (const [magic, name] of cases) expect(detectCompression(Uint8Array.from(magic))).toBe(name as never);
    expect(parseBzImage(buildBzImage({ payload: Uint8Array.of(0x28, 0xb5, 0x2f, 0xfd, 0) })).payload.compression).toBe("zstd");
  });

  const hostile: [string, () => Uint8Array, RegExp][] = [
    ["a truncated setup header", () => buildBzImage({ truncateTo: 0x220 }), /setup header truncated/],
    ["a missing HdrS magic", () => buildBzImage({ magic: "XXXX" }), /missing "HdrS" magic at 0x202/],
    ["a too-old protocol", () => buildBzImage({ version: 0x204 }), /boot protocol version 2\.04 is too old/],
    ["a kernel that is not 64-bit capable", () => buildBzImage({ xloadflags: 0 }), /XLF_KERNEL_64: the kernel is not 64-bit capable/],
    ["a zImage (no LOADED_HIGH)", () => buildBzImage({ loadflags: 0 }), /LOADED_HIGH/],
    ["setup sectors past the end of the file", () => buildBzImage({ setupSects: 60, truncateTo: 0x1000 }), /setup_sects 60 .* past the end of the file/],
    ["a payload past the kernel", () => buildBzImage({ payloadLength: 0x100000 }), /payload_offset 0x40 \+ payload_length 0x100000 runs past/],
    ["init_size smaller than the kernel", () => buildBzImage({ initSize: 0x10 }), /init_size 0x10 is smaller/],
  ];
  for (const [name, build, message] of hostile) {
    test(`rejects ${name}`, () => {
      expect(formatError(() => parseBzImage(build())).message).toMatch(message);
    });
  }

  test("rejects a kernel whose decompression area does not fit in RAM, without writing", () => {
    memory.slice(0x100000, 16).fill(0x77);
    const error = formatError(() => loadBzImage(memory, buildBzImage({ initSize: 64 * MiB })));
    expect(error.kind).toBe("does-not-fit");
    expect(error.message).toMatch(/needs contiguous RAM up to 0x5000000/);
    expect(memory.read(0x100000, 16).every((b) => b === 0x77)).toBe(true);
  });
});

describe("kernel format detection", () => {
  test("tells ELF from bzImage", () => {
    expect(inspectKernel(buildBzImage()).format).toBe("bzimage");
    const elf = inspectKernel(buildElf({ entry: MiB, segments: [{ paddr: MiB, data: new Uint8Array(16) }] }));
    expect(elf.format).toBe("elf");
    expect(kernelCompression(elf)).toBe("none");
    expect(kernelCompression(inspectKernel(buildBzImage()))).toBe("lz4");
  });

  test("refuses a file that is neither", () => {
    for (const bytes of [new Uint8Array(0), new TextEncoder().encode("#!/bin/sh\necho hi\n"), new Uint8Array(4096)]) {
      const error = formatError(() => inspectKernel(bytes));
      expect(error.kind).toBe("not-a-kernel");
      expect(error.message).toBe("not a Linux kernel (neither ELF vmlinux nor bzImage)");
    }
  });

  test("a truncated bzImage is reported as truncated, not as an unknown file", () => {
    expect(formatError(() => inspectKernel(buildBzImage({ truncateTo: 0x210 }))).kind).toBe("truncated");
  });
});

describe("bzImage loader on real kernels", () => {
  const microvm = join(MICROVM_KERNEL_DIR, "bzImage");
  test.skipIf(!availableOrExplain(microvm, "the microVM bzImage test"))("loads the LZ4 microVM bzImage", () => {
    const memory = GuestMemory.create([{ guestAddress: 0, size: 64 * MiB }]);
    try {
      const kernel = loadKernel(memory, readFileSync(microvm));
      if (kernel.format !== "bzimage") throw new Error(`expected a bzImage, got ${kernel.format}`);
      expect(kernel.payload.compression).toBe("lz4");
      expect(kernel.protocolVersion).toBeGreaterThanOrEqual(0x20f);
      expect(kernel.entry64).toBe(0x100200);
    } finally {
      memory.dispose();
    }
  });

  const debian = findDebianBzImage();
  test.skipIf(!availableOrExplain(debian, "the Debian bzImage test"))("parses Debian's generic bzImage", () => {
    const kernel = inspectKernel(readFileSync(debian!));
    if (kernel.format !== "bzimage") throw new Error(`expected a bzImage, got ${kernel.format}`);
    expect(["xz", "zstd", "gzip", "lz4"]).toContain(kernel.payload.compression);
    expect(kernel.setupHeader.byteLength).toBeGreaterThan(0x26c - SETUP_HEADER_OFFSET - 1);
  });
});

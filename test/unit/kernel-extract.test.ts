/**
 * `volt kernel extract`: the ELF vmlinux out of a bzImage for every payload
 * compressor a kernel build offers (lzo excepted), byte for byte what the
 * reference decompressor gives, and clear errors, with nothing written, for
 * corrupt or unsupported payloads. Real kernels (Debian's xz bzImage, the
 * team's lz4 microVM bzImage) are checked against their references when this
 * machine has them.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { parseBzImage } from "../../src/loader/bzimage.ts";
import { parseElfKernel } from "../../src/loader/elf.ts";
import { decompressBzip2 } from "../../src/kernel/decompress/bzip2.ts";
import { decompressLzmaAlone } from "../../src/kernel/decompress/lzma.ts";
import { DecompressError } from "../../src/kernel/decompress/output.ts";
import { decompressXz } from "../../src/kernel/decompress/xz.ts";
import { ExtractError, extractVmlinux, payloadBytes } from "../../src/kernel/extract.ts";
import { compressPayload, makeBzImage, makeVmlinux, METHODS, PVH_ENTRY, runCompressor, sizeWord, toolFor, type Method } from "./kernel-fixtures.ts";
import { availableOrExplain, buildElf, concat, findDebianBzImage, MICROVM_KERNEL_DIR, PT_LOAD } from "./loader-fixtures.ts";

const root = join(import.meta.dir, "..", "..");
const work = mkdtempSync(join(tmpdir(), "volt-kernel-extract-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const vmlinux = makeVmlinux();

function haveTool(method: Method): boolean {
  if (toolFor(method) !== undefined) return true;
  console.log(`skipping ${method}: its compressor is not installed`);
  return false;
}

function extractError(bytes: Uint8Array): ExtractError {
  try {
    extractVmlinux(bytes);
  } catch (error) {
    if (error instanceof ExtractError) return error;
    throw error;
  }
  throw new Error("extractVmlinux did not fail");
}

describe("extract gives back the vmlinux for every kernel compressor", () => {
  test.each(METHODS.map((m) => [m]))("%s", (method) => {
    if (!haveTool(method)) return;
    const bzImage = makeBzImage(compressPayload(vmlinux, method));
    expect(parseBzImage(bzImage).payload.compression).toBe(method);
    const extracted = extractVmlinux(bzImage);
    expect(extracted.compression).toBe(method);
    expect(Buffer.from(extracted.vmlinux).equals(Buffer.from(vmlinux))).toBe(true);
    expect(extracted.elf.pvhEntry).toBe(PVH_ENTRY);
  });

  test("an uncompressed payload (CONFIG_KERNEL_UNCOMPRESSED) is copied out", () => {
    const extracted = extractVmlinux(makeBzImage(concat(vmlinux, sizeWord(vmlinux.length))));
    expect(extracted.compression).toBe("none");
    expect(Buffer.from(extracted.vmlinux).equals(Buffer.from(vmlinux))).toBe(true);
  });
});

describe("xz streams beyond the kernel's defaults", () => {
  const kernelFlags = ["--x86", "--lzma2=preset=6"];
  const variants: [string, string[]][] = [
    ["CRC64 check", [...kernelFlags, "--check=crc64"]],
    ["SHA-256 check", [...kernelFlags, "--check=sha256"]],
    ["no check", [...kernelFlags, "--check=none"]],
    ["several blocks", [...kernelFlags, "--block-size=40KiB"]],
    ["no BCJ filter, preset 0", ["-0"]],
  ];
  test.each(variants)("%s", (_, flags) => {
    if (!haveTool("xz")) return;
    const stream = runCompressor(["xz", "--format=xz", ...flags, "-c"], vmlinux);
    expect(Buffer.from(decompressXz(stream, vmlinux.length)).equals(Buffer.from(vmlinux))).toBe(true);
  });

  test("a damaged byte fails the check", () => {
    if (!haveTool("xz")) return;
    const stream = runCompressor(["xz", "--format=xz", "--check=crc32", "-c"], vmlinux);
    for (const at of [20, stream.length >> 1, stream.length - 30]) {
      const bad = stream.slice();
      bad[at]! ^= 0x10;
      expect(() => decompressXz(bad, vmlinux.length)).toThrow(DecompressError);
    }
  });

  test("output larger than the expected size is refused, not allocated", () => {
    if (!haveTool("xz")) return;
    const stream = runCompressor(["xz", "--format=xz", "-c"], vmlinux);
    expect(() => decompressXz(stream, 1000)).toThrow(/exceeds the expected 1000 bytes/);
  });
});

test("lzma and bzip2 decode what their tools make, at any size", () => {
  for (const size of [0, 1, 5, 1000, 300_000]) {
    const data = makeVmlinux({ size: Math.max(size, 1) }).subarray(0, size);
    if (toolFor("lzma")) expect(Buffer.from(decompressLzmaAlone(runCompressor(["xz", "--format=lzma", "-c"], data), 1 << 20)).equals(Buffer.from(data))).toBe(true);
    if (toolFor("bzip2")) expect(Buffer.from(decompressBzip2(runCompressor(["bzip2", "-c"], data), 1 << 20)).equals(Buffer.from(data))).toBe(true);
  }
  // bzip2's run-length stage: long runs of one byte, and runs of exactly 4.
  const runs = concat(new Uint8Array(100_000).fill(7), Uint8Array.of(1, 1, 1, 1, 2, 2, 2, 2, 2), new Uint8Array(300).fill(0xff));
  if (toolFor("bzip2")) expect(Buffer.from(decompressBzip2(runCompressor(["bzip2", "-c"], runs), 1 << 20)).equals(Buffer.from(runs))).toBe(true);
});

describe("bad payloads are clear errors", () => {
  // gzip, zstd, xz and bzip2 carry checksums, so a flipped byte is caught; lz4 and lzma carry
  // none, so they are cut short instead (a decoder cannot tell a flipped literal from data).
  test.each(METHODS.map((m) => [m]))("a damaged %s payload", (method) => {
    if (!haveTool(method)) return;
    const payload = compressPayload(vmlinux, method);
    let bad: Uint8Array;
    if (method === "lz4" || method === "lzma") {
      bad = concat(payload.subarray(0, payload.length >> 1), sizeWord(vmlinux.length));
    } else {
      bad = payload.slice();
      bad[bad.length >> 1]! ^= 0x55;
    }
    const error = extractError(makeBzImage(bad));
    expect(error.kind).toBe("corrupt-payload");
    expect(error.message).toContain("payload");
  });

  test("a size word that disagrees with the data", () => {
    if (!haveTool("xz")) return;
    const payload = compressPayload(vmlinux, "xz");
    new DataView(payload.buffer, payload.byteOffset).setUint32(payload.length - 4, vmlinux.length + 1, true);
    expect(extractError(makeBzImage(payload)).message).toContain("decompressed to");
  });

  test("an LZO payload is unsupported, by name", () => {
    const error = extractError(makeBzImage(concat(Uint8Array.of(0x89, 0x4c, 0x5a, 0x4f, 0, 0x0d, 0x0a, 0x1a, 0x0a), new Uint8Array(64))));
    expect(error.kind).toBe("unsupported-compression");
    expect(error.message).toContain("LZO");
  });

  test("an unknown payload magic", () => {
    expect(extractError(makeBzImage(new Uint8Array(64).fill(0x33))).kind).toBe("unsupported-compression");
  });

  test("a payload that decompresses to something other than a kernel", () => {
    const error = extractError(makeBzImage(compressPayload(new TextEncoder().encode("hello, not a kernel\n".repeat(100)), "gzip")));
    expect(error.kind).toBe("not-elf");
  });

  test("an ELF vmlinux has nothing to extract; a text file is no kernel", () => {
    expect(extractError(vmlinux).kind).toBe("not-a-bzimage");
    expect(extractError(new TextEncoder().encode("just text, long enough to look at ".repeat(40))).kind).toBe("not-a-bzimage");
  });
});

describe("real kernels", () => {
  test("Debian's bzImage gives what xz -dc gives, with the PVH note", () => {
    const path = findDebianBzImage();
    if (!availableOrExplain(path, "Debian's bzImage")) return;
    if (!Bun.which("xz")) return void console.log("skipping: xz is not installed");
    const bytes = new Uint8Array(readFileSync(path));
    const extracted = extractVmlinux(bytes);
    const payload = payloadBytes(bytes, extracted.bzImage);
    const reference = Buffer.from(runCompressor(["xz", "-dc", "--single-stream"], payload.subarray(0, payload.length - 4)));
    expect(extracted.compression).toBe("xz");
    expect(extracted.vmlinux.length).toBe(reference.length);
    expect(Buffer.from(extracted.vmlinux).equals(reference)).toBe(true);
    expect(extracted.elf.pvhEntry).toBeDefined();
  }, 60_000);

  test("the microVM kernel's lz4 bzImage gives the same loadable kernel as its vmlinux", () => {
    const bzImagePath = join(MICROVM_KERNEL_DIR, "bzImage");
    if (!availableOrExplain(bzImagePath, "the microVM bzImage")) return;
    const extracted = extractVmlinux(new Uint8Array(readFileSync(bzImagePath)));
    expect(extracted.compression).toBe("lz4");
    // vmlinux.gz is the unstripped vmlinux; the payload is `objcopy -S` of it, so compare what loads.
    const reference = new Uint8Array(gunzipSync(readFileSync(join(MICROVM_KERNEL_DIR, "vmlinux.gz"))));
    const ours = extracted.elf;
    const theirs = parseElfKernel(reference);
    expect(ours.entry64).toBe(theirs.entry64);
    expect(ours.pvhEntry).toBe(theirs.pvhEntry);
    expect(ours.pvhEntry).toBeDefined();
    expect(ours.segments.length).toBe(theirs.segments.length);
    for (const [i, segment] of ours.segments.entries()) {
      const other = theirs.segments[i]!;
      expect([segment.guestAddress, segment.fileSize, segment.memSize]).toEqual([other.guestAddress, other.fileSize, other.memSize]);
      const a = extracted.vmlinux.subarray(segment.fileOffset, segment.fileOffset + segment.fileSize);
      const b = reference.subarray(other.fileOffset, other.fileOffset + other.fileSize);
      expect(Buffer.from(a).equals(Buffer.from(b))).toBe(true);
    }
  }, 60_000);
});

describe("volt kernel extract", () => {
  function volt(args: string[]) {
    const child = Bun.spawnSync(["bun", join(root, "src/cli/main.ts"), "kernel", "extract", ...args], {
      cwd: work,
      env: { ...process.env, NO_COLOR: "1", VOLT_DATA_DIR: join(work, "data") },
    });
    return { exitCode: child.exitCode, stdout: child.stdout.toString(), stderr: child.stderr.toString() };
  }
  const file = (name: string, bytes: Uint8Array) => {
    const path = join(work, name);
    writeFileSync(path, bytes);
    return path;
  };

  test("writes the ELF and reports it as JSON", () => {
    const source = file("bzImage-gzip", makeBzImage(compressPayload(vmlinux, "gzip")));
    const out = join(work, "vmlinux-out");
    const result = volt([source, "--out", out, "--json"]);
    expect(result.exitCode).toBe(0);
    const report = JSON.parse(result.stdout);
    expect(report).toMatchObject({ ok: true, extract: { compression: "gzip", sizeBytes: vmlinux.length, pvhEntry: "0x1000040", entry64: "0x1000000" } });
    expect(Buffer.from(readFileSync(out)).equals(Buffer.from(vmlinux))).toBe(true);
    // The output exists now: refused without --force, replaced with it.
    expect(volt([source, "--out", out]).exitCode).toBe(2);
    expect(volt([source, "--out", out, "--force"]).exitCode).toBe(0);
  });

  test.each([
    ["a missing file", () => ["/no/such/bzImage"], "no such file"],
    ["a file that is not a kernel", () => [file("text", new TextEncoder().encode("x".repeat(2000)))], "not a bzImage"],
    ["an ELF vmlinux", () => [file("already-elf", buildElf({ entry: 0x100_0000, segments: [{ type: PT_LOAD, paddr: 0x100_0000, data: new Uint8Array(64) }] }))], "already an ELF vmlinux"],
    [
      "a corrupt payload",
      () => {
        const payload = compressPayload(vmlinux, "gzip");
        payload[payload.length >> 1]! ^= 0xff;
        return [file("corrupt", makeBzImage(payload))];
      },
      "cannot decompress the payload",
    ],
  ])("%s: exit 2, nothing written", (_, makeArgs, message) => {
    const out = join(work, `never-${Math.random().toString(16).slice(2)}`);
    const result = volt([...makeArgs(), "--out", out, "--json"]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(message);
    expect(JSON.parse(result.stdout).ok).toBe(false);
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(work).filter((n) => n.includes("partial"))).toEqual([]);
  });
});

import { afterAll, describe, expect, test } from "bun:test";
import { lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CpioError, writeCpio, type CpioEntry } from "../../src/image/cpio.ts";

const scratch = mkdtempSync(join(tmpdir(), "volt-cpio-test-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));
let archiveCounter = 0;

/** Extracts with the system's GNU cpio, the independent reader we check against. */
function extractWithSystemCpio(archive: Uint8Array): { dir: string; listing: string[] } {
  const id = ++archiveCounter;
  const archivePath = join(scratch, `archive-${id}.cpio`);
  const dir = join(scratch, `out-${id}`);
  writeFileSync(archivePath, archive);
  const list = Bun.spawnSync(["cpio", "-i", "-t", "--quiet"], { stdin: Bun.file(archivePath), stderr: "pipe" });
  expect(list.exitCode, list.stderr.toString()).toBe(0);
  Bun.spawnSync(["mkdir", "-p", dir]);
  const extract = Bun.spawnSync(["cpio", "-idv", "--quiet", "--no-absolute-filenames"], {
    cwd: dir,
    stdin: Bun.file(archivePath),
    stderr: "pipe",
  });
  expect(extract.exitCode, extract.stderr.toString()).toBe(0);
  return { dir, listing: list.stdout.toString().trim().split("\n") };
}

interface ParsedRecord {
  name: string;
  mode: number;
  fileSize: number;
  nameSize: number;
  headerOffset: number;
  dataOffset: number;
}

/** A strict reader of our own output, to check alignment rules GNU cpio would forgive. */
function parseNewc(archive: Uint8Array): ParsedRecord[] {
  const text = new TextDecoder();
  const records: ParsedRecord[] = [];
  let offset = 0;
  for (;;) {
    expect(offset % 4).toBe(0);
    expect(text.decode(archive.subarray(offset, offset + 6))).toBe("070701");
    const field = (i: number) => parseInt(text.decode(archive.subarray(offset + 6 + i * 8, offset + 14 + i * 8)), 16);
    const nameSize = field(11);
    const fileSize = field(6);
    const name = text.decode(archive.subarray(offset + 110, offset + 110 + nameSize - 1));
    expect(archive[offset + 110 + nameSize - 1]).toBe(0);
    const dataOffset = (offset + 110 + nameSize + 3) & ~3;
    // Padding bytes must be zero: the kernel's unpacker skips them blindly.
    for (let i = offset + 110 + nameSize; i < dataOffset; i++) expect(archive[i]).toBe(0);
    records.push({ name, mode: field(1), fileSize, nameSize, headerOffset: offset, dataOffset });
    offset = (dataOffset + fileSize + 3) & ~3;
    for (let i = dataOffset + fileSize; i < offset; i++) expect(archive[i]).toBe(0);
    if (name === "TRAILER!!!") break;
  }
  expect(offset).toBe(archive.byteLength);
  return records;
}

describe("writeCpio round trip through system cpio", () => {
  test("directories, files, modes, contents and symlinks survive", () => {
    const binary = new Uint8Array(1000).map((_, i) => (i * 7) & 0xff);
    const entries: CpioEntry[] = [
      { kind: "directory", path: "/etc", mode: 0o755 },
      { kind: "directory", path: "private", mode: 0o700 },
      { kind: "directory", path: "tmp", mode: 0o1777 },
      { kind: "file", path: "etc/hostname", data: "volt\n" },
      { kind: "file", path: "private/secret", data: "s", mode: 0o600 },
      { kind: "file", path: "./bin/tool", data: binary, mode: 0o755 },
      { kind: "file", path: "usr/lib/deep/nested/file", data: "deep", mode: 0o640 },
      { kind: "symlink", path: "bin/sh", target: "tool" },
      { kind: "symlink", path: "etc/abs", target: "/etc/hostname" },
    ];
    const { dir, listing } = extractWithSystemCpio(writeCpio(entries));
    expect(listing).toEqual([
      "etc",
      "private",
      "tmp",
      "etc/hostname",
      "private/secret",
      "bin",
      "bin/tool",
      "usr",
      "usr/lib",
      "usr/lib/deep",
      "usr/lib/deep/nested",
      "usr/lib/deep/nested/file",
      "bin/sh",
      "etc/abs",
    ]);
    const modeOf = (path: string) => lstatSync(join(dir, path)).mode & 0o7777;
    expect(modeOf("private")).toBe(0o700);
    expect(modeOf("tmp")).toBe(0o1777);
    expect(modeOf("usr/lib/deep")).toBe(0o755); // implicit parent
    expect(modeOf("etc/hostname")).toBe(0o644);
    expect(modeOf("private/secret")).toBe(0o600);
    expect(modeOf("bin/tool")).toBe(0o755);
    expect(modeOf("usr/lib/deep/nested/file")).toBe(0o640);
    expect(readFileSync(join(dir, "etc/hostname"), "utf8")).toBe("volt\n");
    expect(new Uint8Array(readFileSync(join(dir, "bin/tool")))).toEqual(binary);
    expect(lstatSync(join(dir, "bin/sh")).isSymbolicLink()).toBe(true);
    expect(readlinkSync(join(dir, "bin/sh"))).toBe("tool");
    expect(readlinkSync(join(dir, "etc/abs"))).toBe("/etc/hostname");
  });

  test.skipIf(process.getuid?.() !== 0)("character device nodes (needs root to extract)", () => {
    const { dir } = extractWithSystemCpio(
      writeCpio([{ kind: "chardev", path: "dev/console", major: 5, minor: 1, mode: 0o600 }]),
    );
    const stat = lstatSync(join(dir, "dev/console"));
    expect(stat.isCharacterDevice()).toBe(true);
    expect(stat.mode & 0o7777).toBe(0o600);
    expect(Number(stat.rdev)).toBe((5 << 8) | 1);
  });

  test("every name length 1..9 with every file size 0..5 is padded correctly", () => {
    const entries: CpioEntry[] = [];
    const expected = new Map<string, string>();
    for (let nameLength = 1; nameLength <= 9; nameLength++) {
      for (let size = 0; size <= 5; size++) {
        const name = `${String(size)}${"n".repeat(nameLength - 1)}`;
        const path = `d${nameLength}/${name}`;
        const data = "abcdef".slice(0, size);
        entries.push({ kind: "file", path, data });
        expected.set(path, data);
      }
    }
    const archive = writeCpio(entries);
    const records = parseNewc(archive);
    for (const record of records) {
      expect(record.nameSize).toBe(new TextEncoder().encode(record.name).byteLength + 1);
      expect(record.dataOffset % 4).toBe(0);
      expect(record.headerOffset % 4).toBe(0);
    }
    const { dir } = extractWithSystemCpio(archive);
    for (const [path, data] of expected) expect(readFileSync(join(dir, path), "utf8")).toBe(data);
  });

  test("a multi-megabyte file with an odd size round-trips byte for byte", () => {
    const big = new Uint8Array(3 * 1024 * 1024 + 3);
    crypto.getRandomValues(big.subarray(0, 65536));
    for (let i = 65536; i < big.length; i++) big[i] = big[i % 65536]! ^ (i & 0xff);
    const archive = writeCpio([{ kind: "file", path: "big.bin", data: big }]);
    const records = parseNewc(archive);
    expect(records[0]?.fileSize).toBe(big.byteLength);
    const { dir } = extractWithSystemCpio(archive);
    expect(Bun.hash(readFileSync(join(dir, "big.bin")))).toBe(Bun.hash(big));
  });

  test("the archive ends with a TRAILER!!! record and is a multiple of 4 bytes", () => {
    const archive = writeCpio([]);
    const records = parseNewc(archive);
    expect(records.map((r) => r.name)).toEqual(["TRAILER!!!"]);
    expect(archive.byteLength % 4).toBe(0);
  });

  test("output is deterministic and the mtime is configurable", () => {
    const entries: CpioEntry[] = [{ kind: "file", path: "a", data: "x" }];
    expect(writeCpio(entries)).toEqual(writeCpio(entries));
    const stamped = new TextDecoder().decode(writeCpio(entries, { mtime: 0x1234abcd }).subarray(0, 110));
    expect(stamped.slice(6 + 5 * 8, 6 + 6 * 8)).toBe("1234abcd");
  });

  test("symlink and directory modes carry the file-type bits", () => {
    const records = parseNewc(
      writeCpio([
        { kind: "directory", path: "d" },
        { kind: "symlink", path: "l", target: "d" },
        { kind: "file", path: "f", data: "" },
      ]),
    );
    expect(records.map((r) => r.mode.toString(8))).toEqual(["40755", "120777", "100644", "0"]);
  });
});

describe("writeCpio rejects bad input with a clear error", () => {
  const cases: [string, CpioEntry[], RegExp][] = [
    ["NUL in a name", [{ kind: "file", path: "bad\0name", data: "" }], /NUL byte/],
    ["duplicate paths", [{ kind: "file", path: "a", data: "" }, { kind: "file", path: "/a", data: "" }], /duplicate path "a"/],
    ["a directory after its contents", [{ kind: "file", path: "d/x", data: "" }, { kind: "directory", path: "d" }], /"d" must be listed before its contents \("d\/x"\)/],
    ["file used as a directory", [{ kind: "file", path: "a", data: "" }, { kind: "file", path: "a/b", data: "" }], /used as a directory/],
    ["the root itself", [{ kind: "directory", path: "/" }], /archive root/],
    ["an empty path", [{ kind: "file", path: "", data: "" }], /archive root/],
    ["parent references", [{ kind: "file", path: "a/../../etc/passwd", data: "" }], /contains "\.\."/],
    ["the trailer name", [{ kind: "file", path: "TRAILER!!!", data: "" }], /reserved/],
    ["a mode with type bits", [{ kind: "file", path: "a", data: "", mode: 0o100644 }], /not a permission value/],
    ["a negative mode", [{ kind: "directory", path: "a", mode: -1 }], /not a permission value/],
    ["an empty symlink target", [{ kind: "symlink", path: "l", target: "" }], /non-empty target/],
    ["a huge device number", [{ kind: "chardev", path: "c", major: 2 ** 33, minor: 0 }], /major number/],
  ];
  for (const [what, entries, message] of cases) {
    test(what, () => {
      expect(() => writeCpio(entries)).toThrow(CpioError);
      expect(() => writeCpio(entries)).toThrow(message);
    });
  }
});

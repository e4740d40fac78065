/** The snapshot files on disk: what is written, and every way a bad snapshot is refused before a VM exists. */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MANIFEST_FILE } from "../../src/snapshot/chunks.ts";
import { MEMORY_FILE, STATE_FILE, readSnapshot, writeSnapshot } from "../../src/snapshot/files.ts";
import { HEADER_SIZE, SNAPSHOT_MAJOR, SNAPSHOT_MINOR, SnapshotError, decodeStateFile, encodeStateFile } from "../../src/snapshot/format.ts";

const MiB = 1 << 20;
const work = mkdtempSync(join(tmpdir(), "volt-snapfiles-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const meta = { createdAt: "2026-11-29T00:00:00.000Z", voltVersion: "test", vcpuCount: 2, memorySizeBytes: 3 * MiB };
const state = { vcpus: [{ rip: 0xffff_ffff_8100_0000n, xsave: Uint8Array.of(1, 2, 3) }], serial: { lcr: 3 } };

function regions() {
  const low = new Uint8Array(new SharedArrayBuffer(2 * MiB));
  const high = new Uint8Array(new SharedArrayBuffer(MiB));
  low.set(new TextEncoder().encode("low memory"), 0x1000);
  high.set(new TextEncoder().encode("high memory"), 0x20);
  return [
    { guestAddress: 0, bytes: low },
    { guestAddress: 4 * MiB, bytes: high },
  ];
}

function snapshot(name: string) {
  const dir = join(work, name);
  writeSnapshot(dir, meta, state, regions());
  return dir;
}

function expectRefused(dir: string, kind: string, message: string | RegExp) {
  let error: unknown;
  try {
    readSnapshot(dir);
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(SnapshotError);
  expect((error as SnapshotError).kind).toBe(kind as SnapshotError["kind"]);
  expect((error as SnapshotError).message).toMatch(message);
}

describe("snapshot files", () => {
  test("round trip: state with bigints and bytes, memory regions at their offsets, sparse memory file", () => {
    const dir = join(work, "good");
    const written = writeSnapshot(dir, meta, state, regions());
    expect(written.memoryFileSize).toBe(3 * MiB);
    // Only the two 64 KiB blocks that hold data were written; the rest are holes.
    expect(written.memoryBytesWritten).toBe(2 * 64 * 1024);
    const opened = readSnapshot<typeof state>(dir);
    expect(opened.meta).toMatchObject({ ...meta, formatVersion: `${SNAPSHOT_MAJOR}.${SNAPSHOT_MINOR}`, memoryFileSize: 3 * MiB });
    expect(opened.meta.regions).toEqual([
      { guestAddress: 0, size: 2 * MiB, fileOffset: 0 },
      { guestAddress: 4 * MiB, size: MiB, fileOffset: 2 * MiB },
    ]);
    expect(opened.state.vcpus[0]!.rip).toBe(0xffff_ffff_8100_0000n);
    expect([...opened.state.vcpus[0]!.xsave]).toEqual([1, 2, 3]);
    const memory = readFileSync(opened.memoryPath);
    expect(memory.subarray(0x1000, 0x100a).toString()).toBe("low memory");
    expect(memory.subarray(2 * MiB + 0x20, 2 * MiB + 0x2b).toString()).toBe("high memory");
    expect(readdirSync(work).filter((f) => f.includes("partial"))).toEqual([]);
  });

  test("an existing snapshot is not overwritten without force; with force it is replaced whole", () => {
    const dir = snapshot("exists");
    expect(() => writeSnapshot(dir, meta, state, regions())).toThrow(/already exists \(use --force/);
    writeSnapshot(dir, { ...meta, vcpuCount: 7 }, state, regions(), { force: true });
    expect(readSnapshot(dir).meta.vcpuCount).toBe(7);
    expect(readdirSync(work).filter((f) => f.includes(".old-") || f.includes(".partial-"))).toEqual([]);
  });

  test("a CRC mismatch is refused", () => {
    const dir = snapshot("crc");
    const path = join(dir, STATE_FILE);
    const bytes = readFileSync(path);
    bytes[bytes.length - 1]! ^= 0xff;
    writeFileSync(path, bytes);
    expectRefused(dir, "crc", /CRC-32 mismatch/);
  });

  test("an unknown major version is refused, naming both versions", () => {
    const dir = snapshot("major");
    const path = join(dir, STATE_FILE);
    const bytes = readFileSync(path);
    bytes.writeUInt16LE(SNAPSHOT_MAJOR + 1, 8);
    writeFileSync(path, bytes);
    expectRefused(dir, "version", `snapshot format ${SNAPSHOT_MAJOR + 1}.${SNAPSHOT_MINOR} is not supported`);
  });

  test("another minor version of the same major is read (minor versions only add)", () => {
    const file = encodeStateFile({ ...meta, regions: [], memoryFileSize: 0 }, state);
    new DataView(file.buffer).setUint16(10, 3, true);
    expect(decodeStateFile(file, "x").minor).toBe(3);
  });

  test("a truncated state file, a file that is not a state file, and a missing state file are refused", () => {
    const dir = snapshot("truncated-state");
    truncateSync(join(dir, STATE_FILE), HEADER_SIZE + 5);
    expectRefused(dir, "truncated", /header says \d+ bytes of state, the file has 5/);
    writeFileSync(join(dir, STATE_FILE), "just some text that is long enough");
    expectRefused(dir, "magic", "not a Volt snapshot state file");
    rmSync(join(dir, STATE_FILE));
    expectRefused(dir, "missing", `cannot read ${STATE_FILE}: no such file`);
    expectRefused(join(work, "nowhere"), "missing", "no such directory");
  });

  test("a truncated, overlong or missing memory file is refused", () => {
    const dir = snapshot("memory");
    truncateSync(join(dir, MEMORY_FILE), 3 * MiB - 4096);
    expectRefused(dir, "memory", /the state records 3145728 \(truncated\)/);
    truncateSync(join(dir, MEMORY_FILE), 4 * MiB);
    expectRefused(dir, "memory", /longer than recorded/);
    rmSync(join(dir, MEMORY_FILE));
    expectRefused(dir, "missing", `memory file ${MEMORY_FILE} is missing`);
  });

  test("state whose regions disagree with the memory size is refused", () => {
    const dir = snapshot("mismatch");
    writeFileSync(join(dir, STATE_FILE), encodeStateFile({ ...meta, memorySizeBytes: 4 * MiB, regions: [{ guestAddress: 0, size: 3 * MiB, fileOffset: 0 }], memoryFileSize: 3 * MiB }, state));
    expectRefused(dir, "memory", "memory regions add up to 3145728 bytes, the state says 4194304");
  });

  test("a failed write leaves nothing under the final name", () => {
    const dir = join(work, "failed");
    const bad = [{ guestAddress: 0, bytes: new Uint8Array(4096) }];
    // Encoding the state fails after the memory file was written (a getter that throws stands in for any failure).
    const failing = {
      get vcpus(): never {
        throw new Error("capture failed");
      },
    };
    expect(() => writeSnapshot(dir, meta, failing, bad)).toThrow("capture failed");
    expect(existsSync(dir)).toBe(false);
    expect(readdirSync(work).filter((f) => f.includes("failed"))).toEqual([]);
  });

  test("with a chunk store the snapshot holds a manifest instead of memory.raw, and reads back through it", () => {
    const store = join(work, "store");
    const dir = join(work, "chunked");
    const written = writeSnapshot(dir, meta, state, regions(), { chunkStore: store });
    expect(existsSync(join(dir, MEMORY_FILE))).toBe(false);
    expect(existsSync(join(dir, MANIFEST_FILE))).toBe(true);
    // 3 MiB in 2 MiB chunks: the 2 MiB region is one chunk, the 1 MiB region one more; both hold data.
    expect(written.chunks).toMatchObject({ chunks: 2, newChunks: 2, store });
    const opened = readSnapshot(dir);
    expect(opened.manifestPath).toBe(join(dir, MANIFEST_FILE));
    // A second snapshot of the same memory stores nothing new.
    const again = writeSnapshot(join(work, "chunked-2"), meta, state, regions(), { chunkStore: store });
    expect(again.chunks).toMatchObject({ newChunks: 0, reusedChunks: 2, bytesWritten: 0 });
    expect(again.chunks!.dedupRatio).toBe(Number.POSITIVE_INFINITY);
    // A manifest naming a chunk the store lost is refused, naming the chunk.
    const manifest = JSON.parse(readFileSync(join(dir, MANIFEST_FILE), "utf8")) as { regions: { chunks: string[] }[] };
    const lost = manifest.regions[1]!.chunks[0]!;
    rmSync(join(store, "chunks", lost.slice(0, 2), lost), { force: true });
    expectRefused(dir, "missing", lost);
  });

  test("memory files are private to the user", () => {
    const dir = snapshot("mode");
    expect(statSync(join(dir, MEMORY_FILE)).mode & 0o777).toBe(0o600);
  });
});

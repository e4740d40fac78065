/** The content-addressed chunk store: what is stored, what is shared, what survives a crash, every refusal, GC, and copy-on-write restore. */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, truncateSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GuestMemory, GuestMemoryError } from "../../src/memory/guest-memory.ts";
import {
  type ChunkManifest,
  ChunkStoreError,
  DEFAULT_CHUNK_SIZE,
  MANIFEST_FILE,
  chunkLayout,
  chunkPath,
  collectGarbage,
  dedupRatio,
  isAllZero,
  mapManifest,
  readManifest,
  sha256Hex,
  storeUsage,
  verifyManifest,
  writeChunks,
  writeManifest,
} from "../../src/snapshot/chunks.ts";
import { SnapshotError } from "../../src/snapshot/format.ts";

const MiB = 1 << 20;
const CHUNK = 2 * MiB;
const work = mkdtempSync(join(tmpdir(), "volt-chunks-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

let dirCount = 0;
function fresh(name: string): string {
  const dir = join(work, `${name}-${dirCount++}`);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** Pseudo-random, never all-zero bytes in page-aligned shared memory, like guest RAM. */
function randomRegion(size: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(new SharedArrayBuffer(size));
  const words = new Uint32Array(bytes.buffer);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  return bytes;
}

/** Every chunk file in the store, by hash. */
function storedChunks(store: string): Map<string, string> {
  const found = new Map<string, string>();
  const root = join(store, "chunks");
  if (!existsSync(root)) return found;
  for (const fanout of readdirSync(root)) for (const name of readdirSync(join(root, fanout))) found.set(name, join(root, fanout, name));
  return found;
}

function catchError(fn: () => unknown): ChunkStoreError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(ChunkStoreError);
    expect(error).toBeInstanceOf(SnapshotError);
    return error as ChunkStoreError;
  }
  throw new Error("expected a ChunkStoreError, nothing was thrown");
}

const text = (s: string) => new TextEncoder().encode(s);
const decode = (b: Uint8Array) => new TextDecoder().decode(b);

describe("writeChunks + mapManifest round trip", () => {
  test("two regions: chunk files named by their SHA-256, a short last chunk, zero chunks not stored, bytes come back at their guest addresses", () => {
    const store = fresh("store");
    const snap = fresh("snap");
    // Region A: 6 MiB = chunks [random, zero, random]; region B: 3 MiB = [random 2 MiB, random 1 MiB (short)].
    const low = randomRegion(6 * MiB, 1);
    low.fill(0, CHUNK, 2 * CHUNK);
    low.set(text("low end"), 6 * MiB - 7);
    const high = randomRegion(3 * MiB, 2);
    high.set(text("high start"), 0);
    const manifestPath = join(snap, MANIFEST_FILE);
    const { manifest, stats } = writeChunks(store, [
      { guestAddress: 0, bytes: low },
      { guestAddress: 8 * MiB, bytes: high },
    ], { manifestPath });

    expect(manifest.version).toBe(1);
    expect(manifest.chunkSize).toBe(DEFAULT_CHUNK_SIZE);
    expect(manifest.store).toBe(store);
    expect(manifest.totalBytes).toBe(9 * MiB);
    expect(manifest.regions.map((r) => [r.guestAddress, r.size, r.chunks.length])).toEqual([
      [0, 6 * MiB, 3],
      [8 * MiB, 3 * MiB, 2],
    ]);
    expect(manifest.regions[0]!.chunks[1]).toBe("zero");
    expect(stats).toMatchObject({ chunks: 5, zeroChunks: 1, newChunks: 4, reusedChunks: 0, bytesWritten: 7 * MiB, bytesDeduplicated: 2 * MiB, zeroBytes: 2 * MiB, totalBytes: 9 * MiB });
    // The file on disk is what was returned.
    expect(readManifest(manifestPath)).toEqual(manifest);

    const files = storedChunks(store);
    expect(files.size).toBe(4);
    const lastHash = manifest.regions[1]!.chunks[1]!;
    expect(statSync(files.get(lastHash)!).size).toBe(MiB); // the short last chunk is not padded
    for (const [hash, path] of files) {
      expect(path).toBe(chunkPath(store, hash));
      expect(sha256Hex(new Uint8Array(readFileSync(path)))).toBe(hash);
      expect(statSync(path).mode & 0o777).toBe(0o400);
    }

    const { memory } = mapManifest(manifestPath, { verifyHashes: true });
    try {
      expect(memory.memfd).toBe(-1);
      expect(Buffer.from(memory.read(0, 6 * MiB)).equals(Buffer.from(low))).toBe(true);
      expect(Buffer.from(memory.read(8 * MiB, 3 * MiB)).equals(Buffer.from(high))).toBe(true);
      expect(decode(memory.read(6 * MiB - 7, 7))).toBe("low end");
      expect(decode(memory.read(8 * MiB, 10))).toBe("high start");
      expect(memory.contains(6 * MiB, 1)).toBe(false);
    } finally {
      memory.dispose();
    }
  });

  test("a write with the same content again stores nothing new and reuses every chunk", () => {
    const store = fresh("store");
    const bytes = randomRegion(4 * MiB, 3);
    const first = writeChunks(store, [{ guestAddress: 0, bytes }]);
    const inodes = [...storedChunks(store).values()].map((p) => statSync(p).ino);
    const second = writeChunks(store, [{ guestAddress: 0, bytes }]);
    expect(second.manifest).toEqual(first.manifest);
    expect(second.stats).toMatchObject({ newChunks: 0, reusedChunks: 2, bytesWritten: 0, bytesDeduplicated: 4 * MiB });
    // Not rewritten: the very same files.
    expect([...storedChunks(store).values()].map((p) => statSync(p).ino)).toEqual(inodes);
  });
});

describe("deduplication", () => {
  test("two snapshots sharing most of their memory: the second writes only its changed chunks", () => {
    const store = fresh("store");
    const size = 32 * MiB; // 16 chunks
    const one = randomRegion(size, 10);
    const two = new Uint8Array(new SharedArrayBuffer(size));
    two.set(one);
    two[5 * CHUNK + 123] = two[5 * CHUNK + 123]! ^ 0xff; // two chunks differ
    two.set(text("clone"), 11 * CHUNK);
    const a = writeChunks(store, [{ guestAddress: 0, bytes: one }]);
    const b = writeChunks(store, [{ guestAddress: 0, bytes: two }]);
    expect(a.stats).toMatchObject({ newChunks: 16, bytesWritten: 32 * MiB, bytesDeduplicated: 0 });
    expect(b.stats).toMatchObject({ newChunks: 2, reusedChunks: 14, zeroChunks: 0, bytesWritten: 4 * MiB, bytesDeduplicated: 28 * MiB });
    expect(storedChunks(store).size).toBe(18);
    const usage = storeUsage([a.manifest, b.manifest]);
    expect(usage).toMatchObject({ logicalBytes: 64 * MiB, storedBytes: 36 * MiB, distinctChunks: 18 });
    expect(usage.ratio).toBeCloseTo(64 / 36, 10);
    console.log(`dedup: second snapshot wrote ${b.stats.bytesWritten / MiB} MiB, deduplicated ${b.stats.bytesDeduplicated / MiB} MiB; store ratio ${usage.ratio.toFixed(2)} (${usage.logicalBytes / MiB} MiB in ${usage.storedBytes / MiB} MiB)`);
  });

  test("identical chunks inside one snapshot are stored once", () => {
    const store = fresh("store");
    const chunk = randomRegion(CHUNK, 20);
    const bytes = new Uint8Array(new SharedArrayBuffer(3 * CHUNK));
    bytes.set(chunk, 0);
    bytes.set(chunk, 2 * CHUNK);
    bytes.set(text("middle"), CHUNK);
    const { manifest, stats } = writeChunks(store, [{ guestAddress: 0, bytes }]);
    const [first, , third] = manifest.regions[0]!.chunks;
    expect(first).toBe(third!);
    expect(stats).toMatchObject({ newChunks: 2, reusedChunks: 1, bytesWritten: 2 * CHUNK, bytesDeduplicated: CHUNK });
    expect(storedChunks(store).size).toBe(2);
  });

  test("zero chunks are never stored, in any snapshot", () => {
    const store = fresh("store");
    const bytes = new Uint8Array(new SharedArrayBuffer(4 * CHUNK));
    bytes[2 * CHUNK + CHUNK - 1] = 1; // only chunk 2 has data, in its very last byte
    const { manifest, stats } = writeChunks(store, [{ guestAddress: 0, bytes }]);
    expect(manifest.regions[0]!.chunks.map((c) => (c === "zero" ? c : "data"))).toEqual(["zero", "zero", "data", "zero"]);
    expect(stats).toMatchObject({ zeroChunks: 3, zeroBytes: 3 * CHUNK, newChunks: 1, bytesWritten: CHUNK });
    expect(storedChunks(store).size).toBe(1);
    const empty = writeChunks(store, [{ guestAddress: 0, bytes: new Uint8Array(new SharedArrayBuffer(8 * CHUNK)) }]);
    expect(empty.stats).toMatchObject({ zeroChunks: 8, newChunks: 0, bytesWritten: 0, bytesDeduplicated: 8 * CHUNK });
    expect(storedChunks(store).size).toBe(1);
    const memory = GuestMemory.mapChunks(chunkLayout(manifest));
    try {
      expect(memory.readU8(2 * CHUNK + CHUNK - 1)).toBe(1);
      expect(isAllZero(memory.slice(0, 2 * CHUNK))).toBe(true);
    } finally {
      memory.dispose();
    }
  });

  test("isAllZero looks at every byte, at any alignment", () => {
    const bytes = new Uint8Array(4099);
    expect(isAllZero(bytes)).toBe(true);
    expect(isAllZero(bytes.subarray(1, 4098))).toBe(true);
    for (const at of [0, 1, 2, 3, 2048, 4095, 4096, 4097, 4098]) {
      bytes[at] = 7;
      expect(isAllZero(bytes)).toBe(false);
      if (at >= 1 && at < 4098) expect(isAllZero(bytes.subarray(1, 4098))).toBe(false);
      bytes[at] = 0;
    }
  });

  test("dedupRatio: logical bytes per stored byte", () => {
    expect(dedupRatio(64, 16)).toBe(4);
    expect(dedupRatio(0, 0)).toBe(1);
    expect(dedupRatio(10, 0)).toBe(Number.POSITIVE_INFINITY);
  });

  test("a reused chunk's mtime is refreshed (a concurrent GC sees it in use); a stored chunk of the wrong size is replaced", () => {
    const store = fresh("store");
    const bytes = randomRegion(2 * CHUNK, 30);
    const { manifest } = writeChunks(store, [{ guestAddress: 0, bytes }]);
    const [h0, h1] = manifest.regions[0]!.chunks as [string, string];
    const old = new Date(Date.now() - 24 * 3600 * 1000);
    utimesSync(chunkPath(store, h0), old, old);
    truncateSync(chunkPath(store, h1), 4096);
    const again = writeChunks(store, [{ guestAddress: 0, bytes }]);
    expect(again.stats).toMatchObject({ newChunks: 1, repairedChunks: 1, reusedChunks: 1, bytesWritten: CHUNK });
    expect(statSync(chunkPath(store, h0)).mtimeMs).toBeGreaterThan(Date.now() - 60_000);
    expect(statSync(chunkPath(store, h1)).size).toBe(CHUNK);
  });
});

describe("crash safety", () => {
  test.each(["partial", "synced"] as const)("an error while a chunk is %s leaves no chunk under its hash name, no temp file and no manifest", (phase) => {
    const store = fresh("store");
    const snap = fresh("snap");
    const manifestPath = join(snap, MANIFEST_FILE);
    const bytes = randomRegion(3 * CHUNK, 40);
    const doomed = sha256Hex(bytes.subarray(CHUNK, 2 * CHUNK));
    let calls = 0;
    expect(() =>
      writeChunks(store, [{ guestAddress: 0, bytes }], {
        manifestPath,
        onChunkWrite: (event) => {
          if (event.phase !== phase) return;
          calls++;
          if (event.hash === doomed) {
            expect(existsSync(event.tempPath)).toBe(true);
            throw new Error("simulated crash");
          }
        },
      }),
    ).toThrow("simulated crash");
    expect(calls).toBe(2);
    expect(existsSync(manifestPath)).toBe(false);
    expect(readdirSync(snap)).toEqual([]);
    const files = storedChunks(store);
    expect(files.has(doomed)).toBe(false);
    expect(files.size).toBe(1); // the first chunk, complete
    for (const [hash, path] of files) expect(sha256Hex(new Uint8Array(readFileSync(path)))).toBe(hash);
    expect(readdirSync(join(store, "tmp"))).toEqual([]);
    // The next attempt completes the store and the snapshot.
    const retry = writeChunks(store, [{ guestAddress: 0, bytes }], { manifestPath });
    expect(retry.stats).toMatchObject({ newChunks: 2, reusedChunks: 1 });
    expect(verifyManifest(manifestPath, { verifyHashes: true }).totalBytes).toBe(3 * CHUNK);
  });

  test("a process killed mid-chunk leaves only a temp file (removed by GC) and no manifest", () => {
    const store = fresh("store");
    const snap = fresh("snap");
    const manifestPath = join(snap, MANIFEST_FILE);
    const script = join(work, `crash-${dirCount++}.ts`);
    writeFileSync(
      script,
      `import { writeChunks } from ${JSON.stringify(join(import.meta.dir, "../../src/snapshot/chunks.ts"))};
       const bytes = new Uint8Array(new SharedArrayBuffer(${3 * CHUNK}));
       for (let i = 0; i < bytes.length; i += 4096) bytes[i] = Math.floor(i / ${CHUNK}) + 1; // three distinct chunks
       let n = 0;
       writeChunks(${JSON.stringify(store)}, [{ guestAddress: 0, bytes }], {
         manifestPath: ${JSON.stringify(manifestPath)},
         onChunkWrite: (e) => { if (e.phase === "partial" && ++n === 2) process.exit(9); },
       });`,
    );
    const child = Bun.spawnSync([process.execPath, script], { stderr: "pipe" });
    expect(child.exitCode).toBe(9);
    expect(existsSync(manifestPath)).toBe(false);
    const files = storedChunks(store);
    expect(files.size).toBe(1);
    for (const [hash, path] of files) {
      expect(statSync(path).size).toBe(CHUNK);
      expect(sha256Hex(new Uint8Array(readFileSync(path)))).toBe(hash);
    }
    const temps = readdirSync(join(store, "tmp"));
    expect(temps.length).toBe(1);
    expect(statSync(join(store, "tmp", temps[0]!)).size).toBe(CHUNK / 2); // the half-written chunk, under a temp name only
    const gc = collectGarbage(store, [], { minAgeMs: 3600_000 });
    expect(gc.tempFilesRemoved).toBe(1);
    expect(readdirSync(join(store, "tmp"))).toEqual([]);
  });

  test("GC leaves the temp files of a writer that is still running", () => {
    const store = fresh("store");
    writeChunks(store, [{ guestAddress: 0, bytes: randomRegion(CHUNK, 41) }]);
    const mine = join(store, "tmp", `${"a".repeat(64)}.${process.pid}.0`);
    writeFileSync(mine, "in progress");
    expect(collectGarbage(store, [], { minAgeMs: 3600_000 }).tempFilesRemoved).toBe(0);
    expect(existsSync(mine)).toBe(true);
  });
});

describe("verifyManifest refuses", () => {
  function snapshot(): { store: string; manifestPath: string; manifest: ChunkManifest } {
    const store = fresh("store");
    const manifestPath = join(fresh("snap"), MANIFEST_FILE);
    const bytes = randomRegion(3 * CHUNK, 50);
    const high = randomRegion(CHUNK, 51);
    const { manifest } = writeChunks(store, [
      { guestAddress: 0, bytes },
      { guestAddress: 16 * MiB, bytes: high },
    ], { manifestPath });
    return { store, manifestPath, manifest };
  }

  test("a good manifest passes, shallow and deep", () => {
    const { manifestPath, manifest } = snapshot();
    expect(verifyManifest(manifestPath)).toEqual(manifest);
    expect(verifyManifest(manifestPath, { verifyHashes: true })).toEqual(manifest);
  });

  test("a missing manifest file", () => {
    const path = join(work, "nowhere", MANIFEST_FILE);
    const error = catchError(() => verifyManifest(path));
    expect(error.reason).toBe("manifest-missing");
    expect(error.kind).toBe("missing");
    expect(error.message).toContain(path);
  });

  test("an unknown version", () => {
    const { manifestPath, manifest } = snapshot();
    writeFileSync(manifestPath, JSON.stringify({ ...manifest, version: 2 }));
    const error = catchError(() => verifyManifest(manifestPath));
    expect(error.reason).toBe("version");
    expect(error.kind).toBe("version");
    expect(error.message).toContain(manifestPath);
    expect(error.message).toContain("version 2");
  });

  test("a missing chunk, naming its hash and where it sits", () => {
    const { manifestPath, manifest, store } = snapshot();
    const hash = manifest.regions[0]!.chunks[2]!;
    rmSync(chunkPath(store, hash));
    const error = catchError(() => verifyManifest(manifestPath));
    expect(error.reason).toBe("chunk-missing");
    expect(error.kind).toBe("missing");
    expect(error.message).toContain(manifestPath);
    expect(error.message).toContain(hash);
    expect(error.message).toContain(`offset 0x${(2 * CHUNK).toString(16)}`);
    // And so does a restore, before any memory is mapped.
    expect(catchError(() => mapManifest(manifestPath)).reason).toBe("chunk-missing");
  });

  test("a chunk of the wrong size", () => {
    const { manifestPath, manifest, store } = snapshot();
    const hash = manifest.regions[1]!.chunks[0]!;
    truncateSync(chunkPath(store, hash), CHUNK - 4096);
    const error = catchError(() => verifyManifest(manifestPath));
    expect(error.reason).toBe("chunk-size");
    expect(error.message).toContain(hash);
    expect(error.message).toContain(`${CHUNK - 4096} bytes, expected ${CHUNK}`);
    expect(error.message).toContain("region 0x1000000");
  });

  test("a missing store", () => {
    const { manifestPath, store } = snapshot();
    renameSync(store, `${store}-moved`);
    const error = catchError(() => verifyManifest(manifestPath));
    expect(error.reason).toBe("store-missing");
    expect(error.message).toContain(manifestPath);
    expect(error.message).toContain(store);
  });

  test("a corrupt chunk of the right size: only the deep check (verifyHashes) finds it", () => {
    const { manifestPath, manifest, store } = snapshot();
    const hash = manifest.regions[0]!.chunks[1]!;
    const path = chunkPath(store, hash);
    const bytes = new Uint8Array(readFileSync(path));
    bytes[1000] = bytes[1000]! ^ 1;
    rmSync(path);
    writeFileSync(path, bytes);
    expect(verifyManifest(manifestPath)).toEqual(manifest);
    const error = catchError(() => verifyManifest(manifestPath, { verifyHashes: true }));
    expect(error.reason).toBe("chunk-hash");
    expect(error.message).toContain(hash);
    expect(error.message).toContain(sha256Hex(bytes));
  });

  test.each([
    ["not JSON", () => "{ nope", /not a JSON chunk manifest/],
    ["not an object", () => "[]", /expected a JSON object/],
    ["another hash", (m: ChunkManifest) => JSON.stringify({ ...m, hash: "md5" }), /hash "md5" is not supported/],
    ["a chunk size that is not whole pages", (m: ChunkManifest) => JSON.stringify({ ...m, chunkSize: 5000 }), /chunkSize 5000 must be a multiple of 4096/],
    ["a relative store", (m: ChunkManifest) => JSON.stringify({ ...m, store: "store" }), /store must be an absolute path/],
    ["too few chunks for a region", (m: ChunkManifest) => JSON.stringify({ ...m, regions: [{ ...m.regions[0]!, chunks: m.regions[0]!.chunks.slice(1) }, m.regions[1]] }), /region 0: 6291456 bytes in 2097152-byte chunks needs 3 chunk entries, found 2/],
    ["a chunk name that is not a digest", (m: ChunkManifest) => JSON.stringify({ ...m, regions: [m.regions[0], { ...m.regions[1]!, chunks: ["../../etc/passwd"] }] }), /region 1 chunk 0: "..\/..\/etc\/passwd" is neither/],
    ["a wrong total", (m: ChunkManifest) => JSON.stringify({ ...m, totalBytes: 1 }), /totalBytes 1 does not match the regions \(8388608 bytes\)/],
  ] as const)("a malformed manifest: %s", (_, edit, message) => {
    const { manifestPath, manifest } = snapshot();
    writeFileSync(manifestPath, edit(manifest));
    const error = catchError(() => verifyManifest(manifestPath));
    expect(error.reason).toBe("manifest-invalid");
    expect(error.message).toContain(manifestPath);
    expect(error.message).toMatch(message);
  });

  test("bad write options", () => {
    const store = fresh("store");
    expect(catchError(() => writeChunks(store, [{ guestAddress: 0, bytes: new Uint8Array(CHUNK) }], { chunkSize: 3000 })).message).toMatch(/chunk size 3000 must be a multiple of 4096/);
    expect(catchError(() => writeChunks(store, [{ guestAddress: 0, bytes: new Uint8Array(5000) }])).message).toMatch(/size 5000 must be a non-zero multiple of 4096/);
  });

  test("writeManifest replaces a manifest atomically and leaves no temp file", () => {
    const { manifestPath, manifest } = snapshot();
    const other = { ...manifest, regions: manifest.regions.slice(0, 1), totalBytes: manifest.regions[0]!.size };
    writeManifest(manifestPath, other);
    expect(readManifest(manifestPath)).toEqual(other);
    expect(readdirSync(join(manifestPath, ".."))).toEqual([MANIFEST_FILE]);
  });
});

describe("collectGarbage", () => {
  function twoSnapshots() {
    const store = fresh("store");
    const shared = randomRegion(2 * CHUNK, 60);
    const a = new Uint8Array(new SharedArrayBuffer(3 * CHUNK));
    const b = new Uint8Array(new SharedArrayBuffer(4 * CHUNK));
    a.set(shared);
    b.set(shared);
    a.set(randomRegion(CHUNK, 61), 2 * CHUNK);
    b.set(randomRegion(2 * CHUNK, 62), 2 * CHUNK);
    const pathA = join(fresh("a"), MANIFEST_FILE);
    const pathB = join(fresh("b"), MANIFEST_FILE);
    const ma = writeChunks(store, [{ guestAddress: 0, bytes: a }], { manifestPath: pathA }).manifest;
    const mb = writeChunks(store, [{ guestAddress: 0, bytes: b }], { manifestPath: pathB }).manifest;
    const onlyB = mb.regions[0]!.chunks.slice(2);
    return { store, pathA, pathB, ma, mb, onlyB };
  }

  test("keeps every chunk a live manifest references and removes the rest; dry run removes nothing", () => {
    const { store, pathA, pathB, onlyB } = twoSnapshots();
    expect(storedChunks(store).size).toBe(5);
    const dry = collectGarbage(store, [pathA], { dryRun: true, minAgeMs: 0 });
    expect(dry.removed.sort()).toEqual([...onlyB].sort());
    expect(dry).toMatchObject({ removedBytes: 2 * CHUNK, kept: 3, keptBytes: 3 * CHUNK, dryRun: true });
    expect(storedChunks(store).size).toBe(5);
    expect(verifyManifest(pathB)).toBeDefined();

    const real = collectGarbage(store, [pathA], { minAgeMs: 0 });
    expect(real.removed.sort()).toEqual([...onlyB].sort());
    expect(real).toMatchObject({ removedBytes: 2 * CHUNK, kept: 3, keptBytes: 3 * CHUNK, spared: 0, dryRun: false });
    expect([...storedChunks(store).keys()].some((h) => onlyB.includes(h))).toBe(false);
    expect(verifyManifest(pathA, { verifyHashes: true }).totalBytes).toBe(3 * CHUNK);
    expect(catchError(() => verifyManifest(pathB)).reason).toBe("chunk-missing");
    expect(readdirSync(join(store, "tmp"))).toEqual([]);
  });

  test("with every manifest live, nothing is removed", () => {
    const { store, pathA, pathB } = twoSnapshots();
    const report = collectGarbage(store, [pathA, pathB], { minAgeMs: 0 });
    expect(report.removed).toEqual([]);
    expect(report.kept).toBe(5);
    expect(storedChunks(store).size).toBe(5);
  });

  test("spares unreferenced chunks younger than minAgeMs (a snapshot may still be being written)", () => {
    const { store, pathA, onlyB } = twoSnapshots();
    const report = collectGarbage(store, [pathA]);
    expect(report).toMatchObject({ removed: [], spared: 2, kept: 5 });
    const old = new Date(Date.now() - 2 * 3600 * 1000);
    utimesSync(chunkPath(store, onlyB[0]!), old, old);
    expect(collectGarbage(store, [pathA]).removed).toEqual([onlyB[0]!]);
  });

  test("a chunk reused by a writer while GC runs is put back", () => {
    const { store, pathA, pathB, onlyB } = twoSnapshots();
    const report = collectGarbage(store, [pathA], {
      minAgeMs: 0,
      beforeRemove: (hash, path) => {
        if (hash === onlyB[1]) {
          const later = new Date(Date.now() + 1000);
          utimesSync(path, later, later); // what writeChunks does to a chunk it reuses
        }
      },
    });
    expect(report.removed).toEqual([onlyB[0]!]);
    expect(report.spared).toBe(1);
    expect(existsSync(chunkPath(store, onlyB[1]!))).toBe(true);
    expect(sha256Hex(new Uint8Array(readFileSync(chunkPath(store, onlyB[1]!))))).toBe(onlyB[1]!);
    expect(readdirSync(join(store, "tmp"))).toEqual([]);
    expect(catchError(() => verifyManifest(pathB)).message).toContain(onlyB[0]!);
  });

  test("refuses, removing nothing, if a live manifest is unreadable or names another store", () => {
    const { store, pathA } = twoSnapshots();
    const other = twoSnapshots();
    expect(catchError(() => collectGarbage(store, [pathA, join(work, "missing.json")], { minAgeMs: 0 })).reason).toBe("manifest-missing");
    const mismatch = catchError(() => collectGarbage(store, [other.pathA], { minAgeMs: 0 }));
    expect(mismatch.reason).toBe("store-mismatch");
    expect(mismatch.message).toContain(other.store);
    expect(storedChunks(store).size).toBe(5);
    expect(catchError(() => collectGarbage(join(work, "no-store"), [])).reason).toBe("store-missing");
  });
});

describe("GuestMemory.mapChunks", () => {
  test("writes stay private: chunk files never change, two mappings diverge, a chunk mapped twice diverges from itself", () => {
    const dir = fresh("files");
    const a = join(dir, "a");
    const b = join(dir, "b");
    const contentA = randomRegion(64 * 1024, 70);
    const contentB = randomRegion(8192, 71);
    writeFileSync(a, contentA);
    writeFileSync(b, contentB);
    const layout = [
      { guestAddress: 0, size: 3 * 64 * 1024, chunks: [{ path: a, length: 64 * 1024 }, { path: null, length: 64 * 1024 }, { path: a, length: 64 * 1024 }] },
      { guestAddress: MiB, size: 8192, chunks: [{ path: b, length: 8192 }] },
    ];
    const first = GuestMemory.mapChunks(layout);
    const second = GuestMemory.mapChunks(layout);
    try {
      expect(Buffer.from(first.read(0, 64 * 1024)).equals(Buffer.from(contentA))).toBe(true);
      expect(isAllZero(first.slice(64 * 1024, 64 * 1024))).toBe(true);
      expect(Buffer.from(first.read(128 * 1024, 64 * 1024)).equals(Buffer.from(contentA))).toBe(true);
      expect(Buffer.from(first.read(MiB, 8192)).equals(Buffer.from(contentB))).toBe(true);

      first.write(0x10, text("ONE"));
      second.write(0x10, text("TWO"));
      first.write(64 * 1024 + 5, text("zero page written"));
      first.write(MiB + 8000, text("high"));
      expect(decode(first.read(0x10, 3))).toBe("ONE");
      expect(decode(second.read(0x10, 3))).toBe("TWO");
      // The same file mapped at another offset of the same VM is its own copy.
      expect(Buffer.from(first.read(128 * 1024, 64 * 1024)).equals(Buffer.from(contentA))).toBe(true);
      expect(isAllZero(second.slice(64 * 1024, 64 * 1024))).toBe(true);
      expect(Buffer.from(second.read(MiB, 8192)).equals(Buffer.from(contentB))).toBe(true);
      expect(readFileSync(a).equals(Buffer.from(contentA))).toBe(true);
      expect(readFileSync(b).equals(Buffer.from(contentB))).toBe(true);
      expect(first.regions.map((r) => r.fileOffset)).toEqual([0, 3 * 64 * 1024]);
    } finally {
      first.dispose();
      second.dispose();
    }
    // The buffers went back to anonymous memory: nothing maps the files any more, and they are untouched.
    expect(readFileSync("/proc/self/maps", "utf8")).not.toContain(a);
    expect(readFileSync(a).equals(Buffer.from(contentA))).toBe(true);
  });

  test.each([
    ["a chunk that is not whole pages", [{ path: null, length: 4096 + 512 }, { path: null, length: 4096 - 512 }], /chunk 0 length 4608 must be a non-zero multiple of 4096/],
    ["chunks that do not add up to the region", [{ path: null, length: 4096 }], /chunks add up to 4096 bytes, the region is 8192/],
    ["a chunk file shorter than its chunk", [{ path: "SHORT", length: 8192 }], /is 4096 bytes, 8192 are mapped/],
    ["a missing chunk file", [{ path: "/nonexistent/chunk", length: 8192 }], /cannot open chunk \/nonexistent\/chunk: ENOENT/],
  ] as const)("refuses %s", (_, chunks, message) => {
    const short = join(fresh("short"), "chunk");
    writeFileSync(short, new Uint8Array(4096));
    const resolved = chunks.map((c) => ({ ...c, path: c.path === "SHORT" ? short : c.path }));
    expect(() => GuestMemory.mapChunks([{ guestAddress: 0, size: 8192, chunks: resolved }])).toThrow(GuestMemoryError);
    expect(() => GuestMemory.mapChunks([{ guestAddress: 0, size: 8192, chunks: resolved }])).toThrow(message);
  });

  test("a failure part-way through a region gives every mapped page back", () => {
    const dir = fresh("partial");
    const good = join(dir, "good");
    writeFileSync(good, new Uint8Array(4096).fill(9));
    // The first chunk maps, the second fails: the error must not leave the process with file-backed JS memory.
    expect(() =>
      GuestMemory.mapChunks([{ guestAddress: 0, size: 8192, chunks: [{ path: good, length: 4096 }, { path: join(dir, "missing"), length: 4096 }] }]),
    ).toThrow(/cannot open chunk/);
    expect(readFileSync("/proc/self/maps", "utf8")).not.toContain(good);
  });
});

describe("throughput", () => {
  test("hashing and writing 128 MiB of distinct chunks, then re-hashing them all (everything deduplicated)", () => {
    const store = fresh("store");
    const size = 128 * MiB;
    const bytes = randomRegion(size, 80);
    const start = performance.now();
    const first = writeChunks(store, [{ guestAddress: 0, bytes }]);
    const firstSeconds = (performance.now() - start) / 1000;
    const again = performance.now();
    const second = writeChunks(store, [{ guestAddress: 0, bytes }]);
    const secondSeconds = (performance.now() - again) / 1000;
    expect(first.stats.newChunks).toBe(64);
    expect(second.stats.reusedChunks).toBe(64);
    const mibps = (bytes: number, ms: number) => (bytes / MiB / (ms / 1000)).toFixed(0);
    console.log(
      `chunk store, 128 MiB in 2 MiB chunks: new ${mibps(size, firstSeconds * 1000)} MiB/s (sha256 ${mibps(size, first.stats.hashMs)} MiB/s, write+fsync ${mibps(size, first.stats.writeMs)} MiB/s); ` +
        `all reused ${mibps(size, secondSeconds * 1000)} MiB/s (sha256 ${mibps(size, second.stats.hashMs)} MiB/s)`,
    );
    // A floor far below what SHA-NI or even plain x86-64 manages, so only a pathologically slow path fails.
    expect(size / MiB / (second.stats.hashMs / 1000)).toBeGreaterThan(100);
  }, 60_000);
});

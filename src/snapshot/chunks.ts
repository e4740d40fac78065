/**
 * A content-addressed chunk store for snapshot memory (issue #5 item 5).
 *
 * Guest RAM is cut, region by region, into fixed-size chunks (2 MiB by
 * default; the last chunk of a region is shorter when the region is not a
 * whole number of chunks — chunks are never padded and never cross a region
 * boundary). Each chunk is stored once, named by the SHA-256 of its bytes:
 *
 *   <store>/chunks/<first 2 hex digits>/<64 hex digits>   one chunk, mode 0400
 *   <store>/tmp/<hash>.<pid>.<n>                          chunks being written
 *
 * All-zero chunks are not stored at all: the manifest says "zero" and a
 * restore leaves fresh anonymous pages there. A snapshot names its chunks in
 * a manifest (`memory.manifest.json`, in place of `memory.raw`):
 *
 *   { "version": 1, "chunkSize": 2097152, "hash": "sha256",
 *     "store": "/abs/store",
 *     "regions": [{ "guestAddress": 0, "size": 536870912, "chunks": ["9f…", "zero", …] }],
 *     "totalBytes": 536870912 }
 *
 * Durability: a chunk is written to tmp/, fsynced, then hard-linked under its
 * hash name (link never replaces: an existing chunk is never rewritten) and
 * the temp name removed; the chunk directories are fsynced before the manifest
 * is written (temp + fsync + rename). A crash leaves at worst temp files and
 * complete but unreferenced chunks, never a partial chunk under a hash name
 * or a manifest naming a chunk that is not durable.
 *
 * Garbage collection vs. concurrent writers, without a lock: a writer that
 * reuses a chunk first refreshes its mtime (and rewrites it if it is gone).
 * `collectGarbage` spares unreferenced chunks younger than `minAgeMs` (so the
 * chunks of a snapshot whose manifest is not yet among the live ones
 * survive), and removes a chunk by renaming it into tmp/ and checking its
 * mtime again: if a writer touched it meanwhile, it is linked back.
 *
 * The memory must not change while it is being written (the VM is paused):
 * a chunk's bytes are hashed and then written from the same view.
 */
import {
  closeSync,
  existsSync,
  fsyncSync,
  linkSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  statSync,
  unlinkSync,
  utimesSync,
  writeSync,
} from "node:fs";
import { basename, dirname, isAbsolute, join, resolve } from "node:path";
import { GuestMemory, PAGE_SIZE } from "../memory/guest-memory.ts";
import { SnapshotError, type SnapshotErrorKind } from "./format.ts";
import { readPopulated, type MemoryRegionBytes } from "./regions.ts";

export const MANIFEST_FILE = "memory.manifest.json";
export const MANIFEST_VERSION = 1;
export const DEFAULT_CHUNK_SIZE = 2 * 1024 * 1024;
/** Largest chunk accepted (a manifest from elsewhere could ask for anything). */
export const MAX_CHUNK_SIZE = 1024 * 1024 * 1024;
/** What `collectGarbage` spares by default: unreferenced chunks younger than this may belong to a snapshot being written. */
export const DEFAULT_GC_MIN_AGE_MS = 60 * 60 * 1000;
export const ZERO_CHUNK = "zero";

const HASH_PATTERN = /^[0-9a-f]{64}$/;
const TEMP_PATTERN = /^[0-9a-f]{64}\.(\d+)\.\d+(?:\.gc)?$/;

export type ChunkRef = string; // 64 lowercase hex digits, or "zero"

export interface ChunkManifest {
  readonly version: 1;
  readonly chunkSize: number;
  readonly hash: "sha256";
  /** Absolute path of the chunk store. */
  readonly store: string;
  readonly regions: readonly { readonly guestAddress: number; readonly size: number; readonly chunks: readonly ChunkRef[] }[];
  /** Sum of the region sizes: the guest RAM the manifest describes. */
  readonly totalBytes: number;
}

export interface ChunkWriteStats {
  /** Chunks in the manifest, zero ones included. */
  readonly chunks: number;
  /** All-zero chunks (not stored). */
  readonly zeroChunks: number;
  /** Chunks written to the store by this call. */
  readonly newChunks: number;
  /** Non-zero chunks already in the store (from earlier snapshots or earlier in this one). */
  readonly reusedChunks: number;
  /** Stored chunks that had the wrong size and were replaced (counted in newChunks too). */
  readonly repairedChunks: number;
  /** Guest RAM described: bytesWritten + bytesDeduplicated. */
  readonly totalBytes: number;
  /** Bytes of new chunks written to the store. */
  readonly bytesWritten: number;
  /** Bytes not written: reused chunks plus zero chunks. */
  readonly bytesDeduplicated: number;
  /** The part of bytesDeduplicated that was all-zero. */
  readonly zeroBytes: number;
  /** Time spent hashing (SHA-256) and in writing/syncing, for throughput reports. */
  readonly hashMs: number;
  readonly writeMs: number;
}

export type ChunkWritePhase = "partial" | "synced";

export interface ChunkWriteOptions {
  /** Bytes per chunk: a multiple of the page size, at most MAX_CHUNK_SIZE. */
  chunkSize?: number;
  /** Where to write the manifest (atomically, after every chunk is durable); omitted: the caller writes it (writeManifest). */
  manifestPath?: string;
  /**
   * Test hook, called while a new chunk is being written: "partial" after its
   * first half is in the temp file, "synced" after fsync, before it gets its
   * hash name. Throwing from it aborts the write as a crash would.
   */
  onChunkWrite?: (event: { phase: ChunkWritePhase; hash: string; tempPath: string }) => void;
}

export type ChunkErrorReason =
  | "manifest-missing"
  | "manifest-invalid"
  | "version"
  | "store-missing"
  | "store-mismatch"
  | "chunk-missing"
  | "chunk-size"
  | "chunk-hash"
  | "options";

/** A chunk store or manifest problem; a SnapshotError, so the CLI and API report it like the others. */
export class ChunkStoreError extends SnapshotError {
  override name = "ChunkStoreError";
  readonly reason: ChunkErrorReason;

  constructor(reason: ChunkErrorReason, message: string) {
    super(KIND_BY_REASON[reason], message);
    this.reason = reason;
  }
}

const KIND_BY_REASON: Record<ChunkErrorReason, SnapshotErrorKind> = {
  "manifest-missing": "missing",
  "manifest-invalid": "payload",
  version: "version",
  "store-missing": "missing",
  "store-mismatch": "memory",
  "chunk-missing": "missing",
  "chunk-size": "memory",
  "chunk-hash": "memory",
  options: "payload",
};

export function chunkPath(store: string, hash: string): string {
  return join(store, "chunks", hash.slice(0, 2), hash);
}

export function sha256Hex(bytes: Uint8Array): string {
  return new Bun.CryptoHasher("sha256").update(bytes).digest("hex");
}

/**
 * Writes regions of guest memory into the store as chunks and returns their
 * manifest (also written to `options.manifestPath` if given). Region sizes
 * must be whole pages, as guest RAM is.
 */
export function writeChunks(
  store: string,
  regions: readonly MemoryRegionBytes[],
  options: ChunkWriteOptions = {},
): { manifest: ChunkManifest; stats: ChunkWriteStats } {
  const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
  checkChunkSize(chunkSize, "chunk size");
  for (const region of regions) {
    const size = region.bytes.byteLength;
    if (size === 0 || size % PAGE_SIZE !== 0) {
      throw new ChunkStoreError("options", `guest region 0x${region.guestAddress.toString(16)}: size ${size} must be a non-zero multiple of ${PAGE_SIZE}`);
    }
  }
  const root = resolve(store);
  mkdirSync(join(root, "chunks"), { recursive: true, mode: 0o700 });
  mkdirSync(join(root, "tmp"), { recursive: true, mode: 0o700 });

  const writer = new ChunkWriter(root, options.onChunkWrite);
  const manifestRegions: { guestAddress: number; size: number; chunks: ChunkRef[] }[] = [];
  for (const region of regions) {
    const chunks: ChunkRef[] = [];
    for (let at = 0; at < region.bytes.byteLength; at += chunkSize) {
      const end = Math.min(at + chunkSize, region.bytes.byteLength);
      // Only populated pages are read (touching the others would allocate them); a chunk with none is zero.
      const bytes = readPopulated(region.bytes, region.populated, at, end);
      chunks.push(bytes ? writer.put(bytes) : writer.putZero(end - at));
    }
    manifestRegions.push({ guestAddress: region.guestAddress, size: region.bytes.byteLength, chunks });
  }
  writer.syncDirectories();

  const totalBytes = manifestRegions.reduce((sum, r) => sum + r.size, 0);
  const manifest: ChunkManifest = { version: MANIFEST_VERSION, chunkSize, hash: "sha256", store: root, regions: manifestRegions, totalBytes };
  if (options.manifestPath !== undefined) writeManifest(options.manifestPath, manifest);
  const s = writer.stats;
  return {
    manifest,
    stats: {
      chunks: s.chunks,
      zeroChunks: s.zeroChunks,
      newChunks: s.newChunks,
      reusedChunks: s.reusedChunks,
      repairedChunks: s.repairedChunks,
      totalBytes,
      bytesWritten: s.bytesWritten,
      bytesDeduplicated: totalBytes - s.bytesWritten,
      zeroBytes: s.zeroBytes,
      hashMs: s.hashMs,
      writeMs: s.writeMs,
    },
  };
}

class ChunkWriter {
  readonly stats = { chunks: 0, zeroChunks: 0, newChunks: 0, reusedChunks: 0, repairedChunks: 0, bytesWritten: 0, zeroBytes: 0, hashMs: 0, writeMs: 0 };
  private readonly seen = new Set<string>();
  private readonly dirty = new Set<string>();
  private tempCounter = 0;

  constructor(
    private readonly root: string,
    private readonly hook: ChunkWriteOptions["onChunkWrite"],
  ) {}

  putZero(length: number): ChunkRef {
    this.stats.chunks++;
    this.stats.zeroChunks++;
    this.stats.zeroBytes += length;
    return ZERO_CHUNK;
  }

  put(bytes: Uint8Array): ChunkRef {
    if (isAllZero(bytes)) return this.putZero(bytes.byteLength);
    this.stats.chunks++;
    const hashStart = performance.now();
    const hash = sha256Hex(bytes);
    this.stats.hashMs += performance.now() - hashStart;
    if (this.seen.has(hash)) {
      this.stats.reusedChunks++;
      return hash;
    }
    const writeStart = performance.now();
    const path = chunkPath(this.root, hash);
    const existing = touchExisting(path);
    if (existing === bytes.byteLength) {
      this.stats.reusedChunks++;
    } else {
      const repair = existing !== null; // stored with the wrong size: corrupt, replace it
      if (this.write(hash, path, bytes, repair)) {
        this.stats.newChunks++;
        this.stats.bytesWritten += bytes.byteLength;
        if (repair) this.stats.repairedChunks++;
      } else {
        this.stats.reusedChunks++; // another writer stored it first
      }
    }
    this.seen.add(hash);
    this.stats.writeMs += performance.now() - writeStart;
    return hash;
  }

  /** Writes a new chunk under its hash name; false if another writer got there first. */
  private write(hash: string, path: string, bytes: Uint8Array, replace: boolean): boolean {
    const dir = dirname(path);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const tempPath = join(this.root, "tmp", `${hash}.${process.pid}.${this.tempCounter++}`);
    let fd: number | null = openSync(tempPath, "wx", 0o400);
    try {
      const half = this.hook ? bytes.byteLength >> 1 : bytes.byteLength;
      writeAll(fd, bytes.subarray(0, half));
      this.hook?.({ phase: "partial", hash, tempPath });
      writeAll(fd, bytes.subarray(half));
      fsyncSync(fd);
      this.hook?.({ phase: "synced", hash, tempPath });
      closeSync(fd);
      fd = null;
      this.dirty.add(dir);
      if (replace) {
        renameSync(tempPath, path);
        return true;
      }
      try {
        linkSync(tempPath, path);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
        return touchExisting(path) === bytes.byteLength ? false : this.write(hash, path, bytes, true);
      }
      return true;
    } finally {
      if (fd !== null) closeSync(fd);
      try {
        unlinkSync(tempPath);
      } catch {
        // renamed into place, or never created
      }
    }
  }

  /** Makes the new names durable (before any manifest names them). */
  syncDirectories(): void {
    if (this.dirty.size === 0) return;
    for (const dir of this.dirty) syncDirectory(dir);
    syncDirectory(join(this.root, "chunks"));
    syncDirectory(this.root);
    this.dirty.clear();
  }
}

/** Refreshes a stored chunk's mtime (telling a concurrent GC it is in use) and returns its size; null if it is not there. */
function touchExisting(path: string): number | null {
  const now = new Date();
  try {
    utimesSync(path, now, now);
    return statSync(path).size;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.byteLength) done += writeSync(fd, bytes, done, bytes.byteLength - done);
}

function syncDirectory(path: string): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** True if every byte is zero; word at a time (early exit on the first non-zero word). */
export function isAllZero(bytes: Uint8Array): boolean {
  const head = (4 - (bytes.byteOffset % 4)) % 4;
  const limit = Math.min(head, bytes.byteLength);
  for (let i = 0; i < limit; i++) if (bytes[i] !== 0) return false;
  const words = (bytes.byteLength - limit) >>> 2;
  const view = new Uint32Array(bytes.buffer, bytes.byteOffset + limit, words);
  for (let i = 0; i < words; i++) if (view[i] !== 0) return false;
  for (let i = limit + words * 4; i < bytes.byteLength; i++) if (bytes[i] !== 0) return false;
  return true;
}

function checkChunkSize(chunkSize: number, what: string, file?: string): void {
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0 || chunkSize % PAGE_SIZE !== 0 || chunkSize > MAX_CHUNK_SIZE) {
    const message = `${what} ${chunkSize} must be a multiple of ${PAGE_SIZE} between ${PAGE_SIZE} and ${MAX_CHUNK_SIZE}`;
    throw new ChunkStoreError(file ? "manifest-invalid" : "options", file ? `${file}: ${message}` : message);
  }
}

/** Writes a manifest atomically: temp file beside it, fsync, rename, fsync the directory. */
export function writeManifest(path: string, manifest: ChunkManifest): void {
  const target = resolve(path);
  const temp = join(dirname(target), `.${basename(target)}.tmp-${process.pid}-${Date.now()}`);
  const fd = openSync(temp, "wx", 0o600);
  try {
    try {
      writeAll(fd, new TextEncoder().encode(`${JSON.stringify(manifest)}\n`));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temp, target);
  } catch (error) {
    try {
      unlinkSync(temp);
    } catch {
      // already gone
    }
    throw error;
  }
  syncDirectory(dirname(target));
}

/** Reads a manifest and checks its shape (not the store); errors name the file. */
export function readManifest(path: string): ChunkManifest {
  const file = resolve(path);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new ChunkStoreError("manifest-missing", `${file}: cannot read the chunk manifest: ${code === "ENOENT" ? "no such file" : String(error)}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new ChunkStoreError("manifest-invalid", `${file}: not a JSON chunk manifest: ${(error as Error).message}`);
  }
  return checkManifestShape(parsed, file);
}

function checkManifestShape(value: unknown, file: string): ChunkManifest {
  const bad = (what: string) => new ChunkStoreError("manifest-invalid", `${file}: ${what}`);
  if (!value || typeof value !== "object" || Array.isArray(value)) throw bad("not a chunk manifest (expected a JSON object)");
  const m = value as Record<string, unknown>;
  if (m.version !== MANIFEST_VERSION) {
    throw new ChunkStoreError("version", `${file}: chunk manifest version ${JSON.stringify(m.version)} is not supported (this volt reads version ${MANIFEST_VERSION})`);
  }
  if (m.hash !== "sha256") throw bad(`hash ${JSON.stringify(m.hash)} is not supported (only "sha256")`);
  if (typeof m.chunkSize !== "number") throw bad("chunkSize is missing");
  checkChunkSize(m.chunkSize, "chunkSize", file);
  const chunkSize = m.chunkSize;
  if (typeof m.store !== "string" || !isAbsolute(m.store)) throw bad("store must be an absolute path");
  if (!Array.isArray(m.regions) || m.regions.length === 0) throw bad("regions must be a non-empty list");
  let total = 0;
  for (const [i, r] of (m.regions as unknown[]).entries()) {
    const region = r as Record<string, unknown> | null;
    const where = `region ${i}`;
    if (!region || typeof region !== "object") throw bad(`${where} is not an object`);
    const { guestAddress, size, chunks } = region;
    if (typeof guestAddress !== "number" || !Number.isSafeInteger(guestAddress) || guestAddress < 0 || guestAddress % PAGE_SIZE !== 0) {
      throw bad(`${where}: guestAddress must be a page-aligned address`);
    }
    if (typeof size !== "number" || !Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
      throw bad(`${where}: size must be a non-zero multiple of ${PAGE_SIZE}`);
    }
    const expected = Math.ceil(size / chunkSize);
    if (!Array.isArray(chunks) || chunks.length !== expected) {
      throw bad(`${where}: ${size} bytes in ${chunkSize}-byte chunks needs ${expected} chunk entries, found ${Array.isArray(chunks) ? chunks.length : "none"}`);
    }
    for (const [j, c] of chunks.entries()) {
      if (c !== ZERO_CHUNK && (typeof c !== "string" || !HASH_PATTERN.test(c))) {
        throw bad(`${where} chunk ${j}: ${JSON.stringify(c)} is neither "zero" nor a SHA-256 hex digest`);
      }
    }
    total += size;
  }
  if (m.totalBytes !== total) throw bad(`totalBytes ${JSON.stringify(m.totalBytes)} does not match the regions (${total} bytes)`);
  return value as ChunkManifest;
}

/** The length of chunk `index` of a region. */
export function chunkLength(manifest: Pick<ChunkManifest, "chunkSize">, regionSize: number, index: number): number {
  return Math.min(manifest.chunkSize, regionSize - index * manifest.chunkSize);
}

/**
 * Reads a manifest and checks it against its store: the store is there,
 * every non-zero chunk is there with its exact size, and with
 * `verifyHashes` every chunk's bytes still hash to its name. Errors name the
 * manifest, and for a chunk its hash and where it sits in guest memory.
 */
export function verifyManifest(manifestPath: string, options: { verifyHashes?: boolean } = {}): ChunkManifest {
  const file = resolve(manifestPath);
  const manifest = readManifest(file);
  let storeIsDir = false;
  try {
    storeIsDir = statSync(join(manifest.store, "chunks")).isDirectory();
  } catch {
    // reported below
  }
  if (!storeIsDir) throw new ChunkStoreError("store-missing", `${file}: chunk store ${manifest.store} is missing (no chunks/ directory)`);
  for (const region of manifest.regions) {
    for (const [index, hash] of region.chunks.entries()) {
      if (hash === ZERO_CHUNK) continue;
      const length = chunkLength(manifest, region.size, index);
      const path = chunkPath(manifest.store, hash);
      const where = `region 0x${region.guestAddress.toString(16)} offset 0x${(index * manifest.chunkSize).toString(16)} (guest address 0x${(region.guestAddress + index * manifest.chunkSize).toString(16)})`;
      let size: number;
      try {
        const stat = statSync(path);
        size = stat.isFile() ? stat.size : -1;
      } catch {
        throw new ChunkStoreError("chunk-missing", `${file}: chunk ${hash} for ${where} is missing from ${manifest.store}`);
      }
      if (size !== length) {
        throw new ChunkStoreError("chunk-size", `${file}: chunk ${hash} for ${where} is ${size < 0 ? "not a file" : `${size} bytes`}, expected ${length} (${path})`);
      }
      if (options.verifyHashes) {
        const actual = sha256Hex(new Uint8Array(readFileSync(path)));
        if (actual !== hash) throw new ChunkStoreError("chunk-hash", `${file}: chunk ${hash} for ${where} is corrupt: its bytes hash to ${actual} (${path})`);
      }
    }
  }
  return manifest;
}

/** What GuestMemory.mapChunks needs to restore a manifest's memory: chunk files by path, zero chunks as null. */
export function chunkLayout(manifest: ChunkManifest): { guestAddress: number; size: number; chunks: { path: string | null; length: number }[] }[] {
  return manifest.regions.map((region) => ({
    guestAddress: region.guestAddress,
    size: region.size,
    chunks: region.chunks.map((hash, index) => ({
      path: hash === ZERO_CHUNK ? null : chunkPath(manifest.store, hash),
      length: chunkLength(manifest, region.size, index),
    })),
  }));
}

/** Verifies a manifest against its store, then maps its memory copy-on-write (nothing is read up front). */
export function mapManifest(manifestPath: string, options: { verifyHashes?: boolean } = {}): { manifest: ChunkManifest; memory: GuestMemory } {
  const manifest = verifyManifest(manifestPath, options);
  return { manifest, memory: GuestMemory.mapChunks(chunkLayout(manifest)) };
}

/** Logical bytes per stored byte (Infinity if something is described by nothing stored, 1 if both are 0). */
export function dedupRatio(logicalBytes: number, storedBytes: number): number {
  if (storedBytes === 0) return logicalBytes === 0 ? 1 : Number.POSITIVE_INFINITY;
  return logicalBytes / storedBytes;
}

/** How much guest RAM some manifests describe, and how much of the store they need (each distinct chunk once). */
export function storeUsage(manifests: readonly ChunkManifest[]): { logicalBytes: number; storedBytes: number; distinctChunks: number; zeroChunks: number; ratio: number } {
  const lengths = new Map<string, number>();
  let logicalBytes = 0;
  let zeroChunks = 0;
  for (const manifest of manifests) {
    logicalBytes += manifest.totalBytes;
    for (const region of manifest.regions) {
      region.chunks.forEach((hash, index) => {
        if (hash === ZERO_CHUNK) zeroChunks++;
        else lengths.set(hash, chunkLength(manifest, region.size, index));
      });
    }
  }
  const storedBytes = [...lengths.values()].reduce((sum, n) => sum + n, 0);
  return { logicalBytes, storedBytes, distinctChunks: lengths.size, zeroChunks, ratio: dedupRatio(logicalBytes, storedBytes) };
}

export interface GarbageReport {
  /** Hashes of unreferenced chunks removed (or, with dryRun, that would be). */
  readonly removed: string[];
  readonly removedBytes: number;
  /** Chunks left in the store: referenced ones plus unreferenced ones spared as too young (or touched during the run). */
  readonly kept: number;
  readonly keptBytes: number;
  /** Unreferenced chunks spared because they are younger than minAgeMs or were reused during the run. */
  readonly spared: number;
  /** Temp files of writers that are no longer running, removed (or that would be). */
  readonly tempFilesRemoved: number;
  readonly dryRun: boolean;
}

/**
 * Removes the chunks no live manifest references. Every manifest must be
 * readable and name this store, or nothing is removed. Unreferenced chunks
 * younger than `minAgeMs` (default one hour) are spared: they may belong to a
 * snapshot still being written. `dryRun` reports without removing.
 */
export function collectGarbage(
  store: string,
  liveManifests: readonly string[],
  options: { dryRun?: boolean; minAgeMs?: number; beforeRemove?: (hash: string, path: string) => void } = {},
): GarbageReport {
  const root = resolve(store);
  if (!existsSync(join(root, "chunks"))) throw new ChunkStoreError("store-missing", `chunk store ${root} is missing (no chunks/ directory)`);
  const realRoot = realpathSync(root);
  const live = new Set<string>();
  for (const path of liveManifests) {
    const manifest = readManifest(path);
    let manifestStore: string;
    try {
      manifestStore = realpathSync(manifest.store);
    } catch {
      manifestStore = manifest.store;
    }
    if (manifestStore !== realRoot) {
      throw new ChunkStoreError("store-mismatch", `${resolve(path)}: names chunk store ${manifest.store}, not ${root}; refusing to collect garbage`);
    }
    for (const region of manifest.regions) for (const hash of region.chunks) if (hash !== ZERO_CHUNK) live.add(hash);
  }
  const dryRun = options.dryRun ?? false;
  const cutoffMs = Date.now() - (options.minAgeMs ?? DEFAULT_GC_MIN_AGE_MS);
  const removed: string[] = [];
  let removedBytes = 0;
  let kept = 0;
  let keptBytes = 0;
  let spared = 0;

  for (const fanout of readdirSync(join(root, "chunks"))) {
    const dir = join(root, "chunks", fanout);
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      continue; // not a directory
    }
    for (const hash of names) {
      if (!HASH_PATTERN.test(hash) || !hash.startsWith(fanout)) continue; // not ours: left alone
      const path = join(dir, hash);
      const stat = statSync(path, { bigint: true });
      const size = Number(stat.size);
      if (live.has(hash)) {
        kept++;
        keptBytes += size;
        continue;
      }
      if (Number(stat.mtimeMs) > cutoffMs) {
        spared++;
        kept++;
        keptBytes += size;
        continue;
      }
      if (dryRun) {
        removed.push(hash);
        removedBytes += size;
        continue;
      }
      options.beforeRemove?.(hash, path);
      if (removeUnlessTouched(root, hash, path, stat.mtimeNs)) {
        removed.push(hash);
        removedBytes += size;
      } else {
        spared++;
        kept++;
        keptBytes += size;
      }
    }
  }
  const tempFilesRemoved = removeStaleTemps(root, dryRun);
  return { removed, removedBytes, kept, keptBytes, spared, tempFilesRemoved, dryRun };
}

/**
 * Moves the chunk out of its name, then looks at its mtime again: a writer
 * that reused it before the move refreshed it, and gets it linked back; one
 * that comes after the move finds no chunk and writes it anew.
 */
function removeUnlessTouched(root: string, hash: string, path: string, seenMtimeNs: bigint): boolean {
  const quarantine = join(root, "tmp", `${hash}.${process.pid}.${Date.now()}.gc`);
  try {
    renameSync(path, quarantine);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return true; // someone else removed it
    throw error;
  }
  const touched = statSync(quarantine, { bigint: true }).mtimeNs !== seenMtimeNs;
  if (touched) {
    try {
      linkSync(quarantine, path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error; // a writer stored it again meanwhile
    }
  }
  unlinkSync(quarantine);
  if (touched) syncDirectory(dirname(path));
  return !touched;
}

/** Removes tmp/ files whose writer (pid in the name) is no longer running. */
function removeStaleTemps(root: string, dryRun: boolean): number {
  let count = 0;
  let names: string[];
  try {
    names = readdirSync(join(root, "tmp"));
  } catch {
    return 0;
  }
  for (const name of names) {
    const match = TEMP_PATTERN.exec(name);
    if (!match || processAlive(Number(match[1]))) continue;
    if (!dryRun) {
      try {
        unlinkSync(join(root, "tmp", name));
      } catch {
        continue;
      }
    }
    count++;
  }
  return count;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

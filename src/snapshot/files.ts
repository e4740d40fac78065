/**
 * A snapshot on disk is a directory with two files:
 *   state.volt  — the state file (format.ts)
 *   memory.raw  — guest RAM, regions one after another (offsets in the state's metadata)
 * or, written to a chunk store, state.volt and memory.manifest.json (chunks.ts).
 *
 * Writing is atomic at the directory level: both files are written and
 * synced in a sibling `.partial` directory, which is then renamed into place,
 * so a crash never leaves a half snapshot under the final name. An existing
 * snapshot is replaced only with `force`, and then only after the new one is
 * complete.
 */
import { closeSync, existsSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { memfdCreate } from "../ffi/syscalls.ts";
import { MANIFEST_FILE, dedupRatio, verifyManifest, writeChunks, type ChunkWriteStats } from "./chunks.ts";
import { populatedParts, type MemoryRegionBytes } from "./regions.ts";
import { SnapshotError, decodeStateFile, encodeStateFile, type SnapshotMeta, type StateFile } from "./format.ts";

export const STATE_FILE = "state.volt";
export const MEMORY_FILE = "memory.raw";

/** Zero blocks are left as holes: guest RAM is mostly untouched after boot, so the file stays sparse. */
const BLOCK = 64 * 1024;

export type { MemoryRegionBytes } from "./regions.ts";

export interface WrittenSnapshot {
  readonly dir: string;
  readonly stateBytes: number;
  readonly memoryFileSize: number;
  /** Bytes of guest RAM actually written (the rest were zero and left as holes, or chunks the store already had). */
  readonly memoryBytesWritten: number;
  /** With a chunk store: how the memory was split and what was deduplicated. */
  readonly chunks?: ChunkWriteStats & { readonly store: string; readonly dedupRatio: number };
}

export function writeSnapshot<T>(
  dir: string,
  meta: Omit<SnapshotMeta, "formatVersion" | "regions" | "memoryFileSize">,
  state: T,
  regions: readonly MemoryRegionBytes[],
  options: { force?: boolean; chunkStore?: string } = {},
): WrittenSnapshot {
  const target = resolve(dir);
  if (existsSync(target) && !options.force) {
    throw new SnapshotError("exists", `snapshot ${target} already exists (use --force to replace it)`);
  }
  mkdirSync(dirname(target), { recursive: true });
  const partial = join(dirname(target), `.${basename(target)}.partial-${process.pid}-${Date.now()}`);
  mkdirSync(partial);
  try {
    const { layout, totalSize: offset } = layoutRegions(regions);
    let memoryBytesWritten: number;
    let chunks: WrittenSnapshot["chunks"];
    if (options.chunkStore !== undefined) {
      // Memory as content-addressed chunks in the store; the snapshot keeps only the manifest.
      const store = resolve(options.chunkStore);
      const { stats } = writeChunks(store, regions, { manifestPath: join(partial, MANIFEST_FILE) });
      memoryBytesWritten = stats.bytesWritten;
      chunks = { ...stats, store, dedupRatio: dedupRatio(stats.totalBytes, stats.bytesWritten) };
    } else {
      memoryBytesWritten = writeMemoryFile(join(partial, MEMORY_FILE), regions, offset);
    }
    const stateFile = encodeStateFile({ ...meta, regions: layout, memoryFileSize: offset }, state);
    writeDurably(join(partial, STATE_FILE), stateFile);
    syncDirectory(partial);
    if (existsSync(target)) {
      const old = join(dirname(target), `.${basename(target)}.old-${process.pid}-${Date.now()}`);
      renameSync(target, old);
      renameSync(partial, target);
      rmSync(old, { recursive: true, force: true });
    } else {
      renameSync(partial, target);
    }
    syncDirectory(dirname(target));
    return { dir: target, stateBytes: stateFile.byteLength, memoryFileSize: offset, memoryBytesWritten, ...(chunks ? { chunks } : {}) };
  } catch (error) {
    rmSync(partial, { recursive: true, force: true });
    throw error;
  }
}

/** Regions one after another in the memory file. */
function layoutRegions(regions: readonly MemoryRegionBytes[]) {
  const layout: { guestAddress: number; size: number; fileOffset: number }[] = [];
  let totalSize = 0;
  for (const region of regions) {
    layout.push({ guestAddress: region.guestAddress, size: region.bytes.byteLength, fileOffset: totalSize });
    totalSize += region.bytes.byteLength;
  }
  return { layout, totalSize };
}

function writeMemoryFile(path: string, regions: readonly MemoryRegionBytes[], totalSize: number): number {
  const fd = openSync(path, "wx", 0o600);
  try {
    const written = writeMemory(fd, regions, totalSize);
    fsyncSync(fd);
    return written;
  } finally {
    closeSync(fd);
  }
}

/** Writes the regions' non-zero blocks at their offsets (the rest stay holes); returns the bytes written. */
function writeMemory(fd: number, regions: readonly MemoryRegionBytes[], totalSize: number): number {
  let written = 0;
  ftruncateSync(fd, totalSize);
  let fileOffset = 0;
  for (const { bytes, populated } of regions) {
    // Only the populated parts are read: a page outside them is a known zero, and touching it would allocate it.
    for (const [start, end] of populatedParts(populated, 0, bytes.byteLength)) {
      for (let at = start; at < end; at += BLOCK) {
        const block = bytes.subarray(at, Math.min(at + BLOCK, end));
        if (isZero(block)) continue;
        let done = 0;
        while (done < block.byteLength) done += writeSync(fd, block, done, block.byteLength - done, fileOffset + at + done);
        written += block.byteLength;
      }
    }
    fileOffset += bytes.byteLength;
  }
  return written;
}

/** A snapshot held by this process: the state file's bytes and guest memory in a memfd (nothing on disk). */
export interface InMemorySnapshot {
  readonly stateFile: Uint8Array;
  /** The memfd holding guest memory; other processes of the same user map it through /proc/PID/fd/N. */
  readonly memfd: number;
  readonly memoryFileSize: number;
  readonly memoryBytesWritten: number;
}

export function captureInMemory<T>(
  meta: Omit<SnapshotMeta, "formatVersion" | "regions" | "memoryFileSize">,
  state: T,
  regions: readonly MemoryRegionBytes[],
): InMemorySnapshot {
  const { layout, totalSize } = layoutRegions(regions);
  const stateFile = encodeStateFile({ ...meta, regions: layout, memoryFileSize: totalSize }, state);
  const memfd = memfdCreate("volt-snapshot");
  try {
    const memoryBytesWritten = writeMemory(memfd, regions, totalSize);
    return { stateFile, memfd, memoryFileSize: totalSize, memoryBytesWritten };
  } catch (error) {
    closeSync(memfd);
    throw error;
  }
}

function isZero(block: Uint8Array): boolean {
  // Guest RAM views are page aligned, so whole 64-bit words can be checked.
  if (block.byteOffset % 8 === 0 && block.byteLength % 8 === 0) {
    const words = new BigUint64Array(block.buffer, block.byteOffset, block.byteLength / 8);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
    return true;
  }
  return block.every((byte) => byte === 0);
}

function writeDurably(path: string, bytes: Uint8Array): void {
  const fd = openSync(path, "wx", 0o600);
  try {
    let done = 0;
    while (done < bytes.byteLength) done += writeSync(fd, bytes, done, bytes.byteLength - done);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function syncDirectory(path: string): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export interface OpenedSnapshot<T> extends StateFile<T> {
  readonly dir: string;
  /** The raw memory file (or another process's memfd at /proc/PID/fd/N); absent for a chunked snapshot. */
  readonly memoryPath: string;
  /** A chunked snapshot's manifest, checked: every chunk it names is in the store with the right size. */
  readonly manifestPath?: string;
  /**
   * An already-open descriptor for the memory (a clone inside the sandbox:
   * opened before Landlock, kept across the re-exec, since another process's
   * memfd cannot be named in a Landlock rule).
   */
  readonly memoryFd?: number;
}

/** Reads and checks a snapshot directory: the state file, and that the memory file is there and the right size. */
export function readSnapshot<T>(dir: string): OpenedSnapshot<T> {
  const target = resolve(dir);
  const statePath = join(target, STATE_FILE);
  const memoryPath = join(target, MEMORY_FILE);
  if (!existsSync(target)) throw new SnapshotError("missing", `snapshot ${target}: no such directory`);
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(readFileSync(statePath));
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new SnapshotError("missing", `snapshot ${target}: cannot read ${STATE_FILE}: ${code === "ENOENT" ? "no such file" : String(error)}`);
  }
  const manifestPath = join(target, MANIFEST_FILE);
  if (!existsSync(memoryPath) && existsSync(manifestPath)) {
    const file = decodeStateFile<T>(bytes, statePath);
    checkMeta(file.meta, statePath);
    const manifest = verifyManifest(manifestPath);
    if (manifest.totalBytes !== file.meta.memoryFileSize) {
      throw new SnapshotError("memory", `${manifestPath}: describes ${manifest.totalBytes} bytes, the state records ${file.meta.memoryFileSize}`);
    }
    return { ...file, dir: target, memoryPath: "", manifestPath };
  }
  if (!existsSync(memoryPath)) throw new SnapshotError("missing", `snapshot ${target}: memory file ${MEMORY_FILE} is missing`);
  return openStateBytes<T>(bytes, statePath, memoryPath, target);
}

/**
 * Decodes and checks a state file's bytes against its memory file (on disk,
 * or another process's in-memory snapshot at /proc/PID/fd/N); `name` names
 * the state in errors, `dir` is what the snapshot is called.
 */
export function openStateBytes<T>(bytes: Uint8Array, name: string, memoryPath: string, dir: string): OpenedSnapshot<T> {
  const file = decodeStateFile<T>(bytes, name);
  checkMeta(file.meta, name);
  let size: number;
  try {
    size = statSync(memoryPath).size;
  } catch {
    throw new SnapshotError("missing", `snapshot ${dir}: memory file ${memoryPath} is missing`);
  }
  if (size !== file.meta.memoryFileSize) {
    const what = size < file.meta.memoryFileSize ? "truncated" : "longer than recorded";
    throw new SnapshotError("memory", `${memoryPath}: ${size} bytes, the state records ${file.meta.memoryFileSize} (${what})`);
  }
  return { ...file, dir, memoryPath };
}

function checkMeta(meta: SnapshotMeta, name: string): void {
  const regionTotal = meta.regions.reduce((sum, r) => sum + r.size, 0);
  if (regionTotal !== meta.memorySizeBytes) {
    throw new SnapshotError("memory", `${name}: memory regions add up to ${regionTotal} bytes, the state says ${meta.memorySizeBytes}`);
  }
  const fileEnd = meta.regions.reduce((end, r) => Math.max(end, r.fileOffset + r.size), 0);
  if (fileEnd > meta.memoryFileSize) {
    throw new SnapshotError("memory", `${name}: memory regions reach ${fileEnd} bytes into a ${meta.memoryFileSize}-byte memory file`);
  }
}

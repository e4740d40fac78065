/**
 * A snapshot on disk is a directory with two files:
 *   state.volt  — the state file (format.ts)
 *   memory.raw  — guest RAM, regions one after another (offsets in the state's metadata)
 *
 * Writing is atomic at the directory level: both files are written and
 * synced in a sibling `.partial` directory, which is then renamed into place,
 * so a crash never leaves a half snapshot under the final name. An existing
 * snapshot is replaced only with `force`, and then only after the new one is
 * complete.
 */
import { closeSync, existsSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { SnapshotError, decodeStateFile, encodeStateFile, type SnapshotMeta, type StateFile } from "./format.ts";

export const STATE_FILE = "state.volt";
export const MEMORY_FILE = "memory.raw";

/** Zero blocks are left as holes: guest RAM is mostly untouched after boot, so the file stays sparse. */
const BLOCK = 64 * 1024;

export interface MemoryRegionBytes {
  readonly guestAddress: number;
  readonly bytes: Uint8Array;
}

export interface WrittenSnapshot {
  readonly dir: string;
  readonly stateBytes: number;
  readonly memoryFileSize: number;
  /** Bytes of guest RAM actually written (the rest were zero and left as holes). */
  readonly memoryBytesWritten: number;
}

export function writeSnapshot<T>(
  dir: string,
  meta: Omit<SnapshotMeta, "formatVersion" | "regions" | "memoryFileSize">,
  state: T,
  regions: readonly MemoryRegionBytes[],
  options: { force?: boolean } = {},
): WrittenSnapshot {
  const target = resolve(dir);
  if (existsSync(target) && !options.force) {
    throw new SnapshotError("exists", `snapshot ${target} already exists (use --force to replace it)`);
  }
  mkdirSync(dirname(target), { recursive: true });
  const partial = join(dirname(target), `.${basename(target)}.partial-${process.pid}-${Date.now()}`);
  mkdirSync(partial);
  try {
    const layout: { guestAddress: number; size: number; fileOffset: number }[] = [];
    let offset = 0;
    for (const region of regions) {
      layout.push({ guestAddress: region.guestAddress, size: region.bytes.byteLength, fileOffset: offset });
      offset += region.bytes.byteLength;
    }
    const memoryBytesWritten = writeMemoryFile(join(partial, MEMORY_FILE), regions, offset);
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
    return { dir: target, stateBytes: stateFile.byteLength, memoryFileSize: offset, memoryBytesWritten };
  } catch (error) {
    rmSync(partial, { recursive: true, force: true });
    throw error;
  }
}

function writeMemoryFile(path: string, regions: readonly MemoryRegionBytes[], totalSize: number): number {
  const fd = openSync(path, "wx", 0o600);
  let written = 0;
  try {
    ftruncateSync(fd, totalSize);
    let fileOffset = 0;
    for (const { bytes } of regions) {
      for (let at = 0; at < bytes.byteLength; at += BLOCK) {
        const block = bytes.subarray(at, Math.min(at + BLOCK, bytes.byteLength));
        if (isZero(block)) continue;
        let done = 0;
        while (done < block.byteLength) done += writeSync(fd, block, done, block.byteLength - done, fileOffset + at + done);
        written += block.byteLength;
      }
      fileOffset += bytes.byteLength;
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return written;
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
  readonly memoryPath: string;
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
  const file = decodeStateFile<T>(bytes, statePath);
  checkMeta(file.meta, statePath);
  let size: number;
  try {
    size = statSync(memoryPath).size;
  } catch {
    throw new SnapshotError("missing", `snapshot ${target}: memory file ${MEMORY_FILE} is missing`);
  }
  if (size !== file.meta.memoryFileSize) {
    const what = size < file.meta.memoryFileSize ? "truncated" : "longer than recorded";
    throw new SnapshotError("memory", `${memoryPath}: ${size} bytes, the state records ${file.meta.memoryFileSize} (${what})`);
  }
  return { ...file, dir: target, memoryPath };
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

/**
 * The host side of a virtio-blk drive: a disk image file or a block device,
 * opened once when the VM is built and then read and written in place.
 *
 * Data moves straight between the file and live views of guest memory, so a
 * guest-chosen request size never becomes a host allocation. The system calls
 * go through `DiskFileOps` so tests can count fsyncs and simulate a file
 * system without fallocate support.
 */
import * as fs from "node:fs";
import { SyscallError } from "../../ffi/errno.ts";
import { IovecArray, UIO_MAXIOV } from "../../ffi/net-syscalls.ts";
import { fallocate, ioctlBuffer } from "../../ffi/syscalls.ts";

export const SECTOR_SIZE = 512;

// <linux/falloc.h> and <linux/fs.h>; checked by test/unit/virtio-block.test.ts.
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;
export const BLKGETSIZE64 = 0x80081272;

/** Bun's fs can pass a length this large, and Linux moves at most ~2 GiB per call anyway. */
const MAX_IO_CHUNK = 1 << 30;
const ZERO_CHUNK = 64 * 1024;

export interface DiskFileOps {
  /** pread: bytes read, 0 at end of file. */
  read(fd: number, into: Uint8Array, position: number): number;
  /** pwrite: bytes written. */
  write(fd: number, from: Uint8Array, position: number): number;
  fsync(fd: number): void;
  /** Throws SyscallError (EOPNOTSUPP when the file system lacks `mode`). */
  fallocate(fd: number, mode: number, offset: number, length: number): void;
  /**
   * preadv/pwritev over at most UIO_MAXIOV views: bytes moved (0 from preadv at end of file). Optional: without
   * them a request costs one call per view, and a guest request is up to 254 page-sized segments.
   */
  readv?(fd: number, into: readonly Uint8Array[], position: number): number;
  writev?(fd: number, from: readonly Uint8Array[], position: number): number;
}

const iovecs = new IovecArray();

function vectored(call: "preadv" | "pwritev", fd: number, views: readonly Uint8Array[], position: number): number {
  iovecs.clear();
  for (const view of views) if (!iovecs.push(view)) throw new RangeError(`${call}: more than ${UIO_MAXIOV} pieces`);
  const result = call === "preadv" ? iovecs.preadv(fd, position) : iovecs.pwritev(fd, position);
  if (result < 0) throw new SyscallError(call, -result);
  return result;
}

export const SYSTEM_DISK_OPS: DiskFileOps = {
  read: (fd, into, position) => fs.readSync(fd, into, 0, into.byteLength, position),
  write: (fd, from, position) => fs.writeSync(fd, from, 0, from.byteLength, position),
  fsync: (fd) => fs.fsyncSync(fd),
  fallocate: (fd, mode, offset, length) => fallocate(fd, mode, offset, length),
  readv: (fd, into, position) => vectored("preadv", fd, into, position),
  writev: (fd, from, position) => vectored("pwritev", fd, from, position),
};

/** The views after the first `count` bytes of them. */
function advance(views: readonly Uint8Array[], count: number): Uint8Array[] {
  const rest: Uint8Array[] = [];
  let skip = count;
  for (const view of views) {
    if (skip >= view.byteLength) {
      skip -= view.byteLength;
      continue;
    }
    rest.push(skip > 0 ? view.subarray(skip) : view);
    skip = 0;
  }
  return rest;
}

/** A drive that cannot be used as configured; raised while building the VM, never at guest time. */
export class DiskImageError extends Error {
  override name = "DiskImageError";
}

export type DiskKind = "file" | "block-device";

let zeroes: Uint8Array | undefined;

export class DiskImage {
  readonly path: string;
  readonly fd: number;
  readonly readOnly: boolean;
  readonly kind: DiskKind;
  /** Size in bytes when opened, a multiple of SECTOR_SIZE; the drive's capacity never changes after. */
  readonly size: number;
  private readonly ops: DiskFileOps;
  /** fallocate modes the file system refused with EOPNOTSUPP; not retried on every request. */
  private readonly unsupportedModes = new Set<number>();
  private closed = false;

  private constructor(path: string, fd: number, readOnly: boolean, kind: DiskKind, size: number, ops: DiskFileOps) {
    this.path = path;
    this.fd = fd;
    this.readOnly = readOnly;
    this.kind = kind;
    this.size = size;
    this.ops = ops;
  }

  static open(path: string, readOnly: boolean, ops: DiskFileOps = SYSTEM_DISK_OPS): DiskImage {
    // stat before open: opening a FIFO would block the VM build forever.
    let before: fs.Stats;
    try {
      before = fs.statSync(path);
    } catch (error) {
      throw new DiskImageError(`disk image ${path}: ${describe(error)}`);
    }
    if (!before.isFile() && !before.isBlockDevice()) {
      throw new DiskImageError(`disk image ${path}: not a regular file or block device`);
    }
    let fd: number;
    try {
      fd = fs.openSync(path, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR);
    } catch (error) {
      throw new DiskImageError(`disk image ${path}: cannot open ${readOnly ? "read-only" : "read-write"}: ${describe(error)}`);
    }
    try {
      const after = fs.fstatSync(fd);
      if (after.ino !== before.ino || after.dev !== before.dev) {
        throw new DiskImageError(`disk image ${path}: replaced while being opened`);
      }
      const kind: DiskKind = after.isBlockDevice() ? "block-device" : "file";
      const size = kind === "file" ? after.size : blockDeviceSize(fd, path);
      if (!Number.isSafeInteger(size) || size % SECTOR_SIZE !== 0) {
        throw new DiskImageError(`disk image ${path}: size ${size} bytes is not a multiple of ${SECTOR_SIZE}`);
      }
      return new DiskImage(path, fd, readOnly, kind, size, ops);
    } catch (error) {
      fs.closeSync(fd);
      throw error;
    }
  }

  /** Fills `into` from `position`; bytes past the end of the file read as zero. Throws on I/O errors. */
  readInto(into: Uint8Array, position: number): void {
    let done = 0;
    while (done < into.byteLength) {
      const piece = into.subarray(done, done + Math.min(MAX_IO_CHUNK, into.byteLength - done));
      const n = this.ops.read(this.fd, piece, position + done);
      if (n === 0) {
        // The image shrank under us (or a block device went away): the drive's size is fixed, so the rest reads as zero.
        into.fill(0, done);
        return;
      }
      done += n;
    }
  }

  /** Fills the views, in order, from `position`: one preadv where the ops have it (what is past the end reads as zero). */
  readIntoAll(views: readonly Uint8Array[], position: number): void {
    const readv = this.ops.readv;
    if (!readv || views.length === 1) {
      for (const view of views) {
        this.readInto(view, position);
        position += view.byteLength;
      }
      return;
    }
    let rest = views.filter((view) => view.byteLength > 0);
    while (rest.length > 0) {
      const batch = rest.slice(0, UIO_MAXIOV);
      const n = readv(this.fd, batch, position);
      if (n === 0) {
        for (const view of rest) view.fill(0);
        return;
      }
      position += n;
      rest = advance(rest, n);
    }
  }

  /** Writes the views, in order, at `position`: one pwritev where the ops have it. */
  writeFromAll(views: readonly Uint8Array[], position: number): void {
    const writev = this.ops.writev;
    if (!writev || views.length === 1) {
      for (const view of views) {
        this.writeFrom(view, position);
        position += view.byteLength;
      }
      return;
    }
    this.assertWritable();
    let rest = views.filter((view) => view.byteLength > 0);
    while (rest.length > 0) {
      const n = writev(this.fd, rest.slice(0, UIO_MAXIOV), position);
      if (n <= 0) throw new Error(`disk image ${this.path}: write at ${position} made no progress`);
      position += n;
      rest = advance(rest, n);
    }
  }

  /** Writes all of `from` at `position`. Throws on I/O errors, including a write that makes no progress. */
  writeFrom(from: Uint8Array, position: number): void {
    this.assertWritable();
    let done = 0;
    while (done < from.byteLength) {
      const piece = from.subarray(done, done + Math.min(MAX_IO_CHUNK, from.byteLength - done));
      const n = this.ops.write(this.fd, piece, position + done);
      if (n <= 0) throw new Error(`disk image ${this.path}: write at ${position + done} made no progress`);
      done += n;
    }
  }

  /** Commits completed writes to stable storage (fsync, which also flushes a block device's cache). */
  flush(): void {
    this.ops.fsync(this.fd);
  }

  /** Gives the range back to the file system if it can; a no-op where it cannot, as discard is only a hint. */
  discard(offset: number, length: number): void {
    this.assertWritable();
    if (length === 0) return;
    this.tryFallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
  }

  /** Makes the range read as zeroes; with `mayUnmap`, by deallocating it where the file system can. */
  writeZeroes(offset: number, length: number, mayUnmap: boolean): void {
    this.assertWritable();
    if (length === 0) return;
    if (mayUnmap && this.tryFallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)) return;
    if (this.tryFallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)) return;
    zeroes ??= new Uint8Array(ZERO_CHUNK);
    for (let done = 0; done < length; done += ZERO_CHUNK) {
      this.writeFrom(zeroes.subarray(0, Math.min(ZERO_CHUNK, length - done)), offset + done);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.fd);
  }

  /** False if the file system does not support `mode`; other failures throw. */
  private tryFallocate(mode: number, offset: number, length: number): boolean {
    if (this.unsupportedModes.has(mode)) return false;
    try {
      this.ops.fallocate(this.fd, mode, offset, length);
      return true;
    } catch (error) {
      // ENOSYS too: a seccomp filter or an old kernel says "no" that way.
      if (error instanceof SyscallError && (error.is("EOPNOTSUPP") || error.is("ENOSYS"))) {
        this.unsupportedModes.add(mode);
        return false;
      }
      throw error;
    }
  }

  private assertWritable(): void {
    // The device refuses guest writes on a read-only drive first; this guards against a bug reaching the file.
    if (this.readOnly) throw new Error(`disk image ${this.path} is read-only`);
  }
}

function blockDeviceSize(fd: number, path: string): number {
  const out = new Uint8Array(8);
  ioctlBuffer(fd, BLKGETSIZE64, out, `BLKGETSIZE64 ${path}`);
  return Number(new DataView(out.buffer).getBigUint64(0, true));
}

function describe(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  if (code === "ENOENT") return "no such file";
  if (code === "EACCES" || code === "EPERM") return "permission denied";
  if (code === "EISDIR") return "is a directory";
  if (code === "EROFS") return "read-only file system (use a read-only drive)";
  if (typeof code === "string") return code;
  return error instanceof Error ? error.message : String(error);
}

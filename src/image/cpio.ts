/**
 * Writer for the "newc" cpio format (magic 070701), the only format the Linux
 * kernel accepts for an initramfs. Output is deterministic: inode numbers are
 * assigned in order, owner is root and the mtime is fixed unless given, so the
 * same entries always produce the same bytes (and cacheable images).
 */

export type CpioEntry =
  | { kind: "directory"; path: string; mode?: number }
  | { kind: "file"; path: string; data: Uint8Array | string; mode?: number }
  | { kind: "symlink"; path: string; target: string }
  | { kind: "chardev"; path: string; major: number; minor: number; mode?: number };

export interface CpioOptions {
  /** Modification time (seconds since the epoch) stamped on every entry. Default 0. */
  mtime?: number;
}

export class CpioError extends Error {
  override name = "CpioError";
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const HEADER_SIZE = 110;
// Every field is 8 hex digits, so nothing in a header may exceed 32 bits.
const MAX_FIELD = 0xffff_ffff;
const TRAILER_NAME = "TRAILER!!!";

const encoder = new TextEncoder();

interface PreparedEntry {
  name: Uint8Array; // path bytes, without the terminating NUL
  mode: number;
  nlink: number;
  data: Uint8Array;
  rdevMajor: number;
  rdevMinor: number;
}

/**
 * Serialises `entries` into a newc archive ending with the TRAILER!!! record.
 * Paths are archive-relative ("bin/busybox"; a leading "/" or "./" is dropped).
 * Parent directories missing from the list are added (mode 0755) just before
 * their first child, because the kernel's unpacker does not create them.
 */
export function writeCpio(entries: readonly CpioEntry[], options: CpioOptions = {}): Uint8Array<ArrayBuffer> {
  const mtime = options.mtime ?? 0;
  checkField(mtime, "mtime");
  const prepared: PreparedEntry[] = [];
  const seen = new Set<string>();
  const directories = new Set<string>();
  const implicitDirectories = new Map<string, string>(); // directory -> the child that created it

  const addImplicitParents = (path: string): void => {
    const parts = path.split("/");
    for (let depth = 1; depth < parts.length; depth++) {
      const parent = parts.slice(0, depth).join("/");
      if (directories.has(parent)) continue;
      if (seen.has(parent)) {
        throw new CpioError(`cpio: "${parent}" is used as a directory for "${path}" but was added as a non-directory`);
      }
      seen.add(parent);
      directories.add(parent);
      implicitDirectories.set(parent, path);
      prepared.push(makeEntry(parent, S_IFDIR | 0o755, 2, new Uint8Array(0)));
    }
  };

  for (const entry of entries) {
    const path = normalisePath(entry.path);
    const implicitFor = implicitDirectories.get(path);
    if (implicitFor !== undefined) {
      throw new CpioError(`cpio: directory "${path}" must be listed before its contents ("${implicitFor}")`);
    }
    if (seen.has(path)) {
      throw new CpioError(`cpio: duplicate path "${path}"`);
    }
    addImplicitParents(path);
    seen.add(path);
    switch (entry.kind) {
      case "directory":
        directories.add(path);
        prepared.push(makeEntry(path, S_IFDIR | permissionBits(entry.mode ?? 0o755, path), 2, new Uint8Array(0)));
        break;
      case "file": {
        const data = typeof entry.data === "string" ? encoder.encode(entry.data) : entry.data;
        if (data.byteLength > MAX_FIELD) {
          throw new CpioError(`cpio: "${path}" is ${data.byteLength} bytes; newc stores at most ${MAX_FIELD}`);
        }
        prepared.push(makeEntry(path, S_IFREG | permissionBits(entry.mode ?? 0o644, path), 1, data));
        break;
      }
      case "symlink": {
        if (entry.target.length === 0 || entry.target.includes("\0")) {
          throw new CpioError(`cpio: symlink "${path}" needs a non-empty target without NUL bytes`);
        }
        // A symlink's "data" is its target, stored without a terminating NUL.
        prepared.push(makeEntry(path, S_IFLNK | 0o777, 1, encoder.encode(entry.target)));
        break;
      }
      case "chardev": {
        checkField(entry.major, `major number of "${path}"`);
        checkField(entry.minor, `minor number of "${path}"`);
        const device = makeEntry(path, S_IFCHR | permissionBits(entry.mode ?? 0o600, path), 1, new Uint8Array(0));
        device.rdevMajor = entry.major;
        device.rdevMinor = entry.minor;
        prepared.push(device);
        break;
      }
      default: {
        const unknown: never = entry;
        throw new CpioError(`cpio: unknown entry kind ${JSON.stringify((unknown as { kind: unknown }).kind)}`);
      }
    }
  }
  prepared.push(makeEntry(TRAILER_NAME, 0, 1, new Uint8Array(0)));

  let total = 0;
  for (const entry of prepared) total += recordSize(entry);
  const out = new Uint8Array(total);
  let offset = 0;
  prepared.forEach((entry, index) => {
    // The trailer conventionally carries inode 0; real entries count from 1.
    const inode = entry.name === trailerName ? 0 : index + 1;
    offset = writeRecord(out, offset, entry, inode, mtime);
  });
  return out;
}

const trailerName = encoder.encode(TRAILER_NAME);

function makeEntry(path: string, mode: number, nlink: number, data: Uint8Array): PreparedEntry {
  const name = path === TRAILER_NAME ? trailerName : encoder.encode(path);
  return { name, mode, nlink, data, rdevMajor: 0, rdevMinor: 0 };
}

function normalisePath(raw: string): string {
  if (typeof raw !== "string") throw new CpioError(`cpio: path must be a string, got ${typeof raw}`);
  if (raw.includes("\0")) throw new CpioError(`cpio: path ${JSON.stringify(raw)} contains a NUL byte`);
  const parts = raw.split("/").filter((part) => part !== "" && part !== ".");
  if (parts.length === 0) throw new CpioError(`cpio: path ${JSON.stringify(raw)} names the archive root`);
  if (parts.includes("..")) throw new CpioError(`cpio: path ${JSON.stringify(raw)} contains ".."`);
  const path = parts.join("/");
  if (path === TRAILER_NAME) throw new CpioError(`cpio: path "${TRAILER_NAME}" is reserved for the end marker`);
  return path;
}

function permissionBits(mode: number, path: string): number {
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
    throw new CpioError(`cpio: mode ${mode} of "${path}" is not a permission value (0..0o7777)`);
  }
  return mode;
}

function checkField(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > MAX_FIELD) {
    throw new CpioError(`cpio: ${what} ${value} does not fit a newc header field`);
  }
}

const pad4 = (n: number): number => (n + 3) & ~3;

function recordSize(entry: PreparedEntry): number {
  // Header plus NUL-terminated name is padded to 4 bytes, then data to 4 bytes.
  return pad4(HEADER_SIZE + entry.name.byteLength + 1) + pad4(entry.data.byteLength);
}

function writeRecord(out: Uint8Array, start: number, entry: PreparedEntry, inode: number, mtime: number): number {
  const fields = [
    inode,
    entry.mode,
    0, // uid
    0, // gid
    entry.nlink,
    mtime,
    entry.data.byteLength,
    0, // devmajor: of the filesystem holding the file; irrelevant here
    0, // devminor
    entry.rdevMajor,
    entry.rdevMinor,
    entry.name.byteLength + 1,
    0, // check: only used by the "crc" variant (070702)
  ];
  let header = "070701";
  for (const field of fields) header += field.toString(16).padStart(8, "0");
  let offset = start;
  offset += encoder.encodeInto(header, out.subarray(offset)).written;
  out.set(entry.name, offset);
  // The NUL terminator and padding are already zero in a fresh buffer.
  offset = start + pad4(HEADER_SIZE + entry.name.byteLength + 1);
  out.set(entry.data, offset);
  return offset + pad4(entry.data.byteLength);
}

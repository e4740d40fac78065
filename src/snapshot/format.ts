/**
 * The snapshot state file (docs/snapshot-format.md): a fixed header, then
 * everything Volt needs to rebuild the VM, encoded with msgpackr.
 *
 *   offset  size  field
 *   0       8     magic "VOLTSNAP"
 *   8       2     major version (u16 LE): a reader refuses any other major
 *   10      2     minor version (u16 LE): additions only; older minors restore
 *   12      4     CRC-32 of the payload (u32 LE)
 *   16      8     payload length in bytes (u64 LE)
 *   24      …     payload (msgpack)
 *
 * The header is checked, then the CRC, then the payload is decoded and its
 * metadata checked against the memory file, all before a VM exists.
 */
import CRC32 from "crc-32";
import { Packr } from "msgpackr";

export const SNAPSHOT_MAGIC = "VOLTSNAP";
export const SNAPSHOT_MAJOR = 1;
export const SNAPSHOT_MINOR = 1;
export const HEADER_SIZE = 24;

/** bigints stay bigints (MSR values, xsave fields), byte arrays stay bytes. */
const packr = new Packr({ useRecords: false, int64AsType: "bigint", mapsAsObjects: true });

export type SnapshotErrorKind = "missing" | "truncated" | "magic" | "version" | "crc" | "payload" | "memory" | "exists";

/** A snapshot that cannot be read or written; `file` names the file at fault. */
export class SnapshotError extends Error {
  override name = "SnapshotError";
  readonly kind: SnapshotErrorKind;

  constructor(kind: SnapshotErrorKind, message: string) {
    super(message);
    this.kind = kind;
  }
}

/** What `volt snapshot inspect` shows without decoding the whole machine state. */
export interface SnapshotMeta {
  readonly formatVersion: string;
  readonly createdAt: string;
  readonly voltVersion: string;
  readonly vcpuCount: number;
  readonly memorySizeBytes: number;
  /** Guest RAM regions and where each one's bytes start in the memory file. */
  readonly regions: readonly { readonly guestAddress: number; readonly size: number; readonly fileOffset: number }[];
  /** Exact size of the raw memory file (or of the memory the chunk manifest describes). */
  readonly memoryFileSize: number;
}

export interface StateFile<T> {
  readonly major: number;
  readonly minor: number;
  readonly meta: SnapshotMeta;
  readonly state: T;
}

export function encodeStateFile<T>(meta: Omit<SnapshotMeta, "formatVersion">, state: T): Uint8Array {
  const payload = packr.pack({ meta: { ...meta, formatVersion: `${SNAPSHOT_MAJOR}.${SNAPSHOT_MINOR}` }, state });
  const header = new Uint8Array(HEADER_SIZE);
  const view = new DataView(header.buffer);
  header.set(new TextEncoder().encode(SNAPSHOT_MAGIC), 0);
  view.setUint16(8, SNAPSHOT_MAJOR, true);
  view.setUint16(10, SNAPSHOT_MINOR, true);
  view.setUint32(12, CRC32.buf(payload) >>> 0, true);
  view.setBigUint64(16, BigInt(payload.byteLength), true);
  const file = new Uint8Array(HEADER_SIZE + payload.byteLength);
  file.set(header, 0);
  file.set(payload, HEADER_SIZE);
  return file;
}

/** Verifies and decodes a state file's bytes; `name` is used in every error. */
export function decodeStateFile<T>(bytes: Uint8Array, name: string): StateFile<T> {
  if (bytes.byteLength < HEADER_SIZE) throw new SnapshotError("truncated", `${name}: ${bytes.byteLength} bytes is shorter than the ${HEADER_SIZE}-byte header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (new TextDecoder().decode(bytes.subarray(0, 8)) !== SNAPSHOT_MAGIC) {
    throw new SnapshotError("magic", `${name}: not a Volt snapshot state file (no ${SNAPSHOT_MAGIC} header)`);
  }
  const major = view.getUint16(8, true);
  const minor = view.getUint16(10, true);
  if (major !== SNAPSHOT_MAJOR) {
    throw new SnapshotError("version", `${name}: snapshot format ${major}.${minor} is not supported (this volt reads ${SNAPSHOT_MAJOR}.x)`);
  }
  const length = view.getBigUint64(16, true);
  const available = BigInt(bytes.byteLength - HEADER_SIZE);
  if (length !== available) {
    throw new SnapshotError("truncated", `${name}: header says ${length} bytes of state, the file has ${available}`);
  }
  const payload = bytes.subarray(HEADER_SIZE);
  const expected = view.getUint32(12, true);
  const actual = CRC32.buf(payload) >>> 0;
  if (actual !== expected) {
    throw new SnapshotError("crc", `${name}: CRC-32 mismatch (header 0x${expected.toString(16)}, contents 0x${actual.toString(16)}): the file is corrupt`);
  }
  let decoded: { meta?: SnapshotMeta; state?: T };
  try {
    decoded = packr.unpack(payload) as { meta?: SnapshotMeta; state?: T };
  } catch (error) {
    throw new SnapshotError("payload", `${name}: state cannot be decoded: ${(error as Error).message}`);
  }
  if (!decoded || typeof decoded !== "object" || !decoded.meta || decoded.state === undefined) {
    throw new SnapshotError("payload", `${name}: state has no metadata or machine state`);
  }
  return { major, minor, meta: decoded.meta, state: decoded.state };
}

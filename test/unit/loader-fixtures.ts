/**
 * Small builders for synthetic kernel images, so loader tests can make valid
 * and hostile files byte by byte, plus where to find real kernels when the
 * machine has them.
 */
import { existsSync, readdirSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

export const MiB = 1 << 20;

export interface SyntheticSegment {
  readonly type?: number; // default PT_LOAD (1)
  readonly paddr: number;
  readonly data: Uint8Array;
  readonly memSize?: number; // default data length
  /** Overrides for hostile files. */
  readonly fileOffset?: number;
  readonly fileSize?: number;
}

export interface SyntheticElf {
  readonly entry: number;
  readonly segments: readonly SyntheticSegment[];
  readonly machine?: number;
  readonly elfClass?: number;
  readonly phoff?: number;
  readonly phnum?: number;
}

export const PT_LOAD = 1;
export const PT_NOTE = 4;

/** An ELF64 file: header, program header table, then each segment's data in order. */
export function buildElf(spec: SyntheticElf): Uint8Array {
  const phoff = 64;
  let dataOffset = phoff + spec.segments.length * 56;
  const placed = spec.segments.map((segment) => {
    const offset = dataOffset;
    dataOffset += segment.data.byteLength;
    return { segment, offset };
  });
  const bytes = new Uint8Array(dataOffset);
  const view = new DataView(bytes.buffer);
  bytes.set([0x7f, 0x45, 0x4c, 0x46, spec.elfClass ?? 2, 1, 1]);
  view.setUint16(16, 2, true); // ET_EXEC
  view.setUint16(18, spec.machine ?? 62, true);
  view.setUint32(20, 1, true);
  view.setBigUint64(24, BigInt(spec.entry), true);
  view.setBigUint64(32, BigInt(spec.phoff ?? phoff), true);
  view.setUint16(52, 64, true);
  view.setUint16(54, 56, true);
  view.setUint16(56, spec.phnum ?? spec.segments.length, true);
  for (const [i, { segment, offset }] of placed.entries()) {
    const at = phoff + i * 56;
    view.setUint32(at, segment.type ?? PT_LOAD, true);
    view.setBigUint64(at + 8, BigInt(segment.fileOffset ?? offset), true);
    view.setBigUint64(at + 16, BigInt(segment.paddr) + 0xffffffff80000000n, true);
    view.setBigUint64(at + 24, BigInt(segment.paddr), true);
    view.setBigUint64(at + 32, BigInt(segment.fileSize ?? segment.data.byteLength), true);
    view.setBigUint64(at + 40, BigInt(segment.memSize ?? segment.data.byteLength), true);
    bytes.set(segment.data, offset);
  }
  return bytes;
}

/** One ELF note: namesz, descsz, type, name (NUL-terminated, padded), desc (padded). */
export function elfNote(name: string, type: number, desc: Uint8Array): Uint8Array {
  const nameBytes = new TextEncoder().encode(`${name}\0`);
  const pad = (n: number) => Math.ceil(n / 4) * 4;
  const bytes = new Uint8Array(12 + pad(nameBytes.byteLength) + pad(desc.byteLength));
  const view = new DataView(bytes.buffer);
  view.setUint32(0, nameBytes.byteLength, true);
  view.setUint32(4, desc.byteLength, true);
  view.setUint32(8, type, true);
  bytes.set(nameBytes, 12);
  bytes.set(desc, 12 + pad(nameBytes.byteLength));
  return bytes;
}

export function u64le(value: number): Uint8Array {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(value), true);
  return bytes;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

export interface SyntheticBzImage {
  readonly setupSects?: number;
  readonly version?: number;
  readonly magic?: string;
  readonly loadflags?: number;
  readonly xloadflags?: number;
  readonly payload?: Uint8Array;
  readonly protectedModeSize?: number;
  readonly initSize?: number;
  readonly payloadOffset?: number;
  readonly payloadLength?: number;
  readonly initrdAddrMax?: number;
  readonly cmdlineSize?: number;
  readonly truncateTo?: number;
}

/** A bzImage: boot sector + setup sectors with a setup header, then the protected-mode kernel. */
export function buildBzImage(spec: SyntheticBzImage = {}): Uint8Array {
  const setupSects = spec.setupSects ?? 4;
  const setupBytes = ((setupSects === 0 ? 4 : setupSects) + 1) * 512;
  const payload = spec.payload ?? Uint8Array.of(0x02, 0x21, 0x4c, 0x18, 1, 2, 3, 4); // LZ4 legacy magic
  const payloadOffset = spec.payloadOffset ?? 0x40;
  const protectedModeSize = spec.protectedModeSize ?? Math.max(0x1000, payloadOffset + payload.byteLength);
  const bytes = new Uint8Array(setupBytes + protectedModeSize);
  const view = new DataView(bytes.buffer);
  bytes[0x1f1] = setupSects;
  view.setUint16(0x1fe, 0xaa55, true);
  view.setUint16(0x200, 0x6aeb, true); // jmp over the header: end = 0x202 + 0x6a
  bytes.set(new TextEncoder().encode(spec.magic ?? "HdrS"), 0x202);
  view.setUint16(0x206, spec.version ?? 0x20f, true);
  bytes[0x211] = spec.loadflags ?? 0x01;
  view.setUint32(0x214, 0x100000, true);
  view.setUint32(0x22c, spec.initrdAddrMax ?? 0x7fffffff, true);
  view.setUint32(0x230, 0x200000, true);
  bytes[0x234] = 1;
  view.setUint16(0x236, spec.xloadflags ?? 0x7f, true);
  view.setUint32(0x238, spec.cmdlineSize ?? 0x7ff, true);
  view.setUint32(0x248, payloadOffset, true);
  view.setUint32(0x24c, spec.payloadLength ?? payload.byteLength, true);
  view.setBigUint64(0x258, 0x1000000n, true);
  view.setUint32(0x260, spec.initSize ?? 0x200000, true);
  bytes.set(payload, setupBytes + payloadOffset);
  // A recognisable byte at the 64-bit entry (load address + 0x200).
  bytes[setupBytes + 0x200] = 0xe9;
  return spec.truncateTo === undefined ? bytes : bytes.subarray(0, spec.truncateTo);
}

// ---------------------------------------------------------------- real kernels (optional)
export const MICROVM_KERNEL_DIR = "/work/shared/kernels/microvm-6.1";

/** Debian's bzImage: /boot/vmlinuz-* or one fetched into the test cache by src/kernel/debian.ts. */
export function findDebianBzImage(): string | undefined {
  const candidates: string[] = [];
  if (existsSync("/boot")) {
    candidates.push(...readdirSync("/boot").filter((f) => f.startsWith("vmlinuz-")).map((f) => join("/boot", f)));
  }
  const cache = join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "volt-test", "debian-kernel");
  if (existsSync(cache)) {
    for (const pkg of readdirSync(cache)) {
      const boot = join(cache, pkg, "root", "boot");
      if (!existsSync(boot)) continue;
      candidates.push(...readdirSync(boot).filter((f) => f.startsWith("vmlinuz-")).map((f) => join(boot, f)));
    }
  }
  return candidates.sort().at(-1);
}

/** Prints why a real-kernel test is skipped (bun's skip output does not say). */
export function availableOrExplain(path: string | undefined, what: string): path is string {
  if (path !== undefined && existsSync(path)) return true;
  console.log(`skipping ${what}: ${path === undefined ? "no such kernel was found" : `${path} is not on this machine`}`);
  return false;
}

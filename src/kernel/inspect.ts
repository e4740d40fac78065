/**
 * What `volt kernel inspect` reports about a kernel file: its format and
 * compression, Linux version, PVH entry, boot protocol, ACPI, and whether it
 * can mount a virtio-blk ext4 root without an initramfs (judged from its
 * configuration: embedded with CONFIG_IKCONFIG, or a config file beside it).
 *
 * For a bzImage, the version comes from the setup header's kernel_version
 * string (no decompression); the PVH note and any embedded config live in the
 * compressed vmlinux, so those need the payload decompressed, which inspect
 * does unless asked not to.
 */
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { gunzipSync } from "node:zlib";
import { type BzImageKernel, hasSetupHeader, parseBzImage } from "../loader/bzimage.ts";
import type { KernelCompression } from "../loader/compression.ts";
import { kernelSupportsAcpi } from "../loader/detect.ts";
import { type ElfKernel, isElf, parseElfKernel } from "../loader/elf.ts";
import { KernelFormatError } from "../loader/errors.ts";
import { decompressPayload, ExtractError, payloadBytes } from "./extract.ts";

/** Built in (=y), all three are what a virtio-blk ext4 root needs before any module can load. */
export const ROOT_WITHOUT_INITRAMFS_OPTIONS = ["CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_BLK", "CONFIG_EXT4_FS"] as const;

export interface RootWithoutInitramfs {
  answer: "yes" | "no" | "unknown";
  /** "embedded config (IKCONFIG)", "config file /boot/config-…", or null when unknown. */
  source: string | null;
  /** The config file the answer came from, when it came from one. */
  configFile: string | null;
  /** Each option's value: "y", "m", "n" (not set), or null when there is no config. */
  options: Record<string, "y" | "m" | "n" | null>;
  reason: string;
}

export interface KernelFacts {
  path: string;
  sizeBytes: number;
  sha256: string;
  format: "elf" | "bzimage";
  /** bzImage payload compressor; "none" for an ELF vmlinux. */
  compression: KernelCompression;
  /** Kernel release, e.g. "6.1.0-56-amd64"; null if the image does not say. */
  version: string | null;
  /** The full version string (the setup header's, or the vmlinux's "Linux version …" banner). */
  versionString: string | null;
  /** Boot protocol of a bzImage, e.g. "2.15"; null for an ELF vmlinux. */
  bootProtocol: string | null;
  /** Whether the vmlinux has the Xen PVH entry note; null when unknown (bzImage not decompressed). */
  pvh: boolean | null;
  /** PVH entry address (hex), when there is one. */
  pvhEntry: string | null;
  /** The 64-bit boot protocol entry (hex). */
  entry64: string;
  acpi: boolean;
  rootWithoutInitramfs: RootWithoutInitramfs;
  /** bzImage only: whether the payload was decompressed for this report, and why not if it was not. */
  payload: { decompressed: boolean; uncompressedBytes: number | null; error: string | null } | null;
}

export interface InspectOptions {
  /** Decompress a bzImage's payload for the PVH note and an embedded config (default true). */
  decompress?: boolean;
  /** Judge the config from this file (when the image embeds none) instead of looking beside the kernel. */
  configFile?: string;
}

/** Reads and inspects a kernel file; throws KernelFormatError for files that are not kernels. */
export function inspectKernelFile(path: string, options: InspectOptions = {}): KernelFacts {
  return inspectKernelBytes(new Uint8Array(readFileSync(path)), path, options);
}

export function inspectKernelBytes(bytes: Uint8Array, path: string, options: InspectOptions = {}): KernelFacts {
  const sha256 = createHash("sha256").update(bytes).digest("hex");
  const acpi = kernelSupportsAcpi(bytes);
  const configFile = options.configFile;
  const configDir = dirname(path);
  if (isElf(bytes)) {
    const elf = parseElfKernel(bytes);
    const banner = findBanner(bytes);
    const version = banner?.split(/\s+/)[0] ?? null;
    return {
      path,
      sizeBytes: bytes.length,
      sha256,
      format: "elf",
      compression: "none",
      version,
      versionString: banner === undefined ? null : `Linux version ${banner}`,
      bootProtocol: null,
      ...pvhFacts(elf),
      entry64: hex(elf.entry64),
      acpi,
      rootWithoutInitramfs: rootAnswer(findEmbeddedConfig(bytes), configFile ?? findConfigFile(configDir, version)),
      payload: null,
    };
  }
  if (!hasSetupHeader(bytes)) throw new KernelFormatError("not-a-kernel", "not a Linux kernel (neither ELF vmlinux nor bzImage)");
  const bz = parseBzImage(bytes);
  const headerVersion = setupHeaderVersion(bytes, bz);
  let elf: ElfKernel | undefined;
  let vmlinux: Uint8Array | undefined;
  let payloadError: string | null = null;
  if (options.decompress ?? true) {
    try {
      vmlinux = decompressPayload(payloadBytes(bytes, bz), bz.payload.compression);
      elf = parseElfKernel(vmlinux);
    } catch (error) {
      if (!(error instanceof ExtractError || error instanceof KernelFormatError)) throw error;
      payloadError = error.message;
    }
  }
  const banner = headerVersion ?? (vmlinux ? findBanner(vmlinux) : undefined);
  const version = banner?.split(/\s+/)[0] ?? null;
  return {
    path,
    sizeBytes: bytes.length,
    sha256,
    format: "bzimage",
    compression: bz.payload.compression,
    version,
    versionString: headerVersion ?? (banner === undefined ? null : `Linux version ${banner}`),
    bootProtocol: `${bz.protocolVersion >> 8}.${String(bz.protocolVersion & 0xff).padStart(2, "0")}`,
    ...(elf ? pvhFacts(elf) : { pvh: null, pvhEntry: null }),
    entry64: hex(bz.entry64),
    acpi,
    rootWithoutInitramfs: rootAnswer(vmlinux ? findEmbeddedConfig(vmlinux) : undefined, configFile ?? findConfigFile(configDir, version)),
    payload: { decompressed: elf !== undefined, uncompressedBytes: vmlinux?.length ?? null, error: payloadError },
  };
}

function pvhFacts(elf: ElfKernel): { pvh: boolean; pvhEntry: string | null } {
  return { pvh: elf.pvhEntry !== undefined, pvhEntry: elf.pvhEntry === undefined ? null : hex(elf.pvhEntry) };
}

/**
 * The setup header's kernel_version (offset 0x20e): a pointer, less 0x200, to
 * a NUL-terminated string in the setup code, e.g. "6.1.0-56-amd64
 * (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2".
 */
function setupHeaderVersion(bytes: Uint8Array, bz: BzImageKernel): string | undefined {
  const pointer = bytes[0x20e]! | (bytes[0x20f]! << 8);
  if (pointer === 0) return undefined;
  const at = pointer + 0x200;
  if (at >= bz.setupSize) return undefined;
  const end = bytes.indexOf(0, at);
  if (end < 0 || end > bz.setupSize || end === at) return undefined;
  const text = new TextDecoder("latin1").decode(bytes.subarray(at, Math.min(end, at + 512)));
  return /^[\x20-\x7e]+$/.test(text) && /^\d/.test(text) ? text : undefined;
}

const BANNER = Buffer.from("Linux version ");

/**
 * The text after "Linux version " in linux_banner (release, builder, compiler,
 * build), up to the newline. Kernels since 6.1 carry two banners: init/version.c's
 * with an empty build number ("# SMP") and version-timestamp.c's real one
 * ("#1 SMP"); the one with a number wins.
 */
function findBanner(bytes: Uint8Array): string | undefined {
  const haystack = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let first: string | undefined;
  let at = haystack.indexOf(BANNER);
  for (let found = 0; at >= 0 && found < 8; at = haystack.indexOf(BANNER, at + BANNER.length)) {
    const start = at + BANNER.length;
    const lead = haystack[start];
    if (lead === undefined || lead < 0x30 || lead > 0x39) continue;
    let end = start;
    while (end < haystack.length && end - start < 512 && haystack[end]! >= 0x20 && haystack[end]! < 0x7f) end++;
    const banner = haystack.toString("latin1", start, end).trim();
    if (/ #\d/.test(banner)) return banner;
    first ??= banner;
    found++;
  }
  return first;
}

const IKCFG_ST = Buffer.from("IKCFG_ST");
const IKCFG_ED = Buffer.from("IKCFG_ED");

/** The config text CONFIG_IKCONFIG embeds: gzip data between "IKCFG_ST" and "IKCFG_ED". */
export function findEmbeddedConfig(vmlinux: Uint8Array): string | undefined {
  const haystack = Buffer.from(vmlinux.buffer, vmlinux.byteOffset, vmlinux.byteLength);
  let at = haystack.indexOf(IKCFG_ST);
  while (at >= 0) {
    const start = at + IKCFG_ST.length;
    if (haystack[start] === 0x1f && haystack[start + 1] === 0x8b) {
      const end = haystack.indexOf(IKCFG_ED, start);
      try {
        return gunzipSync(haystack.subarray(start, end < 0 ? undefined : end)).toString("utf8");
      } catch {
        // not the real blob (the marker also appears in code that looks for it); keep looking
      }
    }
    at = haystack.indexOf(IKCFG_ST, start);
  }
  return undefined;
}

/** config-<release>, then config, then a lone config-* beside the kernel (Debian's /boot, Volt's store). */
export function findConfigFile(dir: string, version: string | null): string | undefined {
  if (!existsSync(dir)) return undefined;
  const candidates = [version ? `config-${version}` : undefined, "config"].filter((n): n is string => n !== undefined);
  for (const name of candidates) {
    const path = join(dir, name);
    if (existsSync(path) && statSync(path).isFile()) return path;
  }
  const others = readdirSync(dir).filter((n) => n.startsWith("config-"));
  if (others.length === 1) return join(dir, others[0]!);
  return undefined;
}

export function parseKernelConfig(text: string): Map<string, string> {
  const values = new Map<string, string>();
  for (const line of text.split("\n")) {
    const set = /^(CONFIG_\w+)=(.*)$/.exec(line);
    if (set) values.set(set[1]!, set[2]!);
    const unset = /^# (CONFIG_\w+) is not set/.exec(line);
    if (unset) values.set(unset[1]!, "n");
  }
  return values;
}

function rootAnswer(embedded: string | undefined, file: string | undefined): RootWithoutInitramfs {
  let text = embedded;
  let source: string | null = embedded === undefined ? null : "embedded config (IKCONFIG)";
  let configFile: string | null = null;
  if (text === undefined && file !== undefined) {
    text = readFileSync(file, "utf8");
    source = `config file ${file}`;
    configFile = file;
  }
  const options: Record<string, "y" | "m" | "n" | null> = {};
  if (text === undefined) {
    for (const name of ROOT_WITHOUT_INITRAMFS_OPTIONS) options[name] = null;
    return { answer: "unknown", source: null, configFile: null, options, reason: "no embedded config (CONFIG_IKCONFIG) and no config file beside the kernel" };
  }
  const config = parseKernelConfig(text);
  for (const name of ROOT_WITHOUT_INITRAMFS_OPTIONS) {
    const value = config.get(name) ?? "n";
    options[name] = value === "y" || value === "m" ? value : "n";
  }
  const notBuiltIn = ROOT_WITHOUT_INITRAMFS_OPTIONS.filter((name) => options[name] !== "y");
  if (notBuiltIn.length === 0) {
    return { answer: "yes", source, configFile, options, reason: "virtio-mmio, virtio-blk and ext4 are built in" };
  }
  const modular = notBuiltIn.filter((name) => options[name] === "m");
  const reason =
    `${notBuiltIn.map((n) => `${n}=${options[n]}`).join(", ")}: ` +
    (modular.length === notBuiltIn.length ? "an initramfs must load these modules before the root can be mounted" : "the kernel lacks drivers a virtio-blk ext4 root needs");
  return { answer: "no", source, configFile, options, reason };
}

export const hex = (value: number): string => `0x${value.toString(16)}`;

/** A short label for listings: "bzImage (xz)" or "ELF vmlinux". */
export function formatLabel(facts: Pick<KernelFacts, "format" | "compression">): string {
  return facts.format === "elf" ? "ELF vmlinux" : `bzImage (${facts.compression})`;
}

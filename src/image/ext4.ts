/**
 * An ext4 root image from a directory, through e2fsprogs' `mkfs.ext4 -d`
 * (which copies a tree into the new filesystem without mounting anything, so
 * it needs no privileges). The image is made under a temporary name beside
 * the output and renamed into place when mkfs succeeded.
 */
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, lstatSync, openSync, readdirSync, renameSync, rmSync, statSync, ftruncateSync } from "node:fs";
import { basename, dirname, join } from "node:path";

export type Ext4ImageErrorKind = "source" | "mkfs-missing" | "too-small" | "mkfs-failed" | "output";

export class Ext4ImageError extends Error {
  override name = "Ext4ImageError";
  readonly kind: Ext4ImageErrorKind;

  constructor(kind: Ext4ImageErrorKind, message: string) {
    super(message);
    this.kind = kind;
  }
}

export interface Ext4Options {
  sourceDir: string;
  out: string;
  /** Image size in MiB; default: what the tree needs plus headroom. */
  sizeMiB?: number;
  /** Filesystem label; default "volt-root". */
  label?: string;
  /** Replace an existing output file. */
  force?: boolean;
  /** mkfs.ext4 to run; default: found on PATH or in /sbin, /usr/sbin. */
  mkfsPath?: string;
}

export interface Ext4Image {
  path: string;
  sourceDir: string;
  sizeBytes: number;
  sizeMiB: number;
  /** Bytes the tree occupies (files rounded up to 4 KiB blocks, plus per-entry overhead). */
  contentBytes: number;
  entries: number;
  label: string;
}

const MiB = 1 << 20;
/** ext4's fixed costs (superblocks, group descriptors, inode tables, journal) for small images. */
const MIN_SIZE_MIB = 8;

export function findMkfsExt4(): string | undefined {
  const dirs = [...(process.env.PATH ?? "").split(":"), "/usr/sbin", "/sbin"].filter((d) => d !== "");
  for (const dir of dirs) {
    const path = join(dir, "mkfs.ext4");
    if (existsSync(path)) return path;
  }
  return undefined;
}

/** Sums the tree's size as ext4 would store it; refuses a missing or non-directory source. */
export function measureTree(dir: string): { contentBytes: number; entries: number } {
  let stat;
  try {
    stat = statSync(dir);
  } catch {
    throw new Ext4ImageError("source", `source directory ${dir} does not exist`);
  }
  if (!stat.isDirectory()) throw new Ext4ImageError("source", `${dir} is not a directory`);
  let contentBytes = 0;
  let entries = 0;
  const walk = (path: string): void => {
    for (const name of readdirSync(path)) {
      const child = join(path, name);
      const info = lstatSync(child);
      entries++;
      contentBytes += 256; // inode + directory entry
      if (info.isFile()) contentBytes += Math.ceil(info.size / 4096) * 4096;
      else if (info.isDirectory()) {
        contentBytes += 4096;
        walk(child);
      }
    }
  };
  walk(dir);
  return { contentBytes, entries };
}

export function buildExt4Image(options: Ext4Options): Ext4Image {
  const { sourceDir, out } = options;
  const label = options.label ?? "volt-root";
  const { contentBytes, entries } = measureTree(sourceDir);
  const mkfs = options.mkfsPath ?? findMkfsExt4();
  if (mkfs === undefined || !existsSync(mkfs)) {
    throw new Ext4ImageError("mkfs-missing", "mkfs.ext4 was not found (install e2fsprogs, 1.43 or newer for -d)");
  }
  // Headroom: a third more than the content, plus ext4's own metadata.
  const sizeMiB = options.sizeMiB ?? Math.max(MIN_SIZE_MIB, Math.ceil((contentBytes * 4) / 3 / MiB) + MIN_SIZE_MIB);
  if (!Number.isInteger(sizeMiB) || sizeMiB < 1) throw new Ext4ImageError("too-small", `image size ${sizeMiB} MiB is not a positive whole number`);
  if (!existsSync(dirname(out)) || !statSync(dirname(out)).isDirectory()) {
    throw new Ext4ImageError("output", `cannot write ${out}: directory ${dirname(out)} does not exist`);
  }
  if (existsSync(out) && !options.force) throw new Ext4ImageError("output", `${out} exists; give --force to replace it`);

  const temp = join(dirname(out), `.${basename(out)}.${randomBytes(4).toString("hex")}.volt-partial`);
  try {
    const fd = openSync(temp, "wx", 0o644);
    try {
      ftruncateSync(fd, sizeMiB * MiB);
    } finally {
      closeSync(fd);
    }
    // -F: it is a regular file, not a device; -E root_owner: the image's / belongs to root whoever builds it.
    const proc = Bun.spawnSync([mkfs, "-q", "-F", "-L", label, "-E", "root_owner=0:0", "-d", sourceDir, temp], {
      stdout: "pipe",
      stderr: "pipe",
      stdin: "ignore",
    });
    if (proc.exitCode !== 0) {
      const detail = `${proc.stderr.toString()}${proc.stdout.toString()}`.trim().split("\n").slice(-4).join("\n");
      if (/no space|could not allocate|not enough space|too small|Could not allocate/i.test(detail)) {
        throw new Ext4ImageError(
          "too-small",
          `${sizeMiB} MiB is too small for ${sourceDir} (about ${Math.ceil(contentBytes / MiB)} MiB of files); give a larger --size\n${detail}`,
        );
      }
      throw new Ext4ImageError("mkfs-failed", `mkfs.ext4 failed (exit ${proc.exitCode}):\n${detail}`);
    }
    renameSync(temp, out);
  } finally {
    rmSync(temp, { force: true });
  }
  return { path: out, sourceDir, sizeBytes: sizeMiB * MiB, sizeMiB, contentBytes, entries, label };
}

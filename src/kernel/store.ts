/**
 * Volt's kernel store: named guest kernels under
 * ${VOLT_DATA_DIR:-${XDG_DATA_HOME:-~/.local/share}/volt}/kernels, one
 * directory per kernel:
 *
 *   kernels/<name>/kernel        the image, byte for byte as added
 *   kernels/<name>/kernel.json   what inspect found (format, version, PVH, …) and when it was added
 *   kernels/<name>/config        the kernel's config, when one was found beside it
 *   kernels/<name>/modules/*.ko  modules a guest loads from an initramfs (volt kernel fetch)
 *   kernels/default              the name `volt run` uses when given no kernel
 *
 * An entry is built under a temporary name and renamed into place whole, so a
 * failed or interrupted add leaves nothing that looks like a kernel.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { basename, join, resolve } from "node:path";
import { KernelFormatError } from "../loader/errors.ts";
import { writeFileAtomic } from "./extract.ts";
import { inspectKernelBytes, type KernelFacts } from "./inspect.ts";

export type KernelStoreErrorKind =
  | "not-found" // no such name in the store (or no such file)
  | "exists" // the name is taken
  | "bad-name"
  | "not-a-kernel" // the file is not a kernel Volt can boot, or its payload is corrupt
  | "unreadable"; // the file cannot be read

export class KernelStoreError extends Error {
  override name = "KernelStoreError";
  readonly kind: KernelStoreErrorKind;

  constructor(kind: KernelStoreErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.kind = kind;
  }
}

export const METADATA_SCHEMA = 1;

/** kernel.json: inspect's facts plus the store's own. */
export interface StoredKernel extends Omit<KernelFacts, "path"> {
  schema: number;
  name: string;
  /** The stored image. */
  path: string;
  /** The file it was added from. */
  addedFrom: string;
  addedAt: string;
  /** Module files under modules/, in the order an initramfs must load them (dependencies first). */
  modules: string[];
  /** Absolute paths of those modules. */
  modulePaths: string[];
  /** The stored config file, if any. */
  configPath: string | null;
  /** Whether this is the store's default kernel (not stored; filled in when read). */
  isDefault: boolean;
}

export interface AddOptions {
  name?: string;
  /** Host .ko files, in load order, kept with the kernel for initramfs images. */
  modules?: readonly string[];
  /** Config file to keep with the kernel; default: one found beside it (config-<release> or config). */
  configPath?: string;
  /** Make this the default kernel (it also becomes the default when the store has none). */
  makeDefault?: boolean;
  /** Describes where the kernel came from when the added file is a temporary one. */
  addedFrom?: string;
}

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$/;
const KERNEL_FILE = "kernel";
const METADATA_FILE = "kernel.json";
const CONFIG_FILE = "config";
const MODULES_DIR = "modules";
const DEFAULT_FILE = "default";

/** ${VOLT_DATA_DIR} or ${XDG_DATA_HOME:-~/.local/share}/volt. */
export function voltDataDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.VOLT_DATA_DIR) return resolve(env.VOLT_DATA_DIR);
  const xdg = env.XDG_DATA_HOME && env.XDG_DATA_HOME.startsWith("/") ? env.XDG_DATA_HOME : join(homedir(), ".local", "share");
  return join(xdg, "volt");
}

export function checkKernelName(name: string): void {
  if (!NAME_PATTERN.test(name) || name === DEFAULT_FILE) {
    throw new KernelStoreError(
      "bad-name",
      `"${name}" is not a usable kernel name: use letters, digits, '.', '_', '+' and '-' (up to 100, not starting with punctuation, not "default")`,
    );
  }
}

export class KernelStore {
  readonly dir: string;

  constructor(dir: string = join(voltDataDir(), "kernels")) {
    this.dir = dir;
  }

  list(): StoredKernel[] {
    if (!existsSync(this.dir)) return [];
    this.removeAbandonedWork();
    const kernels: StoredKernel[] = [];
    for (const name of readdirSync(this.dir).sort()) {
      if (!NAME_PATTERN.test(name) || name === DEFAULT_FILE) continue;
      const kernel = this.read(name);
      if (kernel) kernels.push(kernel);
    }
    return kernels;
  }

  get(name: string): StoredKernel | undefined {
    if (!NAME_PATTERN.test(name) || name === DEFAULT_FILE) return undefined;
    return this.read(name);
  }

  /** The named kernel; throws not-found naming what the store has. */
  require(name: string): StoredKernel {
    const kernel = this.get(name);
    if (kernel) return kernel;
    const names = this.list().map((k) => k.name);
    throw new KernelStoreError(
      "not-found",
      `no kernel named "${name}" in the store (${this.dir}); ${names.length ? `it has: ${names.join(", ")}` : "it is empty (volt kernel add PATH, or volt kernel fetch)"}`,
    );
  }

  /**
   * Validates `sourcePath` as a kernel (decompressing a bzImage's payload, so
   * a corrupt one is refused now), then stores it with its metadata.
   */
  add(sourcePath: string, options: AddOptions = {}): StoredKernel {
    let bytes: Uint8Array;
    try {
      if (!statSync(sourcePath).isFile()) throw new KernelStoreError("unreadable", `${sourcePath} is not a regular file`);
      bytes = new Uint8Array(readFileSync(sourcePath));
    } catch (error) {
      if (error instanceof KernelStoreError) throw error;
      const code = (error as NodeJS.ErrnoException).code;
      const why = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : (error as Error).message;
      throw new KernelStoreError(code === "ENOENT" ? "not-found" : "unreadable", `cannot read kernel ${sourcePath}: ${why}`, { cause: error });
    }
    let facts: KernelFacts;
    try {
      facts = inspectKernelBytes(bytes, sourcePath, options.configPath === undefined ? {} : { configFile: options.configPath });
    } catch (error) {
      if (error instanceof KernelFormatError) throw new KernelStoreError("not-a-kernel", `${sourcePath}: ${error.message}`, { cause: error });
      throw error;
    }
    // A payload Volt cannot decompress (lzo, an unknown magic) still boots: the kernel decompresses itself.
    if (facts.payload?.error && facts.compression !== "lzo" && facts.compression !== "unknown") {
      throw new KernelStoreError("not-a-kernel", `${sourcePath}: ${facts.payload.error}`);
    }
    const configSource = facts.rootWithoutInitramfs.configFile ?? undefined;

    const name = options.name ?? defaultName(facts, sourcePath);
    checkKernelName(name);
    const finalDir = join(this.dir, name);
    if (existsSync(finalDir)) {
      throw new KernelStoreError("exists", `a kernel named "${name}" is already in the store; remove it first (volt kernel rm ${name}) or choose another --name`);
    }
    for (const module of options.modules ?? []) {
      if (!module.endsWith(".ko")) throw new KernelStoreError("unreadable", `module ${module} is not an uncompressed .ko file`);
      if (!existsSync(module)) throw new KernelStoreError("not-found", `module ${module} does not exist`);
    }

    mkdirSync(this.dir, { recursive: true });
    this.removeAbandonedWork();
    const work = join(this.dir, `.partial-${name}-${process.pid}-${randomBytes(4).toString("hex")}`);
    mkdirSync(work);
    try {
      writeFileSync(join(work, KERNEL_FILE), bytes, { mode: 0o644 });
      // Copied as plain 0644 files whatever the source's mode (a read-only source stays removable and replaceable).
      if (configSource !== undefined) writeFileSync(join(work, CONFIG_FILE), readFileSync(configSource), { mode: 0o644 });
      const moduleNames: string[] = [];
      if (options.modules?.length) {
        mkdirSync(join(work, MODULES_DIR));
        for (const module of options.modules) {
          const file = basename(module);
          if (moduleNames.includes(file)) throw new KernelStoreError("exists", `two modules are named ${file}`);
          writeFileSync(join(work, MODULES_DIR, file), readFileSync(module), { mode: 0o644 });
          moduleNames.push(file);
        }
      }
      const { path: _path, ...rest } = facts;
      const metadata = {
        schema: METADATA_SCHEMA,
        name,
        ...rest,
        // Where the store's copy is; the config answer named the file it was added from.
        addedFrom: options.addedFrom ?? resolve(sourcePath),
        addedAt: new Date().toISOString(),
        modules: moduleNames,
        hasConfig: configSource !== undefined,
      };
      writeFileSync(join(work, METADATA_FILE), `${JSON.stringify(metadata, null, 2)}\n`);
      try {
        renameSync(work, finalDir);
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === "ENOTEMPTY" || code === "EEXIST") {
          throw new KernelStoreError("exists", `a kernel named "${name}" was added to the store meanwhile`, { cause: error });
        }
        throw error;
      }
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
    if (options.makeDefault || this.defaultName() === undefined) this.setDefault(name);
    return this.require(name);
  }

  /** Removes a kernel; clears the default pointer if it named it. */
  remove(name: string): { removed: string; defaultCleared: boolean } {
    this.require(name);
    const defaultCleared = this.defaultName() === name;
    // Out of sight first, so an interrupted removal never leaves a half-deleted kernel listed.
    const doomed = join(this.dir, `.removing-${name}-${process.pid}-${randomBytes(4).toString("hex")}`);
    renameSync(join(this.dir, name), doomed);
    if (defaultCleared) rmSync(join(this.dir, DEFAULT_FILE), { force: true });
    rmSync(doomed, { recursive: true, force: true });
    return { removed: name, defaultCleared };
  }

  setDefault(name: string): void {
    this.require(name);
    writeFileAtomic(join(this.dir, DEFAULT_FILE), `${name}\n`);
  }

  /** The default kernel's name, if one is set (and still stored). */
  defaultName(): string | undefined {
    const path = join(this.dir, DEFAULT_FILE);
    if (!existsSync(path)) return undefined;
    const name = readFileSync(path, "utf8").trim();
    return name && existsSync(join(this.dir, name, METADATA_FILE)) ? name : undefined;
  }

  defaultKernel(): StoredKernel | undefined {
    const name = this.defaultName();
    return name === undefined ? undefined : this.get(name);
  }

  /**
   * A kernel argument: a path when it names an existing file or contains a
   * '/', otherwise a name in the store.
   */
  resolve(nameOrPath: string): { kind: "path"; path: string } | { kind: "stored"; kernel: StoredKernel } {
    if (nameOrPath.includes("/")) return { kind: "path", path: nameOrPath };
    const stored = this.get(nameOrPath);
    if (stored) return { kind: "stored", kernel: stored };
    if (existsSync(nameOrPath)) return { kind: "path", path: nameOrPath };
    const names = this.list().map((k) => k.name);
    throw new KernelStoreError(
      "not-found",
      `"${nameOrPath}" is neither a file nor a kernel in the store${names.length ? ` (stored: ${names.join(", ")})` : " (the store is empty)"}`,
    );
  }

  private read(name: string): StoredKernel | undefined {
    const dir = join(this.dir, name);
    let raw: Record<string, unknown>;
    try {
      raw = JSON.parse(readFileSync(join(dir, METADATA_FILE), "utf8")) as Record<string, unknown>;
    } catch {
      return undefined;
    }
    const modules = Array.isArray(raw.modules) ? (raw.modules as string[]) : [];
    const { hasConfig, ...facts } = raw as unknown as StoredKernel & { hasConfig?: boolean };
    return {
      ...facts,
      name,
      path: join(dir, KERNEL_FILE),
      modules,
      modulePaths: modules.map((m) => join(dir, MODULES_DIR, m)),
      configPath: hasConfig ? join(dir, CONFIG_FILE) : null,
      isDefault: this.defaultName() === name,
    };
  }

  /** Work directories of adds and removals whose process is gone. */
  private removeAbandonedWork(): void {
    if (!existsSync(this.dir)) return;
    for (const entry of readdirSync(this.dir)) {
      const pid = /^\.(?:partial|removing)-.*-(\d+)-[0-9a-f]+$/.exec(entry)?.[1];
      if (pid === undefined || isAlive(Number(pid))) continue;
      rmSync(join(this.dir, entry), { recursive: true, force: true });
    }
  }
}

/** The kernel release when the image says it ("6.1.0-56-amd64"), else the file's name. */
function defaultName(facts: KernelFacts, sourcePath: string): string {
  const candidate = facts.version ?? basename(sourcePath);
  const cleaned = candidate.replace(/[^A-Za-z0-9._+-]/g, "-").replace(/^[^A-Za-z0-9]+/, "").slice(0, 100);
  return cleaned || "kernel";
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

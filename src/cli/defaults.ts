/**
 * What `volt run` uses when the user leaves something out: a kernel named in
 * the kernel store (or the store's default kernel), and, with neither an
 * initrd nor a root drive, a busybox initramfs that gives a shell on the
 * console (with the stored kernel's device modules, so a distribution kernel
 * finds its virtio devices).
 */
import { existsSync, mkdirSync, renameSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { buildInitramfs, InitramfsError } from "../image/initramfs.ts";
import { KernelStore, KernelStoreError } from "../kernel/store.ts";
import { EXIT } from "./exit-codes.ts";
import { CliError, usageError } from "./output.ts";

export interface ResolvedKernel {
  readonly path: string;
  /** Set when the kernel came from the store. */
  readonly storedName?: string;
  /** The store's directory, when the store was consulted (the sandbox must let the re-executed volt read it again). */
  readonly storeDir?: string;
  /** Modules the stored kernel keeps for its guests (virtio, ext4...), in load order. */
  readonly modulePaths: readonly string[];
}

/** A path, a stored kernel's name, or (undefined) the store's default kernel. */
export function resolveKernel(argument: string | undefined, store = new KernelStore()): ResolvedKernel {
  try {
    if (argument === undefined) {
      const fallback = store.defaultKernel();
      if (!fallback) {
        throw usageError("no kernel: give --kernel PATH (or a stored kernel's name), or add a default with `volt kernel fetch --default`");
      }
      return { path: fallback.path, storedName: fallback.name, storeDir: store.dir, modulePaths: fallback.modulePaths };
    }
    const resolved = store.resolve(argument);
    if (resolved.kind === "path") return { path: resolved.path, modulePaths: [] };
    return { path: resolved.kernel.path, storedName: resolved.kernel.name, storeDir: store.dir, modulePaths: resolved.kernel.modulePaths };
  } catch (error) {
    if (error instanceof KernelStoreError) throw new CliError(`kernel-${error.kind}`, `kernel ${argument}: ${error.message}`, EXIT.usage, { cause: error });
    throw error;
  }
}

const SHELL_SCRIPT = 'echo "Volt guest: busybox shell on the console (exit to end the VM)"\nsetsid cttyhack sh -l';

/** The default userland: a cached busybox initramfs with a console shell and `modules`; returns its path. */
export function defaultInitramfs(modules: readonly string[]): string {
  const cacheDir = join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "volt");
  const key = Bun.hash(JSON.stringify({ SHELL_SCRIPT, modules })).toString(16);
  const path = join(cacheDir, `default-initramfs-${key}.cpio.gz`);
  if (existsSync(path)) return path;
  let image: Uint8Array;
  try {
    image = buildInitramfs({ script: SHELL_SCRIPT, exit: "reboot", modules });
  } catch (error) {
    if (error instanceof InitramfsError) throw new CliError("initramfs", `no --initrd given and the default one cannot be built: ${error.message}`, EXIT.usage, { cause: error });
    throw error;
  }
  mkdirSync(cacheDir, { recursive: true });
  writeFileSync(`${path}.tmp-${process.pid}`, image);
  renameSync(`${path}.tmp-${process.pid}`, path);
  return path;
}

/**
 * `volt kernel fetch`: Debian's generic kernel into the store, with the
 * modules a guest needs to reach a virtio-blk ext4 root and its virtio
 * devices, so `volt image initramfs --kernel NAME` can load them. Gets the
 * package through src/kernel/debian.ts (apt on Debian-like hosts, or a given
 * .deb anywhere dpkg-deb exists), which keeps the unpacked package in the
 * cache.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { DebianKernelError, fetchDebianKernel, findKernelModules } from "./debian.ts";
import { extractVmlinux } from "./extract.ts";
import { KernelStore, KernelStoreError, type StoredKernel } from "./store.ts";

/**
 * What a Debian kernel needs as modules for Volt's devices: virtio-mmio
 * transport, block, net, rng, vsock, and ext4 (crc32c_generic: ext4 wants a
 * crc32c but only soft-depends on one, so nothing else pulls it in).
 * Dependencies (virtio, virtio_ring, jbd2, mbcache, vsock, …) come along.
 */
export const GUEST_MODULES = ["virtio_mmio", "virtio_blk", "virtio_rng", "crc32c_generic", "ext4", "virtio_net", "vmw_vsock_virtio_transport"];

export interface FetchOptions {
  store: KernelStore;
  /** Use this .deb instead of asking apt. */
  debPath?: string;
  /** Store name; default "debian-<release>". */
  name?: string;
  /** Also store the ELF vmlinux extracted from the bzImage, as "<name>-vmlinux". */
  vmlinux?: boolean;
  makeDefault?: boolean;
  /** Where unpacked packages are kept; default ${XDG_CACHE_HOME:-~/.cache}/volt. */
  cacheDir?: string;
  log?: (line: string) => void;
}

export interface FetchResult {
  release: string;
  kernels: StoredKernel[];
  modules: string[];
}

export class KernelFetchError extends Error {
  override name = "KernelFetchError";
}

export function voltCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_CACHE_HOME && env.XDG_CACHE_HOME.startsWith("/") ? env.XDG_CACHE_HOME : join(homedir(), ".cache");
  return join(xdg, "volt");
}

export async function fetchKernelIntoStore(options: FetchOptions): Promise<FetchResult> {
  const { store } = options;
  const log = options.log ?? (() => {});
  let debian;
  let modules: string[];
  try {
    debian = await fetchDebianKernel({
      cacheDir: options.cacheDir ?? voltCacheDir(),
      ...(options.debPath !== undefined ? { debPath: options.debPath } : {}),
      log,
    });
    modules = findKernelModules(debian, GUEST_MODULES, { ifPresent: true });
  } catch (error) {
    if (error instanceof DebianKernelError) throw new KernelFetchError(error.message, { cause: error });
    throw error;
  }
  const name = options.name ?? `debian-${debian.version}`;
  const vmlinuxName = `${name}-vmlinux`;
  // Check both names before adding either, so a clash never leaves half the result behind.
  for (const wanted of options.vmlinux ? [name, vmlinuxName] : [name]) {
    if (store.get(wanted)) {
      throw new KernelStoreError("exists", `a kernel named "${wanted}" is already in the store; remove it first (volt kernel rm ${wanted}) or choose another --name`);
    }
  }
  log(`adding ${debian.vmlinuzPath} as ${name} with ${modules.length} module(s)`);
  const kernels = [
    store.add(debian.vmlinuzPath, { name, modules, ...(options.makeDefault ? { makeDefault: true } : {}) }),
  ];
  if (options.vmlinux) {
    log(`extracting the ELF vmlinux as ${vmlinuxName}`);
    const temp = mkdtempSync(join(tmpdir(), "volt-fetch-"));
    try {
      const path = join(temp, "vmlinux");
      writeFileSync(path, extractVmlinux(new Uint8Array(await Bun.file(debian.vmlinuzPath).arrayBuffer())).vmlinux);
      const configPath = kernels[0]!.configPath;
      kernels.push(
        store.add(path, {
          name: vmlinuxName,
          modules,
          addedFrom: `${debian.vmlinuzPath} (extracted)`,
          ...(configPath ? { configPath } : {}),
        }),
      );
    } catch (error) {
      // Both or neither: the bzImage entry goes too.
      store.remove(name);
      throw error;
    } finally {
      rmSync(temp, { recursive: true, force: true });
    }
  }
  return { release: debian.version, kernels, modules: kernels[0]!.modules };
}

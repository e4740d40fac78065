/**
 * Where worker entry points live. This module sits at the root of src/ on
 * purpose: from source, URLs resolve against src/; inside the compiled binary
 * the bundle's base is the root of the embedded files, which build.ts lays
 * out the same way (entry points relative to src/). Every worker listed here
 * must also be in build.ts's WORKER_ENTRY_POINTS.
 */
export const WORKER_MODULES = {
  vcpu: "./vcpu/worker.ts",
  io: "./devices/virtio/io-worker.ts",
} as const;

export function workerUrl(name: keyof typeof WORKER_MODULES): string {
  return new URL(WORKER_MODULES[name], import.meta.url).href;
}

/**
 * Where worker entry points live. This module sits at the root of src/ on
 * purpose: from source, URLs resolve against src/; inside the compiled binary
 * the bundle's base is the root of the embedded files, which build.ts lays
 * out the same way (entry points relative to src/). Every worker listed here
 * must also be in build.ts's WORKER_ENTRY_POINTS.
 */
import { moduleBaseUrl } from "./runtime-location.ts";

export const WORKER_MODULES = {
  vcpu: "./vcpu/worker.ts",
  io: "./devices/virtio/io-worker.ts",
} as const;

export function workerUrl(name: keyof typeof WORKER_MODULES): string {
  // workers.ts sits at the root of src/, so from source its own URL is the base; in the binary, the embedded root.
  return new URL(WORKER_MODULES[name], moduleBaseUrl(import.meta.url)).href;
}

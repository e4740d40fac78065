/**
 * Virtio devices described as plain data, so the same description can be
 * posted to the I/O worker (which builds the live device) and checked on the
 * VMM thread first (so a bad drive fails the VM build, not the guest).
 */
import { VirtioBlock } from "./block.ts";
import type { VirtioDevice } from "./device.ts";
import { VirtioRng } from "./rng.ts";

export type VirtioDeviceSpec =
  | {
      readonly kind: "block";
      readonly path: string;
      readonly readOnly: boolean;
      /** Serial the guest reads (GET_ID). */
      readonly id?: string;
      /** Boot from this drive: root=/dev/vdX. */
      readonly root?: boolean;
    }
  | { readonly kind: "rng" };

export interface LiveVirtioDevice extends VirtioDevice {
  readonly stats: object;
  close?(): void;
}

/** Opens the device's backends; throws an error naming the file for a bad drive. */
export function createVirtioDevice(spec: VirtioDeviceSpec): LiveVirtioDevice {
  switch (spec.kind) {
    case "block":
      return VirtioBlock.open({ path: spec.path, readOnly: spec.readOnly, ...(spec.id !== undefined ? { id: spec.id } : {}) });
    case "rng":
      return new VirtioRng();
  }
}

export function describeVirtioDevice(spec: VirtioDeviceSpec): string {
  return spec.kind === "block" ? `virtio-blk ${spec.path}${spec.readOnly ? " (read-only)" : ""}` : "virtio-rng";
}

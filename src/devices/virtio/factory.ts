/**
 * Virtio devices described as plain data, so the same description can be
 * posted to the I/O worker (which builds the live device) and checked on the
 * VMM thread first (so a bad drive fails the VM build, not the guest).
 */
import { VirtioBlock } from "./block.ts";
import type { VirtioDevice } from "./device.ts";
import { duplicateFd } from "../../ffi/syscalls.ts";
import { VirtioNet } from "./net.ts";
import { RateLimiter, timerfdTimer, type RateLimitConfig } from "./rate-limiter.ts";
import { VirtioRng } from "./rng.ts";
import { TapDevice } from "./tap.ts";
import { VirtioVsock } from "./vsock.ts";

export type VirtioDeviceSpec =
  | {
      readonly kind: "block";
      readonly path: string;
      readonly readOnly: boolean;
      /** Serial the guest reads (GET_ID). */
      readonly id?: string;
      /** Boot from this drive: root=/dev/vdX. */
      readonly root?: boolean;
      readonly rateLimit?: RateLimitConfig;
    }
  | { readonly kind: "rng" }
  | {
      readonly kind: "net";
      /** An existing tap, or one Volt creates (needs CAP_NET_ADMIN). */
      readonly tap: string;
      readonly mac?: string;
      /** Set by the VMM thread, which opens the tap once (re-opening would destroy a tap Volt created). */
      readonly opened?: { readonly fd: number; readonly offloadCapabilities: number; readonly created: boolean };
      /** Limits on what the guest receives and sends. */
      readonly rxRateLimit?: RateLimitConfig;
      readonly txRateLimit?: RateLimitConfig;
    }
  | {
      readonly kind: "vsock";
      readonly guestCid: number;
      /** Host programs connect here; guest connections to port P go to `${udsPath}_${P}`. */
      readonly udsPath: string;
    };

export interface LiveVirtioDevice extends VirtioDevice {
  readonly stats: object;
  close?(): void;
}

/** Opens the device's backends; throws an error naming the file for a bad drive. */
export function createVirtioDevice(spec: VirtioDeviceSpec): LiveVirtioDevice {
  switch (spec.kind) {
    case "block": {
      const block = VirtioBlock.open({ path: spec.path, readOnly: spec.readOnly, ...(spec.id !== undefined ? { id: spec.id } : {}) });
      if (spec.rateLimit) block.setRateLimiter(new RateLimiter(spec.rateLimit, timerfdTimer()));
      return block;
    }
    case "rng":
      return new VirtioRng();
    case "net": {
      let net: VirtioNet;
      if (!spec.opened) {
        net = VirtioNet.open({ tap: spec.tap, ...(spec.mac !== undefined ? { mac: spec.mac } : {}) });
      } else {
        // The worker's own descriptor for the tap the VMM thread opened: each side closes its own.
        const tap = new TapDevice(duplicateFd(spec.opened.fd), spec.tap, { offloadCapabilities: spec.opened.offloadCapabilities, created: spec.opened.created });
        net = new VirtioNet(tap, spec.mac !== undefined ? { mac: spec.mac } : {});
      }
      net.setRateLimiters({
        ...(spec.rxRateLimit ? { rx: new RateLimiter(spec.rxRateLimit, timerfdTimer()) } : {}),
        ...(spec.txRateLimit ? { tx: new RateLimiter(spec.txRateLimit, timerfdTimer()) } : {}),
      });
      return net;
    }
    case "vsock":
      return VirtioVsock.open({ guestCid: spec.guestCid, udsPath: spec.udsPath });
  }
}

export function describeVirtioDevice(spec: VirtioDeviceSpec): string {
  switch (spec.kind) {
    case "block":
      return `virtio-blk ${spec.path}${spec.readOnly ? " (read-only)" : ""}`;
    case "rng":
      return "virtio-rng";
    case "net":
      return `virtio-net tap ${spec.tap}`;
    case "vsock":
      return `virtio-vsock cid ${spec.guestCid} at ${spec.udsPath}`;
  }
}

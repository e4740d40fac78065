/**
 * virtio-rng (virtio 1.2, section 5.4): the guest asks for entropy by queuing
 * device-writable buffers; Volt fills them from the host's CSPRNG
 * (crypto.getRandomValues, which is seeded from getrandom(2)).
 *
 * Decisions:
 * - At most RNG_MAX_BYTES_PER_CHAIN per chain: the guest chooses buffer
 *   sizes (up to 4 GiB each), and the I/O worker it would keep busy also
 *   serves the VM's other devices. Linux asks for far less (a page or so),
 *   and the used length tells it how much it got.
 * - Device-readable buffers in a chain are skipped: the request queue has no
 *   driver-to-device data.
 * - A buffer that is not guest RAM ends the chain with what was filled so far.
 */
import type { GuestMemoryView } from "../../memory/guest-memory.ts";
import {
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_ID,
  featureBit,
  type ActivationContext,
  type DescriptorChain,
  type QueueHandle,
  type VirtioDevice,
} from "./device.ts";

export const RNG_QUEUE_SIZE = 256;
export const RNG_MAX_BYTES_PER_CHAIN = 64 * 1024;
/** Web Crypto refuses more than 65536 bytes per getRandomValues call. */
const MAX_RANDOM_PIECE = 65536;

export interface RngStats {
  requests: number;
  bytes: number;
}

export class VirtioRng implements VirtioDevice {
  readonly deviceType = VIRTIO_ID.RNG;
  readonly queueMaxSizes = [RNG_QUEUE_SIZE] as const;
  readonly features = featureBit(VIRTIO_F_RING_EVENT_IDX);
  readonly config = new Uint8Array(0);
  readonly stats: RngStats = { requests: 0, bytes: 0 };

  private memory: GuestMemoryView | undefined;
  private queue: QueueHandle | undefined;

  activate(context: ActivationContext): void {
    const queue = context.queues[0];
    if (!queue) throw new Error("virtio-rng activated without its request queue");
    this.memory = context.memory;
    this.queue = queue;
  }

  /** Fills every available chain, then interrupts the guest at most once. Throws only if `pop()` does. */
  processQueue(index: number): void {
    const queue = this.queue;
    if (index !== 0 || !queue) return;
    for (let chain = queue.pop(); chain !== undefined; chain = queue.pop()) {
      const filled = this.fill(chain);
      this.stats.requests++;
      this.stats.bytes += filled;
      queue.addUsed(chain.head, filled);
    }
    queue.notifyIfNeeded();
  }

  reset(): void {
    this.memory = undefined;
    this.queue = undefined;
  }

  private fill(chain: DescriptorChain): number {
    const memory = this.memory!;
    let filled = 0;
    for (const buffer of chain.buffers) {
      if (filled === RNG_MAX_BYTES_PER_CHAIN) break;
      if (!buffer.writable) continue;
      const length = Math.min(buffer.length, RNG_MAX_BYTES_PER_CHAIN - filled);
      let view: Uint8Array;
      try {
        view = memory.slice(buffer.address, length);
      } catch {
        break;
      }
      for (let done = 0; done < length; done += MAX_RANDOM_PIECE) {
        crypto.getRandomValues(view.subarray(done, Math.min(length, done + MAX_RANDOM_PIECE)));
      }
      filled += length;
    }
    return filled;
  }
}

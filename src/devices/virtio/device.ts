/**
 * The contract between Volt's virtio pieces, kept in one small file so the
 * transport, the virtqueue and each device can be written and tested apart.
 *
 * Threads (see docs/notes.md, "virtio"): the virtio-mmio transport's registers
 * are served on whichever vCPU worker takes the MMIO exit, over shared state
 * (a SharedArrayBuffer); the devices themselves run on one I/O worker per VM,
 * woken by KVM ioeventfds when the driver notifies a queue, and they interrupt
 * the guest through KVM irqfds. So the data path never runs JS on a vCPU.
 */
import type { GuestMemoryView } from "../../memory/guest-memory.ts";

/** Device IDs (virtio 1.2, section 5). */
export const VIRTIO_ID = { NET: 1, BLOCK: 2, RNG: 4, VSOCK: 19 } as const;

/** Feature bits the transport or the ring layout own (virtio 1.2, section 6). */
export const VIRTIO_F_RING_INDIRECT_DESC = 28;
export const VIRTIO_F_RING_EVENT_IDX = 29;
export const VIRTIO_F_VERSION_1 = 32;

export function featureBit(bit: number): bigint {
  return 1n << BigInt(bit);
}

/** One guest buffer of a descriptor chain, already checked to lie inside guest RAM. */
export interface DescriptorBuffer {
  readonly address: number;
  readonly length: number;
  /** Device-writable (VIRTQ_DESC_F_WRITE): the device fills it; otherwise the device only reads it. */
  readonly writable: boolean;
}

/** A descriptor chain taken from the available ring; give `head` back with `SplitQueue.addUsed`. */
export interface DescriptorChain {
  readonly head: number;
  readonly buffers: readonly DescriptorBuffer[];
}

/** Where the driver put one queue, as the transport recorded it. */
export interface QueueConfig {
  /** Queue size chosen by the driver (a power of two, 1..max). */
  readonly size: number;
  readonly ready: boolean;
  readonly descriptorTable: number;
  /** The "driver area" (available ring). */
  readonly availableRing: number;
  /** The "device area" (used ring). */
  readonly usedRing: number;
}

/** What the I/O worker hands a device when the driver sets DRIVER_OK. */
export interface ActivationContext {
  readonly memory: GuestMemoryView;
  /** The features the driver accepted (a subset of the device's `features`). */
  readonly ackedFeatures: bigint;
  readonly queues: readonly QueueHandle[];
}

/**
 * A queue as a device sees it: take chains, return them, and interrupt the
 * guest when the ring's notification rules (EVENT_IDX or flags) ask for it.
 */
export interface QueueHandle {
  /** The ring size the driver chose (0 for a queue the driver left unset). */
  readonly size: number;
  /** Next chain, or undefined when the available ring is empty. Throws VirtqueueError on a broken driver. */
  pop(): DescriptorChain | undefined;
  /** Return a chain; `written` = bytes the device wrote into its writable buffers. */
  addUsed(head: number, written: number): void;
  /**
   * Return several chains that the driver must see together (one packet over
   * mergeable receive buffers): the used index moves once, after all of them.
   */
  addUsedBatch(entries: readonly { readonly head: number; readonly written: number }[]): void;
  /** Interrupt the guest if the driver wants to hear about the used buffers added since the last call. */
  notifyIfNeeded(): void;
}

/**
 * A virtio device's behaviour. Devices do not throw for anything the guest
 * did: a malformed request gets an error status in the guest's buffers, and a
 * driver that breaks the ring gets the device marked as needing a reset.
 */
export interface VirtioDevice {
  readonly deviceType: number;
  /** Maximum size of each queue (the transport's QueueNumMax). */
  readonly queueMaxSizes: readonly number[];
  /** Device feature bits offered (VIRTIO_F_VERSION_1 is added by the transport). */
  readonly features: bigint;
  /** Device configuration space as the driver reads it (little-endian fields). */
  readonly config: Uint8Array;
  activate(context: ActivationContext): void;
  /** The driver notified queue `index` (or its backend became ready): process what is available. */
  processQueue(index: number): void;
  /** The driver reset the device: drop queues, keep backends. */
  reset(): void;
  /**
   * Host file descriptors the I/O worker should watch for this device (a TAP
   * device, sockets), asked again after every round of work since the set may
   * change (vsock connections come and go). `events` is poll(2)'s POLLIN /
   * POLLOUT mask. Devices without host-side I/O leave this out.
   */
  pollFds?(): readonly BackendPoll[];
  /** A watched descriptor is ready (`revents` from poll(2)): move what can be moved. */
  processBackend?(fd: number, revents: number): void;
  /** Release host resources (files, sockets) when the VM ends. */
  close?(): void;
  /**
   * Called once after a snapshot restore brought the device back up: host
   * connections did not survive (vsock tells its driver so).
   */
  restored?(): void;
}

export interface BackendPoll {
  readonly fd: number;
  readonly events: number;
}

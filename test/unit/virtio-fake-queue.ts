/**
 * A QueueHandle for device unit tests: the test queues chains, the device
 * pops them, and the test reads back what was returned and how often the
 * guest would have been interrupted.
 */
import type { DescriptorChain, QueueHandle } from "../../src/devices/virtio/device.ts";

export class FakeQueue implements QueueHandle {
  readonly chains: DescriptorChain[] = [];
  readonly used: { head: number; written: number }[] = [];
  /** How many entries each addUsed/addUsedBatch call published together. */
  readonly publishes: number[] = [];
  notifications = 0;
  pops = 0;
  /** Thrown by pop() once the queued chains run out (a broken driver). */
  popError: Error | undefined;
  size = 256;

  pop(): DescriptorChain | undefined {
    this.pops++;
    if (this.popError && this.chains.length === 0) throw this.popError;
    return this.chains.shift();
  }

  addUsed(head: number, written: number): void {
    this.addUsedBatch([{ head, written }]);
  }

  addUsedBatch(entries: readonly { readonly head: number; readonly written: number }[]): void {
    this.used.push(...entries.map(({ head, written }) => ({ head, written })));
    this.publishes.push(entries.length);
  }

  notifyIfNeeded(): void {
    this.notifications++;
  }
}

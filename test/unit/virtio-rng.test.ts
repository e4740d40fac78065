import { describe, expect, test } from "bun:test";
import {
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_ID,
  featureBit,
  type DescriptorBuffer,
  type DescriptorChain,
  type QueueHandle,
} from "../../src/devices/virtio/device.ts";
import { RNG_MAX_BYTES_PER_CHAIN, RNG_QUEUE_SIZE, VirtioRng } from "../../src/devices/virtio/rng.ts";
import { GuestMemoryView } from "../../src/memory/guest-memory.ts";
import { FakeQueue } from "./virtio-fake-queue.ts";

const MEMORY_SIZE = 1 << 20;
const SENTINEL = 0xa5;


function rng() {
  const device = new VirtioRng();
  const memory = new GuestMemoryView({ regions: [{ guestAddress: 0, size: MEMORY_SIZE, buffer: new SharedArrayBuffer(MEMORY_SIZE) }] });
  memory.slice(0, MEMORY_SIZE).fill(SENTINEL);
  const queue = new FakeQueue();
  device.activate({ memory, ackedFeatures: device.features, queues: [queue] });
  let next = 0x1000;
  let head = 0;
  const buffer = (length: number, writable = true): DescriptorBuffer => {
    const address = next;
    next += (length + 15) & ~15;
    return { address, length, writable };
  };
  const submit = (...buffers: DescriptorBuffer[]) => {
    queue.chains.push({ head, buffers });
    return head++;
  };
  const bytesOf = (b: DescriptorBuffer) => memory.read(b.address, b.length);
  return { device, memory, queue, buffer, submit, bytesOf };
}

const untouched = (bytes: Uint8Array) => bytes.every((b) => b === SENTINEL);
const distinct = (bytes: Uint8Array) => new Set(bytes).size;

describe("virtio-rng", () => {
  test("is device 4 with one queue, EVENT_IDX and an empty config", () => {
    const { device } = rng();
    expect(device.deviceType).toBe(VIRTIO_ID.RNG);
    expect(device.queueMaxSizes).toEqual([RNG_QUEUE_SIZE]);
    expect(device.features).toBe(featureBit(VIRTIO_F_RING_EVENT_IDX));
    expect(device.config.byteLength).toBe(0);
  });

  test("fills every writable buffer of a chain with random bytes; used length counts them", () => {
    const r = rng();
    const a = r.buffer(4096);
    const b = r.buffer(100);
    const head = r.submit(a, b);
    r.device.processQueue(0);
    expect(r.queue.used).toEqual([{ head, written: 4196 }]);
    // 4096 random bytes take nearly all 256 values; a constant or untouched fill takes one.
    expect(distinct(r.bytesOf(a))).toBeGreaterThan(200);
    expect(distinct(r.bytesOf(b))).toBeGreaterThan(50);
    expect(r.device.stats).toEqual({ requests: 1, bytes: 4196 });
  });

  test("two requests get different bytes", () => {
    const r = rng();
    const a = r.buffer(64);
    const b = r.buffer(64);
    r.submit(a);
    r.submit(b);
    r.device.processQueue(0);
    expect(r.bytesOf(a)).not.toEqual(r.bytesOf(b));
  });

  test("device-readable buffers are left alone", () => {
    const r = rng();
    const readable = r.buffer(256, false);
    const writable = r.buffer(256);
    r.submit(readable, writable);
    r.device.processQueue(0);
    expect(untouched(r.bytesOf(readable))).toBe(true);
    expect(r.queue.used[0]?.written).toBe(256);
  });

  test(`a chain gets at most ${RNG_MAX_BYTES_PER_CHAIN} bytes, over several buffers too`, () => {
    const r = rng();
    const first = r.buffer(40 * 1024);
    const second = r.buffer(40 * 1024);
    const third = r.buffer(1024);
    r.submit(first, second, third);
    r.device.processQueue(0);
    expect(r.queue.used[0]?.written).toBe(RNG_MAX_BYTES_PER_CHAIN);
    const secondBytes = r.bytesOf(second);
    const filledOfSecond = RNG_MAX_BYTES_PER_CHAIN - first.length;
    expect(untouched(secondBytes.subarray(filledOfSecond))).toBe(true);
    expect(untouched(secondBytes.subarray(filledOfSecond - 64, filledOfSecond))).toBe(false);
    expect(untouched(r.bytesOf(third))).toBe(true);

    // One huge buffer is capped the same way.
    const huge = r.buffer(512 * 1024);
    r.submit(huge);
    r.device.processQueue(0);
    expect(r.queue.used[1]?.written).toBe(RNG_MAX_BYTES_PER_CHAIN);
    expect(untouched(r.bytesOf(huge).subarray(RNG_MAX_BYTES_PER_CHAIN))).toBe(true);
  });

  test("a buffer outside guest RAM ends the chain with what was filled, without throwing", () => {
    const r = rng();
    const inside = r.buffer(128);
    const after = r.buffer(128);
    r.submit(inside, { address: MEMORY_SIZE - 16, length: 64, writable: true }, after);
    expect(() => r.device.processQueue(0)).not.toThrow();
    // The used length counts contiguous bytes from the first writable buffer, so nothing past the gap.
    expect(r.queue.used[0]?.written).toBe(128);
    expect(untouched(r.bytesOf(after))).toBe(true);
  });

  test("serves all available chains, then notifies once", () => {
    const r = rng();
    const heads = [r.submit(r.buffer(16)), r.submit(r.buffer(16)), r.submit(r.buffer(16))];
    r.device.processQueue(0);
    expect(r.queue.used.map((u) => u.head)).toEqual(heads);
    expect(r.queue.notifications).toBe(1);
  });

  test("a broken ring propagates; after reset, or for another queue, nothing is popped", () => {
    const r = rng();
    const broken = new Error("descriptor loop");
    r.queue.popError = broken;
    expect(() => r.device.processQueue(0)).toThrow(broken);

    const other = rng();
    other.submit(other.buffer(16));
    other.device.processQueue(1);
    expect(other.queue.pops).toBe(0);
    other.device.reset();
    other.device.processQueue(0);
    expect(other.queue.pops).toBe(0);
    expect(other.queue.used).toEqual([]);
  });
});

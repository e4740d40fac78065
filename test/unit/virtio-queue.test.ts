import { describe, expect, test } from "bun:test";
import type { QueueConfig } from "../../src/devices/virtio/device.ts";
import {
  SplitQueue,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VirtqueueError,
  vringNeedEvent,
} from "../../src/devices/virtio/queue.ts";
import { GuestMemoryView } from "../../src/memory/guest-memory.ts";

const MEMORY_SIZE = 0x20_0000; // 2 MiB: room for a 1 MiB indirect table
const DESC = 0x1000;
const AVAIL = 0x2000;
const USED = 0x3000;
const DATA = 0x8000;
const INDIRECT = 0x10_0000;

interface Buffer {
  readonly address: number | bigint;
  readonly length: number;
  readonly writable?: boolean;
}

/** The driver's half of a split queue, laid out by hand as Linux's virtio_ring would. */
class Driver {
  availIdx: number;
  private nextFree = 0;

  constructor(
    readonly memory: GuestMemoryView,
    readonly size: number,
    startIdx = 0,
  ) {
    this.availIdx = startIdx;
    this.setAvailIdx(startIdx);
  }

  descriptor(index: number, address: number | bigint, length: number, flags: number, next = 0, table = DESC): void {
    const at = table + 16 * index;
    this.memory.writeU64(at, BigInt(address));
    this.memory.writeU32(at + 8, length);
    this.memory.writeU16(at + 12, flags);
    this.memory.writeU16(at + 14, next);
  }

  /** Lays the buffers out as one chain in free descriptors; returns its head. */
  chain(buffers: readonly Buffer[]): number {
    const indices = buffers.map(() => this.nextFree++ % this.size);
    buffers.forEach((b, i) => {
      const last = i === buffers.length - 1;
      const flags = (b.writable ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT);
      this.descriptor(indices[i]!, b.address, b.length, flags, last ? 0 : indices[i + 1]!);
    });
    return indices[0]!;
  }

  /** Puts a head in the available ring and publishes the new idx. */
  publish(head: number): void {
    this.memory.writeU16(AVAIL + 4 + 2 * (this.availIdx % this.size), head);
    this.setAvailIdx((this.availIdx + 1) & 0xffff);
  }

  setAvailIdx(idx: number): void {
    this.availIdx = idx;
    this.memory.writeU16(AVAIL + 2, idx);
  }

  setAvailFlags(flags: number): void {
    this.memory.writeU16(AVAIL, flags);
  }

  setUsedEvent(idx: number): void {
    this.memory.writeU16(AVAIL + 4 + 2 * this.size, idx);
  }

  usedIdx(): number {
    return this.memory.readU16(USED + 2);
  }

  usedElement(slot: number): { id: number; len: number } {
    return { id: this.memory.readU32(USED + 4 + 8 * slot), len: this.memory.readU32(USED + 8 + 8 * slot) };
  }

  availEvent(): number {
    return this.memory.readU16(USED + 4 + 8 * this.size);
  }
}

function memoryOf(size = MEMORY_SIZE): GuestMemoryView {
  return new GuestMemoryView({ regions: [{ guestAddress: 0, size, buffer: new SharedArrayBuffer(size) }] });
}

function configOf(size: number, overrides: Partial<QueueConfig> = {}): QueueConfig {
  return { size, ready: true, descriptorTable: DESC, availableRing: AVAIL, usedRing: USED, ...overrides };
}

function setup(options: { size?: number; eventIdx?: boolean; start?: { lastAvailIndex: number; nextUsedIndex: number } } = {}) {
  const size = options.size ?? 8;
  const memory = memoryOf();
  const driver = new Driver(memory, size, options.start?.lastAvailIndex ?? 0);
  const interrupts = { count: 0 };
  const queue = new SplitQueue(memory, configOf(size), {
    eventIdx: options.eventIdx ?? false,
    interrupt: () => interrupts.count++,
    ...(options.start ? { start: options.start } : {}),
  });
  return { memory, driver, queue, interrupts };
}

/** Asserts the driver is called broken for the reason `reason` names (so another check cannot stand in). */
function expectBroken(action: () => unknown, reason: RegExp): void {
  let thrown: unknown;
  try {
    action();
  } catch (error) {
    thrown = error;
  }
  expect(thrown).toBeInstanceOf(VirtqueueError);
  expect((thrown as Error).message).toMatch(reason);
}

describe("SplitQueue: taking chains", () => {
  test("a readable-then-writable chain comes out whole, once", () => {
    const { driver, queue } = setup();
    const head = driver.chain([
      { address: DATA, length: 16 },
      { address: DATA + 0x100, length: 512 },
      { address: DATA + 0x1000, length: 1, writable: true },
    ]);
    driver.publish(head);
    expect(queue.pop()).toEqual({
      head,
      buffers: [
        { address: DATA, length: 16, writable: false },
        { address: DATA + 0x100, length: 512, writable: false },
        { address: DATA + 0x1000, length: 1, writable: true },
      ],
    });
    expect(queue.pop()).toBeUndefined();
    expect(queue.lastAvailIndex).toBe(1);
  });

  test("chains come out in the order the driver made them available", () => {
    const { driver, queue } = setup({ size: 4 });
    const heads = [0, 1, 2].map((i) => driver.chain([{ address: DATA + i * 0x100, length: 8 }]));
    // Publish out of descriptor order: the avail ring decides, not the table.
    for (const head of [heads[2]!, heads[0]!, heads[1]!]) driver.publish(head);
    expect([queue.pop()?.head, queue.pop()?.head, queue.pop()?.head, queue.pop()]).toEqual([heads[2], heads[0], heads[1], undefined]);
  });

  test("a full ring (exactly size entries pending) is fine", () => {
    const { driver, queue } = setup({ size: 4 });
    for (let i = 0; i < 4; i++) driver.publish(driver.chain([{ address: DATA, length: 1 }]));
    for (let i = 0; i < 4; i++) expect(queue.pop()).toBeDefined();
    expect(queue.pop()).toBeUndefined();
  });

  test("zero-length descriptors are skipped, and their address is never looked at", () => {
    const { driver, queue } = setup();
    const head = driver.chain([
      { address: DATA, length: 4 },
      { address: 0xffff_ffff_ffff_0000n, length: 0 },
      { address: DATA + 0x10, length: 4, writable: true },
    ]);
    driver.publish(head);
    expect(queue.pop()?.buffers).toEqual([
      { address: DATA, length: 4, writable: false },
      { address: DATA + 0x10, length: 4, writable: true },
    ]);
  });

  test("a buffer may end exactly at the end of guest memory", () => {
    const { driver, queue } = setup();
    driver.publish(driver.chain([{ address: MEMORY_SIZE - 8, length: 8, writable: true }]));
    expect(queue.pop()?.buffers).toEqual([{ address: MEMORY_SIZE - 8, length: 8, writable: true }]);
  });

  test("a chain may use every descriptor of the table", () => {
    const { driver, queue } = setup({ size: 4 });
    const head = driver.chain([0, 1, 2, 3].map((i) => ({ address: DATA + i, length: 1 })));
    driver.publish(head);
    expect(queue.pop()?.buffers.length).toBe(4);
  });
});

describe("SplitQueue: indirect descriptors", () => {
  function indirectTable(driver: Driver, entries: readonly { address: number; length: number; flags: number; next?: number }[]) {
    entries.forEach((e, i) => driver.descriptor(i, e.address, e.length, e.flags, e.next ?? 0, INDIRECT));
  }

  test("direct descriptors then one indirect table make a single chain", () => {
    const { driver, queue } = setup();
    indirectTable(driver, [
      { address: DATA + 0x100, length: 32, flags: VIRTQ_DESC_F_NEXT, next: 1 },
      { address: DATA + 0x200, length: 64, flags: VIRTQ_DESC_F_WRITE },
    ]);
    driver.descriptor(5, DATA, 16, VIRTQ_DESC_F_NEXT, 6);
    // The WRITE flag on the descriptor naming the table must be ignored (2.7.5.3.2).
    driver.descriptor(6, INDIRECT, 32, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE);
    driver.publish(5);
    expect(queue.pop()).toEqual({
      head: 5,
      buffers: [
        { address: DATA, length: 16, writable: false },
        { address: DATA + 0x100, length: 32, writable: false },
        { address: DATA + 0x200, length: 64, writable: true },
      ],
    });
  });

  test("an indirect chain may follow `next` in any order inside its table", () => {
    const { driver, queue } = setup();
    indirectTable(driver, [
      { address: DATA, length: 1, flags: VIRTQ_DESC_F_NEXT, next: 2 },
      { address: DATA + 0x20, length: 3, flags: VIRTQ_DESC_F_WRITE },
      { address: DATA + 0x10, length: 2, flags: VIRTQ_DESC_F_NEXT, next: 1 },
    ]);
    driver.descriptor(0, INDIRECT, 48, VIRTQ_DESC_F_INDIRECT);
    driver.publish(0);
    expect(queue.pop()?.buffers.map((b) => b.length)).toEqual([1, 2, 3]);
  });

  test("an indirect table outside guest memory", () => {
    const { driver, queue } = setup();
    driver.descriptor(0, MEMORY_SIZE - 16, 32, VIRTQ_DESC_F_INDIRECT);
    driver.publish(0);
    expectBroken(() => queue.pop(), /indirect table .* not guest RAM/);
  });

  test("an indirect table whose length is not a multiple of 16, or zero", () => {
    for (const length of [17, 8, 0]) {
      const { driver, queue } = setup();
      driver.descriptor(0, INDIRECT, length, VIRTQ_DESC_F_INDIRECT);
      driver.publish(0);
      expectBroken(() => queue.pop(), /indirect table length/);
    }
  });

  test("an indirect table larger than a u16 `next` can address", () => {
    const { driver, queue } = setup();
    driver.descriptor(0, 0, 16 * 0x10001, VIRTQ_DESC_F_INDIRECT);
    driver.publish(0);
    expectBroken(() => queue.pop(), /indirect table length/);
  });

  test("an indirect table naming another indirect table", () => {
    const { driver, queue } = setup();
    indirectTable(driver, [{ address: INDIRECT + 0x1000, length: 16, flags: VIRTQ_DESC_F_INDIRECT }]);
    driver.descriptor(0, INDIRECT + 0x1000, 16, 0, 0, INDIRECT + 0x1000);
    driver.descriptor(0, INDIRECT, 16, VIRTQ_DESC_F_INDIRECT);
    driver.publish(0);
    expectBroken(() => queue.pop(), /refers to another/);
  });

  test("an indirect descriptor with NEXT set", () => {
    const { driver, queue } = setup();
    indirectTable(driver, [{ address: DATA, length: 16, flags: 0 }]);
    driver.descriptor(0, INDIRECT, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
    driver.descriptor(1, DATA, 16, 0);
    driver.publish(0);
    expectBroken(() => queue.pop(), /NEXT set/);
  });

  test("a `next` past the end of the indirect table (though inside the queue size)", () => {
    const { driver, queue } = setup({ size: 8 });
    indirectTable(driver, [
      { address: DATA, length: 1, flags: VIRTQ_DESC_F_NEXT, next: 1 },
      { address: DATA, length: 1, flags: VIRTQ_DESC_F_NEXT, next: 2 },
      { address: DATA, length: 1, flags: 0 }, // outside the 2-entry table below
    ]);
    driver.descriptor(0, INDIRECT, 32, VIRTQ_DESC_F_INDIRECT);
    driver.publish(0);
    expectBroken(() => queue.pop(), /reaches index 2 of 2/);
  });

  test("a loop inside an indirect table", () => {
    const { driver, queue } = setup();
    indirectTable(driver, [
      { address: DATA, length: 0x8000, flags: VIRTQ_DESC_F_NEXT, next: 1 },
      { address: DATA, length: 0x8000, flags: VIRTQ_DESC_F_NEXT, next: 0 },
    ]);
    driver.descriptor(0, INDIRECT, 32, VIRTQ_DESC_F_INDIRECT);
    driver.publish(0);
    expectBroken(() => queue.pop(), /loop/);
  });

  test("a chain longer than 4 GiB in all (same bytes named again and again)", () => {
    const { driver, queue } = setup();
    const entries = 0x8001; // 0x8001 × 128 KiB = 4 GiB + 128 KiB
    for (let i = 0; i < entries; i++) {
      driver.descriptor(i, 0, 0x2_0000, i === entries - 1 ? 0 : VIRTQ_DESC_F_NEXT, i + 1, INDIRECT);
    }
    driver.descriptor(0, INDIRECT, 16 * entries, VIRTQ_DESC_F_INDIRECT);
    driver.publish(0);
    expectBroken(() => queue.pop(), /longer than 4 GiB/);
  });
});

describe("SplitQueue: a broken driver is a VirtqueueError, never a hang or a RangeError", () => {
  test("a descriptor loop", () => {
    const { driver, queue } = setup({ size: 4 });
    // Large buffers so that, without the loop check, the 4 GiB check would fire instead (and the message differ).
    driver.descriptor(0, DATA, 0x8000, VIRTQ_DESC_F_NEXT, 1);
    driver.descriptor(1, DATA, 0x8000, VIRTQ_DESC_F_NEXT, 2);
    driver.descriptor(2, DATA, 0x8000, VIRTQ_DESC_F_NEXT, 0);
    driver.publish(0);
    expectBroken(() => queue.pop(), /loop/);
  });

  test("a loop of zero-length descriptors (which carry no bytes to add up)", () => {
    const { driver, queue } = setup({ size: 4 });
    driver.descriptor(0, DATA, 0, VIRTQ_DESC_F_NEXT, 0);
    driver.publish(0);
    expectBroken(() => queue.pop(), /loop/);
  });

  test("a `next` index at or past the queue size", () => {
    const { driver, queue } = setup({ size: 4 });
    driver.descriptor(0, DATA, 8, VIRTQ_DESC_F_NEXT, 4);
    // Fill the memory past the table with a valid-looking descriptor, as a driver would find there.
    driver.descriptor(4, DATA, 8, 0);
    driver.publish(0);
    expectBroken(() => queue.pop(), /reaches index 4 of 4/);
  });

  test("a head index at or past the queue size", () => {
    const { driver, queue } = setup({ size: 4 });
    driver.descriptor(4, DATA, 8, 0);
    driver.publish(4);
    expectBroken(() => queue.pop(), /names descriptor 4 of 4/);
  });

  test("an available idx more than the queue size ahead", () => {
    const { driver, queue } = setup({ size: 4 });
    for (let i = 0; i < 4; i++) driver.chain([{ address: DATA, length: 1 }]);
    driver.setAvailIdx(5);
    expectBroken(() => queue.pop(), /more than the queue size/);
  });

  test("an available idx that went backwards (looks like a jump of nearly 2^16)", () => {
    const { driver, queue } = setup({ size: 4 });
    driver.publish(driver.chain([{ address: DATA, length: 1 }]));
    queue.pop();
    driver.setAvailIdx(0);
    expectBroken(() => queue.pop(), /more than the queue size/);
  });

  test("a buffer outside guest memory", () => {
    const { driver, queue } = setup();
    driver.publish(driver.chain([{ address: MEMORY_SIZE + 0x1000, length: 8 }]));
    expectBroken(() => queue.pop(), /not guest RAM/);
  });

  test("a buffer crossing the end of guest memory", () => {
    const { driver, queue } = setup();
    driver.publish(driver.chain([{ address: MEMORY_SIZE - 8, length: 16, writable: true }]));
    expectBroken(() => queue.pop(), /not guest RAM/);
  });

  test("a buffer whose address + length wraps past 2^64 into guest memory", () => {
    const { driver, queue } = setup();
    driver.publish(driver.chain([{ address: 0xffff_ffff_ffff_f000n, length: 0x2000 }]));
    expectBroken(() => queue.pop(), /not guest RAM/);
  });

  test("a buffer just below 2^53, where float arithmetic could round", () => {
    const { driver, queue } = setup();
    driver.publish(driver.chain([{ address: 2n ** 53n - 8n, length: 16 }]));
    expectBroken(() => queue.pop(), /not guest RAM/);
  });

  test("a device-readable buffer after a device-writable one", () => {
    const { driver, queue } = setup();
    driver.publish(
      driver.chain([
        { address: DATA, length: 8, writable: true },
        { address: DATA + 8, length: 8 },
      ]),
    );
    expectBroken(() => queue.pop(), /readable buffer follows a device-writable/);
  });
});

describe("SplitQueue: configuration checks", () => {
  const interrupt = () => {};
  const build = (config: QueueConfig) => () => new SplitQueue(memoryOf(), config, { eventIdx: false, interrupt });

  test.each([0, 3, 6, 65536, 1.5, -2])("size %p is refused", (size) => {
    expectBroken(build(configOf(size)), /power of two/);
  });

  test.each([1, 2, 256, 32768])("size %p is accepted", (size) => {
    const config = configOf(size, { descriptorTable: 0x10_0000, availableRing: 0x8_0000, usedRing: 0xa_0000 });
    expect(build(config)().size).toBe(size);
  });

  test.each([
    ["descriptorTable", DESC + 8, /descriptor table .* 16-byte aligned guest memory/],
    ["availableRing", AVAIL + 1, /available ring .* 2-byte aligned guest memory/],
    ["usedRing", USED + 2, /used ring .* 4-byte aligned guest memory/],
  ] as const)("%s misaligned is refused", (field, address, reason) => {
    expectBroken(build(configOf(8, { [field]: address })), reason);
  });

  test.each([
    ["descriptorTable", MEMORY_SIZE - 16 * 4], // starts inside, ends outside
    ["availableRing", MEMORY_SIZE - 16],
    ["usedRing", MEMORY_SIZE - 32],
    ["usedRing", MEMORY_SIZE + 0x1000],
  ] as const)("%s at %p, not entirely guest RAM, is refused", (field, address) => {
    expectBroken(build(configOf(8, { [field]: address })), /not guest RAM/);
  });

  test("an address at 2^53 or beyond is refused", () => {
    expectBroken(build(configOf(8, { descriptorTable: 2 ** 53 })), /descriptor table/);
  });

  test("each area is checked for its whole size, used_event and avail_event included", () => {
    // The available ring is 6 + 2n bytes: ending 2 bytes early must fail.
    expectBroken(build(configOf(8, { availableRing: MEMORY_SIZE - (6 + 2 * 8) + 2 })), /available ring .* not guest RAM/);
    const used = MEMORY_SIZE - (6 + 8 * 8) - 2; // 4-aligned and just fits
    expect(build(configOf(8, { usedRing: used }))().size).toBe(8);
    expectBroken(build(configOf(8, { usedRing: used + 4 })), /used ring .* not guest RAM/);
  });

  test("a queue the driver did not make ready is refused", () => {
    expectBroken(build(configOf(8, { ready: false })), /not ready/);
  });

  test("restore indices must be u16", () => {
    const config = configOf(8);
    expect(() => new SplitQueue(memoryOf(), config, { eventIdx: false, interrupt, start: { lastAvailIndex: 0x10000, nextUsedIndex: 0 } })).toThrow(RangeError);
  });
});

describe("SplitQueue: the used ring", () => {
  test("addUsed writes {id, len} in the next slot and then publishes used idx", () => {
    const { driver, queue } = setup({ size: 4 });
    driver.publish(driver.chain([{ address: DATA, length: 64, writable: true }]));
    const chain = queue.pop()!;
    expect(driver.usedIdx()).toBe(0);
    queue.addUsed(chain.head, 42);
    expect(driver.usedIdx()).toBe(1);
    expect(driver.usedElement(0)).toEqual({ id: chain.head, len: 42 });
    expect(queue.nextUsedIndex).toBe(1);
  });

  test("addUsedBatch writes every element before used idx moves, and moves it once", () => {
    const { driver, queue, memory } = setup({ size: 4 });
    for (let i = 0; i < 3; i++) driver.publish(driver.chain([{ address: DATA, length: 8, writable: true }]));
    const chains = [queue.pop()!, queue.pop()!, queue.pop()!];
    // Watch every store to used idx: a driver polling the ring must never see a partial batch.
    const seen: number[] = [];
    const realStore = Atomics.store;
    (Atomics as { store: typeof Atomics.store }).store = ((array: Uint16Array, index: number, value: number) => {
      seen.push(value);
      return realStore(array, index, value);
    }) as typeof Atomics.store;
    try {
      queue.addUsedBatch(chains.map((c, i) => ({ head: c.head, written: 10 + i })));
    } finally {
      (Atomics as { store: typeof Atomics.store }).store = realStore;
    }
    expect(seen).toEqual([3]);
    expect(driver.usedIdx()).toBe(3);
    expect([0, 1, 2].map((slot) => driver.usedElement(slot).len)).toEqual([10, 11, 12]);
    expect(() => queue.addUsedBatch([{ head: 9, written: 0 }])).toThrow(RangeError);
    expect(memory.readU16(USED + 2)).toBe(3); // a refused batch publishes nothing
  });

  test("used slots wrap around the ring while idx keeps counting", () => {
    const { driver, queue } = setup({ size: 4 });
    for (let i = 0; i < 6; i++) {
      driver.publish(driver.chain([{ address: DATA, length: 8, writable: true }]));
      const chain = queue.pop()!;
      queue.addUsed(chain.head, 100 + i);
    }
    expect(driver.usedIdx()).toBe(6);
    expect(driver.usedElement(0).len).toBe(104);
    expect(driver.usedElement(1).len).toBe(105);
    expect(driver.usedElement(2).len).toBe(102);
  });

  test("the device's own mistakes in addUsed are RangeErrors, not VirtqueueErrors", () => {
    const { queue } = setup({ size: 4 });
    expect(() => queue.addUsed(4, 0)).toThrow(RangeError);
    expect(() => queue.addUsed(0, 2 ** 32)).toThrow(RangeError);
    expect(() => queue.addUsed(0, 2 ** 32)).not.toThrow(VirtqueueError);
  });
});

describe("SplitQueue: 16-bit index wrap-around", () => {
  test("from a restored position just below 2^16, avail and used idx wrap to small numbers", () => {
    const { driver, queue } = setup({ size: 4, start: { lastAvailIndex: 0xfffe, nextUsedIndex: 0xfffe } });
    expect([queue.lastAvailIndex, queue.nextUsedIndex]).toEqual([0xfffe, 0xfffe]);
    const heads = [0, 1, 2, 3].map(() => driver.chain([{ address: DATA, length: 8, writable: true }]));
    for (const head of heads) driver.publish(head);
    expect(driver.availIdx).toBe(2);
    const popped = [0, 1, 2, 3].map(() => queue.pop()!.head);
    expect(popped).toEqual(heads);
    expect(queue.pop()).toBeUndefined();
    expect(queue.lastAvailIndex).toBe(2);
    for (const head of popped) queue.addUsed(head, head + 1);
    expect(driver.usedIdx()).toBe(2);
    // 0xfffe % 4 = 2: the first element went to slot 2.
    expect(driver.usedElement(2)).toEqual({ id: heads[0]!, len: heads[0]! + 1 });
    expect(driver.usedElement(1)).toEqual({ id: heads[3]!, len: heads[3]! + 1 });
  });

  test("a long run crosses 2^16 naturally", () => {
    const { driver, queue } = setup({ size: 2 });
    const head = driver.chain([{ address: DATA, length: 1 }]);
    for (let i = 0; i < 0x10000 + 5; i++) {
      driver.publish(head);
      const chain = queue.pop();
      expect(chain?.head).toBe(head);
      queue.addUsed(head, 0);
    }
    expect(queue.lastAvailIndex).toBe(5);
    expect(driver.usedIdx()).toBe(5);
    expect(queue.pop()).toBeUndefined();
  });
});

describe("SplitQueue: interrupt suppression", () => {
  function completeOne(driver: Driver, queue: SplitQueue): void {
    driver.publish(driver.chain([{ address: DATA, length: 8, writable: true }]));
    queue.addUsed(queue.pop()!.head, 8);
  }

  test("without EVENT_IDX: one interrupt per notifyIfNeeded that has something new", () => {
    const { driver, queue, interrupts } = setup();
    queue.notifyIfNeeded();
    expect(interrupts.count).toBe(0);
    completeOne(driver, queue);
    completeOne(driver, queue);
    queue.notifyIfNeeded();
    expect(interrupts.count).toBe(1);
    queue.notifyIfNeeded();
    expect(interrupts.count).toBe(1);
  });

  test("without EVENT_IDX: VIRTQ_AVAIL_F_NO_INTERRUPT is honoured", () => {
    const { driver, queue, interrupts } = setup();
    driver.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
    completeOne(driver, queue);
    queue.notifyIfNeeded();
    expect(interrupts.count).toBe(0);
    driver.setAvailFlags(0);
    completeOne(driver, queue);
    queue.notifyIfNeeded();
    expect(interrupts.count).toBe(1);
  });

  test("without EVENT_IDX: used_event is ignored and avail_event never written", () => {
    const { memory, driver, queue, interrupts } = setup();
    memory.writeU16(USED + 4 + 8 * 8, 0xabcd);
    driver.setUsedEvent(0x100);
    completeOne(driver, queue);
    expect(queue.pop()).toBeUndefined();
    queue.notifyIfNeeded();
    expect(interrupts.count).toBe(1);
    expect(driver.availEvent()).toBe(0xabcd);
  });

  test("with EVENT_IDX: interrupt only when used idx steps past used_event", () => {
    const { driver, queue, interrupts } = setup({ eventIdx: true });
    driver.setUsedEvent(0);
    completeOne(driver, queue); // used idx 0 -> 1 passes 0
    queue.notifyIfNeeded();
    expect(interrupts.count).toBe(1);

    driver.setUsedEvent(4); // "tell me when entry 4 is used" (idx 4 -> 5)
    const seen: number[] = [];
    for (let i = 0; i < 5; i++) {
      completeOne(driver, queue);
      const before = interrupts.count;
      queue.notifyIfNeeded();
      seen.push(interrupts.count - before);
    }
    // used idx stepped 1->2, 2->3, 3->4, 4->5, 5->6: only 4 -> 5 passes used_event 4.
    expect(seen).toEqual([0, 0, 0, 1, 0]);
  });

  test("with EVENT_IDX: only entries since the last notifyIfNeeded count", () => {
    const { driver, queue, interrupts } = setup({ eventIdx: true });
    driver.setUsedEvent(0);
    completeOne(driver, queue);
    queue.notifyIfNeeded();
    expect(interrupts.count).toBe(1);
    // The driver has not moved used_event on: entry 0 was already signalled.
    completeOne(driver, queue);
    queue.notifyIfNeeded();
    expect(interrupts.count).toBe(1);
  });

  test("with EVENT_IDX: a batch passing used_event interrupts once", () => {
    const { driver, queue, interrupts } = setup({ eventIdx: true });
    driver.setUsedEvent(1);
    for (let i = 0; i < 3; i++) completeOne(driver, queue);
    queue.notifyIfNeeded();
    expect(interrupts.count).toBe(1);
  });

  test("with EVENT_IDX: VIRTQ_AVAIL_F_NO_INTERRUPT is ignored (2.7.7.2)", () => {
    const { driver, queue, interrupts } = setup({ eventIdx: true });
    driver.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
    driver.setUsedEvent(0);
    completeOne(driver, queue);
    queue.notifyIfNeeded();
    expect(interrupts.count).toBe(1);
  });

  test("with EVENT_IDX: 2^16 entries without a look still interrupt (the idx difference wrapped to 0)", () => {
    const { driver, queue, interrupts } = setup({ size: 2, eventIdx: true });
    driver.setUsedEvent(0x8000);
    const head = driver.chain([{ address: DATA, length: 1, writable: true }]);
    for (let i = 0; i < 0x10000; i++) {
      driver.publish(head);
      queue.addUsed(queue.pop()!.head, 1);
    }
    queue.notifyIfNeeded();
    expect(interrupts.count).toBe(1);
  });

  test("with EVENT_IDX: finding the ring empty publishes avail_event = the next index wanted", () => {
    const { driver, queue } = setup({ eventIdx: true });
    driver.memory.writeU16(USED + 4 + 8 * 8, 0xabcd);
    expect(queue.pop()).toBeUndefined();
    expect(driver.availEvent()).toBe(0);
    for (let i = 0; i < 3; i++) driver.publish(driver.chain([{ address: DATA, length: 1 }]));
    for (let i = 0; i < 3; i++) queue.pop();
    // Busy: not re-armed until the ring is seen empty.
    expect(driver.availEvent()).toBe(0);
    expect(queue.pop()).toBeUndefined();
    expect(driver.availEvent()).toBe(3);
  });

  test("vring_need_event matches the spec's formula at the 16-bit edges", () => {
    expect(vringNeedEvent(0xffff, 0x0000, 0xffff)).toBe(true);
    expect(vringNeedEvent(0xfffe, 0x0000, 0xffff)).toBe(false);
    expect(vringNeedEvent(0x0001, 0x0003, 0xfffe)).toBe(true);
    expect(vringNeedEvent(0x0003, 0x0003, 0xfffe)).toBe(false);
  });
});

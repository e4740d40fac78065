/**
 * The virtio I/O thread without KVM: real eventfds stand in for KVM's
 * ioeventfd (the test signals them as KVM would on a QueueNotify write) and
 * irqfd (the test polls it as KVM would). A "driver" in the test sets the
 * device up through the same transport class the vCPU workers use, over the
 * same shared state, so this covers the thread hand-offs the VMM relies on.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { VIRTIO_ID } from "../../src/devices/virtio/device.ts";
import { closeVirtioEventFds, IoThread, type VirtioShared } from "../../src/devices/virtio/io-thread.ts";
import { VIRTIO_MMIO, VIRTIO_STATUS, VirtioMmioTransport, createVirtioMmioState } from "../../src/devices/virtio/mmio.ts";
import { RNG_QUEUE_SIZE } from "../../src/devices/virtio/rng.ts";
import { drainEventfd, eventfd, pollReadable, signalEventfd } from "../../src/ffi/syscalls.ts";
import { GuestMemoryView, type SharedGuestMemory } from "../../src/memory/guest-memory.ts";

const MEMORY_SIZE = 1 << 20;
const DESC = 0x1000;
const AVAIL = 0x2000;
const USED = 0x3000;
const BUFFER = 0x8000;
const QUEUE_SIZE = 16;

const shared: SharedGuestMemory = { regions: [{ guestAddress: 0, size: MEMORY_SIZE, buffer: new SharedArrayBuffer(MEMORY_SIZE) }] };
const memory = new GuestMemoryView(shared);

const virtio: VirtioShared = {
  controlEventFd: eventfd(),
  slots: [
    {
      spec: { kind: "rng" },
      mmioBase: 0xc000_0000,
      irq: 5,
      transport: createVirtioMmioState({ deviceType: VIRTIO_ID.RNG, queueMaxSizes: [RNG_QUEUE_SIZE], features: 0n, config: new Uint8Array(0) }),
      queueEventFds: [eventfd()],
      irqEventFd: eventfd(),
    },
  ],
};
const slot = virtio.slots[0]!;
afterAll(() => closeVirtioEventFds(virtio));

// What a vCPU worker builds for this slot (see src/vmm/machine.ts).
const transport = new VirtioMmioTransport(slot.transport, {
  onQueueNotify: (queue) => signalEventfd(slot.queueEventFds[queue]!),
  onStatusChange: () => signalEventfd(virtio.controlEventFd),
  interrupt: { trigger: () => signalEventfd(slot.irqEventFd) },
});

function write32(offset: number, value: number): void {
  const data = new Uint8Array(4);
  new DataView(data.buffer).setUint32(0, value, true);
  transport.write(offset, data);
}

function read32(offset: number): number {
  const data = new Uint8Array(4);
  transport.read(offset, data);
  return new DataView(data.buffer).getUint32(0, true);
}

/** Linux's virtio_mmio probe + virtio-rng's queue setup, register by register. */
function driverStartsDevice(): void {
  write32(VIRTIO_MMIO.STATUS, 0);
  write32(VIRTIO_MMIO.STATUS, VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER);
  write32(VIRTIO_MMIO.DRIVER_FEATURES_SEL, 1);
  write32(VIRTIO_MMIO.DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1 (bit 32)
  write32(VIRTIO_MMIO.STATUS, VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER | VIRTIO_STATUS.FEATURES_OK);
  expect(read32(VIRTIO_MMIO.STATUS) & VIRTIO_STATUS.FEATURES_OK).toBe(VIRTIO_STATUS.FEATURES_OK);
  write32(VIRTIO_MMIO.QUEUE_SEL, 0);
  write32(VIRTIO_MMIO.QUEUE_NUM, QUEUE_SIZE);
  write32(VIRTIO_MMIO.QUEUE_DESC_LOW, DESC);
  write32(VIRTIO_MMIO.QUEUE_DRIVER_LOW, AVAIL);
  write32(VIRTIO_MMIO.QUEUE_DEVICE_LOW, USED);
  write32(VIRTIO_MMIO.QUEUE_READY, 1);
  write32(VIRTIO_MMIO.STATUS, VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER | VIRTIO_STATUS.FEATURES_OK | VIRTIO_STATUS.DRIVER_OK);
}

/** Queues one device-writable buffer as descriptor `index` and publishes it. */
function driverQueuesBuffer(index: number, length: number): void {
  memory.writeU64(DESC + index * 16, BigInt(BUFFER + index * 0x100));
  memory.writeU32(DESC + index * 16 + 8, length);
  memory.writeU16(DESC + index * 16 + 12, 2); // VIRTQ_DESC_F_WRITE
  const availIdx = memory.readU16(AVAIL + 2);
  memory.writeU16(AVAIL + 4 + (availIdx % QUEUE_SIZE) * 2, index);
  memory.writeU16(AVAIL + 2, (availIdx + 1) & 0xffff);
}

describe("virtio I/O thread", () => {
  let io: IoThread;

  test("starts, follows DRIVER_OK through the control eventfd, serves a notified queue and raises the irqfd", async () => {
    io = await IoThread.start(shared, virtio);
    driverStartsDevice();
    driverQueuesBuffer(0, 64);
    signalEventfd(slot.queueEventFds[0]!); // what KVM does on the driver's QueueNotify write

    expect(pollReadable([slot.irqEventFd], 10_000)).toEqual([true]);
    drainEventfd(slot.irqEventFd);
    expect(memory.readU16(USED + 2)).toBe(1); // used idx
    expect(memory.readU32(USED + 4)).toBe(0); // id of the chain
    expect(memory.readU32(USED + 8)).toBe(64); // bytes written
    expect(memory.read(BUFFER, 64).some((byte) => byte !== 0)).toBe(true);
    expect(read32(VIRTIO_MMIO.INTERRUPT_STATUS) & 1).toBe(1);
    write32(VIRTIO_MMIO.INTERRUPT_ACK, 1);
  }, 30_000);

  test("a notification that arrives through the transport (no ioeventfd) is served too", () => {
    driverQueuesBuffer(1, 32);
    write32(VIRTIO_MMIO.QUEUE_NOTIFY, 0);
    expect(pollReadable([slot.irqEventFd], 10_000)).toEqual([true]);
    drainEventfd(slot.irqEventFd);
    expect(memory.readU16(USED + 2)).toBe(2);
    expect(memory.readU32(USED + 12 + 4)).toBe(32);
  }, 30_000);

  test("counters can be read while the thread runs and while it is paused", async () => {
    expect(await io.stats()).toEqual([{ kind: "rng", requests: 2, bytes: 64 + 32 }]);
  }, 30_000);

  test("pause reports where each queue stands and serves nothing until resume", async () => {
    const states = await io.pause();
    expect(await io.stats()).toEqual([{ kind: "rng", requests: 2, bytes: 64 + 32 }]);
    expect(states).toEqual([{ active: true, queues: [{ lastAvailIndex: 2, nextUsedIndex: 2 }] }]);
    driverQueuesBuffer(2, 8);
    drainEventfd(slot.irqEventFd);
    signalEventfd(slot.queueEventFds[0]!);
    expect(pollReadable([slot.irqEventFd], 200)).toEqual([false]);
    expect(memory.readU16(USED + 2)).toBe(2);
    await io.resume();
    expect(pollReadable([slot.irqEventFd], 10_000)).toEqual([true]);
    drainEventfd(slot.irqEventFd);
    expect(memory.readU16(USED + 2)).toBe(3);
  }, 30_000);

  test("a driver that breaks the ring gets DEVICE_NEEDS_RESET and an error report, and the thread keeps running", async () => {
    // An available index far beyond the queue size: a broken driver.
    memory.writeU16(AVAIL + 2, (memory.readU16(AVAIL + 2) + QUEUE_SIZE + 5) & 0xffff);
    signalEventfd(slot.queueEventFds[0]!);
    for (let i = 0; i < 200 && io.deviceErrors.length === 0; i++) await Bun.sleep(10);
    expect(io.deviceErrors[0]).toContain("virtio device 0: driver error");
    expect(read32(VIRTIO_MMIO.STATUS) & VIRTIO_STATUS.DEVICE_NEEDS_RESET).toBe(VIRTIO_STATUS.DEVICE_NEEDS_RESET);

    // After a reset and a fresh start the device works again.
    memory.slice(AVAIL, 0x100).fill(0);
    memory.slice(USED, 0x100).fill(0);
    driverStartsDevice();
    driverQueuesBuffer(0, 16);
    drainEventfd(slot.irqEventFd); // the config-change interrupt that announced NEEDS_RESET
    signalEventfd(slot.queueEventFds[0]!);
    expect(pollReadable([slot.irqEventFd], 10_000)).toEqual([true]);
    expect(memory.readU16(USED + 2)).toBe(1);
  }, 30_000);

  test("a reset and a full re-init that land before the thread looks still replace the old queue", () => {
    // A second transport instance whose status writes do not wake the I/O thread: the thread sees only the end state.
    const quiet = new VirtioMmioTransport(slot.transport, { onQueueNotify: () => {}, onStatusChange: () => {}, interrupt: { trigger: () => {} } });
    const quietWrite = (offset: number, value: number) => {
      const data = new Uint8Array(4);
      new DataView(data.buffer).setUint32(0, value, true);
      quiet.write(offset, data);
    };
    const NEW_AVAIL = 0x5000;
    const NEW_USED = 0x6000;
    quietWrite(VIRTIO_MMIO.STATUS, 0);
    quietWrite(VIRTIO_MMIO.STATUS, VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER);
    quietWrite(VIRTIO_MMIO.DRIVER_FEATURES_SEL, 1);
    quietWrite(VIRTIO_MMIO.DRIVER_FEATURES, 1);
    quietWrite(VIRTIO_MMIO.STATUS, VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER | VIRTIO_STATUS.FEATURES_OK);
    quietWrite(VIRTIO_MMIO.QUEUE_NUM, QUEUE_SIZE);
    quietWrite(VIRTIO_MMIO.QUEUE_DESC_LOW, DESC);
    quietWrite(VIRTIO_MMIO.QUEUE_DRIVER_LOW, NEW_AVAIL);
    quietWrite(VIRTIO_MMIO.QUEUE_DEVICE_LOW, NEW_USED);
    quietWrite(VIRTIO_MMIO.QUEUE_READY, 1);
    quietWrite(VIRTIO_MMIO.STATUS, VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER | VIRTIO_STATUS.FEATURES_OK | VIRTIO_STATUS.DRIVER_OK);
    memory.writeU64(DESC, BigInt(BUFFER));
    memory.writeU32(DESC + 8, 8);
    memory.writeU16(DESC + 12, 2);
    memory.writeU16(NEW_AVAIL + 4, 0);
    memory.writeU16(NEW_AVAIL + 2, 1);
    drainEventfd(slot.irqEventFd);
    signalEventfd(virtio.controlEventFd);
    expect(pollReadable([slot.irqEventFd], 10_000)).toEqual([true]);
    expect(memory.readU16(NEW_USED + 2)).toBe(1);
    expect(memory.readU32(NEW_USED + 8)).toBe(8);
  }, 30_000);

  test("stops on request and reports per-device counters", async () => {
    io.stop();
    const result = await io.finished;
    expect(result.error).toBeUndefined();
    expect(result.stats).toEqual([{ kind: "rng", requests: 5, bytes: 64 + 32 + 8 + 16 + 8 }]);
    io.terminate();
  }, 30_000);
});

describe("virtio I/O thread restored from a paused one", () => {
  test("a new thread given the saved queue positions carries on at the next ring entry", async () => {
    // The state the stopped thread left: the device is running and one chain went through the new queue.
    const resumed = await IoThread.start(shared, virtio, undefined, [{ active: true, queues: [{ lastAvailIndex: 1, nextUsedIndex: 1 }] }]);
    memory.writeU64(DESC + 16, BigInt(BUFFER + 0x100));
    memory.writeU32(DESC + 16 + 8, 24);
    memory.writeU16(DESC + 16 + 12, 2);
    memory.writeU16(0x5000 + 4 + 2, 1);
    memory.writeU16(0x5000 + 2, 2);
    drainEventfd(slot.irqEventFd);
    signalEventfd(slot.queueEventFds[0]!);
    expect(pollReadable([slot.irqEventFd], 10_000)).toEqual([true]);
    expect(memory.readU16(0x6000 + 2)).toBe(2); // used idx moved from 1 to 2: not restarted at 0
    expect(memory.readU32(0x6000 + 4 + 8 + 4)).toBe(24); // ring[1].len
    resumed.stop();
    expect((await resumed.finished).stats).toEqual([{ kind: "rng", requests: 1, bytes: 24 }]);
    resumed.terminate();
  }, 30_000);
});

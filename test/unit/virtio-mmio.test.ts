import { describe, expect, test } from "bun:test";
import { CountingInterruptLine } from "../../src/devices/interrupt.ts";
import { VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1, VIRTIO_ID, featureBit } from "../../src/devices/virtio/device.ts";
import {
  QUEUE_NOTIFY_OFFSET,
  VIRTIO_MMIO as R,
  VIRTIO_MMIO_CONFIG_MAX,
  VIRTIO_MMIO_SPAN,
  VIRTIO_STATUS as S,
  VirtioMmioDeviceSide,
  VirtioMmioTransport,
  createVirtioMmioState,
  type VirtioMmioState,
} from "../../src/devices/virtio/mmio.ts";

const FEATURE_A = 5n; // a device-specific bit
const DEVICE_FEATURES = featureBit(Number(FEATURE_A)) | featureBit(VIRTIO_F_RING_EVENT_IDX) | featureBit(33);
const CONFIG = Uint8Array.from({ length: 24 }, (_, i) => 0x10 + i);

function transportOver(state: VirtioMmioState) {
  const notified: number[] = [];
  const statuses: number[] = [];
  const irq = new CountingInterruptLine();
  const transport = new VirtioMmioTransport(state, {
    onQueueNotify: (queue) => notified.push(queue),
    onStatusChange: (status) => statuses.push(status),
    interrupt: irq,
  });
  const read = (offset: number, width = 4) => {
    const data = new Uint8Array(width).fill(0xee);
    transport.read(offset, data);
    return data;
  };
  const r32 = (offset: number) => new DataView(read(offset).buffer).getUint32(0, true);
  const w32 = (offset: number, value: number) => {
    const data = new Uint8Array(4);
    new DataView(data.buffer).setUint32(0, value >>> 0, true);
    transport.write(offset, data);
  };
  const addStatus = (bit: number) => w32(R.STATUS, r32(R.STATUS) | bit);
  return { transport, notified, statuses, irq, read, r32, w32, addStatus };
}

function setup(queueMaxSizes: readonly number[] = [256, 128]) {
  const state = createVirtioMmioState({ deviceType: VIRTIO_ID.BLOCK, queueMaxSizes, features: DEVICE_FEATURES, config: CONFIG });
  const deviceIrq = new CountingInterruptLine();
  const side = new VirtioMmioDeviceSide(state, deviceIrq);
  return { state, side, deviceIrq, ...transportOver(state) };
}

type Driver = ReturnType<typeof transportOver>;

/** Linux's feature read: word 1 then word 0 (virtio_mmio.c, vm_get_features). */
function readDeviceFeatures({ r32, w32 }: Driver): bigint {
  w32(R.DEVICE_FEATURES_SEL, 1);
  const high = BigInt(r32(R.DEVICE_FEATURES));
  w32(R.DEVICE_FEATURES_SEL, 0);
  return (high << 32n) | BigInt(r32(R.DEVICE_FEATURES));
}

function writeDriverFeatures({ w32 }: Driver, features: bigint): void {
  w32(R.DRIVER_FEATURES_SEL, 1);
  w32(R.DRIVER_FEATURES, Number(features >> 32n));
  w32(R.DRIVER_FEATURES_SEL, 0);
  w32(R.DRIVER_FEATURES, Number(features & 0xffff_ffffn));
}

interface QueueLayout {
  readonly size: number;
  readonly desc: bigint;
  readonly driver: bigint;
  readonly device: bigint;
}

/** vm_setup_vq: select, check not ready, read max, write size and the three addresses, set ready. */
function setupQueue({ r32, w32 }: Driver, index: number, layout: QueueLayout): void {
  w32(R.QUEUE_SEL, index);
  expect(r32(R.QUEUE_READY)).toBe(0);
  expect(r32(R.QUEUE_NUM_MAX)).toBeGreaterThanOrEqual(layout.size);
  w32(R.QUEUE_NUM, layout.size);
  const pairs = [
    [R.QUEUE_DESC_LOW, R.QUEUE_DESC_HIGH, layout.desc],
    [R.QUEUE_DRIVER_LOW, R.QUEUE_DRIVER_HIGH, layout.driver],
    [R.QUEUE_DEVICE_LOW, R.QUEUE_DEVICE_HIGH, layout.device],
  ] as const;
  for (const [low, high, address] of pairs) {
    w32(low, Number(address & 0xffff_ffffn));
    w32(high, Number(address >> 32n));
  }
  w32(R.QUEUE_READY, 1);
  expect(r32(R.QUEUE_READY)).toBe(1);
}

const QUEUE0: QueueLayout = { size: 128, desc: 0x1_0000_2000n, driver: 0x3000n, device: 0xffff_0000_4000n };
const QUEUE1: QueueLayout = { size: 64, desc: 0x5000n, driver: 0x6000n, device: 0x7000n };
const ACCEPTED = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_RING_EVENT_IDX) | featureBit(Number(FEATURE_A));

/** The whole Linux bring-up; returns the status the driver read back after FEATURES_OK. */
function initialise(driver: Driver, features = ACCEPTED): number {
  const { r32, w32, addStatus } = driver;
  expect(r32(R.MAGIC_VALUE)).toBe(0x74726976);
  expect(r32(R.VERSION)).toBe(2);
  w32(R.STATUS, 0);
  addStatus(S.ACKNOWLEDGE);
  addStatus(S.DRIVER);
  readDeviceFeatures(driver);
  writeDriverFeatures(driver, features);
  addStatus(S.FEATURES_OK);
  const afterFeatures = r32(R.STATUS);
  if (!(afterFeatures & S.FEATURES_OK)) return afterFeatures;
  setupQueue(driver, 0, QUEUE0);
  setupQueue(driver, 1, QUEUE1);
  addStatus(S.DRIVER_OK);
  return afterFeatures;
}

describe("virtio-mmio: identity", () => {
  test("magic, version 2, device and vendor IDs", () => {
    const { r32 } = setup();
    expect(r32(R.MAGIC_VALUE)).toBe(0x74726976);
    expect(r32(R.VERSION)).toBe(2);
    expect(r32(R.DEVICE_ID)).toBe(VIRTIO_ID.BLOCK);
    expect(new TextDecoder().decode(setup().read(R.VENDOR_ID))).toBe("VOLT");
    expect(VIRTIO_MMIO_SPAN).toBe(0x1000);
    expect(QUEUE_NOTIFY_OFFSET).toBe(0x50);
  });

  test("the features offered are the device's plus VERSION_1, 32 bits per select, nothing past bit 63", () => {
    const driver = setup();
    expect(readDeviceFeatures(driver)).toBe(DEVICE_FEATURES | featureBit(VIRTIO_F_VERSION_1));
    driver.w32(R.DEVICE_FEATURES_SEL, 2);
    expect(driver.r32(R.DEVICE_FEATURES)).toBe(0);
  });

  test("bad specs are refused when the state is made", () => {
    const base = { deviceType: 4, queueMaxSizes: [8], features: 0n, config: new Uint8Array() };
    expect(() => createVirtioMmioState({ ...base, queueMaxSizes: [6] })).toThrow(RangeError);
    expect(() => createVirtioMmioState({ ...base, queueMaxSizes: [65536] })).toThrow(RangeError);
    expect(() => createVirtioMmioState({ ...base, features: 1n << 64n })).toThrow(RangeError);
    expect(() => createVirtioMmioState({ ...base, config: new Uint8Array(VIRTIO_MMIO_CONFIG_MAX + 1) })).toThrow(RangeError);
    expect(() => createVirtioMmioState({ ...base, config: new Uint8Array(VIRTIO_MMIO_CONFIG_MAX) })).not.toThrow();
  });
});

describe("virtio-mmio: the Linux bring-up", () => {
  test("reset, ACK, DRIVER, features, FEATURES_OK, queues, DRIVER_OK: the device side sees it all", () => {
    const env = setup();
    const afterFeatures = initialise(env);
    expect(afterFeatures).toBe(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
    expect(env.r32(R.STATUS)).toBe(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);
    expect(env.side.status()).toBe(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);
    expect(env.side.ackedFeatures()).toBe(ACCEPTED);
    expect(env.side.queueCount).toBe(2);
    expect(env.side.queueConfig(0)).toEqual({
      size: 128,
      ready: true,
      descriptorTable: 0x1_0000_2000,
      availableRing: 0x3000,
      usedRing: 0xffff_0000_4000,
    });
    expect(env.side.queueConfig(1)).toEqual({ size: 64, ready: true, descriptorTable: 0x5000, availableRing: 0x6000, usedRing: 0x7000 });
    // onStatusChange after every Status write, with what the status now reads.
    expect(env.statuses).toEqual([0, 0x1, 0x3, 0xb, 0xf]);
  });

  test("the driver's features read back per select", () => {
    const env = setup();
    writeDriverFeatures(env, ACCEPTED);
    env.w32(R.DRIVER_FEATURES_SEL, 1);
    expect(env.r32(R.DRIVER_FEATURES)).toBe(1); // VERSION_1 is bit 32
    env.w32(R.DRIVER_FEATURES_SEL, 0);
    expect(env.r32(R.DRIVER_FEATURES)).toBe(Number(ACCEPTED & 0xffff_ffffn));
  });

  test("queue addresses keep all 64 bits; above 2^53 they are unsafe integers no memory check accepts", () => {
    const env = setup();
    env.w32(R.QUEUE_SEL, 0);
    env.w32(R.QUEUE_DESC_LOW, 0xffff_f000);
    env.w32(R.QUEUE_DESC_HIGH, 0xffff_ffff);
    env.w32(R.QUEUE_DRIVER_LOW, 0x1234_5678);
    env.w32(R.QUEUE_DRIVER_HIGH, 0x1f_ffff);
    const config = env.side.queueConfig(0);
    expect(Number.isSafeInteger(config.descriptorTable)).toBe(false);
    expect(config.descriptorTable).toBeGreaterThanOrEqual(2 ** 53);
    expect(config.availableRing).toBe(0x1f_ffff_1234_5678);
    expect(Number.isSafeInteger(config.availableRing)).toBe(true);
    expect(env.r32(R.QUEUE_DESC_HIGH)).toBe(0xffff_ffff);
  });
});

describe("virtio-mmio: feature negotiation", () => {
  test("a feature that was not offered: FEATURES_OK reads back clear and DRIVER_OK cannot stick", () => {
    const env = setup();
    const status = initialise(env, ACCEPTED | featureBit(6));
    expect(status & S.FEATURES_OK).toBe(0);
    expect(env.statuses.at(-1)).toBe(S.ACKNOWLEDGE | S.DRIVER);
    env.addStatus(S.DRIVER_OK);
    expect(env.r32(R.STATUS) & S.DRIVER_OK).toBe(0);
    expect(env.side.ackedFeatures()).toBe(0n);
  });

  test("an unoffered feature in the high word is caught too", () => {
    expect(initialise(setup(), ACCEPTED | featureBit(40)) & S.FEATURES_OK).toBe(0);
  });

  test("features past bit 63 are never offered", () => {
    const env = setup();
    env.w32(R.DRIVER_FEATURES_SEL, 2);
    env.w32(R.DRIVER_FEATURES, 1);
    writeDriverFeatures(env, ACCEPTED);
    env.addStatus(S.FEATURES_OK);
    expect(env.r32(R.STATUS) & S.FEATURES_OK).toBe(0);
  });

  test("a driver without VERSION_1 is refused (modern only)", () => {
    expect(initialise(setup(), ACCEPTED & ~featureBit(VIRTIO_F_VERSION_1)) & S.FEATURES_OK).toBe(0);
  });

  test("VERSION_1 alone is enough", () => {
    expect(initialise(setup(), featureBit(VIRTIO_F_VERSION_1)) & S.FEATURES_OK).toBe(S.FEATURES_OK);
  });

  test("after a refusal the driver may fix its features and try again", () => {
    const env = setup();
    initialise(env, ACCEPTED | featureBit(6));
    writeDriverFeatures(env, ACCEPTED);
    env.addStatus(S.FEATURES_OK);
    expect(env.r32(R.STATUS) & S.FEATURES_OK).toBe(S.FEATURES_OK);
  });

  test("a reset forgets features written past bit 63", () => {
    const env = setup();
    env.w32(R.DRIVER_FEATURES_SEL, 3);
    env.w32(R.DRIVER_FEATURES, 0x8000_0000);
    expect(initialise(env) & S.FEATURES_OK).toBe(S.FEATURES_OK);
  });

  test("once FEATURES_OK has stuck, DriverFeatures is frozen", () => {
    const env = setup();
    initialise(env);
    writeDriverFeatures(env, featureBit(VIRTIO_F_VERSION_1));
    expect(env.side.ackedFeatures()).toBe(ACCEPTED);
  });

  test("DRIVER_OK without FEATURES_OK does not stick", () => {
    const env = setup();
    env.addStatus(S.ACKNOWLEDGE | S.DRIVER | S.DRIVER_OK);
    expect(env.r32(R.STATUS)).toBe(S.ACKNOWLEDGE | S.DRIVER);
  });
});

describe("virtio-mmio: status", () => {
  test("status only gains bits: a non-zero write cannot clear any", () => {
    const env = setup();
    initialise(env);
    env.w32(R.STATUS, S.ACKNOWLEDGE);
    expect(env.r32(R.STATUS)).toBe(S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);
  });

  test("the driver cannot set DEVICE_NEEDS_RESET", () => {
    const env = setup();
    env.w32(R.STATUS, S.ACKNOWLEDGE | S.DEVICE_NEEDS_RESET);
    expect(env.r32(R.STATUS)).toBe(S.ACKNOWLEDGE);
  });

  test("FAILED sticks", () => {
    const env = setup();
    env.addStatus(S.ACKNOWLEDGE);
    env.addStatus(S.FAILED);
    expect(env.side.status()).toBe(S.ACKNOWLEDGE | S.FAILED);
  });

  test("writing 0 resets everything the driver set, and says so through onStatusChange(0)", () => {
    const env = setup();
    initialise(env);
    env.side.raiseUsedBufferInterrupt();
    env.side.markNeedsReset();
    env.w32(R.QUEUE_SEL, 1);
    env.w32(R.DEVICE_FEATURES_SEL, 1);
    env.statuses.length = 0;

    env.w32(R.STATUS, 0);
    expect(env.statuses).toEqual([0]);
    expect(env.r32(R.STATUS)).toBe(0);
    expect(env.side.status()).toBe(0);
    expect(env.r32(R.INTERRUPT_STATUS)).toBe(0);
    expect(env.side.ackedFeatures()).toBe(0n);
    expect(env.r32(R.QUEUE_SEL)).toBe(0);
    expect(env.r32(R.DEVICE_FEATURES_SEL)).toBe(0);
    for (const sel of [0, 1]) env.w32(R.DRIVER_FEATURES_SEL, sel), expect(env.r32(R.DRIVER_FEATURES)).toBe(0);
    expect(env.side.queueConfig(0)).toEqual({ size: 256, ready: false, descriptorTable: 0, availableRing: 0, usedRing: 0 });
    expect(env.side.queueConfig(1)).toEqual({ size: 128, ready: false, descriptorTable: 0, availableRing: 0, usedRing: 0 });
    // And the driver can bring it up again.
    env.statuses.length = 0;
    initialise(env);
    expect(env.side.status() & S.DRIVER_OK).toBe(S.DRIVER_OK);
  });
});

describe("virtio-mmio: queue registers", () => {
  test.each([0, 3, 100, 512, 0xffff_ffff])("QueueNum %p (not a power of two up to the max of 256) is ignored", (num) => {
    const env = setup();
    env.w32(R.QUEUE_SEL, 0);
    env.w32(R.QUEUE_NUM, 64);
    env.w32(R.QUEUE_NUM, num);
    expect(env.side.queueConfig(0).size).toBe(64);
  });

  test.each([1, 2, 256])("QueueNum %p is taken", (num) => {
    const env = setup();
    env.w32(R.QUEUE_SEL, 0);
    env.w32(R.QUEUE_NUM, num);
    expect(env.side.queueConfig(0).size).toBe(num);
  });

  test("each queue has its own QueueNumMax and registers", () => {
    const env = setup();
    env.w32(R.QUEUE_SEL, 1);
    expect(env.r32(R.QUEUE_NUM_MAX)).toBe(128);
    env.w32(R.QUEUE_NUM, 256); // above queue 1's max
    expect(env.side.queueConfig(1).size).toBe(128);
    env.w32(R.QUEUE_NUM, 16);
    expect(env.side.queueConfig(1).size).toBe(16);
    expect(env.side.queueConfig(0).size).toBe(256);
  });

  test("a ready queue's size and addresses are frozen; un-readying it (before DRIVER_OK) frees them", () => {
    const env = setup();
    env.w32(R.QUEUE_SEL, 0);
    env.w32(R.QUEUE_NUM, 32);
    env.w32(R.QUEUE_DESC_LOW, 0x1000);
    env.w32(R.QUEUE_READY, 1);
    env.w32(R.QUEUE_NUM, 64);
    env.w32(R.QUEUE_DESC_LOW, 0x2000);
    env.w32(R.QUEUE_DEVICE_HIGH, 1);
    expect(env.side.queueConfig(0)).toMatchObject({ size: 32, descriptorTable: 0x1000, usedRing: 0 });
    env.w32(R.QUEUE_READY, 0);
    env.w32(R.QUEUE_NUM, 64);
    expect(env.side.queueConfig(0)).toMatchObject({ size: 64, ready: false });
  });

  test("after DRIVER_OK no queue register changes, not even QueueReady", () => {
    const env = setup();
    initialise(env);
    env.w32(R.QUEUE_SEL, 0);
    env.w32(R.QUEUE_READY, 0);
    env.w32(R.QUEUE_SEL, 1);
    env.w32(R.QUEUE_DESC_LOW, 0x9000);
    env.w32(R.QUEUE_NUM, 8);
    expect(env.side.queueConfig(0).ready).toBe(true);
    expect(env.side.queueConfig(1)).toMatchObject({ size: 64, descriptorTable: 0x5000, ready: true });
  });

  test("after DRIVER_OK a queue the driver left unready cannot be set up either", () => {
    const env = setup();
    env.w32(R.STATUS, 0);
    env.addStatus(S.ACKNOWLEDGE | S.DRIVER);
    writeDriverFeatures(env, ACCEPTED);
    env.addStatus(S.FEATURES_OK);
    setupQueue(env, 0, QUEUE0);
    env.addStatus(S.DRIVER_OK);
    env.w32(R.QUEUE_SEL, 1);
    env.w32(R.QUEUE_NUM, 8);
    env.w32(R.QUEUE_DESC_LOW, 0x9000);
    env.w32(R.QUEUE_READY, 1);
    expect(env.side.queueConfig(1)).toEqual({ size: 128, ready: false, descriptorTable: 0, availableRing: 0, usedRing: 0 });
  });

  test("QueueReady takes only 0 and 1", () => {
    const env = setup();
    env.w32(R.QUEUE_READY, 2);
    expect(env.r32(R.QUEUE_READY)).toBe(0);
  });

  test("a QueueSel past the last queue: its registers read 0 and writes reach no queue", () => {
    const env = setup();
    env.w32(R.QUEUE_SEL, 2);
    expect(env.r32(R.QUEUE_SEL)).toBe(2);
    expect(env.r32(R.QUEUE_NUM_MAX)).toBe(0);
    env.w32(R.QUEUE_NUM, 16);
    env.w32(R.QUEUE_DESC_LOW, 0x1000);
    env.w32(R.QUEUE_DRIVER_LOW, 0x2000);
    env.w32(R.QUEUE_DEVICE_LOW, 0x3000);
    env.w32(R.QUEUE_READY, 1);
    expect(env.r32(R.QUEUE_READY)).toBe(0);
    expect(env.r32(R.QUEUE_NUM)).toBe(0);
    expect(env.r32(R.QUEUE_DESC_LOW)).toBe(0);
    for (const index of [0, 1]) {
      expect(env.side.queueConfig(index)).toMatchObject({ ready: false, descriptorTable: 0, availableRing: 0, usedRing: 0 });
    }
    expect(env.side.queueConfig(0).size).toBe(256);
    expect(env.side.queueConfig(1).size).toBe(128);
    expect(() => env.side.queueConfig(2)).toThrow(RangeError);
  });

  test("QueueNotify reaches onQueueNotify for the device's queues only", () => {
    const env = setup();
    env.w32(QUEUE_NOTIFY_OFFSET, 1);
    env.w32(QUEUE_NOTIFY_OFFSET, 0);
    env.w32(QUEUE_NOTIFY_OFFSET, 2);
    env.w32(QUEUE_NOTIFY_OFFSET, 0x1_0000);
    expect(env.notified).toEqual([1, 0]);
    expect(env.r32(QUEUE_NOTIFY_OFFSET)).toBe(0);
  });
});

describe("virtio-mmio: interrupts", () => {
  test("used-buffer and config-change bits are set by the device side and cleared by InterruptACK", () => {
    const env = setup();
    initialise(env);
    env.side.raiseUsedBufferInterrupt();
    expect(env.r32(R.INTERRUPT_STATUS)).toBe(1);
    expect(env.deviceIrq.take()).toBe(1);
    env.side.raiseConfigChangeInterrupt();
    expect(env.r32(R.INTERRUPT_STATUS)).toBe(3);
    expect(env.deviceIrq.take()).toBe(1);
    env.w32(R.INTERRUPT_ACK, 3);
    expect(env.r32(R.INTERRUPT_STATUS)).toBe(0);
    expect(env.irq.take()).toBe(0);
  });

  test("an ACK that leaves an event pending pulses the line again (an edge cannot stay asserted)", () => {
    const env = setup();
    initialise(env);
    env.side.raiseUsedBufferInterrupt();
    env.side.raiseConfigChangeInterrupt();
    env.w32(R.INTERRUPT_ACK, 1);
    expect(env.r32(R.INTERRUPT_STATUS)).toBe(2);
    expect(env.irq.take()).toBe(1);
    env.w32(R.INTERRUPT_ACK, 2);
    expect(env.irq.take()).toBe(0);
  });

  test("InterruptStatus is read-only", () => {
    const env = setup();
    initialise(env);
    env.w32(R.INTERRUPT_STATUS, 3);
    expect(env.r32(R.INTERRUPT_STATUS)).toBe(0);
  });

  test("a used-buffer interrupt before DRIVER_OK is dropped", () => {
    const env = setup();
    env.side.raiseUsedBufferInterrupt();
    expect(env.r32(R.INTERRUPT_STATUS)).toBe(0);
    expect(env.deviceIrq.count).toBe(0);
  });

  test("markNeedsReset sets DEVICE_NEEDS_RESET and raises a config change; a reset clears it", () => {
    const env = setup();
    initialise(env);
    expect(env.side.markNeedsReset()).toBe(true);
    expect(env.r32(R.STATUS) & S.DEVICE_NEEDS_RESET).toBe(S.DEVICE_NEEDS_RESET);
    expect(env.r32(R.INTERRUPT_STATUS)).toBe(2);
    expect(env.deviceIrq.take()).toBe(1);
    env.addStatus(S.FAILED);
    expect(env.side.status() & S.DEVICE_NEEDS_RESET).toBe(S.DEVICE_NEEDS_RESET);
    env.w32(R.STATUS, 0);
    expect(env.side.status()).toBe(0);
  });

  test("markNeedsReset on a device the driver has already reset does nothing", () => {
    const env = setup();
    initialise(env);
    env.w32(R.STATUS, 0);
    expect(env.side.markNeedsReset()).toBe(false);
    expect(env.side.status()).toBe(0);
    expect(env.r32(R.INTERRUPT_STATUS)).toBe(0);
    expect(env.deviceIrq.count).toBe(0);
  });
});

describe("virtio-mmio: config space", () => {
  const u = (bytes: Uint8Array) => [...bytes];

  test("reads of 1, 2, 4 and 8 bytes anywhere inside it", () => {
    const { read } = setup();
    expect(u(read(R.CONFIG, 1))).toEqual([0x10]);
    expect(u(read(R.CONFIG + 3, 2))).toEqual([0x13, 0x14]);
    expect(u(read(R.CONFIG + 4, 4))).toEqual([0x14, 0x15, 0x16, 0x17]);
    expect(u(read(R.CONFIG + 16, 8))).toEqual([0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27]);
  });

  test("reads past its end, or straddling it, return 0", () => {
    const { read } = setup();
    expect(u(read(R.CONFIG + 24, 1))).toEqual([0]);
    expect(u(read(R.CONFIG + 20, 8))).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    expect(u(read(0xffc, 4))).toEqual([0, 0, 0, 0]);
  });

  test("driver writes are ignored", () => {
    const { transport, read } = setup();
    transport.write(R.CONFIG, Uint8Array.of(0xaa, 0xbb, 0xcc, 0xdd));
    expect(u(read(R.CONFIG, 4))).toEqual([0x10, 0x11, 0x12, 0x13]);
  });

  test("a device-side update changes the bytes, bumps ConfigGeneration and raises a config change", () => {
    const env = setup();
    expect(env.r32(R.CONFIG_GENERATION)).toBe(0);
    env.side.updateConfig(2, Uint8Array.of(0x99));
    expect(u(env.read(R.CONFIG, 4))).toEqual([0x10, 0x11, 0x99, 0x13]);
    expect(env.r32(R.CONFIG_GENERATION)).toBe(1);
    expect(env.r32(R.INTERRUPT_STATUS)).toBe(2);
    expect(env.deviceIrq.count).toBe(1);
    expect(() => env.side.updateConfig(23, Uint8Array.of(1, 2))).toThrow(RangeError);
  });
});

describe("virtio-mmio: access widths", () => {
  test.each([1, 2, 8])("a %p-byte read of a register returns 0", (width) => {
    const { read } = setup();
    expect(u8s(read(R.MAGIC_VALUE, width))).toEqual(new Array(width).fill(0));
  });

  test("an unaligned 4-byte read returns 0", () => {
    expect(u8s(setup().read(R.MAGIC_VALUE + 2, 4))).toEqual([0, 0, 0, 0]);
  });

  test.each([1, 2, 8])("a %p-byte write to a register is ignored", (width) => {
    const env = setup();
    env.transport.write(R.STATUS, new Uint8Array(width).fill(S.ACKNOWLEDGE));
    env.transport.write(QUEUE_NOTIFY_OFFSET, new Uint8Array(width));
    env.w32(R.QUEUE_SEL, 0);
    env.transport.write(R.QUEUE_NUM, new Uint8Array(width).fill(2));
    expect(env.r32(R.STATUS)).toBe(0);
    expect(env.statuses).toEqual([]);
    expect(env.notified).toEqual([]);
    expect(env.side.queueConfig(0).size).toBe(256);
  });

  test("unaligned 4-byte writes are ignored", () => {
    const env = setup();
    env.w32(R.STATUS + 1, S.ACKNOWLEDGE);
    expect(env.r32(R.STATUS)).toBe(0);
  });

  test("shared memory regions read as absent, unknown registers as 0", () => {
    const { r32 } = setup();
    expect(r32(R.SHM_LEN_LOW)).toBe(0xffff_ffff);
    expect(r32(R.SHM_LEN_HIGH)).toBe(0xffff_ffff);
    expect(r32(0x0f0)).toBe(0);
    expect(r32(R.QUEUE_RESET)).toBe(0);
  });
});

function u8s(bytes: Uint8Array): number[] {
  return [...bytes];
}

describe("virtio-mmio: one state, many threads", () => {
  test("a second transport over the same state sees and changes the same registers", () => {
    const env = setup();
    const other = transportOver(env.state);
    env.addStatus(S.ACKNOWLEDGE);
    other.addStatus(S.DRIVER);
    expect(env.r32(R.STATUS)).toBe(S.ACKNOWLEDGE | S.DRIVER);
    other.w32(R.QUEUE_SEL, 1);
    expect(env.r32(R.QUEUE_NUM_MAX)).toBe(128);
    // Hooks belong to the instance whose register access caused them.
    expect(env.statuses).toEqual([S.ACKNOWLEDGE]);
    expect(other.statuses).toEqual([S.ACKNOWLEDGE | S.DRIVER]);
  });

  test("a structured clone of the state (what a worker gets) shares the registers", () => {
    const env = setup();
    const cloned = structuredClone(env.state);
    expect(cloned.buffer).toBeInstanceOf(SharedArrayBuffer);
    const other = transportOver(cloned);
    initialise(other);
    expect(env.side.ackedFeatures()).toBe(ACCEPTED);
    expect(env.r32(R.STATUS) & S.DRIVER_OK).toBe(S.DRIVER_OK);
  });

  test("a driver on a worker thread brings the device up while this thread watches", async () => {
    const env = setup();
    const worker = new Worker(new URL("./fixtures/virtio-mmio-driver.ts", import.meta.url).href);
    try {
      const done = new Promise<number>((resolve, reject) => {
        worker.onmessage = (e) => resolve(e.data as number);
        worker.onerror = (e) => reject(new Error(e.message));
      });
      worker.postMessage(env.state);
      const seen = new Set<number>();
      // Watch from this thread under the same lock until the worker is done.
      let finished = false;
      void done.then(() => (finished = true));
      // Bounded: on a loaded machine the worker may be slow, but a runaway loop must not outlive the test.
      const deadline = performance.now() + 25_000;
      while (!finished && performance.now() < deadline) {
        seen.add(env.side.status());
        await Bun.sleep(0);
      }
      expect(await done).toBe(0xf);
      for (const status of seen) expect([0, 1, 3, 0xb, 0xf]).toContain(status);
      expect(env.side.ackedFeatures()).toBe(featureBit(VIRTIO_F_VERSION_1));
      expect(env.side.queueConfig(0)).toEqual({ size: 32, ready: true, descriptorTable: 0x1000, availableRing: 0x2000, usedRing: 0x3000 });
    } finally {
      worker.terminate();
    }
  }, 30_000);
});

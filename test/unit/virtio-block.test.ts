import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  BLKGETSIZE64,
  DiskImageError,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  SYSTEM_DISK_OPS,
  type DiskFileOps,
} from "../../src/devices/virtio/block-backend.ts";
import {
  BLOCK_DISCARD_SECTOR_ALIGNMENT,
  BLOCK_MAX_WRITE_ZEROES_SECTORS,
  BLOCK_QUEUE_SIZE,
  BLOCK_SEG_MAX,
  VIRTIO_BLK_F,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_S,
  VIRTIO_BLK_T,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
  VirtioBlock,
  virtio_blk_config,
  virtio_blk_discard_write_zeroes,
  virtio_blk_outhdr,
  type VirtioBlockOptions,
} from "../../src/devices/virtio/block.ts";
import {
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_ID,
  featureBit,
  type DescriptorBuffer,
  type DescriptorChain,
  type QueueHandle,
} from "../../src/devices/virtio/device.ts";
import { ERRNO, SyscallError } from "../../src/ffi/errno.ts";
import type { StructLayout } from "../../src/kvm/struct.ts";
import { GuestMemoryView } from "../../src/memory/guest-memory.ts";
import { cValues, mismatches, tsExpectations } from "./c-abi.ts";
import { FakeQueue } from "./virtio-fake-queue.ts";
import { RateLimiter } from "../../src/devices/virtio/rate-limiter.ts";
import { POLLIN } from "../../src/ffi/syscalls.ts";

const SECTOR = 512;
const MEMORY_SIZE = 1 << 20;
const { OK, IOERR, UNSUPP } = VIRTIO_BLK_S;

const scratch = mkdtempSync(join(tmpdir(), "volt-blk-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

const opened: VirtioBlock[] = [];
afterEach(() => {
  for (const device of opened.splice(0)) device.close();
});

/** Every sector distinct, so a read from the wrong offset shows. */
function pattern(bytes: number, seed = 0): Uint8Array {
  const out = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) out[i] = (i * 7 + Math.floor(i / SECTOR) * 13 + seed) & 0xff;
  return out;
}

let imageCount = 0;
function image(content: Uint8Array | number): string {
  const path = join(scratch, `disk-${imageCount++}.img`);
  writeFileSync(path, typeof content === "number" ? pattern(content) : content);
  return path;
}


const ALL_FEATURES = ~0n;

interface Counters {
  fsync: number;
  fallocate: number[];
}

/** DiskFileOps that count calls; `fallocate` can be replaced to play a file system without it. */
function countingOps(counters: Counters, fallocate?: DiskFileOps["fallocate"]): DiskFileOps {
  return {
    ...SYSTEM_DISK_OPS,
    fsync: (fd) => {
      counters.fsync++;
      SYSTEM_DISK_OPS.fsync(fd);
    },
    fallocate: (fd, mode, offset, length) => {
      counters.fallocate.push(mode);
      (fallocate ?? SYSTEM_DISK_OPS.fallocate)(fd, mode, offset, length);
    },
  };
}

function drive(
  options: Partial<VirtioBlockOptions> & { sectors?: number; acked?: bigint; ops?: DiskFileOps } = {},
) {
  const path = options.path ?? image((options.sectors ?? 16) * SECTOR);
  const counters: Counters = { fsync: 0, fallocate: [] };
  const device = VirtioBlock.open(
    { path, readOnly: options.readOnly ?? false, id: options.id },
    options.ops ?? countingOps(counters),
  );
  opened.push(device);
  const memory = new GuestMemoryView({ regions: [{ guestAddress: 0, size: MEMORY_SIZE, buffer: new SharedArrayBuffer(MEMORY_SIZE) }] });
  const queue = new FakeQueue();
  device.activate({ memory, ackedFeatures: options.acked ?? device.features, queues: [queue] });

  let next = 0x1000;
  let head = 0;
  /** A buffer in guest RAM, filled with `content` (or 0xee, so untouched bytes are recognisable). */
  const buffer = (content: Uint8Array | number, writable: boolean): DescriptorBuffer => {
    const bytes = typeof content === "number" ? new Uint8Array(content).fill(0xee) : content;
    const address = next;
    next += (bytes.byteLength + 15) & ~15;
    memory.write(address, bytes);
    return { address, length: bytes.byteLength, writable };
  };
  const submit = (...buffers: DescriptorBuffer[]): number => {
    queue.chains.push({ head, buffers });
    return head++;
  };
  /** Processes everything queued; returns the last chain's used length and status byte. */
  const run = (status?: DescriptorBuffer) => {
    device.processQueue(0);
    const last = queue.used[queue.used.length - 1];
    return {
      written: last?.written,
      status: status ? memory.readU8(status.address + status.length - 1) : undefined,
    };
  };
  const bytesOf = (b: DescriptorBuffer) => memory.read(b.address, b.length);
  const file = (): Uint8Array => new Uint8Array(readFileSync(path));
  return { path, device, memory, queue, counters, buffer, submit, run, bytesOf, file };
}

function header(type: number, sector: bigint | number = 0n): Uint8Array {
  const out = new Uint8Array(virtio_blk_outhdr.size);
  const view = new DataView(out.buffer);
  view.setUint32(virtio_blk_outhdr.fields.type.offset, type, true);
  view.setBigUint64(virtio_blk_outhdr.fields.sector.offset, BigInt(sector), true);
  return out;
}

function segment(sector: bigint | number, sectors: number, flags = 0): Uint8Array {
  const out = new Uint8Array(virtio_blk_discard_write_zeroes.size);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(sector), true);
  view.setUint32(8, sectors, true);
  view.setUint32(12, flags, true);
  return out;
}

type Drive = ReturnType<typeof drive>;

/** A well-formed request: header, data buffer(s), 1-byte status. */
function request(d: Drive, type: number, sector: bigint | number, data: DescriptorBuffer[] = []) {
  const status = d.buffer(1, true);
  d.submit(d.buffer(header(type, sector), false), ...data, status);
  return d.run(status);
}

const read = (d: Drive, sector: bigint | number, bytes: number) => {
  const data = d.buffer(bytes, true);
  return { ...request(d, VIRTIO_BLK_T.IN, sector, [data]), data: d.bytesOf(data) };
};
const write = (d: Drive, sector: bigint | number, content: Uint8Array) =>
  request(d, VIRTIO_BLK_T.OUT, sector, [d.buffer(content, false)]);
const discard = (d: Drive, type: number, ...segments: Uint8Array[]) =>
  request(d, type, 0, segments.map((s) => d.buffer(s, false)));

describe("virtio-blk ABI matches <linux/virtio_blk.h>", () => {
  const layouts = [virtio_blk_config, virtio_blk_outhdr, virtio_blk_discard_write_zeroes];
  const constants: Record<string, number> = {
    ...Object.fromEntries(Object.entries(VIRTIO_BLK_F).map(([name, bit]) => [`VIRTIO_BLK_F_${name}`, bit])),
    ...Object.fromEntries(Object.entries(VIRTIO_BLK_T).map(([name, type]) => [`VIRTIO_BLK_T_${name}`, type])),
    ...Object.fromEntries(Object.entries(VIRTIO_BLK_S).map(([name, value]) => [`VIRTIO_BLK_S_${name}`, value])),
    VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    VIRTIO_ID_BLOCK: VIRTIO_ID.BLOCK,
    VIRTIO_RING_F_EVENT_IDX: VIRTIO_F_RING_EVENT_IDX,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    BLKGETSIZE64,
    // Volt exposes the config up to (not including) the secure-erase fields.
    "offsetof(struct virtio_blk_config, max_secure_erase_sectors)": virtio_blk_config.size,
  };
  const expected = tsExpectations(layouts, constants);
  // Newer headers append fields (zoned); only the prefix Volt exposes must agree.
  expected.delete("sizeof(struct virtio_blk_config)");
  const source = { includes: ["linux/virtio_blk.h", "linux/virtio_ring.h", "linux/falloc.h", "linux/fs.h"] };
  const actual = cValues(source, [...expected.keys()]);

  test("every offset, size and constant agrees with C", () => {
    expect(expected.size).toBeGreaterThan(40);
    expect(mismatches(expected, actual)).toEqual([]);
  });

  test("a wrong offset is caught (the check can fail)", () => {
    const broken: StructLayout = {
      ...virtio_blk_config,
      fields: { ...virtio_blk_config.fields, max_write_zeroes_seg: { offset: 56, type: "u32" } },
    };
    const wrong = mismatches(tsExpectations([broken]), actual);
    expect(wrong).toContain("offsetof(struct virtio_blk_config, max_write_zeroes_seg): TypeScript says 56, C says 52");
  });
});

describe("virtio-blk open()", () => {
  test("capacity is the file size in sectors, in the device and in config space", () => {
    const d = drive({ sectors: 24 });
    expect(d.device.capacity).toBe(24n);
    const config = new DataView(d.device.config.buffer, d.device.config.byteOffset);
    expect(config.getBigUint64(virtio_blk_config.fields.capacity.offset, true)).toBe(24n);
    expect(d.device.deviceType).toBe(VIRTIO_ID.BLOCK);
    expect(d.device.queueMaxSizes).toEqual([BLOCK_QUEUE_SIZE]);
  });

  test("a missing image is refused, naming the path", () => {
    const path = join(scratch, "no-such.img");
    expect(() => VirtioBlock.open({ path, readOnly: false })).toThrow(DiskImageError);
    expect(() => VirtioBlock.open({ path, readOnly: false })).toThrow(`${path}: no such file`);
  });

  test("a directory or a character device is refused, naming the path", () => {
    const dir = join(scratch, "a-directory");
    mkdirSync(dir, { recursive: true });
    expect(() => VirtioBlock.open({ path: dir, readOnly: true })).toThrow(`${dir}: not a regular file or block device`);
    expect(() => VirtioBlock.open({ path: "/dev/null", readOnly: true })).toThrow(
      "/dev/null: not a regular file or block device",
    );
  });

  test("a FIFO is refused without blocking on open", () => {
    const fifo = join(scratch, "a-fifo");
    expect(Bun.spawnSync(["mkfifo", fifo]).exitCode).toBe(0);
    expect(() => VirtioBlock.open({ path: fifo, readOnly: true })).toThrow(`${fifo}: not a regular file or block device`);
  });

  test("a size that is not a whole number of sectors is refused, naming the path", () => {
    const path = image(SECTOR * 4 + 100);
    expect(() => VirtioBlock.open({ path, readOnly: false })).toThrow(`${path}: size 2148 bytes is not a multiple of 512`);
  });

  test("an id longer than 20 bytes or not printable ASCII is refused, naming the path", () => {
    const path = image(SECTOR);
    expect(() => VirtioBlock.open({ path, readOnly: false, id: "x".repeat(21) })).toThrow(path);
    expect(() => VirtioBlock.open({ path, readOnly: false, id: "dïsk" })).toThrow(path);
    opened.push(VirtioBlock.open({ path, readOnly: false, id: "x".repeat(20) }));
  });

  test.skipIf(process.getuid?.() === 0)("a writable drive on a file the user cannot write is refused, naming the path", () => {
    const path = image(SECTOR);
    chmodSync(path, 0o444);
    expect(() => VirtioBlock.open({ path, readOnly: false })).toThrow(`${path}: cannot open read-write: permission denied`);
    opened.push(VirtioBlock.open({ path, readOnly: true }));
  });

  const canLoop = process.getuid?.() === 0 && existsSync("/dev/loop-control") && Bun.which("losetup") !== null;
  test.skipIf(!canLoop)("a block device's capacity comes from BLKGETSIZE64 (stat says 0)", () => {
    const path = image(64 * SECTOR);
    const attach = Bun.spawnSync(["losetup", "--find", "--show", path]);
    expect(attach.exitCode).toBe(0);
    const loop = attach.stdout.toString().trim();
    try {
      expect(statSync(loop).size).toBe(0);
      const device = VirtioBlock.open({ path: loop, readOnly: true });
      try {
        expect(device.capacity).toBe(64n);
        expect(device.disk.kind).toBe("block-device");
      } finally {
        device.close();
      }
    } finally {
      Bun.spawnSync(["losetup", "-d", loop]);
    }
  });
});

describe("virtio-blk features and config", () => {
  const bit = (features: bigint, n: number) => (features & featureBit(n)) !== 0n;
  const config = (d: Drive) => new DataView(d.device.config.buffer, d.device.config.byteOffset, virtio_blk_config.size);
  const field = (d: Drive, name: keyof typeof virtio_blk_config.fields) => {
    const spec = virtio_blk_config.fields[name];
    return spec.type === "u8" ? config(d).getUint8(spec.offset) : config(d).getUint32(spec.offset, true);
  };

  test("a writable drive offers discard, write-zeroes, flush, seg_max, blk_size and EVENT_IDX, not RO", () => {
    const d = drive();
    const f = d.device.features;
    for (const n of [VIRTIO_BLK_F.DISCARD, VIRTIO_BLK_F.WRITE_ZEROES, VIRTIO_BLK_F.FLUSH, VIRTIO_BLK_F.SEG_MAX, VIRTIO_BLK_F.BLK_SIZE, VIRTIO_F_RING_EVENT_IDX]) {
      expect(bit(f, n)).toBe(true);
    }
    expect(bit(f, VIRTIO_BLK_F.RO)).toBe(false);
    expect(d.device.config.byteLength).toBe(virtio_blk_config.size);
    expect(field(d, "seg_max")).toBe(BLOCK_SEG_MAX);
    expect(field(d, "blk_size")).toBe(SECTOR);
    expect(field(d, "max_discard_sectors")).toBe(0xffff_ffff);
    expect(field(d, "max_discard_seg")).toBe(1);
    expect(field(d, "discard_sector_alignment")).toBe(BLOCK_DISCARD_SECTOR_ALIGNMENT);
    expect(field(d, "max_write_zeroes_sectors")).toBe(BLOCK_MAX_WRITE_ZEROES_SECTORS);
    expect(field(d, "max_write_zeroes_seg")).toBe(1);
    expect(field(d, "write_zeroes_may_unmap")).toBe(1);
  });

  test("a read-only drive offers RO and neither discard nor write-zeroes", () => {
    const d = drive({ readOnly: true });
    const f = d.device.features;
    expect(bit(f, VIRTIO_BLK_F.RO)).toBe(true);
    expect(bit(f, VIRTIO_BLK_F.DISCARD)).toBe(false);
    expect(bit(f, VIRTIO_BLK_F.WRITE_ZEROES)).toBe(false);
    expect(bit(f, VIRTIO_BLK_F.FLUSH)).toBe(true);
    expect(field(d, "max_discard_seg")).toBe(0);
    expect(field(d, "max_write_zeroes_seg")).toBe(0);
  });
});

describe("virtio-blk requests", () => {
  test("IN reads the file's sectors into guest memory; used length is data + status", () => {
    const d = drive({ sectors: 16 });
    const r = read(d, 3, 2 * SECTOR);
    expect(r.status).toBe(OK);
    expect(r.written).toBe(2 * SECTOR + 1);
    expect(r.data).toEqual(d.file().subarray(3 * SECTOR, 5 * SECTOR));
    expect(d.device.stats).toMatchObject({ reads: 1, readBytes: 2 * SECTOR });
  });

  test("IN scatters across several data buffers in order", () => {
    const d = drive({ sectors: 16 });
    const a = d.buffer(SECTOR, true);
    const b = d.buffer(3 * SECTOR, true);
    const r = request(d, VIRTIO_BLK_T.IN, 1, [a, b]);
    expect(r.status).toBe(OK);
    expect(r.written).toBe(4 * SECTOR + 1);
    expect(d.bytesOf(a)).toEqual(d.file().subarray(1 * SECTOR, 2 * SECTOR));
    expect(d.bytesOf(b)).toEqual(d.file().subarray(2 * SECTOR, 5 * SECTOR));
  });

  test("OUT writes guest bytes to the file and nothing else; used length is 1", () => {
    const d = drive({ sectors: 16 });
    const before = d.file();
    const data = pattern(2 * SECTOR, 99);
    const r = write(d, 5, data);
    expect(r.status).toBe(OK);
    expect(r.written).toBe(1);
    const after = d.file();
    expect(after.subarray(5 * SECTOR, 7 * SECTOR)).toEqual(data);
    expect(after.subarray(0, 5 * SECTOR)).toEqual(before.subarray(0, 5 * SECTOR));
    expect(after.subarray(7 * SECTOR)).toEqual(before.subarray(7 * SECTOR));
    expect(d.device.stats).toMatchObject({ writes: 1, writtenBytes: 2 * SECTOR });
    // And a read sees it.
    expect(read(d, 5, 2 * SECTOR).data).toEqual(data);
  });

  test("the header may be split across buffers and share one with data (any layout)", () => {
    const d = drive({ sectors: 16 });
    const h = header(VIRTIO_BLK_T.IN, 2);
    // Header in two pieces; data and status in a single writable buffer.
    const tail = d.buffer(SECTOR + 1, true);
    d.submit(d.buffer(h.subarray(0, 5), false), d.buffer(h.subarray(5), false), tail);
    const r = d.run(tail);
    expect(r.status).toBe(OK);
    expect(r.written).toBe(SECTOR + 1);
    expect(d.bytesOf(tail).subarray(0, SECTOR)).toEqual(d.file().subarray(2 * SECTOR, 3 * SECTOR));

    // OUT with header and data in one readable buffer.
    const data = pattern(SECTOR, 5);
    const joined = new Uint8Array(16 + SECTOR);
    joined.set(header(VIRTIO_BLK_T.OUT, 9));
    joined.set(data, 16);
    const status = d.buffer(1, true);
    d.submit(d.buffer(joined, false), status);
    expect(d.run(status).status).toBe(OK);
    expect(d.file().subarray(9 * SECTOR, 10 * SECTOR)).toEqual(data);
  });

  test("FLUSH calls fsync; with FLUSH negotiated, writes alone do not", () => {
    const d = drive();
    write(d, 0, pattern(SECTOR, 1));
    expect(d.counters.fsync).toBe(0);
    const r = request(d, VIRTIO_BLK_T.FLUSH, 0);
    expect(r.status).toBe(OK);
    expect(r.written).toBe(1);
    expect(d.counters.fsync).toBe(1);
    expect(d.device.stats.flushes).toBe(1);
  });

  test("without FLUSH negotiated every write is made stable before completing (writethrough)", () => {
    const d = drive({ acked: ~featureBit(VIRTIO_BLK_F.FLUSH) });
    write(d, 0, pattern(SECTOR, 1));
    expect(d.counters.fsync).toBe(1);
    discard(d, VIRTIO_BLK_T.WRITE_ZEROES, segment(1, 1));
    expect(d.counters.fsync).toBe(2);
  });

  test("a failing fsync is IOERR", () => {
    const counters: Counters = { fsync: 0, fallocate: [] };
    const ops = { ...countingOps(counters), fsync: () => { throw new SyscallError("fsync", ERRNO.EIO); } };
    const d = drive({ ops });
    expect(request(d, VIRTIO_BLK_T.FLUSH, 0).status).toBe(IOERR);
    expect(d.device.stats.ioErrors).toBe(1);
    expect(d.device.lastHostError).toContain("EIO");
  });

  test("GET_ID returns the serial NUL-padded to 20 bytes; a shorter buffer gets a prefix", () => {
    const d = drive({ id: "volt-disk-0" });
    const full = d.buffer(VIRTIO_BLK_ID_BYTES, true);
    const r = request(d, VIRTIO_BLK_T.GET_ID, 0, [full]);
    expect(r.status).toBe(OK);
    expect(r.written).toBe(VIRTIO_BLK_ID_BYTES + 1);
    const expected = new Uint8Array(VIRTIO_BLK_ID_BYTES);
    expected.set(new TextEncoder().encode("volt-disk-0"));
    expect(d.bytesOf(full)).toEqual(expected);

    const short = d.buffer(4, true);
    const s = request(d, VIRTIO_BLK_T.GET_ID, 0, [short]);
    expect(s.written).toBe(5);
    expect(new TextDecoder().decode(d.bytesOf(short))).toBe("volt");
  });

  test("GET_ID without an id returns 20 NUL bytes", () => {
    const d = drive();
    const id = d.buffer(VIRTIO_BLK_ID_BYTES, true);
    expect(request(d, VIRTIO_BLK_T.GET_ID, 0, [id]).status).toBe(OK);
    expect(d.bytesOf(id)).toEqual(new Uint8Array(VIRTIO_BLK_ID_BYTES));
  });

  test("DISCARD makes the range read as zeroes and keeps the file size", () => {
    const d = drive({ sectors: 32 });
    const before = d.file();
    // 4 KiB aligned, so the host punches a whole block.
    const r = discard(d, VIRTIO_BLK_T.DISCARD, segment(8, 8));
    expect(r.status).toBe(OK);
    expect(r.written).toBe(1);
    const after = d.file();
    expect(after.byteLength).toBe(before.byteLength);
    expect(after.subarray(8 * SECTOR, 16 * SECTOR)).toEqual(new Uint8Array(8 * SECTOR));
    expect(after.subarray(0, 8 * SECTOR)).toEqual(before.subarray(0, 8 * SECTOR));
    expect(after.subarray(16 * SECTOR)).toEqual(before.subarray(16 * SECTOR));
    expect(d.counters.fallocate).toEqual([FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE]);
    expect(d.device.stats.discards).toBe(1);
  });

  test("WRITE_ZEROES zeroes the range, with ZERO_RANGE, or PUNCH_HOLE when unmap is allowed", () => {
    const d = drive({ sectors: 32 });
    const before = d.file();
    expect(discard(d, VIRTIO_BLK_T.WRITE_ZEROES, segment(3, 2)).status).toBe(OK);
    expect(discard(d, VIRTIO_BLK_T.WRITE_ZEROES, segment(20, 5, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)).status).toBe(OK);
    const after = d.file();
    expect(after.byteLength).toBe(before.byteLength);
    expect(after.subarray(3 * SECTOR, 5 * SECTOR)).toEqual(new Uint8Array(2 * SECTOR));
    expect(after.subarray(20 * SECTOR, 25 * SECTOR)).toEqual(new Uint8Array(5 * SECTOR));
    expect(after.subarray(5 * SECTOR, 20 * SECTOR)).toEqual(before.subarray(5 * SECTOR, 20 * SECTOR));
    expect(after.subarray(25 * SECTOR)).toEqual(before.subarray(25 * SECTOR));
    expect(d.counters.fallocate).toEqual([
      FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
      FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
    ]);
    expect(d.device.stats.writeZeroes).toBe(2);
  });

  test("without fallocate support, WRITE_ZEROES writes zeroes (asking once) and DISCARD does nothing", () => {
    const counters: Counters = { fsync: 0, fallocate: [] };
    const ops = countingOps(counters, () => {
      throw new SyscallError("fallocate", ERRNO.EOPNOTSUPP);
    });
    const d = drive({ sectors: 32, ops });
    const before = d.file();
    expect(discard(d, VIRTIO_BLK_T.WRITE_ZEROES, segment(2, 3)).status).toBe(OK);
    expect(discard(d, VIRTIO_BLK_T.WRITE_ZEROES, segment(10, 2, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)).status).toBe(OK);
    expect(discard(d, VIRTIO_BLK_T.DISCARD, segment(16, 8)).status).toBe(OK);
    const after = d.file();
    expect(after.subarray(2 * SECTOR, 5 * SECTOR)).toEqual(new Uint8Array(3 * SECTOR));
    expect(after.subarray(10 * SECTOR, 12 * SECTOR)).toEqual(new Uint8Array(2 * SECTOR));
    expect(after.subarray(16 * SECTOR)).toEqual(before.subarray(16 * SECTOR));
    expect(after.subarray(5 * SECTOR, 10 * SECTOR)).toEqual(before.subarray(5 * SECTOR, 10 * SECTOR));
    // Each refused mode is tried once, not on every request.
    expect(counters.fallocate).toEqual([FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE]);
  });

  test("other fallocate failures are IOERR", () => {
    const counters: Counters = { fsync: 0, fallocate: [] };
    const ops = countingOps(counters, () => {
      throw new SyscallError("fallocate", ERRNO.ENOSPC);
    });
    const d = drive({ ops });
    expect(discard(d, VIRTIO_BLK_T.WRITE_ZEROES, segment(0, 1)).status).toBe(IOERR);
    expect(d.device.stats.ioErrors).toBe(1);
  });

  test("DISCARD / WRITE_ZEROES flags: unmap on a discard and unknown flags are UNSUPP", () => {
    const d = drive();
    const before = d.file();
    expect(discard(d, VIRTIO_BLK_T.DISCARD, segment(0, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)).status).toBe(UNSUPP);
    expect(discard(d, VIRTIO_BLK_T.WRITE_ZEROES, segment(0, 1, 2)).status).toBe(UNSUPP);
    expect(d.file()).toEqual(before);
    expect(d.counters.fallocate).toEqual([]);
  });

  test("DISCARD / WRITE_ZEROES the driver did not negotiate are UNSUPP", () => {
    const d = drive({ acked: ALL_FEATURES & ~featureBit(VIRTIO_BLK_F.DISCARD) & ~featureBit(VIRTIO_BLK_F.WRITE_ZEROES) });
    const before = d.file();
    expect(discard(d, VIRTIO_BLK_T.DISCARD, segment(0, 1)).status).toBe(UNSUPP);
    expect(discard(d, VIRTIO_BLK_T.WRITE_ZEROES, segment(0, 1)).status).toBe(UNSUPP);
    expect(d.file()).toEqual(before);
  });

  test("malformed DISCARD / WRITE_ZEROES segment lists are IOERR and touch nothing", () => {
    const d = drive({ sectors: 16 });
    const before = d.file();
    const cases: [string, () => { status?: number }][] = [
      ["no segment", () => discard(d, VIRTIO_BLK_T.WRITE_ZEROES)],
      ["two segments (max 1)", () => discard(d, VIRTIO_BLK_T.WRITE_ZEROES, segment(0, 1), segment(2, 1))],
      ["a partial segment", () => discard(d, VIRTIO_BLK_T.WRITE_ZEROES, segment(0, 1).subarray(0, 12))],
      ["past capacity", () => discard(d, VIRTIO_BLK_T.WRITE_ZEROES, segment(15, 2))],
      ["sector overflowing u64", () => discard(d, VIRTIO_BLK_T.DISCARD, segment(0xffff_ffff_ffff_ffffn, 2))],
      ["a writable data buffer", () => request(d, VIRTIO_BLK_T.DISCARD, 0, [d.buffer(segment(0, 1), false), d.buffer(16, true)])],
    ];
    for (const [name, run] of cases) expect([name, run().status]).toEqual([name, IOERR]);
    expect(d.file()).toEqual(before);
    expect(d.counters.fallocate).toEqual([]);
  });

  test("WRITE_ZEROES over max_write_zeroes_sectors is IOERR even inside the drive", () => {
    // Sparse, so the large drive costs no disk space.
    const path = join(scratch, "large.img");
    writeFileSync(path, "");
    truncateSync(path, (BLOCK_MAX_WRITE_ZEROES_SECTORS + 8) * SECTOR);
    const d = drive({ path });
    expect(discard(d, VIRTIO_BLK_T.WRITE_ZEROES, segment(0, BLOCK_MAX_WRITE_ZEROES_SECTORS + 1)).status).toBe(IOERR);
    expect(d.counters.fallocate).toEqual([]);
    expect(discard(d, VIRTIO_BLK_T.WRITE_ZEROES, segment(8, BLOCK_MAX_WRITE_ZEROES_SECTORS)).status).toBe(OK);
  });

  test("unknown request types are UNSUPP", () => {
    const d = drive();
    for (const type of [2, 3, 5, 10, 14, 16, 0x8000_0001, 0xffff_ffff]) {
      const r = request(d, type, 0, [d.buffer(SECTOR, true)]);
      expect([type, r.status, r.written]).toEqual([type, UNSUPP, 1]);
    }
    expect(d.device.stats.unsupported).toBe(8);
  });

  test("requests are served in one pass with one notification, each chain's head returned", () => {
    const d = drive();
    const statuses = [d.buffer(1, true), d.buffer(1, true), d.buffer(1, true)];
    const heads = statuses.map((status) => d.submit(d.buffer(header(VIRTIO_BLK_T.FLUSH), false), status));
    d.device.processQueue(0);
    expect(d.queue.used.map((u) => u.head)).toEqual(heads);
    expect(d.queue.notifications).toBe(1);
    for (const s of statuses) expect(d.memory.readU8(s.address)).toBe(OK);
  });

  test("short read at the end of a shrunken file zero-fills", () => {
    const d = drive({ sectors: 8 });
    truncateSync(d.path, 6 * SECTOR + 100);
    const r = read(d, 5, 3 * SECTOR);
    expect(r.status).toBe(OK);
    const fileBytes = d.file();
    expect(r.data.subarray(0, SECTOR + 100)).toEqual(fileBytes.subarray(5 * SECTOR));
    expect(r.data.subarray(SECTOR + 100)).toEqual(new Uint8Array(2 * SECTOR - 100));
  });

  test("a host read error is IOERR, not a throw", () => {
    const counters: Counters = { fsync: 0, fallocate: [] };
    const ops = { ...countingOps(counters), read: () => { throw new Error("EIO: i/o error, read"); } };
    const d = drive({ ops });
    const r = read(d, 0, SECTOR);
    expect(r.status).toBe(IOERR);
    expect(r.written).toBe(1);
    expect(d.device.stats).toMatchObject({ ioErrors: 1, reads: 0 });
  });
});

describe("virtio-blk against a hostile driver (statuses, never a throw)", () => {
  test("a header shorter than 16 bytes is IOERR", () => {
    const d = drive();
    const status = d.buffer(1, true);
    d.submit(d.buffer(header(VIRTIO_BLK_T.OUT, 0).subarray(0, 15), false), status);
    const r = d.run(status);
    expect([r.status, r.written]).toEqual([IOERR, 1]);
  });

  test("a chain with no writable byte is returned with used length 0 and nothing written", () => {
    const d = drive();
    const before = d.file();
    const notStatus = d.buffer(1, false);
    const data = pattern(SECTOR, 3);
    d.submit(d.buffer(header(VIRTIO_BLK_T.OUT, 0), false), d.buffer(data, false), notStatus);
    const r = d.run(notStatus);
    expect(r.written).toBe(0);
    expect(r.status).toBe(0xee);
    expect(d.file()).toEqual(before);
    expect(d.device.stats.invalid).toBe(1);

    // Also a chain with only empty writable buffers.
    d.submit(d.buffer(header(VIRTIO_BLK_T.FLUSH), false), { address: 0x100, length: 0, writable: true });
    d.device.processQueue(0);
    expect(d.queue.used.at(-1)?.written).toBe(0);
  });

  test("a readable buffer after a writable one is IOERR and the data is not written", () => {
    const d = drive();
    const before = d.file();
    const status = d.buffer(1, true);
    d.submit(d.buffer(header(VIRTIO_BLK_T.OUT, 0), false), status, d.buffer(pattern(SECTOR, 4), false));
    expect(d.run(status).status).toBe(IOERR);
    expect(d.file()).toEqual(before);
  });

  test("IN into a device-readable buffer is IOERR and the buffer is untouched", () => {
    const d = drive();
    const readable = d.buffer(SECTOR, false);
    const r = request(d, VIRTIO_BLK_T.IN, 0, [readable]);
    expect([r.status, r.written]).toEqual([IOERR, 1]);
    expect(d.bytesOf(readable)).toEqual(new Uint8Array(SECTOR).fill(0xee));
  });

  test("OUT from a device-writable buffer is IOERR and the file is unchanged", () => {
    const d = drive();
    const before = d.file();
    const r = request(d, VIRTIO_BLK_T.OUT, 0, [d.buffer(SECTOR, true)]);
    expect(r.status).toBe(IOERR);
    expect(d.file()).toEqual(before);
  });

  test("GET_ID with device-readable data is IOERR", () => {
    const d = drive({ id: "abc" });
    expect(request(d, VIRTIO_BLK_T.GET_ID, 0, [d.buffer(20, false)]).status).toBe(IOERR);
  });

  test("sector ranges past the capacity or wrapping u64 are IOERR; the last sector is fine", () => {
    const d = drive({ sectors: 16 });
    const before = d.file();
    expect(read(d, 15, SECTOR).status).toBe(OK);
    expect(read(d, 16, SECTOR).status).toBe(IOERR);
    expect(read(d, 15, 2 * SECTOR).status).toBe(IOERR);
    expect(read(d, 0xffff_ffff_ffff_ffffn, 2 * SECTOR).status).toBe(IOERR);
    expect(read(d, 1n << 55n, SECTOR).status).toBe(IOERR);
    expect(write(d, 16, pattern(SECTOR)).status).toBe(IOERR);
    expect(write(d, 0xffff_ffff_ffff_fff8n, pattern(8 * SECTOR)).status).toBe(IOERR);
    expect(d.file()).toEqual(before);
    expect(d.device.stats).toMatchObject({ invalid: 6, ioErrors: 0 });
  });

  test("data lengths that are not whole sectors are IOERR", () => {
    const d = drive();
    const before = d.file();
    const r = read(d, 0, 500);
    expect([r.status, r.written]).toEqual([IOERR, 1]);
    expect(r.data).toEqual(new Uint8Array(500).fill(0xee));
    expect(write(d, 0, pattern(SECTOR + 1)).status).toBe(IOERR);
    expect(d.file()).toEqual(before);
    // Refused as the driver's error, not failed by an exception on the way.
    expect(d.device.stats).toMatchObject({ invalid: 2, ioErrors: 0 });
  });

  test("a buffer outside guest RAM is IOERR; a status outside guest RAM drops the status", () => {
    const d = drive();
    const outside: DescriptorBuffer = { address: MEMORY_SIZE, length: SECTOR, writable: true };
    expect(request(d, VIRTIO_BLK_T.IN, 0, [outside]).status).toBe(IOERR);
    expect(d.device.stats).toMatchObject({ invalid: 1, ioErrors: 0 });
    d.submit(d.buffer(header(VIRTIO_BLK_T.FLUSH), false), { address: MEMORY_SIZE + 8, length: 1, writable: true });
    expect(() => d.device.processQueue(0)).not.toThrow();
    expect(d.queue.used.at(-1)?.written).toBe(0);
  });

  test("a read-only drive refuses OUT, DISCARD and WRITE_ZEROES with IOERR and leaves the file unchanged", () => {
    const d = drive({ readOnly: true, acked: ALL_FEATURES });
    const before = d.file();
    expect(write(d, 0, pattern(SECTOR, 8)).status).toBe(IOERR);
    expect(discard(d, VIRTIO_BLK_T.DISCARD, segment(0, 8)).status).toBe(IOERR);
    expect(discard(d, VIRTIO_BLK_T.WRITE_ZEROES, segment(0, 8)).status).toBe(IOERR);
    expect(d.file()).toEqual(before);
    expect(d.counters.fallocate).toEqual([]);
    // Refused by the device, not merely failed by the read-only file descriptor.
    expect(d.device.stats).toMatchObject({ invalid: 3, ioErrors: 0 });
    // Reads and flushes still work.
    expect(read(d, 0, SECTOR).data).toEqual(before.subarray(0, SECTOR));
    expect(request(d, VIRTIO_BLK_T.FLUSH, 0).status).toBe(OK);
  });

  test("a broken ring (pop throws) propagates out of processQueue; before activation nothing is popped", () => {
    const d = drive();
    const broken = new Error("descriptor loop");
    d.queue.popError = broken;
    expect(() => d.device.processQueue(0)).toThrow(broken);

    const idle = drive();
    idle.device.reset();
    idle.submit(idle.buffer(header(VIRTIO_BLK_T.FLUSH), false), idle.buffer(1, true));
    const pops = idle.queue.pops;
    idle.device.processQueue(0);
    expect(idle.queue.pops).toBe(pops);
    expect(idle.queue.used).toEqual([]);
    // Only queue 0 exists.
    const other = drive();
    other.submit(other.buffer(header(VIRTIO_BLK_T.FLUSH), false), other.buffer(1, true));
    other.device.processQueue(1);
    expect(other.queue.used).toEqual([]);
  });
});

describe("virtio-blk rate limiting", () => {
  test("requests beyond the ops budget are held (not refused) until the limiter's timer fires, in order", () => {
    let now = 0;
    const armed: number[] = [];
    const d = drive({ sectors: 64 });
    d.device.setRateLimiter(new RateLimiter({ ops: { size: 2, refillTimeMs: 1000 } }, { fd: 77, arm: (ms) => void armed.push(ms), acknowledge: () => {}, close: () => {} }, () => now));
    const statuses = [0, 1, 2, 3].map((i) => {
      const status = d.buffer(1, true);
      d.submit(d.buffer(header(VIRTIO_BLK_T.IN, i), false), d.buffer(SECTOR, true), status);
      return status;
    });
    d.device.processQueue(0);
    expect(d.queue.used.map((u) => u.head)).toEqual([0, 1]); // two ops, then held
    expect(d.device.pollFds()).toEqual([{ fd: 77, events: POLLIN }]);
    expect(armed).toEqual([500]);
    expect(d.device.stats.throttled).toBe(1);
    // A notification while throttled does not bypass the limiter.
    d.device.processQueue(0);
    expect(d.queue.used.length).toBe(2);
    now = 500;
    d.device.processBackend(77);
    expect(d.queue.used.map((u) => u.head)).toEqual([0, 1, 2]);
    now = 1000;
    d.device.processBackend(77);
    expect(d.queue.used.map((u) => u.head)).toEqual([0, 1, 2, 3]);
    expect(statuses.map((s) => d.memory.readU8(s.address))).toEqual([0, 0, 0, 0]);
    expect(d.device.pollFds()).toEqual([]);
  });
});

/**
 * virtio-blk data moves with one preadv/pwritev per request (a Linux request
 * is up to 254 page-sized segments; one call per segment was the benchmark's
 * bottleneck), through DiskImage's readIntoAll/writeFromAll.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DiskImage, SYSTEM_DISK_OPS, type DiskFileOps } from "../../src/devices/virtio/block-backend.ts";

const work = mkdtempSync(join(tmpdir(), "volt-blk-vec-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function image(name: string, bytes: Uint8Array): string {
  const path = join(work, name);
  writeFileSync(path, bytes);
  return path;
}

const pattern = (length: number, seed = 0) => Uint8Array.from({ length }, (_, i) => (i * 7 + seed) & 0xff);

describe("readIntoAll / writeFromAll on a real file (preadv/pwritev)", () => {
  test("scattered views are filled in order from the position, in one call", () => {
    const content = pattern(64 * 1024);
    let calls = 0;
    const ops: DiskFileOps = { ...SYSTEM_DISK_OPS, readv: (fd, into, position) => (calls++, SYSTEM_DISK_OPS.readv!(fd, into, position)) };
    const disk = DiskImage.open(image("read.img", content), true, ops);
    try {
      const memory = new Uint8Array(3 * 4096 + 100);
      const views = [memory.subarray(4096, 8192), memory.subarray(0, 512), memory.subarray(8192 + 100, 8192 + 100 + 4096)];
      disk.readIntoAll(views, 1024);
      expect(calls).toBe(1);
      expect([...views[0]!]).toEqual([...content.subarray(1024, 1024 + 4096)]);
      expect([...views[1]!]).toEqual([...content.subarray(1024 + 4096, 1024 + 4096 + 512)]);
      expect([...views[2]!]).toEqual([...content.subarray(1024 + 4608, 1024 + 4608 + 4096)]);
    } finally {
      disk.close();
    }
  });

  test("past the end of the file the views read as zeros", () => {
    const disk = DiskImage.open(image("short.img", pattern(4096, 3)), true);
    try {
      const views = [new Uint8Array(2048).fill(0xee), new Uint8Array(4096).fill(0xee)];
      disk.readIntoAll(views, 2048);
      expect([...views[0]!]).toEqual([...pattern(4096, 3).subarray(2048)]);
      expect(views[1]!.every((byte) => byte === 0)).toBe(true);
    } finally {
      disk.close();
    }
  });

  test("views are written in order at the position", () => {
    const path = image("write.img", new Uint8Array(16 * 1024));
    const disk = DiskImage.open(path, false);
    try {
      disk.writeFromAll([pattern(512, 1), pattern(4096, 2), pattern(1000, 3)], 512);
    } finally {
      disk.close();
    }
    const written = new Uint8Array(readFileSync(path));
    expect([...written.subarray(512, 1024)]).toEqual([...pattern(512, 1)]);
    expect([...written.subarray(1024, 5120)]).toEqual([...pattern(4096, 2)]);
    expect([...written.subarray(5120, 6120)]).toEqual([...pattern(1000, 3)]);
    expect(written[6120]).toBe(0);
  });
});

describe("short transfers go on where the last one stopped", () => {
  /** A file system that moves at most `step` bytes per call. */
  function choppy(step: number, content: Uint8Array) {
    const calls: number[] = [];
    const ops: DiskFileOps = {
      ...SYSTEM_DISK_OPS,
      readv: (_fd, into, position) => {
        calls.push(position);
        let moved = 0;
        for (const view of into) {
          const n = Math.min(view.byteLength, step - moved, Math.max(0, content.byteLength - position - moved));
          view.set(content.subarray(position + moved, position + moved + n));
          moved += n;
          if (moved === step || n < view.byteLength) break;
        }
        return moved;
      },
      writev: (_fd, from, position) => {
        calls.push(position);
        let moved = 0;
        for (const view of from) {
          const n = Math.min(view.byteLength, step - moved);
          content.set(view.subarray(0, n), position + moved);
          moved += n;
          if (moved === step) break;
        }
        return moved;
      },
    };
    return { ops, calls };
  }

  test("a read that stops mid-view resumes inside that view", () => {
    const content = pattern(8192, 5);
    const { ops, calls } = choppy(700, content);
    const disk = DiskImage.open(image("choppy-read.img", new Uint8Array(8192)), true, ops);
    try {
      const views = [new Uint8Array(1000), new Uint8Array(300), new Uint8Array(2000)];
      disk.readIntoAll(views, 100);
      expect(calls).toEqual([100, 800, 1500, 2200, 2900]);
      const joined = new Uint8Array(3300);
      joined.set(views[0]!, 0);
      joined.set(views[1]!, 1000);
      joined.set(views[2]!, 1300);
      expect([...joined]).toEqual([...content.subarray(100, 3400)]);
    } finally {
      disk.close();
    }
  });

  test("a write that stops mid-view resumes inside that view", () => {
    const content = new Uint8Array(8192);
    const { ops, calls } = choppy(1500, content);
    const disk = DiskImage.open(image("choppy-write.img", new Uint8Array(8192)), false, ops);
    try {
      disk.writeFromAll([pattern(1000, 1), pattern(1000, 2), pattern(1000, 3)], 0);
      expect(calls).toEqual([0, 1500]);
      expect([...content.subarray(0, 1000)]).toEqual([...pattern(1000, 1)]);
      expect([...content.subarray(1000, 2000)]).toEqual([...pattern(1000, 2)]);
      expect([...content.subarray(2000, 3000)]).toEqual([...pattern(1000, 3)]);
    } finally {
      disk.close();
    }
  });

  test("a write that makes no progress is an error, not a loop", () => {
    const ops: DiskFileOps = { ...SYSTEM_DISK_OPS, writev: () => 0 };
    const disk = DiskImage.open(image("stuck.img", new Uint8Array(4096)), false, ops);
    try {
      expect(() => disk.writeFromAll([new Uint8Array(10), new Uint8Array(10)], 0)).toThrow(/made no progress/);
    } finally {
      disk.close();
    }
  });
});

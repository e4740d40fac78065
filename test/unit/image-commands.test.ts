/**
 * `volt image initramfs` and `volt image ext4`: what the images hold, the
 * JSON documents, and exit 2 with nothing written for bad input.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { buildExt4Image, Ext4ImageError, findMkfsExt4 } from "../../src/image/ext4.ts";
import { KernelStore } from "../../src/kernel/store.ts";
import { makeVmlinux } from "./kernel-fixtures.ts";

const root = join(import.meta.dir, "..", "..");
const work = mkdtempSync(join(tmpdir(), "volt-image-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const data = join(work, "data");

let counter = 0;
const fresh = (prefix: string) => join(work, `${prefix}-${++counter}`);

function volt(args: string[]) {
  const child = Bun.spawnSync(["bun", join(root, "src/cli/main.ts"), "image", ...args], {
    cwd: work,
    env: { ...process.env, NO_COLOR: "1", VOLT_DATA_DIR: data },
    timeout: 60_000,
  });
  return { exitCode: child.exitCode, stdout: child.stdout.toString(), stderr: child.stderr.toString() };
}

/** A static x86-64 ELF header, enough to pass as busybox (as in initramfs.test.ts); PT_INTERP fakes a dynamic one. */
function fakeBusybox(programHeaderType: number): string {
  const elf = new Uint8Array(64 + 56);
  const view = new DataView(elf.buffer);
  view.setUint32(0, 0x7f454c46);
  elf[4] = 2;
  elf[5] = 1;
  view.setBigUint64(32, 64n, true);
  view.setUint16(54, 56, true);
  view.setUint16(56, 1, true);
  view.setUint32(64, programHeaderType, true);
  const path = fresh("busybox");
  writeFileSync(path, elf);
  return path;
}
const busybox = fakeBusybox(1);

/** newc entries of a gzip'ed cpio: path -> data. */
function readCpio(gz: Uint8Array): Map<string, { mode: number; data: Buffer }> {
  const bytes = gunzipSync(gz);
  const entries = new Map<string, { mode: number; data: Buffer }>();
  let at = 0;
  const pad4 = (n: number) => (n + 3) & ~3;
  for (;;) {
    expect(bytes.toString("latin1", at, at + 6)).toBe("070701");
    const field = (i: number) => parseInt(bytes.toString("latin1", at + 6 + i * 8, at + 14 + i * 8), 16);
    const mode = field(1);
    const size = field(6);
    const nameSize = field(11);
    const name = bytes.toString("utf8", at + 110, at + 110 + nameSize - 1);
    const dataAt = pad4(at + 110 + nameSize);
    if (name === "TRAILER!!!") return entries;
    entries.set(name, { mode, data: bytes.subarray(dataAt, dataAt + size) });
    at = pad4(dataAt + size);
  }
}

describe("volt image initramfs", () => {
  // A stored kernel with two modules, as volt kernel fetch leaves one.
  const moduleDir = fresh("modules");
  mkdirSync(moduleDir);
  writeFileSync(join(moduleDir, "virtio.ko"), "virtio module");
  writeFileSync(join(moduleDir, "virtio_blk.ko"), "virtio_blk module");
  const kernelFile = fresh("vmlinux");
  writeFileSync(kernelFile, makeVmlinux());
  new KernelStore(join(data, "kernels")).add(kernelFile, { name: "guest", modules: [join(moduleDir, "virtio.ko"), join(moduleDir, "virtio_blk.ko")] });

  test("busybox, the kernel's modules in order, extra files, the script and /init", () => {
    const script = fresh("script.sh");
    writeFileSync(script, "echo hello from the guest\nexit 3\n");
    const extra = fresh("tool");
    writeFileSync(extra, "#!/bin/sh\necho tool\n", { mode: 0o755 });
    const out = join(work, "initrd.img");
    const result = volt([
      "initramfs", "--out", out, "--kernel", "guest", "--script", script, "--file", `${extra}:/usr/bin/tool`, "--init-exit", "reboot", "--busybox", busybox, "--json",
    ]);
    expect(result.exitCode).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual({
      ok: true,
      initramfs: {
        path: out,
        sizeBytes: statSync(out).size,
        kernel: "guest",
        modules: ["virtio.ko", "virtio_blk.ko"],
        files: ["/usr/bin/tool"],
        script: true,
        initExit: "reboot",
      },
    });
    const entries = readCpio(readFileSync(out));
    expect(entries.get("lib/modules/virtio_blk.ko")?.data.toString()).toBe("virtio_blk module");
    expect(entries.get("usr/bin/tool")?.data.toString()).toBe("#!/bin/sh\necho tool\n");
    expect(entries.get("usr/bin/tool")!.mode & 0o777).toBe(0o755);
    expect(entries.get("etc/volt/script.sh")?.data.toString()).toContain("hello from the guest");
    const init = entries.get("init")!.data.toString();
    expect(init.indexOf("insmod /lib/modules/virtio.ko")).toBeLessThan(init.indexOf("insmod /lib/modules/virtio_blk.ko"));
    expect(init).toContain("reboot -f");
    expect(entries.has("bin/busybox")).toBe(true);
  });

  test("the minimum: just --out", () => {
    const out = join(work, "plain.img");
    const result = volt(["initramfs", "--out", out, "--busybox", busybox]);
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain("0 module(s)");
    expect(readCpio(readFileSync(out)).get("init")!.data.toString()).toContain("poweroff -f");
  });

  test.each([
    ["no --out", () => ["--busybox", busybox], "missing --out FILE"],
    ["a kernel not in the store", () => ["--out", fresh("o"), "--kernel", "nope", "--busybox", busybox], 'no kernel named "nope"'],
    ["a missing script", () => ["--out", fresh("o"), "--script", "/no/such.sh", "--busybox", busybox], "cannot read script /no/such.sh: no such file"],
    ["a --file without a guest path", () => ["--out", fresh("o"), "--file", busybox, "--busybox", busybox], "expected HOST:GUEST"],
    ["a --file whose host file is missing", () => ["--out", fresh("o"), "--file", "/no/such:/x", "--busybox", busybox], "/no/such is not a file"],
    ["a bad --init-exit", () => ["--out", fresh("o"), "--init-exit", "halt", "--busybox", busybox], "--init-exit must be poweroff or reboot"],
    ["a dynamically linked busybox", () => ["--out", fresh("o"), "--busybox", fakeBusybox(3)], "dynamically linked"],
    ["an output directory that does not exist", () => ["--out", "/no/such/dir/initrd.img", "--busybox", busybox], "does not exist"],
    ["an existing output without --force", () => ["--out", busybox, "--busybox", busybox], "exists; give --force"],
  ])("%s: exit 2, nothing written", (_, makeArgs, message) => {
    const args = makeArgs();
    const before = readdirSync(work).sort();
    const result = volt(["initramfs", ...args, "--json"]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(message);
    expect(JSON.parse(result.stdout).ok).toBe(false);
    expect(readdirSync(work).sort()).toEqual(before);
  });
});

describe("volt image ext4", () => {
  const haveMkfs = findMkfsExt4() !== undefined;
  const tree = fresh("rootfs");
  mkdirSync(join(tree, "etc"), { recursive: true });
  mkdirSync(join(tree, "bin"));
  writeFileSync(join(tree, "etc", "hostname"), "volt-guest\n");
  writeFileSync(join(tree, "bin", "init"), "#!/bin/sh\necho init\n", { mode: 0o755 });
  writeFileSync(join(tree, "bin", "blob"), new Uint8Array(3 << 20).fill(0x5a));

  test("builds an image holding the tree", () => {
    if (!haveMkfs) return void console.log("skipping: mkfs.ext4 is not installed");
    const out = join(work, "rootfs.ext4");
    const result = volt(["ext4", tree, "--out", out, "--json"]);
    expect(result.exitCode).toBe(0);
    const report = JSON.parse(result.stdout);
    expect(report).toMatchObject({ ok: true, image: { path: out, sourceDir: tree, label: "volt-root", entries: 5 } });
    expect(statSync(out).size).toBe(report.image.sizeBytes);
    expect(report.image.sizeMiB).toBeGreaterThanOrEqual(8);
    // ext4 superblock magic 0xef53 at 1024 + 0x38.
    expect(readFileSync(out).readUInt16LE(1024 + 0x38)).toBe(0xef53);
    const debugfs = Bun.which("debugfs") ?? ["/sbin/debugfs", "/usr/sbin/debugfs"].find((p) => existsSync(p));
    if (debugfs) {
      const cat = Bun.spawnSync([debugfs, "-R", "cat /etc/hostname", out], { stderr: "pipe" });
      expect(cat.stdout.toString()).toBe("volt-guest\n");
    }
    // An explicit size, replacing the image.
    const sized = JSON.parse(volt(["ext4", tree, "--out", out, "--size", "64", "--force", "--json"]).stdout);
    expect(sized.image.sizeMiB).toBe(64);
    expect(statSync(out).size).toBe(64 << 20);
  });

  test.each([
    ["a missing directory", () => ["/no/such/dir", "--out", fresh("img")], "source directory /no/such/dir does not exist"],
    ["a file instead of a directory", () => [busybox, "--out", fresh("img")], "is not a directory"],
    ["no directory", () => ["--out", fresh("img")], "missing the directory"],
    ["no --out", () => [tree], "missing --out FILE"],
    ["a size too small for the tree", () => [tree, "--out", fresh("img"), "--size", "2"], "too small"],
    ["a size that is not a number", () => [tree, "--out", fresh("img"), "--size", "big"], "--size must be a whole number"],
    ["an existing output without --force", () => [tree, "--out", busybox], "exists; give --force"],
  ])("%s: exit 2, nothing written", (_, makeArgs, message) => {
    if (!haveMkfs) return;
    const args = makeArgs();
    const before = readdirSync(work).sort();
    const result = volt(["ext4", ...args, "--json"]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(message);
    expect(JSON.parse(result.stdout).ok).toBe(false);
    expect(readdirSync(work).sort()).toEqual(before);
  });

  test("no mkfs.ext4 is a clear error", () => {
    let error: unknown;
    try {
      buildExt4Image({ sourceDir: tree, out: fresh("img"), mkfsPath: "/no/such/mkfs.ext4" });
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(Ext4ImageError);
    expect((error as Ext4ImageError).kind).toBe("mkfs-missing");
    expect((error as Error).message).toContain("install e2fsprogs");
  });
});

/**
 * The kernel store (`volt kernel list|add|rm|default`, and `fetch` from a
 * .deb): what an entry holds, that a bad add leaves nothing behind, and the
 * CLI's exit statuses and JSON documents. Every test uses its own store
 * through VOLT_DATA_DIR.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GUEST_MODULES } from "../../src/kernel/fetch.ts";
import { KernelStore, KernelStoreError, voltDataDir } from "../../src/kernel/store.ts";
import { compressPayload, makeBzImage, makeVmlinux, SYNTHETIC_RELEASE } from "./kernel-fixtures.ts";

const root = join(import.meta.dir, "..", "..");
const work = mkdtempSync(join(tmpdir(), "volt-kernel-store-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

let counter = 0;
const fresh = (prefix: string) => join(work, `${prefix}-${++counter}`);

function file(name: string, contents: Uint8Array | string): string {
  const dir = fresh("src");
  mkdirSync(dir);
  const path = join(dir, name);
  writeFileSync(path, contents);
  return path;
}

const vmlinux = makeVmlinux();
const bzImageBytes = makeBzImage(compressPayload(vmlinux, "gzip"));

function storeError(fn: () => unknown): KernelStoreError {
  try {
    fn();
  } catch (error) {
    if (error instanceof KernelStoreError) return error;
    throw error;
  }
  throw new Error("expected a KernelStoreError");
}

/** Everything under the store directory, so "nothing half-added" can be checked exactly. */
const contents = (store: KernelStore): string[] => (existsSync(store.dir) ? readdirSync(store.dir, { recursive: true, encoding: "utf8" }).sort() : []);

test("the data directory: VOLT_DATA_DIR, else XDG_DATA_HOME/volt, else ~/.local/share/volt", () => {
  expect(voltDataDir({ VOLT_DATA_DIR: "/tmp/v" })).toBe("/tmp/v");
  expect(voltDataDir({ XDG_DATA_HOME: "/x/data" })).toBe("/x/data/volt");
  expect(voltDataDir({ XDG_DATA_HOME: "relative" })).toEndWith("/.local/share/volt");
  expect(voltDataDir({})).toEndWith("/.local/share/volt");
});

describe("KernelStore", () => {
  test("add keeps the image, its metadata and the config beside it; the first kernel becomes the default", () => {
    const store = new KernelStore(fresh("store"));
    const source = file("vmlinuz", bzImageBytes);
    writeFileSync(join(source, "..", `config-${SYNTHETIC_RELEASE}`), "CONFIG_VIRTIO_BLK=m\n");
    const kernel = store.add(source);
    expect(kernel).toMatchObject({
      name: SYNTHETIC_RELEASE,
      format: "bzimage",
      compression: "gzip",
      version: SYNTHETIC_RELEASE,
      bootProtocol: "2.15",
      pvh: true,
      sizeBytes: bzImageBytes.length,
      addedFrom: source,
      isDefault: true,
      modules: [],
      rootWithoutInitramfs: { answer: "no" },
    });
    expect(Date.parse(kernel.addedAt)).toBeGreaterThan(0);
    expect(kernel.sha256).toBe(new Bun.CryptoHasher("sha256").update(bzImageBytes).digest("hex"));
    expect(Buffer.from(readFileSync(kernel.path)).equals(Buffer.from(bzImageBytes))).toBe(true);
    expect(readFileSync(kernel.configPath!, "utf8")).toBe("CONFIG_VIRTIO_BLK=m\n");
    expect(JSON.parse(readFileSync(join(store.dir, kernel.name, "kernel.json"), "utf8")).schema).toBe(1);
    expect(store.list().map((k) => k.name)).toEqual([SYNTHETIC_RELEASE]);
    expect(store.defaultName()).toBe(SYNTHETIC_RELEASE);

    // A second kernel is not the default unless asked.
    const second = store.add(file("vmlinux", vmlinux), { name: "elf" });
    expect(second.isDefault).toBe(false);
    expect(second.format).toBe("elf");
    expect(store.add(file("vmlinux", vmlinux), { name: "elf2", makeDefault: true }).isDefault).toBe(true);
    expect(store.list().map((k) => [k.name, k.isDefault])).toEqual([
      [SYNTHETIC_RELEASE, false],
      ["elf", false],
      ["elf2", true],
    ]);
  });

  test("modules are copied in load order", () => {
    const store = new KernelStore(fresh("store"));
    const a = file("virtio.ko", "a");
    const b = file("virtio_blk.ko", "b");
    const kernel = store.add(file("vmlinux", vmlinux), { name: "k", modules: [a, b] });
    expect(kernel.modules).toEqual(["virtio.ko", "virtio_blk.ko"]);
    expect(kernel.modulePaths.map((p) => readFileSync(p, "utf8"))).toEqual(["a", "b"]);
  });

  describe("a bad add leaves the store as it was", () => {
    const store = new KernelStore(fresh("store"));
    store.add(file("vmlinux", vmlinux), { name: "taken" });
    const before = contents(store);
    const corrupt = compressPayload(vmlinux, "gzip");
    corrupt[corrupt.length >> 1]! ^= 0xff;
    test.each([
      ["a name already in the store", () => store.add(file("vmlinux", vmlinux), { name: "taken" }), "exists", "already in the store"],
      ["a file that is not a kernel", () => store.add(file("notes.txt", "not a kernel\n".repeat(100))), "not-a-kernel", "not a Linux kernel"],
      ["a corrupt compressed payload", () => store.add(file("bzImage", makeBzImage(corrupt)), { name: "corrupt" }), "not-a-kernel", "cannot decompress the payload"],
      ["a missing file", () => store.add("/no/such/vmlinuz"), "not-found", "no such file"],
      ["a directory", () => store.add(work), "unreadable", "not a regular file"],
      ["a bad name", () => store.add(file("vmlinux", vmlinux), { name: "../escape" }), "bad-name", "not a usable kernel name"],
      ["the reserved name", () => store.add(file("vmlinux", vmlinux), { name: "default" }), "bad-name", "not a usable kernel name"],
      ["a missing module", () => store.add(file("vmlinux", vmlinux), { name: "m", modules: ["/no/such.ko"] }), "not-found", "/no/such.ko"],
    ])("%s", (_, add, kind, message) => {
      const error = storeError(add);
      expect(error.kind).toBe(kind as KernelStoreError["kind"]);
      expect(error.message).toContain(message);
      expect(contents(store)).toEqual(before);
    });
  });

  test("rm removes the entry and clears the default that named it", () => {
    const store = new KernelStore(fresh("store"));
    store.add(file("vmlinux", vmlinux), { name: "a" });
    store.add(file("vmlinux", vmlinux), { name: "b" });
    expect(store.remove("b")).toEqual({ removed: "b", defaultCleared: false });
    expect(store.remove("a")).toEqual({ removed: "a", defaultCleared: true });
    expect(store.defaultName()).toBeUndefined();
    expect(contents(store)).toEqual([]);
    expect(storeError(() => store.remove("a")).kind).toBe("not-found");
  });

  test("default: set, refused for an unknown name", () => {
    const store = new KernelStore(fresh("store"));
    store.add(file("vmlinux", vmlinux), { name: "a" });
    store.add(file("vmlinux", vmlinux), { name: "b" });
    store.setDefault("b");
    expect(store.defaultKernel()?.name).toBe("b");
    expect(storeError(() => store.setDefault("zzz")).message).toContain('no kernel named "zzz"');
    expect(store.defaultName()).toBe("b");
  });

  test("resolve: a path when it has a '/', a stored name, a file in the current directory, else a clear error", () => {
    const store = new KernelStore(fresh("store"));
    store.add(file("vmlinux", vmlinux), { name: "micro" });
    expect(store.resolve("./micro")).toEqual({ kind: "path", path: "./micro" });
    const stored = store.resolve("micro");
    expect(stored.kind === "stored" && stored.kernel.name).toBe("micro");
    expect(store.resolve("package.json")).toEqual({ kind: "path", path: "package.json" });
    expect(storeError(() => store.resolve("nothing-like-this")).message).toContain("stored: micro");
  });

  test("work left by a killed add is cleaned up; it is never listed", () => {
    const store = new KernelStore(fresh("store"));
    mkdirSync(join(store.dir, ".partial-x-999999999-abcd"), { recursive: true });
    writeFileSync(join(store.dir, ".partial-x-999999999-abcd", "kernel.json"), "{}");
    expect(store.list()).toEqual([]);
    expect(contents(store)).toEqual([]);
  });
});

// ---------------------------------------------------------------- CLI
function volt(dataDir: string, args: string[], extraEnv: Record<string, string> = {}) {
  const child = Bun.spawnSync(["bun", join(root, "src/cli/main.ts"), "kernel", ...args], {
    cwd: work,
    env: { ...process.env, NO_COLOR: "1", VOLT_DATA_DIR: dataDir, ...extraEnv },
    timeout: 120_000,
  });
  return { exitCode: child.exitCode, stdout: child.stdout.toString(), stderr: child.stderr.toString() };
}

describe("volt kernel list|add|rm|default", () => {
  test("a round trip with --json", () => {
    const data = fresh("data");
    expect(JSON.parse(volt(data, ["list", "--json"]).stdout)).toEqual({ ok: true, dir: join(data, "kernels"), default: null, kernels: [] });

    const added = volt(data, ["add", file("bzImage", bzImageBytes), "--name", "synthetic", "--json"]);
    expect(added.exitCode).toBe(0);
    expect(JSON.parse(added.stdout)).toMatchObject({ ok: true, kernel: { name: "synthetic", format: "bzimage", compression: "gzip", isDefault: true, pvh: true } });

    volt(data, ["add", file("vmlinux", vmlinux), "--name", "elf"]);
    const listed = JSON.parse(volt(data, ["list", "--json"]).stdout);
    expect(listed.default).toBe("synthetic");
    expect(listed.kernels.map((k: { name: string }) => k.name)).toEqual(["elf", "synthetic"]);
    expect(listed.kernels[0]).toMatchObject({ name: "elf", format: "elf", version: SYNTHETIC_RELEASE, path: join(data, "kernels", "elf", "kernel") });

    const text = volt(data, ["list"]).stdout;
    expect(text).toMatch(/^\s+NAME\s+FORMAT\s+VERSION\s+PVH\s+SIZE\s+MODULES$/m);
    expect(text).toMatch(/^\* synthetic\s+bzImage \(gzip\)/m);

    expect(JSON.parse(volt(data, ["default", "elf", "--json"]).stdout)).toEqual({ ok: true, default: "elf" });
    expect(volt(data, ["default"]).stdout).toBe("elf\n");
    const inspected = JSON.parse(volt(data, ["inspect", "elf", "--json"]).stdout);
    expect(inspected.kernel).toMatchObject({ stored: true, name: "elf", isDefault: true });

    expect(JSON.parse(volt(data, ["rm", "elf", "--json"]).stdout)).toEqual({ ok: true, removed: "elf", defaultCleared: true });
    expect(JSON.parse(volt(data, ["default", "--json"]).stdout)).toEqual({ ok: true, default: null });
  });

  describe("bad input: exit 2, a clear message, nothing half-added", () => {
    const data = fresh("data");
    volt(data, ["add", file("vmlinux", vmlinux), "--name", "taken"]);
    const store = new KernelStore(join(data, "kernels"));
    const before = contents(store);
    const corrupt = compressPayload(vmlinux, "gzip");
    corrupt[corrupt.length >> 1]! ^= 0xff;
    test.each([
      ["add: a name already in the store", () => ["add", file("vmlinux", vmlinux), "--name", "taken"], "kernel-exists", "already in the store"],
      ["add: not a kernel", () => ["add", join(root, "package.json")], "kernel-not-a-kernel", "not a Linux kernel"],
      ["add: a corrupt payload", () => ["add", file("bzImage", makeBzImage(corrupt))], "kernel-not-a-kernel", "cannot decompress the payload"],
      ["add: a missing file", () => ["add", "/no/such/bzImage"], "kernel-not-found", "no such file"],
      ["add: no file", () => ["add"], "usage", "missing the kernel file"],
      ["rm: an unknown name", () => ["rm", "nope"], "kernel-not-found", 'no kernel named "nope"'],
      ["default: an unknown name", () => ["default", "nope"], "kernel-not-found", 'no kernel named "nope"'],
      ["an unknown option", () => ["list", "--all"], "usage", "unknown option '--all'"],
    ])("%s", (_, makeArgs, kind, message) => {
      const result = volt(data, [...makeArgs(), "--json"]);
      expect(result.exitCode).toBe(2);
      expect(result.stderr).toContain(message);
      expect(JSON.parse(result.stdout)).toMatchObject({ ok: false, error: { kind } });
      expect(contents(store)).toEqual(before);
    });
  });
});

// ---------------------------------------------------------------- fetch from a .deb
/** A relocatable ELF with just a .modinfo section: what findKernelModules reads for "depends=". */
function fakeModule(name: string, depends: string[]): Uint8Array {
  const modinfo = new TextEncoder().encode(`license=GPL\0depends=${depends.join(",")}\0name=${name}\0`);
  const shstrtab = new TextEncoder().encode("\0.modinfo\0.shstrtab\0");
  const modinfoAt = 64;
  const shstrtabAt = modinfoAt + modinfo.length;
  const sectionsAt = (shstrtabAt + shstrtab.length + 7) & ~7;
  const bytes = new Uint8Array(sectionsAt + 3 * 64);
  const view = new DataView(bytes.buffer);
  bytes.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  view.setUint16(16, 1, true); // ET_REL
  view.setUint16(18, 62, true);
  view.setBigUint64(0x28, BigInt(sectionsAt), true);
  view.setUint16(0x34, 64, true);
  view.setUint16(0x3a, 64, true);
  view.setUint16(0x3c, 3, true);
  view.setUint16(0x3e, 2, true);
  bytes.set(modinfo, modinfoAt);
  bytes.set(shstrtab, shstrtabAt);
  const section = (i: number, nameOffset: number, offset: number, size: number) => {
    const at = sectionsAt + i * 64;
    view.setUint32(at, nameOffset, true);
    view.setBigUint64(at + 24, BigInt(offset), true);
    view.setBigUint64(at + 32, BigInt(size), true);
  };
  section(1, 1, modinfoAt, modinfo.length);
  section(2, 10, shstrtabAt, shstrtab.length);
  return bytes;
}

describe("volt kernel fetch --deb", () => {
  const haveDpkg = Bun.which("dpkg-deb") !== null;
  const release = "6.9.0-9-amd64";
  const pkg = join(work, "pkg");
  const deb = join(work, "linux-image-test.deb");
  const modules: Record<string, string[]> = {
    "drivers/virtio/virtio.ko": [],
    "drivers/virtio/virtio_ring.ko": [],
    "drivers/virtio/virtio_mmio.ko": ["virtio", "virtio_ring"],
    "drivers/block/virtio_blk.ko": ["virtio", "virtio_ring"],
    "fs/mbcache.ko": [],
    "fs/jbd2/jbd2.ko": [],
    "fs/ext4/ext4.ko": ["mbcache", "jbd2"],
    "crypto/crc32c_generic.ko": [],
    "drivers/net/virtio_net.ko": ["virtio", "virtio_ring", "net_failover"],
    "drivers/net/net_failover.ko": [],
    "sound/unrelated.ko": [],
  };
  if (haveDpkg) {
    mkdirSync(join(pkg, "DEBIAN"), { recursive: true });
    writeFileSync(join(pkg, "DEBIAN", "control"), `Package: linux-image-${release}\nVersion: 6.9.9-1\nArchitecture: amd64\nMaintainer: Volt tests <t@example.invalid>\nDescription: synthetic kernel\n`);
    mkdirSync(join(pkg, "boot"));
    writeFileSync(join(pkg, "boot", `vmlinuz-${release}`), bzImageBytes);
    writeFileSync(join(pkg, "boot", `config-${release}`), "CONFIG_VIRTIO_MMIO=m\nCONFIG_VIRTIO_BLK=m\nCONFIG_EXT4_FS=m\n");
    const modulesRoot = join(pkg, "lib", "modules", release);
    for (const [path, depends] of Object.entries(modules)) {
      mkdirSync(join(modulesRoot, "kernel", path, ".."), { recursive: true });
      writeFileSync(join(modulesRoot, "kernel", path), fakeModule(path.replace(/.*\/|\.ko$/g, ""), depends));
    }
    writeFileSync(join(modulesRoot, "modules.builtin"), "kernel/drivers/char/hw_random/virtio-rng.ko\n");
    const built = Bun.spawnSync(["dpkg-deb", "--root-owner-group", "-b", pkg, deb], { stderr: "pipe" });
    if (built.exitCode !== 0) throw new Error(built.stderr.toString());
  }

  test("adds the bzImage, its vmlinux and the guest's modules, dependencies first", () => {
    if (!haveDpkg) return void console.log("skipping: dpkg-deb is not installed");
    const data = fresh("data");
    const result = volt(data, ["fetch", "--deb", deb, "--vmlinux", "--json"], { XDG_CACHE_HOME: fresh("cache") });
    expect(result.exitCode).toBe(0);
    const report = JSON.parse(result.stdout);
    expect(report.release).toBe(release);
    expect(report.kernels.map((k: { name: string }) => k.name)).toEqual([`debian-${release}`, `debian-${release}-vmlinux`]);
    expect(report.kernels[0]).toMatchObject({ format: "bzimage", isDefault: true, rootWithoutInitramfs: { answer: "no" } });
    expect(report.kernels[1]).toMatchObject({ format: "elf", pvh: true, isDefault: false });
    // GUEST_MODULES order, each after its dependencies; built-in and absent ones (virtio_rng, vsock) left out.
    expect(GUEST_MODULES[0]).toBe("virtio_mmio");
    expect(report.modules).toEqual(["virtio.ko", "virtio_ring.ko", "virtio_mmio.ko", "virtio_blk.ko", "crc32c_generic.ko", "mbcache.ko", "jbd2.ko", "ext4.ko", "net_failover.ko", "virtio_net.ko"]);
    const stored = new KernelStore(join(data, "kernels"));
    for (const kernel of stored.list()) {
      expect(kernel.modulePaths.every((p) => existsSync(p))).toBe(true);
      expect(kernel.configPath).not.toBeNull();
    }
    expect(Buffer.from(readFileSync(stored.require(`debian-${release}-vmlinux`).path)).equals(Buffer.from(vmlinux))).toBe(true);

    // Again: the name is taken, and nothing changes.
    const again = volt(data, ["fetch", "--deb", deb, "--vmlinux", "--json"], { XDG_CACHE_HOME: fresh("cache") });
    expect(again.exitCode).toBe(2);
    expect(JSON.parse(again.stdout).error.kind).toBe("kernel-exists");
    expect(stored.list().length).toBe(2);
  }, 60_000);

  test("a missing or broken .deb is exit 2", () => {
    const data = fresh("data");
    expect(volt(data, ["fetch", "--deb", "/no/such.deb"]).stderr).toContain("/no/such.deb does not exist");
    const broken = volt(data, ["fetch", "--deb", join(root, "package.json"), "--json"], { XDG_CACHE_HOME: fresh("cache") });
    expect(broken.exitCode).toBe(2);
    expect(JSON.parse(broken.stdout).error.kind).toBe("kernel-fetch");
    expect(existsSync(join(data, "kernels")) ? readdirSync(join(data, "kernels")) : []).toEqual([]);
  });
});

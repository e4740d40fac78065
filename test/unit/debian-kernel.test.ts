import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { DebianKernelError, fetchDebianKernel, findKernelModules } from "../../src/kernel/debian.ts";

const scratch = mkdtempSync(join(tmpdir(), "volt-debian-kernel-test-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));
const RELEASE = "9.9.9-1-test";

/** An ELF relocatable with only a .modinfo section: all the helper reads from a module. */
function fakeModule(modinfo: string): Uint8Array {
  const encoder = new TextEncoder();
  const info = encoder.encode(`${modinfo}\0`);
  const names = encoder.encode("\0.shstrtab\0.modinfo\0");
  const infoOffset = 64;
  const namesOffset = infoOffset + info.length;
  const sectionTable = (namesOffset + names.length + 7) & ~7;
  const elf = new Uint8Array(sectionTable + 3 * 64);
  const view = new DataView(elf.buffer);
  view.setUint32(0, 0x7f454c46);
  elf[4] = 2;
  elf[5] = 1;
  view.setUint16(16, 1, true); // ET_REL
  view.setBigUint64(0x28, BigInt(sectionTable), true);
  view.setUint16(0x3a, 64, true);
  view.setUint16(0x3c, 3, true);
  view.setUint16(0x3e, 1, true);
  elf.set(info, infoOffset);
  elf.set(names, namesOffset);
  const section = (index: number, name: number, offset: number, size: number) => {
    const at = sectionTable + index * 64;
    view.setUint32(at, name, true);
    view.setUint32(at + 4, index === 1 ? 3 : 1, true); // SHT_STRTAB / SHT_PROGBITS
    view.setBigUint64(at + 24, BigInt(offset), true);
    view.setBigUint64(at + 32, BigInt(size), true);
  };
  section(1, 1, namesOffset, names.length);
  section(2, 11, infoOffset, info.length);
  return elf;
}

function buildDeb(name: string, files: Record<string, Uint8Array | string>): string {
  const tree = join(scratch, `tree-${name}`);
  mkdirSync(join(tree, "DEBIAN"), { recursive: true });
  writeFileSync(
    join(tree, "DEBIAN/control"),
    `Package: ${name}\nVersion: 1:9.9.9-1\nArchitecture: amd64\nMaintainer: Volt tests <volt@localhost>\nDescription: fake kernel for tests\n`,
  );
  for (const [path, data] of Object.entries(files)) {
    mkdirSync(dirname(join(tree, path)), { recursive: true });
    writeFileSync(join(tree, path), data);
  }
  const deb = join(scratch, `${name}.deb`);
  const result = Bun.spawnSync(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", tree, deb], { stderr: "pipe" });
  expect(result.exitCode, result.stderr.toString()).toBe(0);
  return deb;
}

const modules = `lib/modules/${RELEASE}`;
const kernelDeb = buildDeb("linux-image-test", {
  [`boot/vmlinuz-${RELEASE}`]: "not really a bzImage",
  [`${modules}/modules.builtin`]: "kernel/lib/crc_builtin.ko\n",
  [`${modules}/kernel/lib/base.ko`]: fakeModule("license=GPL\0depends="),
  [`${modules}/kernel/lib/mid.ko`]: fakeModule("license=GPL\0depends=base,crc_builtin"),
  [`${modules}/kernel/drivers/top-mod.ko`]: fakeModule("depends=mid,base\0license=GPL"),
  [`${modules}/kernel/drivers/other.ko`]: fakeModule("depends=mid"),
  [`${modules}/kernel/drivers/needs-ghost.ko`]: fakeModule("depends=ghost"),
  [`${modules}/kernel/drivers/squeezed.ko.xz`]: "xz data",
});

describe("fetchDebianKernel with a given .deb", () => {
  const cacheDir = join(scratch, "cache");

  test("unpacks once and returns the kernel's release, image and modules", async () => {
    const kernel = await fetchDebianKernel({ cacheDir, debPath: kernelDeb });
    expect(kernel.version).toBe(RELEASE);
    expect(basename(kernel.vmlinuzPath)).toBe(`vmlinuz-${RELEASE}`);
    expect(existsSync(kernel.vmlinuzPath)).toBe(true);
    expect(kernel.modulesRoot.endsWith(`/lib/modules/${RELEASE}`)).toBe(true);

    const marker = join(kernel.modulesRoot, "kept-between-calls");
    writeFileSync(marker, "");
    expect(await fetchDebianKernel({ cacheDir, debPath: kernelDeb })).toEqual(kernel);
    expect(existsSync(marker)).toBe(true); // not unpacked again
    // Only the final directory remains: no temporary leftovers.
    expect(readdirSync(join(cacheDir, "debian-kernel"))).toEqual(["linux-image-test_1%3a9.9.9-1"]);
  });

  test("a package without a kernel is refused, naming the package, and nothing is cached", async () => {
    const emptyDeb = buildDeb("linux-image-empty", { "usr/share/doc/x": "" });
    const cache = join(scratch, "cache-empty");
    await expect(fetchDebianKernel({ cacheDir: cache, debPath: emptyDeb })).rejects.toThrow(
      /package linux-image-empty: expected exactly one kernel under lib\/modules/,
    );
    expect(readdirSync(join(cache, "debian-kernel"))).toEqual([]);
  });

  test("a missing .deb names the file", async () => {
    await expect(fetchDebianKernel({ cacheDir, debPath: join(scratch, "nope.deb") })).rejects.toThrow(
      /kernel package file .*nope\.deb does not exist/,
    );
  });
});

describe("findKernelModules", () => {
  const kernel = () => fetchDebianKernel({ cacheDir: join(scratch, "cache"), debPath: kernelDeb });
  const names = (paths: string[]) => paths.map((path) => basename(path));

  test("adds dependencies first, once, and skips built-in modules", async () => {
    const k = await kernel();
    expect(names(findKernelModules(k, ["top_mod"]))).toEqual(["base.ko", "mid.ko", "top-mod.ko"]);
    expect(names(findKernelModules(k, ["other", "top-mod", "base"]))).toEqual(["base.ko", "mid.ko", "other.ko", "top-mod.ko"]);
    expect(findKernelModules(k, ["crc_builtin"])).toEqual([]);
  });

  test("missing modules are listed in the error, or skipped with ifPresent", async () => {
    const k = await kernel();
    expect(() => findKernelModules(k, ["base", "nosuch", "alsonot"])).toThrow(
      new RegExp(`kernel ${RELEASE}: module\\(s\\) not found under .*: nosuch, alsonot`),
    );
    expect(names(findKernelModules(k, ["nosuch", "mid"], { ifPresent: true }))).toEqual(["base.ko", "mid.ko"]);
    expect(() => findKernelModules(k, ["needs-ghost"], { ifPresent: true })).toThrow(/module ghost, needed by needs-ghost, not found/);
  });

  test("a compressed-only module gets a clear error", async () => {
    const k = await kernel();
    expect(() => findKernelModules(k, ["squeezed"])).toThrow(DebianKernelError);
    expect(() => findKernelModules(k, ["squeezed"])).toThrow(/only available compressed .*squeezed\.ko\.xz.*uncompressed \.ko/);
  });
});

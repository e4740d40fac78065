/**
 * `volt kernel inspect`: format, compression, version, PVH note, boot
 * protocol, ACPI and the "root without initramfs" answer, for synthetic
 * kernels built to have (or lack) each, and for the real ones this machine
 * has.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { KernelFormatError } from "../../src/loader/errors.ts";
import { findEmbeddedConfig, inspectKernelBytes, inspectKernelFile, parseKernelConfig } from "../../src/kernel/inspect.ts";
import { compressPayload, makeBzImage, makeVmlinux, SYNTHETIC_RELEASE } from "./kernel-fixtures.ts";
import { availableOrExplain, findDebianBzImage, MICROVM_KERNEL_DIR } from "./loader-fixtures.ts";

const root = join(import.meta.dir, "..", "..");
const work = mkdtempSync(join(tmpdir(), "volt-kernel-inspect-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const BUILT_IN = "CONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_BLK=y\nCONFIG_EXT4_FS=y\n";
const MODULAR = "CONFIG_VIRTIO_MMIO=m\nCONFIG_VIRTIO_BLK=m\nCONFIG_EXT4_FS=m\n";

let dirs = 0;
/** A kernel file alone in a fresh directory, with optional files beside it. */
function kernelIn(bytes: Uint8Array, beside: Record<string, string> = {}, name = "kernel"): string {
  const dir = join(work, `k${++dirs}`);
  mkdirSync(dir);
  for (const [file, text] of Object.entries(beside)) writeFileSync(join(dir, file), text);
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
}

describe("ELF vmlinux", () => {
  test("format, version, PVH entry and no boot protocol", () => {
    const facts = inspectKernelFile(kernelIn(makeVmlinux()));
    expect(facts).toMatchObject({
      format: "elf",
      compression: "none",
      version: SYNTHETIC_RELEASE,
      bootProtocol: null,
      pvh: true,
      pvhEntry: "0x1000040",
      entry64: "0x1000000",
      acpi: false,
      payload: null,
    });
    expect(facts.versionString).toStartWith(`Linux version ${SYNTHETIC_RELEASE} (test@volt)`);
    expect(facts.sha256).toMatch(/^[0-9a-f]{64}$/);
  });

  test("without the PVH note, and with ACPI", () => {
    const facts = inspectKernelBytes(makeVmlinux({ pvh: false, extra: "RSD PTR " }), "x/vmlinux");
    expect(facts.pvh).toBe(false);
    expect(facts.pvhEntry).toBeNull();
    expect(facts.acpi).toBe(true);
  });

  test("an embedded config (IKCONFIG) answers the root question", () => {
    const yes = inspectKernelFile(kernelIn(makeVmlinux({ config: BUILT_IN })));
    expect(yes.rootWithoutInitramfs).toMatchObject({ answer: "yes", source: "embedded config (IKCONFIG)" });
    const no = inspectKernelFile(kernelIn(makeVmlinux({ config: "CONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_BLK=m\n# CONFIG_EXT4_FS is not set\n" })));
    expect(no.rootWithoutInitramfs.answer).toBe("no");
    expect(no.rootWithoutInitramfs.options).toEqual({ CONFIG_VIRTIO_MMIO: "y", CONFIG_VIRTIO_BLK: "m", CONFIG_EXT4_FS: "n" });
    expect(no.rootWithoutInitramfs.reason).toContain("CONFIG_EXT4_FS=n");
  });

  test("else a config file beside it: config-<release> first, then config", () => {
    const path = kernelIn(makeVmlinux(), { [`config-${SYNTHETIC_RELEASE}`]: MODULAR, config: BUILT_IN });
    const facts = inspectKernelFile(path);
    expect(facts.rootWithoutInitramfs.answer).toBe("no");
    expect(facts.rootWithoutInitramfs.configFile).toBe(join(dirname(path), `config-${SYNTHETIC_RELEASE}`));
    expect(facts.rootWithoutInitramfs.reason).toContain("initramfs must load these modules");
    const plain = inspectKernelFile(kernelIn(makeVmlinux(), { config: BUILT_IN }));
    expect(plain.rootWithoutInitramfs).toMatchObject({ answer: "yes", source: expect.stringContaining("config file") });
  });

  test("else unknown", () => {
    const facts = inspectKernelFile(kernelIn(makeVmlinux()));
    expect(facts.rootWithoutInitramfs).toMatchObject({ answer: "unknown", source: null });
    expect(facts.rootWithoutInitramfs.options.CONFIG_VIRTIO_BLK).toBeNull();
  });
});

describe("bzImage", () => {
  const bzImage = makeBzImage(compressPayload(makeVmlinux({ config: BUILT_IN }), "gzip"));

  test("version from the setup header, protocol, and PVH and config from the decompressed payload", () => {
    const facts = inspectKernelFile(kernelIn(bzImage));
    expect(facts).toMatchObject({
      format: "bzimage",
      compression: "gzip",
      version: SYNTHETIC_RELEASE,
      versionString: `${SYNTHETIC_RELEASE} (test@volt) #1 SMP PREEMPT_DYNAMIC`,
      bootProtocol: "2.15",
      pvh: true,
      pvhEntry: "0x1000040",
      entry64: "0x100200",
      payload: { decompressed: true, error: null },
    });
    expect(facts.rootWithoutInitramfs.answer).toBe("yes");
  });

  test("without decompressing: PVH unknown, version still known", () => {
    const facts = inspectKernelFile(kernelIn(bzImage), { decompress: false });
    expect(facts.pvh).toBeNull();
    expect(facts.version).toBe(SYNTHETIC_RELEASE);
    expect(facts.payload).toEqual({ decompressed: false, uncompressedBytes: null, error: null });
    expect(facts.rootWithoutInitramfs.answer).toBe("unknown");
  });

  test("no kernel_version string: the version comes from the decompressed banner", () => {
    const bytes = bzImage.slice();
    bytes[0x20e] = bytes[0x20f] = 0;
    expect(inspectKernelBytes(bytes, "x/bzImage").version).toBe(SYNTHETIC_RELEASE);
  });

  test("a corrupt payload is reported, not thrown", () => {
    const payload = compressPayload(makeVmlinux(), "gzip");
    payload[payload.length >> 1]! ^= 0xff;
    const facts = inspectKernelBytes(makeBzImage(payload), "x/bzImage");
    expect(facts.pvh).toBeNull();
    expect(facts.payload?.error).toContain("cannot decompress the payload");
  });
});

test("a file that is not a kernel", () => {
  expect(() => inspectKernelBytes(new TextEncoder().encode("#!/bin/sh\necho hi\n".repeat(100)), "x/script")).toThrow(KernelFormatError);
});

test("config parsing and the IKCONFIG markers", () => {
  expect(parseKernelConfig('CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="x y"\n')).toEqual(new Map([["CONFIG_A", "y"], ["CONFIG_B", "n"], ["CONFIG_C", '"x y"']]));
  // The marker alone (as in code that searches for it) is skipped.
  expect(findEmbeddedConfig(new TextEncoder().encode("IKCFG_ST and no gzip here"))).toBeUndefined();
});

describe("real kernels", () => {
  test("Debian's bzImage: xz, its release, PVH, ACPI, and modules needed for a block root", () => {
    const path = findDebianBzImage();
    if (!availableOrExplain(path, "Debian's bzImage")) return;
    const release = basename(path).replace(/^vmlinuz-/, "");
    const facts = inspectKernelFile(path);
    expect(facts).toMatchObject({ format: "bzimage", compression: "xz", version: release, pvh: true, acpi: true, bootProtocol: expect.stringMatching(/^2\.\d\d$/) });
    expect(facts.versionString).toContain("Debian");
    expect(facts.rootWithoutInitramfs).toMatchObject({ answer: "no", configFile: join(dirname(path), `config-${release}`) });
  }, 60_000);

  test("the microVM kernel: lz4, PVH, everything built in", () => {
    const path = join(MICROVM_KERNEL_DIR, "bzImage");
    if (!availableOrExplain(path, "the microVM bzImage")) return;
    const facts = inspectKernelFile(path);
    expect(facts).toMatchObject({ compression: "lz4", pvh: true, acpi: false, rootWithoutInitramfs: { answer: "yes" } });
  });
});

describe("volt kernel inspect", () => {
  function volt(args: string[]) {
    const child = Bun.spawnSync(["bun", join(root, "src/cli/main.ts"), "kernel", "inspect", ...args], {
      cwd: work,
      env: { ...process.env, NO_COLOR: "1", VOLT_DATA_DIR: join(work, "data") },
    });
    return { exitCode: child.exitCode, stdout: child.stdout.toString(), stderr: child.stderr.toString() };
  }

  test("--json: one document with the facts", () => {
    const path = kernelIn(makeBzImage(compressPayload(makeVmlinux(), "gzip")), { config: MODULAR });
    const result = volt([path, "--json"]);
    expect(result.exitCode).toBe(0);
    const report = JSON.parse(result.stdout);
    expect(report.ok).toBe(true);
    expect(report.kernel).toMatchObject({
      stored: false,
      path,
      format: "bzimage",
      compression: "gzip",
      version: SYNTHETIC_RELEASE,
      bootProtocol: "2.15",
      pvh: true,
      rootWithoutInitramfs: { answer: "no" },
    });
  });

  test("text", () => {
    const result = volt([kernelIn(makeVmlinux({ config: BUILT_IN }))]);
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain("format       ELF vmlinux");
    expect(result.stdout).toContain("PVH          yes, entry 0x1000040");
    expect(result.stdout).toContain("root without initramfs: yes");
  });

  test.each([
    ["a missing file", ["/no/such/kernel"], "cannot read kernel /no/such/kernel: no such file"],
    ["a missing name", ["nosuchkernel"], "neither a file nor a kernel in the store"],
    ["a file that is not a kernel", [join(root, "package.json")], "not a Linux kernel"],
    ["no argument", [], "missing the kernel file or name"],
    ["an unknown option", ["x", "--deep"], "unknown option '--deep'"],
  ])("%s: exit 2", (_, args, message) => {
    const result = volt([...args, "--json"]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(message);
    expect(JSON.parse(result.stdout).ok).toBe(false);
  });
});

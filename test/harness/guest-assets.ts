/**
 * Guest kernels for the end-to-end tests, prepared on the host before the
 * tests run (inside L1 the host root is read-only). Tests read their paths
 * from the environment:
 *   VOLT_TEST_BZIMAGE — Debian's generic kernel (always; fetched from apt);
 *   VOLT_TEST_VMLINUX — an ELF vmlinux with the PVH note: the team's minimal
 *     microVM kernel when it is at hand (it boots ~10x faster), otherwise the
 *     vmlinux unpacked from Debian's bzImage, so the PVH path is always tested;
 *     VOLT_TEST_KERNEL=debian picks the latter even when the former is there
 *     (what CI runs, where ../shared is absent);
 *   VOLT_TEST_VMLINUX_MODULES — colon-separated .ko files, in load order, that
 *     VOLT_TEST_VMLINUX needs for virtio devices and ext4 (empty when they are
 *     built in, as in the microVM kernel).
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { gunzipSync } from "node:zlib";
import { fetchDebianKernel, findKernelModules } from "../../src/kernel/debian.ts";
import { parseBzImage } from "../../src/loader/bzimage.ts";

const MICROVM_KERNEL_DIR = resolve(import.meta.dir, "../../../shared/kernels/microvm-6.1");

/** What a guest of the e2e tests loads when its kernel has them as modules. */
// crc32c_generic: ext4 needs a crc32c and only soft-depends on one, so nothing pulls it in.
const GUEST_DEVICE_MODULES = ["virtio_mmio", "virtio_blk", "virtio_rng", "crc32c_generic", "ext4", "virtio_net", "vmw_vsock_virtio_transport"];

export async function prepareGuestKernels(cacheDir: string): Promise<Record<string, string>> {
  const env: Record<string, string> = {};
  const debian = await fetchDebianKernel({ cacheDir, log: (line) => console.log(`guest-assets: ${line}`) });
  env.VOLT_TEST_BZIMAGE = debian.vmlinuzPath;
  const packed = join(MICROVM_KERNEL_DIR, "vmlinux.gz");
  const preferDebian = process.env.VOLT_TEST_KERNEL === "debian";
  env.VOLT_TEST_VMLINUX_MODULES = "";
  if (existsSync(packed) && !preferDebian) {
    const expected = readFileSync(join(MICROVM_KERNEL_DIR, "vmlinux.sha256"), "utf8").trim().split(/\s+/)[0]!;
    const target = join(cacheDir, `microvm-vmlinux-${expected.slice(0, 16)}`);
    if (!existsSync(target)) {
      const bytes = gunzipSync(readFileSync(packed));
      const actual = createHash("sha256").update(bytes).digest("hex");
      if (actual !== expected) throw new Error(`${packed}: sha256 ${actual} does not match vmlinux.sha256`);
      mkdirSync(cacheDir, { recursive: true });
      writeFileSync(`${target}.tmp`, bytes);
      renameSync(`${target}.tmp`, target);
    }
    env.VOLT_TEST_VMLINUX = target;
  } else {
    console.log(`guest-assets: no minimal microVM kernel at ${MICROVM_KERNEL_DIR}; using the vmlinux inside Debian's bzImage`);
    env.VOLT_TEST_VMLINUX = unpackVmlinux(debian.vmlinuzPath, cacheDir);
    env.VOLT_TEST_VMLINUX_MODULES = findKernelModules(debian, GUEST_DEVICE_MODULES, { ifPresent: true }).join(":");
  }
  return env;
}

/** The ELF vmlinux inside an XZ-compressed bzImage (what the kernel's scripts/extract-vmlinux does). */
function unpackVmlinux(bzImagePath: string, cacheDir: string): string {
  const bytes = new Uint8Array(readFileSync(bzImagePath));
  const image = parseBzImage(bytes);
  const target = join(cacheDir, `vmlinux-of-${createHash("sha256").update(bytes).digest("hex").slice(0, 16)}`);
  if (existsSync(target)) return target;
  if (image.payload.compression !== "xz") throw new Error(`${bzImagePath}: payload is ${image.payload.compression}; only xz is unpacked here`);
  const start = image.setupSize + image.payload.offset;
  // The payload ends with the decompressed size (4 bytes) after the xz stream; --single-stream stops before it.
  const xz = Bun.spawnSync(["xz", "-dc", "--single-stream", "-q"], { stdin: bytes.subarray(start, start + image.payload.length) });
  if (xz.stdout.length < 4 || xz.stdout[0] !== 0x7f || xz.stdout[1] !== 0x45) {
    throw new Error(`${bzImagePath}: xz did not yield an ELF vmlinux (${xz.stderr.toString().trim()})`);
  }
  writeFileSync(`${target}.tmp`, xz.stdout);
  renameSync(`${target}.tmp`, target);
  return target;
}

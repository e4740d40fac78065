/**
 * Guest kernels for the end-to-end tests, prepared on the host before the
 * tests run (inside L1 the host root is read-only). Tests read their paths
 * from the environment:
 *   VOLT_TEST_BZIMAGE — Debian's generic kernel (always; fetched from apt);
 *   VOLT_TEST_VMLINUX — an ELF vmlinux with the PVH note, when one is at hand
 *     (the team's minimal microVM kernel boots ~10x faster; tests must work
 *     without it, so it is optional).
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { gunzipSync } from "node:zlib";
import { fetchDebianKernel } from "../../src/kernel/debian.ts";

const MICROVM_KERNEL_DIR = resolve(import.meta.dir, "../../../shared/kernels/microvm-6.1");

export async function prepareGuestKernels(cacheDir: string): Promise<Record<string, string>> {
  const env: Record<string, string> = {};
  const debian = await fetchDebianKernel({ cacheDir, log: (line) => console.log(`guest-assets: ${line}`) });
  env.VOLT_TEST_BZIMAGE = debian.vmlinuzPath;
  const packed = join(MICROVM_KERNEL_DIR, "vmlinux.gz");
  if (existsSync(packed)) {
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
    console.log(`guest-assets: no minimal microVM kernel at ${MICROVM_KERNEL_DIR}; ELF/PVH tests use what they can`);
  }
  return env;
}

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
 *     built in, as in the microVM kernel);
 *   VOLT_TEST_DEBIAN_VMLINUX — the ELF vmlinux inside Debian's bzImage, always;
 *   VOLT_TEST_BUILT_KERNEL — a vmlinux built by `volt kernel build` from
 *     Debian's linux-source with Volt's config, when the run includes
 *     test/e2e/kernel-build.test.ts (see prepareBuiltKernel); its build's JSON
 *     in VOLT_TEST_BUILT_KERNEL_INFO, or why there is none in
 *     VOLT_TEST_BUILT_KERNEL_ERROR.
 */
import { createHash } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { gunzipSync } from "node:zlib";
import { configSha256, findDebianSourceTarball, missingBuildTools } from "../../src/kernel/build.ts";
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
  env.VOLT_TEST_DEBIAN_VMLINUX = unpackVmlinux(debian.vmlinuzPath, cacheDir);
  Object.assign(env, await prepareBuiltKernel(cacheDir));
  return env;
}

const CHECKOUT = resolve(import.meta.dir, "../..");
/** The Debian package whose tarball `volt kernel build` compiles for the tests. */
const LINUX_SOURCE_PACKAGE = "linux-source-6.1";
const SOURCE_TARBALL = `/usr/src/${LINUX_SOURCE_PACKAGE}.tar.xz`;
const BUILD_PACKAGES = ["make", "gcc", "binutils", "flex", "bison", "bc", "libelf-dev", "xz-utils"];

/**
 * Whether this run needs the built kernel: VOLT_TEST_BUILD_KERNEL=1 or 0
 * decides; otherwise only the end-to-end tests (test/harness/run-e2e.ts)
 * want it, and only when they run every file or name
 * test/e2e/kernel-build.test.ts among them: a run of one other file, or the
 * benchmark (which prepares guest kernels too), must not pay minutes of
 * compiling.
 */
export function builtKernelWanted(argv: readonly string[] = process.argv, env: Record<string, string | undefined> = process.env): boolean {
  const forced = env.VOLT_TEST_BUILD_KERNEL;
  if (forced === "1" || forced === "always") return true;
  if (forced === "0" || forced === "never") return false;
  if (!/(^|\/)run-e2e\.ts$/.test(argv[1] ?? "")) return false;
  const files = argv.slice(2).filter((arg) => /\.test\.ts$/.test(arg));
  return files.length === 0 || files.some((file) => file.endsWith("kernel-build.test.ts"));
}

/**
 * A kernel built by `volt kernel build` from Debian's linux-source with
 * Volt's config, compiled here on the host (never inside L1, whose CPU is
 * emulated), once: the result is cached under
 * <cache>/built-kernel/<source package version>-<config fragment hash>/ and
 * reused until either changes. Installs linux-source-6.1 and the build tools
 * with apt when they are missing (as root). A failure does not stop the run:
 * VOLT_TEST_BUILT_KERNEL_ERROR carries it to test/e2e/kernel-build.test.ts,
 * which fails with it.
 */
export async function prepareBuiltKernel(cacheDir: string): Promise<Record<string, string>> {
  if (!builtKernelWanted()) return {};
  try {
    return await builtKernel(cacheDir);
  } catch (error) {
    const message = (error as Error).message;
    console.log(`guest-assets: no kernel from volt kernel build: ${message}`);
    return { VOLT_TEST_BUILT_KERNEL_ERROR: message };
  }
}

async function builtKernel(cacheDir: string): Promise<Record<string, string>> {
  const say = (line: string) => console.log(`guest-assets: ${line}`);
  const missingTools = missingBuildTools(process.env, { tarball: SOURCE_TARBALL });
  const tarball = existsSync(SOURCE_TARBALL) ? SOURCE_TARBALL : undefined;
  if (missingTools.length || tarball === undefined) {
    const wanted = tarball === undefined ? [...BUILD_PACKAGES, LINUX_SOURCE_PACKAGE] : BUILD_PACKAGES;
    aptInstall(wanted, say);
  }
  const source = existsSync(SOURCE_TARBALL) ? SOURCE_TARBALL : findDebianSourceTarball();
  if (source === undefined) throw new Error(`${SOURCE_TARBALL} is missing after installing ${LINUX_SOURCE_PACKAGE}`);
  const version = sourceVersion(source);
  const key = `${version}-${configSha256().slice(0, 12)}`;
  const dir = join(cacheDir, "built-kernel", key);
  const vmlinux = join(dir, "vmlinux");
  const info = join(dir, "build.json");
  if (existsSync(vmlinux) && existsSync(info)) {
    say(`reusing the kernel volt kernel build made from ${source} (${key})`);
    return { VOLT_TEST_BUILT_KERNEL: vmlinux, VOLT_TEST_BUILT_KERNEL_INFO: readFileSync(info, "utf8").trim() };
  }

  // A private store, so the build neither sees nor changes the user's; renamed into the cache only when whole.
  const work = join(cacheDir, "built-kernel", `.partial-${key}-${process.pid}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  try {
    const volt = existsSync(join(CHECKOUT, "dist/volt")) ? [join(CHECKOUT, "dist/volt")] : [process.execPath, join(CHECKOUT, "src/cli/main.ts")];
    const command = [...volt, "kernel", "build", source, "--name", "volt-test", "--json"];
    say(`building a microVM kernel (once per source and config; minutes): ${command.join(" ")}`);
    const started = performance.now();
    const child = Bun.spawn(command, {
      cwd: CHECKOUT,
      env: { ...process.env, VOLT_DATA_DIR: join(work, "data"), TMPDIR: work, NO_COLOR: "1" },
      stdin: "ignore",
      stdout: "pipe",
      stderr: "inherit",
    });
    const stdout = await new Response(child.stdout).text();
    const exitCode = await child.exited;
    let doc: { ok?: boolean; kernel?: { path?: string; configPath?: string }; build?: unknown; error?: { message?: string } } = {};
    try {
      doc = JSON.parse(stdout);
    } catch {
      // reported below
    }
    if (exitCode !== 0 || !doc.ok || !doc.kernel?.path) {
      throw new Error(`volt kernel build exited ${exitCode}: ${doc.error?.message ?? stdout.slice(-2000)}`);
    }
    const result = join(work, "result");
    mkdirSync(result);
    copyFileSync(doc.kernel.path, join(result, "vmlinux"));
    if (doc.kernel.configPath) copyFileSync(doc.kernel.configPath, join(result, "config"));
    writeFileSync(join(result, "build.json"), `${JSON.stringify(doc.build)}\n`);
    rmSync(dir, { recursive: true, force: true });
    renameSync(result, dir);
    // Kernels of other sources or configs are not used again: keep the cache to one (~17 MB each).
    for (const entry of readdirSync(join(cacheDir, "built-kernel"))) {
      if (entry !== key && !entry.startsWith(".partial-")) rmSync(join(cacheDir, "built-kernel", entry), { recursive: true, force: true });
    }
    say(`built ${vmlinux} in ${((performance.now() - started) / 1000).toFixed(0)} s`);
    return { VOLT_TEST_BUILT_KERNEL: vmlinux, VOLT_TEST_BUILT_KERNEL_INFO: readFileSync(info, "utf8").trim() };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** The installed package's version for Debian's tarball ("6.1.192-3"), else the tarball's own hash. */
function sourceVersion(tarball: string): string {
  const owner = Bun.spawnSync(["dpkg-query", "-S", tarball], { stderr: "ignore" }).stdout.toString().split(":")[0]?.trim();
  if (owner) {
    const version = Bun.spawnSync(["dpkg-query", "-W", "-f=${Version}", owner], { stderr: "ignore" }).stdout.toString().trim();
    if (version) return `${owner}_${version}`.replace(/[^A-Za-z0-9._+-]/g, "_");
  }
  return `sha256-${createHash("sha256").update(readFileSync(tarball)).digest("hex").slice(0, 16)}`;
}

function aptInstall(packages: readonly string[], say: (line: string) => void): void {
  const missing = packages.filter((name) => Bun.spawnSync(["dpkg-query", "-W", "-f=${db:Status-Status}", name], { stderr: "ignore" }).stdout.toString().trim() !== "installed");
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) throw new Error(`needs ${missing.join(" ")} installed (apt-get install ${missing.join(" ")}, as root; tools/setup.sh does it)`);
  say(`installing with apt-get: ${missing.join(" ")}`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  Bun.spawnSync(["apt-get", "update", "-q"], { env, stdout: "inherit", stderr: "inherit" });
  const install = Bun.spawnSync(["apt-get", "install", "-y", "-q", "--no-install-recommends", ...missing], { env, stdout: "inherit", stderr: "inherit" });
  if (install.exitCode !== 0) throw new Error(`apt-get install ${missing.join(" ")} failed (exit ${install.exitCode})`);
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

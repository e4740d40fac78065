/**
 * Gets a Linux kernel (bzImage plus modules) from Debian's own packages, so
 * tests and the nested-KVM harness boot a known, distribution-built kernel
 * without building one. Results are cached per package version; a second call
 * only asks the local apt cache which version is current.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { basename, join } from "node:path";

export interface DebianKernel {
  /** Kernel release, e.g. "6.1.0-56-amd64" (the directory name under /lib/modules). */
  version: string;
  /** The compressed kernel image (bzImage) to pass to a VMM. */
  vmlinuzPath: string;
  /** lib/modules/<version> of the unpacked package. */
  modulesRoot: string;
}

export interface FetchDebianKernelOptions {
  /** Directory that keeps unpacked kernels between runs. */
  cacheDir: string;
  /** Use this .deb instead of asking apt. */
  debPath?: string;
  /** Metapackage whose dependency names the image package. Default linux-image-amd64. */
  metapackage?: string;
  /** Receives progress lines (downloads take a while); default: silent. */
  log?: (line: string) => void;
}

export class DebianKernelError extends Error {
  override name = "DebianKernelError";
}

/** Downloads (once) and unpacks a Debian kernel image package. */
export async function fetchDebianKernel(options: FetchDebianKernelOptions): Promise<DebianKernel> {
  const log = options.log ?? (() => {});
  const kernelsDir = join(options.cacheDir, "debian-kernel");
  mkdirSync(kernelsDir, { recursive: true });
  removeAbandonedWork(kernelsDir);

  if (options.debPath !== undefined) {
    const debPath = options.debPath;
    if (!existsSync(debPath)) throw new DebianKernelError(`kernel package file ${debPath} does not exist`);
    const fields = (await run(["dpkg-deb", "-f", debPath, "Package", "Version"], `read ${debPath}`)).stdout;
    const packageName = fieldValue(fields, "Package", debPath);
    const packageVersion = fieldValue(fields, "Version", debPath);
    return cachedOrUnpacked(kernelsDir, packageName, packageVersion, log, async () => debPath);
  }

  const metapackage = options.metapackage ?? "linux-image-amd64";
  for (const listsRefreshed of [false, true]) {
    const { packageName, packageVersion } = await resolveImagePackage(metapackage);
    try {
      return await cachedOrUnpacked(kernelsDir, packageName, packageVersion, log, async (workDir) => {
        log(`downloading ${packageName} ${packageVersion}`);
        await run(["apt-get", "download", "-q", `${packageName}=${packageVersion}`], `download ${packageName}`, workDir);
        const downloaded = readdirSync(workDir).find((name) => name.startsWith(`${packageName}_`) && name.endsWith(".deb"));
        if (!downloaded) throw new DebianKernelError(`apt-get download ${packageName} produced no .deb in ${workDir}`);
        return join(workDir, downloaded);
      });
    } catch (error) {
      // Old package lists name versions the mirror no longer has: refresh once.
      if (listsRefreshed || !(error instanceof DownloadError)) throw error;
      log(`${(error as Error).message.split("\n")[0]}; retrying after apt-get update`);
      await run(["apt-get", "update", "-q"], "apt-get update (to refresh the kernel package lists)");
    }
  }
  throw new DebianKernelError("unreachable");
}

class DownloadError extends DebianKernelError {}

/** Work directories of runs that were killed midway (their process is gone). */
function removeAbandonedWork(kernelsDir: string): void {
  for (const name of readdirSync(kernelsDir)) {
    const pid = /^\.partial-.*-(\d+)-\d+$/.exec(name)?.[1];
    if (pid === undefined || isAlive(Number(pid))) continue;
    rmSync(join(kernelsDir, name), { recursive: true, force: true });
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

async function cachedOrUnpacked(
  kernelsDir: string,
  packageName: string,
  packageVersion: string,
  log: (line: string) => void,
  obtainDeb: (workDir: string) => Promise<string>,
): Promise<DebianKernel> {
  const finalDir = join(kernelsDir, `${packageName}_${packageVersion.replaceAll(":", "%3a")}`);
  if (!existsSync(finalDir)) {
    // Everything happens under a temporary name and is renamed into place at
    // the end, so an interrupted run never leaves a half-unpacked kernel that
    // a later run would trust.
    const workDir = join(kernelsDir, `.partial-${packageName}-${process.pid}-${Date.now()}`);
    mkdirSync(workDir, { recursive: true });
    try {
      let deb: string;
      try {
        deb = await obtainDeb(workDir);
      } catch (error) {
        throw new DownloadError((error as Error).message);
      }
      log(`unpacking ${basename(deb)}`);
      await run(["dpkg-deb", "-x", deb, join(workDir, "root")], `unpack ${deb}`);
      if (deb.startsWith(workDir)) rmSync(deb);
      locateKernelFiles(join(workDir, "root"), packageName); // refuse to cache a package without a kernel
      renameSync(workDir, finalDir);
    } finally {
      rmSync(workDir, { recursive: true, force: true });
    }
  }
  return locateKernelFiles(join(finalDir, "root"), packageName);
}

/**
 * Returns the .ko paths for the named modules plus everything they depend on,
 * dependencies first, i.e. an order in which insmod succeeds. Names may use
 * "-" or "_" interchangeably, as modprobe allows. Modules built into the
 * kernel are left out (nothing to load). Missing modules throw unless
 * `ifPresent` is set, in which case they are skipped.
 */
export function findKernelModules(
  kernel: DebianKernel,
  names: readonly string[],
  options: { ifPresent?: boolean } = {},
): string[] {
  const index = moduleIndex(kernel.modulesRoot);
  const ordered: string[] = [];
  const visiting = new Set<string>();
  const done = new Set<string>();
  const missing: string[] = [];

  const visit = (rawName: string, neededBy: string | undefined): void => {
    const name = canonicalModuleName(rawName);
    if (done.has(name) || index.builtin.has(name)) return;
    if (visiting.has(name)) throw new DebianKernelError(`kernel ${kernel.version}: module dependency cycle through ${name}`);
    const path = index.uncompressed.get(name);
    if (path === undefined) {
      const compressed = index.compressed.get(name);
      if (compressed !== undefined) {
        throw new DebianKernelError(
          `kernel ${kernel.version}: module ${rawName} is only available compressed (${compressed}); ` +
            `busybox insmod needs an uncompressed .ko, decompress it first`,
        );
      }
      if (neededBy !== undefined) {
        throw new DebianKernelError(`kernel ${kernel.version}: module ${rawName}, needed by ${neededBy}, not found`);
      }
      missing.push(rawName);
      return;
    }
    visiting.add(name);
    for (const dependency of moduleDependencies(path)) visit(dependency, rawName);
    visiting.delete(name);
    done.add(name);
    ordered.push(path);
  };

  for (const name of names) visit(name, undefined);
  if (missing.length > 0 && !options.ifPresent) {
    throw new DebianKernelError(
      `kernel ${kernel.version}: module(s) not found under ${kernel.modulesRoot}: ${missing.join(", ")}`,
    );
  }
  return ordered;
}

/**
 * The metapackage depends on the current ABI's image package, pinned to one
 * version ("Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)"): one
 * apt-cache call gives both (each call costs ~0.5 s where apt keeps no binary
 * cache).
 */
async function resolveImagePackage(metapackage: string): Promise<{ packageName: string; packageVersion: string }> {
  const lookUp = async () => {
    const result = await run(["apt-cache", "show", "--no-all-versions", metapackage], `resolve ${metapackage}`, undefined, true);
    if (result.exitCode !== 0) return undefined;
    const dependency = /^Depends:.*?\b(linux-image-\d[^\s,(]*)(?:\s*\(\s*=\s*([^)\s]+)\s*\))?/m.exec(result.stdout);
    return dependency?.[1] ? { packageName: dependency[1], pinned: dependency[2] } : undefined;
  };
  let found = await lookUp();
  if (found === undefined) {
    // A fresh machine may not have package lists yet.
    await run(["apt-get", "update", "-q"], "apt-get update (to resolve the kernel package)");
    found = await lookUp();
  }
  if (found === undefined) {
    throw new DebianKernelError(`cannot resolve ${metapackage}: it depends on no linux-image-<version> package`);
  }
  const packageVersion =
    found.pinned ??
    fieldValue(
      (await run(["apt-cache", "show", "--no-all-versions", found.packageName], `look up ${found.packageName}`)).stdout,
      "Version",
      found.packageName,
    );
  return { packageName: found.packageName, packageVersion };
}

function locateKernelFiles(root: string, packageName: string): DebianKernel {
  const modulesDir = join(root, "lib", "modules");
  const versions = existsSync(modulesDir) ? readdirSync(modulesDir) : [];
  const version = versions[0];
  if (versions.length !== 1 || version === undefined) {
    throw new DebianKernelError(
      `package ${packageName}: expected exactly one kernel under lib/modules, found ${JSON.stringify(versions)}`,
    );
  }
  const vmlinuzPath = join(root, "boot", `vmlinuz-${version}`);
  if (!existsSync(vmlinuzPath)) {
    throw new DebianKernelError(`package ${packageName}: no boot/vmlinuz-${version} in the package`);
  }
  return { version, vmlinuzPath, modulesRoot: join(modulesDir, version) };
}

function fieldValue(text: string, field: string, source: string): string {
  const value = new RegExp(`^${field}:\\s*(\\S+)`, "m").exec(text)?.[1];
  if (value === undefined) throw new DebianKernelError(`${source}: no ${field} field`);
  return value;
}

const canonicalModuleName = (name: string): string => name.replace(/\.ko(\.\w+)?$/, "").replaceAll("-", "_");

interface ModuleIndex {
  uncompressed: Map<string, string>;
  compressed: Map<string, string>;
  builtin: Set<string>;
}

const indexes = new Map<string, ModuleIndex>();

function moduleIndex(modulesRoot: string): ModuleIndex {
  const cached = indexes.get(modulesRoot);
  if (cached) return cached;
  const index: ModuleIndex = { uncompressed: new Map(), compressed: new Map(), builtin: new Set() };
  const kernelDir = join(modulesRoot, "kernel");
  if (!existsSync(kernelDir)) throw new DebianKernelError(`no kernel modules directory at ${kernelDir}`);
  for (const relative of readdirSync(kernelDir, { recursive: true, encoding: "utf8" })) {
    const match = /([^/]+)\.ko(\.(xz|zst|gz))?$/.exec(relative);
    if (!match?.[1]) continue;
    const target = match[2] ? index.compressed : index.uncompressed;
    target.set(canonicalModuleName(match[1]), join(kernelDir, relative));
  }
  // Debian ships modules.builtin in the package (modules.dep is made later by depmod).
  const builtinList = join(modulesRoot, "modules.builtin");
  if (existsSync(builtinList)) {
    for (const line of readFileSync(builtinList, "utf8").split("\n")) {
      const name = /([^/]+)\.ko$/.exec(line.trim())?.[1];
      if (name) index.builtin.add(canonicalModuleName(name));
    }
  }
  indexes.set(modulesRoot, index);
  return index;
}

/**
 * Reads "depends=" from the module's .modinfo ELF section: the same data
 * depmod uses, without needing kmod or a modules.dep file (the package ships
 * none; depmod makes it at install time).
 */
function moduleDependencies(koPath: string): string[] {
  const elf = readFileSync(koPath);
  const view = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  if (elf.byteLength < 64 || view.getUint32(0) !== 0x7f454c46 || elf[4] !== 2) {
    throw new DebianKernelError(`${koPath} is not a 64-bit ELF kernel module`);
  }
  const sectionTable = Number(view.getBigUint64(0x28, true));
  const entrySize = view.getUint16(0x3a, true);
  const count = view.getUint16(0x3c, true);
  const namesIndex = view.getUint16(0x3e, true);
  const section = (i: number) => {
    const at = sectionTable + i * entrySize;
    return {
      name: view.getUint32(at, true),
      offset: Number(view.getBigUint64(at + 24, true)),
      size: Number(view.getBigUint64(at + 32, true)),
    };
  };
  const names = section(namesIndex);
  const decoder = new TextDecoder();
  for (let i = 0; i < count; i++) {
    const s = section(i);
    const nameStart = names.offset + s.name;
    const nameEnd = elf.indexOf(0, nameStart);
    if (decoder.decode(elf.subarray(nameStart, nameEnd)) !== ".modinfo") continue;
    const modinfo = decoder.decode(elf.subarray(s.offset, s.offset + s.size));
    const depends = modinfo.split("\0").find((entry) => entry.startsWith("depends="));
    return (depends?.slice("depends=".length) ?? "").split(",").filter((name) => name !== "");
  }
  throw new DebianKernelError(`${koPath} has no .modinfo section`);
}

interface RunResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

async function run(argv: string[], what: string, cwd?: string, allowFailure = false): Promise<RunResult> {
  let proc;
  try {
    proc = Bun.spawn(argv, {
      cwd,
      stdout: "pipe",
      stderr: "pipe",
      stdin: "ignore",
      env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
    });
  } catch (error) {
    throw new DebianKernelError(`cannot ${what}: failed to start ${argv[0]}: ${(error as Error).message}`);
  }
  const [stdout, stderr, exitCode] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  if (exitCode !== 0 && !allowFailure) {
    // apt's "download is performed unsandboxed as root" is noise, not the cause.
    const detail = stderr
      .split("\n")
      .filter((line) => line.trim() !== "" && !line.includes("unsandboxed"))
      .slice(-5)
      .join("\n");
    throw new DebianKernelError(`cannot ${what}: ${argv.join(" ")} exited ${exitCode}\n${detail}`);
  }
  return { exitCode, stdout, stderr };
}

/**
 * The Landlock path list for one VM: what the VM itself needs (its kernel,
 * disks, sockets' directories, snapshot directory, /dev/kvm, /dev/net/tun)
 * plus what the runtime must reach to start again inside the domain (the
 * re-exec) and to keep running.
 *
 * The runtime entries, found by running Bun 1.4 under Landlock and reading
 * its denials with strace (each is in `runtimeRules` with its reason):
 *   - exec  the program (process.execPath: the `volt` binary, or bun) and its
 *           ELF interpreter (PT_INTERP): the re-exec happens inside the domain;
 *   - read  every file the process has mapped executable (/proc/self/maps):
 *           glibc, libm, libpthread, libdl, and from source Volt's C shim;
 *   - read  a private runtime directory, for a compiled `volt`: Bun extracts
 *           embedded libraries (the C shim) to $TMPDIR at start-up, opening
 *           the directory and creating the file if missing. Granting /tmp
 *           would expose all of it, so `prepareRuntime` copies the extracted
 *           files into $TMPDIR/volt-runtime-<uid> (0700) and points the
 *           re-exec'd process's TMPDIR there: it finds them and writes nothing;
 *   - read  /proc/self (this process's /proc/<pid>): glibc's
 *           pthread_getattr_np reads /proc/self/maps when JSC starts (Bun
 *           aborts without it), and Bun reads statm, stat and cgroup;
 *   - read  the source tree, when running from source: Bun's resolver lists
 *           directories and reads package.json, tsconfig.json, node_modules;
 *   - read  /etc/localtime (optional): local time in messages.
 * From source, `prepareRuntime` also turns off Bun's transpiler cache for the
 * re-exec'd process (it would create files in ~/.bun when a worker loads a
 * large module: EACCES under Landlock, SIGSYS under seccomp).
 * Left out on purpose (Bun copes with EACCES and falls back): /etc/ld.so.cache
 * (the loader then searches its default directories), /proc/sys/vm/*,
 * /sys/kernel/mm/transparent_hugepage, /sys/devices/system/cpu/online,
 * /proc/stat, cgroup limit files, Bun's transpiler cache in ~/.bun, and
 * listing directories above the program.
 */
import { runningCompiled } from "../runtime-location.ts";
import { closeSync, copyFileSync, existsSync, lstatSync, mkdirSync, openSync, readFileSync, readSync, realpathSync, renameSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import type { LandlockAccess, LandlockPolicy, LandlockRule } from "./landlock.ts";

/** What a VM touches after the sandbox is on. */
export interface VmPathNeeds {
  /** Kernel, initrd, read-only disk images, snapshot files being restored. */
  readonly readOnlyFiles: readonly string[];
  /** Writable disk images. */
  readonly readWriteFiles: readonly string[];
  /**
   * Directories beneath which the VM creates, writes, renames and removes
   * files and directories: a snapshot is written to a sibling directory and
   * renamed into place, so give the directory that will hold the snapshots.
   */
  readonly readWriteDirs: readonly string[];
  /** Directories holding Unix sockets the VM binds or replaces (the API socket, vsock's uds_path). */
  readonly unixSocketDirs: readonly string[];
  /** The VM has a network device (opens /dev/net/tun). */
  readonly tap?: boolean;
  /** The KVM device; default /dev/kvm. */
  readonly kvmDevice?: string;
}

export interface RuntimeFacts {
  readonly pid: number;
  /** The file to re-exec. */
  readonly execPath: string;
  /** Its ELF interpreter, resolved (undefined for a static executable). */
  readonly interpreter?: string;
  /** Files mapped executable by this process, resolved. */
  readonly mappedFiles: readonly string[];
  /** The project directory when running from source (undefined in a compiled binary). */
  readonly sourceRoot?: string;
  /** Where the re-exec'd process finds Bun's extracted libraries (its TMPDIR), for a compiled binary. */
  readonly runtimeDir?: string;
}

const PT_INTERP = 3;

/** The ELF interpreter an executable names (PT_INTERP), or undefined. */
export function elfInterpreter(path: string): string | undefined {
  const fd = openSync(path, "r");
  try {
    const header = new Uint8Array(64);
    if (readSync(fd, header, 0, 64, 0) < 64) return undefined;
    const view = new DataView(header.buffer);
    if (view.getUint32(0, false) !== 0x7f454c46 || header[4] !== 2 /* ELFCLASS64 */ || header[5] !== 1 /* little-endian */) return undefined;
    const phoff = Number(view.getBigUint64(0x20, true));
    const phentsize = view.getUint16(0x36, true);
    const phnum = view.getUint16(0x38, true);
    const table = new Uint8Array(phentsize * phnum);
    readSync(fd, table, 0, table.byteLength, phoff);
    const entries = new DataView(table.buffer);
    for (let i = 0; i < phnum; i++) {
      const at = i * phentsize;
      if (entries.getUint32(at, true) !== PT_INTERP) continue;
      const offset = Number(entries.getBigUint64(at + 8, true));
      const size = Number(entries.getBigUint64(at + 32, true));
      const name = new Uint8Array(size);
      readSync(fd, name, 0, size, offset);
      const end = name.indexOf(0);
      return new TextDecoder().decode(name.subarray(0, end < 0 ? size : end));
    }
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/** Files mapped with execute permission in a /proc/<pid>/maps text. */
export function executableMappings(maps: string): string[] {
  const files = new Set<string>();
  for (const line of maps.split("\n")) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 6 || !fields[1]!.includes("x")) continue;
    const path = fields.slice(5).join(" ");
    if (!path.startsWith("/") || path.endsWith(" (deleted)")) continue;
    files.add(path);
  }
  return [...files];
}

function realOrSelf(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

/** The project root when this module runs from source: src/sandbox/../.. holding package.json. */
function sourceRootOf(moduleDir: string): string | undefined {
  // In the binary import.meta.dir is the build machine's source directory (runtime-location.ts): not ours to read.
  if (runningCompiled() || moduleDir.startsWith("/$bunfs")) return undefined;
  const root = resolve(moduleDir, "..", "..");
  return existsSync(resolve(root, "package.json")) ? root : undefined;
}

/** What this process needs to start again and run: see the module comment. */
export function runtimeFacts(): RuntimeFacts {
  const execPath = realOrSelf(process.execPath);
  const interpreter = elfInterpreter(execPath);
  const sourceRoot = sourceRootOf(import.meta.dir);
  return {
    pid: process.pid,
    execPath,
    ...(interpreter === undefined ? {} : { interpreter: realOrSelf(interpreter) }),
    mappedFiles: executableMappings(readFileSync("/proc/self/maps", "utf8")).map(realOrSelf),
    ...(sourceRoot === undefined ? {} : { sourceRoot }),
  };
}

/** Libraries Bun extracted from a compiled binary into `dir` (its TMPDIR): `.bun-*` files. */
export function extractedLibraries(mappedFiles: readonly string[], dir: string): string[] {
  return mappedFiles.filter((file) => dirname(file) === dir && basename(file).startsWith(".bun-"));
}

export class RuntimeDirError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RuntimeDirError";
  }
}

/** $TMPDIR/volt-runtime-<uid>, created 0700; refused unless it is a real directory owned by us and closed to others. */
function ownRuntimeDir(base: string): string {
  const uid = process.getuid?.() ?? 0;
  const dir = join(base, `volt-runtime-${uid}`);
  if (!existsSync(dir)) mkdirSync(dir, { mode: 0o700 });
  const info = lstatSync(dir);
  if (!info.isDirectory() || info.uid !== uid || (info.mode & 0o077) !== 0) {
    throw new RuntimeDirError(`${dir} must be a directory owned by uid ${uid} with mode 0700 (someone else may have made it): remove it and retry`);
  }
  return dir;
}

export interface PreparedRuntime {
  readonly facts: RuntimeFacts;
  /** Environment additions for the re-exec'd process: TMPDIR (compiled), no transpiler cache (from source). */
  readonly env: Readonly<Record<string, string>>;
}

/**
 * The runtime facts, plus for a compiled binary a private runtime directory
 * holding copies of the libraries Bun extracted, and the TMPDIR that makes the
 * re-exec'd process find them there. Call before restricting.
 */
export function prepareRuntime(facts: RuntimeFacts = runtimeFacts(), base: string = tmpdir()): PreparedRuntime {
  // From source, Bun caches the transpiled output of modules over 50 KB in
  // ~/.bun/install/cache, creating files (O_CREAT) whenever a worker loads one
  // for the first time: under the seccomp policy that is SIGSYS, under
  // Landlock EACCES. The variable only takes effect at start-up, hence here.
  const sourceEnv: Record<string, string> = facts.sourceRoot !== undefined ? { BUN_RUNTIME_TRANSPILER_CACHE_PATH: "0" } : {};
  const realBase = realOrSelf(base);
  const extracted = extractedLibraries(facts.mappedFiles, realBase);
  if (extracted.length === 0) return { facts, env: sourceEnv };
  const dir = ownRuntimeDir(realBase);
  for (const file of extracted) {
    const copy = join(dir, basename(file));
    // Names carry a content hash: an existing copy of the same size is the same library.
    if (existsSync(copy) && statSync(copy).size === statSync(file).size) continue;
    const partial = `${copy}.${process.pid}.partial`;
    copyFileSync(file, partial);
    renameSync(partial, copy);
  }
  return {
    facts: { ...facts, mappedFiles: facts.mappedFiles.filter((file) => !extracted.includes(file)), runtimeDir: dir },
    env: { ...sourceEnv, TMPDIR: dir },
  };
}

/** The runtime's own rules, each with its reason. */
export function runtimeRules(facts: RuntimeFacts): LandlockRule[] {
  const rules: LandlockRule[] = [{ path: facts.execPath, access: "exec", why: "the program itself, re-exec'd inside the sandbox" }];
  if (facts.interpreter !== undefined) {
    rules.push({ path: facts.interpreter, access: "exec", why: "the program's ELF interpreter (PT_INTERP)" });
  }
  if (facts.runtimeDir !== undefined) {
    rules.push({ path: facts.runtimeDir, access: "read", why: "Bun's extracted libraries (the C shim), found through TMPDIR" });
  }
  const skip = new Set([facts.execPath, facts.interpreter]);
  for (const file of facts.mappedFiles) {
    if (skip.has(file)) continue;
    skip.add(file);
    rules.push({ path: file, access: "read", why: "a shared library the program maps (libc, Volt's C shim, ...)" });
  }
  rules.push({
    path: `/proc/${facts.pid}`,
    access: "read",
    why: "/proc/self: glibc reads maps when a thread starts; Bun reads statm, stat, cgroup",
  });
  if (facts.sourceRoot !== undefined) {
    rules.push({ path: facts.sourceRoot, access: "read", why: "running from source: Bun reads and resolves the project's modules" });
  }
  rules.push({ path: "/etc/localtime", access: "read", why: "local time in messages", optional: true });
  return rules;
}

function isBlockDevice(path: string): boolean {
  try {
    return statSync(path).isBlockDevice();
  } catch {
    return false;
  }
}

function dedupe(rules: readonly LandlockRule[]): LandlockRule[] {
  // One rule per path, with the union of the accesses (Landlock would merge them anyway; this keeps listings short).
  const byPath = new Map<string, { access: Set<LandlockAccess>; why: string[]; optional: boolean }>();
  for (const rule of rules) {
    const entry = byPath.get(rule.path) ?? { access: new Set<LandlockAccess>(), why: [], optional: true };
    for (const access of typeof rule.access === "string" ? [rule.access] : rule.access) entry.access.add(access);
    if (rule.why !== undefined && !entry.why.includes(rule.why)) entry.why.push(rule.why);
    entry.optional &&= rule.optional === true;
    byPath.set(rule.path, entry);
  }
  return [...byPath].map(([path, entry]) => ({
    path,
    access: [...entry.access],
    ...(entry.why.length ? { why: entry.why.join("; ") } : {}),
    ...(entry.optional ? { optional: true } : {}),
  }));
}

/**
 * The Landlock policy for a VM: the VM's own paths and the runtime's. TCP is
 * denied and, on ABI 6+, abstract Unix sockets and signals are scoped to the
 * sandbox. Block devices used as disks also get device ioctls (BLKGETSIZE64).
 */
export function vmLandlockPolicy(needs: VmPathNeeds, facts: RuntimeFacts = runtimeFacts()): LandlockPolicy {
  const rules: LandlockRule[] = [
    { path: needs.kvmDevice ?? "/dev/kvm", access: "device", why: "KVM: the VM and its vCPUs" },
  ];
  if (needs.tap) rules.push({ path: "/dev/net/tun", access: "device", why: "virtio-net: attaching the tap (TUNSETIFF)" });
  for (const path of needs.readOnlyFiles) {
    rules.push({ path, access: isBlockDevice(path) ? ["read", "ioctl"] : "read", why: "VM input (kernel, initrd, read-only disk, snapshot)" });
  }
  for (const path of needs.readWriteFiles) {
    rules.push({ path, access: isBlockDevice(path) ? ["read-write", "ioctl"] : "read-write", why: "writable disk" });
  }
  for (const path of needs.readWriteDirs) {
    rules.push({ path, access: ["read-write", "make-dirs"], why: "snapshots and other VM output" });
  }
  for (const path of needs.unixSocketDirs) {
    rules.push({ path, access: "unix-sockets", why: "Unix sockets the VM binds (API, vsock)" });
  }
  rules.push(...runtimeRules(facts));
  return { rules: dedupe(rules), denyTcp: true, scopeIpc: true };
}

/** The directory of each socket path, for `unixSocketDirs`. */
export function socketDirs(paths: readonly (string | undefined)[]): string[] {
  return [...new Set(paths.filter((path): path is string => path !== undefined).map((path) => dirname(resolve(path))))];
}

/** Whether a snapshot directory lies inside one of the allowed ones (every snapshot dir when there is no list). */
export function snapshotDirAllowed(dir: string, allowed: readonly string[] | undefined): boolean {
  if (allowed === undefined) return true;
  const target = resolve(dir);
  return allowed.some((root) => {
    const base = resolve(root);
    return target === base || target.startsWith(`${base}/`);
  });
}

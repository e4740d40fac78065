/**
 * The jail around a VMM (issue #6, item 4), modelled on Firecracker's jailer.
 * `volt run --jail` (src/cli/commands/jail.ts), as root:
 *
 *   1. plans the jail (`planJail`, pure): a per-VM directory whose root/ holds
 *      only what the VMM needs, the VM's paths rewritten to in-jail ones, and
 *      the command line of the C jailer (c-shims/volt_jailer.c);
 *   2. builds it (`prepareJail`) and, when limits are asked for, a cgroup v2
 *      directory (`createCgroup`);
 *   3. runs the jailer, which enters new mount, PID, IPC, UTS and network
 *      namespaces, bind-mounts what the plan says, pivots into root/, mounts
 *      a fresh /proc, sets the rlimits, drops to the uid/gid and execs the
 *      compiled volt, which then enters Landlock and seccomp as usual;
 *   4. removes the directory and the cgroup when the jailer is done.
 *
 * What the jail holds (paths inside it):
 *   /volt            the compiled volt, bind-mounted read-only (no 100 MB copy per VM)
 *   /lib64/ld-linux-x86-64.so.2 and the libraries volt maps, copied to their
 *                    paths (the loader finds them in its default directories)
 *   /vm/kernel, /vm/initrd, /vm/vm.json
 *                    copies, root:<gid> 0440: readable whatever the originals'
 *                    modes, and the jailed uid cannot chmod them
 *   /vm/drive<N>-<name>
 *                    disk images bind-mounted (read-only ones read-only, which the
 *                    kernel enforces even when the file's mode would allow
 *                    writing); block devices get a device node root:<gid> 0440/0660
 *   /dev/kvm, /dev/net/tun (with --net)
 *                    device nodes with the host's numbers, owned by the uid, 0600;
 *   /dev/null, /dev/urandom  0666
 *   /proc            where the jailer mounts the new PID namespace's proc
 *   /tmp             the uid's, 0700: Bun extracts Volt's C shim there
 *   the directories of the API socket and vsock socket, and --snapshot-dir
 *                    directories: bind-mounted read-write at their own paths, so
 *                    host programs use the same paths
 * Bind mounts exist only in the jail's mount namespace: nothing on the host
 * changes, and they need no same-file-system condition (as hard links would).
 */
import { ptr } from "bun:ffi";
import { chmodSync, chownSync, constants as fsConstants, copyFileSync, mkdirSync, readFileSync, rmdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import type { VmFile } from "../config/vm-file.ts";
import { rawSyscall } from "../ffi/shim.ts";
import { errnoName } from "../ffi/errno.ts";
import type { VmConfig } from "../vmm/config.ts";

export class JailError extends Error {
  override name = "JailError";
}

/** Where things live inside the jail. */
export const JAIL_PATHS = {
  volt: "/volt",
  vmDir: "/vm",
  kernel: "/vm/kernel",
  initrd: "/vm/initrd",
  config: "/vm/vm.json",
  kvm: "/dev/kvm",
  tun: "/dev/net/tun",
  proc: "/proc",
  tmp: "/tmp",
} as const;

/** root:root, uid:gid, or root:gid (the jailed process reads through its group and cannot chmod). */
export type JailOwner = "root" | "jail" | "jail-group";

/** One thing in the jail; `path` is the path inside it. Parents come before children. */
export type JailEntry =
  | { readonly kind: "dir"; readonly path: string; readonly owner: JailOwner; readonly mode: number }
  | { readonly kind: "copy"; readonly path: string; readonly from: string; readonly owner: JailOwner; readonly mode: number }
  | { readonly kind: "write"; readonly path: string; readonly text: string; readonly owner: JailOwner; readonly mode: number }
  | { readonly kind: "device"; readonly path: string; readonly from: string; readonly owner: JailOwner; readonly mode: number }
  /** A file or directory the jailer bind-mounts `from` onto (an empty placeholder on the host). */
  | { readonly kind: "bind"; readonly path: string; readonly from: string; readonly directory: boolean; readonly readOnly: boolean };

export interface CgroupPlan {
  /** The cgroup v2 mount point. */
  readonly root: string;
  /** <root>/volt/<id>: the jailer moves itself here before forking the VMM. */
  readonly path: string;
  /** cpu.max, e.g. "50000 100000" for half a CPU. */
  readonly cpuMax?: string;
  /** memory.max in bytes. */
  readonly memoryMax?: number;
}

export interface JailSettings {
  readonly id: string;
  readonly uid: number;
  readonly gid: number;
  /** The per-VM directory: root/ is the jail, the jailer program sits next to it. */
  readonly dir: string;
  readonly rlimitNofile?: number;
  readonly rlimitFsize?: number;
  /** A network namespace to join (one holding the VM's taps) instead of a new, empty one. */
  readonly netns?: string;
  readonly cgroup?: CgroupPlan;
}

/** The VM as `volt run` resolved it on the host. */
export interface JailedVm {
  readonly config: VmConfig;
  readonly onReboot: "exit" | "restart";
  readonly apiSocket?: string;
  readonly snapshotDirs: readonly string[];
  /** Flags for the jailed `volt run` as they are (--json, --no-seccomp, ...). */
  readonly passFlags: readonly string[];
}

/** What the compiled volt needs to start: itself, its ELF interpreter and the libraries it maps. */
export interface VoltRuntime {
  readonly execPath: string;
  /** PT_INTERP as written in the binary, and the file it resolves to. */
  readonly interpreter?: { readonly path: string; readonly file: string };
  readonly libraries: readonly string[];
}

export interface FileFacts {
  readonly kind: "file" | "directory" | "block-device" | "char-device" | "other";
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
}

/** stat(2), following symlinks; undefined when the path does not exist. Replaceable in tests. */
export type StatFn = (path: string) => FileFacts | undefined;

export function hostStat(path: string): FileFacts | undefined {
  try {
    const st = statSync(path);
    const kind = st.isFile() ? "file" : st.isDirectory() ? "directory" : st.isBlockDevice() ? "block-device" : st.isCharacterDevice() ? "char-device" : "other";
    return { kind, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
  } catch {
    return undefined;
  }
}

/** Whether uid/gid (with no supplementary groups: the jailer drops them) may read/write/execute a file with these facts. */
export function accessibleBy(facts: FileFacts, uid: number, gid: number, want: { read?: boolean; write?: boolean; execute?: boolean }): boolean {
  const shift = facts.uid === uid ? 6 : facts.gid === gid ? 3 : 0;
  const bits = (facts.mode >> shift) & 7;
  return (!want.read || (bits & 4) !== 0) && (!want.write || (bits & 2) !== 0) && (!want.execute || (bits & 1) !== 0);
}

export interface JailPlan {
  readonly settings: JailSettings;
  /** <dir>/root */
  readonly root: string;
  /** <dir>/volt_jailer */
  readonly jailer: string;
  readonly entries: readonly JailEntry[];
  /** The VM config the jailed volt reads (JAIL_PATHS.config), paths rewritten. */
  readonly vmFile: VmFile;
  /** argv of the jailed volt (argv[0] is its in-jail path). */
  readonly voltArgv: readonly string[];
}

/** A file name safe to put in a path inside the jail. */
function safeName(path: string): string {
  const name = basename(path).replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 64);
  return name === "" || name === "." || name === ".." ? "image" : name;
}

function isWithin(path: string, dir: string): boolean {
  return path === dir || dir === "/" || path.startsWith(`${dir}/`);
}

/**
 * The jail for this VM, without touching anything: what goes where, the
 * rewritten VM config and the jailed volt's arguments. Throws JailError for
 * anything the jailed uid could not use (a drive it cannot read or write, a
 * socket directory it cannot create sockets in), so the user hears it before
 * anything is made.
 */
export function planJail(vm: JailedVm, settings: JailSettings, runtime: VoltRuntime, stat: StatFn = hostStat): JailPlan {
  const { uid, gid } = settings;
  const entries = new Map<string, JailEntry>();
  const add = (entry: JailEntry) => {
    if (entries.has(entry.path)) throw new JailError(`the jail would hold two things at ${entry.path}`);
    ensureDir(dirname(entry.path));
    entries.set(entry.path, entry);
  };
  // Parents the plan does not name: root-owned, world-traversable, created in order.
  const ensureDir = (path: string) => {
    if (entries.has(path)) return;
    if (path !== "/") ensureDir(dirname(path));
    entries.set(path, { kind: "dir", path, owner: "root", mode: 0o755 });
  };
  ensureDir("/");

  const device = (path: string, from: string, owner: JailOwner, mode: number, what: string) => {
    const facts = stat(from);
    if (facts?.kind !== "char-device" && facts?.kind !== "block-device") throw new JailError(`${what}: ${from} is not a device on this host`);
    add({ kind: "device", path, from, owner, mode });
  };
  const { config } = vm;
  const nets = (config.virtioDevices ?? []).filter((d) => d.kind === "net");
  add({ kind: "dir", path: "/dev", owner: "root", mode: 0o755 });
  device(JAIL_PATHS.kvm, config.kvmPath ?? "/dev/kvm", "jail", 0o600, "KVM");
  device("/dev/null", "/dev/null", "root", 0o666, "/dev/null");
  device("/dev/urandom", "/dev/urandom", "root", 0o666, "/dev/urandom");
  if (nets.length > 0) device(JAIL_PATHS.tun, "/dev/net/tun", "jail", 0o600, "virtio-net");
  add({ kind: "dir", path: JAIL_PATHS.proc, owner: "root", mode: 0o555 });
  add({ kind: "dir", path: JAIL_PATHS.tmp, owner: "jail", mode: 0o700 });

  // The program, its loader and libraries.
  const volt = stat(runtime.execPath);
  if (volt?.kind !== "file") throw new JailError(`the volt binary ${runtime.execPath} is not a file`);
  if (!accessibleBy(volt, uid, gid, { read: true, execute: true })) {
    throw new JailError(`uid ${uid} (gid ${gid}) cannot read and execute ${runtime.execPath}: the jailed volt runs it`);
  }
  add({ kind: "bind", path: JAIL_PATHS.volt, from: runtime.execPath, directory: false, readOnly: true });
  if (runtime.interpreter) add({ kind: "copy", path: runtime.interpreter.path, from: runtime.interpreter.file, owner: "root", mode: 0o755 });
  for (const library of runtime.libraries) {
    if (entries.has(library)) continue;
    add({ kind: "copy", path: library, from: library, owner: "root", mode: 0o755 });
  }

  // The VM's own files.
  add({ kind: "dir", path: JAIL_PATHS.vmDir, owner: "root", mode: 0o755 });
  add({ kind: "copy", path: JAIL_PATHS.kernel, from: resolve(config.kernelPath), owner: "jail-group", mode: 0o440 });
  if (config.initrdPath !== undefined) add({ kind: "copy", path: JAIL_PATHS.initrd, from: resolve(config.initrdPath), owner: "jail-group", mode: 0o440 });

  const drives: NonNullable<VmFile["drives"]>[number][] = [];
  const fileNets: NonNullable<VmFile["nets"]>[number][] = [];
  let vsock: VmFile["vsock"];
  let rng = false;
  const socketDirs: string[] = [];
  for (const spec of config.virtioDevices ?? []) {
    switch (spec.kind) {
      case "block": {
        const from = resolve(spec.path);
        const path = `${JAIL_PATHS.vmDir}/drive${drives.length}-${safeName(from)}`;
        const facts = stat(from);
        if (facts?.kind === "block-device") {
          add({ kind: "device", path, from, owner: "jail-group", mode: spec.readOnly ? 0o440 : 0o660 });
        } else if (facts?.kind === "file") {
          if (!accessibleBy(facts, uid, gid, { read: true, write: !spec.readOnly })) {
            throw new JailError(
              `uid ${uid} (gid ${gid}) cannot ${spec.readOnly ? "read" : "read and write"} the drive ${from}: the jailed volt opens it as that uid (chown or chmod it)`,
            );
          }
          add({ kind: "bind", path, from, directory: false, readOnly: spec.readOnly });
        } else {
          throw new JailError(`drive ${from} is neither a regular file nor a block device`);
        }
        drives.push({
          path,
          ...(spec.readOnly ? { readOnly: true } : {}),
          ...(spec.root ? { root: true } : {}),
          ...(spec.id !== undefined ? { id: spec.id } : {}),
          ...(spec.rateLimit ? { rateLimit: spec.rateLimit } : {}),
        });
        break;
      }
      case "net":
        fileNets.push({
          tap: spec.tap,
          ...(spec.mac !== undefined ? { mac: spec.mac } : {}),
          ...(spec.rxRateLimit ? { rxRateLimit: spec.rxRateLimit } : {}),
          ...(spec.txRateLimit ? { txRateLimit: spec.txRateLimit } : {}),
        });
        break;
      case "vsock":
        vsock = { guestCid: spec.guestCid, udsPath: resolve(spec.udsPath) };
        socketDirs.push(dirname(resolve(spec.udsPath)));
        break;
      case "rng":
        rng = true;
        break;
    }
  }
  const apiSocket = vm.apiSocket === undefined ? undefined : resolve(vm.apiSocket);
  if (apiSocket !== undefined) socketDirs.push(dirname(apiSocket));
  const snapshotDirs = vm.snapshotDirs.map((d) => resolve(d));

  // Host directories shared read-write at their own paths; one inside another is already shared.
  const shared = [...new Set([...socketDirs, ...snapshotDirs])].sort((a, b) => a.length - b.length);
  const own = [...entries.keys()];
  const bound: string[] = [];
  for (const dir of shared) {
    if (bound.some((outer) => isWithin(dir, outer))) continue;
    const clash = own.find((path) => isWithin(path, dir));
    if (clash !== undefined || isWithin(dir, JAIL_PATHS.proc) || isWithin(dir, JAIL_PATHS.vmDir) || isWithin(dir, "/dev")) {
      throw new JailError(`${dir} cannot be shared into the jail (it would cover the jail's own ${clash ?? dir}): give sockets and snapshots a directory of their own`);
    }
    const facts = stat(dir);
    if (facts?.kind !== "directory") throw new JailError(`${dir} (for sockets or snapshots) is not a directory`);
    if (!accessibleBy(facts, uid, gid, { write: true, execute: true })) {
      throw new JailError(`uid ${uid} (gid ${gid}) cannot create files in ${dir} (for sockets or snapshots): chown or chmod it`);
    }
    bound.push(dir);
    add({ kind: "bind", path: dir, from: dir, directory: true, readOnly: false });
  }

  const vmFile: VmFile = {
    kernel: JAIL_PATHS.kernel,
    ...(config.initrdPath !== undefined ? { initrd: JAIL_PATHS.initrd } : {}),
    ...(config.cmdline !== undefined ? { cmdline: config.cmdline } : {}),
    memMiB: config.memoryMiB,
    vcpus: config.vcpus,
    bootTimer: config.bootTimer === true,
    onReboot: vm.onReboot,
    rng,
    ...(drives.length > 0 ? { drives } : {}),
    ...(fileNets.length > 0 ? { nets: fileNets } : {}),
    ...(vsock ? { vsock } : {}),
  };
  add({ kind: "write", path: JAIL_PATHS.config, text: `${JSON.stringify(vmFile, null, 2)}\n`, owner: "jail-group", mode: 0o440 });

  const voltArgv = [
    JAIL_PATHS.volt,
    "run",
    "--config",
    JAIL_PATHS.config,
    ...(apiSocket !== undefined ? ["--api-socket", apiSocket] : []),
    ...snapshotDirs.flatMap((dir) => ["--snapshot-dir", dir]),
    ...vm.passFlags,
  ];
  return { settings, root: join(settings.dir, "root"), jailer: join(settings.dir, "volt_jailer"), entries: [...entries.values()], vmFile, voltArgv };
}

/** The jailer's command line for a plan (see c-shims/volt_jailer.c). */
export function jailerArgv(plan: JailPlan): string[] {
  const { settings } = plan;
  const argv = [plan.jailer, "--root", plan.root, "--uid", String(settings.uid), "--gid", String(settings.gid)];
  if (settings.cgroup) argv.push("--cgroup", settings.cgroup.path);
  if (settings.netns !== undefined) argv.push("--netns", settings.netns);
  if (settings.rlimitNofile !== undefined) argv.push("--rlimit-nofile", String(settings.rlimitNofile));
  if (settings.rlimitFsize !== undefined) argv.push("--rlimit-fsize", String(settings.rlimitFsize));
  for (const entry of plan.entries) {
    if (entry.kind === "bind") argv.push(entry.readOnly ? "--bind-ro" : "--bind", entry.from, entry.path);
  }
  argv.push("--", ...plan.voltArgv);
  return argv;
}

// ---------------------------------------------------------------- device numbers

/** Major and minor of a dev_t as glibc (and so Bun's stat) encodes it. */
export function deviceNumbers(rdev: number | bigint): { major: number; minor: number } {
  const dev = BigInt(rdev);
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return { major: Number(major), minor: Number(minor) };
}

/** The 32-bit device number mknod(2) takes (the kernel's new_encode_dev). */
export function kernelDeviceNumber(major: number, minor: number): number {
  if (major > 0xfff || minor > 0xfffff) throw new JailError(`device ${major}:${minor} does not fit mknod's device number`);
  return ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

const SYS_MKNOD = 133;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

function mknod(path: string, block: boolean, mode: number, device: number): void {
  const name = new TextEncoder().encode(`${path}\0`);
  const result = rawSyscall(SYS_MKNOD, ptr(name), (block ? S_IFBLK : S_IFCHR) | mode, device);
  if (result < 0) throw new JailError(`mknod ${path} failed: ${errnoName(-result)}`);
}

// ---------------------------------------------------------------- building and removing

/**
 * Makes the jail directory (which must not exist yet: a jail is never reused,
 * since a previous VMM could have left anything in its /tmp) and everything in
 * the plan, and writes the jailer program next to root/. Runs as root.
 */
export function prepareJail(plan: JailPlan, jailer: Uint8Array): void {
  const { uid, gid, dir } = plan.settings;
  mkdirSync(dirname(dir), { recursive: true, mode: 0o700 });
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") {
      throw new JailError(`the jail directory ${dir} already exists (another jailed VM, or a stale jail: remove it)`);
    }
    throw error;
  }
  try {
    writeFileSync(plan.jailer, jailer, { mode: 0o700 });
    chmodSync(plan.jailer, 0o700);
    buildEntries(plan, uid, gid);
  } catch (error) {
    // Only what this call made: the directory did not exist before it.
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}

function buildEntries(plan: JailPlan, uid: number, gid: number): void {
  const ids = (owner: JailOwner): [number, number] => (owner === "root" ? [0, 0] : owner === "jail" ? [uid, gid] : [0, gid]);
  for (const entry of plan.entries) {
    const target = join(plan.root, entry.path);
    try {
      switch (entry.kind) {
        case "dir":
          mkdirSync(target, { mode: entry.mode });
          break;
        case "copy":
          copyFileSync(entry.from, target, fsConstants.COPYFILE_EXCL);
          break;
        case "write":
          writeFileSync(target, entry.text, { flag: "wx", mode: entry.mode });
          break;
        case "device": {
          const st = statSync(entry.from);
          const { major, minor } = deviceNumbers(st.rdev);
          mknod(target, st.isBlockDevice(), entry.mode, kernelDeviceNumber(major, minor));
          break;
        }
        case "bind":
          if (entry.directory) mkdirSync(target, { mode: 0o755 });
          else writeFileSync(target, "", { flag: "wx", mode: 0o600 });
          break;
      }
      if (entry.kind !== "bind") {
        const [owner, group] = ids(entry.owner);
        chownSync(target, owner, group);
        chmodSync(target, entry.mode);
      }
    } catch (error) {
      if (error instanceof JailError) throw error;
      throw new JailError(`building the jail: ${entry.kind} ${entry.path}${"from" in entry ? ` (from ${entry.from})` : ""}: ${(error as Error).message}`);
    }
  }
}

/**
 * Removes the jail directory. The jail's bind mounts lived only in its own
 * mount namespace, gone with its processes, so this deletes the copies and
 * placeholders and never what was bound.
 */
export function removeJail(plan: JailPlan): void {
  rmSync(plan.settings.dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------- cgroup v2

/** Undoes /proc/self/mountinfo's octal escapes (\040 for a space). */
function unescapeMountPath(path: string): string {
  return path.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

/** The first cgroup v2 mount point in a /proc/self/mountinfo text, if any. */
export function cgroup2Mount(mountinfo: string): string | undefined {
  for (const line of mountinfo.split("\n")) {
    const [mountFields, fsFields] = line.split(" - ");
    if (fsFields === undefined || fsFields.split(" ")[0] !== "cgroup2") continue;
    const mountPoint = mountFields?.split(" ")[4];
    if (mountPoint !== undefined) return unescapeMountPath(mountPoint);
  }
  return undefined;
}

/** cgroup v2 settings for a VM: cpu.max for `cpuPercent` of one CPU (period 100 ms), memory.max in bytes. */
export function planCgroup(root: string, id: string, limits: { cpuPercent?: number; memoryMax?: number }): CgroupPlan {
  const period = 100_000;
  return {
    root,
    path: join(root, "volt", id),
    ...(limits.cpuPercent !== undefined ? { cpuMax: `${Math.round((limits.cpuPercent * period) / 100)} ${period}` } : {}),
    ...(limits.memoryMax !== undefined ? { memoryMax: limits.memoryMax } : {}),
  };
}

function controllersOf(plan: CgroupPlan): string[] {
  return [...(plan.cpuMax !== undefined ? ["cpu"] : []), ...(plan.memoryMax !== undefined ? ["memory"] : [])];
}

function cgroupWrite(file: string, value: string): void {
  try {
    writeFileSync(file, value);
  } catch (error) {
    throw new JailError(`cgroup: writing '${value}' to ${file} failed: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
}

/**
 * Creates <root>/volt/<id> with its limits, enabling the controllers it needs
 * in <root> and <root>/volt first. The jailer enters it (--cgroup).
 */
export function createCgroup(plan: CgroupPlan): void {
  const wanted = controllersOf(plan);
  let available: string[];
  try {
    available = readFileSync(join(plan.root, "cgroup.controllers"), "utf8").trim().split(/\s+/);
  } catch {
    throw new JailError(`${plan.root} is not a cgroup v2 hierarchy (no cgroup.controllers)`);
  }
  const missing = wanted.filter((c) => !available.includes(c));
  if (missing.length > 0) {
    throw new JailError(`the cgroup v2 hierarchy at ${plan.root} has no ${missing.join(", ")} controller (it has: ${available.join(" ") || "none"})`);
  }
  const parent = dirname(plan.path);
  mkdirSync(parent, { recursive: true });
  for (const dir of [plan.root, parent]) {
    const enabled = readFileSync(join(dir, "cgroup.subtree_control"), "utf8").trim().split(/\s+/);
    for (const controller of wanted) if (!enabled.includes(controller)) cgroupWrite(join(dir, "cgroup.subtree_control"), `+${controller}`);
  }
  try {
    mkdirSync(plan.path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") throw new JailError(`the cgroup ${plan.path} already exists (another jailed VM, or a stale one: rmdir it)`);
    throw error;
  }
  try {
    if (plan.cpuMax !== undefined) cgroupWrite(join(plan.path, "cpu.max"), plan.cpuMax);
    if (plan.memoryMax !== undefined) cgroupWrite(join(plan.path, "memory.max"), String(plan.memoryMax));
  } catch (error) {
    rmdirSync(plan.path);
    throw error;
  }
}

/** Removes the VM's cgroup once its processes are gone (the kernel may take a moment to see them leave). */
export async function removeCgroup(plan: CgroupPlan): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      rmdirSync(plan.path);
      return;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return;
      if (code !== "EBUSY" || attempt >= 50) throw new JailError(`cgroup: removing ${plan.path} failed: ${code ?? (error as Error).message}`);
      await Bun.sleep(20);
    }
  }
}

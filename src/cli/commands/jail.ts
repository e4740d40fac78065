/**
 * `volt run --jail --uid N --gid N ...`: the VMM in a jail (issue #6, item 4).
 *
 * This process (root, the compiled volt) checks the input, builds the jail
 * (src/sandbox/jail.ts), then runs the C jailer (c-shims/volt_jailer.c),
 * which creates the namespaces before any Bun thread exists, pivots into the
 * jail, drops to the uid/gid and execs the same volt binary as
 * `/volt run --config /vm/vm.json ...`. That volt enters Landlock and seccomp
 * as any `volt run` does. This process waits, passes signals on, returns the
 * jailed volt's exit status, and removes the jail and its cgroup.
 */
import { existsSync, readFileSync, realpathSync } from "node:fs";
import { constants as osConstants } from "node:os";
import { resolve } from "node:path";
// build.ts compiles c-shims/volt_jailer.c to this static executable; the import embeds it in dist/volt.
// @ts-expect-error: src/types/assets.d.ts declares only *.so assets; a file import's default export is its path.
import jailerAsset from "../../../build/volt_jailer" with { type: "file" };
import { DriveOptionError, repeatedOption } from "../../config/device-options.ts";
import { runtimeRoot, newVmId } from "../../runtime/dirs.ts";
import {
  JailError,
  cgroup2Mount,
  createCgroup,
  jailerArgv,
  planCgroup,
  planJail,
  prepareJail,
  removeCgroup,
  removeJail,
  type CgroupPlan,
  type JailSettings,
  type JailedVm,
  type VoltRuntime,
} from "../../sandbox/jail.ts";
import { elfInterpreter, executableMappings } from "../../sandbox/policy.ts";
import { validateInputs } from "../../vmm/builder.ts";
import type { VmConfig } from "../../vmm/config.ts";
import { EXIT } from "../exit-codes.ts";
import { CliError, usageError } from "../output.ts";
import { buildOrExplain } from "../vm-session.ts";
import { switchedOff } from "../sandbox.ts";
import { log as rootLog, logEnvironment } from "../../log/index.ts";

const log = rootLog.withTag("jail");

const jailerPath: string = jailerAsset;

export const JAIL_FLAGS = {
  jail: {
    type: "boolean",
    description:
      "Run the VMM in a jail (root only, compiled volt): new mount, PID, IPC, UTS and network namespaces, a root holding only the VM's files, as --uid/--gid; Landlock and seccomp still apply inside",
  },
  uid: { type: "string", description: "With --jail: the uid the VMM runs as (not 0)", valueHint: "N" },
  gid: { type: "string", description: "With --jail: the gid the VMM runs as (not 0)", valueHint: "N" },
  "jail-dir": {
    type: "string",
    description: "With --jail: the VM's jail directory, made for this run and removed after it (default ${XDG_RUNTIME_DIR:-/run}/volt/jail/ID)",
    valueHint: "dir",
  },
  "jail-memory-max": { type: "string", description: "With --jail: cgroup v2 memory.max for the VMM, in bytes or with K, M or G", valueHint: "bytes" },
  "jail-cpu-quota": { type: "string", description: "With --jail: cgroup v2 cpu.max as a percentage of one CPU (50 = half a CPU, 200 = two)", valueHint: "percent" },
  "jail-rlimit-nofile": { type: "string", description: "With --jail: the VMM's limit on open files (RLIMIT_NOFILE)", valueHint: "N" },
  "jail-rlimit-fsize": { type: "string", description: "With --jail: the largest file the VMM may write (RLIMIT_FSIZE), in bytes or with K, M or G", valueHint: "bytes" },
  "jail-netns": {
    type: "string",
    description: "With --jail: join this network namespace (e.g. /run/netns/NAME, holding the VM's taps) instead of a new, empty one; needed for --net",
    valueHint: "path",
  },
} as const;

const JAIL_ONLY_FLAGS = Object.keys(JAIL_FLAGS).filter((name) => name !== "jail");

type Parsed = Record<string, unknown>;

/** Whether `volt run` goes the jailed way: --jail, or a jail flag without it (which runJailed refuses). */
export function jailRequested(parsed: Parsed): boolean {
  return parsed.jail === true || JAIL_ONLY_FLAGS.some((name) => typeof parsed[name] === "string");
}

function wholeNumber(flag: string, value: string, min: number, max: number): number {
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max) throw usageError(`--${flag} must be a whole number from ${min} to ${max} (got '${value}')`);
  return Number(value);
}

/** Bytes, or a whole number with K, M or G (powers of 1024). */
export function parseBytes(flag: string, value: string): number {
  const match = /^(\d+)([KMG]?)$/i.exec(value);
  const scale = { "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[(match?.[2] ?? "").toUpperCase()];
  const bytes = match && scale ? Number(match[1]) * scale : NaN;
  if (!Number.isSafeInteger(bytes) || bytes < 1) throw usageError(`--${flag} must be a number of bytes, optionally with K, M or G (got '${value}')`);
  return bytes;
}

export interface JailFlags {
  readonly uid: number;
  readonly gid: number;
  readonly dir?: string;
  readonly memoryMax?: number;
  readonly cpuPercent?: number;
  readonly rlimitNofile?: number;
  readonly rlimitFsize?: number;
  readonly netns?: string;
}

/** The jail flags, checked (no root needed: the unit tests call this). */
export function parseJailFlags(parsed: Parsed): JailFlags {
  if (parsed.jail !== true) {
    const given = JAIL_ONLY_FLAGS.find((name) => typeof parsed[name] === "string");
    throw usageError(`--${given} needs --jail`);
  }
  for (const flag of ["detach", "id", "detached-child"]) {
    if (parsed[flag] !== undefined && parsed[flag] !== false) throw usageError(`--${flag} is not supported with --jail yet`);
  }
  const text = (name: string) => (typeof parsed[name] === "string" ? (parsed[name] as string) : undefined);
  const id = (name: "uid" | "gid") => {
    const value = text(name);
    if (value === undefined) throw usageError(`--jail needs --${name} (the ${name} the VMM runs as)`);
    if (value === "0") throw usageError(`--${name} 0 would leave the jailed VMM root: give an unprivileged ${name}`);
    return wholeNumber(name, value, 1, 0xffff_fffe);
  };
  const uid = id("uid");
  const gid = id("gid");
  const dir = text("jail-dir");
  const memory = text("jail-memory-max");
  const cpu = text("jail-cpu-quota");
  const nofile = text("jail-rlimit-nofile");
  const fsize = text("jail-rlimit-fsize");
  const netns = text("jail-netns");
  if (netns !== undefined && !existsSync(netns)) throw usageError(`--jail-netns ${netns} does not exist`);
  return {
    uid,
    gid,
    ...(dir !== undefined ? { dir: resolve(dir) } : {}),
    ...(memory !== undefined ? { memoryMax: parseBytes("jail-memory-max", memory) } : {}),
    ...(cpu !== undefined ? { cpuPercent: wholeNumber("jail-cpu-quota", cpu, 1, 100_000) } : {}),
    // Bun itself needs a few dozen descriptors before the VM opens any.
    ...(nofile !== undefined ? { rlimitNofile: wholeNumber("jail-rlimit-nofile", nofile, 64, 1 << 20) } : {}),
    ...(fsize !== undefined ? { rlimitFsize: parseBytes("jail-rlimit-fsize", fsize) } : {}),
    ...(netns !== undefined ? { netns: resolve(netns) } : {}),
  };
}

/** Flags handed to the jailed `volt run` unchanged. */
export function passedFlags(parsed: Parsed): string[] {
  const off = (["no-sandbox", "no-landlock", "no-seccomp"] as const).filter((name) => switchedOff(parsed, name));
  return [...(parsed.json === true ? ["json"] : []), ...off].map((name) => `--${name}`);
}

function realOrSelf(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

/** A file directly in one of the loader's library directories (/lib, /usr/lib64, /usr/lib/x86_64-linux-gnu, ...). */
export function inLibraryDir(path: string): boolean {
  return /^\/(usr\/)?(local\/)?lib(32|64|x32)?(\/[^/]+-linux-gnu[^/]*)?\/[^/]+$/.test(path);
}

/**
 * This compiled volt, its ELF interpreter and the system libraries it maps.
 * Left out: Bun's extracted copies of embedded files (the jailed volt extracts
 * its own) and modules loaded from elsewhere, such as an optional native addon
 * found in a node_modules beside the working directory (the jailed volt does
 * without it, as any volt run away from a checkout does).
 */
export function voltRuntime(): VoltRuntime {
  const execPath = realOrSelf(process.execPath);
  const requested = elfInterpreter(execPath);
  const interpreter = requested === undefined ? undefined : { path: requested, file: realOrSelf(requested) };
  const libraries = executableMappings(readFileSync("/proc/self/maps", "utf8"))
    .map(realOrSelf)
    .filter((file) => file !== execPath && file !== interpreter?.file && inLibraryDir(file));
  return { execPath, ...(interpreter ? { interpreter } : {}), libraries: [...new Set(libraries)] };
}

function jailError(error: unknown): never {
  if (error instanceof JailError) throw new CliError("jail", error.message, EXIT.usage, { cause: error });
  throw error;
}

export interface JailedRunInput {
  readonly parsed: Parsed;
  readonly rawArgs: readonly string[];
  readonly config: VmConfig;
  readonly onReboot: "exit" | "restart";
}

/** `volt run --jail`: returns the jailed volt's exit status. */
export async function runJailed(input: JailedRunInput): Promise<number> {
  const { parsed, rawArgs, config } = input;
  if (parsed.jail === true && process.getuid?.() !== 0) {
    throw usageError("the jail needs root (it creates namespaces, device nodes and cgroups, then drops to --uid/--gid)");
  }
  const flags = parseJailFlags(parsed);
  if (!process.argv[1]?.startsWith("/$bunfs/")) {
    throw usageError("the jail needs the compiled volt (bun run build): that one binary is what runs inside the jail");
  }
  const nets = (config.virtioDevices ?? []).filter((device) => device.kind === "net");
  if (nets.length > 0 && flags.netns === undefined) {
    throw usageError("a jailed VM gets a new, empty network namespace: for --net, create the taps in a namespace of their own and give it with --jail-netns");
  }
  if (flags.memoryMax !== undefined && flags.memoryMax < config.memoryMiB * 1024 * 1024) {
    throw usageError(`--jail-memory-max ${flags.memoryMax} is less than the guest's ${config.memoryMiB} MiB: the VMM would be killed by the OOM killer`);
  }
  // Bad input is exit 2 before anything is built (taps are not looked for: they live in the jail's namespace).
  const checked = buildOrExplain(() => validateInputs({ ...config, virtioDevices: (config.virtioDevices ?? []).filter((d) => d.kind !== "net") }));
  for (const device of checked.virtioDevices) device.release?.();

  const id = `jail-${newVmId()}`;
  let cgroup: CgroupPlan | undefined;
  if (flags.memoryMax !== undefined || flags.cpuPercent !== undefined) {
    const root = cgroup2Mount(readFileSync("/proc/self/mountinfo", "utf8"));
    if (root === undefined) throw usageError("--jail-memory-max and --jail-cpu-quota need a cgroup v2 hierarchy: none is mounted (mount -t cgroup2 none /sys/fs/cgroup)");
    cgroup = planCgroup(root, id, { ...(flags.cpuPercent !== undefined ? { cpuPercent: flags.cpuPercent } : {}), ...(flags.memoryMax !== undefined ? { memoryMax: flags.memoryMax } : {}) });
  }
  const settings: JailSettings = {
    id,
    uid: flags.uid,
    gid: flags.gid,
    dir: flags.dir ?? resolve(runtimeRoot(), "jail", id),
    ...(flags.rlimitNofile !== undefined ? { rlimitNofile: flags.rlimitNofile } : {}),
    ...(flags.rlimitFsize !== undefined ? { rlimitFsize: flags.rlimitFsize } : {}),
    ...(flags.netns !== undefined ? { netns: flags.netns } : {}),
    ...(cgroup ? { cgroup } : {}),
  };
  const apiSocket = typeof parsed["api-socket"] === "string" ? parsed["api-socket"] : undefined;
  let snapshotDirs: string[];
  try {
    snapshotDirs = repeatedOption(rawArgs, "snapshot-dir");
  } catch (error) {
    if (error instanceof DriveOptionError) throw usageError(error.message);
    throw error;
  }
  const vm: JailedVm = {
    config,
    onReboot: input.onReboot,
    ...(apiSocket !== undefined ? { apiSocket } : {}),
    snapshotDirs,
    passFlags: passedFlags(parsed),
  };
  let plan;
  try {
    plan = planJail(vm, settings, voltRuntime());
  } catch (error) {
    jailError(error);
  }

  const jailer = await Bun.file(jailerPath).bytes();
  // Each step undoes its own partial work when it fails; from here on, what both made is removed at the end.
  try {
    if (cgroup) createCgroup(cgroup);
  } catch (error) {
    jailError(error);
  }
  try {
    prepareJail(plan, jailer);
  } catch (error) {
    if (cgroup) await removeCgroup(cgroup).catch(() => {});
    jailError(error);
  }
  try {
    log.info(`jail ${id}: ${plan.root}, uid ${flags.uid} gid ${flags.gid}${cgroup ? `, cgroup ${cgroup.path}` : ""}`, {
      jail: id,
      root: plan.root,
      uid: flags.uid,
      gid: flags.gid,
      ...(cgroup ? { cgroup: cgroup.path } : {}),
    });
    // A clean environment for the jailed volt, but it logs as this one does (--log-level/--log-format, via VOLT_LOG_*).
    const env: Record<string, string> = { PATH: "/", HOME: JAIL_HOME, TMPDIR: JAIL_HOME, ...logEnvironment() };
    for (const name of ["TERM", "NO_COLOR"]) if (process.env[name] !== undefined) env[name] = process.env[name]!;
    const child = Bun.spawn(jailerArgv(plan), { stdio: ["inherit", "inherit", "inherit"], env });
    // The jailer passes these on to the jailed volt (and the terminal's Ctrl-C reaches it directly as well).
    const forward = (signal: NodeJS.Signals) => child.kill(signal);
    const signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
    for (const signal of signals) process.on(signal, forward);
    try {
      await child.exited;
    } finally {
      for (const signal of signals) process.off(signal, forward);
    }
    const signal = child.signalCode;
    if (signal) return 128 + (typeof signal === "number" ? signal : osConstants.signals[signal]);
    return child.exitCode ?? EXIT.internal;
  } finally {
    removeJail(plan);
    if (cgroup) await removeCgroup(cgroup).catch((error: unknown) => log.warn((error as Error).message, { cgroup: cgroup.path }));
  }
}

/** HOME and TMPDIR of the jailed volt: its own /tmp. */
const JAIL_HOME = "/tmp";

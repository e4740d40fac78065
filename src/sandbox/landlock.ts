/**
 * Landlock for Volt, through the raw system calls (landlock_create_ruleset,
 * landlock_add_rule, landlock_restrict_self).
 *
 * A policy is a list of paths with what may be done beneath each. Planning
 * turns it into rights for the kernel's ABI version: every right the ABI knows
 * is handled (denied unless a rule allows it), rights the ABI lacks are dropped
 * from the rules and reported, and so are the rights the kernel cannot restrict
 * at all on that ABI (e.g. device ioctls before ABI 5). Files get only file
 * rights: the kernel refuses directory rights on a file (EINVAL).
 *
 * landlock_restrict_self covers only the calling thread, and Bun has helper
 * threads before any user code runs (its file thread pool, the JIT, the GC),
 * so restricting in place leaves them outside. `restrictAndReexec` restricts
 * the main thread and then execs the same program: the domain survives execve,
 * and the new process, every thread of it, starts inside.
 *
 * When the kernel has no Landlock (ENOSYS: not built; EOPNOTSUPP: disabled at
 * boot) the functions say so in their result rather than throwing: the caller
 * decides whether running unsandboxed is acceptable, and prints it.
 */
import { statSync } from "node:fs";
import { log } from "../log/index.ts";
import { ERRNO, SyscallError, errnoName } from "../ffi/errno.ts";
import {
  LANDLOCK_ACCESS_FS,
  LANDLOCK_ACCESS_NET,
  LANDLOCK_RESTRICT_SELF,
  LANDLOCK_SCOPE,
  PR,
  closeFd,
  execve,
  landlockAbiVersionRaw,
  landlockAddPathRule,
  landlockCreateRuleset,
  landlockRestrictSelf,
  openPathHandle,
  prctlRaw,
  setNoNewPrivs,
} from "../ffi/sandbox-syscalls.ts";

const FS = LANDLOCK_ACCESS_FS;

/** What a rule lets the VMM do beneath a path. */
export type LandlockAccess =
  /** Read files (and, for a directory, list it). */
  | "read"
  /** List a directory only (no file contents). */
  | "read-dir"
  /** Read, write and truncate files; in a directory also create, replace and delete regular files. */
  | "read-write"
  /** Execute (and read) files: the program to re-exec and its loader. */
  | "exec"
  /** Open a device read-write and issue ioctls on it (ABI 5+ restricts device ioctls). */
  | "device"
  /** Issue ioctls on a device opened with another right (e.g. BLKGETSIZE64 on a read-only block device). */
  | "ioctl"
  /** Create and remove Unix socket files in a directory (bind, stale-socket cleanup). */
  | "unix-sockets"
  /** Create and remove directories beneath a directory (snapshots are written to a sibling, then renamed). */
  | "make-dirs";

export interface LandlockRule {
  readonly path: string;
  readonly access: LandlockAccess | readonly LandlockAccess[];
  /** Why the VMM needs it: shown by `volt sandbox show`. */
  readonly why?: string;
  /** Skip the rule (and report it) when the path does not exist, instead of failing. */
  readonly optional?: boolean;
}

export interface LandlockPolicy {
  readonly rules: readonly LandlockRule[];
  /** Deny TCP bind/connect entirely (ABI 4+). Default true: a VMM has no TCP business. */
  readonly denyTcp?: boolean;
  /** Scope abstract Unix sockets and signals to the domain (ABI 6+). Default true. */
  readonly scopeIpc?: boolean;
}

/** The rights each access kind asks for, on a directory (file rights are the FILE_RIGHTS subset). */
const ACCESS_RIGHTS: Readonly<Record<LandlockAccess, bigint>> = {
  read: FS.LANDLOCK_ACCESS_FS_READ_FILE | FS.LANDLOCK_ACCESS_FS_READ_DIR,
  "read-dir": FS.LANDLOCK_ACCESS_FS_READ_DIR,
  "read-write":
    FS.LANDLOCK_ACCESS_FS_READ_FILE |
    FS.LANDLOCK_ACCESS_FS_WRITE_FILE |
    FS.LANDLOCK_ACCESS_FS_TRUNCATE |
    FS.LANDLOCK_ACCESS_FS_READ_DIR |
    FS.LANDLOCK_ACCESS_FS_MAKE_REG |
    FS.LANDLOCK_ACCESS_FS_REMOVE_FILE,
  exec: FS.LANDLOCK_ACCESS_FS_EXECUTE | FS.LANDLOCK_ACCESS_FS_READ_FILE,
  device: FS.LANDLOCK_ACCESS_FS_READ_FILE | FS.LANDLOCK_ACCESS_FS_WRITE_FILE | FS.LANDLOCK_ACCESS_FS_IOCTL_DEV,
  ioctl: FS.LANDLOCK_ACCESS_FS_IOCTL_DEV,
  "unix-sockets": FS.LANDLOCK_ACCESS_FS_MAKE_SOCK | FS.LANDLOCK_ACCESS_FS_REMOVE_FILE,
  "make-dirs": FS.LANDLOCK_ACCESS_FS_MAKE_DIR | FS.LANDLOCK_ACCESS_FS_REMOVE_DIR | FS.LANDLOCK_ACCESS_FS_REFER,
};

/** The only rights a rule on a file (not a directory) may carry. */
export const FILE_RIGHTS =
  FS.LANDLOCK_ACCESS_FS_EXECUTE |
  FS.LANDLOCK_ACCESS_FS_WRITE_FILE |
  FS.LANDLOCK_ACCESS_FS_READ_FILE |
  FS.LANDLOCK_ACCESS_FS_TRUNCATE |
  FS.LANDLOCK_ACCESS_FS_IOCTL_DEV;

/** Filesystem rights each ABI version handles. */
export function fsRightsForAbi(abi: number): bigint {
  if (abi < 1) return 0n;
  let rights = (1n << 13n) - 1n; // EXECUTE .. MAKE_SYM
  if (abi >= 2) rights |= FS.LANDLOCK_ACCESS_FS_REFER;
  if (abi >= 3) rights |= FS.LANDLOCK_ACCESS_FS_TRUNCATE;
  if (abi >= 5) rights |= FS.LANDLOCK_ACCESS_FS_IOCTL_DEV;
  return rights;
}

export function netRightsForAbi(abi: number): bigint {
  return abi >= 4 ? LANDLOCK_ACCESS_NET.LANDLOCK_ACCESS_NET_BIND_TCP | LANDLOCK_ACCESS_NET.LANDLOCK_ACCESS_NET_CONNECT_TCP : 0n;
}

export function scopesForAbi(abi: number): bigint {
  return abi >= 6 ? LANDLOCK_SCOPE.LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE.LANDLOCK_SCOPE_SIGNAL : 0n;
}

/** Rights as names without the LANDLOCK_ACCESS_FS_ prefix, e.g. ["read_file", "read_dir"]. */
export function fsRightNames(rights: bigint): string[] {
  return Object.entries(FS)
    .filter(([, bit]) => (rights & bit) !== 0n)
    .map(([name]) => name.slice("LANDLOCK_ACCESS_FS_".length).toLowerCase());
}

// ---------------------------------------------------------------- probing

export type LandlockProbe =
  | { readonly available: true; readonly abi: number }
  | { readonly available: false; readonly errno: number; readonly reason: string };

/** Asks the kernel for its Landlock ABI version. `raw` is the system call (replaceable in tests). */
export function probeLandlock(raw: () => number = landlockAbiVersionRaw): LandlockProbe {
  const result = raw();
  if (result >= 1) return { available: true, abi: result };
  const errno = result < 0 ? -result : ERRNO.EINVAL;
  const reason =
    errno === ERRNO.ENOSYS
      ? "this kernel has no Landlock (ENOSYS: not built in)"
      : errno === ERRNO.EOPNOTSUPP
        ? "Landlock is built in but disabled (EOPNOTSUPP: not in the kernel's lsm= list)"
        : `the Landlock version probe failed: ${errnoName(errno)}`;
  return { available: false, errno, reason };
}

// ---------------------------------------------------------------- planning

export interface PlannedRule {
  readonly path: string;
  readonly kind: "file" | "directory";
  readonly access: readonly LandlockAccess[];
  /** Rights passed to the kernel. */
  readonly allowed: bigint;
  /** Asked for but left out: the ABI lacks them (the kernel then does not restrict them either). */
  readonly droppedForAbi: bigint;
  /** Directory rights asked for on a file, which the kernel would refuse. */
  readonly droppedForFile: bigint;
  readonly why?: string;
}

export interface LandlockPlan {
  readonly abi: number;
  readonly handledFs: bigint;
  readonly handledNet: bigint;
  readonly scoped: bigint;
  readonly restrictFlags: number;
  readonly rules: readonly PlannedRule[];
  /** Optional rules whose paths do not exist. */
  readonly skipped: readonly { readonly path: string; readonly why?: string }[];
  /** Rights Volt would like handled that this ABI cannot restrict, by name. */
  readonly unrestricted: readonly string[];
}

export type PathKind = "file" | "directory" | "missing";

function kindOf(path: string): PathKind {
  try {
    return statSync(path).isDirectory() ? "directory" : "file";
  } catch {
    return "missing";
  }
}

function accessList(access: LandlockRule["access"]): readonly LandlockAccess[] {
  return typeof access === "string" ? [access] : access;
}

export class LandlockPolicyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LandlockPolicyError";
  }
}

/**
 * Rights for each rule on `abi`, without touching the kernel. `kindOfPath` is
 * replaceable for tests. A required path that does not exist is an error; so
 * is a rule that leaves a file nothing (e.g. "read-dir" on a file).
 */
export function planLandlock(policy: LandlockPolicy, abi: number, kindOfPath: (path: string) => PathKind = kindOf): LandlockPlan {
  if (abi < 1) throw new LandlockPolicyError(`Landlock ABI ${abi} cannot be planned for`);
  const handledFs = fsRightsForAbi(abi);
  const handledNet = policy.denyTcp === false ? 0n : netRightsForAbi(abi);
  const scoped = policy.scopeIpc === false ? 0n : scopesForAbi(abi);
  const rules: PlannedRule[] = [];
  const skipped: { path: string; why?: string }[] = [];
  for (const rule of policy.rules) {
    const kind = kindOfPath(rule.path);
    if (kind === "missing") {
      if (rule.optional) {
        skipped.push(rule.why === undefined ? { path: rule.path } : { path: rule.path, why: rule.why });
        continue;
      }
      throw new LandlockPolicyError(`the sandbox policy names ${rule.path}, which does not exist${rule.why ? ` (${rule.why})` : ""}`);
    }
    const access = accessList(rule.access);
    const requested = access.reduce((rights, a) => rights | ACCESS_RIGHTS[a], 0n);
    const droppedForFile = kind === "file" ? requested & ~FILE_RIGHTS : 0n;
    const fitting = requested & ~droppedForFile;
    const allowed = fitting & handledFs;
    if (allowed === 0n) {
      throw new LandlockPolicyError(
        `the sandbox rule for ${rule.path} (${access.join(", ")}) leaves nothing a ${kind} can be granted on Landlock ABI ${abi}`,
      );
    }
    rules.push({
      path: rule.path,
      kind,
      access,
      allowed,
      droppedForAbi: fitting & ~handledFs,
      droppedForFile,
      ...(rule.why === undefined ? {} : { why: rule.why }),
    });
  }
  const unrestricted: string[] = [];
  const wantedFs = fsRightsForAbi(Number.MAX_SAFE_INTEGER);
  unrestricted.push(...fsRightNames(wantedFs & ~handledFs).map((name) => `fs.${name}`));
  if (policy.denyTcp !== false && handledNet === 0n) unrestricted.push("net.bind_tcp", "net.connect_tcp");
  if (policy.scopeIpc !== false && scoped === 0n) unrestricted.push("scope.abstract_unix_socket", "scope.signal");
  // After an execve, ABI 7 logs denials only when asked to: the re-exec'd VMM is exactly that case.
  const restrictFlags = abi >= 7 ? LANDLOCK_RESTRICT_SELF.LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON : 0;
  return { abi, handledFs, handledNet, scoped, restrictFlags, rules, skipped, unrestricted };
}

/** A plan as plain JSON (rights by name), for `volt sandbox show` and --json output. */
export function describePlan(plan: LandlockPlan): Record<string, unknown> {
  return {
    abi: plan.abi,
    handled: fsRightNames(plan.handledFs),
    denyTcp: plan.handledNet !== 0n,
    scoped: plan.scoped !== 0n ? ["abstract_unix_socket", "signal"] : [],
    rules: plan.rules.map((rule) => ({
      path: rule.path,
      kind: rule.kind,
      access: rule.access,
      rights: fsRightNames(rule.allowed),
      ...(rule.droppedForAbi !== 0n ? { droppedForAbi: fsRightNames(rule.droppedForAbi) } : {}),
      ...(rule.droppedForFile !== 0n ? { droppedForFile: fsRightNames(rule.droppedForFile) } : {}),
      ...(rule.why !== undefined ? { why: rule.why } : {}),
    })),
    skipped: plan.skipped,
    unrestricted: plan.unrestricted,
  };
}

// ---------------------------------------------------------------- enforcing

export type LandlockOutcome =
  | { readonly status: "enforced"; readonly plan: LandlockPlan }
  | { readonly status: "unavailable"; readonly reason: string; readonly errno: number };

/**
 * Restricts the calling thread (and whatever it later clones or execs) to the
 * policy. On its own this leaves Bun's existing helper threads unrestricted:
 * use `restrictAndReexec` for a whole process. Sets no_new_privs first.
 * Throws LandlockPolicyError or SyscallError for a bad policy; returns
 * "unavailable" when the kernel has no Landlock.
 */
export function restrictSelf(policy: LandlockPolicy, probe: LandlockProbe = probeLandlock()): LandlockOutcome {
  if (!probe.available) return { status: "unavailable", reason: probe.reason, errno: probe.errno };
  const plan = planLandlock(policy, probe.abi);
  const rulesetFd = landlockCreateRuleset(plan.handledFs, plan.handledNet, plan.scoped, plan.abi);
  try {
    for (const rule of plan.rules) {
      const fd = openPathHandle(rule.path);
      try {
        landlockAddPathRule(rulesetFd, fd, rule.allowed, rule.path);
      } finally {
        closeFd(fd);
      }
    }
    setNoNewPrivs();
    landlockRestrictSelf(rulesetFd, plan.restrictFlags);
  } finally {
    closeFd(rulesetFd);
  }
  return { status: "enforced", plan };
}

/** The environment variable that marks a re-exec'd, sandboxed Volt; its value is the Landlock ABI. */
export const SANDBOX_ENV_MARKER = "VOLT_SANDBOXED";

/**
 * Whether this process is the re-exec'd one (started inside the Landlock
 * domain): the marker is set and so is no_new_privs, which the restriction set
 * before the exec. A marker inherited by accident (or set by hand) without
 * no_new_privs does not count, so the sandbox is not skipped because of it.
 */
export function isSandboxed(
  env: Record<string, string | undefined> = process.env,
  noNewPrivs: () => boolean = () => prctlRaw(PR.PR_GET_NO_NEW_PRIVS) === 1,
): boolean {
  const value = env[SANDBOX_ENV_MARKER];
  return value !== undefined && value !== "" && value !== "0" && noNewPrivs();
}

export interface ReexecCommand {
  /** The file to execve. */
  readonly path: string;
  readonly argv: readonly string[];
}

/**
 * How to start this same program again. A compiled `volt` is process.execPath
 * with the user's arguments (Bun reports its embedded entry point, /$bunfs/...,
 * as argv[1]; it must not be passed again). From source it is bun, the script
 * and the arguments; Bun's own run-time flags (process.execArgv) come first.
 */
export function reexecCommand(
  execPath: string = process.execPath,
  argv: readonly string[] = process.argv,
  execArgv: readonly string[] = process.execArgv,
): ReexecCommand {
  const script = argv[1];
  if (script !== undefined && script.startsWith("/$bunfs/")) {
    return { path: execPath, argv: [execPath, ...argv.slice(2)] };
  }
  return { path: execPath, argv: [execPath, ...execArgv, ...argv.slice(1)] };
}

function environmentList(env: Record<string, string | undefined>): string[] {
  return Object.entries(env)
    .filter((entry): entry is [string, string] => entry[1] !== undefined)
    .map(([name, value]) => `${name}=${value}`);
}

export interface ReexecOptions {
  readonly command?: ReexecCommand;
  /** The new process's environment (default process.env); the marker is added to it. */
  readonly env?: Record<string, string | undefined>;
  readonly probe?: LandlockProbe;
}

/**
 * Restricts the main thread to the policy, then execs the same program with
 * the same arguments and `VOLT_SANDBOXED=<abi>` added to the environment, so
 * that every thread of the new process runs inside the domain. Does not return
 * when it succeeds. When Landlock is unavailable it returns that outcome
 * without exec'ing; when this process already is the sandboxed one it returns
 * "already-sandboxed" (call it unconditionally at start-up).
 *
 * The policy must allow executing the program (and its ELF interpreter) and
 * reading whatever the runtime opens while starting: see policy.ts.
 */
export function restrictAndReexec(
  policy: LandlockPolicy,
  options: ReexecOptions = {},
): { readonly status: "already-sandboxed" } | Extract<LandlockOutcome, { status: "unavailable" }> {
  const env = options.env ?? process.env;
  if (isSandboxed(env)) return { status: "already-sandboxed" };
  const command = options.command ?? reexecCommand();
  const outcome = restrictSelf(policy, options.probe ?? probeLandlock());
  if (outcome.status === "unavailable") return outcome;
  try {
    execve(command.path, command.argv, environmentList({ ...env, [SANDBOX_ENV_MARKER]: String(outcome.plan.abi) }));
  } catch (error) {
    // This thread is already restricted and cannot be un-restricted: nothing sensible remains but to stop.
    const detail = error instanceof SyscallError ? error.message : String(error);
    log.withTag("sandbox").error(`re-exec into the sandbox failed: ${detail} (is ${command.path} allowed "exec" by the policy?)`, { path: command.path });
    process.exit(126);
  }
}

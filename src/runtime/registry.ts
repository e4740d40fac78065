/**
 * The runtime directories of VMs on this host: claiming one for a new VM,
 * reading what is in each, telling a live VM from a dead one (a pid file
 * whose process is gone, or was reused by another program), and cleaning up
 * after dead ones.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { checkSocketPaths, checkVmId, newVmId, RuntimeError, runtimeRoot, VM_ID_PATTERN, vmPaths, type VmPaths } from "./dirs.ts";

/** What a VM is, as its volt process wrote it to vm.json once the VM was configured. */
export interface RuntimeRecord {
  readonly id: string;
  readonly pid: number;
  /** The process's start time in clock ticks (/proc/PID/stat field 22), so a reused pid is not taken for the VM. */
  readonly pidStartTime?: string;
  /** ISO 8601. */
  readonly startedAt: string;
  /** Started with --detach (console in console.log), or in the foreground with --id. */
  readonly detached: boolean;
  readonly kernel: string;
  readonly initrd?: string;
  readonly cmdline?: string;
  readonly vcpus: number;
  readonly memoryMiB: number;
  readonly apiSocket: string;
  readonly consoleSocket: string;
  readonly consoleLog: string;
  readonly voltVersion: string;
}

/** How a VM's process ended, written by that process just before it exits. */
export interface ExitRecord {
  /** volt's exit status (the README's table: 0, 2, 3, 5, 6, 130, 143...). */
  readonly exitCode: number;
  /** The VM's outcome (poweroff, reboot, panic, error, signal) when it ran; absent when it never started. */
  readonly outcome?: string;
  readonly detail?: string;
  /** Why it never started (bad config, no KVM...). */
  readonly error?: { readonly kind: string; readonly message: string };
  readonly endedAt: string;
}

/**
 * starting: the directory is claimed but the VM is not described yet (or its process is young);
 * running: its process is alive; exited: gone, with an exit record; dead: gone without one (killed, crashed).
 */
export type RuntimeStatus = "starting" | "running" | "exited" | "dead";

export interface RuntimeEntry {
  readonly paths: VmPaths;
  readonly status: RuntimeStatus;
  readonly pid?: number;
  readonly record?: RuntimeRecord;
  readonly exit?: ExitRecord;
}

/** A claimed directory with no pid file for this long was abandoned by a volt that died while starting. */
export const STARTING_GRACE_MS = 30_000;

/** The process's start time (clock ticks since boot), or undefined when there is no such process (or it is a zombie). */
export function processStartTime(pid: number): string | undefined {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // The command name (field 2) may contain spaces and parentheses: fields after the last ')' are plain.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  if (fields[0] === "Z" || fields[0] === "X") return undefined;
  return fields[19];
}

/** Whether `pid` is a running process and, when the start time is known, the same process as then. */
export function processAlive(pid: number, startTime?: string): boolean {
  const now = processStartTime(pid);
  return now !== undefined && (startTime === undefined || now === startTime);
}

function readJson<T>(path: string): T | undefined {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as T;
  } catch {
    return undefined;
  }
}

/** Written whole or not at all: readers never see half a file. */
export function writeJsonAtomic(path: string, value: unknown): void {
  const partial = `${path}.partial-${process.pid}`;
  writeFileSync(partial, `${JSON.stringify(value, null, 2)}\n`);
  renameSync(partial, path);
}

function readPid(path: string): number | undefined {
  try {
    const text = readFileSync(path, "utf8").trim();
    return /^\d+$/.test(text) ? Number(text) : undefined;
  } catch {
    return undefined;
  }
}

/** What is in one VM's directory and whether its process is alive. */
export function inspectEntry(id: string, root: string = runtimeRoot()): RuntimeEntry {
  const paths = vmPaths(id, root);
  const record = readJson<RuntimeRecord>(paths.record);
  const exit = readJson<ExitRecord>(paths.exit);
  const pid = readPid(paths.pid) ?? record?.pid;
  const base = { paths, ...(pid !== undefined ? { pid } : {}), ...(record ? { record } : {}), ...(exit ? { exit } : {}) };
  if (pid === undefined) {
    // Claimed, and the process not spawned yet (or the claimer died before spawning it).
    let young = false;
    try {
      young = Date.now() - statSync(paths.dir).mtimeMs < STARTING_GRACE_MS;
    } catch {
      // Gone meanwhile.
    }
    return { ...base, status: exit ? "exited" : young ? "starting" : "dead" };
  }
  // The start time is only checked once the process itself recorded it (pid files are written before that, by the parent).
  const startTime = record !== undefined && record.pid === pid ? record.pidStartTime : undefined;
  if (processAlive(pid, startTime)) return { ...base, status: record ? "running" : "starting" };
  return { ...base, status: exit ? "exited" : "dead" };
}

/** Every VM directory under the runtime root (none when the root does not exist). */
export function listEntries(root: string = runtimeRoot()): RuntimeEntry[] {
  let names: string[];
  try {
    names = readdirSync(root);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw new RuntimeError("runtime-dir", `cannot read the runtime directory ${root}: ${(error as Error).message}`);
  }
  return names
    .filter((name) => VM_ID_PATTERN.test(name))
    .filter((name) => {
      try {
        return statSync(join(root, name)).isDirectory();
      } catch {
        return false;
      }
    })
    .sort()
    .map((name) => inspectEntry(name, root));
}

/** The VM with this id, or else the only one whose id starts with it. */
export function resolveVm(idOrPrefix: string, root: string = runtimeRoot()): RuntimeEntry {
  if (!VM_ID_PATTERN.test(idOrPrefix)) throw new RuntimeError("no-such-vm", `no VM ${JSON.stringify(idOrPrefix)} (not a VM id; volt ls lists them)`);
  if (existsSync(join(root, idOrPrefix))) return inspectEntry(idOrPrefix, root);
  const matches = listEntries(root).filter((entry) => entry.paths.id.startsWith(idOrPrefix));
  if (matches.length === 1) return matches[0]!;
  if (matches.length > 1) {
    throw new RuntimeError("ambiguous-id", `${idOrPrefix} matches ${matches.length} VMs (${matches.map((m) => m.paths.id).join(", ")}); give more of the id`);
  }
  throw new RuntimeError("no-such-vm", `no VM ${idOrPrefix} in ${root} (volt ls lists them)`);
}

/** Renames the directory aside first, so nobody ever reads a half-removed one. */
export function removeVmDir(paths: VmPaths): void {
  const aside = join(paths.dir, "..", `.${paths.id}.removing-${process.pid}-${Date.now()}`);
  try {
    renameSync(paths.dir, aside);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw error;
  }
  rmSync(aside, { recursive: true, force: true });
}

/** Removes the directories of VMs that are gone; returns what they were. Live and starting VMs are left alone. */
export function cleanStaleEntries(root: string = runtimeRoot()): RuntimeEntry[] {
  const cleaned: RuntimeEntry[] = [];
  for (const entry of listEntries(root)) {
    if (entry.status !== "exited" && entry.status !== "dead") continue;
    removeVmDir(entry.paths);
    cleaned.push(entry);
  }
  return cleaned;
}

/**
 * Creates the directory for a new VM (a fresh id when none is given). An id
 * whose VM is gone is taken over (its old directory removed); one that is
 * running or starting is refused.
 */
export function claimVmDir(id: string | undefined, root: string = runtimeRoot()): VmPaths {
  const chosen = id === undefined ? newVmId() : checkVmId(id);
  const paths = vmPaths(chosen, root);
  checkSocketPaths(paths);
  try {
    mkdirSync(root, { recursive: true, mode: 0o700 });
  } catch (error) {
    throw new RuntimeError("runtime-dir", `cannot create the runtime directory ${root}: ${(error as Error).message}`);
  }
  for (let attempt = 0; ; attempt++) {
    try {
      mkdirSync(paths.dir, { mode: 0o700 });
      return paths;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== "EEXIST") throw new RuntimeError("runtime-dir", `cannot create ${paths.dir}: ${(error as Error).message}`);
    }
    const existing = inspectEntry(chosen, root);
    if (attempt > 0 || existing.status === "running" || existing.status === "starting") {
      throw new RuntimeError("id-in-use", `VM id ${chosen} is in use (${existing.status}${existing.pid !== undefined ? `, pid ${existing.pid}` : ""}); pick another --id`);
    }
    removeVmDir(existing.paths);
  }
}

/**
 * The API socket for `volt snapshot create ID DIR` and friends: a VM id (or
 * unique prefix) from the runtime directory, or else a path to a socket.
 * Anything with a `/` is a path; a bare word is an id when such a VM exists,
 * a path when a file of that name does, and an error naming both otherwise.
 */
export function resolveApiSocket(idOrPath: string, root: string = runtimeRoot()): string {
  if (idOrPath.includes("/")) return idOrPath;
  let entry: RuntimeEntry;
  try {
    entry = resolveVm(idOrPath, root);
  } catch (error) {
    if (error instanceof RuntimeError && error.kind === "no-such-vm" && existsSync(idOrPath)) return idOrPath;
    throw error;
  }
  if (entry.status !== "running") throw notRunning(entry);
  return entry.record?.apiSocket ?? entry.paths.apiSocket;
}

export function notRunning(entry: RuntimeEntry): RuntimeError {
  const how =
    entry.status === "exited"
      ? `it exited${entry.exit ? ` with status ${entry.exit.exitCode}${entry.exit.detail ? `: ${entry.exit.detail}` : entry.exit.error ? `: ${entry.exit.error.message}` : ""}` : ""}`
      : entry.status === "dead"
        ? "its process is gone without an exit record (killed or crashed)"
        : "it is still starting";
  return new RuntimeError("not-running", `VM ${entry.paths.id} is not running: ${how}`);
}

/**
 * `volt run --detach`: the parent claims a runtime directory, starts
 * `volt run` again as a background process in a session of its own (setsid;
 * stdin from /dev/null, its own output to volt.log, the guest console to
 * console.log and console.sock), and waits until that process's control API
 * answers GET /vm, or the process dies, in which case its recorded error (or
 * the end of volt.log) becomes the parent's error and the directory is
 * removed: a failed start leaves nothing behind.
 */
import { spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { apiRequest } from "./client.ts";
import { runtimeRoot, vmPaths } from "./dirs.ts";
import { claimVmDir, inspectEntry, removeVmDir, type ExitRecord } from "./registry.ts";
import { log as rootLog, logEnvironment } from "../log/index.ts";

const log = rootLog.withTag("runtime");

/** The flag that tells `volt run` it is the background half of --detach (it adopts the directory its parent claimed). */
export const DETACHED_CHILD_FLAG = "--detached-child";
export const DEFAULT_START_TIMEOUT_MS = 120_000;

export interface DetachOptions {
  /** `volt run`'s arguments as given (after `run`); --detach and --id are replaced. */
  readonly runArgs: readonly string[];
  readonly id?: string;
  /** The user's --api-socket, if any (else the directory's api.sock). */
  readonly apiSocket?: string;
  readonly timeoutMs?: number;
  readonly root?: string;
  /** How to run volt again (default: this very executable). */
  readonly command?: readonly string[];
}

export interface DetachedVm {
  readonly id: string;
  readonly pid: number;
  readonly apiSocket: string;
  readonly consoleLog: string;
  readonly consoleSocket: string;
  readonly runtimeDir: string;
}

/** The background VM could not be started; `exitCode` is the status its own volt reported (2 bad input, 3 no KVM...). */
export class DetachError extends Error {
  override name = "DetachError";
  constructor(
    readonly kind: string,
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

/** The command that runs this volt: the compiled binary alone, or bun with the CLI's entry file. */
export function selfCommand(): string[] {
  const main = Bun.main;
  const compiled = main.startsWith("/$bunfs/") || main.startsWith("B:/~BUN/");
  return compiled ? [process.execPath] : [process.execPath, main];
}

/** The arguments for the background `volt run`: the user's, without --detach and --id, plus the child's own. */
export function childRunArgs(runArgs: readonly string[], id: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < runArgs.length; i++) {
    const arg = runArgs[i]!;
    if (arg === "--") {
      out.push(...runArgs.slice(i));
      break;
    }
    if (arg === "--detach" || arg.startsWith("--detach=") || arg === DETACHED_CHILD_FLAG) continue;
    if (arg === "--id") {
      i++;
      continue;
    }
    if (arg.startsWith("--id=")) continue;
    out.push(arg);
  }
  // --json: the child's one JSON document (its outcome, or why it could not start) lands in volt.log for the parent to read.
  return [...out, ...(out.includes("--json") ? [] : ["--json"]), "--id", id, DETACHED_CHILD_FLAG];
}

export async function startDetached(options: DetachOptions): Promise<DetachedVm> {
  const root = options.root ?? runtimeRoot();
  const paths = claimVmDir(options.id, root);
  const apiSocket = options.apiSocket !== undefined ? resolve(options.apiSocket) : paths.apiSocket;
  let logFd: number | undefined;
  let pid: number | undefined;
  try {
    logFd = openSync(paths.processLog, "a");
    const [executable, ...prefix] = options.command ?? selfCommand();
    const child = spawn(executable!, [...prefix, "run", ...childRunArgs(options.runArgs, paths.id)], {
      detached: true,
      stdio: ["ignore", logFd, logFd],
      cwd: process.cwd(),
      // The background volt logs (into volt.log) as this one was asked to: --log-level/--log-format travel as VOLT_LOG_*.
      env: { ...process.env, ...logEnvironment() },
    });
    closeSync(logFd);
    logFd = undefined;
    let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    let spawnError: Error | undefined;
    child.on("exit", (code, signal) => (exited = { code, signal }));
    child.on("error", (error) => (spawnError = error));
    pid = child.pid;
    if (pid === undefined) {
      await Bun.sleep(0);
      throw new DetachError("spawn", `cannot start the background volt: ${spawnError?.message ?? "no pid"}`, 1);
    }
    // Until the child writes its own, so a `volt ls` meanwhile sees a starting VM with a pid.
    await Bun.write(paths.pid, `${pid}\n`);
    log.debug("background volt started; waiting for its API", { vm: paths.id, childPid: pid, apiSocket, processLog: paths.processLog });

    const deadline = Date.now() + (options.timeoutMs ?? DEFAULT_START_TIMEOUT_MS);
    for (;;) {
      if (exited || spawnError) break;
      try {
        const answer = await apiRequest(apiSocket, "GET", "/vm", { timeoutMs: 2000 });
        if (answer.status === 200) {
          log.debug("background VM's API answers", { vm: paths.id, childPid: pid });
          child.unref();
          return { id: paths.id, pid, apiSocket, consoleLog: paths.consoleLog, consoleSocket: paths.consoleSocket, runtimeDir: paths.dir };
        }
      } catch {
        // Not listening yet.
      }
      if (Date.now() > deadline) {
        child.kill("SIGKILL");
        throw new DetachError("start-timeout", `the VM did not start within ${Math.round((options.timeoutMs ?? DEFAULT_START_TIMEOUT_MS) / 1000)} s${logTail(paths.processLog)}`, 6);
      }
      await Bun.sleep(50);
    }
    // Let the exit event and the child's last writes land.
    await Bun.sleep(0);
    throw childFailure(paths.id, root, exited, spawnError);
  } catch (error) {
    if (logFd !== undefined) closeSync(logFd);
    removeVmDir(paths);
    throw error;
  }
}

function childFailure(id: string, root: string, exited: { code: number | null; signal: NodeJS.Signals | null } | undefined, spawnError: Error | undefined): DetachError {
  if (spawnError) return new DetachError("spawn", `cannot start the background volt: ${spawnError.message}`, 1);
  const entry = inspectEntry(id, root);
  const record: ExitRecord | undefined = entry.exit;
  if (record?.error) return new DetachError(record.error.kind, record.error.message, record.exitCode);
  if (record) return new DetachError("vm-ended", `the VM ended before its API answered: ${record.detail ?? record.outcome ?? "no detail"}`, record.exitCode || 6);
  // Failed before it had a runtime record (bad input is checked first): its JSON error document is the last thing in volt.log.
  const reported = lastJsonDocument(vmPaths(id, root).processLog) as { ok?: boolean; error?: { kind?: string; message?: string } } | undefined;
  if (reported?.ok === false && typeof reported.error?.message === "string") {
    return new DetachError(reported.error.kind ?? "vm-died", reported.error.message, exited?.code ?? 1);
  }
  const how = exited?.signal ? `was killed by ${exited.signal}` : `exited with status ${exited?.code ?? "?"}`;
  return new DetachError("vm-died", `the background volt ${how} before its API answered${logTail(vmPaths(id, root).processLog)}`, 6);
}

function logTail(path: string): string {
  try {
    const text = readFileSync(path, "utf8").trim();
    return text === "" ? "" : `; its output ends:\n${text.split("\n").slice(-10).join("\n")}`;
  } catch {
    return "";
  }
}

/**
 * The last JSON document in a file (volt prints one, pretty-printed, as its last output), or undefined.
 * With --log-format json the file also holds one-line JSON log records (they carry "time" and "level"
 * and no "ok"); those are not the document and are passed over.
 */
export function lastJsonDocument(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, "utf8").trimEnd();
  } catch {
    return undefined;
  }
  const lines = text.split("\n");
  for (let start = lines.length - 1; start >= 0; start--) {
    if (!lines[start]!.startsWith("{")) continue;
    // A document ends with a "}" line of its own (pretty-printed) or on its first line; log lines may follow it.
    for (let end = start; end < lines.length; end++) {
      if (end > start && lines[end] !== "}") continue;
      try {
        const parsed: unknown = JSON.parse(lines.slice(start, end + 1).join("\n"));
        if (!isLogRecord(parsed)) return parsed;
        break;
      } catch {
        // Not the end of this document (or not a document): look further, then at an earlier start.
      }
    }
  }
  return undefined;
}

function isLogRecord(value: unknown): boolean {
  return typeof value === "object" && value !== null && !("ok" in value) && "time" in value && "level" in value && "message" in value;
}

/**
 * The lifecycle commands over a VM's runtime directory and control API:
 * ls, inspect, pause, resume, stop, kill, wait, logs, console.
 *
 * Each takes --json (one document on stdout, success or failure) and exits with:
 *   0   done
 *   1   internal error (a bug in Volt)
 *   2   bad command line, no such VM, the VM is not running, or it refused the
 *       request in its state (pause a paused VM: error kind "state")
 *   6   the VM's process is alive but its API does not answer, or failed (HTTP 5xx)
 *   124 wait/stop: the time limit passed first
 * `volt wait` exits with the VM's own status instead (volt run's: 0, 5, 6, 130, 143;
 * 1 when its process died without recording one).
 */
import { defineCommand } from "citty";
import { closeSync, existsSync, openSync, readSync, statSync } from "node:fs";
import { connect } from "node:net";
import { ApiUnreachableError, apiErrorMessage, apiRequest, type ApiAnswer } from "../../runtime/client.ts";
import { RuntimeError, runtimeRoot } from "../../runtime/dirs.ts";
import {
  cleanStaleEntries,
  inspectEntry,
  listEntries,
  notRunning,
  processAlive,
  removeVmDir,
  resolveVm,
  type ExitRecord,
  type RuntimeEntry,
} from "../../runtime/registry.ts";
import { EXIT, type ExitCode } from "../exit-codes.ts";
import { CliError, printJson, rejectUnknownFlags, reportError, usageError } from "../output.ts";
import { log } from "../../log/index.ts";

export const LIFECYCLE_EXIT = { timeout: 124 as ExitCode } as const;

const EXIT_HELP =
  "Exit status: 0 done, 1 internal error, 2 bad input / no such VM / not running / refused in its state,\n" +
  "6 the VM's API does not answer or failed";

const idArg = { type: "positional", description: "VM id (or a unique prefix of one; volt ls lists them)", required: true } as const;
const jsonArg = { type: "boolean", description: "One JSON document on stdout (errors too: {ok: false, error: {kind, message}})", default: false } as const;

/** Runs a command body with Volt's error reporting; RuntimeErrors are bad input (exit 2). */
async function guarded(json: boolean, body: () => Promise<ExitCode | void>): Promise<void> {
  try {
    process.exitCode = (await body()) ?? EXIT.ok;
  } catch (error) {
    const cliError =
      error instanceof RuntimeError
        ? new CliError(error.kind, error.message, EXIT.usage, { cause: error })
        : error instanceof ApiUnreachableError
          ? new CliError("api-unreachable", error.message, EXIT.vmFailed, { cause: error })
          : error;
    process.exitCode = reportError(cliError, json);
  }
}

function runningEntry(id: string): RuntimeEntry {
  const entry = resolveVm(id);
  if (entry.status !== "running") throw notRunning(entry);
  return entry;
}

function apiSocketOf(entry: RuntimeEntry): string {
  return entry.record?.apiSocket ?? entry.paths.apiSocket;
}

/** A 4xx from the VM is a refusal (exit 2, with the API's kind), a 5xx a failure (exit 6). */
function refused(answer: ApiAnswer): CliError {
  const { kind, message } = apiErrorMessage(answer);
  return new CliError(kind, message, answer.status >= 500 ? EXIT.vmFailed : EXIT.usage);
}

function uptimeSeconds(startedAt: string | undefined): number | undefined {
  if (startedAt === undefined) return undefined;
  const ms = Date.now() - Date.parse(startedAt);
  return Number.isFinite(ms) ? Math.max(0, Math.round(ms / 100) / 10) : undefined;
}

function formatUptime(seconds: number | undefined): string {
  if (seconds === undefined) return "-";
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
}

function seconds(flag: string, value: string | undefined, fallback: number | undefined): number | undefined {
  if (value === undefined) return fallback;
  if (!/^\d+(\.\d+)?$/.test(value)) throw usageError(`--${flag} must be a number of seconds (got '${value}')`);
  return Number(value);
}

interface VmDescription {
  state?: string;
  vcpus?: number;
  memoryMiB?: number;
  kernel?: unknown;
  cmdline?: string;
  acpi?: boolean;
  devices?: unknown[];
}

/** The VM's own view (GET /vm), or why it could not be had. */
async function describeLive(entry: RuntimeEntry, timeoutMs = 2000): Promise<{ description?: VmDescription; problem?: string }> {
  try {
    const answer = await apiRequest(apiSocketOf(entry), "GET", "/vm", { timeoutMs });
    if (answer.status === 200) return { description: answer.body as VmDescription };
    return { problem: apiErrorMessage(answer).message };
  } catch (error) {
    return { problem: (error as Error).message };
  }
}

function exitSummary(exit: ExitRecord | undefined) {
  if (!exit) return undefined;
  return {
    exitCode: exit.exitCode,
    ...(exit.outcome !== undefined ? { outcome: exit.outcome } : {}),
    ...(exit.detail !== undefined ? { detail: exit.detail } : {}),
    ...(exit.error !== undefined ? { error: exit.error } : {}),
    endedAt: exit.endedAt,
  };
}

// ---------------------------------------------------------------- ls

const lsArgs = { json: jsonArg } as const;

export const lsCommand = defineCommand({
  meta: {
    name: "ls",
    description:
      "List the VMs in the runtime directory (${XDG_RUNTIME_DIR:-/run}/volt): id, pid, state, uptime, vCPUs, memory.\n" +
      "The directories of VMs that are gone (exited, or killed without a word) are removed and reported as cleaned.\n\n" +
      "States: running, paused, stopping (from the VM's API), starting, unresponsive (alive, API silent).\n\n" +
      "Examples:\n  volt ls\n  volt ls --json | jq -r '.vms[].id'\n\n" +
      `${EXIT_HELP}.`,
  },
  args: lsArgs,
  async run({ args: parsed, rawArgs }) {
    await guarded(parsed.json, async () => {
      rejectUnknownFlags(rawArgs, lsArgs);
      const root = runtimeRoot();
      const cleaned = cleanStaleEntries(root);
      const entries = listEntries(root).filter((entry) => entry.status === "running" || entry.status === "starting");
      const vms = await Promise.all(
        entries.map(async (entry) => {
          const live = entry.status === "running" ? await describeLive(entry) : {};
          const state = entry.status === "starting" ? "starting" : (live.description?.state ?? "unresponsive");
          return {
            id: entry.paths.id,
            pid: entry.pid ?? null,
            state,
            startedAt: entry.record?.startedAt ?? null,
            uptimeS: uptimeSeconds(entry.record?.startedAt) ?? null,
            vcpus: live.description?.vcpus ?? entry.record?.vcpus ?? null,
            memoryMiB: live.description?.memoryMiB ?? entry.record?.memoryMiB ?? null,
            detached: entry.record?.detached ?? null,
            apiSocket: entry.record?.apiSocket ?? entry.paths.apiSocket,
            consoleLog: entry.paths.consoleLog,
            ...(live.problem !== undefined ? { problem: live.problem } : {}),
          };
        }),
      );
      const cleanedOut = cleaned.map((entry) => ({
        id: entry.paths.id,
        pid: entry.pid ?? null,
        status: entry.status,
        ...(entry.exit ? { exitCode: entry.exit.exitCode } : {}),
        ...(entry.exit?.outcome !== undefined ? { outcome: entry.exit.outcome } : {}),
        ...(entry.exit?.detail !== undefined ? { detail: entry.exit.detail } : {}),
      }));
      if (parsed.json) {
        printJson({ ok: true, runtimeDir: root, vms, cleaned: cleanedOut });
        return;
      }
      const rows = [["ID", "PID", "STATE", "UPTIME", "VCPUS", "MEMORY"]];
      for (const vm of vms) {
        rows.push([vm.id, String(vm.pid ?? "-"), vm.state, formatUptime(vm.uptimeS ?? undefined), String(vm.vcpus ?? "-"), vm.memoryMiB !== null ? `${vm.memoryMiB} MiB` : "-"]);
      }
      const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)));
      process.stdout.write(rows.map((row) => row.map((cell, i) => cell.padEnd(widths[i]!)).join("  ").trimEnd()).join("\n") + "\n");
      for (const entry of cleanedOut) {
        const how = entry.status === "exited" ? `exited with status ${entry.exitCode}${entry.detail ? `: ${entry.detail}` : ""}` : "its process died without an exit record";
        log.info(`cleaned up ${entry.id} (${how})`, { vm: entry.id, status: entry.status });
      }
    });
  },
});

// ---------------------------------------------------------------- inspect

const inspectArgs = { id: idArg, json: jsonArg } as const;

export const inspectCommand = defineCommand({
  meta: {
    name: "inspect",
    description:
      "Everything about one VM: its process, state, machine, devices, files, metrics (while it runs) and how it\n" +
      "ended (once it has).\n\nExamples:\n  volt inspect web1\n  volt inspect web1 --json | jq .vm.state\n\n" +
      `${EXIT_HELP}.`,
  },
  args: inspectArgs,
  async run({ args: parsed, rawArgs }) {
    await guarded(parsed.json, async () => {
      rejectUnknownFlags(rawArgs, inspectArgs);
      const entry = resolveVm(parsed.id);
      const record = entry.record;
      let live: { description?: VmDescription; problem?: string } = {};
      let metrics: unknown;
      if (entry.status === "running") {
        live = await describeLive(entry);
        try {
          const answer = await apiRequest(apiSocketOf(entry), "GET", "/metrics", { timeoutMs: 2000 });
          if (answer.status === 200) metrics = answer.body;
        } catch {
          // Metrics are extra: the VM's description stands without them.
        }
      }
      const status = entry.status;
      const state = status === "running" ? (live.description?.state ?? "unresponsive") : status;
      const vm = {
        id: entry.paths.id,
        pid: entry.pid ?? null,
        status,
        state,
        startedAt: record?.startedAt ?? null,
        uptimeS: status === "running" ? (uptimeSeconds(record?.startedAt) ?? null) : null,
        vcpus: live.description?.vcpus ?? record?.vcpus ?? null,
        memoryMiB: live.description?.memoryMiB ?? record?.memoryMiB ?? null,
        kernel: record?.kernel ?? null,
        initrd: record?.initrd ?? null,
        cmdline: live.description?.cmdline ?? record?.cmdline ?? null,
        ...(live.description ? { boot: live.description.kernel, acpi: live.description.acpi, devices: live.description.devices } : {}),
        detached: record?.detached ?? null,
        runtimeDir: entry.paths.dir,
        apiSocket: apiSocketOf(entry),
        consoleSocket: entry.paths.consoleSocket,
        consoleLog: entry.paths.consoleLog,
        voltVersion: record?.voltVersion ?? null,
        ...(live.problem !== undefined ? { problem: live.problem } : {}),
        ...(metrics !== undefined ? { metrics } : {}),
        exit: exitSummary(entry.exit) ?? null,
      };
      if (parsed.json) {
        printJson({ ok: true, vm });
        return;
      }
      const lines = [
        `id          ${vm.id}`,
        `state       ${vm.state}${vm.pid !== null ? ` (pid ${vm.pid})` : ""}`,
        `started     ${vm.startedAt ?? "-"}${vm.uptimeS !== null ? ` (up ${formatUptime(vm.uptimeS)})` : ""}`,
        `machine     ${vm.vcpus ?? "?"} vCPU(s), ${vm.memoryMiB ?? "?"} MiB`,
        `kernel      ${vm.kernel ?? "-"}`,
        ...(vm.initrd ? [`initrd      ${vm.initrd}`] : []),
        `cmdline     ${vm.cmdline ?? "-"}`,
        ...(live.description?.devices ? [`devices     ${(live.description.devices as { kind: string }[]).map((d) => d.kind).join(", ") || "none"}`] : []),
        `api         ${vm.apiSocket}`,
        `console     ${vm.consoleSocket} (log ${vm.consoleLog})`,
        ...(vm.exit ? [`exit        status ${vm.exit.exitCode}${vm.exit.detail ? `: ${vm.exit.detail}` : vm.exit.error ? `: ${vm.exit.error.message}` : ""}`] : []),
        ...(vm.problem ? [`problem     ${vm.problem}`] : []),
      ];
      process.stdout.write(`${lines.join("\n")}\n`);
    });
  },
});

// ---------------------------------------------------------------- pause / resume

function stateCommand(name: "pause" | "resume") {
  const args = { id: idArg, json: jsonArg } as const;
  const [verb, done] = name === "pause" ? ["Pause a running VM: every vCPU parked, devices quiesced; it keeps its memory", "paused"] : ["Resume a paused VM", "running"];
  return defineCommand({
    meta: {
      name,
      description: `${verb}.\n${name === "pause" ? "Pausing a paused VM" : "Resuming a VM that is not paused"} is refused (exit 2, error kind "state").\n\nExample:\n  volt ${name} web1\n\n${EXIT_HELP}.`,
    },
    args,
    async run({ args: parsed, rawArgs }) {
      await guarded(parsed.json, async () => {
        rejectUnknownFlags(rawArgs, args);
        const entry = runningEntry(parsed.id);
        const answer = await apiRequest(apiSocketOf(entry), "PUT", `/vm/${name}`);
        if (answer.status !== 200) throw refused(answer);
        const state = (answer.body as { state?: string } | undefined)?.state ?? done;
        if (parsed.json) printJson({ ok: true, id: entry.paths.id, state });
        else process.stdout.write(`${entry.paths.id} ${state}\n`);
      });
    },
  });
}

export const pauseCommand = stateCommand("pause");
export const resumeCommand = stateCommand("resume");

// ---------------------------------------------------------------- ctrl-alt-del

const ctrlAltDelArgs = { id: idArg, json: jsonArg } as const;

export const ctrlAltDelCommand = defineCommand({
  meta: {
    name: "ctrl-alt-del",
    description:
      "Press Ctrl-Alt-Del on the VM's keyboard (PUT /vm/ctrl-alt-del). Linux reboots at once, or, when its init asked\n" +
      "for it (busybox init, systemd), the init shuts down cleanly: a graceful stop where `volt stop` is immediate.\n" +
      "Refused while the VM is paused, or while the guest has not read the previous press (exit 2).\n\n" +
      `Examples:\n  volt ctrl-alt-del web1\n  volt ctrl-alt-del web1 && volt wait web1 --timeout 30 || volt stop web1\n\n${EXIT_HELP}.`,
  },
  args: ctrlAltDelArgs,
  async run({ args: parsed, rawArgs }) {
    await guarded(parsed.json, async () => {
      rejectUnknownFlags(rawArgs, ctrlAltDelArgs);
      const entry = runningEntry(parsed.id);
      const answer = await apiRequest(apiSocketOf(entry), "PUT", "/vm/ctrl-alt-del");
      if (answer.status !== 200) throw refused(answer);
      if (parsed.json) printJson({ ok: true, id: entry.paths.id, sent: "ctrl-alt-del" });
      else process.stdout.write(`${entry.paths.id} ctrl-alt-del sent\n`);
    });
  },
});

// ---------------------------------------------------------------- wait

interface Ended {
  readonly exit?: ExitRecord;
  readonly timedOut: boolean;
}

/** Until the VM's process is gone (or the time is up); the exit record is read as soon as it appears, in case the directory goes too. */
async function waitForExit(entry: RuntimeEntry, timeoutMs: number | undefined): Promise<Ended> {
  const deadline = timeoutMs === undefined ? Infinity : Date.now() + timeoutMs;
  const startTime = entry.record?.pid === entry.pid ? entry.record?.pidStartTime : undefined;
  let exit = entry.exit;
  for (;;) {
    const now = inspectEntry(entry.paths.id, runtimeRoot());
    exit = now.exit ?? exit;
    const alive = entry.pid !== undefined && processAlive(entry.pid, startTime);
    if (!alive) return { ...(exit ? { exit } : {}), timedOut: false };
    if (Date.now() >= deadline) return { ...(exit ? { exit } : {}), timedOut: true };
    await Bun.sleep(100);
  }
}

const waitArgs = {
  id: idArg,
  timeout: { type: "string", description: "Give up after this many seconds (exit 124)", valueHint: "seconds" },
  json: jsonArg,
} as const;

export const waitCommand = defineCommand({
  meta: {
    name: "wait",
    description:
      "Wait until a VM's process exits, and exit with the VM's own status (volt run's: 0 powered off or rebooted,\n" +
      "5 kernel panic, 6 VM failure, 130/143 signal; 1 when it died without recording one, e.g. volt kill).\n\n" +
      "Examples:\n  volt wait web1\n  volt wait web1 --timeout 60 --json\n\n" +
      "Exit status: the VM's, as above; 2 no such VM; 124 the timeout passed first.",
  },
  args: waitArgs,
  async run({ args: parsed, rawArgs }) {
    await guarded(parsed.json, async () => {
      rejectUnknownFlags(rawArgs, waitArgs);
      const timeout = seconds("timeout", parsed.timeout, undefined);
      const entry = resolveVm(parsed.id);
      const ended = await waitForExit(entry, timeout === undefined ? undefined : timeout * 1000);
      if (ended.timedOut) throw new CliError("timeout", `VM ${entry.paths.id} still runs after ${timeout} s`, LIFECYCLE_EXIT.timeout);
      const exitCode = (ended.exit?.exitCode ?? EXIT.internal) as ExitCode;
      if (parsed.json) {
        printJson({
          ok: exitCode === EXIT.ok,
          id: entry.paths.id,
          exitCode,
          ...(ended.exit ? exitSummary(ended.exit) : { detail: "the VM's process ended without recording how (killed or crashed)" }),
        });
      } else if (exitCode !== EXIT.ok) {
        log.error(`${entry.paths.id} ended with status ${exitCode}: ${ended.exit?.detail ?? ended.exit?.error?.message ?? "its process died without an exit record"}`, { vm: entry.paths.id, exitCode });
      }
      return exitCode;
    });
  },
});

// ---------------------------------------------------------------- stop

const stopArgs = {
  id: idArg,
  timeout: { type: "string", description: "How long to wait for the VM to end (default 30)", valueHint: "seconds" },
  json: jsonArg,
} as const;

export const stopCommand = defineCommand({
  meta: {
    name: "stop",
    description:
      "Stop a VM (PUT /vm/stop; SIGTERM when its API does not answer) and wait until its process has exited.\n" +
      "The runtime directory stays (volt logs and volt wait still work) until volt ls cleans it.\n\n" +
      "Examples:\n  volt stop web1\n  for id in $(volt ls --json | jq -r '.vms[].id'); do volt stop $id; done\n\n" +
      `${EXIT_HELP}, 124 it had not exited within --timeout.`,
  },
  args: stopArgs,
  async run({ args: parsed, rawArgs }) {
    await guarded(parsed.json, async () => {
      rejectUnknownFlags(rawArgs, stopArgs);
      const timeout = seconds("timeout", parsed.timeout, 30)!;
      const entry = runningEntry(parsed.id);
      let how = "api";
      try {
        const answer = await apiRequest(apiSocketOf(entry), "PUT", "/vm/stop", { timeoutMs: 5000 });
        if (answer.status !== 200 && answer.status !== 409) throw refused(answer);
      } catch (error) {
        if (!(error instanceof ApiUnreachableError)) throw error;
        // The process lives but its API is gone or stuck: SIGTERM also stops the VM cleanly.
        how = "SIGTERM";
        process.kill(entry.pid!, "SIGTERM");
      }
      const ended = await waitForExit(entry, timeout * 1000);
      if (ended.timedOut) throw new CliError("timeout", `VM ${entry.paths.id} did not exit within ${timeout} s (volt kill ${entry.paths.id} ends it)`, LIFECYCLE_EXIT.timeout);
      const summary = exitSummary(ended.exit);
      if (parsed.json) printJson({ ok: true, id: entry.paths.id, pid: entry.pid ?? null, stoppedBy: how, ...(summary ?? { exitCode: null }) });
      else process.stdout.write(`${entry.paths.id} stopped${summary?.detail ? ` (${summary.detail})` : ""}\n`);
    });
  },
});

// ---------------------------------------------------------------- kill

const killArgs = { id: idArg, json: jsonArg } as const;

export const killCommand = defineCommand({
  meta: {
    name: "kill",
    description:
      "End a VM's process at once (SIGKILL: no clean stop, no exit record) and remove its runtime directory.\n" +
      "A VM that is already gone just has its directory removed.\n\nExample:\n  volt kill web1\n\n" +
      `${EXIT_HELP}.`,
  },
  args: killArgs,
  async run({ args: parsed, rawArgs }) {
    await guarded(parsed.json, async () => {
      rejectUnknownFlags(rawArgs, killArgs);
      const entry = resolveVm(parsed.id);
      const startTime = entry.record?.pid === entry.pid ? entry.record?.pidStartTime : undefined;
      const wasRunning = entry.pid !== undefined && processAlive(entry.pid, startTime);
      if (wasRunning) {
        process.kill(entry.pid!, "SIGKILL");
        const deadline = Date.now() + 10_000;
        while (processAlive(entry.pid!, startTime)) {
          if (Date.now() > deadline) throw new CliError("kill", `pid ${entry.pid} survived SIGKILL for 10 s`, EXIT.internal);
          await Bun.sleep(20);
        }
      }
      removeVmDir(entry.paths);
      if (parsed.json) printJson({ ok: true, id: entry.paths.id, pid: entry.pid ?? null, wasRunning, removed: true });
      else process.stdout.write(`${entry.paths.id} ${wasRunning ? "killed" : "was not running"}; runtime directory removed\n`);
    });
  },
});

// ---------------------------------------------------------------- logs

const logsArgs = {
  id: idArg,
  follow: { type: "boolean", description: "Keep printing what the guest writes until the VM exits (Ctrl-C stops)", alias: "f" },
  tail: { type: "string", description: "Only the last N lines", valueHint: "N" },
  json: { type: "boolean", description: "One JSON document {ok, id, consoleLog, text} (not with --follow)", default: false },
} as const;

function readFrom(path: string, offset: number): Uint8Array {
  const fd = openSync(path, "r");
  try {
    const size = statSync(path).size;
    if (size <= offset) return new Uint8Array(0);
    const bytes = new Uint8Array(size - offset);
    let done = 0;
    while (done < bytes.length) {
      const n = readSync(fd, bytes, done, bytes.length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return bytes.subarray(0, done);
  } finally {
    closeSync(fd);
  }
}

function lastLines(bytes: Uint8Array, lines: number): Uint8Array {
  let seen = 0;
  // A final newline ends the last line rather than starting an empty one.
  let i = bytes.length - (bytes[bytes.length - 1] === 0x0a ? 2 : 1);
  for (; i >= 0; i--) {
    if (bytes[i] === 0x0a && ++seen === lines) break;
  }
  return lines === 0 ? new Uint8Array(0) : bytes.subarray(i + 1);
}

export const logsCommand = defineCommand({
  meta: {
    name: "logs",
    description:
      "Print a VM's console output (its console.log), also after it has exited.\n\n" +
      "Examples:\n  volt logs web1\n  volt logs web1 --follow\n  volt logs web1 --tail 20\n\n" +
      `${EXIT_HELP}.`,
  },
  args: logsArgs,
  async run({ args: parsed, rawArgs }) {
    await guarded(parsed.json, async () => {
      rejectUnknownFlags(rawArgs, logsArgs);
      if (parsed.json && parsed.follow) throw usageError("--json and --follow do not go together");
      if (parsed.tail !== undefined && !/^\d+$/.test(parsed.tail)) throw usageError(`--tail must be a whole number of lines (got '${parsed.tail}')`);
      const entry = resolveVm(parsed.id);
      const log = entry.paths.consoleLog;
      let bytes = existsSync(log) ? readFrom(log, 0) : new Uint8Array(0);
      let offset = bytes.length;
      let inode = existsSync(log) ? statSync(log).ino : 0;
      if (parsed.tail !== undefined) bytes = lastLines(bytes, Number(parsed.tail));
      if (parsed.json) {
        printJson({ ok: true, id: entry.paths.id, consoleLog: log, text: new TextDecoder().decode(bytes) });
        return;
      }
      process.stdout.write(bytes);
      if (!parsed.follow) return;
      const startTime = entry.record?.pid === entry.pid ? entry.record?.pidStartTime : undefined;
      for (;;) {
        const alive = entry.pid !== undefined && processAlive(entry.pid, startTime);
        if (existsSync(log)) {
          const stat = statSync(log);
          // Rotated (a new file) or truncated: start over at its beginning.
          if (stat.ino !== inode || stat.size < offset) {
            inode = stat.ino;
            offset = 0;
          }
          const more = readFrom(log, offset);
          offset += more.length;
          if (more.length > 0) process.stdout.write(more);
        }
        if (!alive) return;
        await Bun.sleep(200);
      }
    });
  },
});

// ---------------------------------------------------------------- console

const DETACH_KEY = 0x1d; // Ctrl-]

const consoleArgs = { id: idArg, json: { type: "boolean", description: "When it ends, one JSON document {ok, id, reason} on stdout (the console itself goes to stdout as bytes)", default: false } } as const;

export const consoleCommand = defineCommand({
  meta: {
    name: "console",
    description:
      "Attach this terminal to a VM's serial console: what the guest writes appears here, what you type goes to\n" +
      "the guest (several consoles may be attached at once). Ctrl-] detaches (as does the end of standard input);\n" +
      "the VM runs on. Press Enter to see a prompt.\n\nExample:\n  volt console web1\n\n" +
      `${EXIT_HELP}.`,
  },
  args: consoleArgs,
  async run({ args: parsed, rawArgs }) {
    await guarded(parsed.json, async () => {
      rejectUnknownFlags(rawArgs, consoleArgs);
      const entry = runningEntry(parsed.id);
      const socket = connect(entry.paths.consoleSocket);
      await new Promise<void>((resolve, reject) => {
        socket.once("connect", resolve);
        socket.once("error", (error) =>
          reject(new CliError("console-unreachable", `cannot attach to ${entry.paths.id}'s console at ${entry.paths.consoleSocket}: ${error.message}`, EXIT.vmFailed)),
        );
      });
      const stdin = process.stdin;
      const raw = stdin.isTTY === true;
      if (!parsed.json) log.info(`attached to ${entry.paths.id}'s console; Ctrl-] detaches`, { vm: entry.paths.id }, { crlf: true });
      const reason = await new Promise<"detached" | "vm-exited">((resolve) => {
        if (raw) stdin.setRawMode(true);
        const finish = (why: "detached" | "vm-exited") => {
          stdin.off("data", onInput);
          stdin.off("end", onEnd);
          stdin.pause();
          if (raw) stdin.setRawMode(false);
          resolve(why);
        };
        const onInput = (chunk: Buffer) => {
          const at = chunk.indexOf(DETACH_KEY);
          if (at < 0) {
            socket.write(chunk);
            return;
          }
          if (at > 0) socket.write(chunk.subarray(0, at));
          finish("detached");
        };
        const onEnd = () => finish("detached");
        stdin.on("data", onInput);
        stdin.on("end", onEnd);
        socket.on("data", (chunk: Buffer) => process.stdout.write(chunk));
        socket.on("close", () => finish("vm-exited"));
        socket.on("error", () => {});
      });
      socket.end();
      socket.destroy();
      if (parsed.json) printJson({ ok: true, id: entry.paths.id, reason });
      else log.info(reason === "detached" ? `detached from ${entry.paths.id} (it runs on)` : `${entry.paths.id} ended`, { vm: entry.paths.id, reason }, { crlf: true, freshLine: true });
    });
  },
});

/** The commands as main.ts mounts them. */
export const lifecycleCommands = {
  ls: lsCommand,
  inspect: inspectCommand,
  pause: pauseCommand,
  resume: resumeCommand,
  "ctrl-alt-del": ctrlAltDelCommand,
  stop: stopCommand,
  kill: killCommand,
  wait: waitCommand,
  logs: logsCommand,
  console: consoleCommand,
} as const;

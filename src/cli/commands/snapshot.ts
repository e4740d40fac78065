import { defineCommand } from "citty";
import { existsSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { repeatedOption } from "../../config/device-options.ts";
import { SANDBOX_FLAGS, enterLandlock, enterSeccomp, sandboxChoice, vmPathNeeds } from "../sandbox.ts";
import { isSandboxed } from "../../sandbox/landlock.ts";
import { resolveApiSocket } from "../../runtime/registry.ts";
import { runtimeCliError } from "../../runtime/cli-glue.ts";
import { O_RDONLY, openPath } from "../../ffi/syscalls.ts";
import { SnapshotError } from "../../snapshot/format.ts";
import type { OpenedSnapshot } from "../../snapshot/files.ts";
import { buildFromSnapshot, openSnapshot, openSnapshotBytes, type MachineState } from "../../vmm/snapshot.ts";
import { kvmBackendWarning } from "../../diagnostics/host.ts";
import { EXIT, type ExitCode } from "../exit-codes.ts";
import { CliError, printJson, rejectUnknownFlags, reportError, usageError } from "../output.ts";
import { buildOrExplain, checkApiSocket, logBuilt, reportOutcome, runSession, terminalConsole } from "../vm-session.ts";
import { log } from "../../log/index.ts";

/** A request to a running VM's control API; an unreachable socket is bad input (exit 2). */
async function callVm(socket: string, path: string, init: RequestInit = {}): Promise<Response> {
  try {
    return await fetch(`http://volt${path}`, { ...init, unix: socket } as RequestInit);
  } catch (error) {
    throw new CliError("api-unreachable", `cannot reach a VM at ${socket}: ${(error as Error).message}`, EXIT.usage, { cause: error });
  }
}

/** Builds the VM a checked snapshot describes and runs it like `volt run`; returns the exit status. */
/** The environment variable naming a clone's memory descriptor kept across the sandbox's re-exec. */
const INHERITED_MEMORY_FD = "VOLT_INHERITED_MEMORY_FD";

async function runRestored(
  snapshot: OpenedSnapshot<MachineState>,
  options: { json: boolean; startedAtMs: number; apiSocket: string | undefined; parsed: Record<string, unknown>; rawArgs: readonly string[] },
  extra: Record<string, unknown>,
): Promise<ExitCode> {
  await checkApiSocket(options.apiSocket);
  // The sandbox, as for volt run: Landlock (re-exec) before KVM is opened, seccomp before the vCPUs run.
  const sandbox = sandboxChoice(options.parsed);
  const snapshotDirs = repeatedOption(options.rawArgs, "snapshot-dir");
  const machine = snapshot.state.machine;
  // Another process's memfd (a clone) cannot be named in a Landlock rule: open it now and keep the descriptor
  // across the re-exec (no close-on-exec); the sandboxed process maps it by number.
  const inherited = process.env[INHERITED_MEMORY_FD];
  if (inherited !== undefined && isSandboxed()) snapshot = { ...snapshot, memoryFd: Number(inherited) };
  const memoryIsProc = snapshot.memoryPath.startsWith("/proc/");
  // Already the inherited descriptor (see the clone command): nothing more to open.
  const extraEnv: Record<string, string> = {};
  if (sandbox.landlock && memoryIsProc && !isSandboxed()) extraEnv[INHERITED_MEMORY_FD] = String(openPath(snapshot.memoryPath, O_RDONLY));
  enterLandlock(
    sandbox,
    vmPathNeeds({
      // The kernel is not read again (the snapshot's memory holds it): the memory file stands in its place, and for a
      // clone, whose memory arrives as a descriptor, /dev/null (read-only, harmless).
      config: {
        kernelPath: memoryIsProc ? "/dev/null" : snapshot.memoryPath || snapshot.manifestPath!,
        memoryMiB: machine.memoryMiB,
        vcpus: machine.vcpus,
        virtioDevices: machine.virtioDevices,
      },
      ...(options.apiSocket !== undefined ? { apiSocket: options.apiSocket } : {}),
      snapshotDirs,
      // A clone's "dir" names the VM it came from, not a directory.
      extraReadOnly: [...(existsSync(snapshot.dir) ? [snapshot.dir] : []), ...(snapshot.manifestPath !== undefined ? [chunkStoreOf(snapshot.manifestPath)] : [])],
    }),
    extraEnv,
  );
  const warning = kvmBackendWarning();
  if (warning) log.withTag("kvm").warn(warning);
  const restored = buildOrExplain(() => buildFromSnapshot(snapshot));
  logBuilt(restored.built, "restore");
  const restoreMs = performance.timeOrigin + performance.now() - options.startedAtMs;
  enterSeccomp(sandbox, { snapshotsToDisk: snapshotDirs.length > 0 });
  const outcome = await runSession(restored.built, {
    console: terminalConsole(options.json ? process.stderr : process.stdout),
    startedAtMs: options.startedAtMs,
    restore: restored.devices,
    ...(options.apiSocket !== undefined ? { apiSocket: options.apiSocket } : {}),
    ...(sandbox.landlock ? { snapshotDirs } : {}),
  });
  return reportOutcome(outcome, restored.built, options.json, { ...extra, restoreMs });
}

/** The chunk store a manifest's chunks live in (read by the restored VM's memory mappings). */
function chunkStoreOf(manifestPath: string): string {
  return (JSON.parse(readFileSync(manifestPath, "utf8")) as { store: string }).store;
}

function snapshotError(error: unknown): never {
  if (error instanceof SnapshotError) throw new CliError(`snapshot-${error.kind}`, error.message, EXIT.usage, { cause: error });
  throw error;
}

const createArgs = {
  "api-socket": { type: "string", description: "The running VM's control socket (volt run --api-socket); or name the VM by id instead", valueHint: "path" },
  target: { type: "positional", description: "VM id (a detached or --id VM; any unique prefix), then the snapshot directory", required: false },
  dir: { type: "positional", description: "Directory to write the snapshot to (state.volt + memory.raw)", required: false },
  force: { type: "boolean", description: "Replace an existing snapshot (only once the new one is complete)", default: false },
  "chunk-store": { type: "string", description: "Write memory as content-addressed 2 MiB chunks into this store (shared, deduplicated across snapshots)", valueHint: "dir" },
  "in-memory": { type: "boolean", description: "Keep the snapshot in the VM's process (no disk); prints its id for `volt snapshot clone`", default: false },
  json: { type: "boolean", description: "One JSON document on stdout", default: false },
} as const;

const createCommand = defineCommand({
  meta: {
    name: "create",
    description:
      "Snapshot a running VM: it pauses for the capture and then runs on.\n\n" +
      "Examples:\n  volt run --kernel vmlinux --initrd initrd.img --api-socket /tmp/vm.sock &\n  volt snapshot create --api-socket /tmp/vm.sock ./snap1\n" +
      "  volt snapshot create web1 ./snap1                                  (a VM started with --detach --id web1)\n" +
      "  volt snapshot create --api-socket /tmp/vm.sock --in-memory     (prints an id: volt snapshot clone --from /tmp/vm.sock ID)\n\n" +
      "Exit status: 0 written, 2 bad input or the snapshot exists (use --force), 6 the VM could not be snapshotted.",
  },
  args: createArgs,
  async run({ args: parsed, rawArgs }) {
    const json = parsed.json;
    try {
      rejectUnknownFlags(rawArgs, createArgs);
      // Either --api-socket PATH [DIR], or ID [DIR].
      const positionals = [parsed.target, parsed.dir].filter((p): p is string => typeof p === "string");
      let socket: string;
      let dir: string | undefined;
      if (typeof parsed["api-socket"] === "string") {
        socket = parsed["api-socket"];
        if (positionals.length > 1) throw usageError("with --api-socket give only the snapshot directory");
        dir = positionals[0];
      } else {
        if (positionals.length === 0) throw usageError("name the VM: volt snapshot create ID DIR (or --api-socket PATH DIR)");
        try {
          socket = resolveApiSocket(positionals[0]!);
        } catch (error) {
          throw runtimeCliError(error);
        }
        dir = positionals[1];
      }
      const inMemory = parsed["in-memory"];
      if (inMemory === (dir !== undefined)) throw usageError("give a snapshot directory, or --in-memory (not both)");
      const response = await callVm(socket, "/snapshot/create", {
        method: "PUT",
        body: JSON.stringify(
          inMemory
            ? { inMemory: true }
            : { dir: resolve(dir!), force: parsed.force, ...(parsed["chunk-store"] ? { chunkStore: resolve(parsed["chunk-store"]) } : {}) },
        ),
      });
      const body = (await response.json().catch(() => ({}))) as { ok?: boolean; snapshot?: Record<string, unknown>; error?: { kind: string; message: string } };
      if (!response.ok || !body.ok) {
        const status = response.status >= 500 ? EXIT.vmFailed : EXIT.usage;
        throw new CliError(body.error?.kind ?? "api", body.error?.message ?? `the VM answered HTTP ${response.status}`, status);
      }
      const written = body.snapshot as { dir?: string; id?: string; memoryFileSize?: number; pausedMs?: number } | undefined;
      log.debug(inMemory ? "in-memory snapshot taken" : "snapshot written", { dir: written?.dir, id: written?.id, memoryBytes: written?.memoryFileSize, pausedMs: written?.pausedMs });
      if (json) printJson({ ok: true, snapshot: body.snapshot });
      else if (inMemory) {
        const m = body.snapshot as { id: string; memoryFileSize: number; pausedMs: number };
        process.stdout.write(`${m.id}\n`);
        log.info(`in-memory snapshot ${m.id}: ${(m.memoryFileSize / 2 ** 20).toFixed(0)} MiB, guest paused ${m.pausedMs.toFixed(0)} ms`, { id: m.id, pausedMs: m.pausedMs });
      } else {
        const s = body.snapshot as { dir: string; memoryFileSize: number; memoryBytesWritten: number; pausedMs: number; chunks?: { store: string; bytesDeduplicated: number; dedupRatio: number } };
        const dedup = s.chunks ? `, ${(s.chunks.bytesDeduplicated / 2 ** 20).toFixed(1)} MiB deduplicated in ${s.chunks.store} (ratio ${s.chunks.dedupRatio.toFixed(2)})` : ", the rest was zero";
        process.stdout.write(
          `snapshot ${s.dir}: ${(s.memoryFileSize / 2 ** 20).toFixed(0)} MiB of guest memory (${(s.memoryBytesWritten / 2 ** 20).toFixed(1)} MiB written${dedup}), guest paused ${s.pausedMs.toFixed(0)} ms\n`,
        );
      }
    } catch (error) {
      process.exitCode = reportError(error, json);
    }
  },
});

const restoreArgs = {
  dir: { type: "positional", description: "Snapshot directory", required: true },
  "api-socket": { type: "string", description: "Serve the restored VM's control API on this Unix socket", valueHint: "path" },
  json: { type: "boolean", description: "Console to stderr; one JSON document with the outcome to stdout", default: false },
  ...SANDBOX_FLAGS,
} as const;

const restoreCommand = defineCommand({
  meta: {
    name: "restore",
    description:
      "Start a VM from a snapshot, where it was: guest memory is mapped copy-on-write from the snapshot (read lazily,\n" +
      "never modified), devices reopen their drives, taps and sockets. The console and exit statuses are volt run's.\n\n" +
      "Example:\n  volt snapshot restore ./snap1\n\n" +
      "Exit status: as volt run; 2 also when the snapshot is missing, corrupt (CRC), from another format version, or\n" +
      "its memory file is truncated — checked before any VM is created.",
  },
  args: restoreArgs,
  async run({ args: parsed, rawArgs }) {
    const startedAtMs = performance.timeOrigin + performance.now();
    const json = parsed.json;
    try {
      rejectUnknownFlags(rawArgs, restoreArgs);
      let snapshot;
      try {
        snapshot = openSnapshot(parsed.dir);
      } catch (error) {
        snapshotError(error);
      }
      process.exitCode = await runRestored(snapshot, { json, startedAtMs, apiSocket: parsed["api-socket"], parsed, rawArgs }, { restoredFrom: snapshot.dir });
    } catch (error) {
      process.exitCode = reportError(error, json);
    }
  },
});

const cloneArgs = {
  from: { type: "string", description: "Control socket of the VM that holds the in-memory snapshot", valueHint: "path", required: true },
  id: { type: "positional", description: "In-memory snapshot id (from volt snapshot create --in-memory)", required: true },
  "api-socket": { type: "string", description: "Serve the clone's control API on this Unix socket", valueHint: "path" },
  json: { type: "boolean", description: "Console to stderr; one JSON document with the outcome to stdout", default: false },
  ...SANDBOX_FLAGS,
} as const;

const cloneCommand = defineCommand({
  meta: {
    name: "clone",
    description:
      "Start a VM from another volt's in-memory snapshot: its memory is mapped copy-on-write from that process's\n" +
      "memfd (same user), nothing touches the disk. Console and exit statuses as volt run.\n\n" +
      "Example:\n  id=$(volt snapshot create --api-socket /tmp/vm.sock --in-memory)\n  volt snapshot clone --from /tmp/vm.sock $id",
  },
  args: cloneArgs,
  async run({ args: parsed, rawArgs }) {
    const startedAtMs = performance.timeOrigin + performance.now();
    const json = parsed.json;
    try {
      rejectUnknownFlags(rawArgs, cloneArgs);
      const response = await callVm(parsed.from, `/snapshot/memory/${encodeURIComponent(parsed.id)}`);
      if (!response.ok) {
        const body = (await response.json().catch(() => ({}))) as { error?: { kind: string; message: string } };
        throw new CliError(body.error?.kind ?? "api", body.error?.message ?? `the VM answered HTTP ${response.status}`, EXIT.usage);
      }
      const announced = response.headers.get("volt-memory-path");
      if (!announced) throw new CliError("api", "the VM did not say where the snapshot's memory is", EXIT.usage);
      // Inside the sandbox another process's /proc/PID/fd is out of reach (Landlock scopes ptrace-like access):
      // the descriptor opened before the re-exec stands in for it.
      const inherited = process.env[INHERITED_MEMORY_FD];
      const memoryPath = inherited !== undefined && isSandboxed() ? `/proc/self/fd/${inherited}` : announced;
      const name = `${parsed.from}#${parsed.id}`;
      let snapshot;
      try {
        snapshot = openSnapshotBytes(new Uint8Array(await response.arrayBuffer()), memoryPath, name);
      } catch (error) {
        snapshotError(error);
      }
      process.exitCode = await runRestored(snapshot, { json, startedAtMs, apiSocket: parsed["api-socket"], parsed, rawArgs }, { clonedFrom: name });
    } catch (error) {
      process.exitCode = reportError(error, json);
    }
  },
});

const inspectArgs = {
  dir: { type: "positional", description: "Snapshot directory", required: true },
  json: { type: "boolean", description: "One JSON document on stdout", default: false },
} as const;

const inspectCommand = defineCommand({
  meta: { name: "inspect", description: "Check a snapshot and print its metadata (format version, size, vCPUs, devices).\n\nExample:\n  volt snapshot inspect ./snap1 --json" },
  args: inspectArgs,
  async run({ args: parsed, rawArgs }) {
    const json = parsed.json;
    try {
      rejectUnknownFlags(rawArgs, inspectArgs);
      let snapshot;
      try {
        snapshot = openSnapshot(parsed.dir);
      } catch (error) {
        snapshotError(error);
      }
      const { meta, state } = snapshot;
      const summary = {
        dir: snapshot.dir,
        formatVersion: `${snapshot.major}.${snapshot.minor}`,
        createdAt: meta.createdAt,
        voltVersion: meta.voltVersion,
        vcpus: meta.vcpuCount,
        memorySizeBytes: meta.memorySizeBytes,
        memoryFileSize: meta.memoryFileSize,
        kernel: state.machine.kernel,
        cmdline: state.machine.cmdline,
        devices: state.machine.virtioDevices.map((d) => d.kind),
      };
      if (json) printJson({ ok: true, snapshot: summary });
      else {
        process.stdout.write(
          [
            `snapshot ${summary.dir}`,
            `  format      ${summary.formatVersion} (volt ${summary.voltVersion}), created ${summary.createdAt}`,
            `  machine     ${summary.vcpus} vCPU(s), ${summary.memorySizeBytes / 2 ** 20} MiB, ${summary.kernel.format} via ${summary.kernel.protocol}`,
            `  devices     ${summary.devices.join(", ") || "none"}`,
            `  cmdline     ${summary.cmdline}`,
          ].join("\n") + "\n",
        );
      }
    } catch (error) {
      process.exitCode = reportError(error, json);
    }
  },
});

export const snapshotCommand = defineCommand({
  meta: { name: "snapshot", description: "Create, restore, clone and inspect VM snapshots" },
  subCommands: { create: createCommand, restore: restoreCommand, clone: cloneCommand, inspect: inspectCommand },
  run({ rawArgs }) {
    if (rawArgs.length === 0) process.exitCode = reportError(usageError("volt snapshot needs a subcommand: create, restore or inspect (see --help)"), false);
  },
});

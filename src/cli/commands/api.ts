/**
 * `volt api --socket PATH`: Firecracker's way of starting a VM. The process
 * serves the API and waits: requests configure the VM (machine-config,
 * boot-source, drives, network-interfaces, vsock, entropy) or load a
 * snapshot, and PUT /actions {"action_type": "InstanceStart"} builds and
 * starts it. From then on the socket is a full Volt control API (Volt's
 * routes and Firecracker's), and the process ends when the VM does, with
 * `volt run`'s exit statuses.
 *
 * Sandbox: the seccomp filter goes on once the VM is built, before its vCPUs
 * run, as in `volt run`. Landlock does not: it has to be in place before the
 * process starts its threads (hence `volt run`'s restrict-and-re-exec), and
 * here the paths the VM needs arrive later, over the API. Firecracker leaves
 * this to its jailer; Volt's is `volt jail`.
 */
import { defineCommand } from "citty";
import { unlinkSync } from "node:fs";
import { FirecrackerApi, type ControlledVm, type FirecrackerBackend } from "../../api/firecracker.ts";
import { createApiHandler, MAX_REQUEST_BODY_BYTES, notFound, type ApiHandler } from "../../api/server.ts";
import { kvmBackendWarning } from "../../diagnostics/host.ts";
import { registerRun, type RunRegistration } from "../../runtime/cli-glue.ts";
import { buildForBoot, type BuiltVm } from "../../vmm/builder.ts";
import { buildFromSnapshot, openSnapshot, snapshotVm } from "../../vmm/snapshot.ts";
import { RunningVm } from "../../vmm/vmm.ts";
import { EXIT } from "../exit-codes.ts";
import { printJson, rejectUnknownFlags, reportError, usageError } from "../output.ts";
import { log } from "../../log/index.ts";
import { enterSeccomp, switchedOff } from "../sandbox.ts";
import { checkApiSocket, reportOutcome, terminalConsole } from "../vm-session.ts";

const args = {
  socket: {
    type: "string",
    description: "Serve the API on this Unix socket (Firecracker's --api-sock is accepted too)",
    valueHint: "path",
    alias: "api-sock",
  },
  id: {
    type: "string",
    description: "Name the VM: GET / reports it as Firecracker's instance id, and it gets a runtime dir (volt ls, logs, console)",
    valueHint: "name",
  },
  json: { type: "boolean", description: "Console to stderr; one JSON document with the outcome to stdout", default: false },
  "no-seccomp": { type: "boolean", description: "Run the VM without the seccomp system-call filter (prints a warning)" },
  "no-sandbox": { type: "boolean", description: "The same as --no-seccomp here (volt api has no Landlock; see --help)" },
} as const;

const VOLT_ROUTES = new Set(["/vm", "/vm/pause", "/vm/resume", "/vm/stop", "/vm/ctrl-alt-del", "/metrics", "/snapshot/create"]);

type Started = { readonly running: RunningVm; readonly built: BuiltVm; readonly extra: Record<string, unknown> };

export const apiCommand = defineCommand({
  meta: {
    name: "api",
    description:
      "Serve a Firecracker-compatible API and start the VM it configures (docs/firecracker-api.md).\n\n" +
      "Example:\n  volt api --socket /tmp/fc.sock &\n" +
      "  curl --unix-socket /tmp/fc.sock -X PUT http://localhost/machine-config -d '{\"vcpu_count\": 2, \"mem_size_mib\": 256}'\n" +
      "  curl --unix-socket /tmp/fc.sock -X PUT http://localhost/boot-source -d '{\"kernel_image_path\": \"vmlinux\", \"initrd_path\": \"initrd.img\"}'\n" +
      "  curl --unix-socket /tmp/fc.sock -X PUT http://localhost/drives/rootfs \\\n" +
      "       -d '{\"drive_id\": \"rootfs\", \"path_on_host\": \"rootfs.ext4\", \"is_root_device\": true, \"is_read_only\": false}'\n" +
      "  curl --unix-socket /tmp/fc.sock -X PUT http://localhost/actions -d '{\"action_type\": \"InstanceStart\"}'\n\n" +
      "The console goes to stdout (stderr with --json). PUT /vm/stop before InstanceStart ends the process.\n\n" +
      "Exit status: as volt run once the VM started (0, 5, 6, 130, 143); before that 0 (PUT /vm/stop), 130/143 (a\n" +
      "signal), 2 bad command line or socket.\n\n" +
      "Sandbox: a seccomp filter from InstanceStart (or snapshot load) on, as in volt run (--no-seccomp turns it off).\n" +
      "There is no Landlock here: the VM's paths are only known once configured; run volt api inside `volt jail`\n" +
      "to confine its file access.",
  },
  args,
  async run({ args: parsed, rawArgs }) {
    const startedAtMs = performance.timeOrigin + performance.now();
    const json = parsed.json;
    let registration: RunRegistration | undefined;
    let server: ReturnType<typeof Bun.serve> | undefined;
    let handler: ApiHandler | undefined;
    let socket: string | undefined;
    try {
      rejectUnknownFlags(rawArgs, args);
      const id = typeof parsed.id === "string" ? parsed.id : undefined;
      const terminal = () => terminalConsole(json ? process.stderr : process.stdout);
      if (id !== undefined) {
        registration = await registerRun({ id, detachedChild: false, terminal, ...(parsed.socket !== undefined ? { apiSocket: parsed.socket } : {}) });
      }
      socket = parsed.socket ?? registration?.apiSocket;
      if (socket === undefined) throw usageError("give --socket PATH (or --id NAME for a socket in the runtime directory)");
      await checkApiSocket(socket);
      const consoleIo = registration?.console ?? terminal();
      const seccomp = !switchedOff(parsed, "no-seccomp") && !switchedOff(parsed, "no-sandbox");
      if (!seccomp) log.warn("running without seccomp (--no-seccomp): the VM's system calls are not filtered");
      let filtered = false;
      // After a start that failed past this point the process is filtered for running a VM, not for building one.
      const enterFilter = () => {
        if (!seccomp) return;
        if (filtered) throw new Error("a start failed after the seccomp filter went on; start a new volt api to try again");
        enterSeccomp({ landlock: false, seccomp }, { snapshotsToDisk: true });
        filtered = true;
      };
      const warning = kvmBackendWarning();
      if (warning) log.warn(warning);

      const started = Promise.withResolvers<Started>();
      const runOptions = { console: consoleIo, startedAtMs, onDeviceError: (message: string) => log.withTag("device").error(message) };
      const backend: FirecrackerBackend = {
        async boot(config) {
          if (filtered) enterFilter();
          const built = buildForBoot(config);
          let running: RunningVm;
          try {
            enterFilter();
            running = await RunningVm.start(built, runOptions);
          } catch (error) {
            built.dispose();
            throw error;
          }
          registration?.recordStart(config);
          started.resolve({ running, built, extra: {} });
          return running;
        },
        async restore(dir, { resume }) {
          if (filtered) enterFilter();
          const restored = buildFromSnapshot(openSnapshot(dir));
          let running: RunningVm;
          try {
            enterFilter();
            running = await RunningVm.start(restored.built, { ...runOptions, restore: restored.devices, paused: !resume });
          } catch (error) {
            restored.built.dispose();
            throw error;
          }
          registration?.recordStart(restored.built.config);
          started.resolve({ running, built: restored.built, extra: { restoredFrom: dir, restoreMs: performance.timeOrigin + performance.now() - startedAtMs } });
          return running;
        },
        snapshot: (vm, dir) => snapshotVm(vm as RunningVm, dir, { force: true }),
      };
      const firecracker = new FirecrackerApi({ backend, ...(id !== undefined ? { instanceId: id } : {}) });
      firecracker.onStarted = (vm: ControlledVm) => {
        handler = createApiHandler(vm as RunningVm, { firecracker });
      };
      const ended = Promise.withResolvers<"SIGINT" | "SIGTERM" | "api">();
      server = Bun.serve({
        unix: socket,
        maxRequestBodySize: MAX_REQUEST_BODY_BYTES,
        fetch: (request) => (handler ? handler.handle(request) : beforeStart(request, firecracker, () => ended.resolve("api"))),
        error: (error) => Response.json({ error: { kind: "internal", message: error.message }, fault_message: error.message }, { status: 500 }),
      });

      // Until the VM runs, a signal ends the process; after that, RunningVm turns it into a clean stop.
      const onSignal = (signal: NodeJS.Signals) => ended.resolve(signal as "SIGINT" | "SIGTERM");
      process.on("SIGINT", onSignal);
      process.on("SIGTERM", onSignal);
      const first = await Promise.race([started.promise, ended.promise]);
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      if (typeof first === "string") {
        const exitCode = first === "SIGINT" ? EXIT.interrupted : first === "SIGTERM" ? EXIT.terminated : EXIT.ok;
        const detail = first === "api" ? "stopped by the API before InstanceStart" : `stopped by ${first} before InstanceStart`;
        if (json) printJson({ ok: exitCode === EXIT.ok, outcome: "not-started", detail, exitCode });
        registration?.recordOutcome(exitCode, { kind: "not-started", detail });
        process.exitCode = exitCode;
        return;
      }
      const { running, built, extra } = first;
      try {
        const outcome = await running.outcome;
        process.exitCode = reportOutcome(outcome, built, json, extra);
        registration?.recordOutcome(process.exitCode, outcome);
      } finally {
        built.dispose();
      }
    } catch (error) {
      process.exitCode = reportError(error, json);
      registration?.recordFailure(error, process.exitCode);
    } finally {
      // Gracefully first: the request that ended the process (PUT /vm/stop before InstanceStart) still gets its
      // answer; a client holding an idle connection open delays the exit by at most a second.
      if (server) await Promise.race([server.stop(), Bun.sleep(1000)]);
      server?.stop(true);
      handler?.close();
      if (server && socket !== undefined) {
        try {
          unlinkSync(socket);
        } catch {
          // Already gone.
        }
      }
      registration?.close();
    }
  },
});

/** Before InstanceStart: Firecracker's routes configure; Volt's describe the configuration or say the VM has not started. */
async function beforeStart(request: Request, firecracker: FirecrackerApi, stop: () => void): Promise<Response> {
  const answered = await firecracker.handle(request);
  if (answered) return answered;
  const { pathname } = new URL(request.url);
  if (pathname === "/vm" && request.method === "GET") {
    const config = firecracker.fullConfig()["machine-config"] as { vcpu_count: number; mem_size_mib: number };
    return Response.json({ state: "not-started", vcpus: config.vcpu_count, memoryMiB: config.mem_size_mib });
  }
  if (pathname === "/vm/stop" && request.method === "PUT") {
    stop();
    return Response.json({ state: "stopping" });
  }
  if (VOLT_ROUTES.has(pathname)) {
    const message = 'the VM has not started yet (PUT /actions {"action_type": "InstanceStart"})';
    return Response.json({ error: { kind: "state", message }, fault_message: message }, { status: 400 });
  }
  return notFound(pathname, [...VOLT_ROUTES]);
}

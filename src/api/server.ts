/**
 * A running VM's control API: HTTP with JSON bodies over a Unix socket (the
 * main thread's event loop is free, since vCPUs and devices run on workers).
 *
 *   GET  /vm               describe the VM
 *   GET  /metrics          exits per vCPU and kind, device counters, boot time, uptime
 *   PUT  /vm/pause         park every vCPU and quiesce devices (409 if already paused)
 *   PUT  /vm/resume        (409 if not paused)
 *   PUT  /vm/stop          end the VM (outcome "signal", detail "stopped by the API")
 *   PUT  /vm/ctrl-alt-del  press Ctrl-Alt-Del on the guest's keyboard (409 if paused, or if the guest has not read
 *                          the last one yet); Linux reboots, or tells its init, which shuts down cleanly
 *   PUT  /snapshot/create  {"dir": "...", "force"?: bool, "chunkStore"?: "..."}; pauses for the capture, then runs on
 *                          {"inMemory": true}: kept in this process (a memfd), answered with its id
 *   GET  /snapshot/memory/ID     an in-memory snapshot's state file (octet-stream); the
 *                                Volt-Memory-Path header names its memory (/proc/PID/fd/N)
 *   DELETE /snapshot/memory/ID   forget it (its memory is freed once no clone maps it)
 *
 * Firecracker's routes (firecracker.ts) are served on the same socket, as for a
 * VM that has started: GET /, GET /machine-config, GET /vm/config, PATCH /vm,
 * PUT /snapshot/create with {"snapshot_path", "mem_file_path"}, PUT /actions;
 * configuration requests get Firecracker's 400 {"fault_message"}.
 *
 * Every request body is validated (and at most MAX_REQUEST_BODY_BYTES); errors
 * are JSON {"error": {"kind", "message"}} with 400 (bad request), 404 (no such
 * endpoint; it also carries "fault_message" for Firecracker clients), 405
 * (wrong method), 409 (the VM is stopping, or already in the state asked for)
 * or 500.
 */
import { closeSync, existsSync, statSync, unlinkSync } from "node:fs";
import { connect } from "node:net";
import * as v from "valibot";
import { SnapshotError } from "../snapshot/format.ts";
import { FirecrackerApi } from "./firecracker.ts";
import type { InMemorySnapshot } from "../snapshot/files.ts";
import { snapshotVm, snapshotVmInMemory } from "../vmm/snapshot.ts";
import { snapshotDirAllowed } from "../sandbox/policy.ts";
import type { RunningVm } from "../vmm/vmm.ts";

const DiskSnapshotRequest = v.strictObject(
  {
    dir: v.pipe(v.string("dir must be a path"), v.nonEmpty("dir must not be empty")),
    force: v.optional(v.boolean("force must be true or false")),
    chunkStore: v.optional(v.pipe(v.string("chunkStore must be a path"), v.nonEmpty("chunkStore must not be empty"))),
  },
  'the body must be {"dir": PATH, "force"?: BOOL, "chunkStore"?: PATH} or {"inMemory": true}',
);
const MemorySnapshotRequest = v.strictObject({ inMemory: v.literal(true, "inMemory must be true") }, 'an in-memory snapshot takes only {"inMemory": true}');

/** Field-level errors: the body says which kind of snapshot it wants, and is checked against that kind only. */
function parseSnapshotRequest(body: unknown) {
  const wantsMemory = typeof body === "object" && body !== null && "inMemory" in body;
  return wantsMemory ? v.safeParse(MemorySnapshotRequest, body) : v.safeParse(DiskSnapshotRequest, body);
}

export class ApiSocketError extends Error {
  override name = "ApiSocketError";
}

export interface ApiServer {
  readonly path: string;
  stop(): void;
}

/** Refuses a socket path something listens on; removes a stale one left by a crashed volt. */
export async function claimSocketPath(path: string): Promise<void> {
  if (!existsSync(path)) return;
  if (!statSync(path).isSocket()) throw new ApiSocketError(`api socket ${path}: exists and is not a socket`);
  const alive = await new Promise<boolean>((resolve) => {
    const probe = connect(path);
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", () => resolve(false));
  });
  if (alive) throw new ApiSocketError(`api socket ${path}: another process is listening on it`);
  unlinkSync(path);
}

/** Larger bodies are refused (413) before they are read: no endpoint takes more than a few paths. */
export const MAX_REQUEST_BODY_BYTES = 1024 * 1024;

export interface ApiHandler {
  handle(request: Request): Promise<Response>;
  /** Frees what the API holds (in-memory snapshots). */
  close(): void;
}

export interface ApiOptions {
  /** The Firecracker routes' state (`volt api` passes the one that configured the VM); default: built from the VM's config. */
  readonly firecracker?: FirecrackerApi;
  /**
   * Under the sandbox, the only directories disk snapshots may go to (the
   * Landlock policy allows writing nowhere else); a request for another
   * directory is refused with 403 naming the allowed ones.
   */
  readonly snapshotDirs?: readonly string[];
}

/** The control API's request handler for a running VM, for any server (startApiServer's, or `volt api`'s after InstanceStart). */
export function createApiHandler(vm: RunningVm, options: ApiOptions = {}): ApiHandler {
  const inMemory = new Map<string, InMemorySnapshot>();
  let nextId = 1;
  const firecracker =
    options.firecracker ??
    new FirecrackerApi({
      backend: { snapshot: (running, dir) => snapshotVm(running as RunningVm, dir, { force: true }) },
      running: { vm, config: vm.built.config },
    });
  const context: Context = { vm, inMemory, newId: () => `mem-${nextId++}`, firecracker, snapshotDirs: options.snapshotDirs };
  return {
    handle: (request) => handle(request, context),
    close() {
      for (const snapshot of inMemory.values()) closeSync(snapshot.memfd);
      inMemory.clear();
    },
  };
}

export async function startApiServer(path: string, vm: RunningVm, options: ApiOptions = {}): Promise<ApiServer> {
  await claimSocketPath(path);
  const api = createApiHandler(vm, options);
  const server = Bun.serve({
    unix: path,
    fetch: api.handle,
    maxRequestBodySize: MAX_REQUEST_BODY_BYTES,
    error: (error) => reply(500, { error: { kind: "internal", message: error.message } }),
  });
  return {
    path,
    stop() {
      server.stop(true);
      api.close();
      try {
        unlinkSync(path);
      } catch {
        // Already gone.
      }
    },
  };
}

function reply(status: number, body: unknown): Response {
  return Response.json(body, { status });
}

function failure(status: number, kind: string, message: string): Response {
  return reply(status, { error: { kind, message } });
}

/** An unknown path, in both shapes: Volt's error object and Firecracker's fault_message. */
export function notFound(pathname: string, endpoints: readonly string[] = Object.keys(ROUTES)): Response {
  const message = `no endpoint ${pathname} (endpoints: ${endpoints.join(", ")}; and Firecracker's, see docs/firecracker-api.md)`;
  return reply(404, { error: { kind: "not-found", message }, fault_message: message });
}

const ROUTES: Record<string, readonly string[]> = {
  "/vm": ["GET"],
  "/metrics": ["GET"],
  "/vm/pause": ["PUT"],
  "/vm/resume": ["PUT"],
  "/vm/stop": ["PUT"],
  "/vm/ctrl-alt-del": ["PUT"],
  "/snapshot/create": ["PUT"],
};

interface Context {
  readonly vm: RunningVm;
  readonly inMemory: Map<string, InMemorySnapshot>;
  newId(): string;
  readonly firecracker: FirecrackerApi;
  readonly snapshotDirs: readonly string[] | undefined;
}

const MEMORY_SNAPSHOT_PATH = /^\/snapshot\/memory\/([A-Za-z0-9-]+)$/;

async function handle(request: Request, context: Context): Promise<Response> {
  const { vm } = context;
  const { pathname } = new URL(request.url);
  const memoryMatch = pathname.match(MEMORY_SNAPSHOT_PATH);
  if (memoryMatch) return memorySnapshot(request, context, memoryMatch[1]!);
  const methods = ROUTES[pathname];
  if (!methods?.includes(request.method)) {
    const firecracker = await context.firecracker.handle(request);
    if (firecracker) return firecracker;
  }
  if (!methods) return notFound(pathname);
  if (!methods.includes(request.method)) return failure(405, "method", `${pathname} takes ${methods.join(", ")}, not ${request.method}`);
  if (pathname === "/vm") return reply(200, describe(vm));
  if (pathname === "/metrics") return reply(200, await vm.metrics());
  if (vm.state === "stopping") return failure(409, "state", "the VM is stopping");
  try {
    switch (pathname) {
      case "/vm/pause":
        if (vm.state === "paused") return failure(409, "state", "the VM is already paused");
        await vm.pause();
        return reply(200, describe(vm));
      case "/vm/resume":
        if (vm.state !== "paused") return failure(409, "state", `the VM is not paused (it is ${vm.state})`);
        await vm.resume();
        return reply(200, describe(vm));
      case "/vm/stop":
        vm.stop("signal", "stopped by the API");
        return reply(200, { state: "stopping" });
      case "/vm/ctrl-alt-del":
        // A paused guest cannot read its keyboard; queueing keys for later would surprise whoever resumes it.
        if (vm.state !== "running") return failure(409, "state", `the VM is ${vm.state}; Ctrl-Alt-Del needs it running`);
        if (vm.sendCtrlAltDel() === "buffer-full") return failure(409, "keyboard-busy", "the guest has not read the keys sent before (is its i8042 driver loaded?)");
        return reply(200, { ok: true, sent: "ctrl-alt-del", state: vm.state });
      case "/snapshot/create": {
        const body = await jsonBody(request);
        if (body instanceof Response) return body;
        if (typeof body === "object" && body !== null && "snapshot_path" in body) {
          // Firecracker's shape of the same endpoint.
          const again = new Request(request.url, { method: "PUT", body: JSON.stringify(body) });
          return (await context.firecracker.handle(again))!;
        }
        const parsed = parseSnapshotRequest(body);
        if (!parsed.success) return failure(400, "bad-request", parsed.issues.map((i) => i.message).join("; "));
        if ("inMemory" in parsed.output) {
          const snapshot = await snapshotVmInMemory(vm);
          const id = context.newId();
          context.inMemory.set(id, snapshot);
          const { stateFile: _state, memfd: _memfd, ...summary } = snapshot;
          return reply(200, { ok: true, snapshot: { id, ...summary }, state: vm.state });
        }
        const { dir, force, chunkStore } = parsed.output;
        for (const target of [dir, ...(chunkStore !== undefined ? [chunkStore] : [])]) {
          if (!snapshotDirAllowed(target, context.snapshotDirs)) {
            const allowed = context.snapshotDirs!.length > 0 ? `allowed: ${context.snapshotDirs!.join(", ")}` : "start volt with --snapshot-dir DIR to allow one";
            return failure(403, "snapshot-dir", `the sandbox does not let this VM write to ${target} (${allowed})`);
          }
        }
        const result = await snapshotVm(vm, dir, { force: force ?? false, ...(chunkStore !== undefined ? { chunkStore } : {}) });
        return reply(200, { ok: true, snapshot: result, state: vm.state });
      }
    }
  } catch (error) {
    if (error instanceof SnapshotError) return failure(error.kind === "exists" ? 409 : 400, `snapshot-${error.kind}`, error.message);
    return failure(500, "internal", (error as Error).message);
  }
  return failure(404, "not-found", pathname);
}

function memorySnapshot(request: Request, context: Context, id: string): Response {
  const snapshot = context.inMemory.get(id);
  if (!snapshot) return failure(404, "not-found", `no in-memory snapshot ${id} (have: ${[...context.inMemory.keys()].join(", ") || "none"})`);
  if (request.method === "GET") {
    return new Response(snapshot.stateFile, {
      headers: { "content-type": "application/octet-stream", "volt-memory-path": `/proc/${process.pid}/fd/${snapshot.memfd}` },
    });
  }
  if (request.method === "DELETE") {
    context.inMemory.delete(id);
    closeSync(snapshot.memfd);
    return reply(200, { ok: true });
  }
  return failure(405, "method", `/snapshot/memory/${id} takes GET, DELETE, not ${request.method}`);
}

async function jsonBody(request: Request): Promise<unknown | Response> {
  const text = await request.text();
  try {
    return JSON.parse(text);
  } catch (error) {
    return failure(400, "bad-json", `request body is not JSON: ${(error as Error).message}`);
  }
}

function describe(vm: RunningVm) {
  const built = vm.built;
  return {
    state: vm.state,
    vcpus: built.vcpus.length,
    memoryMiB: built.config.memoryMiB,
    kernel: built.kernel,
    cmdline: built.cmdline,
    acpi: built.acpi,
    devices: built.virtio.slots.map((slot) => ({ kind: slot.spec.kind, mmioBase: slot.mmioBase, irq: slot.irq })),
  };
}

/**
 * A running VM's control API: HTTP with JSON bodies over a Unix socket (the
 * main thread's event loop is free, since vCPUs and devices run on workers).
 *
 *   GET  /vm               describe the VM
 *   PUT  /vm/pause         park every vCPU and quiesce devices
 *   PUT  /vm/resume
 *   PUT  /vm/stop          end the VM (outcome "signal", detail "stopped by the API")
 *   PUT  /snapshot/create  {"dir": "...", "force"?: bool}; pauses for the capture, then runs on
 *
 * Every request body is validated; errors are JSON {"error": {"kind", "message"}}
 * with 400 (bad request), 404 (no such endpoint), 405 (wrong method),
 * 409 (the VM is stopping) or 500.
 */
import { existsSync, statSync, unlinkSync } from "node:fs";
import { connect } from "node:net";
import * as v from "valibot";
import { SnapshotError } from "../snapshot/format.ts";
import { snapshotVm } from "../vmm/snapshot.ts";
import type { RunningVm } from "../vmm/vmm.ts";

const SnapshotRequest = v.strictObject({
  dir: v.pipe(v.string("dir must be a path"), v.nonEmpty("dir must not be empty")),
  force: v.optional(v.boolean("force must be true or false")),
});

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

export async function startApiServer(path: string, vm: RunningVm): Promise<ApiServer> {
  await claimSocketPath(path);
  const server = Bun.serve({
    unix: path,
    fetch: (request) => handle(request, vm),
    error: (error) => reply(500, { error: { kind: "internal", message: error.message } }),
  });
  return {
    path,
    stop() {
      server.stop(true);
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

const ROUTES: Record<string, readonly string[]> = {
  "/vm": ["GET"],
  "/vm/pause": ["PUT"],
  "/vm/resume": ["PUT"],
  "/vm/stop": ["PUT"],
  "/snapshot/create": ["PUT"],
};

async function handle(request: Request, vm: RunningVm): Promise<Response> {
  const { pathname } = new URL(request.url);
  const methods = ROUTES[pathname];
  if (!methods) return failure(404, "not-found", `no endpoint ${pathname} (endpoints: ${Object.keys(ROUTES).join(", ")})`);
  if (!methods.includes(request.method)) return failure(405, "method", `${pathname} takes ${methods.join(", ")}, not ${request.method}`);
  if (pathname === "/vm") return reply(200, describe(vm));
  if (vm.state === "stopping") return failure(409, "state", "the VM is stopping");
  try {
    switch (pathname) {
      case "/vm/pause":
        await vm.pause();
        return reply(200, describe(vm));
      case "/vm/resume":
        await vm.resume();
        return reply(200, describe(vm));
      case "/vm/stop":
        vm.stop("signal", "stopped by the API");
        return reply(200, { state: "stopping" });
      case "/snapshot/create": {
        const body = await jsonBody(request);
        if (body instanceof Response) return body;
        const parsed = v.safeParse(SnapshotRequest, body);
        if (!parsed.success) return failure(400, "bad-request", parsed.issues.map((i) => i.message).join("; "));
        const result = await snapshotVm(vm, parsed.output.dir, { force: parsed.output.force ?? false });
        return reply(200, { ok: true, snapshot: result, state: vm.state });
      }
    }
  } catch (error) {
    if (error instanceof SnapshotError) return failure(error.kind === "exists" ? 409 : 400, `snapshot-${error.kind}`, error.message);
    return failure(500, "internal", (error as Error).message);
  }
  return failure(404, "not-found", pathname);
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

/**
 * Where a VM's runtime files live, and what VM ids look like.
 *
 * Every VM started with `volt run --detach` (or `--id NAME`) has a directory
 * `${XDG_RUNTIME_DIR:-/run}/volt/<id>/` holding:
 *
 *   pid           the volt process's pid (decimal, one line)
 *   vm.json       what the VM is (RuntimeRecord): written once the VM is configured
 *   api.sock      its control API (HTTP/JSON, src/api/server.ts)
 *   console.sock  its serial console as a byte stream (output out, input in)
 *   console.log   everything the guest wrote on its console (rotated to console.log.1 past a size)
 *   volt.log      the detached volt process's own stdout and stderr
 *   exit.json     how it ended (ExitRecord), written by the process just before it exits
 *
 * The directory outlives the process (so `volt wait` and `volt logs` still work
 * after the end); `volt ls` removes the directories of VMs that are gone.
 */
import { randomBytes } from "node:crypto";
import { join } from "node:path";

export const RUNTIME_FILES = {
  pid: "pid",
  record: "vm.json",
  apiSocket: "api.sock",
  consoleSocket: "console.sock",
  consoleLog: "console.log",
  processLog: "volt.log",
  exit: "exit.json",
} as const;

/** Unix socket paths are limited to 107 bytes (sun_path is 108 with the NUL). */
export const MAX_SOCKET_PATH_BYTES = 107;

/** Letters, digits, `_`, `.`, `-`; first a letter or digit (so names never start with `.`, which marks Volt's own temporary entries). */
export const VM_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

export type RuntimeErrorKind = "bad-id" | "id-in-use" | "no-such-vm" | "ambiguous-id" | "not-running" | "runtime-dir" | "path-too-long";

/** A runtime directory problem; `kind` tells scripts which (the CLI exits 2 for all of them). */
export class RuntimeError extends Error {
  override name = "RuntimeError";
  readonly kind: RuntimeErrorKind;

  constructor(kind: RuntimeErrorKind, message: string) {
    super(message);
    this.kind = kind;
  }
}

/** `${XDG_RUNTIME_DIR}/volt`, or `/run/volt` when XDG_RUNTIME_DIR is unset or empty. */
export function runtimeRoot(env: Record<string, string | undefined> = process.env): string {
  const base = env.XDG_RUNTIME_DIR !== undefined && env.XDG_RUNTIME_DIR !== "" ? env.XDG_RUNTIME_DIR : "/run";
  return join(base, "volt");
}

export function checkVmId(id: string): string {
  if (!VM_ID_PATTERN.test(id)) {
    throw new RuntimeError("bad-id", `bad VM id ${JSON.stringify(id)}: use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit`);
  }
  return id;
}

/** 12 random hex digits: unique enough for one host, short enough to type (and any unique prefix works). */
export function newVmId(): string {
  return randomBytes(6).toString("hex");
}

export interface VmPaths {
  readonly id: string;
  readonly dir: string;
  readonly pid: string;
  readonly record: string;
  readonly apiSocket: string;
  readonly consoleSocket: string;
  readonly consoleLog: string;
  readonly processLog: string;
  readonly exit: string;
}

export function vmPaths(id: string, root: string = runtimeRoot()): VmPaths {
  const dir = join(root, id);
  return {
    id,
    dir,
    pid: join(dir, RUNTIME_FILES.pid),
    record: join(dir, RUNTIME_FILES.record),
    apiSocket: join(dir, RUNTIME_FILES.apiSocket),
    consoleSocket: join(dir, RUNTIME_FILES.consoleSocket),
    consoleLog: join(dir, RUNTIME_FILES.consoleLog),
    processLog: join(dir, RUNTIME_FILES.processLog),
    exit: join(dir, RUNTIME_FILES.exit),
  };
}

/** Refuses a runtime root so deep that the VM's sockets would not fit in sun_path. */
export function checkSocketPaths(paths: VmPaths): void {
  for (const socket of [paths.apiSocket, paths.consoleSocket]) {
    if (Buffer.byteLength(socket) > MAX_SOCKET_PATH_BYTES) {
      throw new RuntimeError(
        "path-too-long",
        `runtime socket path ${socket} is ${Buffer.byteLength(socket)} bytes; Unix sockets allow ${MAX_SOCKET_PATH_BYTES} (use a shorter XDG_RUNTIME_DIR or id)`,
      );
    }
  }
}

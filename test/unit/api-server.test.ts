/** The control API's HTTP surface over a Unix socket, against a stand-in VM (no KVM): routing, validation, state errors. */
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ApiSocketError, claimSocketPath, startApiServer } from "../../src/api/server.ts";
import { bindUnix, socket, SOCKET_CONSTANTS } from "../../src/ffi/socket-syscalls.ts";
import type { RunningVm } from "../../src/vmm/vmm.ts";

const work = mkdtempSync(join(tmpdir(), "volt-api-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function fakeVm() {
  const calls: string[] = [];
  const vm = {
    state: "running" as "running" | "paused" | "stopping",
    built: { vcpus: [{}, {}], config: { memoryMiB: 256 }, kernel: { format: "elf", protocol: "pvh" }, cmdline: "console=ttyS0", acpi: true, virtio: { slots: [] } },
    async pause() {
      calls.push("pause");
      vm.state = "paused";
    },
    async resume() {
      calls.push("resume");
      vm.state = "running";
    },
    async metrics() {
      return { state: vm.state, uptimeMs: 5, exitsTotal: 7, vcpus: [], devices: [{ kind: "rng", requests: 1, bytes: 8 }] };
    },
    stop(kind: string, detail: string) {
      calls.push(`stop ${kind} ${detail}`);
      vm.state = "stopping";
    },
    keyboardFull: false,
    sendCtrlAltDel() {
      calls.push("ctrl-alt-del");
      return vm.keyboardFull ? "buffer-full" : "queued";
    },
  };
  return { vm, calls };
}

async function call(socket: string, method: string, path: string, body?: string) {
  const response = await fetch(`http://volt${path}`, { unix: socket, method, ...(body !== undefined ? { body } : {}) } as RequestInit);
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

describe("control API", () => {
  test("describe, pause, resume, stop; bad requests get 4xx and leave the VM as it was", async () => {
    const socket = join(work, "api.sock");
    const { vm, calls } = fakeVm();
    const server = await startApiServer(socket, vm as unknown as RunningVm);
    try {
      expect(await call(socket, "GET", "/vm")).toMatchObject({ status: 200, body: { state: "running", vcpus: 2, memoryMiB: 256, acpi: true } });
      expect(await call(socket, "GET", "/metrics")).toMatchObject({ status: 200, body: { exitsTotal: 7, devices: [{ kind: "rng" }] } });
      expect(await call(socket, "PUT", "/vm/pause")).toMatchObject({ status: 200, body: { state: "paused" } });
      expect(await call(socket, "PUT", "/vm/resume")).toMatchObject({ status: 200, body: { state: "running" } });

      expect(await call(socket, "GET", "/nowhere")).toMatchObject({ status: 404, body: { error: { kind: "not-found" } } });
      expect(await call(socket, "GET", "/vm/pause")).toMatchObject({ status: 405, body: { error: { kind: "method" } } });
      expect(await call(socket, "PUT", "/snapshot/create", "{not json")).toMatchObject({ status: 400, body: { error: { kind: "bad-json" } } });
      expect(await call(socket, "PUT", "/snapshot/create", '{"dir": 3}')).toMatchObject({ status: 400, body: { error: { message: "dir must be a path" } } });
      expect(await call(socket, "PUT", "/snapshot/create", '{"dir": "/x", "compress": true}')).toMatchObject({ status: 400 });
      expect(calls).toEqual(["pause", "resume"]);

      // Many clients at once are all answered.
      const answers = await Promise.all(Array.from({ length: 50 }, () => call(socket, "GET", "/vm")));
      expect(answers.every((a) => a.status === 200)).toBe(true);

      expect(await call(socket, "PUT", "/vm/stop")).toMatchObject({ status: 200, body: { state: "stopping" } });
      expect(await call(socket, "PUT", "/vm/pause")).toMatchObject({ status: 409, body: { error: { kind: "state" } } });
      expect(calls).toEqual(["pause", "resume", "stop signal stopped by the API"]);
    } finally {
      server.stop();
    }
  });

  test("Ctrl-Alt-Del reaches a running VM; a paused one, or a keyboard the guest has not read, is a 409", async () => {
    const socket = join(work, "cad.sock");
    const { vm, calls } = fakeVm();
    const server = await startApiServer(socket, vm as unknown as RunningVm);
    try {
      expect(await call(socket, "PUT", "/vm/ctrl-alt-del")).toMatchObject({ status: 200, body: { ok: true, sent: "ctrl-alt-del" } });
      expect(await call(socket, "GET", "/vm/ctrl-alt-del")).toMatchObject({ status: 405 });
      vm.keyboardFull = true;
      expect(await call(socket, "PUT", "/vm/ctrl-alt-del")).toMatchObject({ status: 409, body: { error: { kind: "keyboard-busy" } } });
      await call(socket, "PUT", "/vm/pause");
      expect(await call(socket, "PUT", "/vm/ctrl-alt-del")).toMatchObject({ status: 409, body: { error: { kind: "state" } } });
      expect(calls).toEqual(["ctrl-alt-del", "ctrl-alt-del", "pause"]);
    } finally {
      server.stop();
    }
  });

  test("a stale socket file is replaced; a live one or a non-socket is refused", async () => {
    const stale = join(work, "stale.sock");
    const listener = createServer().listen(stale);
    await new Promise((resolve) => listener.once("listening", resolve));
    await expect(claimSocketPath(stale)).rejects.toThrow(ApiSocketError);
    await expect(claimSocketPath(stale)).rejects.toThrow("another process is listening on it");
    await new Promise((resolve) => listener.close(resolve));
    // A socket file nobody listens on, as a crashed volt leaves behind: bound, never listened, closed, not unlinked.
    const orphan = join(work, "orphan.sock");
    const fd = socket(SOCKET_CONSTANTS.AF_UNIX, SOCKET_CONSTANTS.SOCK_STREAM);
    bindUnix(fd, orphan);
    closeSync(fd);
    expect(existsSync(orphan)).toBe(true);
    await claimSocketPath(orphan);
    expect(existsSync(orphan)).toBe(false);
    writeFileSync(join(work, "plain"), "x");
    await expect(claimSocketPath(join(work, "plain"))).rejects.toThrow("exists and is not a socket");
  });
});

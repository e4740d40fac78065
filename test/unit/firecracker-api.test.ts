/**
 * The Firecracker-compatible API against a fake backend (no KVM): request
 * validation with Firecracker's errors, the configuration InstanceStart
 * boots, the state rules (nothing configurable after start, nothing to pause
 * before), snapshot path mapping, and, over a real Unix socket, the same
 * routes mounted on Volt's control API with malformed HTTP and hundreds of
 * bad requests answered while the VM is left as it was.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FirecrackerApi, NOT_AFTER_START, NOT_BEFORE_START, type ControlledVm, type FirecrackerBackend } from "../../src/api/firecracker.ts";
import { startApiServer } from "../../src/api/server.ts";
import type { VmConfig } from "../../src/vmm/config.ts";
import type { RunningVm } from "../../src/vmm/vmm.ts";

const work = mkdtempSync(join(tmpdir(), "volt-fc-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function fakeVm() {
  const calls: string[] = [];
  const vm = {
    state: "running" as "running" | "paused" | "stopping",
    async pause() {
      calls.push("pause");
      vm.state = "paused";
    },
    async resume() {
      calls.push("resume");
      vm.state = "running";
    },
    stop(kind?: string, detail?: string) {
      calls.push(`stop ${kind} ${detail}`);
      vm.state = "stopping";
    },
    keyboardFull: false,
    sendCtrlAltDel(): "queued" | "buffer-full" {
      calls.push("ctrl-alt-del");
      return vm.keyboardFull ? "buffer-full" : "queued";
    },
  };
  return { vm, calls };
}

function fakeBackend(options: { failBoot?: string } = {}) {
  const booted: VmConfig[] = [];
  const restored: { dir: string; resume: boolean }[] = [];
  const snapshots: string[] = [];
  const { vm, calls } = fakeVm();
  const backend: FirecrackerBackend = {
    async boot(config) {
      if (options.failBoot) throw new Error(options.failBoot);
      booted.push(config);
      return vm;
    },
    async restore(dir, { resume }) {
      restored.push({ dir, resume });
      return vm;
    },
    async snapshot(_vm: ControlledVm, dir: string) {
      snapshots.push(dir);
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, "state.volt"), "state");
      writeFileSync(join(dir, "memory.raw"), "memory");
      return { dir };
    },
  };
  return { backend, booted, restored, snapshots, vm, calls };
}

async function call(api: FirecrackerApi, method: string, path: string, body?: unknown) {
  const init: RequestInit = { method, ...(body !== undefined ? { body: typeof body === "string" ? body : JSON.stringify(body) } : {}) };
  const response = await api.handle(new Request(`http://localhost${path}`, init));
  if (!response) return { status: 0, body: undefined as unknown };
  const text = await response.text();
  return { status: response.status, body: text === "" ? undefined : (JSON.parse(text) as unknown) };
}

const faultOf = (answer: { body: unknown }) => (answer.body as { fault_message: string }).fault_message;

describe("Firecracker API: configuration and InstanceStart", () => {
  test("a full Firecracker sequence boots the configuration it describes", async () => {
    const { backend, booted } = fakeBackend();
    const api = new FirecrackerApi({ backend, instanceId: "vm-a" });
    expect(await call(api, "GET", "/")).toEqual({ status: 200, body: { id: "vm-a", state: "Not started", vmm_version: expect.any(String), app_name: "Volt" } });
    expect(await call(api, "PUT", "/machine-config", { vcpu_count: 2, mem_size_mib: 256, smt: false })).toEqual({ status: 204, body: undefined });
    expect(await call(api, "PATCH", "/machine-config", { mem_size_mib: 512 })).toMatchObject({ status: 204 });
    expect(await call(api, "GET", "/machine-config")).toMatchObject({ status: 200, body: { vcpu_count: 2, mem_size_mib: 512, smt: false } });
    expect(await call(api, "PUT", "/boot-source", { kernel_image_path: "/k/vmlinux", initrd_path: "/k/initrd", boot_args: "console=ttyS0 quiet" })).toMatchObject({ status: 204 });
    expect(await call(api, "PUT", "/drives/data", { drive_id: "data", path_on_host: "/d/data.img", is_root_device: false, is_read_only: true })).toMatchObject({ status: 204 });
    expect(await call(api, "PUT", "/drives/rootfs", { drive_id: "rootfs", path_on_host: "/d/root.ext4", is_root_device: true, is_read_only: false, cache_type: "Unsafe", io_engine: "Sync", rate_limiter: null })).toMatchObject({ status: 204 });
    expect(await call(api, "PUT", "/network-interfaces/eth0", { iface_id: "eth0", host_dev_name: "tap0", guest_mac: "06:00:AC:10:00:02" })).toMatchObject({ status: 204 });
    expect(await call(api, "PUT", "/vsock", { guest_cid: 3, uds_path: "/tmp/v.sock" })).toMatchObject({ status: 204 });
    expect(await call(api, "PUT", "/entropy", {})).toMatchObject({ status: 204 });
    const config = await call(api, "GET", "/vm/config");
    expect(config.body).toMatchObject({ "boot-source": { kernel_image_path: "/k/vmlinux" }, drives: [{ drive_id: "data" }, { drive_id: "rootfs" }], vsock: { guest_cid: 3 } });

    expect(await call(api, "PUT", "/actions", { action_type: "InstanceStart" })).toEqual({ status: 204, body: undefined });
    expect(booted).toEqual([
      {
        kernelPath: "/k/vmlinux",
        initrdPath: "/k/initrd",
        cmdline: "console=ttyS0 quiet",
        memoryMiB: 512,
        vcpus: 2,
        virtioDevices: [
          { kind: "block", path: "/d/data.img", readOnly: true, id: "data" },
          { kind: "block", path: "/d/root.ext4", readOnly: false, root: true, id: "rootfs" },
          { kind: "net", tap: "tap0", mac: "06:00:AC:10:00:02" },
          { kind: "vsock", guestCid: 3, udsPath: "/tmp/v.sock" },
          { kind: "rng" },
        ],
      },
    ]);
    expect((await call(api, "GET", "/")).body).toMatchObject({ state: "Running" });
  });

  test("bad bodies get 400 with a fault_message naming the field; nothing is applied", async () => {
    const { backend } = fakeBackend();
    const api = new FirecrackerApi({ backend });
    const cases: [string, string, unknown, string | RegExp][] = [
      ["PUT", "/machine-config", { vcpu_count: 0, mem_size_mib: 128 }, "vcpu_count: must be a whole number from 1 to 64"],
      ["PUT", "/machine-config", { vcpu_count: 1.5, mem_size_mib: 128 }, "vcpu_count: must be a whole number from 1 to 64"],
      ["PUT", "/machine-config", { vcpu_count: 1 }, "mem_size_mib: is required"],
      ["PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 128, smt: true }, "smt: true is not supported"],
      ["PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 128, cpu_template: "T2" }, 'cpu_template: only "None"'],
      ["PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 128, vcpus: 2 }, "vcpus: unknown field"],
      ["PUT", "/machine-config", "{\"vcpu_count\": 1,", /deserializing the json body/],
      ["PUT", "/machine-config", "", "The request body is empty"],
      ["PUT", "/machine-config", "[1, 2]", "must be a JSON object"],
      ["PUT", "/machine-config", "null", "must be a JSON object"],
      ["PUT", "/boot-source", { initrd_path: "/x" }, "kernel_image_path: is required"],
      ["PUT", "/boot-source", { kernel_image_path: "" }, "kernel_image_path: must not be empty"],
      ["PUT", "/drives/a", { drive_id: "b", path_on_host: "/x", is_root_device: false }, "The id from the path [a] does not match the id from the body [b]!"],
      ["PUT", "/drives/a-b", { drive_id: "a-b", path_on_host: "/x", is_root_device: false }, "drive_id: must be 1-64 letters, digits or '_'"],
      ["PUT", "/drives/a", { drive_id: "a", path_on_host: "/x" }, "is_root_device: is required"],
      ["PUT", "/drives/a", { drive_id: "a", path_on_host: "/x", is_root_device: false, rate_limiter: { bandwidth: {} } }, "rate_limiter: is not supported"],
      ["PUT", "/drives/a", { drive_id: "a", path_on_host: "/x", is_root_device: false, partuuid: "abc" }, "partuuid: is not supported"],
      ["PUT", "/network-interfaces/eth0", { iface_id: "eth0", host_dev_name: "a-tap-name-that-is-too-long" }, "host_dev_name: must be at most 15 bytes"],
      ["PUT", "/network-interfaces/eth0", { iface_id: "eth0", host_dev_name: "tap0", guest_mac: "zz" }, "guest_mac: must look like"],
      ["PUT", "/vsock", { guest_cid: 2, uds_path: "/v" }, "guest_cid: must be at least 3"],
      ["PUT", "/actions", { action_type: "Reboot" }, 'action_type: must be "InstanceStart"'],
      ["PUT", "/actions", {}, "action_type: is required"],
      ["PUT", "/actions", { action_type: "InstanceStart" }, "Cannot start microvm without kernel configuration."],
      ["PUT", "/actions", { action_type: "SendCtrlAltDel" }, NOT_BEFORE_START],
      ["PATCH", "/vm", { state: "Paused" }, NOT_BEFORE_START],
      ["PATCH", "/vm", { state: "Frozen" }, 'state: must be "Paused" or "Resumed"'],
      ["PUT", "/snapshot/create", { snapshot_path: "/s", mem_file_path: "/m" }, NOT_BEFORE_START],
      ["GET", "/actions", undefined, "Invalid request method and/or path: GET /actions."],
      ["DELETE", "/machine-config", undefined, "Invalid request method and/or path: DELETE /machine-config."],
      ["PUT", "/logger", { log_path: "/l" }, "/logger is not supported"],
      ["PUT", "/balloon", { amount_mib: 1 }, "/balloon is not supported"],
      ["PUT", "/mmds", {}, "/mmds is not supported"],
    ];
    for (const [method, path, body, expected] of cases) {
      const answer = await call(api, method, path, body);
      expect({ request: `${method} ${path} ${JSON.stringify(body)}`, status: answer.status }).toEqual({ request: `${method} ${path} ${JSON.stringify(body)}`, status: 400 });
      if (typeof expected === "string") expect(faultOf(answer)).toContain(expected);
      else expect(faultOf(answer)).toMatch(expected);
    }
    // Nothing of that stuck: the defaults are intact.
    expect((await call(api, "GET", "/machine-config")).body).toMatchObject({ vcpu_count: 1, mem_size_mib: 128 });
    expect((await call(api, "GET", "/vm/config")).body).toMatchObject({ "boot-source": null, drives: [], "network-interfaces": [], vsock: null });
    // Not Firecracker's at all: left to Volt's router.
    expect(await api.handle(new Request("http://localhost/nowhere"))).toBeUndefined();
    expect(await api.handle(new Request("http://localhost/vm"))).toBeUndefined();
  });

  test("one root drive; the same drive id replaces; interfaces may not share a tap or a MAC", async () => {
    const { backend } = fakeBackend();
    const api = new FirecrackerApi({ backend });
    expect((await call(api, "PUT", "/drives/root", { drive_id: "root", path_on_host: "/a", is_root_device: true })).status).toBe(204);
    expect(faultOf(await call(api, "PUT", "/drives/other", { drive_id: "other", path_on_host: "/b", is_root_device: true }))).toBe("A root block device already exists!");
    expect((await call(api, "PUT", "/drives/root", { drive_id: "root", path_on_host: "/c", is_root_device: true })).status).toBe(204);
    expect((await call(api, "GET", "/vm/config")).body).toMatchObject({ drives: [{ drive_id: "root", path_on_host: "/c" }] });
    expect((await call(api, "PUT", "/network-interfaces/a", { iface_id: "a", host_dev_name: "tap0", guest_mac: "06:00:00:00:00:01" })).status).toBe(204);
    expect(faultOf(await call(api, "PUT", "/network-interfaces/b", { iface_id: "b", host_dev_name: "tap0" }))).toContain("already used by interface a");
    expect(faultOf(await call(api, "PUT", "/network-interfaces/b", { iface_id: "b", host_dev_name: "tap1", guest_mac: "06:00:00:00:00:01" }))).toContain("already in use");
  });

  test("a failed InstanceStart leaves the configuration to fix and start again", async () => {
    const failing = fakeBackend({ failBoot: "cannot read kernel /k: no such file" });
    const api = new FirecrackerApi({ backend: failing.backend });
    await call(api, "PUT", "/boot-source", { kernel_image_path: "/k" });
    const answer = await call(api, "PUT", "/actions", { action_type: "InstanceStart" });
    expect(answer.status).toBe(400);
    expect(faultOf(answer)).toBe("Cannot start the microVM: cannot read kernel /k: no such file");
    expect((await call(api, "GET", "/")).body).toMatchObject({ state: "Not started" });
    expect((await call(api, "PUT", "/boot-source", { kernel_image_path: "/k2" })).status).toBe(204);
  });

  test("after InstanceStart: configuration refused as Firecracker refuses it; PATCH /vm pauses and resumes, idempotently", async () => {
    const { backend, vm, calls } = fakeBackend();
    const api = new FirecrackerApi({ backend });
    let started: ControlledVm | undefined;
    api.onStarted = (running) => (started = running);
    await call(api, "PUT", "/boot-source", { kernel_image_path: "/k" });
    expect((await call(api, "PUT", "/actions", { action_type: "InstanceStart" })).status).toBe(204);
    expect(started).toBe(vm);
    for (const [path, body] of [
      ["/machine-config", { vcpu_count: 1, mem_size_mib: 64 }],
      ["/boot-source", { kernel_image_path: "/k" }],
      ["/drives/a", { drive_id: "a", path_on_host: "/x", is_root_device: false }],
      ["/network-interfaces/a", { iface_id: "a", host_dev_name: "tap0" }],
      ["/vsock", { guest_cid: 3, uds_path: "/v" }],
      ["/actions", { action_type: "InstanceStart" }],
      ["/snapshot/load", { snapshot_path: "/s", mem_file_path: "/s/memory.raw" }],
    ] as const) {
      const answer = await call(api, "PUT", path, body);
      expect({ path, status: answer.status, fault: faultOf(answer) }).toEqual({ path, status: 400, fault: NOT_AFTER_START });
    }
    expect(faultOf(await call(api, "PATCH", "/drives/a", { drive_id: "a", path_on_host: "/y" }))).toBe(NOT_AFTER_START);
    expect((await call(api, "PATCH", "/vm", { state: "Paused" })).status).toBe(204);
    expect((await call(api, "GET", "/")).body).toMatchObject({ state: "Paused" });
    expect((await call(api, "PATCH", "/vm", { state: "Paused" })).status).toBe(204);
    expect((await call(api, "PATCH", "/vm", { state: "Resumed" })).status).toBe(204);
    expect((await call(api, "GET", "/")).body).toMatchObject({ state: "Running" });
    expect(faultOf(await call(api, "PUT", "/actions", { action_type: "FlushMetrics" }))).toContain("FlushMetrics is not supported");
    expect(calls).toEqual(["pause", "pause", "resume"]);
    // SendCtrlAltDel presses the keys on a running VM; a paused one, or a guest that left the last press unread, is refused.
    expect((await call(api, "PUT", "/actions", { action_type: "SendCtrlAltDel" })).status).toBe(204);
    expect(calls.at(-1)).toBe("ctrl-alt-del");
    vm.keyboardFull = true;
    expect(faultOf(await call(api, "PUT", "/actions", { action_type: "SendCtrlAltDel" }))).toContain("has not read the keys sent before");
    await call(api, "PATCH", "/vm", { state: "Paused" });
    expect(faultOf(await call(api, "PUT", "/actions", { action_type: "SendCtrlAltDel" }))).toContain("paused");
    expect(calls.filter((c) => c === "ctrl-alt-del")).toHaveLength(2);
    vm.state = "stopping";
    expect(faultOf(await call(api, "PATCH", "/vm", { state: "Paused" }))).toBe("The microVM is stopping.");
  });

  test("snapshot/create writes Volt's directory at snapshot_path and links mem_file_path to its memory; snapshot/load maps back", async () => {
    const { backend, snapshots, restored } = fakeBackend();
    const api = new FirecrackerApi({ backend });
    await call(api, "PUT", "/boot-source", { kernel_image_path: "/k" });
    await call(api, "PUT", "/actions", { action_type: "InstanceStart" });
    const dir = join(work, "fc-snap");
    const mem = join(work, "fc-snap.mem");
    writeFileSync(mem, "an old memory file Firecracker would overwrite");
    expect(faultOf(await call(api, "PUT", "/snapshot/create", { snapshot_path: dir, mem_file_path: mem, snapshot_type: "Diff" }))).toContain('"Diff" is not supported');
    expect(faultOf(await call(api, "PUT", "/snapshot/create", { snapshot_path: dir, mem_file_path: join(dir, "mem") }))).toContain("must be outside the snapshot directory");
    expect((await call(api, "PUT", "/snapshot/create", { snapshot_path: dir, mem_file_path: mem, snapshot_type: "Full" })).status).toBe(204);
    expect(snapshots).toEqual([dir]);
    expect(lstatSync(mem).isSymbolicLink()).toBe(true);
    expect(readlinkSync(mem)).toBe(join(dir, "memory.raw"));
    // mem_file_path may also simply be the directory's own memory file.
    expect((await call(api, "PUT", "/snapshot/create", { snapshot_path: dir, mem_file_path: join(dir, "memory.raw") })).status).toBe(204);

    const fresh = new FirecrackerApi({ backend });
    expect(faultOf(await call(fresh, "PUT", "/snapshot/load", { snapshot_path: dir }))).toBe("Give exactly one of mem_file_path and mem_backend.");
    expect(faultOf(await call(fresh, "PUT", "/snapshot/load", { snapshot_path: dir, mem_backend: { backend_type: "Uffd", backend_path: "/u" } }))).toContain('"Uffd" is not supported');
    expect(faultOf(await call(fresh, "PUT", "/snapshot/load", { snapshot_path: dir, mem_file_path: "/etc/hostname" }))).toContain("must be a Volt snapshot directory");
    expect((await call(fresh, "PUT", "/snapshot/load", { snapshot_path: dir, mem_file_path: mem, resume_vm: true })).status).toBe(204);
    expect(restored).toEqual([{ dir, resume: true }]);
    expect((await call(fresh, "GET", "/")).body).toMatchObject({ state: "Running" });

    const configured = new FirecrackerApi({ backend });
    await call(configured, "PUT", "/boot-source", { kernel_image_path: "/k" });
    expect(faultOf(await call(configured, "PUT", "/snapshot/load", { snapshot_path: dir, mem_file_path: mem }))).toContain("not allowed after configuring boot-specific resources");
  });

  test("concurrent InstanceStarts: one starts the VM, the others are refused", async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const { vm } = fakeVm();
    let boots = 0;
    const api = new FirecrackerApi({
      backend: {
        async boot() {
          boots++;
          await gate;
          return vm;
        },
      },
    });
    await call(api, "PUT", "/boot-source", { kernel_image_path: "/k" });
    const first = call(api, "PUT", "/actions", { action_type: "InstanceStart" });
    const second = await call(api, "PUT", "/actions", { action_type: "InstanceStart" });
    const config = await call(api, "PUT", "/machine-config", { vcpu_count: 2, mem_size_mib: 64 });
    release();
    expect((await first).status).toBe(204);
    expect(faultOf(second)).toBe("The microVM is already starting.");
    expect(faultOf(config)).toContain("is starting");
    expect(boots).toBe(1);
  });
});

/** One raw exchange on the socket: what a broken client sends, and whatever comes back before the server closes or a short wait ends. */
function raw(socket: string, bytes: string | Uint8Array): Promise<string> {
  return new Promise((resolve) => {
    const client = connect(socket);
    let received = "";
    const done = () => {
      client.destroy();
      resolve(received);
    };
    client.on("data", (chunk) => (received += chunk.toString()));
    client.on("end", done);
    client.on("error", done);
    client.on("connect", () => client.write(bytes));
    setTimeout(done, 300);
  });
}

describe("Firecracker routes on Volt's control API, and a hostile client", () => {
  function runningVm() {
    const { vm, calls } = fakeVm();
    const built = {
      vcpus: [{}, {}],
      config: { kernelPath: "/k/vmlinux", initrdPath: "/k/initrd", memoryMiB: 256, vcpus: 2, virtioDevices: [{ kind: "block", path: "/d.img", readOnly: true, id: "data" }] },
      kernel: { format: "elf", protocol: "pvh" },
      cmdline: "console=ttyS0",
      acpi: true,
      virtio: { slots: [] },
    };
    return { vm: Object.assign(vm, { built, metrics: async () => ({ state: vm.state }) }), calls };
  }

  async function http(socket: string, method: string, path: string, body?: string) {
    const response = await fetch(`http://volt${path}`, { unix: socket, method, ...(body !== undefined ? { body } : {}) } as RequestInit);
    const text = await response.text();
    return { status: response.status, body: text === "" ? undefined : (JSON.parse(text) as Record<string, unknown>) };
  }

  test("a `volt run` VM answers Firecracker's GETs and PATCH /vm; Volt's pause/resume refuse the state they are in", async () => {
    const socket = join(work, "mounted.sock");
    const { vm, calls } = runningVm();
    const server = await startApiServer(socket, vm as unknown as RunningVm);
    try {
      expect(await http(socket, "GET", "/")).toMatchObject({ status: 200, body: { state: "Running", app_name: "Volt" } });
      expect(await http(socket, "GET", "/machine-config")).toMatchObject({ status: 200, body: { vcpu_count: 2, mem_size_mib: 256 } });
      expect(await http(socket, "GET", "/vm/config")).toMatchObject({ body: { "boot-source": { kernel_image_path: "/k/vmlinux" }, drives: [{ drive_id: "data", is_read_only: true }] } });
      expect(await http(socket, "PUT", "/boot-source", '{"kernel_image_path": "/x"}')).toMatchObject({ status: 400, body: { fault_message: NOT_AFTER_START } });
      expect(await http(socket, "PATCH", "/vm", '{"state": "Paused"}')).toMatchObject({ status: 204 });
      expect(await http(socket, "PUT", "/vm/pause")).toMatchObject({ status: 409, body: { error: { kind: "state", message: "the VM is already paused" } } });
      expect(await http(socket, "PUT", "/vm/resume")).toMatchObject({ status: 200, body: { state: "running" } });
      expect(await http(socket, "PUT", "/vm/resume")).toMatchObject({ status: 409, body: { error: { kind: "state" } } });
      // Unknown paths answer both kinds of client.
      const missing = await http(socket, "GET", "/nowhere");
      expect(missing.status).toBe(404);
      expect(missing.body).toMatchObject({ error: { kind: "not-found" }, fault_message: expect.stringContaining("no endpoint /nowhere") });
      expect(await http(socket, "DELETE", "/vm")).toMatchObject({ status: 405 });
      expect(calls).toEqual(["pause", "resume"]);
    } finally {
      server.stop();
    }
  });

  test("hundreds of malformed requests, bad JSON, unknown endpoints and wrong states: each a clear 4xx (or a closed connection), the VM untouched, the API still answering", async () => {
    const socket = join(work, "hostile.sock");
    const { vm, calls } = runningVm();
    const server = await startApiServer(socket, vm as unknown as RunningVm);
    try {
      const garbage = [
        "GARBAGE\r\n\r\n",
        "GET\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "PUT /vm/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "PUT /vm/pause HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        "PUT /snapshot/create HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nnope\r\n",
        "GET /vm HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        `GET /${"a".repeat(100_000)} HTTP/1.1\r\nHost: x\r\n\r\n`,
        "\x00\x01\x02\x03\xff\xfe",
        "PUT /actions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{\"a\"",
      ];
      const rawAnswers = await Promise.all(Array.from({ length: 200 }, (_, i) => raw(socket, garbage[i % garbage.length]!)));
      // Whatever came back was an error status about the request (505 is HTTP's own for "HTTP/9.9"), never a success or a crash.
      const statuses = new Set<number>();
      for (const answer of rawAnswers) {
        const status = answer.match(/^HTTP\/1\.1 (\d{3})/)?.[1];
        if (status !== undefined) statuses.add(Number(status));
      }
      for (const status of statuses) expect([400, 404, 405, 413, 414, 431, 505]).toContain(status);

      const bad: [string, string, string | undefined, number][] = [
        ["PUT", "/snapshot/create", "{not json", 400],
        ["PUT", "/snapshot/create", '{"dir": 3}', 400],
        ["PUT", "/snapshot/create", '{"snapshot_path": "/s"}', 400],
        ["PUT", "/snapshot/create", "x".repeat(2 * 1024 * 1024), 413],
        ["PUT", "/machine-config", '{"vcpu_count": 4, "mem_size_mib": 1}', 400],
        ["PUT", "/actions", '{"action_type": "InstanceStart"}', 400],
        ["PUT", "/actions", "[]", 400],
        ["PATCH", "/vm", '{"state": 7}', 400],
        ["GET", "/no/such/endpoint", undefined, 404],
        ["POST", "/vm/pause", undefined, 405],
        ["PUT", "/vm/resume", undefined, 409],
      ];
      const answers = await Promise.all(Array.from({ length: 300 }, (_, i) => bad[i % bad.length]!).map(async ([method, path, body, status]) => ({ want: status, got: (await http(socket, method, path, body).catch(() => ({ status: 0 }))).status })));
      for (const { want, got } of answers) expect(got).toBe(want);

      // Still answering, still running, never paused or stopped by any of it.
      const healthy = await Promise.all(Array.from({ length: 50 }, () => http(socket, "GET", "/vm")));
      expect(healthy.every((answer) => answer.status === 200 && answer.body?.state === "running")).toBe(true);
      expect(calls).toEqual([]);
    } finally {
      server.stop();
    }
  });

  test("PUT /snapshot/create in Firecracker's shape reaches the Firecracker route on Volt's socket", async () => {
    const socket = join(work, "fc-snap.sock");
    const { vm } = runningVm();
    const server = await startApiServer(socket, vm as unknown as RunningVm);
    try {
      const answer = await http(socket, "PUT", "/snapshot/create", JSON.stringify({ snapshot_path: join(work, "x"), mem_file_path: join(work, "x.mem"), snapshot_type: "Diff" }));
      expect(answer).toMatchObject({ status: 400, body: { fault_message: expect.stringContaining('"Diff" is not supported') } });
      expect(existsSync(join(work, "x"))).toBe(false);
    } finally {
      server.stop();
    }
  });
});

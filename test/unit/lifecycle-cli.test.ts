/**
 * The lifecycle commands (ls, inspect, pause, resume, stop, kill, wait, logs,
 * console) end to end through the CLI, without KVM: each "VM" is a small bun
 * process that registers itself with Volt's own runtime code (VmRegistration:
 * pid, vm.json, console.sock, console.log, exit.json) and serves Volt's real
 * control API over a stand-in VM. Also the CLI's error cases: unknown ids,
 * ambiguous prefixes, wrong states, bad flags, and a detached run whose VM
 * cannot start leaving nothing behind.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { processAlive } from "../../src/runtime/registry.ts";

const root = join(import.meta.dir, "..", "..");
const work = mkdtempSync(join(tmpdir(), "volt-lc-"));
const runtimeDir = join(work, "run");
const env = { ...process.env, XDG_RUNTIME_DIR: runtimeDir, NO_COLOR: "1" };
const started: Bun.Subprocess[] = [];
afterAll(() => {
  for (const child of started) child.kill("SIGKILL");
  rmSync(work, { recursive: true, force: true });
});

/** A stand-in VM process: registers like `volt run --id`, ticks on its console, echoes console input, ends on PUT /vm/stop or SIGTERM. */
const FAKE_VM = `
import { startApiServer } from ${JSON.stringify(join(root, "src/api/server.ts"))};
import { VmRegistration } from ${JSON.stringify(join(root, "src/runtime/session.ts"))};
const id = process.argv[2];
const registration = await VmRegistration.open({ id, adopt: false });
let tick = 0;
let timer;
let api;
const finish = (exitCode, kind, detail) => {
  clearInterval(timer);
  setTimeout(() => {
    api.stop();
    registration.recordExit({ exitCode, outcome: kind, detail });
    registration.close();
    process.exit(exitCode);
  }, 50);
};
const vm = {
  state: "running",
  built: { vcpus: [{}, {}], config: { kernelPath: "/fake/vmlinux", memoryMiB: 96, vcpus: 2 }, kernel: { format: "elf", protocol: "pvh" }, cmdline: "console=ttyS0", acpi: true, virtio: { slots: [] } },
  async pause() { vm.state = "paused"; },
  sendCtrlAltDel() { registration.console.write(new TextEncoder().encode("got ctrl-alt-del\\n")); return "queued"; },
  async resume() { vm.state = "running"; },
  stop(kind, detail) { vm.state = "stopping"; finish(0, kind, detail); },
  async metrics() { return { exitsTotal: 42 }; },
};
api = await startApiServer(registration.apiSocket, vm);
registration.recordStart(vm.built.config);
registration.console.attachInput((bytes) => registration.console.write(new TextEncoder().encode("echo:" + new TextDecoder().decode(bytes))));
timer = setInterval(() => registration.console.write(new TextEncoder().encode("tick " + ++tick + "\\n")), 50);
process.on("SIGTERM", () => { vm.state = "stopping"; finish(143, "signal", "stopped by SIGTERM"); });
`;
const fakeVmScript = join(work, "fake-vm.ts");
writeFileSync(fakeVmScript, FAKE_VM);

async function startFakeVm(id: string): Promise<number> {
  const child = Bun.spawn(["bun", fakeVmScript, id], { env, stdout: "ignore", stderr: "inherit" });
  started.push(child);
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    const ls = volt(["inspect", id, "--json"]);
    if (ls.exitCode === 0 && JSON.parse(ls.stdout).vm.state === "running") return child.pid;
    await Bun.sleep(50);
  }
  throw new Error(`fake VM ${id} did not come up`);
}

function volt(args: string[], options: { stdin?: string } = {}) {
  const child = Bun.spawnSync(["bun", join(root, "src/cli/main.ts"), ...args], {
    env,
    cwd: work,
    timeout: 30_000,
    ...(options.stdin !== undefined ? { stdin: new TextEncoder().encode(options.stdin) } : {}),
  });
  return { exitCode: child.exitCode, stdout: child.stdout.toString(), stderr: child.stderr.toString() };
}

function voltJson(args: string[], options: { stdin?: string } = {}) {
  const result = volt([...args, "--json"], options);
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(result.stdout);
  } catch {
    throw new Error(`volt ${args.join(" ")} --json printed no JSON (exit ${result.exitCode}):\n${result.stdout}\n${result.stderr}`);
  }
  return { ...result, json };
}

describe("lifecycle commands against registered VMs (no KVM)", () => {
  test("ls, inspect, pause, resume, logs, console, wait, stop: each one JSON document, meaningful exit statuses", async () => {
    const pid = await startFakeVm("alpha");
    await startFakeVm("beta");

    const ls = voltJson(["ls"]);
    expect(ls.exitCode).toBe(0);
    expect(ls.json).toMatchObject({ ok: true, runtimeDir: join(runtimeDir, "volt"), cleaned: [] });
    const vms = ls.json.vms as Record<string, unknown>[];
    expect(vms.map((vm) => vm.id)).toEqual(["alpha", "beta"]);
    expect(vms[0]).toMatchObject({ id: "alpha", pid, state: "running", vcpus: 2, memoryMiB: 96, detached: false, apiSocket: join(runtimeDir, "volt", "alpha", "api.sock") });
    expect(typeof vms[0]!.uptimeS).toBe("number");
    const table = volt(["ls"]);
    expect(table.stdout).toMatch(/^ID\s+PID\s+STATE\s+UPTIME\s+VCPUS\s+MEMORY\n/);
    expect(table.stdout).toMatch(/alpha\s+\d+\s+running\s+\d+s\s+2\s+96 MiB/);

    const inspect = voltJson(["inspect", "alpha"]);
    expect(inspect.json).toMatchObject({ ok: true, vm: { id: "alpha", pid, status: "running", state: "running", kernel: "/fake/vmlinux", vcpus: 2, metrics: { exitsTotal: 42 }, exit: null } });

    expect(voltJson(["pause", "alpha"])).toMatchObject({ exitCode: 0, json: { ok: true, id: "alpha", state: "paused" } });
    const again = voltJson(["pause", "alpha"]);
    expect(again).toMatchObject({ exitCode: 2, json: { ok: false, error: { kind: "state", message: "the VM is already paused" } } });
    expect(again.stderr).toContain("the VM is already paused");
    expect(voltJson(["ls"]).json.vms).toMatchObject([{ id: "alpha", state: "paused" }, { id: "beta", state: "running" }]);
    expect(voltJson(["resume", "alpha"])).toMatchObject({ exitCode: 0, json: { state: "running" } });
    expect(voltJson(["resume", "alpha"])).toMatchObject({ exitCode: 2, json: { error: { kind: "state" } } });
    expect(voltJson(["ctrl-alt-del", "alpha"])).toMatchObject({ exitCode: 0, json: { ok: true, id: "alpha", sent: "ctrl-alt-del" } });
    expect(volt(["ctrl-alt-del", "beta"]).stdout).toBe("beta ctrl-alt-del sent\n");
    for (let i = 0; !volt(["logs", "beta"]).stdout.includes("got ctrl-alt-del"); i++) {
      if (i > 50) throw new Error("the fake VM's console never showed the ctrl-alt-del");
      await Bun.sleep(100);
    }
    expect(voltJson(["ctrl-alt-del", "nobody"])).toMatchObject({ exitCode: 2, json: { ok: false } });

    const logs = volt(["logs", "alpha"]);
    expect(logs.exitCode).toBe(0);
    expect(logs.stdout).toMatch(/^tick 1\ntick 2\n/);
    const tail = volt(["logs", "alpha", "--tail", "2"]);
    expect(tail.stdout.trim().split("\n")).toHaveLength(2);
    expect(voltJson(["logs", "alpha"]).json).toMatchObject({ ok: true, id: "alpha", text: expect.stringContaining("tick 1\n") });

    // The console: input reaches the VM, its output comes back; the end of stdin detaches and the VM runs on.
    const consoled = volt(["console", "alpha"], { stdin: "hello" });
    expect(consoled.exitCode).toBe(0);
    expect(consoled.stderr).toContain("attached to alpha's console");
    expect(consoled.stderr).toContain("detached from alpha");
    // Ctrl-] detaches: what comes before it is sent, what comes after is not.
    const detached = voltJson(["console", "alpha"], { stdin: "ping\x1dnever-sent" });
    expect(detached.json).toMatchObject({ ok: true, id: "alpha", reason: "detached" });
    await Bun.sleep(200);
    const log = volt(["logs", "alpha"]).stdout;
    expect(log).toContain("echo:ping");
    expect(log).not.toContain("never-sent");

    const waitShort = voltJson(["wait", "alpha", "--timeout", "0.3"]);
    expect(waitShort).toMatchObject({ exitCode: 124, json: { ok: false, error: { kind: "timeout" } } });

    const stop = voltJson(["stop", "alpha"]);
    expect(stop).toMatchObject({ exitCode: 0, json: { ok: true, id: "alpha", pid, stoppedBy: "api", exitCode: 0, outcome: "signal", detail: "stopped by the API" } });
    expect(processAlive(pid)).toBe(false);
    // Stopped, not removed: wait and logs still work; a second stop is refused.
    expect(voltJson(["wait", "alpha"])).toMatchObject({ exitCode: 0, json: { ok: true, exitCode: 0, outcome: "signal" } });
    expect(volt(["logs", "alpha"]).stdout).toContain("tick 1");
    expect(voltJson(["inspect", "alpha"]).json).toMatchObject({ vm: { status: "exited", state: "exited", exit: { exitCode: 0, detail: "stopped by the API" } } });
    expect(voltJson(["stop", "alpha"])).toMatchObject({ exitCode: 2, json: { error: { kind: "not-running", message: expect.stringContaining("it exited with status 0") } } });
    expect(voltJson(["pause", "alpha"])).toMatchObject({ exitCode: 2, json: { error: { kind: "not-running" } } });

    // ls removes what is gone, and says so.
    const after = voltJson(["ls"]);
    expect(after.json).toMatchObject({ vms: [{ id: "beta" }], cleaned: [{ id: "alpha", status: "exited", exitCode: 0, outcome: "signal" }] });
    expect(existsSync(join(runtimeDir, "volt", "alpha"))).toBe(false);

    // SIGTERM's status comes back through wait.
    const beta = voltJson(["inspect", "beta"]).json.vm as { pid: number };
    process.kill(beta.pid, "SIGTERM");
    expect(voltJson(["wait", "beta", "--timeout", "10"])).toMatchObject({ exitCode: 143, json: { ok: false, exitCode: 143, detail: "stopped by SIGTERM" } });
  }, 60_000);

  test("kill: SIGKILL, no exit record, directory removed; a VM killed behind Volt's back is found dead and cleaned", async () => {
    const pid = await startFakeVm("gamma");
    const killed = voltJson(["kill", "gamma"]);
    expect(killed).toMatchObject({ exitCode: 0, json: { ok: true, id: "gamma", pid, wasRunning: true, removed: true } });
    expect(processAlive(pid)).toBe(false);
    expect(existsSync(join(runtimeDir, "volt", "gamma"))).toBe(false);

    const otherPid = await startFakeVm("delta");
    process.kill(otherPid, "SIGKILL");
    while (processAlive(otherPid)) await Bun.sleep(10);
    expect(voltJson(["inspect", "delta"]).json).toMatchObject({ vm: { status: "dead", exit: null } });
    expect(voltJson(["wait", "delta"])).toMatchObject({ exitCode: 1, json: { ok: false, exitCode: 1 } });
    const ls = voltJson(["ls"]);
    expect(ls.json.cleaned).toContainEqual({ id: "delta", pid: otherPid, status: "dead" });
    // The dead VM's sockets went with its directory.
    expect(readdirSync(join(runtimeDir, "volt")).filter((name) => name.startsWith("delta"))).toEqual([]);
  }, 60_000);

  test("errors: unknown ids, ambiguous prefixes, bad flags, all on stderr and as JSON", async () => {
    await startFakeVm("web-1");
    await startFakeVm("web-2");
    for (const command of ["inspect", "pause", "resume", "stop", "kill", "wait", "logs", "console"]) {
      const missing = voltJson([command, "nope"]);
      expect({ command, exitCode: missing.exitCode, json: missing.json }).toMatchObject({ command, exitCode: 2, json: { ok: false, error: { kind: "no-such-vm" } } });
      expect(missing.stderr).toContain("no VM nope");
    }
    expect(voltJson(["pause", "web"])).toMatchObject({ exitCode: 2, json: { error: { kind: "ambiguous-id", message: expect.stringContaining("web-1, web-2") } } });
    expect(voltJson(["inspect", "web-2"]).json).toMatchObject({ vm: { id: "web-2" } });
    expect(volt(["ls", "--al"])).toMatchObject({ exitCode: 2, stderr: expect.stringContaining("unknown option '--al'") });
    expect(voltJson(["wait", "web-1", "--timeout", "soon"])).toMatchObject({ exitCode: 2, json: { error: { message: "--timeout must be a number of seconds (got 'soon')" } } });
    expect(voltJson(["logs", "web-1", "--tail", "x"])).toMatchObject({ exitCode: 2 });
    expect(volt(["logs", "web-1", "--json", "--follow"])).toMatchObject({ exitCode: 2 });
    const help = volt(["stop", "--help"]);
    expect(help.stdout).toContain("Examples:");
    expect(help.stdout).toContain("Exit status");
    for (const id of ["web-1", "web-2"]) expect(voltJson(["stop", id]).exitCode).toBe(0);
  }, 60_000);

  test("run --detach: a VM that cannot start is reported with its own error and status, and leaves no directory; a taken id is refused", async () => {
    const missing = voltJson(["run", "--detach", "--id", "broken", "--kernel", join(work, "no-such-kernel")]);
    expect(missing).toMatchObject({ exitCode: 2, json: { ok: false, error: { kind: "kernel", message: expect.stringContaining("cannot read kernel") } } });
    expect(existsSync(join(runtimeDir, "volt", "broken"))).toBe(false);

    expect(voltJson(["run", "--detach", "--id", "bad/id", "--kernel", "/k"])).toMatchObject({ exitCode: 2, json: { error: { kind: "bad-id" } } });
    expect(voltJson(["run", "--detach", "--kernel", "/k", "--mem", "lots"])).toMatchObject({ exitCode: 2, json: { error: { message: "--mem must be a whole number (got 'lots')" } } });

    await startFakeVm("taken");
    expect(voltJson(["run", "--detach", "--id", "taken", "--kernel", "/k"])).toMatchObject({ exitCode: 2, json: { error: { kind: "id-in-use" } } });
    expect(voltJson(["stop", "taken"]).exitCode).toBe(0);
    // Foreground --id with a kernel that is not there: the error on stderr, and no directory left either.
    const foreground = volt(["run", "--id", "fg", "--kernel", join(work, "no-such-kernel")]);
    expect(foreground.exitCode).toBe(2);
    expect(existsSync(join(runtimeDir, "volt", "fg"))).toBe(false);
  }, 60_000);

  test("volt api --no-seccomp and --no-sandbox turn the filter off, loudly; PUT /vm/stop before InstanceStart ends it", async () => {
    for (const flag of ["--no-seccomp", "--no-sandbox"]) {
      const socket = join(work, `api${flag}.sock`);
      const child = Bun.spawn(["bun", join(root, "src/cli/main.ts"), "api", "--socket", socket, flag], { env, cwd: work, stdout: "pipe", stderr: "pipe" });
      try {
        for (let i = 0; !existsSync(socket); i++) {
          if (i > 300) throw new Error(`volt api did not create ${socket}`);
          await Bun.sleep(50);
        }
        const answer = await fetch("http://volt/vm/stop", { method: "PUT", unix: socket } as RequestInit);
        expect(answer.status).toBe(200);
        expect(await child.exited).toBe(0);
        expect(await new Response(child.stderr).text()).toContain("running without seccomp (--no-seccomp)");
      } finally {
        child.kill("SIGKILL");
      }
    }
    // Without the flag, no such warning.
    const socket = join(work, "api-default.sock");
    const child = Bun.spawn(["bun", join(root, "src/cli/main.ts"), "api", "--socket", socket], { env, cwd: work, stdout: "pipe", stderr: "pipe" });
    try {
      for (let i = 0; !existsSync(socket); i++) {
        if (i > 300) throw new Error(`volt api did not create ${socket}`);
        await Bun.sleep(50);
      }
      await fetch("http://volt/vm/stop", { method: "PUT", unix: socket } as RequestInit);
      expect(await child.exited).toBe(0);
      expect(await new Response(child.stderr).text()).not.toContain("without seccomp");
    } finally {
      child.kill("SIGKILL");
    }
  }, 60_000);

  test("config schema: a JSON Schema of the config file, strict like the file", () => {
    const result = volt(["config", "schema"]);
    expect(result.exitCode).toBe(0);
    const schema = JSON.parse(result.stdout);
    expect(schema).toMatchObject({
      $schema: expect.stringContaining("json-schema.org"),
      type: "object",
      additionalProperties: false,
      properties: {
        $schema: { type: "string" },
        kernel: { type: "string" },
        vcpus: { type: "integer", minimum: 1, maximum: 64 },
        memMiB: { type: "integer", minimum: 1 },
        onReboot: { enum: ["exit", "restart"] },
        drives: { type: "array", items: { type: "object", required: ["path"], additionalProperties: false } },
        vsock: { type: "object", required: ["guestCid", "udsPath"] },
      },
    });
    expect(result.stderr).toBe("");
  });
});

/**
 * VM lifecycle on real KVM (#8):
 *  - test/lifecycle.sh: three detached VMs started, listed, one paused and
 *    snapshotted, all stopped, every step's JSON checked, no process left;
 *  - a Firecracker-style sequence of API calls (machine-config, boot-source,
 *    drives, InstanceStart) on `volt api` boots a guest that reads its drive;
 *  - hundreds of malformed requests while that guest runs: each refused, and
 *    the guest keeps running and the API answering.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildInitramfs } from "../../src/image/initramfs.ts";
import { requireKvm } from "./kvm.ts";

const root = join(import.meta.dir, "..", "..");
const volt = join(root, "dist", "volt");
// Short: the runtime directory's socket paths must fit in 107 bytes.
const work = mkdtempSync(join(tmpdir(), "vlc-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const kvmUsable = requireKvm();
const kernel = process.env.VOLT_TEST_VMLINUX ?? process.env.VOLT_TEST_BZIMAGE;
const modules = (process.env.VOLT_TEST_VMLINUX_MODULES ?? "").split(":").filter((m) => m !== "");

/** Live volt processes whose command line mentions `needle` (zombies waiting for init are not live). */
function liveVoltProcesses(needle: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const cmdline = readFileSync(`/proc/${name}/cmdline`, "utf8");
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
      if (cmdline.includes(needle) && state !== "Z" && Number(name) !== process.pid) pids.push(Number(name));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

describe.skipIf(!kvmUsable)(`VM lifecycle (${process.env.VOLT_KVM_MODE ?? "unknown"} KVM)`, () => {
  test("test/lifecycle.sh: three detached VMs started, listed, paused, snapshotted and stopped; every step's JSON parses; no VM process left", async () => {
    const initrd = join(work, "loop.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ script: "echo VOLT-LOOP-READY\nwhile true; do sleep 1; done\n", exit: "poweroff", modules }));
    const runtime = join(work, "rt");
    mkdirSync(runtime);
    const script = Bun.spawn(["bash", join(root, "test", "lifecycle.sh")], {
      env: { ...process.env, XDG_RUNTIME_DIR: runtime, VOLT: volt, KERNEL: kernel!, INITRD: initrd, WORK: work, MARKER: "VOLT-LOOP-READY" },
      stdout: "pipe",
      stderr: "pipe",
    });
    const [stdout, stderr, exitCode] = await Promise.all([new Response(script.stdout).text(), new Response(script.stderr).text(), script.exited]);
    console.log(stdout);
    if (exitCode !== 0) console.log(`lifecycle.sh stderr:\n${stderr}`);
    expect(exitCode).toBe(0);
    expect(stdout).toMatch(/lifecycle.sh: \[\d+s\] ok:/);
    // The script checked its own pids; check independently that no volt of this runtime directory lives on.
    expect(liveVoltProcesses(runtime)).toEqual([]);
    expect(liveVoltProcesses("--detached-child").filter((pid) => readFileSync(`/proc/${pid}/environ`, "utf8").includes(runtime))).toEqual([]);
    expect(readdirSync(join(runtime, "volt"))).toEqual([]);
    expect(existsSync(join(work, "lc-two-snapshot", "state.volt"))).toBe(true);
  }, 900_000);

  test("Firecracker-style: machine-config, boot-source, drives, InstanceStart boot a guest that reads its drive; then hundreds of malformed requests leave it running and answering", async () => {
    // A data drive with a marker file the guest prints.
    const tree = join(work, "fc-tree");
    mkdirSync(tree);
    const marker = `fc-${crypto.randomUUID()}`;
    writeFileSync(join(tree, "marker"), marker);
    const disk = join(work, "fc-data.ext4");
    expect(Bun.spawnSync(["mkfs.ext4", "-q", "-F", "-d", tree, disk, "8M"]).exitCode).toBe(0);
    const initrd = join(work, "fc.cpio.gz");
    writeFileSync(
      initrd,
      buildInitramfs({
        script: [
          "mkdir -p /mnt && mount -t ext4 -o ro /dev/vda /mnt && echo \"VOLT-FC-DISK=$(cat /mnt/marker)\"",
          "i=0; while true; do i=$((i+1)); echo \"VOLT-TICK=$i\"; sleep 1; done",
        ].join("\n"),
        exit: "poweroff",
        modules,
      }),
    );

    const socket = join(work, "fc.sock");
    const child = Bun.spawn([volt, "api", "--socket", socket], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    let console_ = "";
    const consoleDone = (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of child.stdout) console_ += decoder.decode(chunk);
    })();
    const waitFor = async (pattern: RegExp, timeoutMs = 240_000) => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const match = console_.match(pattern);
        if (match) return match;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${pattern}; console tail:\n${console_.slice(-2000)}`);
        await Bun.sleep(100);
      }
    };
    const ticks = () => Math.max(0, ...[...console_.matchAll(/VOLT-TICK=(\d+)/g)].map((m) => Number(m[1])));
    const api = async (method: string, path: string, body?: unknown) => {
      const response = await fetch(`http://localhost${path}`, {
        method,
        unix: socket,
        ...(body !== undefined ? { body: typeof body === "string" ? body : JSON.stringify(body), headers: { "content-type": "application/json" } } : {}),
      } as RequestInit);
      const text = await response.text();
      return { status: response.status, body: text === "" ? undefined : (JSON.parse(text) as Record<string, unknown>) };
    };
    try {
      for (let i = 0; !existsSync(socket); i++) {
        if (i > 300) throw new Error(`volt api did not create ${socket}`);
        await Bun.sleep(50);
      }
      expect(await api("GET", "/")).toMatchObject({ status: 200, body: { state: "Not started" } });
      expect(await api("PUT", "/machine-config", { vcpu_count: 2, mem_size_mib: 128 })).toEqual({ status: 204, body: undefined });
      expect(await api("PUT", "/boot-source", { kernel_image_path: kernel, initrd_path: initrd, boot_args: "console=ttyS0 reboot=k panic=1 pci=off" })).toEqual({ status: 204, body: undefined });
      expect(await api("PUT", "/drives/data", { drive_id: "data", path_on_host: disk, is_root_device: false, is_read_only: true })).toEqual({ status: 204, body: undefined });
      expect(await api("PUT", "/actions", { action_type: "InstanceStart" })).toEqual({ status: 204, body: undefined });
      expect(await api("GET", "/")).toMatchObject({ status: 200, body: { state: "Running" } });
      expect(await api("GET", "/vm")).toMatchObject({ status: 200, body: { state: "running", vcpus: 2, memoryMiB: 128, devices: [{ kind: "block" }] } });

      await waitFor(new RegExp(`VOLT-FC-DISK=${marker}`));
      await waitFor(/VOLT-TICK=2\b/);

      // Configuration after start: refused the way Firecracker refuses it.
      expect(await api("PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 64 })).toMatchObject({
        status: 400,
        body: { fault_message: "The requested operation is not supported after starting the microVM." },
      });

      // Hundreds of malformed requests, all at once, from raw garbage to wrong states.
      const rawGarbage = ["GARBAGE\r\n\r\n", "GET / HTTP/9.9\r\n\r\n", "PUT /vm/pause HTTP/1.1\r\nContent-Length: nope\r\n\r\n", "\x00\xff\x13\x37", `GET /${"x".repeat(20_000)} HTTP/1.1\r\nHost: a\r\n\r\n`];
      const raw = (bytes: string) =>
        new Promise<string>((resolve) => {
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
          setTimeout(done, 2000);
        });
      const badRequests: [string, string, unknown, number][] = [
        ["PUT", "/actions", "{not json", 400],
        ["PUT", "/actions", { action_type: "InstanceStart" }, 400],
        ["PUT", "/actions", { action_type: "Explode" }, 400],
        ["PUT", "/drives/x", { drive_id: "y", path_on_host: "/x", is_root_device: false }, 400],
        ["PATCH", "/vm", { state: "Sleeping" }, 400],
        ["PUT", "/snapshot/create", { dir: 7 }, 400],
        ["GET", "/does/not/exist", undefined, 404],
        ["DELETE", "/vm", undefined, 405],
        ["PUT", "/vm/resume", undefined, 409],
      ];
      const before = ticks();
      const [rawAnswers, answers] = await Promise.all([
        Promise.all(Array.from({ length: 150 }, (_, i) => raw(rawGarbage[i % rawGarbage.length]!))),
        Promise.all(Array.from({ length: 360 }, (_, i) => badRequests[i % badRequests.length]!).map(async ([method, path, body, want]) => ({ want, got: (await api(method, path, body)).status }))),
      ]);
      for (const { want, got } of answers) expect(got).toBe(want);
      for (const answer of rawAnswers) {
        const status = answer.match(/^HTTP\/1\.1 (\d{3})/)?.[1];
        if (status !== undefined) expect(Number(status)).toBeGreaterThanOrEqual(400);
      }
      // The guest ran on through it all, and the API still answers.
      await waitFor(new RegExp(`VOLT-TICK=${before + 2}\\b`), 60_000);
      expect(await api("GET", "/")).toMatchObject({ status: 200, body: { state: "Running" } });

      // Firecracker's pause, snapshot and resume.
      expect(await api("PATCH", "/vm", { state: "Paused" })).toEqual({ status: 204, body: undefined });
      expect(await api("GET", "/")).toMatchObject({ body: { state: "Paused" } });
      const snapshotDir = join(work, "fc-snapshot");
      const memFile = join(work, "fc-snapshot.mem");
      expect(await api("PUT", "/snapshot/create", { snapshot_path: snapshotDir, mem_file_path: memFile, snapshot_type: "Full" })).toEqual({ status: 204, body: undefined });
      expect(existsSync(join(snapshotDir, "state.volt"))).toBe(true);
      expect(lstatSync(memFile).isSymbolicLink()).toBe(true);
      const pausedAt = ticks();
      await Bun.sleep(2500);
      expect(ticks()).toBeLessThanOrEqual(pausedAt + 1);
      expect(await api("PATCH", "/vm", { state: "Resumed" })).toEqual({ status: 204, body: undefined });
      await waitFor(new RegExp(`VOLT-TICK=${ticks() + 1}\\b`), 60_000);

      // Firecracker's snapshot/load in a new process, with resume_vm false: the guest runs nothing (prints no tick)
      // until PATCH Resumed, then counts on from the snapshot's tick, not from 1.
      const loadedSocket = join(work, "fc-load.sock");
      const loaded = Bun.spawn([volt, "api", "--socket", loadedSocket], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
      let loadedConsole = "";
      const loadedDone = (async () => {
        const decoder = new TextDecoder();
        for await (const chunk of loaded.stdout) loadedConsole += decoder.decode(chunk);
      })();
      const loadedApi = async (method: string, path: string, body?: unknown) => {
        const response = await fetch(`http://localhost${path}`, { method, unix: loadedSocket, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) } as RequestInit);
        const text = await response.text();
        return { status: response.status, body: text === "" ? undefined : (JSON.parse(text) as Record<string, unknown>) };
      };
      try {
        for (let i = 0; !existsSync(loadedSocket); i++) {
          if (i > 300) throw new Error(`volt api did not create ${loadedSocket}`);
          await Bun.sleep(50);
        }
        expect(await loadedApi("PUT", "/snapshot/load", { snapshot_path: snapshotDir, mem_file_path: memFile, resume_vm: false })).toEqual({ status: 204, body: undefined });
        expect(await loadedApi("GET", "/")).toMatchObject({ status: 200, body: { state: "Paused" } });
        await Bun.sleep(2500);
        expect(loadedConsole).not.toMatch(/VOLT-TICK/);
        expect(await loadedApi("PATCH", "/vm", { state: "Resumed" })).toEqual({ status: 204, body: undefined });
        for (let i = 0; !/VOLT-TICK=\d+/.test(loadedConsole); i++) {
          if (i > 600) throw new Error(`the loaded VM printed no tick after resuming; its console:\n${loadedConsole.slice(-2000)}`);
          await Bun.sleep(100);
        }
        // The snapshot's UART may still hold the tick printed just before the pause: the first one is that or the next.
        const firstTick = Number(loadedConsole.match(/VOLT-TICK=(\d+)/)![1]);
        expect(firstTick).toBeGreaterThanOrEqual(Math.max(pausedAt, 2));
        expect(firstTick).toBeLessThanOrEqual(pausedAt + 1);
        expect(await loadedApi("PUT", "/vm/stop")).toMatchObject({ status: 200 });
        expect(await loaded.exited).toBe(0);
        await loadedDone;
      } finally {
        loaded.kill("SIGKILL");
      }

      expect(await api("PUT", "/vm/stop")).toMatchObject({ status: 200 });
      expect(await child.exited).toBe(0);
      await consoleDone;
      expect(existsSync(socket)).toBe(false);
    } finally {
      child.kill("SIGKILL");
    }
  }, 600_000);
});

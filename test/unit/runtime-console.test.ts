/** A registered VM's console and its registration, without KVM: log, socket clients, input, rotation, slow clients, vm.json and exit.json. */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MAX_CLIENT_BACKLOG, RuntimeConsole } from "../../src/runtime/console.ts";
import { inspectEntry, processStartTime } from "../../src/runtime/registry.ts";
import { VmRegistration } from "../../src/runtime/session.ts";

const work = mkdtempSync(join(tmpdir(), "volt-rc-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const encode = (text: string) => new TextEncoder().encode(text);

async function client(path: string): Promise<{ socket: Socket; received: () => string; closed: Promise<void> }> {
  const socket = connect(path);
  let text = "";
  socket.on("data", (chunk) => (text += chunk.toString()));
  const closed = new Promise<void>((resolve) => socket.on("close", () => resolve()));
  await new Promise((resolve) => socket.once("connect", resolve));
  return { socket, received: () => text, closed };
}

async function until(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (condition()) return;
    await Bun.sleep(10);
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe("runtime console", () => {
  test("output reaches the log, every client and the inner console; any client's input reaches the guest", async () => {
    const inner: string[] = [];
    let innerDeliver: ((bytes: Uint8Array) => void) | undefined;
    const console_ = await RuntimeConsole.open({
      logPath: join(work, "a.log"),
      socketPath: join(work, "a.sock"),
      inner: {
        write: (bytes) => inner.push(new TextDecoder().decode(bytes)),
        attachInput(deliver) {
          innerDeliver = deliver;
          return () => (innerDeliver = undefined);
        },
      },
    });
    const typed: string[] = [];
    const detach = console_.attachInput((bytes) => typed.push(new TextDecoder().decode(bytes)));
    const one = await client(join(work, "a.sock"));
    const two = await client(join(work, "a.sock"));
    await until(() => console_.clientCount === 2, "two clients");
    console_.write(encode("login: "));
    await until(() => one.received() === "login: " && two.received() === "login: ", "output on both clients");
    expect(inner).toEqual(["login: "]);
    one.socket.write("root\n");
    await until(() => typed.length === 1, "client input");
    innerDeliver!(encode("from the terminal\n"));
    expect(typed).toEqual(["root\n", "from the terminal\n"]);

    // A client that leaves does not disturb the others.
    one.socket.destroy();
    await until(() => console_.clientCount === 1, "one client left");
    console_.write(encode("# "));
    await until(() => two.received() === "login: # ", "output after a client left");

    detach();
    expect(innerDeliver).toBeUndefined();
    two.socket.write("ignored");
    await Bun.sleep(50);
    expect(typed).toHaveLength(2);

    console_.close();
    await two.closed;
    expect(readFileSync(join(work, "a.log"), "utf8")).toBe("login: # ");
    expect(existsSync(join(work, "a.sock"))).toBe(false);
    console_.write(encode("after close"));
    expect(readFileSync(join(work, "a.log"), "utf8")).toBe("login: # ");
  });

  test("the log is rotated past its limit, so a chatty guest cannot fill the disk", async () => {
    const console_ = await RuntimeConsole.open({ logPath: join(work, "b.log"), socketPath: join(work, "b.sock"), maxLogBytes: 100 });
    for (let i = 0; i < 25; i++) console_.write(encode(`line ${String(i).padStart(3, "0")}\n`));
    console_.close();
    const current = readFileSync(join(work, "b.log"), "utf8");
    const previous = readFileSync(join(work, "b.log.1"), "utf8");
    expect(current.length).toBeLessThanOrEqual(100);
    expect(previous.length).toBeLessThanOrEqual(100);
    expect(current.endsWith("line 024\n")).toBe(true);
    expect((previous + current).endsWith("line 024\n")).toBe(true);
  });

  test("a client that stops reading is disconnected instead of buffered without bound", async () => {
    const console_ = await RuntimeConsole.open({ logPath: join(work, "c.log"), socketPath: join(work, "c.sock") });
    const reader = await client(join(work, "c.sock"));
    const stalled = await client(join(work, "c.sock"));
    stalled.socket.pause();
    await until(() => console_.clientCount === 2, "two clients");
    const chunk = new Uint8Array(64 * 1024).fill(0x41);
    for (let i = 0; i < (4 * MAX_CLIENT_BACKLOG) / chunk.length && console_.clientCount === 2; i++) {
      console_.write(chunk);
      await Bun.sleep(1);
    }
    expect(console_.clientCount).toBe(1);
    // Once it reads again, it finds the end of its stream.
    stalled.socket.resume();
    await stalled.closed;
    await until(() => reader.received().length > 0, "the reading client still served");
    console_.close();
  });

  test("a stale console socket left by a crashed VM is replaced", async () => {
    const path = join(work, "d.sock");
    const first = await RuntimeConsole.open({ logPath: join(work, "d.log"), socketPath: path });
    // Crash: the server goes without removing its socket file.
    (first as unknown as { server: { close(): void } }).server.close();
    await Bun.sleep(20);
    const second = await RuntimeConsole.open({ logPath: join(work, "d.log"), socketPath: path });
    const c = await client(path);
    second.write(encode("hi"));
    await until(() => c.received() === "hi", "output from the new console");
    c.socket.destroy();
    second.close();
  });
});

describe("VM registration", () => {
  test("open claims the directory and writes the pid; recordStart describes the VM; recordExit says how it ended", async () => {
    const root = join(work, "reg", "volt");
    const registration = await VmRegistration.open({ id: "reg1", adopt: false, root });
    expect(readFileSync(join(root, "reg1", "pid"), "utf8")).toBe(`${process.pid}\n`);
    expect(registration.apiSocket).toBe(join(root, "reg1", "api.sock"));
    expect(inspectEntry("reg1", root).status).toBe("starting");
    registration.recordStart({ kernelPath: "/k", initrdPath: "/i", memoryMiB: 64, vcpus: 2, cmdline: "quiet" });
    const entry = inspectEntry("reg1", root);
    expect(entry.status).toBe("running");
    expect(entry.record).toMatchObject({ id: "reg1", pid: process.pid, pidStartTime: processStartTime(process.pid), kernel: "/k", initrd: "/i", vcpus: 2, memoryMiB: 64, cmdline: "quiet", detached: false });
    registration.recordExit({ exitCode: 5, outcome: "panic", detail: "the guest kernel panicked" });
    registration.close();
    expect(inspectEntry("reg1", root).exit).toMatchObject({ exitCode: 5, outcome: "panic", endedAt: expect.any(String) });
    // Still this (live) process: running until it exits.
    expect(inspectEntry("reg1", root).status).toBe("running");

    // A second VM may not take a live VM's id, but adopting (the detached child's case) a directory its parent claimed works.
    await expect(VmRegistration.open({ id: "reg1", adopt: false, root })).rejects.toThrow(/in use/);
    const adopted = await VmRegistration.open({ id: "reg1", adopt: true, root, apiSocket: join(work, "custom.sock") });
    expect(adopted.apiSocket).toBe(join(work, "custom.sock"));
    adopted.close();
  });
});

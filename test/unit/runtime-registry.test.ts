/** Runtime directories without KVM: ids, claiming, live/dead/stale detection (pid reuse included), cleanup, id and socket resolution. */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { childRunArgs, DETACHED_CHILD_FLAG } from "../../src/runtime/detach.ts";
import { checkVmId, newVmId, RuntimeError, runtimeRoot, vmPaths } from "../../src/runtime/dirs.ts";
import {
  claimVmDir,
  cleanStaleEntries,
  inspectEntry,
  listEntries,
  processAlive,
  processStartTime,
  resolveApiSocket,
  resolveVm,
  writeJsonAtomic,
  type RuntimeRecord,
} from "../../src/runtime/registry.ts";

const work = mkdtempSync(join(tmpdir(), "volt-rt-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
let rootCount = 0;
const freshRoot = () => join(work, `r${rootCount++}`, "volt");

/** A pid that is certainly not running: a child that has exited and been reaped. */
function deadPid(): number {
  const child = Bun.spawnSync(["true"]);
  return child.pid;
}

function record(id: string, root: string, pid: number, extra: Partial<RuntimeRecord> = {}): RuntimeRecord {
  const paths = vmPaths(id, root);
  return {
    id,
    pid,
    startedAt: new Date().toISOString(),
    detached: true,
    kernel: "/k",
    vcpus: 1,
    memoryMiB: 64,
    apiSocket: paths.apiSocket,
    consoleSocket: paths.consoleSocket,
    consoleLog: paths.consoleLog,
    voltVersion: "test",
    ...extra,
  };
}

/** A VM directory as a volt process would have left it. */
function fakeVm(root: string, id: string, options: { pid?: number; withRecord?: boolean; exit?: number; startTime?: string }) {
  const paths = vmPaths(id, root);
  mkdirSync(paths.dir, { recursive: true });
  if (options.pid !== undefined) writeFileSync(paths.pid, `${options.pid}\n`);
  if (options.withRecord && options.pid !== undefined) {
    writeJsonAtomic(paths.record, record(id, root, options.pid, options.startTime !== undefined ? { pidStartTime: options.startTime } : {}));
  }
  if (options.exit !== undefined) writeJsonAtomic(paths.exit, { exitCode: options.exit, outcome: "poweroff", detail: "the guest powered off", endedAt: new Date().toISOString() });
  return paths;
}

describe("runtime directory names", () => {
  test("XDG_RUNTIME_DIR or /run, then volt", () => {
    expect(runtimeRoot({ XDG_RUNTIME_DIR: "/run/user/1000" })).toBe("/run/user/1000/volt");
    expect(runtimeRoot({})).toBe("/run/volt");
    expect(runtimeRoot({ XDG_RUNTIME_DIR: "" })).toBe("/run/volt");
  });

  test("ids: names people type, nothing that escapes the directory or hides in it", () => {
    for (const good of ["web1", "a", "vm_2.test-3", "A".repeat(63)]) expect(checkVmId(good)).toBe(good);
    for (const bad of ["", ".hidden", "-x", "a/b", "..", "a b", "A".repeat(64), "é"]) expect(() => checkVmId(bad)).toThrow(RuntimeError);
    const ids = new Set(Array.from({ length: 100 }, newVmId));
    expect(ids.size).toBe(100);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{12}$/);
  });

  test("a root too deep for Unix socket paths is refused before anything is created", () => {
    const deep = join(work, "d".repeat(90), "volt");
    expect(() => claimVmDir("x", deep)).toThrow(/Unix sockets allow 107/);
    expect(existsSync(deep)).toBe(false);
  });

  test("the child's arguments: --detach and --id replaced, everything else kept in order", () => {
    expect(childRunArgs(["--kernel", "k", "--detach", "--id", "old", "--mem=64", "--id=x", "--json"], "new")).toEqual([
      "--kernel",
      "k",
      "--mem=64",
      "--json",
      "--id",
      "new",
      DETACHED_CHILD_FLAG,
    ]);
  });
});

describe("process liveness", () => {
  test("this process is alive with its own start time; a reaped pid is not; a reused pid (other start time) is not", () => {
    const start = processStartTime(process.pid);
    expect(start).toMatch(/^\d+$/);
    expect(processAlive(process.pid)).toBe(true);
    expect(processAlive(process.pid, start)).toBe(true);
    expect(processAlive(process.pid, "1")).toBe(false);
    expect(processAlive(deadPid())).toBe(false);
    expect(processAlive(-1)).toBe(false);
  });
});

describe("claiming, inspecting and cleaning VM directories", () => {
  test("every state a directory can be in", () => {
    const root = freshRoot();
    const dead = deadPid();
    fakeVm(root, "running", { pid: process.pid, withRecord: true, startTime: processStartTime(process.pid)! });
    fakeVm(root, "spawned", { pid: process.pid }); // pid written by the parent, no vm.json yet
    fakeVm(root, "claimed", {}); // directory only, just made
    const abandoned = fakeVm(root, "abandoned", {});
    utimesSync(abandoned.dir, new Date(Date.now() - 60_000), new Date(Date.now() - 60_000));
    fakeVm(root, "exited", { pid: dead, withRecord: true, exit: 0 });
    fakeVm(root, "crashed", { pid: dead, withRecord: true });
    fakeVm(root, "reused", { pid: process.pid, withRecord: true, startTime: "1" });
    mkdirSync(join(root, ".x.removing-1"));
    writeFileSync(join(root, "stray-file"), "");

    const status = Object.fromEntries(listEntries(root).map((e) => [e.paths.id, e.status]));
    expect(status).toEqual({
      abandoned: "dead",
      claimed: "starting",
      crashed: "dead",
      exited: "exited",
      reused: "dead",
      running: "running",
      spawned: "starting",
    });
    expect(inspectEntry("exited", root).exit).toMatchObject({ exitCode: 0, outcome: "poweroff" });

    const cleaned = cleanStaleEntries(root).map((e) => e.paths.id).sort();
    expect(cleaned).toEqual(["abandoned", "crashed", "exited", "reused"]);
    expect(listEntries(root).map((e) => e.paths.id)).toEqual(["claimed", "running", "spawned"]);
    // Nothing half-removed is left under a name that looks like a VM.
    expect(existsSync(join(root, "exited"))).toBe(false);
  });

  test("claim: a fresh id, a chosen one, a live one refused, a dead one taken over", () => {
    const root = freshRoot();
    const fresh = claimVmDir(undefined, root);
    expect(fresh.id).toMatch(/^[0-9a-f]{12}$/);
    expect(existsSync(fresh.dir)).toBe(true);

    const chosen = claimVmDir("web1", root);
    expect(chosen.dir).toBe(join(root, "web1"));
    // Just claimed (no pid yet): starting, so in use.
    expect(() => claimVmDir("web1", root)).toThrow(/VM id web1 is in use \(starting\)/);

    fakeVm(root, "live", { pid: process.pid, withRecord: true });
    try {
      claimVmDir("live", root);
      throw new Error("claimed a live VM's id");
    } catch (error) {
      expect(error).toBeInstanceOf(RuntimeError);
      expect((error as RuntimeError).kind).toBe("id-in-use");
      expect((error as Error).message).toContain(`pid ${process.pid}`);
    }

    const old = fakeVm(root, "old", { pid: deadPid(), withRecord: true, exit: 0 });
    writeFileSync(join(old.dir, "console.log"), "old console");
    const reclaimed = claimVmDir("old", root);
    expect(existsSync(join(reclaimed.dir, "console.log"))).toBe(false);
    expect(existsSync(reclaimed.dir)).toBe(true);

    expect(() => claimVmDir("bad/id", root)).toThrow(/bad VM id/);
  });

  test("resolve: exact id, unique prefix, ambiguous prefix, unknown", () => {
    const root = freshRoot();
    fakeVm(root, "alpha1", { pid: process.pid, withRecord: true });
    fakeVm(root, "alpha2", { pid: process.pid, withRecord: true });
    fakeVm(root, "beta", { pid: process.pid, withRecord: true });
    expect(resolveVm("beta", root).paths.id).toBe("beta");
    expect(resolveVm("b", root).paths.id).toBe("beta");
    expect(resolveVm("alpha1", root).paths.id).toBe("alpha1");
    expect(() => resolveVm("alpha", root)).toThrow(/matches 2 VMs \(alpha1, alpha2\)/);
    expect(() => resolveVm("gamma", root)).toThrow(/no VM gamma/);
    expect(() => resolveVm("../etc", root)).toThrow(/not a VM id/);
  });

  test("resolveApiSocket: a path stays a path, an id becomes its socket, a VM that is gone is an error", () => {
    const root = freshRoot();
    const live = fakeVm(root, "live", { pid: process.pid, withRecord: true });
    fakeVm(root, "gone", { pid: deadPid(), withRecord: true, exit: 5 });
    expect(resolveApiSocket("/tmp/some.sock", root)).toBe("/tmp/some.sock");
    expect(resolveApiSocket("./vm.sock", root)).toBe("./vm.sock");
    expect(resolveApiSocket("live", root)).toBe(live.apiSocket);
    expect(resolveApiSocket("li", root)).toBe(live.apiSocket);
    expect(() => resolveApiSocket("gone", root)).toThrow(/VM gone is not running: it exited with status 5/);
    expect(() => resolveApiSocket("nothing-here", root)).toThrow(/no VM nothing-here/);
    // A bare word that is no VM but names a file here is that file.
    const cwd = process.cwd();
    process.chdir(work);
    try {
      writeFileSync(join(work, "local.sock"), "");
      expect(resolveApiSocket("local.sock", root)).toBe("local.sock");
    } finally {
      process.chdir(cwd);
    }
  });
});

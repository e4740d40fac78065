/**
 * `volt snapshot restore` and `inspect` refuse a bad snapshot with exit 2 and
 * a message naming the file, before any VM exists (so no KVM is needed here).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MEMORY_FILE, STATE_FILE, writeSnapshot } from "../../src/snapshot/files.ts";
import { SNAPSHOT_MAJOR, SNAPSHOT_MINOR } from "../../src/snapshot/format.ts";
import { MACHINE_STATE_VERSION } from "../../src/vmm/snapshot.ts";

const root = join(import.meta.dir, "..", "..");
const work = mkdtempSync(join(tmpdir(), "volt-cli-snapshot-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const MiB = 1024 * 1024;

/** A well-formed snapshot of a 1 MiB, 1-vCPU machine (its vCPU state is a placeholder: these tests never reach KVM). */
function snapshot(name: string, patch: (dir: string) => void = () => {}): string {
  const dir = join(work, name);
  const state = {
    version: MACHINE_STATE_VERSION,
    machine: { vcpus: 1, memoryMiB: 1, bootTimer: false, virtioDevices: [], cmdline: "console=ttyS0", kernel: { format: "elf", protocol: "pvh" }, acpi: false },
    vm: {},
    vcpus: [{}],
    devices: { serial: new Uint8Array(4), virtioTransports: [], virtioDevices: [] },
  };
  writeSnapshot(dir, { createdAt: "2026-11-29T00:00:00Z", voltVersion: "test", vcpuCount: 1, memorySizeBytes: MiB }, state, [{ guestAddress: 0, bytes: new Uint8Array(MiB) }]);
  patch(dir);
  return dir;
}

function volt(args: string[]) {
  const child = Bun.spawnSync(["bun", join(root, "src/cli/main.ts"), ...args], { env: { ...process.env, NO_COLOR: "1" }, timeout: 30_000 });
  return { exitCode: child.exitCode, stdout: child.stdout.toString(), stderr: child.stderr.toString() };
}

describe("volt snapshot inspect", () => {
  test("prints the metadata as text and as JSON", () => {
    const dir = snapshot("good");
    const text = volt(["snapshot", "inspect", dir]);
    expect(text.exitCode).toBe(0);
    expect(text.stdout).toContain("1 vCPU(s), 1 MiB, elf via pvh");
    const json = JSON.parse(volt(["snapshot", "inspect", dir, "--json"]).stdout);
    expect(json).toMatchObject({ ok: true, snapshot: { formatVersion: `${SNAPSHOT_MAJOR}.${SNAPSHOT_MINOR}`, vcpus: 1, memorySizeBytes: MiB, memoryFileSize: MiB, devices: [] } });
  });
});

describe("volt snapshot restore refuses a bad snapshot with exit 2 before creating a VM", () => {
  const flipLastByte = (dir: string) => {
    const path = join(dir, STATE_FILE);
    const bytes = readFileSync(path);
    bytes[bytes.length - 1]! ^= 0xff;
    writeFileSync(path, bytes);
  };
  const setMajor = (dir: string) => {
    const path = join(dir, STATE_FILE);
    const bytes = readFileSync(path);
    bytes.writeUInt16LE(9, 8);
    writeFileSync(path, bytes);
  };
  test.each([
    ["a wrong CRC", (d: string) => flipLastByte(d), "snapshot-crc", "CRC-32 mismatch"],
    ["an unknown major version", (d: string) => setMajor(d), "snapshot-version", `snapshot format 9.${SNAPSHOT_MINOR} is not supported`],
    ["a truncated memory file", (d: string) => truncateSync(join(d, MEMORY_FILE), 4096), "snapshot-memory", "(truncated)"],
    ["a missing memory file", (d: string) => rmSync(join(d, MEMORY_FILE)), "snapshot-missing", "memory file memory.raw is missing"],
    ["a missing state file", (d: string) => rmSync(join(d, STATE_FILE)), "snapshot-missing", "cannot read state.volt"],
  ])("%s", (name, patch, kind, message) => {
    const dir = snapshot(`bad-${name.replace(/\W+/g, "-")}`, patch);
    const result = volt(["snapshot", "restore", dir, "--json"]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(message);
    expect(JSON.parse(result.stdout)).toEqual({ ok: false, error: { kind, message: expect.stringContaining(dir) } });
  });

  test("a snapshot directory that does not exist", () => {
    const result = volt(["snapshot", "restore", join(work, "nope")]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain("no such directory");
  });

  test("snapshot create cannot reach a VM that is not there", () => {
    const result = volt(["snapshot", "create", "--api-socket", join(work, "none.sock"), join(work, "x")]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(`cannot reach a VM at ${join(work, "none.sock")}`);
  });
});

describe("volt snapshot create names the VM by id or socket", () => {
  test("an unknown id, a missing VM name, and an id with --api-socket too are usage errors", () => {
    const env = { ...process.env, XDG_RUNTIME_DIR: join(work, "rt") };
    const run = (args: string[]) => Bun.spawnSync(["bun", join(root, "src/cli/main.ts"), "snapshot", "create", ...args], { env });
    const unknown = run(["nosuchvm", join(work, "s1")]);
    expect(unknown.exitCode).toBe(2);
    expect(unknown.stderr.toString()).toContain("no VM nosuchvm in ");
    const bare = run([]);
    expect(bare.exitCode).toBe(2);
    expect(bare.stderr.toString()).toContain("name the VM: volt snapshot create ID DIR");
    const both = run(["--api-socket", join(work, "x.sock"), "vm1", join(work, "s2")]);
    expect(both.exitCode).toBe(2);
    expect(both.stderr.toString()).toContain("with --api-socket give only the snapshot directory");
  });
});

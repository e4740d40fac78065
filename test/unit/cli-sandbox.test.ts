/** What the sandbox around `volt run` is asked to allow, and how turning it off is reported. */
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { sandboxChoice, vmPathNeeds } from "../../src/cli/sandbox.ts";
import { snapshotDirAllowed } from "../../src/sandbox/policy.ts";

const root = join(import.meta.dir, "..", "..");

describe("sandbox needs of a VM", () => {
  test("kernel, initrd and read-only drives are read-only; writable drives read-write; socket dirs from the API and vsock; the tap", () => {
    const needs = vmPathNeeds({
      config: {
        kernelPath: "/k/vmlinux",
        initrdPath: "/k/initrd",
        memoryMiB: 128,
        vcpus: 1,
        virtioDevices: [
          { kind: "block", path: "/d/root.ext4", readOnly: false },
          { kind: "block", path: "/d/data.img", readOnly: true },
          { kind: "net", tap: "tap0" },
          { kind: "vsock", guestCid: 3, udsPath: "/run/v/vsock.sock" },
        ],
      },
      apiSocket: "/run/a/api.sock",
      snapshotDirs: ["/snaps"],
    });
    expect(needs).toEqual({
      readOnlyFiles: ["/k/vmlinux", "/k/initrd", "/d/data.img"],
      readWriteFiles: ["/d/root.ext4"],
      readWriteDirs: ["/snaps"],
      unixSocketDirs: ["/run/a", "/run/v"],
      tap: true,
    });
  });

  test("snapshot directories: inside an allowed one (or anywhere without a sandbox list), never a sibling with a common prefix", () => {
    expect(snapshotDirAllowed("/snaps/a", ["/snaps"])).toBe(true);
    expect(snapshotDirAllowed("/snaps", ["/snaps"])).toBe(true);
    expect(snapshotDirAllowed("/snapshots-evil", ["/snaps"])).toBe(false);
    expect(snapshotDirAllowed("/snaps/../etc", ["/snaps"])).toBe(false);
    expect(snapshotDirAllowed("/anything", undefined)).toBe(true);
    expect(snapshotDirAllowed("/anything", [])).toBe(false);
  });

  test("turning the sandbox off is said out loud, and the choice follows the flags", () => {
    const written: string[] = [];
    const realWrite = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string) => {
      written.push(String(chunk));
      return true;
    }) as typeof process.stderr.write;
    try {
      expect(sandboxChoice({ "no-sandbox": true })).toEqual({ landlock: false, seccomp: false });
      expect(sandboxChoice({ "no-seccomp": true })).toEqual({ landlock: true, seccomp: false });
      expect(sandboxChoice({ "no-landlock": true })).toEqual({ landlock: false, seccomp: true });
      expect(sandboxChoice({})).toEqual({ landlock: true, seccomp: true });
    } finally {
      process.stderr.write = realWrite;
    }
    expect(written.join("")).toContain("running without the sandbox (--no-sandbox)");
    expect(written.join("")).toContain("running without seccomp (--no-seccomp)");
    expect(written.join("")).toContain("running without Landlock (--no-landlock)");
    expect(written.length).toBe(3);
  });

  test("the sandbox flags are known options of volt run", () => {
    const result = Bun.spawnSync(["bun", join(root, "src/cli/main.ts"), "run", "--kernel", "/etc/hostname", "--no-sandbox"]);
    expect(result.stderr.toString()).not.toContain("unknown option");
    expect(result.stderr.toString()).toContain("not a Linux kernel");
  });
;
});
